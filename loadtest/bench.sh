#!/usr/bin/env bash
# Runs the benchmarks of BENCHMARKS.md against a release build, one after another, each
# with a freshly spawned server, and keeps every report (table and JSON) in $OUT.
#
#   loadtest/bench.sh                          # every benchmark, mem:// and the on-disk default
#   DATABASES="ws://127.0.0.1:8000" loadtest/bench.sh ttft-1 ttft-1000 tabs   # some, on a SurrealDB server
#   SETTLE=120 loadtest/bench.sh ttft-1000      # and the memory two minutes after the load
#
# The mock model of every run: 20 ms to the first token, 50 tokens at 200 per second.
set -euo pipefail
cd "$(dirname "$0")/.."
T="${CARGO_TARGET_DIR:-$PWD/target}/release"
OUT="${OUT:-bench-results}"
DATABASES="${DATABASES:-mem:// surrealkv}"
BENCHES=("$@")
[ ${#BENCHES[@]} -gt 0 ] || BENCHES=(ttft-1 ttft-1000 tabs idle-10k idle-max)
[ -n "${NO_BUILD:-}" ] || cargo build --release --locked -p relay-server -p relay-loadtest
mkdir -p "$OUT"
MOCK=(--mock-first-token-ms 20 --mock-tps 200 --mock-tokens 50)
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
      idle-10k) run idle-10k "$db" --settle-secs 120 idle --connections 10000 --per-user 1000 --hold-secs 10 ;;
      # The most this machine allows: 20,000 open files per process (a hard limit only
      # CAP_SYS_RESOURCE could raise), for the server and the load generator alike.
      idle-max) run idle-max "$db" --source-ips 4 idle --connections 19500 --per-user 1000 --hold-secs 10 ;;
      *) echo "unknown benchmark $bench" >&2; exit 2 ;;
    esac
  done
done
