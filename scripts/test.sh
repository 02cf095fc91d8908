#!/usr/bin/env bash
# floatlm's test command (README.md names it; .ci/run calls it).
#
# 1. Makes sure MariaDB is reachable on 127.0.0.1:3306: starts it if it is
#    installed and stopped, installs it with apt-get if it is absent (as root);
#    installs nginx-light, faketime and docker-compose if absent (the tests
#    start their own nginx, run one instance under libfaketime and validate
#    docker-compose.yml; no Docker daemon is used).
# 2. Runs cargo fmt --check, cargo clippy -D warnings, and every test on both
#    backends (SQLite and MariaDB).
#
# Use another MySQL/MariaDB server with FLOATLM_TEST_MYSQL_URL=mysql://USER:PASS@HOST:PORT
set -euo pipefail
cd "$(dirname "$0")/.."

# shellcheck source=scripts/ensure.sh
source scripts/ensure.sh

ensure_mariadb
ensure_nginx
say "cargo fmt --check"
cargo fmt --all --check
say "cargo clippy --workspace --all-targets -- -D warnings"
cargo clippy --workspace --all-targets --quiet -- -D warnings
if cargo nextest --version >/dev/null 2>&1; then
  say "cargo nextest run (SQLite and MariaDB)"
  cargo nextest run --workspace --no-fail-fast
else
  say "cargo test (cargo-nextest not installed)"
  cargo test --workspace --no-fail-fast
fi
