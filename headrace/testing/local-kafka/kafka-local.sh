#!/usr/bin/env bash
# Run a real single-node Apache Kafka broker (KRaft, combined broker+controller) without Docker:
# the jars come from Maven Central (pom.xml beside this script), the JVM is the machine's java.
# Shipped inside the headrace package (headrace/testing/local-kafka/), so it works from an
# installed wheel; docker/local-kafka/kafka-local.sh in the repository calls this copy.
#
#   kafka-local.sh fetch                  copy the broker jars into the cache (idempotent)
#   kafka-local.sh start [--port N] [--controller-port N] [--owner-pid PID]
#                                         start a broker; prints KAFKA_BOOTSTRAP_SERVERS=127.0.0.1:N
#   kafka-local.sh stop                   stop it and delete its data dir
#   kafka-local.sh status                 exit 0 and print the bootstrap line while it runs, else 3
#
# Environment:
#   HEADRACE_KAFKA_LIBS     jar cache dir         (default ~/.cache/headrace/kafka-libs)
#   HEADRACE_KAFKA_STATE    pid/port/data state   (default /tmp/headrace-kafka)
#   HEADRACE_KAFKA_PORT, HEADRACE_KAFKA_CONTROLLER_PORT   fixed ports instead of free ones
#   HEADRACE_KAFKA_START_TIMEOUT   seconds to wait for the broker (default 120)
#   HEADRACE_KAFKA_HEAP_OPTS       default "-Xmx1g -Xms1g"
#   HEADRACE_KAFKA_GC_OPTS         default "-XX:+UseZGC": pauses under 1 ms. With the JVM's
#                                  default (G1, 512 MB) the broker paused 5-17 ms per young
#                                  collection, about every 2 s at 5,000 msg/s, and those
#                                  pauses were the whole p99 of make bench's latency phase
#   HEADRACE_KAFKA_SERVER_PROPS    extra server.properties lines appended at start
#   HEADRACE_PYTHON                python used for port picking / the readiness check
#                                  (default: the python next to this installed package,
#                                  else the repository's .venv, else python3)
#
# --owner-pid PID: a watchdog stops the broker (and deletes its data) once PID has exited, so a
# killed test session does not leave a JVM behind.
set -euo pipefail

HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
ROOT="$(cd "$HERE/../../.." && pwd)"  # the repository (site-packages when installed)
LIBS="${HEADRACE_KAFKA_LIBS:-${HOME:-/root}/.cache/headrace/kafka-libs}"
STATE="${HEADRACE_KAFKA_STATE:-/tmp/headrace-kafka}"
START_TIMEOUT="${HEADRACE_KAFKA_START_TIMEOUT:-120}"
HEAP_OPTS="${HEADRACE_KAFKA_HEAP_OPTS:--Xmx1g -Xms1g}"
GC_OPTS="${HEADRACE_KAFKA_GC_OPTS:--XX:+UseZGC}"

log() { echo "kafka-local: $*" >&2; }
die() { log "error: $*"; exit 1; }

python_bin() {
  if [[ -n "${HEADRACE_PYTHON:-}" ]]; then echo "$HEADRACE_PYTHON"
  elif [[ -x "$ROOT/.venv/bin/python" ]]; then echo "$ROOT/.venv/bin/python"
  else command -v python3 || die "no python3 found"
  fi
}

pom_stamp() { sha256sum "$HERE/pom.xml" | cut -d' ' -f1; }

have_libs() {
  [[ -f "$LIBS/.pom.sha256" && "$(cat "$LIBS/.pom.sha256")" == "$(pom_stamp)" ]] &&
    compgen -G "$LIBS/kafka_2.13-*.jar" >/dev/null
}

cmd_fetch() {
  mkdir -p "$(dirname "$LIBS")"
  exec 9>"$LIBS.lock"
  flock 9  # concurrent test sessions fetch once
  if have_libs; then
    log "jars already in $LIBS"
    return 0
  fi
  command -v mvn >/dev/null || die "mvn not found (apt-get install -y maven)"
  local tmp
  tmp="$(mktemp -d "$LIBS.tmp.XXXXXX")"
  log "fetching Kafka jars from Maven Central into $LIBS"
  if ! mvn -q -B -Dstyle.color=never -f "$HERE/pom.xml" dependency:copy-dependencies \
      -DincludeScope=runtime -DoutputDirectory="$tmp" >&2; then
    rm -rf "$tmp"
    die "mvn dependency:copy-dependencies failed"
  fi
  pom_stamp >"$tmp/.pom.sha256"
  rm -rf "$LIBS"
  mv "$tmp" "$LIBS"
  log "$(find "$LIBS" -name '*.jar' | wc -l) jars in $LIBS"
}

free_port() {
  "$(python_bin)" -c 'import socket
s = socket.socket()
s.bind(("127.0.0.1", 0))
print(s.getsockname()[1])'
}

cluster_id() {
  # A Kafka Uuid: 16 random bytes, base64url without padding (22 chars). One that starts
  # with "-" would read as an option to the storage tool (1 in 64 runs): draw again.
  local id
  while :; do
    id="$(head -c 16 /dev/urandom | base64 | tr '+/' '-_' | tr -d '=\n')"
    [[ "$id" != -* ]] && break
  done
  echo "$id"
}

alive() {  # pid exists and is not a zombie (PID 1 here reaps orphans lazily)
  local stat
  kill -0 "$1" 2>/dev/null || return 1
  stat="$(cat "/proc/$1/stat" 2>/dev/null)" || return 1
  stat="${stat##*) }"
  [[ "${stat%% *}" != Z ]]
}

read_state() { cat "$STATE/$1" 2>/dev/null || true; }

running_pid() {
  local pid
  pid="$(read_state pid)"
  if [[ -n "$pid" ]] && alive "$pid"; then echo "$pid"; fi
}

broker_ready() {  # $1 = port; 0 when the broker answers a metadata request
  "$(python_bin)" - "$1" <<'EOF' 2>/dev/null
import sys
try:
    from confluent_kafka.admin import AdminClient
except ImportError:  # no client library: settle for an open port
    import socket
    socket.create_connection(("127.0.0.1", int(sys.argv[1])), timeout=2).close()
    sys.exit(0)
admin = AdminClient({"bootstrap.servers": f"127.0.0.1:{sys.argv[1]}", "log_level": 0})
md = admin.list_topics(timeout=2)
sys.exit(0 if md.brokers else 1)
EOF
}

show_logs() {
  local data="$1"
  for f in "$data/logs/server.log" "$data/stdout.log"; do
    if [[ -s "$f" ]]; then
      log "--- last lines of $f ---"
      tail -n 40 "$f" >&2
    fi
  done
}

start_watchdog() {  # $1 owner pid, $2 broker pid
  local owner="$1" broker="$2"
  (
    trap '' HUP INT
    while alive "$owner" && alive "$broker"; do sleep 2; done
    if alive "$broker" && [[ "$(read_state pid)" == "$broker" ]]; then
      bash "$HERE/kafka-local.sh" stop >/dev/null 2>&1 || true
    fi
  ) </dev/null >/dev/null 2>&1 &
  disown
}

cmd_start() {
  local port="${HEADRACE_KAFKA_PORT:-}" cport="${HEADRACE_KAFKA_CONTROLLER_PORT:-}" owner=""
  while [[ $# -gt 0 ]]; do
    case "$1" in
      --port) port="$2"; shift 2 ;;
      --controller-port) cport="$2"; shift 2 ;;
      --owner-pid) owner="$2"; shift 2 ;;
      *) die "unknown start option: $1" ;;
    esac
  done
  command -v java >/dev/null || die "java not found (apt-get install -y openjdk-17-jre-headless)"
  have_libs || die "no Kafka jars in $LIBS: run '$0 fetch' first"
  if [[ -n "$(running_pid)" ]]; then
    log "already running (pid $(read_state pid)); state in $STATE"
    echo "KAFKA_BOOTSTRAP_SERVERS=127.0.0.1:$(read_state port)"
    return 0
  fi
  [[ -n "$port" ]] || port="$(free_port)"
  [[ -n "$cport" ]] || cport="$(free_port)"
  while [[ "$cport" == "$port" ]]; do cport="$(free_port)"; done

  mkdir -p "$STATE"
  local data
  data="$(mktemp -d "${TMPDIR:-/tmp}/headrace-kafka-data.XXXXXX")"
  mkdir -p "$data/logs" "$data/kraft"
  sed -e "s|@PORT@|$port|g" -e "s|@CONTROLLER_PORT@|$cport|g" -e "s|@LOG_DIRS@|$data/kraft|g" \
    "$HERE/server.properties.template" >"$data/server.properties"
  if [[ -n "${HEADRACE_KAFKA_SERVER_PROPS:-}" ]]; then
    printf '\n%s\n' "$HEADRACE_KAFKA_SERVER_PROPS" >>"$data/server.properties"
  fi
  echo "$data" >"$STATE/data_dir"
  echo "$port" >"$STATE/port"
  echo "$cport" >"$STATE/controller_port"

  local heap gc jvm
  read -r -a heap <<<"$HEAP_OPTS"
  read -r -a gc <<<"$GC_OPTS"
  jvm=(java "${heap[@]}" "${gc[@]}" -Djava.awt.headless=true
    "-Dlog4j2.configurationFile=$HERE/log4j2.xml" "-Dkafka.logs.dir=$data/logs"
    -cp "$LIBS/*")
  # Static controller.quorum.voters: plain format, no --standalone / --initial-controllers.
  if ! "${jvm[@]}" kafka.tools.StorageTool format -t "$(cluster_id)" \
      -c "$data/server.properties" >"$data/format.log" 2>&1; then
    cat "$data/format.log" >&2
    rm -rf "$data" "$STATE"
    die "storage format failed"
  fi

  setsid "${jvm[@]}" kafka.Kafka "$data/server.properties" </dev/null >"$data/stdout.log" 2>&1 &
  local pid=$!
  echo "$pid" >"$STATE/pid"
  [[ -z "$owner" ]] || start_watchdog "$owner" "$pid"

  local deadline=$((SECONDS + START_TIMEOUT))
  until broker_ready "$port"; do
    if ! alive "$pid"; then
      log "broker process $pid exited during start"
      show_logs "$data"
      cmd_stop >/dev/null 2>&1 || true
      die "Kafka broker failed to start (data dir was $data)"
    fi
    if ((SECONDS >= deadline)); then
      log "broker not answering on 127.0.0.1:$port after ${START_TIMEOUT}s"
      show_logs "$data"
      cmd_stop >/dev/null 2>&1 || true
      die "Kafka broker start timed out"
    fi
    sleep 0.5
  done
  log "broker pid $pid on 127.0.0.1:$port (controller $cport), data $data"
  echo "KAFKA_BOOTSTRAP_SERVERS=127.0.0.1:$port"
}

cmd_stop() {
  local pid data
  pid="$(running_pid)"
  if [[ -n "$pid" ]]; then
    kill -TERM "$pid" 2>/dev/null || true
    for _ in $(seq 1 60); do  # controlled shutdown of one node takes a few seconds
      alive "$pid" || break
      sleep 0.5
    done
    if alive "$pid"; then
      log "broker $pid ignored SIGTERM for 30s: killing"
      kill -KILL "$pid" 2>/dev/null || true
      while alive "$pid"; do sleep 0.2; done
    fi
    log "stopped broker $pid"
  else
    log "not running"
  fi
  data="$(read_state data_dir)"
  if [[ -n "$data" && "$data" == */headrace-kafka-data.* ]]; then rm -rf "$data"; fi
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
  echo "KAFKA_BOOTSTRAP_SERVERS=127.0.0.1:$(read_state port)"
}

case "${1:-}" in
  fetch) shift; cmd_fetch "$@" ;;
  start) shift; cmd_start "$@" ;;
  stop) shift; cmd_stop "$@" ;;
  status) shift; cmd_status "$@" ;;
  *) echo "usage: $0 {fetch|start [--port N] [--controller-port N] [--owner-pid PID]|stop|status}" >&2
     exit 2 ;;
esac
