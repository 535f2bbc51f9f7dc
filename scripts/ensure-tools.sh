#!/usr/bin/env bash
# Idempotent: make sure the wasm toolchain is present.
#  - rustup target wasm32-unknown-unknown
#  - wasm-bindgen-cli at exactly the wasm-bindgen version in Cargo.lock (the CLI and the
#    library must match). A plain `cargo install` (not --locked: a pinned transitive crate
#    of the CLI's own lockfile is missing from the registry, see docs/BROWSER.md).
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

if ! rustup target list --installed | grep -qx wasm32-unknown-unknown; then
  echo "ensure-tools: rustup target add wasm32-unknown-unknown"
  rustup target add wasm32-unknown-unknown
fi

if [[ ! -f Cargo.lock ]]; then
  echo "ensure-tools: Cargo.lock is missing; run a cargo build once (it pins the wasm-bindgen version)" >&2
  exit 1
fi
want="$(awk '
  /^\[\[package\]\]/ { in_pkg = 1; name = ""; next }
  in_pkg && /^name = / { name = $3; gsub(/"/, "", name); next }
  in_pkg && /^version = / && name == "wasm-bindgen" { v = $3; gsub(/"/, "", v); print v; exit }
' Cargo.lock)"
if [[ -z "$want" ]]; then
  echo "ensure-tools: no wasm-bindgen package in Cargo.lock" >&2
  exit 1
fi

have="$(wasm-bindgen --version 2>/dev/null | awk '{print $2}' || true)"
if [[ "$have" != "$want" ]]; then
  echo "ensure-tools: installing wasm-bindgen-cli $want (found: ${have:-none}); takes several minutes"
  cargo install wasm-bindgen-cli --version "$want" -j2
fi
echo "ensure-tools: wasm32-unknown-unknown target and wasm-bindgen $want ready"
