#!/usr/bin/env bash
# Builds the runtime image around a prebuilt binary and runs it, with podman/buildah (no
# Docker daemon and no public image registry are needed): three containers as one cluster
# against the local Redis (127.0.0.1:6379) and RabbitMQ (127.0.0.1:5672, guest/guest), host
# networking, then Debian's HAProxy with deploy/haproxy/haproxy.cfg in front of them.
#
#   scripts/container-test.sh [--debug | --release | BINARY]    (default --release)
#
# --debug/--release take ${CARGO_TARGET_DIR:-target}/{debug,release}/chatgate; the binary
# must be built on Debian bookworm (the image's glibc). Checks, each fatal:
#   image: non-root user, HEALTHCHECK, ca-certificates; /readyz on every node; a message
#   from a client on node A to one on node B (ack `sent`, delivered); `podman healthcheck
#   run` at a non-default CHAT_LISTEN port; the process runs as uid 10001;
#   balancer: `haproxy -c`, WebSocket upgrades spread over all nodes and a message through
#   it; an upgrade answered 503 is retried on another node; a node whose Redis goes away
#   (/readyz 503) is taken out by the health check and comes back; `podman stop` closes a
#   client 1001, exits 0, and the node leaves the pool.
# Installs podman, buildah, runc, debootstrap, haproxy, docker-compose (apt; compose only
# checks its file) and websockets (pip, in a venv) when missing. The base image
# `docker.io/library/debian:bookworm-slim` (the Dockerfile's FROM) is made with debootstrap;
# its tarball and the venv stay under $CHAT_CI_CACHE (default /var/cache/chatgate-ci), the
# base image and the runtime-base stage in podman's storage, as caches. Without a usable
# engine it skips loudly, unless CHAT_TEST_REQUIRE_CONTAINER=1 (CI): then it fails.
# CHAT_TEST_REDIS_ADDR and CHAT_TEST_AMQP_URL point it at other servers.
set -Eeuo pipefail
cd "$(dirname "$0")/.."

start_s=$SECONDS
cache=${CHAT_CI_CACHE:-/var/cache/chatgate-ci}
base_image=docker.io/library/debian:bookworm-slim
tag="ci$$"
image=localhost/chatgate-ci:$tag
cluster="ctr-$tag"
passed=0
redis=${CHAT_TEST_REDIS_ADDR:-127.0.0.1:6379}
amqp=${CHAT_TEST_AMQP_URL:-amqp://guest:guest@127.0.0.1:5672/%2f}

say() { printf '== container-test: %s (%ss)\n' "$*" "$((SECONDS - start_s))"; }
pass() { passed=$((passed + 1)); printf '   ok: %s\n' "$*"; }
die() {
  trap - ERR
  printf '\ncontainer-test: FAIL: %s\n' "$*" >&2
  for c in $(podman ps -a --filter "name=^$tag-" --format '{{.Names}}' 2>/dev/null || true); do
    echo "--- last log lines of $c" >&2; podman logs --tail 30 "$c" >&2 2>&1 || true
  done
  [ -s "${work:-/nonexistent}/haproxy.log" ] && { echo "--- haproxy" >&2; tail -20 "$work/haproxy.log" >&2; }
  exit 1
}
# No engine here: a failure in CI, a loud skip elsewhere.
unusable() {
  if [ "${CHAT_TEST_REQUIRE_CONTAINER:-0}" = 1 ]; then die "no usable container engine: $*"; fi
  printf '\n!!! container-test SKIPPED: %s (CHAT_TEST_REQUIRE_CONTAINER=1 makes this fail)\n\n' "$*" >&2
  exit 0
}
trap 'die "command failed at line $LINENO: $BASH_COMMAND"' ERR

target=${CARGO_TARGET_DIR:-target}
case ${1:---release} in
  --debug) binary=$target/debug/chatgate ;;
  --release) binary=$target/release/chatgate ;;
  -h|--help) sed -n '2,24p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
  *) binary=$1 ;;
esac
[ -x "$binary" ] || { echo "no binary at $binary (build it first, see --help)" >&2; exit 2; }

# --- tools -------------------------------------------------------------------------------
pkgs=()
for t in podman buildah runc debootstrap haproxy docker-compose; do command -v "$t" >/dev/null || pkgs+=("$t"); done
if [ ${#pkgs[@]} -gt 0 ]; then
  say "installing ${pkgs[*]}"
  sudo_cmd=""; [ "$(id -u)" -eq 0 ] || sudo_cmd="sudo"
  { $sudo_cmd apt-get update -qq &&
    DEBIAN_FRONTEND=noninteractive $sudo_cmd apt-get install -y -qq --no-install-recommends "${pkgs[@]}" >/dev/null
  } || unusable "apt-get install ${pkgs[*]} failed"
fi
[ "$(id -u)" -eq 0 ] || unusable "rootful podman is what was made to work here; run as root"
mkdir -p "$cache"
venv=$cache/venv
if ! "$venv/bin/python" -c 'import websockets.asyncio.client' 2>/dev/null; then
  say "making $venv (websockets from PyPI)"
  rm -rf "$venv"
  { python3 -m venv "$venv" && "$venv/bin/pip" install -q 'websockets>=14,<18'; } || unusable "pip install websockets failed"
fi
probe() { "$venv/bin/python" scripts/wsprobe.py "$@"; }
# For background use: $! is then python itself, not a subshell that would not pass SIGTERM on.
probe_bg=("$venv/bin/python" scripts/wsprobe.py)
# The runtime is runc (crun cannot set rlimits here), and rlimits must be explicit: the
# default nofile/nproc from containers.conf are above this machine's hard limits.
run_flags=(--runtime runc --network host --ulimit nofile=16384:16384 --ulimit nproc=8192:8192)

work=$(mktemp -d /tmp/chatgate-ctr.XXXXXX)
pids=()
cleanup() {
  trap - ERR
  for p in "${pids[@]}"; do kill -TERM "$p" 2>/dev/null || true; done
  for c in $(podman ps -a --filter "name=^$tag-" --format '{{.Names}}' 2>/dev/null || true); do
    podman rm -f -t 0 "$c" >/dev/null 2>&1 || true
  done
  podman rmi -f "$image" >/dev/null 2>&1 || true
  # Untagged leftovers: runtime-base builds of an older Dockerfile. (Podman's storage here is
  # this script's: it installs podman.) Tagged images and the layer cache stay.
  podman image prune -f >/dev/null 2>&1 || true
  rm -rf "$work"
}
trap cleanup EXIT
trap 'exit 130' INT TERM
# Without systemd podman cannot install its health-check timer, and says so at every run,
# stop and rm (podman 4.3 ignores --health-interval=disable for an image's HEALTHCHECK).
# The check itself works: `podman healthcheck run` below. Drop only that noise.
pm() {
  local rc=0
  podman "$@" 2>"$work/podman.err" || rc=$?
  grep -v 'systemd connection' "$work/podman.err" >&2 || true
  return $rc
}

# --- base image --------------------------------------------------------------------------
# One run at a time on this machine: they share the base image and the layer cache.
exec 9>"$cache/lock"
flock 9
# The Dockerfile names its base fully qualified; the same name, made here, lets FROM resolve
# without a registry. A real (pulled) image of that name is left alone and used.
tarball=$cache/debian-bookworm-minbase.tar
[ -f "$tarball" ] && [ -n "$(find "$tarball" -mtime +30)" ] && rm -f "$tarball"   # a fresh one monthly
make_base=0
if ! podman image exists "$base_image"; then
  make_base=1
elif [[ $(podman image inspect --format '{{.Labels}}' "$base_image") == *org.chatgate.ci:debootstrap* ]]; then
  [ -f "$tarball" ] || make_base=1
fi
if [ $make_base = 1 ]; then
  if [ ! -f "$tarball" ]; then
    say "debootstrap bookworm (minbase) into $cache"
    root=$cache/rootfs.tmp
    rm -rf "$root"
    debootstrap --variant=minbase bookworm "$root" http://deb.debian.org/debian >"$cache/debootstrap.log" 2>&1 ||
      unusable "debootstrap failed, see $cache/debootstrap.log"
    # As in the official image: all three suites; no downloaded lists or packages.
    rm -f "$root/etc/apt/sources.list"
    printf 'Types: deb\nURIs: http://deb.debian.org/debian\nSuites: bookworm bookworm-updates\nComponents: main\nSigned-By: /usr/share/keyrings/debian-archive-keyring.gpg\n\nTypes: deb\nURIs: http://deb.debian.org/debian-security\nSuites: bookworm-security\nComponents: main\nSigned-By: /usr/share/keyrings/debian-archive-keyring.gpg\n' \
      >"$root/etc/apt/sources.list.d/debian.sources"
    rm -rf "$root"/var/cache/apt/archives/*.deb "$root"/var/lib/apt/lists/*
    tar --numeric-owner -C "$root" -cf "$tarball.tmp" . && mv "$tarball.tmp" "$tarball"
    rm -rf "$root"
  fi
  say "importing $base_image"
  podman import -q --change 'LABEL org.chatgate.ci=debootstrap' --change 'CMD ["bash"]' \
    "$tarball" "$base_image" >/dev/null || unusable "podman import failed"
fi
podman image exists "$base_image" || unusable "no $base_image"
pm run --rm "${run_flags[@]}" "$base_image" true || unusable "podman run --runtime runc fails"
pass "base image $base_image runs"

# --- runtime image -----------------------------------------------------------------------
say "building the runtime image from $binary"
# Only the binary goes into the context: strip its debug info on the way (the release
# profile keeps line tables, a debug build much more).
mkdir "$work/ctx"
if command -v strip >/dev/null; then strip --strip-debug -o "$work/ctx/chatgate" "$binary"; else cp "$binary" "$work/ctx/chatgate"; fi
# Docker format: the OCI image format has no HEALTHCHECK. The runtime-base stage keeps a tag
# of its own, so its layers (the apt step) stay cached for the next run.
bud=(buildah bud --isolation chroot --layers --force-rm --format docker -f Dockerfile)
for t in runtime-base runtime-prebuilt; do
  name=$image; [ $t = runtime-base ] && name=localhost/chatgate-ci:runtime-base
  "${bud[@]}" --target $t --build-arg BINARY=chatgate -t "$name" "$work/ctx" >"$work/build.log" 2>&1 ||
    { tail -30 "$work/build.log"; die "buildah bud --target $t failed"; }
done
size=$(podman image inspect --format '{{.Size}}' "$image")
user=$(podman image inspect --format '{{.Config.User}}' "$image")
health=$(podman image inspect --format '{{json .HealthCheck}}' "$image")
stopsig=$(podman image inspect --format '{{.Config.StopSignal}}' "$image")
[ "$user" = 10001:10001 ] || die "image user is '$user'"
[[ $health == *CHAT_LISTEN* ]] || die "image has no HEALTHCHECK that follows CHAT_LISTEN: $health"
[ "$stopsig" = SIGTERM ] || die "stop signal '$stopsig'"
pass "image $image: $((size / 1000000)) MB, user $user, STOPSIGNAL $stopsig, HEALTHCHECK"
pm run --rm "${run_flags[@]}" --entrypoint /bin/sh "$image" -c \
  'test -s /etc/ssl/certs/ca-certificates.crt' || die "no CA bundle in the image"
pass "ca-certificates in the image"

# --- a cluster of containers -------------------------------------------------------------
free_port() { "$venv/bin/python" -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
declare -A port
for n in a b c; do port[$n]=$(free_port); done
proxy_port=$(free_port)
# Node c reaches Redis through a proxy the test can cut (to make it not ready).
"${probe_bg[@]}" proxy "$proxy_port" "$redis" & proxy_pid=$!; pids+=("$proxy_pid")
start_node() { # name redis_addr
  pm run -d --name "$tag-$1" "${run_flags[@]}" \
    -e CHAT_NODE_ID="$tag-$1" -e CHAT_LISTEN="127.0.0.1:${port[$1]}" -e CHAT_CLUSTER="$cluster" \
    -e REDIS_ADDR="$2" -e RABBIT_MQ_URL="$amqp" "$image" >/dev/null
}
ready() { curl -fsS -m 2 "http://127.0.0.1:$1/readyz" >/dev/null 2>&1; }
wait_until() { # what seconds command...: poll a condition, with an upper bound
  local what=$1 limit=$2; shift 2
  local end=$((SECONDS + limit))
  until "$@"; do
    [ $SECONDS -lt $end ] || die "$what: not within ${limit}s"
    sleep 0.2
  done
}
say "starting nodes a, b, c (cluster $cluster)"
start_node a "$redis"; start_node b "$redis"; start_node c "127.0.0.1:$proxy_port"
for n in a b c; do
  wait_until "node $n /readyz" 60 ready "${port[$n]}"
done
pass "/readyz 200 on a (:${port[a]}), b (:${port[b]}), c (:${port[c]})"
probe cross "ws://127.0.0.1:${port[a]}/ws" "ws://127.0.0.1:${port[b]}/ws" --nodes "$tag-a,$tag-b" | sed 's/^/   /'
pass "cross-node message a -> b"
pm healthcheck run "$tag-a" >/dev/null || die "podman healthcheck run: unhealthy"
pass "HEALTHCHECK healthy at CHAT_LISTEN port ${port[a]}"
pid=$(podman inspect --format '{{.State.Pid}}' "$tag-a")
uids=$(awk '/^Uid:/ {print $2, $3, $4, $5}' "/proc/$pid/status")
[ "$uids" = "10001 10001 10001 10001" ] || die "node a runs with uids $uids"
pass "node a's process runs as uid 10001"

# --- the load balancer -------------------------------------------------------------------
lb_port=$(free_port) stats_port=$(free_port)
export CHAT_LB_BIND=127.0.0.1:$lb_port CHAT_LB_STATS_BIND=127.0.0.1:$stats_port
export CHAT_NODE1=127.0.0.1:${port[a]} CHAT_NODE2=127.0.0.1:${port[b]} CHAT_NODE3=127.0.0.1:${port[c]}
cfg=deploy/haproxy/haproxy.cfg
haproxy -c -q -f "$cfg" || die "haproxy -c -f $cfg"
pass "haproxy -c -f $cfg"
# Compose cannot run here (no registry for its images), but its file can be checked against
# docker-compose's schema, and it must give haproxy every variable the config uses.
docker-compose -f docker-compose.yml config >"$work/compose.yml" || die "docker-compose config"
# Debian's python3, which has PyYAML (docker-compose needs it).
/usr/bin/python3 - "$work/compose.yml" "$cfg" <<'PY' || die "docker-compose.yml and $cfg disagree"
import re, sys, yaml
lb = yaml.safe_load(open(sys.argv[1]))["services"]["haproxy"]
need = set(re.findall(r'"\$\{([A-Z0-9_]+)\}"', open(sys.argv[2]).read()))
if missing := need - set(lb["environment"]):
    sys.exit(f"haproxy gets no {sorted(missing)}")
if not any(v.endswith(f"/{sys.argv[2]}:/usr/local/etc/haproxy/haproxy.cfg:ro") for v in lb["volumes"]):
    sys.exit(f"haproxy does not mount {sys.argv[2]}")
PY
pass "docker-compose config: valid; its haproxy mounts $cfg and sets every \${VAR} in it"
# -n: this machine's fd limit is below what the shipped maxconn needs; nothing else differs.
haproxy -db -n 4000 -f "$cfg" >"$work/haproxy.log" 2>&1 & pids+=($!)
lb="ws://$CHAT_LB_BIND/ws"
server_state() { # node -> "status check_status check_code" from the stats CSV
  curl -fsS -m 2 "http://$CHAT_LB_STATS_BIND/stats;csv" 2>/dev/null | awk -F, -v sv="$1" '
    NR == 1 { for (i = 1; i <= NF; i++) col[$i] = i; next }
    $1 == "chatgate" && $2 == sv { print $col["status"], $col["check_status"], $col["check_code"] }'
}
state_is() { [[ "$(server_state "$1")" == $2* ]]; }
for s in node1 node2 node3; do wait_until "haproxy: $s UP" 30 state_is $s UP; done
pass "haproxy sees node1-3 UP (checking /readyz)"
spread=$(probe spread "$lb" 6)
for n in a b c; do [[ $spread == *"\"$tag-$n\""* ]] || die "6 upgrades through haproxy missed node $n: $spread"; done
pass "6 WebSocket upgrades through haproxy spread over a, b, c: $spread"
probe lbmsg "$lb" | sed 's/^/   /'
pass "a message between two nodes through haproxy"

# A second haproxy, same file: node1 is a stand-in that passes /readyz but answers upgrades
# 503, as a node does between the start of its drain and the check noticing.
refuse_port=$(free_port) lb2_port=$(free_port) stats2_port=$(free_port)
"${probe_bg[@]}" refuse "$refuse_port" >"$work/refused" & pids+=("$!")
CHAT_LB_BIND=127.0.0.1:$lb2_port CHAT_LB_STATS_BIND=127.0.0.1:$stats2_port CHAT_NODE1=127.0.0.1:$refuse_port \
  haproxy -db -n 4000 -f "$cfg" >"$work/haproxy2.log" 2>&1 & lb2_pid=$!; pids+=("$lb2_pid")
state2_is() { CHAT_LB_STATS_BIND=127.0.0.1:$stats2_port state_is "$@"; }
for s in node1 node2 node3; do wait_until "second haproxy: $s UP" 30 state2_is $s UP; done
spread=$(probe spread "ws://127.0.0.1:$lb2_port/ws" 4)
[ -s "$work/refused" ] || die "the second haproxy never tried the refusing node"
pass "upgrades answered 503 ($(wc -l <"$work/refused") of them) were retried on other nodes: $spread"
kill -TERM "$lb2_pid"

say "podman stop a, with a client connected"
"${probe_bg[@]}" hold "ws://127.0.0.1:${port[a]}/ws" "$work/held" >"$work/close-code" & holder=$!; pids+=("$holder")
wait_until "client on node a" 15 test -s "$work/held"
pm stop -t 20 "$tag-a" >/dev/null
wait "$holder" || die "the client on node a failed"
[ "$(cat "$work/close-code")" = 1001 ] || die "client on node a got close $(cat "$work/close-code"), not 1001"
pass "podman stop: the client got close 1001"
code=$(podman inspect --format '{{.State.ExitCode}}' "$tag-a")
[ "$code" = 0 ] || die "node a exited $code"
pass "node a exited 0"
wait_until "haproxy: node1 DOWN" 30 state_is node1 DOWN
spread=$(probe spread "$lb" 4)
[[ $spread != *"\"$tag-a\""* ]] || die "an upgrade reached the stopped node a: $spread"
pass "haproxy: $(server_state node1) for node a; upgrades go to the others: $spread"

say "cutting node c from Redis"
kill -TERM "$proxy_pid"; wait "$proxy_pid" 2>/dev/null || true
wait_until "node c /readyz 503" 30 bash -c "[ \"\$(curl -s -o /dev/null -w '%{http_code}' -m 2 http://127.0.0.1:${port[c]}/readyz)\" = 503 ]"
wait_until "haproxy: node3 DOWN" 30 state_is node3 DOWN
pass "node c not ready (/readyz 503) -> haproxy: $(server_state node3)"
spread=$(probe spread "$lb" 4)
[ "$spread" = "{\"$tag-b\": 4}" ] || die "upgrades through haproxy did not all go to node b: $spread"
pass "4 upgrades all go to b, the one node left: $spread"
# Nothing after this allocates an id: had c's lease run out while it was cut off, its return
# pauses anonymous ids cluster-wide for one lease (the HEARTBEAT script in scripts.rs).
"${probe_bg[@]}" proxy "$proxy_port" "$redis" & pids+=($!)
wait_until "haproxy: node3 UP again" 60 state_is node3 UP
pass "Redis back: node c ready again and UP in haproxy"

for n in b c; do
  pm stop -t 20 "$tag-$n" >/dev/null
  code=$(podman inspect --format '{{.State.ExitCode}}' "$tag-$n")
  [ "$code" = 0 ] || die "node $n exited $code"
done
pass "nodes b and c stopped, exit 0"

say "done"
echo "container-test: $passed passed, 0 failed"
