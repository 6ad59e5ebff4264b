#!/usr/bin/env bash
# Makes sure Redis (127.0.0.1:6379) and RabbitMQ (127.0.0.1:5672, guest/guest) answer,
# starting them when they do not. Installs them from Debian's packages if missing.
set -euo pipefail

need_pkgs=()
command -v redis-server >/dev/null || need_pkgs+=(redis-server)
command -v rabbitmq-server >/dev/null || need_pkgs+=(rabbitmq-server)
command -v openssl >/dev/null || need_pkgs+=(openssl)     # scripts/loadtest.sh --tls makes its certificates
if [ ${#need_pkgs[@]} -gt 0 ]; then
  echo "installing ${need_pkgs[*]}"
  sudo_cmd=""; [ "$(id -u)" -eq 0 ] || sudo_cmd="sudo"
  $sudo_cmd apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $sudo_cmd apt-get install -y -qq "${need_pkgs[@]}" >/dev/null
fi

if redis-cli -h 127.0.0.1 -p 6379 ping 2>/dev/null | grep -q PONG; then
  echo "redis: up"
else
  echo "redis: starting"
  mkdir -p /var/lib/redis /var/log/redis
  redis-server --daemonize yes --bind 127.0.0.1 -::1 --port 6379 --save "" --appendonly no \
    --dir /var/lib/redis --logfile /var/log/redis/ci.log
  for _ in $(seq 1 50); do redis-cli -h 127.0.0.1 -p 6379 ping 2>/dev/null | grep -q PONG && break; sleep 0.2; done
  redis-cli -h 127.0.0.1 -p 6379 ping | grep -q PONG
fi

port_open() { (exec 3<>/dev/tcp/127.0.0.1/5672) 2>/dev/null; }
if port_open; then
  echo "rabbitmq: up"
else
  echo "rabbitmq: starting"
  if rabbitmqctl -q status >/dev/null 2>&1; then
    rabbitmqctl -q start_app          # node up, app stopped (e.g. after stop_app)
  else
    rabbitmq-server -detached
  fi
  timeout 90 rabbitmqctl -q await_startup
  for _ in $(seq 1 100); do port_open && break; sleep 0.2; done
  port_open
  echo "rabbitmq: up"
fi
