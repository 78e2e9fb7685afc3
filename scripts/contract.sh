#!/usr/bin/env bash
# The OpenAPI document against the server that serves it: Schemathesis generates requests
# for every operation from GET /api/v1/openapi.json (valid ones and, on purpose, invalid
# ones) and runs all its checks on the answers: no 5xx, only documented statuses, content
# types, headers and bodies, valid data accepted, invalid data refused, undocumented
# methods answered 405, protected operations refusing a missing token. Any failure fails
# the script. scripts/test.sh runs it after the test suite.
#
#   scripts/contract.sh                               # a bounded run (under a minute)
#   RELAY_CONTRACT_EXAMPLES=500 scripts/contract.sh   # more cases per operation (100 by default)
#   RELAY_CONTRACT_SEED=random scripts/contract.sh    # other cases than the fixed seed's
#
# It installs a pinned Schemathesis into a virtualenv cached under
# $HOME/.cache/relay-chat-tools if missing, builds the debug relay-server, and runs it on a
# free port with an in-memory database and the built-in mock model, with a user registered
# whose token every request carries.
set -euo pipefail
cd "$(dirname "$0")/.."

export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/relay-chat-target}"
SCHEMATHESIS_VERSION="4.32.5"
VENV="$HOME/.cache/relay-chat-tools/schemathesis-$SCHEMATHESIS_VERSION"
EXAMPLES="${RELAY_CONTRACT_EXAMPLES:-100}"
SEED="${RELAY_CONTRACT_SEED:-20260101}"

if [ ! -x "$VENV/bin/schemathesis" ]; then
  echo "== installing schemathesis $SCHEMATHESIS_VERSION into $VENV"
  rm -rf "$VENV"
  python3 -m venv "$VENV"
  "$VENV/bin/pip" install -q "schemathesis==$SCHEMATHESIS_VERSION"
fi

echo "== relay-server (debug) for the contract run"
cargo build --locked -p relay-server
BIN="$CARGO_TARGET_DIR/debug/relay-server"

. scripts/procs.sh
work=$(mktemp -d)
server_pid=""
cleanup() {
  if [ -n "$server_pid" ]; then
    kill "$server_pid" 2>/dev/null || true
    wait "$server_pid" 2>/dev/null || true
  fi
  rm -rf "$work"
}
trap cleanup EXIT INT TERM

port=$(free_port)
base="http://127.0.0.1:$port"
# Limits that count requests (send rate, daily quota, registrations and failed logins per
# address) are off: thousands of generated requests would run into them, and which
# request a limit refuses would then depend on the order. Their 429s are documented and
# tested in the suite.
env -i PATH="$PATH" HOME="$HOME" \
  BIND_ADDR="127.0.0.1:$port" DATABASE_URL="mem://" RELAY_DATA_DIR="$work" \
  JWT_SECRET="relay-contract-secret-0123456789abcdef" \
  MOCK_FIRST_TOKEN_MS=1 MOCK_TOKENS_PER_SEC=0 MOCK_REPLY_TOKENS=5 \
  CHAT_RATE_LIMIT_PER_MINUTE=0 CHAT_DAILY_MESSAGE_QUOTA=0 \
  AUTH_REGISTRATIONS_PER_ADDRESS_PER_HOUR=1000000 AUTH_HASH_QUEUE=1000 \
  AUTH_LOGIN_FAILURES_PER_USERNAME=1000000 AUTH_LOGIN_FAILURES_PER_ADDRESS=1000000 \
  RUST_LOG=warn \
  "$BIN" 2>"$work/server.log" &
server_pid=$!
wait_for "$base/readyz"

# An ordinary user's token: /metrics and /admin/usage answer it 404, as they answer anyone
# but their own users (what they answer those is tested in server/tests/edges.rs).
token=$(curl -fsS -X POST "$base/api/v1/auth/register" -H 'content-type: application/json' \
  -d '{"username":"contract","password":"contract-password"}' |
  python3 -c 'import json, sys; print(json.load(sys.stdin)["token"])')

echo "== schemathesis $SCHEMATHESIS_VERSION: every check, $EXAMPLES examples per operation, seed $SEED"
seed_args=()
[ "$SEED" = random ] || seed_args=(--seed "$SEED")
status=0
# One worker: with two threads, CPython 3.11's ast parser (which Hypothesis uses to describe
# its filters) can fail with "AST constructor recursion depth mismatch", an error of the
# fuzzer's, not of the server's.
"$VENV/bin/schemathesis" --config-file scripts/schemathesis.toml run "$base/api/v1/openapi.json" \
  --checks all \
  --header "Authorization: Bearer $token" \
  --max-examples "$EXAMPLES" \
  "${seed_args[@]}" \
  --workers 1 \
  --request-timeout 30 \
  --generation-database none \
  --no-color || status=$?

if ! kill -0 "$server_pid" 2>/dev/null; then
  echo "the server died during the run; its log:" >&2
  tail -n 50 "$work/server.log" >&2
  exit 1
fi
if [ "$status" != 0 ]; then
  echo "the server's log (last 30 lines):" >&2
  tail -n 30 "$work/server.log" >&2
fi
exit "$status"
