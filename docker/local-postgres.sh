#!/usr/bin/env bash
# Run a throwaway PostgreSQL server (Debian's packaged binaries) on loopback for tests.
#
#   local-postgres.sh install                  apt-get install postgresql when no server binaries
#   local-postgres.sh start [--port N] [--owner-pid PID]
#                          initdb a temp cluster, start it, create database `headrace`; prints
#                          HEADRACE_TEST_POSTGRES_URL=postgresql+psycopg://postgres@127.0.0.1:N/headrace
#   local-postgres.sh stop                     stop it and delete its data dir
#   local-postgres.sh status                   exit 0 and print the URL line while it runs, else 3
#
# Environment: HEADRACE_PG_STATE (default /tmp/headrace-postgres), HEADRACE_PG_PORT,
# HEADRACE_PYTHON (port picking). Trust auth on loopback, superuser `postgres`, fsync off.
# As root the server runs as the `postgres` OS user (the Debian package creates it).
# --owner-pid PID: a watchdog stops the server once PID has exited.
set -euo pipefail

HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
ROOT="$(cd "$HERE/.." && pwd)"
STATE="${HEADRACE_PG_STATE:-/tmp/headrace-postgres}"
DB=headrace

log() { echo "local-postgres: $*" >&2; }
die() { log "error: $*"; exit 1; }

# Newest Debian server install, e.g. /usr/lib/postgresql/15/bin. /usr/local/bin/pg_ctl on the
# dev machines is only a symlink into it; the Debian dir is authoritative.
bindir() {
  local d best=""
  while read -r d; do
    if [[ -x "$d/initdb" && -x "$d/pg_ctl" && -x "$d/postgres" ]]; then best="$d"; fi
  done < <(printf '%s\n' /usr/lib/postgresql/*/bin | sort -V)
  [[ -n "$best" ]] && echo "$best"
}

as_pg() {  # run a server binary as the postgres OS user when we are root
  if [[ $EUID -eq 0 ]]; then runuser -u postgres -- "$@"; else "$@"; fi
}

cmd_install() {
  local bin
  if bin="$(bindir)"; then
    log "server binaries present in $bin"
    return 0
  fi
  [[ $EUID -eq 0 ]] || die "PostgreSQL server not installed; run as root: apt-get install -y postgresql"
  log "installing PostgreSQL server from Debian packages"
  apt-get update -q >&2
  DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends postgresql >&2
  # The package may create and start a `main` cluster on 5432: nothing here uses it.
  if command -v pg_lsclusters >/dev/null; then
    pg_lsclusters --no-header 2>/dev/null | while read -r ver name _port status _rest; do
      if [[ "$status" == online* ]]; then pg_ctlcluster "$ver" "$name" stop >&2 || true; fi
    done
  fi
  bin="$(bindir)" || die "apt-get installed postgresql but no initdb/pg_ctl under /usr/lib/postgresql"
  log "installed: $bin"
}

free_port() {
  local py="${HEADRACE_PYTHON:-$ROOT/.venv/bin/python}"
  [[ -x "$py" ]] || py="$(command -v python3)" || die "no python3 found"
  "$py" -c 'import socket
s = socket.socket()
s.bind(("127.0.0.1", 0))
print(s.getsockname()[1])'
}

alive() {  # pid exists and is not a zombie (PID 1 here reaps orphans lazily)
  local stat
  kill -0 "$1" 2>/dev/null || return 1
  stat="$(cat "/proc/$1/stat" 2>/dev/null)" || return 1
  stat="${stat##*) }"
  [[ "${stat%% *}" != Z ]]
}

read_state() { cat "$STATE/$1" 2>/dev/null || true; }

running_pid() {  # postmaster pid, from the data dir's postmaster.pid
  local data pid
  data="$(read_state data_dir)"
  [[ -n "$data" && -f "$data/pgdata/postmaster.pid" ]] || return 0
  pid="$(head -n 1 "$data/pgdata/postmaster.pid")"
  if [[ -n "$pid" ]] && alive "$pid"; then echo "$pid"; fi
}

url() { echo "HEADRACE_TEST_POSTGRES_URL=postgresql+psycopg://postgres@127.0.0.1:$1/$DB"; }

start_watchdog() {  # $1 owner pid, $2 postmaster pid
  local owner="$1" server="$2"
  (
    trap '' HUP INT
    while alive "$owner" && alive "$server"; do sleep 2; done
    if alive "$server" && [[ "$(running_pid)" == "$server" ]]; then
      "$HERE/local-postgres.sh" stop >/dev/null 2>&1 || true
    fi
  ) </dev/null >/dev/null 2>&1 &
  disown
}

cmd_start() {
  local port="${HEADRACE_PG_PORT:-}" owner="" bin data pid
  while [[ $# -gt 0 ]]; do
    case "$1" in
      --port) port="$2"; shift 2 ;;
      --owner-pid) owner="$2"; shift 2 ;;
      *) die "unknown start option: $1" ;;
    esac
  done
  bin="$(bindir)" || die "no PostgreSQL server binaries under /usr/lib/postgresql: run '$0 install'"
  if [[ -n "$(running_pid)" ]]; then
    log "already running (pid $(running_pid)); state in $STATE"
    url "$(read_state port)"
    return 0
  fi
  [[ -n "$port" ]] || port="$(free_port)"

  mkdir -p "$STATE"
  data="$(mktemp -d "${TMPDIR:-/tmp}/headrace-postgres-data.XXXXXX")"
  [[ $EUID -ne 0 ]] || chown postgres: "$data"
  chmod 700 "$data"
  echo "$data" >"$STATE/data_dir"
  echo "$port" >"$STATE/port"

  if ! as_pg "$bin/initdb" -D "$data/pgdata" -U postgres --auth=trust --encoding=UTF8 \
      --no-locale --no-sync >"$data/initdb.log" 2>&1; then
    cat "$data/initdb.log" >&2
    rm -rf "$data" "$STATE"
    die "initdb failed"
  fi
  cat >>"$data/pgdata/postgresql.conf" <<EOF

# headrace test server
listen_addresses = '127.0.0.1'
port = $port
unix_socket_directories = '$data'
fsync = off
synchronous_commit = off
full_page_writes = off
max_connections = 200
EOF
  if ! as_pg "$bin/pg_ctl" -D "$data/pgdata" -l "$data/server.log" -w -t 60 start >&2; then
    tail -n 40 "$data/server.log" >&2 || true
    rm -rf "$data" "$STATE"
    die "pg_ctl start failed"
  fi
  pid="$(running_pid)"
  [[ -z "$owner" ]] || start_watchdog "$owner" "$pid"
  if ! as_pg "$bin/createdb" -h 127.0.0.1 -p "$port" -U postgres "$DB" >&2; then
    cmd_stop >/dev/null 2>&1 || true
    die "createdb $DB failed"
  fi
  log "server pid $pid on 127.0.0.1:$port, data $data"
  url "$port"
}

cmd_stop() {
  local data pid bin
  data="$(read_state data_dir)"
  pid="$(running_pid)"
  if [[ -n "$pid" ]]; then
    bin="$(bindir)" || die "server binaries vanished; kill pid $pid by hand"
    as_pg "$bin/pg_ctl" -D "$data/pgdata" -m fast -w -t 30 stop >&2 ||
      { kill -KILL "$pid" 2>/dev/null || true; }
    log "stopped server $pid"
  else
    log "not running"
  fi
  if [[ -n "$data" && "$data" == */headrace-postgres-data.* ]]; then rm -rf "$data"; fi
  rm -rf "$STATE"
}

cmd_status() {
  local pid
  pid="$(running_pid)"
  if [[ -z "$pid" ]]; then
    echo "not running"
    return 3
  fi
  log "running: pid $pid, data $(read_state data_dir)"
  url "$(read_state port)"
}

case "${1:-}" in
  install) shift; cmd_install "$@" ;;
  start) shift; cmd_start "$@" ;;
  stop) shift; cmd_stop "$@" ;;
  status) shift; cmd_status "$@" ;;
  *) echo "usage: $0 {install|start [--port N] [--owner-pid PID]|stop|status}" >&2; exit 2 ;;
esac
