#!/usr/bin/env bash
# Two relay-chat nodes as one cluster (a SurrealDB server, a redis-server, one mock model),
# and the `tabs` scenario with every other tab on the second node: the first node owns
# every session (its tabs subscribe first), the second relays it. The report gives
# delivery latency for the tabs on each node. Results go to $OUT (bench-results/).
#
#   loadtest/cluster-bench.sh                       # 100 sessions × 10 tabs, 5 messages each
#   SESSIONS=20 TABS=4 loadtest/cluster-bench.sh    # smaller
#   NO_BUILD=1 loadtest/cluster-bench.sh            # use the release binaries as they are
#
# Needs the SurrealDB server of tools/surreal (SURREAL=path, default the one scripts/test.sh
# builds) and redis-server.
set -euo pipefail
cd "$(dirname "$0")/.."
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/relay-chat-target}"
T="$CARGO_TARGET_DIR/release"
SURREAL="${SURREAL:-$HOME/.cache/surreal-target/release/surreal}"
OUT="${OUT:-bench-results}"
SESSIONS="${SESSIONS:-100}"
TABS="${TABS:-10}"
MESSAGES="${MESSAGES:-5}"
mkdir -p "$OUT"

if [ -z "${NO_BUILD:-}" ]; then
  cargo build --release -p relay-server -p relay-loadtest
  cargo build --release -p relay-mock-llm
fi

work=$(mktemp -d)
pids=()
cleanup() {
  kill "${pids[@]}" 2>/dev/null || true
  wait 2>/dev/null || true
  [ -n "${KEEP:-}" ] && echo "logs kept in $work" || rm -rf "$work"
}
trap cleanup EXIT
. scripts/procs.sh

SP=$(free_port); RP=$(free_port); MP=$(free_port); A=$(free_port); B=$(free_port)
"$SURREAL" start --bind "127.0.0.1:$SP" --user root --pass root memory >"$work/surreal.log" 2>&1 &
pids+=($!)
redis-server --port "$RP" --bind 127.0.0.1 --save "" --appendonly no >"$work/redis.log" 2>&1 &
pids+=($!)
# The mock the benchmarks use everywhere: 20 ms to the first token, 50 tokens at 200/s,
# each stamped with its send time.
MOCK_BIND="127.0.0.1:$MP" MOCK_STAMP=1 MOCK_FIRST_TOKEN_MS=20 MOCK_TOKENS_PER_SEC=200 MOCK_REPLY_TOKENS=50 \
  "$T/relay-mock-llm" >"$work/mock.url" 2>"$work/mock.log" &
pids+=($!)
wait_for "http://127.0.0.1:$SP/health"

node() { # id port
  env -i PATH="$PATH" HOME="$HOME" \
    NODE_ID="$1" BIND_ADDR="127.0.0.1:$2" RELAY_DATA_DIR="$work/$1" \
    DATABASE_URL="ws://127.0.0.1:$SP" DATABASE_USER=root DATABASE_PASS=root \
    REDIS_URL="redis://127.0.0.1:$RP" JWT_SECRET=relay-cluster-bench-secret-0123456789abcdef \
    SAMBANOVA_API_KEY=bench SAMBANOVA_API_BASE="http://127.0.0.1:$MP/v1" \
    CHAT_RATE_LIMIT_PER_MINUTE=0 CHAT_DAILY_MESSAGE_QUOTA=0 AUTH_REGISTRATIONS_PER_ADDRESS_PER_HOUR=1000000 \
    WS_MAX_CONNECTIONS_PER_USER=1000000 HTTP_MAX_CONNECTIONS_PER_ADDRESS=0 RUST_LOG=warn \
    "$T/relay-server" 2>"$work/$1.log" &
  pids+=($!)
}
mkdir -p "$work/a" "$work/b"
node a "$A"
node b "$B"
wait_for "http://127.0.0.1:$A/readyz"
wait_for "http://127.0.0.1:$B/readyz"
curl -fsS "http://127.0.0.1:$B/readyz"; echo

"$T/relay-loadtest" --server "http://127.0.0.1:$A" --json-file "$OUT/cluster-tabs.json" \
  tabs --sessions "$SESSIONS" --tabs "$TABS" --messages "$MESSAGES" --think-ms 0 --peer "http://127.0.0.1:$B" \
  | tee "$OUT/cluster-tabs.txt"
grep -h -i 'warn\|error' "$work/a.log" "$work/b.log" | sort | uniq -c | sort -rn | head -5 || true
