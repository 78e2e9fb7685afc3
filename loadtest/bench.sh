#!/usr/bin/env bash
# Runs the benchmarks of BENCHMARKS.md against a release build, one after another, each
# with a freshly spawned server, and keeps every report (table and JSON) in $OUT.
#
#   loadtest/bench.sh                          # ttft-1 ttft-1000 tabs idle-10k idle-max, mem:// and on disk
#   DATABASES="ws://127.0.0.1:8000" loadtest/bench.sh ttft-1 ttft-1000 tabs   # some, on a SurrealDB server
#   SETTLE=120 loadtest/bench.sh ttft-1000      # and the memory two minutes after the load
#   loadtest/bench.sh burst-cold burst-warm burst-10x100    # 1,000 sends released at once
#   loadtest/bench.sh sustained                 # short replies as fast as they come back
#
# The mock model of every run: 20 ms to the first token, 50 tokens at 200 per second
# (sustained: 5 tokens at once).
set -euo pipefail
cd "$(dirname "$0")/.."
T="${CARGO_TARGET_DIR:-$PWD/target}/release"
OUT="${OUT:-bench-results}"
DATABASES="${DATABASES:-mem:// surrealkv}"
BENCHES=("$@")
[ ${#BENCHES[@]} -gt 0 ] || BENCHES=(ttft-1 ttft-1000 tabs idle-10k idle-max)
[ -n "${NO_BUILD:-}" ] || cargo build --release --locked -p relay-server -p relay-loadtest
mkdir -p "$OUT"
DEFAULT_MOCK=(--mock-first-token-ms 20 --mock-tps 200 --mock-tokens 50)
MOCK=("${DEFAULT_MOCK[@]}")
# A SurrealDB server needs the credentials it was started with.
SERVER_ENV=(--server-env DATABASE_USER=root --server-env DATABASE_PASS="${SURREAL_PASS:-root}")

run() { # name database scenario args...
  local name=$1 db=$2; shift 2
  local tag; tag=$(echo "$db" | sed 's#://.*##; s#[^a-z]##g')
  local env=(); [[ $db == ws://* ]] && env=("${SERVER_ENV[@]}")
  echo "== $name on $db: relay-loadtest $*" >&2
  "$T/relay-loadtest" --spawn-server "$T/relay-server" --database "$db" "${env[@]}" "${MOCK[@]}" \
    --json-file "$OUT/$name-$tag.json" "$@" | tee "$OUT/$name-$tag.txt"
}

for db in $DATABASES; do
  for bench in "${BENCHES[@]}"; do
    case $bench in
      ttft-1) run ttft-1 "$db" compare --streams 1 --rounds 20 ;;
      ttft-1000) run ttft-1000 "$db" --settle-secs "${SETTLE:-0}" compare --streams 1000 --rounds 2 ;;
      tabs) run tabs "$db" tabs --sessions 100 --tabs 10 --messages 5 --think-ms 0 ;;
      # 1,000 sends released together, every connection open and every session created
      # first: cold (sessions never used) and warm (each answered once before).
      burst-cold) run burst-cold "$db" --settle-secs "${SETTLE:-0}" burst --users 1000 --sessions 1 --rounds 2 ;;
      burst-warm) run burst-warm "$db" burst --users 1000 --sessions 1 --warm --rounds 2 ;;
      burst-10x100) run burst-10x100 "$db" burst --users 10 --sessions 100 --rounds 2 ;;
      # Sends as fast as replies come back: short replies (5 tokens, at once), 1,000
      # sessions each sending 10 messages one after another; replies/s and CPU per reply.
      sustained)
        MOCK=(--mock-first-token-ms 1 --mock-tps 0 --mock-tokens 5)
        run sustained "$db" chat --users 100 --sessions 10 --messages 10 --think-ms 0
        MOCK=("${DEFAULT_MOCK[@]}") ;;
      idle-10k) run idle-10k "$db" --settle-secs 120 idle --connections 10000 --per-user 1000 --hold-secs 10 ;;
      # The most this machine allows: 20,000 open files per process (a hard limit only
      # CAP_SYS_RESOURCE could raise), for the server and the load generator alike.
      idle-max) run idle-max "$db" --source-ips 4 idle --connections 19500 --per-user 1000 --hold-secs 10 ;;
      *) echo "unknown benchmark $bench" >&2; exit 2 ;;
    esac
  done
done
