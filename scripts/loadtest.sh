#!/usr/bin/env bash
# Start gateway(s), run a chatgate-load scenario against them, report the tool's figures
# beside the servers' own cost (CPU seconds from /proc per 1,000 delivered messages and per
# delivery, peak RSS, RSS per connection).
#
#   scripts/loadtest.sh [options] -- <chatgate-load scenario and options>
#
# Options:
#   --nodes N        gateways to start (default 1). N > 1, or --cluster, runs cluster mode
#                    against local Redis and RabbitMQ, whose CPU is then counted too.
#   --cluster        cluster mode even with one node
#   --gw-cpus LIST   taskset CPU list for the gateways (default 0)
#   --tool-cpus LIST taskset CPU list for the load tool (default 1)
#   --no-build       use the existing target/release binaries
#   --debug          use target/debug binaries (as `cargo test` leaves them; no build)
#   --out FILE       where to keep the tool's JSON report (default target/loadtest/last.json)
#   --relay          run the bare tokio-tungstenite relay (examples/relay.rs) instead of
#                    chatgate: the baseline for overload figures (one node, no cluster)
#   --gateway PATH   run this chatgate binary instead of target/<profile>/chatgate (an
#                    older build, for before/after figures from one session)
#   --scrape         GET /metrics from every gateway once a second while the tool runs
#                    (the metrics' own cost: compare with and without)
#   --tls            gateways serve TLS (CHAT_TLS_CERT_FILE/KEY_FILE with an ECDSA P-256
#                    certificate from a CA made here, under target/loadtest/tls) and the
#                    tool connects with wss:// (--ca; a full handshake per connection)
# Gateways get CHAT_RATE_LIMIT/CHAT_RATE_BURST=1000000 (a load tool exceeds the 100/s
# default); any CHAT_* variable in the environment is passed through.
#
# Examples:
#   scripts/loadtest.sh -- fanout --conns 1000 --rate max --duration 10
#   scripts/loadtest.sh -- direct --conns 2000 --rate 10000
#   scripts/loadtest.sh --nodes 2 -- direct --conns 2000 --rate 10000
# Overload (open loop, offered rate far above what one core delivers), chatgate and the
# bare relay in turn:
#   scripts/loadtest.sh -- fanout --conns 1000 --senders 10 --rate 4000 --duration 10
#   scripts/loadtest.sh --relay -- fanout --conns 1000 --senders 10 --rate 4000 --duration 10
#   scripts/loadtest.sh --nodes 2 -- direct --conns 2000 --rate 100000 --duration 10
# TLS against plain: handshakes per second, and CPU per message:
#   scripts/loadtest.sh --tls -- connect --conns 5000 --hold 1
#   scripts/loadtest.sh --tls -- direct --conns 2000 --rate 10000
set -euo pipefail
cd "$(dirname "$0")/.."

nodes=1 cluster=0 gw_cpus=0 tool_cpus=1 build=1 out=${CARGO_TARGET_DIR:-target}/loadtest/last.json profile=release
relay=0 scrape=0 tls=0 gateway=
while [ $# -gt 0 ]; do
  case $1 in
    --nodes) nodes=$2; shift 2 ;;
    --cluster) cluster=1; shift ;;
    --gw-cpus) gw_cpus=$2; shift 2 ;;
    --tool-cpus) tool_cpus=$2; shift 2 ;;
    --no-build) build=0; shift ;;
    --debug) build=0; profile=debug; shift ;;
    --out) out=$2; shift 2 ;;
    --relay) relay=1; shift ;;
    --scrape) scrape=1; shift ;;
    --tls) tls=1; shift ;;
    --gateway) gateway=$2; shift 2 ;;
    --) shift; break ;;
    -h|--help) sed -n '2,40p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
    *) echo "unknown option $1 (see --help)" >&2; exit 2 ;;
  esac
done
[ $# -gt 0 ] || { echo "give a chatgate-load scenario after --" >&2; exit 2; }
[ "$nodes" -gt 1 ] && cluster=1
if [ $relay = 1 ] && { [ $cluster = 1 ] || [ $scrape = 1 ] || [ $tls = 1 ]; }; then
  echo "--relay is one process without cluster mode, metrics or TLS" >&2; exit 2
fi

[ $build = 1 ] && cargo build --release --quiet --bin chatgate --bin chatgate-load
[ $build = 1 ] && [ $relay = 1 ] && cargo build --release --quiet --example relay
bin=${CARGO_TARGET_DIR:-target}/$profile
gateway=${gateway:-$bin/chatgate}
mkdir -p "$(dirname "$out")"
logs=$(dirname "$out")
base=${CHAT_BASE_PORT:-9401}
name="lt$$"
pids=() urls=()
scheme=http wscheme=ws host=127.0.0.1 curl_tls=() tool_tls=()
if [ $tls = 1 ]; then
  pki=$logs/tls
  if [ ! -s "$pki/cert.pem" ]; then
    mkdir -p "$pki"
    ec=(-newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes)
    openssl req -x509 "${ec[@]}" -keyout "$pki/ca.key" -out "$pki/ca.pem" -days 365 \
      -subj "/CN=chatgate loadtest CA" 2>/dev/null
    openssl req "${ec[@]}" -keyout "$pki/key.pem" -out "$pki/req.csr" -subj "/CN=localhost" 2>/dev/null
    printf 'subjectAltName=DNS:localhost,IP:127.0.0.1\nbasicConstraints=CA:FALSE\nextendedKeyUsage=serverAuth\n' >"$pki/ext"
    openssl x509 -req -in "$pki/req.csr" -CA "$pki/ca.pem" -CAkey "$pki/ca.key" -CAcreateserial \
      -out "$pki/cert.pem" -days 365 -extfile "$pki/ext" 2>/dev/null
  fi
  scheme=https wscheme=wss host=localhost
  curl_tls=(--cacert "$pki/ca.pem")
  tool_tls=(--ca "$pki/ca.pem")
fi
scraper=
cleanup() {
  if [ -n "$scraper" ]; then pkill -P "$scraper" 2>/dev/null || true; kill "$scraper" 2>/dev/null || true; fi
  for p in "${pids[@]}"; do kill -TERM "$p" 2>/dev/null || true; done
  for p in "${pids[@]}"; do
    for _ in $(seq 1 100); do kill -0 "$p" 2>/dev/null || break; sleep 0.1; done
    kill -KILL "$p" 2>/dev/null || true
  done
}
trap cleanup EXIT

for i in $(seq 1 "$nodes"); do
  port=$((base + i - 1))
  envs=(CHAT_NODE_ID="$name-n$i" CHAT_LISTEN="127.0.0.1:$port"
        CHAT_RATE_LIMIT="${CHAT_RATE_LIMIT:-1000000}" CHAT_RATE_BURST="${CHAT_RATE_BURST:-1000000}"
        CHAT_LOG_FORMAT=json)
  [ $tls = 1 ] && envs+=(CHAT_TLS_CERT_FILE="$pki/cert.pem" CHAT_TLS_KEY_FILE="$pki/key.pem")
  if [ $cluster = 1 ]; then
    envs+=(CHAT_CLUSTER="$name" REDIS_ADDR="${REDIS_ADDR:-127.0.0.1:6379}"
           RABBIT_MQ_URL="${RABBIT_MQ_URL:-amqp://guest:guest@127.0.0.1:5672/%2f}")
  fi
  if [ $relay = 1 ]; then
    taskset -c "$gw_cpus" "$bin/examples/relay" "127.0.0.1:$port" >"$logs/gateway-$i.log" 2>&1 &
  else
    env "${envs[@]}" taskset -c "$gw_cpus" "$gateway" >"$logs/gateway-$i.log" 2>&1 &
  fi
  pids+=($!)
  urls+=(--url "$wscheme://$host:$port/ws")
done
for i in $(seq 1 "$nodes"); do
  port=$((base + i - 1))
  if [ $relay = 1 ]; then
    ready() { (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null; }
  else
    ready() { curl -fs "${curl_tls[@]}" "$scheme://$host:$port/readyz" >/dev/null 2>&1; }
  fi
  for _ in $(seq 1 300); do ready && break; sleep 0.1; done
  ready || { echo "gateway $i not ready; see $logs/gateway-$i.log" >&2; exit 1; }
done

watch=$(IFS=,; echo "${pids[*]}")
servers="gateways ${watch}"
if [ $cluster = 1 ]; then
  extra=$(pgrep -d, -x redis-server || true),$(pgrep -d, -f beam.smp || true)
  extra=$(echo "$extra" | sed 's/^,*//; s/,*$//; s/,,*/,/g')
  [ -n "$extra" ] && { watch="$watch,$extra"; servers="$servers + redis/rabbitmq $extra"; }
fi
echo "== $nodes gateway(s) on CPU $gw_cpus ($servers); load tool on CPU $tool_cpus" >&2

if [ $scrape = 1 ]; then
  ( while sleep 1; do
      for i in $(seq 1 "$nodes"); do curl -fs "${curl_tls[@]}" "$scheme://$host:$((base + i - 1))/metrics" >/dev/null || true; done
    done ) &
  scraper=$!
fi
set +e
taskset -c "$tool_cpus" "$bin/chatgate-load" "$@" "${urls[@]}" "${tool_tls[@]}" --watch-pid "$watch" --json >"$out"
status=$?
set -e
if [ -n "$scraper" ]; then pkill -P "$scraper" 2>/dev/null || true; kill "$scraper" 2>/dev/null || true; scraper=; fi

python3 - "$out" <<'PY'
import json, sys
r = json.load(open(sys.argv[1]))
s = r.get("server", {})
lat = r.get("latency_us", {})
def us(v): return "-" if v is None else (f"{v/1000:.2f} ms" if v >= 1000 else f"{v} µs")
print(f"\n== {r['scenario']}: {r['connected']}/{r['connections']} connections, rate {r.get('rate')}")
print(f"  delivered      {r['delivered']:,} ({r['delivered_per_s']:,.0f}/s), lost {r['lost']}, errors {r['errors']}")
if r['scenario'] == 'connect':
    per_conn = f", {s['cpu_s'] * 1e6 / max(r['connected'], 1):,.0f} µs server CPU each" if s else ""
    print(f"  connecting     {r['connections_per_s']:,.0f} connections/s{per_conn} (latency below: connect + upgrade + welcome)")
print(f"  latency        p50 {us(lat.get('p50'))}  p90 {us(lat.get('p90'))}  p99 {us(lat.get('p99'))}  p99.9 {us(lat.get('p999'))}  max {us(lat.get('max'))}")
if s:
    per1k = s.get("cpu_s_per_1000_delivered")
    print(f"  server CPU     {s['cpu_s']:.2f} s over the measured window"
          + (f" = {per1k:.4f} CPU-s per 1,000 delivered, {s['cpu_us_per_delivery']} µs per delivery,"
             f" {s['cpu_us_per_message']} µs per message sent" if per1k is not None else ""))
    print(f"  server memory  peak RSS {s['peak_rss_kb']/1024:.1f} MiB; {s['rss_loaded_kb']/1024:.1f} MiB loaded"
          f" vs {s['rss_before_kb']/1024:.1f} MiB before = {s['rss_per_conn_bytes']:,} B per connection")
print(f"  load tool CPU  {r.get('tool_cpu_pct')}% of one core")
PY
echo "  report         $out" >&2
exit $status
