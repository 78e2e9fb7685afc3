#!/usr/bin/env bash
# The fault-injection suite's long run (server/tests/fault_suite): seeded schedules of
# faults against three real server nodes, a SurrealDB server, a redis-server and the mock
# model, each checked for broken promises. The test command runs three schedules; this runs
# as many as asked and writes the totals to a JSON report (figures in RELIABILITY.md).
#
#   scripts/fault-suite.sh --schedules 200            # seeds 1..200
#   scripts/fault-suite.sh --seed 17 --schedules 1    # replays one schedule
#
# Options: --schedules N (200), --seed S (first seed, 1), --secs T (client run per schedule,
# 15), --report FILE (target/fault-suite-report.json). Network partitions need root (Linux
# network namespaces); without it they are left out (RELAY_FAULT_NO_NETNS=1 forces that).
# The SurrealDB server is the one scripts/test.sh builds ($HOME/.cache/surreal-target), or
# RELAY_TEST_SURREAL_BIN.
set -euo pipefail
cd "$(dirname "$0")/.."

schedules=200
seed=1
secs=15
report="target/fault-suite-report.json"
while [ $# -gt 0 ]; do
  case "$1" in
    --schedules) schedules="$2"; shift 2 ;;
    --seed) seed="$2"; shift 2 ;;
    --secs) secs="$2"; shift 2 ;;
    --report) report="$2"; shift 2 ;;
    *) echo "unknown option: $1" >&2; exit 2 ;;
  esac
done

export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/relay-chat-target}"
export RELAY_TEST_SURREAL_BIN="${RELAY_TEST_SURREAL_BIN:-$HOME/.cache/surreal-target/release/surreal}"
mkdir -p "$(dirname "$report")"
report="$(cd "$(dirname "$report")" && pwd)/$(basename "$report")"
RELAY_FAULT_SCHEDULES="$schedules" RELAY_FAULT_SEED="$seed" RELAY_FAULT_RUN_SECS="$secs" RELAY_FAULT_REPORT="$report" \
  cargo test --locked -p relay-server --test fault_suite -- --nocapture
echo "report: $report"
