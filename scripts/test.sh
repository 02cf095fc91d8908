#!/usr/bin/env bash
# floatlm's test command (README.md names it; .ci/run calls it).
#
# 1. Makes sure MariaDB is reachable on 127.0.0.1:3306: starts it if it is
#    installed and stopped, installs it with apt-get if it is absent (as root);
#    installs nginx-light, faketime, openssl, docker-compose, prometheus,
#    galera-4, rsync, chromium and chromium-driver if absent (the tests start
#    their own nginx, run one instance under libfaketime, validate
#    docker-compose.yml, check /metrics with promtool, start a 3-node Galera
#    cluster of their own and drive the web console in headless Chromium; no
#    Docker daemon and no Prometheus server is used).
# 2. Runs cargo fmt --check, cargo clippy -D warnings, the network-facing
#    cargo-fuzz targets for a bounded time each (installing cargo-fuzz if
#    absent; a crash fails the run; docs/fuzzing.md), and every test on both
#    backends (SQLite and MariaDB).
#
# Use another MySQL/MariaDB server with FLOATLM_TEST_MYSQL_URL=mysql://USER:PASS@HOST:PORT
# FLOATLM_FUZZ=0 skips fuzzing; FLOATLM_FUZZ_SECONDS=N runs every target N s.
# FLOATLM_CI=1 (set by .ci/run) keeps the disk footprint small for a one-off
# build on a fresh clone: no incremental compilation data, and the fuzz build
# is deleted once the fuzz runs are over (about half the space a local run uses).
set -euo pipefail
cd "$(dirname "$0")/.."

# shellcheck source=scripts/ensure.sh
source scripts/ensure.sh

# Network-facing targets and their seconds: the request path as the server
# sees it longest (it reaches the database), the parsers behind it shorter.
FUZZ_TARGETS="request:60 client_hello:15 resume_hello:15 server_hello:15 envelope:15"

fuzz() {
  if [ "${FLOATLM_FUZZ:-1}" = 0 ]; then
    say "fuzzing skipped (FLOATLM_FUZZ=0)"
    return
  fi
  if ! cargo fuzz --version >/dev/null 2>&1; then
    say "cargo install cargo-fuzz --locked"
    cargo install cargo-fuzz --locked --quiet
  fi
  # The stable toolchain runs cargo-fuzz's nightly flags with RUSTC_BOOTSTRAP.
  export RUSTC_BOOTSTRAP=1
  # Unoptimised, no sanitizer: floatlm is safe Rust, so libFuzzer's panics
  # and the dev profile's overflow checks are what finds bugs, and this
  # builds with a third of the CPU of the default (release + ASan).
  local opts=(--dev --sanitizer none)
  say "cargo fuzz build (all targets, once)"
  cargo fuzz build "${opts[@]}"
  local log
  log=$(mktemp)
  for t in $FUZZ_TARGETS; do
    local name=${t%%:*} secs=${FLOATLM_FUZZ_SECONDS:-${t##*:}}
    say "cargo fuzz run $name (${secs} s)"
    if ! cargo fuzz run "${opts[@]}" "$name" -- -max_total_time="$secs" >"$log" 2>&1; then
      tail -n 80 "$log"
      echo "fuzz target $name failed: the input is in fuzz/artifacts/$name/ (docs/fuzzing.md)" >&2
      rm -f "$log"
      exit 1
    fi
    grep -E '^Done [0-9]+ runs' "$log" || tail -n 2 "$log"
  done
  rm -f "$log"
  if [ "${FLOATLM_CI:-0}" = 1 ]; then
    say "removing fuzz/target (FLOATLM_CI=1)"
    rm -rf fuzz/target
  fi
}

if [ "${FLOATLM_CI:-0}" = 1 ]; then
  export CARGO_INCREMENTAL=0
fi
ensure_mariadb
ensure_nginx
ensure_galera
ensure_chromium
say "cargo fmt --check"
cargo fmt --all --check
say "cargo clippy --workspace --all-targets -- -D warnings"
cargo clippy --workspace --all-targets --quiet -- -D warnings
fuzz
if cargo nextest --version >/dev/null 2>&1; then
  say "cargo nextest run (SQLite and MariaDB)"
  cargo nextest run --workspace --no-fail-fast
else
  say "cargo test (cargo-nextest not installed)"
  cargo test --workspace --no-fail-fast
fi
