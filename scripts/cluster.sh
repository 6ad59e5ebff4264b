#!/usr/bin/env bash
# Start, inspect and stop N local chatgate nodes.
#
#   scripts/cluster.sh start [N] [--embedded] [--no-build]   start N nodes (default 3)
#   scripts/cluster.sh status                                 URLs, pids, readiness
#   scripts/cluster.sh stop                                   SIGTERM all, wait, report
#
# Cluster mode (default) uses local Redis and RabbitMQ (REDIS_ADDR, RABBIT_MQ_URL may be
# overridden); --embedded starts N independent single-node servers instead.
# Environment: CHAT_BASE_PORT (default 9001: nodes on 9001, 9002, ...), CHAT_CLUSTER
# (default "local"), CHAT_CPUS (e.g. "0": pin the nodes with taskset), any CHAT_* setting.
# State (pids, logs) lives in ${CHAT_STATE_DIR:-.cluster}/.
set -euo pipefail
cd "$(dirname "$0")/.."

state=${CHAT_STATE_DIR:-.cluster}
base=${CHAT_BASE_PORT:-9001}
bin=${CARGO_TARGET_DIR:-target}/release/chatgate

usage() { sed -n '2,13p' "$0" | sed 's/^# \{0,1\}//'; exit 2; }

start() {
  local n=3 embedded=0 build=1
  for a in "$@"; do
    case $a in
      --embedded) embedded=1 ;;
      --no-build) build=0 ;;
      ''|*[!0-9]*) usage ;;
      *) n=$a ;;
    esac
  done
  if [ -s "$state/pids" ]; then
    echo "already running (see: $0 status); stop it first" >&2; exit 1
  fi
  [ $build = 1 ] && cargo build --release --quiet --bin chatgate
  mkdir -p "$state"
  : > "$state/pids"
  local pin=()
  [ -n "${CHAT_CPUS:-}" ] && pin=(taskset -c "$CHAT_CPUS")
  for i in $(seq 1 "$n"); do
    local port=$((base + i - 1)) id="node$i"
    if [ $embedded = 1 ]; then
      env CHAT_NODE_ID=$id CHAT_LISTEN=127.0.0.1:$port "${pin[@]}" "$bin" >"$state/$id.log" 2>&1 &
    else
      env CHAT_NODE_ID=$id CHAT_LISTEN=127.0.0.1:$port \
        CHAT_CLUSTER="${CHAT_CLUSTER:-local}" \
        RABBIT_MQ_URL="${RABBIT_MQ_URL:-amqp://guest:guest@127.0.0.1:5672/%2f}" \
        REDIS_ADDR="${REDIS_ADDR:-127.0.0.1:6379}" \
        "${pin[@]}" "$bin" >"$state/$id.log" 2>&1 &
    fi
    echo "$! $id $port" >> "$state/pids"
  done
  # Wait until every node is ready (or give up after 30 s).
  for _ in $(seq 1 300); do
    local ready=0
    while read -r _ _ port; do
      curl -fs "http://127.0.0.1:$port/readyz" >/dev/null 2>&1 && ready=$((ready + 1))
    done < "$state/pids"
    [ $ready = "$n" ] && break
    sleep 0.1
  done
  status
}

status() {
  [ -s "$state/pids" ] || { echo "no nodes running"; return 0; }
  printf '%-8s %-8s %-28s %s\n' NODE PID URL READY
  while read -r pid id port; do
    local ready
    ready=$(curl -s "http://127.0.0.1:$port/readyz" 2>/dev/null || echo "down")
    kill -0 "$pid" 2>/dev/null || ready="exited (see $state/$id.log)"
    printf '%-8s %-8s %-28s %s\n' "$id" "$pid" "ws://127.0.0.1:$port/ws" "$ready"
  done < "$state/pids"
}

stop() {
  [ -s "$state/pids" ] || { echo "no nodes running"; return 0; }
  while read -r pid _ _; do kill -TERM "$pid" 2>/dev/null || true; done < "$state/pids"
  local rc=0
  while read -r pid id _; do
    for _ in $(seq 1 300); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
    if kill -0 "$pid" 2>/dev/null; then
      echo "$id ($pid) did not exit in 30 s; killing"; kill -KILL "$pid" 2>/dev/null || true; rc=1
    else
      echo "$id ($pid) stopped"
    fi
  done < "$state/pids"
  : > "$state/pids"
  return $rc
}

cmd=${1:-}; shift || true
case $cmd in
  start) start "$@" ;;
  status) status ;;
  stop) stop ;;
  *) usage ;;
esac
