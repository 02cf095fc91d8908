#!/bin/sh
# Creates, once, the secrets a floatlm cluster needs, in DIR (default /secrets):
#   master_key    k1:BASE64 of 32 random bytes (seals licenses and secrets)
#   admin_token   a static admin token (role admin)
#   db_password   the MariaDB password of user floatlm
#   database_url  mysql://floatlm:PASSWORD@DB_HOST:3306/floatlm
# Existing files are kept, so running it again changes nothing. Back up
# master_key: without it the database's sealed blobs cannot be opened.
# Run as root it gives the files to uid 10001 (floatlm) and 999 (mysql).
set -eu
dir="${1:-/secrets}"
db_host="${FLOATLM_DB_HOST:-db}"
mkdir -p "$dir"
cd "$dir"
umask 077
[ -s master_key ] || echo "k1:$(head -c 32 /dev/urandom | base64)" > master_key
[ -s admin_token ] || head -c 24 /dev/urandom | base64 | tr '+/' '-_' | tr -d '=\n' > admin_token
[ -s db_password ] || head -c 16 /dev/urandom | od -An -tx1 | tr -d ' \n' > db_password
[ -s database_url ] || echo "mysql://floatlm:$(cat db_password)@${db_host}:3306/floatlm" > database_url
if [ "$(id -u)" = 0 ]; then
    chown 10001:10001 master_key admin_token database_url
    chown 999:999 db_password
fi
chmod 0400 master_key admin_token database_url db_password
echo "floatlm secrets ready in $dir"
