#!/usr/bin/env bash
# Installs the toolchain that builds the component drivers (drivers/components/), once per machine:
#   wasm-tools, wit-bindgen (CLI)   from crates.io with `cargo install`, cached under
#                                    ${EDGEAGENT_CACHE:-~/.cache/edgeagent}/wasm-component-tools/bin
#   Rust's wasm32-wasip2 target      with rustup (the Rust guest)
# Prints the bin directory on stdout (the Makefile puts it on PATH). Idempotent; fails loudly (non-zero exit, one
# line saying what is missing) when a tool cannot be installed: the component tests must not be skipped silently.
# Why cargo install: Debian bookworm packages neither tool, and crates.io is what this kind of machine reaches.
set -euo pipefail

WASM_TOOLS_VERSION="1.263.0"
WIT_BINDGEN_VERSION="0.63.0"
# Bump when the install changes, so machines with an older cached install redo it once.
BUILD_ID="1-wt$WASM_TOOLS_VERSION-wb$WIT_BINDGEN_VERSION"

CACHE="${EDGEAGENT_CACHE:-$HOME/.cache/edgeagent}"
ROOT="$CACHE/wasm-component-tools"
OUT="$ROOT/bin"
die() { echo "install-wasm-component-tools: $*" >&2; exit 1; }

export PATH="$HOME/.cargo/bin:$PATH"
command -v cargo >/dev/null || die "cargo not found: install Rust (rustup) to build the component drivers"
# Both cores by default (at nice 19, so it yields); EDGEAGENT_BUILD_JOBS=1 when the machine is shared.
JOBS="${EDGEAGENT_BUILD_JOBS:-$(nproc)}"
command -v rustup >/dev/null || die "rustup not found: it adds the wasm32-wasip2 target for the Rust guest"

installed() {
  [ -x "$OUT/wasm-tools" ] && [ -x "$OUT/wit-bindgen" ] && [ "$(cat "$ROOT/BUILD_ID" 2>/dev/null)" = "$BUILD_ID" ]
}
target_installed() { rustup target list --installed 2>/dev/null | grep -qx wasm32-wasip2; }

if ! installed || ! target_installed; then
  mkdir -p "$ROOT"
  # One install at a time per machine: a second caller waits, then finds the tools installed.
  exec 9>"$ROOT/.lock"
  flock 9
  if ! target_installed; then
    rustup target add wasm32-wasip2 >&2 || die "rustup target add wasm32-wasip2 failed"
  fi
  if ! installed; then
    LOG="$ROOT/install.log"
    echo "install-wasm-component-tools: building wasm-tools $WASM_TOOLS_VERSION and wit-bindgen" \
      "$WIT_BINDGEN_VERSION (cargo install, nice -n 19, -j$JOBS; log: $LOG)" >&2
    # Others share this machine's cores: one job, lowest priority. --locked: the crates' own lock files.
    for spec in "wasm-tools@$WASM_TOOLS_VERSION" "wit-bindgen-cli@$WIT_BINDGEN_VERSION"; do
      if ! nice -n 19 cargo install --locked -j"$JOBS" --root "$ROOT" "$spec" >>"$LOG" 2>&1; then
        tail -20 "$LOG" >&2
        die "cargo install $spec failed (full log: $LOG)"
      fi
    done
    "$OUT/wasm-tools" --version >&2 || die "the installed wasm-tools does not run"
    "$OUT/wit-bindgen" --version >&2 || die "the installed wit-bindgen does not run"
    echo "$BUILD_ID" >"$ROOT/BUILD_ID"
  fi
fi
echo "$OUT"
