#!/bin/sh
# Example floatlm auth script (floatlm serve --auth config/auth-example.sh).
#
# stdin: one JSON object {"mech": "...", "data": "...", "addr": "...", "user": "...", "groups": [...]}
# exit 0 allows the checkout; any other exit code denies it ("No license").
# Anything written to stderr appears in the server log.
#
# This example allows members of the group "cad-users" and any client from
# 10.x addresses, and denies everyone else. It needs only POSIX sh and grep.
input=$(cat)
if printf '%s' "$input" | grep -q '"cad-users"'; then
  exit 0
fi
if printf '%s' "$input" | grep -q '"addr":"10\.'; then
  exit 0
fi
echo "auth-example: denied $(printf '%s' "$input" | grep -o '"user":"[^"]*"')" >&2
exit 1
