#!/bin/sh
# Mosquitto for an edgeloop fleet whose server writes the accounts and ACL (EDGELOOP_MQTT_AUTH_DIR): waits for
# the server's first write, runs Mosquitto, and reloads it (SIGHUP) whenever the server changes them.
#   run-mosquitto.sh [CONFIG]   env: AUTH_DIR (default /mosquitto/auth), RELOAD_INTERVAL seconds (default 2)
set -eu
conf=${1:-/mosquitto/config/mosquitto.conf}
auth=${AUTH_DIR:-/mosquitto/auth}
interval=${RELOAD_INTERVAL:-2}
stamp() { stat -c '%i.%Y' "$auth/passwd" "$auth/acl" 2>/dev/null | tr '\n' ' '; }
until [ -s "$auth/passwd" ] && [ -s "$auth/acl" ]; do
  echo "waiting for the edgeloop server to write $auth/passwd and $auth/acl"
  sleep "$interval"
done
mosquitto -c "$conf" &
pid=$!
trap 'kill -TERM "$pid" 2>/dev/null; wait "$pid"; exit 0' TERM INT
last=$(stamp)
while kill -0 "$pid" 2>/dev/null; do
  sleep "$interval"
  now=$(stamp)
  if [ "$now" != "$last" ]; then
    kill -HUP "$pid"  # the server replaced a file (a new inode each time): load the accounts again
    last=$now
  fi
done
wait "$pid"
