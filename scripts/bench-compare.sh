#!/usr/bin/env bash
# No-regression comparison (docs/benchmarks.md, "No regression against an
# older build"): builds floatlm at an older commit in a worktree of its own
# (default f6f7d48, the last commit before issue 14), keeps only its binary,
# and runs `floatlm-bench --compare` against this checkout's release build.
#
#   scripts/bench-compare.sh                 f6f7d48, 3 rounds
#   scripts/bench-compare.sh REV --rounds 5  another commit, more rounds
#   scripts/bench-compare.sh --quick         f6f7d48, the short settings
#
# Extra arguments go to floatlm-bench (--seconds, --clients, --leases,
# --only SCENARIO, --keep DIR; see target/release/floatlm-bench --help).
# OLD_FLOATLM=/path/to/floatlm skips the build of the older binary.
# Another database server: FLOATLM_BENCH_MYSQL=mysql://USER:PASS@HOST:PORT
set -euo pipefail
cd "$(dirname "$0")/.."
REV=f6f7d48
if [ $# -gt 0 ] && [ "${1#-}" = "$1" ]; then REV="$1"; shift; fi
TARGET="${CARGO_TARGET_DIR:-target}"

# shellcheck source=scripts/ensure.sh
source scripts/ensure.sh
ensure_mariadb
export FLOATLM_BENCH_MYSQL="${FLOATLM_BENCH_MYSQL:-${FLOATLM_TEST_MYSQL_URL:-mysql://root@127.0.0.1:3306}}"

OLD="${OLD_FLOATLM:-$TARGET/bench/floatlm-$REV}"
if [ ! -x "$OLD" ]; then
  say "building floatlm at $REV (a worktree of its own, removed afterwards)"
  WT="$(mktemp -d)/floatlm-$REV"
  git worktree add --detach "$WT" "$REV"
  trap 'git worktree remove --force "$WT"; rmdir "$(dirname "$WT")"' EXIT
  (cd "$WT" && CARGO_TARGET_DIR="$WT/target" cargo build --release --locked --bin floatlm)
  mkdir -p "$(dirname "$OLD")"
  cp "$WT/target/release/floatlm" "$OLD"
fi

say "building release binaries"
cargo build --release --locked -p floatlm -p floatlm-bench
mkdir -p "$TARGET/bench"
# Not exec: the trap above removes the older revision's worktree on exit.
"$TARGET/release/floatlm-bench" --floatlm "$TARGET/release/floatlm" --compare "$OLD" \
  --compare-label "$REV" --out "$TARGET/bench/compare.json" --doc docs/benchmarks.md "$@"
