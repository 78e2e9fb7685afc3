#!/usr/bin/env bash
# The browser client's render benchmark (server/tests/render_bench.rs): headless Chromium
# streams a 150 KB and a 1 MB markdown reply at 1,000 tokens a second and prints the main
# thread's long tasks and each piece's delay from the WebSocket to the page. Builds the
# client first; needs chromium and chromedriver (scripts/test.sh installs them).
#
#   scripts/render-bench.sh
set -euo pipefail
cd "$(dirname "$0")/.."
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/relay-chat-target}"
cargo xtask client
cargo test --locked -p relay-server --test render_bench -- --ignored --nocapture
