#!/usr/bin/env bash
# Runs every test of relay-chat once, instrumented for line coverage, and prints the
# coverage summary (failing under 80% of lines), then checks the OpenAPI document against
# the server (scripts/contract.sh: Schemathesis). On a fresh machine it first installs what
# that needs: redis-server (Debian's; the limits tests run a real one), nginx (one test
# runs deploy/nginx.conf in front of the server), chromium and
# chromedriver (the browser tests drive the real client), axe-core from npm (they check
# every screen's accessibility with it), the wasm32 target, wasm-bindgen-cli and
# binaryen's wasm-opt (from npm) (through `cargo xtask client`, which builds the browser
# client the browser tests load), the llvm-tools component and cargo-llvm-cov (tools are
# kept under $HOME/.cache between runs), and a SurrealDB server (`tools/surreal`, built
# once into $HOME/.cache/surreal-target: about 24 minutes the first time) for the cluster
# tests.
#
#   scripts/test.sh                    # everything, with coverage
#   scripts/test.sh --test hardening   # extra arguments go to the test run (no coverage floor,
#                                      # no contract run)
#   RELAY_COVERAGE=0 scripts/test.sh   # plain `cargo test`, no instrumentation
set -euo pipefail
cd "$(dirname "$0")/.."

# One warm target directory outside the clone, shared by every checkout and CI run.
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/relay-chat-target}"
export RUST_BACKTRACE="${RUST_BACKTRACE:-0}"
# The README's screenshots come from the browser tests, refreshed on every run.
export RELAY_SCREENSHOTS="${RELAY_SCREENSHOTS:-docs/screenshots}"
COVERAGE="${RELAY_COVERAGE:-1}"
TOOLS="$HOME/.cache/relay-chat-tools"
LLVM_COV_VERSION="0.9.1"
export PATH="$TOOLS/bin:$PATH"

if ! command -v redis-server >/dev/null 2>&1; then
  echo "== installing redis-server (the limits tests run a real one)"
  SUDO=""; [ "$(id -u)" = 0 ] || SUDO="sudo"
  $SUDO apt-get update -qq && $SUDO apt-get install -y -qq redis-server
fi
if ! command -v nginx >/dev/null 2>&1 && [ ! -x /usr/sbin/nginx ]; then
  echo "== installing nginx (a test runs deploy/nginx.conf in front of the server)"
  SUDO=""; [ "$(id -u)" = 0 ] || SUDO="sudo"
  $SUDO apt-get update -qq && $SUDO apt-get install -y -qq nginx
fi
if ! command -v chromedriver >/dev/null 2>&1 || ! command -v chromium >/dev/null 2>&1; then
  echo "== installing chromium and chromedriver (the browser tests drive the real client)"
  SUDO=""; [ "$(id -u)" = 0 ] || SUDO="sudo"
  $SUDO apt-get update -qq && $SUDO apt-get install -y -qq chromium chromium-driver
fi
if ! command -v pdftotext >/dev/null 2>&1; then
  echo "== installing poppler-utils (a browser test reads the PDF Chromium prints with pdftotext)"
  SUDO=""; [ "$(id -u)" = 0 ] || SUDO="sudo"
  $SUDO apt-get update -qq && $SUDO apt-get install -y -qq poppler-utils
fi
if command -v rustup >/dev/null 2>&1 && ! rustup target list --installed | grep -q '^wasm32-unknown-unknown$'; then
  rustup target add wasm32-unknown-unknown
fi
if [ "$COVERAGE" != 0 ]; then
  if ! rustup component list --installed | grep -q '^llvm-tools'; then
    rustup component add llvm-tools
  fi
  if ! cargo llvm-cov --version 2>/dev/null | grep -q "$LLVM_COV_VERSION"; then
    cargo install cargo-llvm-cov --version "$LLVM_COV_VERSION" --locked --root "$TOOLS"
  fi
fi

# The browser tests check every screen with axe-core (Deque's accessibility engine).
AXE_VERSION="4.14.1"
AXE_DIR="$TOOLS/axe-$AXE_VERSION"
if [ ! -f "$AXE_DIR/node_modules/axe-core/axe.min.js" ]; then
  echo "== installing axe-core $AXE_VERSION (the browser tests inject it into the pages)"
  if ! command -v npm >/dev/null 2>&1; then
    SUDO=""; [ "$(id -u)" = 0 ] || SUDO="sudo"
    $SUDO apt-get update -qq && $SUDO apt-get install -y -qq npm
  fi
  mkdir -p "$AXE_DIR"
  npm install --no-audit --no-fund --silent --prefix "$AXE_DIR" "axe-core@$AXE_VERSION"
fi
export RELAY_AXE_JS="${RELAY_AXE_JS:-$AXE_DIR/node_modules/axe-core/axe.min.js}"

# The cluster tests (and the remote-database test) run a real SurrealDB server.
SURREAL_TARGET="$HOME/.cache/surreal-target"
echo "== SurrealDB server for the cluster tests (tools/surreal; cached in $SURREAL_TARGET)"
CARGO_TARGET_DIR="$SURREAL_TARGET" cargo build --release --locked --manifest-path tools/surreal/Cargo.toml
export RELAY_TEST_SURREAL_BIN="${RELAY_TEST_SURREAL_BIN:-$SURREAL_TARGET/release/surreal}"

echo "== protocol builds for wasm32 (the browser client shares it)"
cargo build --locked -p relay-protocol --target wasm32-unknown-unknown

echo "== browser client (the browser tests load it from client-yew/dist)"
cargo xtask client

# The client's components, socket and storage run only in the browser, where the browser
# tests exercise them but llvm-cov cannot count; xtask is a build tool. Both stay out of
# the figure so it measures what the tests can measure.
NOT_MEASURED='client-yew/src/(components|api|ctx|effects|socket|storage|lib|main)|xtask/'

echo "== tests"
if [ "$COVERAGE" = 0 ]; then
  cargo test --locked --workspace "$@"
elif [ "$#" -eq 0 ]; then
  cargo llvm-cov --locked --workspace --summary-only --ignore-filename-regex "$NOT_MEASURED" --fail-under-lines 80
else
  cargo llvm-cov --locked --workspace --summary-only --ignore-filename-regex "$NOT_MEASURED" "$@"
fi

if [ "$#" -eq 0 ]; then
  echo "== the OpenAPI document against the server (scripts/contract.sh)"
  scripts/contract.sh
fi
