#!/usr/bin/env bash
# floatlm's benchmark: builds release binaries, makes sure MariaDB and NGINX
# are there (as scripts/test.sh does), runs crates/bench (baselines, one
# instance, three instances behind NGINX, three instances on a 3-node Galera
# cluster it starts itself) and rewrites docs/benchmarks.md.
#
#   scripts/bench.sh --quick         under three minutes
#   scripts/bench.sh                 the full run (100,000 live leases; several minutes)
#   scripts/bench.sh --only galera   the Galera part alone
#
# Extra arguments go to floatlm-bench (see: target/release/floatlm-bench --help).
# Another database server: FLOATLM_BENCH_MYSQL=mysql://USER:PASS@HOST:PORT
set -euo pipefail
cd "$(dirname "$0")/.."

# shellcheck source=scripts/ensure.sh
source scripts/ensure.sh
ensure_mariadb
ensure_nginx
ensure_galera
export FLOATLM_BENCH_MYSQL="${FLOATLM_BENCH_MYSQL:-${FLOATLM_TEST_MYSQL_URL:-mysql://root@127.0.0.1:3306}}"

say "building release binaries"
cargo build --release --locked -p floatlm -p floatlm-bench
target="${CARGO_TARGET_DIR:-target}"
mkdir -p "$target/bench"
exec "$target/release/floatlm-bench" --floatlm "$target/release/floatlm" \
  --out "$target/bench/results.json" --doc docs/benchmarks.md "$@"
