# Sourced by scripts/test.sh and scripts/bench.sh: makes sure MariaDB answers
# on 127.0.0.1:3306 (starting or installing it) and that nginx-light, faketime,
# openssl, docker-compose, prometheus (for promtool), galera-4 with rsync (the
# Galera test and bench) and chromium with its driver (the console tests) are
# installed (apt-get, as root).

say() { printf '==> %s\n' "$*"; }
port_open() { (exec 3<>/dev/tcp/127.0.0.1/3306) 2>/dev/null; }

ensure_mariadb() {
  if [ -n "${FLOATLM_TEST_MYSQL_URL:-}" ]; then
    say "using FLOATLM_TEST_MYSQL_URL for MariaDB tests"
    return
  fi
  if ! port_open; then
    if [ ! -x /usr/sbin/mariadbd ] && [ ! -x /usr/sbin/mysqld ]; then
      if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
        say "MariaDB is not installed: installing mariadb-server"
        apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq mariadb-server >/dev/null
      else
        echo "MariaDB is not installed. Install it (apt-get install -y mariadb-server) or set FLOATLM_TEST_MYSQL_URL." >&2
        exit 1
      fi
    fi
    say "starting MariaDB"
    mkdir -p /run/mysqld && chown mysql:mysql /run/mysqld 2>/dev/null || true
    daemon=/usr/sbin/mariadbd; [ -x "$daemon" ] || daemon=/usr/sbin/mysqld
    start-stop-daemon --start --oknodo --background --exec "$daemon" -- --user=mysql 2>/dev/null \
      || service mariadb start >/dev/null 2>&1 || true
    for _ in $(seq 1 60); do port_open && break; sleep 0.5; done
    port_open || { echo "MariaDB did not come up on 127.0.0.1:3306; see its error log (/var/log/mysql/)." >&2; exit 1; }
  fi
  # Tests connect as root with no password over TCP. A fresh Debian install only
  # lets root in through the socket: then create a dedicated test user instead.
  if command -v mariadb >/dev/null && ! mariadb -uroot -h127.0.0.1 -e 'SELECT 1' >/dev/null 2>&1; then
    say "root cannot log in over TCP; creating user floatlm_test for the tests"
    mariadb -uroot -e "CREATE USER IF NOT EXISTS 'floatlm_test'@'127.0.0.1' IDENTIFIED BY 'floatlm_test';
      GRANT ALL PRIVILEGES ON *.* TO 'floatlm_test'@'127.0.0.1';"
    export FLOATLM_TEST_MYSQL_URL='mysql://floatlm_test:floatlm_test@127.0.0.1:3306'
  fi
}

# The active-active tests run a real NGINX in front of several instances.
ensure_nginx() {
  local missing=()
  [ -x /usr/sbin/nginx ] || command -v nginx >/dev/null || missing+=(nginx-light)
  # The clock-skew test runs an instance under libfaketime.
  [ -e /usr/lib/x86_64-linux-gnu/faketime/libfaketimeMT.so.1 ] || missing+=(faketime)
  # tests/client_tls.rs makes its test CA and certificates with the openssl CLI.
  command -v openssl >/dev/null || missing+=(openssl)
  # tests/containers.rs validates docker-compose.yml with Compose.
  { docker compose version >/dev/null 2>&1 || command -v docker-compose >/dev/null; } || missing+=(docker-compose)
  # tests/metrics.rs checks every scrape of /metrics with `promtool check metrics`.
  command -v promtool >/dev/null || missing+=(prometheus)
  [ ${#missing[@]} -eq 0 ] && return
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
    say "installing ${missing[*]} for the active-active and metrics tests"
    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}" >/dev/null
  else
    echo "missing: ${missing[*]}. Install them (apt-get install -y ${missing[*]})." >&2
    exit 1
  fi
}


# tests/galera.rs starts a 3-node Galera cluster of its own: the Galera
# library (galera-4) and rsync for state transfers.
ensure_galera() {
  local missing=()
  [ -e /usr/lib/galera/libgalera_smm.so ] || missing+=(galera-4)
  command -v rsync >/dev/null || missing+=(rsync)
  [ ${#missing[@]} -eq 0 ] && return
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
    say "installing ${missing[*]} for the Galera test"
    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}" >/dev/null
  else
    echo "missing: ${missing[*]}. Install them (apt-get install -y ${missing[*]})." >&2
    exit 1
  fi
}

# tests/console.rs drives the web console in headless Chromium through its
# WebDriver (Debian's chromium and chromium-driver).
ensure_chromium() {
  command -v chromium >/dev/null && command -v chromedriver >/dev/null && return
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
    say "installing chromium and chromium-driver for the console tests"
    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium chromium-driver >/dev/null
  else
    echo "missing: chromium chromium-driver. Install them (apt-get install -y chromium chromium-driver)." >&2
    exit 1
  fi
}
