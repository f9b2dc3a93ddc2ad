#!/usr/bin/env bash
# Throwaway PostgreSQL and Redis for the app's tests and bench, on loopback only.
#
#   tools/test-services.sh start    # install if absent (apt-get, as root), start if not running
#   tools/test-services.sh stop     # stop both (data stays in the state dir)
#   tools/test-services.sh status   # exit 0 when both answer
#   tools/test-services.sh env      # print the env file
#   tools/test-services.sh destroy  # stop and delete the state dir
#
# PostgreSQL: a private initdb cluster on 127.0.0.1:${SLIPWAY_TEST_PG_PORT:-55432}, superuser
# "slipway" with a password. Redis: 127.0.0.1:${SLIPWAY_TEST_REDIS_PORT:-56379} with a password.
# Start writes $STATE/env (shell syntax) with SLIPWAY_TEST_DATABASE_URL (the maintenance
# database "postgres") and SLIPWAY_TEST_REDIS_URL, and prints it. PostgreSQL refuses to run
# as root, so as root the cluster belongs to (and runs as) the "postgres" user.
set -euo pipefail

STATE=${SLIPWAY_TEST_STATE:-/tmp/slipway-test-services}
PG_PORT=${SLIPWAY_TEST_PG_PORT:-55432}
REDIS_PORT=${SLIPWAY_TEST_REDIS_PORT:-56379}
PG_PASSWORD=slipway-test
REDIS_PASSWORD=slipway-test
PGDATA="$STATE/pg"
WAIT_SECONDS=30

log() { echo "test-services: $*" >&2; }
die() { log "$*"; exit 1; }

pg_bin() {
  local dir
  dir=$(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V | tail -n1 || true)
  [[ -n "$dir" && -x "$dir/initdb" ]] && echo "$dir"
}

ensure_installed() {
  local need=()
  [[ -n "$(pg_bin)" ]] || need+=(postgresql)
  command -v redis-server >/dev/null || need+=(redis-server)
  ((${#need[@]} == 0)) && return 0
  [[ $EUID -eq 0 ]] || die "missing ${need[*]}; install them (apt-get install ${need[*]}) or run as root"
  log "installing ${need[*]}"
  DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends "${need[@]}" >&2 \
    || { apt-get update >&2 && DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends "${need[@]}" >&2; }
}

# Run a command as the cluster owner (postgres when we are root, else ourselves).
as_owner() {
  if [[ $EUID -eq 0 ]]; then runuser -u postgres -- "$@"; else "$@"; fi
}

pg_running() { as_owner "$(pg_bin)/pg_ctl" -D "$PGDATA" status >/dev/null 2>&1; }

redis_cli() { redis-cli -h 127.0.0.1 -p "$REDIS_PORT" --no-auth-warning -a "$REDIS_PASSWORD" "$@"; }
redis_running() { [[ "$(redis_cli ping 2>/dev/null)" == "PONG" ]]; }

start_pg() {
  local bin; bin=$(pg_bin)
  mkdir -p "$STATE"
  chmod 0755 "$STATE"
  if [[ ! -s "$PGDATA/PG_VERSION" ]]; then
    log "initdb $PGDATA"
    rm -rf "$PGDATA"
    install -d -m 0700 "$PGDATA"
    local pwfile; pwfile=$(mktemp "$STATE/.pw.XXXXXX")
    echo "$PG_PASSWORD" >"$pwfile"
    if [[ $EUID -eq 0 ]]; then chown postgres: "$PGDATA" "$pwfile"; fi
    as_owner "$bin/initdb" -D "$PGDATA" -U slipway --pwfile="$pwfile" \
      --auth-local=scram-sha-256 --auth-host=scram-sha-256 -E UTF8 --locale=C.UTF-8 >&2
    rm -f "$pwfile"
    cat >>"$PGDATA/postgresql.conf" <<EOF
listen_addresses = '127.0.0.1'
port = $PG_PORT
unix_socket_directories = '$PGDATA'
fsync = off
synchronous_commit = off
full_page_writes = off
max_connections = 200
EOF
  fi
  if pg_running; then
    log "postgresql already running on 127.0.0.1:$PG_PORT"
  else
    log "starting postgresql on 127.0.0.1:$PG_PORT"
    as_owner "$bin/pg_ctl" -D "$PGDATA" -l "$PGDATA/server.log" -w -t "$WAIT_SECONDS" start >&2 \
      || { tail -n 20 "$PGDATA/server.log" >&2; die "postgresql did not start"; }
  fi
}

start_redis() {
  mkdir -p "$STATE/redis"
  if redis_running; then
    log "redis already running on 127.0.0.1:$REDIS_PORT"
    return 0
  fi
  log "starting redis on 127.0.0.1:$REDIS_PORT"
  redis-server --bind 127.0.0.1 --port "$REDIS_PORT" --requirepass "$REDIS_PASSWORD" \
    --daemonize yes --dir "$STATE/redis" --pidfile "$STATE/redis/redis.pid" \
    --logfile "$STATE/redis/redis.log" --save "" --appendonly no
  local i
  for ((i = 0; i < WAIT_SECONDS * 10; i++)); do
    redis_running && return 0
    sleep 0.1
  done
  die "redis did not answer within ${WAIT_SECONDS}s (see $STATE/redis/redis.log)"
}

write_env() {
  cat >"$STATE/env" <<EOF
SLIPWAY_TEST_DATABASE_URL=postgresql+psycopg://slipway:$PG_PASSWORD@127.0.0.1:$PG_PORT/postgres
SLIPWAY_TEST_REDIS_URL=redis://:$REDIS_PASSWORD@127.0.0.1:$REDIS_PORT/0
SLIPWAY_TEST_STATE=$STATE
EOF
  cat "$STATE/env"
}

stop_all() {
  if [[ -n "$(pg_bin)" && -s "$PGDATA/PG_VERSION" ]] && pg_running; then
    log "stopping postgresql"
    as_owner "$(pg_bin)/pg_ctl" -D "$PGDATA" -m fast -w -t "$WAIT_SECONDS" stop >&2
  fi
  if redis_running; then
    log "stopping redis"
    redis_cli shutdown nosave >/dev/null 2>&1 || true
  fi
}

case "${1:-start}" in
  start)
    ensure_installed
    start_pg
    start_redis
    write_env
    ;;
  stop) stop_all ;;
  status)
    if pg_running && redis_running; then echo running; else echo stopped; exit 1; fi
    ;;
  env) cat "$STATE/env" ;;
  destroy)
    stop_all
    rm -rf "$STATE"
    ;;
  *) die "usage: $0 start|stop|status|env|destroy" ;;
esac
