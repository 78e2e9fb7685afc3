#!/usr/bin/env bash
# The topology of compose.yaml without containers: a SurrealDB server, a redis-server,
# NODES relay-chat nodes and nginx in front of them (deploy/nginx.conf, its upstream pointed
# at the local nodes), for trying a cluster on one machine. Ctrl-C stops everything.
#
#   deploy/local-cluster.sh                 # 2 nodes behind http://127.0.0.1:8080/
#   NODES=3 PORT=9000 deploy/local-cluster.sh
#
# Needs redis-server, nginx, the SurrealDB server of tools/surreal (SURREAL=path; default the
# one scripts/test.sh builds) and a release build (`cargo build --release -p relay-server`,
# `cargo xtask client` for the browser client). Without SAMBANOVA_API_KEY the nodes answer
# from their built-in mock model.
set -euo pipefail
cd "$(dirname "$0")/.."
NODES="${NODES:-2}"
PORT="${PORT:-8080}"
T="${CARGO_TARGET_DIR:-target}/release"
SURREAL="${SURREAL:-$HOME/.cache/surreal-target/release/surreal}"
work=$(mktemp -d)
pids=()
cleanup() {
  kill "${pids[@]}" 2>/dev/null || true
  wait 2>/dev/null || true
  echo "logs in $work"
}
trap cleanup EXIT INT TERM
. scripts/procs.sh

SP=$(free_port); RP=$(free_port)
"$SURREAL" start --bind "127.0.0.1:$SP" --user root --pass root memory >"$work/surreal.log" 2>&1 &
pids+=($!)
redis-server --port "$RP" --bind 127.0.0.1 --save "" --appendonly no >"$work/redis.log" 2>&1 &
pids+=($!)
wait_for "http://127.0.0.1:$SP/health"

secret="${JWT_SECRET:-$(head -c 32 /dev/urandom | od -An -tx1 | tr -d ' \n')}"
upstreams=""
for i in $(seq 1 "$NODES"); do
  port=$(free_port)
  mkdir -p "$work/node$i"
  NODE_ID="node$i" BIND_ADDR="127.0.0.1:$port" RELAY_DATA_DIR="$work/node$i" RELAY_ENV=production \
    DATABASE_URL="ws://127.0.0.1:$SP" DATABASE_USER=root DATABASE_PASS=root \
    REDIS_URL="redis://127.0.0.1:$RP" JWT_SECRET="$secret" TRUSTED_PROXIES=127.0.0.1 \
    RELAY_CLIENT_DIR="${RELAY_CLIENT_DIR:-client-yew/dist}" \
    "$T/relay-server" 2>"$work/node$i.log" &
  pids+=($!)
  upstreams+="    server 127.0.0.1:$port max_fails=2 fail_timeout=5s;\n"
  echo "node$i on 127.0.0.1:$port"
done
for i in $(seq 1 "$NODES"); do
  port=$(grep -o 'server 127.0.0.1:[0-9]*' <<<"$(printf "%b" "$upstreams")" | sed -n "${i}p" | cut -d: -f2)
  wait_for "http://127.0.0.1:$port/readyz"
done

# deploy/nginx.conf, with the local nodes for the compose service and no Docker resolver.
sed -e "/resolver 127.0.0.11/d" \
    -e "s|    server relay:8080 max_fails=2 fail_timeout=5s;|$upstreams|" \
    -e "s|listen 8080;|listen 127.0.0.1:$PORT;|" \
    -e "s|^events {|pid $work/nginx.pid;\nerror_log $work/nginx-error.log;\nevents {|" \
    -e "s|^http {|http {\n  access_log off;\n  client_body_temp_path $work/nginx-body;\n  proxy_temp_path $work/nginx-proxy;|" \
    deploy/nginx.conf >"$work/nginx.conf"
nginx -c "$work/nginx.conf" -g "daemon off;" &
pids+=($!)
wait_for "http://127.0.0.1:$PORT/readyz"
echo "relay-chat cluster of $NODES nodes at http://127.0.0.1:$PORT/ (Ctrl-C stops it)"
wait
