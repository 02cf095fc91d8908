#!/bin/bash
# Usage-record cost per checkout (docs/benchmarks.md, "Usage records"): one
# release build, one server on MariaDB, `floatlm-bench --identity … --only
# checkout` with the usage trigger, after DROP TRIGGER, and re-created.
set -euo pipefail
cd "$(dirname "$0")/.."
T_DIR="${CARGO_TARGET_DIR:-target}"
B=$T_DIR/release/floatlm
D=$T_DIR/bench/usage; rm -rf $D; mkdir -p $D
mariadb -uroot -e "DROP DATABASE IF EXISTS usagebench; CREATE DATABASE usagebench"
$B vendor keygen --out $D/vendor >/dev/null
printf 'license_id = "B1"\nserial = 1\ncustomer = "bench"\n[[feature]]\nname = "bench"\nseats = 20000\n' > $D/b.toml
$B vendor sign --key $D/vendor/vendor.key $D/b.toml -o $D/b.lic >/dev/null
export FLOATLM_MASTER_KEY="k1:AQEBAQEBAQEBAQEBAQEBAQEBAQEBAQEBAQEBAQEBAQE="
$B serve --database-url mysql://root@127.0.0.1:3306/usagebench --listen 127.0.0.1:18990 --admin-listen 127.0.0.1:18991 \
  --data-dir $D/data --vendor-key $D/vendor/vendor.pub --log-level warn > $D/server.log 2>&1 &
echo $! > $D/server.pid
for i in $(seq 1 100); do curl -sf http://127.0.0.1:18990/sentinel/ldk/v1/healthz >/dev/null && break; sleep 0.2; done
T=$(cat $D/data/admin.token)
$B admin --url http://127.0.0.1:18991 --token "$T" apply $D/b.lic
ID=$($B admin --url http://127.0.0.1:18991 --token "$T" --json identity create --name bench | grep -o '"identity_string": *"[^"]*"' | sed 's/.*: *"//; s/"$//')
run() { # $1 label
  mariadb -uroot usagebench -e "UPDATE slots SET holder=NULL, client_info=NULL, request_id=NULL, expires_at=NULL"
  "$T_DIR/release/floatlm-bench" --identity "$ID" --feature bench --only checkout --seconds 8 --leases 10000 --out $D/$1.json | tee $D/$1.txt
}
run with1
mariadb -uroot usagebench -e "DROP TRIGGER usage_on_slots"
run without
(cat migrations/mysql/0012_usage_trigger_guard.sql; echo '$$') | mariadb -uroot --delimiter='$$' usagebench
run with2
mariadb -uroot usagebench -e "SELECT COUNT(*) AS usage_rows FROM usage_events"
kill $(cat $D/server.pid)
