#!/usr/bin/env bash
# Runs every test of relay-chat. On a fresh machine it first installs what the tests need
# (the wasm32 target, so the protocol crate is checked for the browser).
#
#   scripts/test.sh            # everything
#   scripts/test.sh realtime   # extra arguments go to `cargo test` (a filter, --test NAME, ...)
set -euo pipefail
cd "$(dirname "$0")/.."

# One warm target directory outside the clone, shared by every checkout and CI run.
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/relay-chat-target}"
export RUST_BACKTRACE="${RUST_BACKTRACE:-0}"

if command -v rustup >/dev/null 2>&1 && ! rustup target list --installed | grep -q '^wasm32-unknown-unknown$'; then
  rustup target add wasm32-unknown-unknown
fi

echo "== protocol builds for wasm32 (the browser client shares it)"
cargo build --locked -p relay-protocol --target wasm32-unknown-unknown

echo "== tests"
cargo test --locked --workspace "$@"
