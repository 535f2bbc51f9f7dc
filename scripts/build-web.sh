#!/usr/bin/env bash
# Build the browser package: www/pkg/pseudoword.js + pseudoword_bg.wasm.
# Honours CARGO_TARGET_DIR (default: target). Run scripts/ensure-tools.sh first.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

TARGET_DIR="${CARGO_TARGET_DIR:-target}"
cargo rustc --lib --profile web --target wasm32-unknown-unknown --crate-type cdylib -j2
wasm="$TARGET_DIR/wasm32-unknown-unknown/web/pseudoword.wasm"
if [[ ! -f "$wasm" ]]; then
  echo "build-web: $wasm not found after the build" >&2
  exit 1
fi
wasm-bindgen --target web --out-dir www/pkg "$wasm"
echo "build-web: www/pkg/ ready ($(du -h www/pkg/pseudoword_bg.wasm | cut -f1) wasm)"
