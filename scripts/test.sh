#!/usr/bin/env bash
# README command 2: everything CI runs.
#   1. test needs: system Chromium and Mesa's software Vulkan (apt), tests/browser's npm packages (npm ci)
#   2. no module cycles (scripts/check-cycles.mjs), native tests: cargo test -j2
#   3. the web build: scripts/ensure-tools.sh + scripts/build-web.sh
#   4. browser end-to-end tests: node tests/browser/run.mjs (headless Chromium, WebGPU on SwiftShader)
# Honours CARGO_TARGET_DIR. Prints one timing line per phase.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

phase_start=0
phase() {
  phase_name="$1"
  phase_start=$SECONDS
  echo "==> $phase_name"
}
phase_done() {
  echo "==> $phase_name: done in $((SECONDS - phase_start)) s"
}
phase_name="setup"
trap 'echo "==> $phase_name: FAILED after $((SECONDS - phase_start)) s" >&2' ERR

as_root() {
  if [[ "$(id -u)" == 0 ]]; then "$@"; else sudo "$@"; fi
}

phase "test needs (chromium, npm ci)"
# mesa-vulkan-drivers: lavapipe, the software Vulkan adapter the native wgpu tests
# (tests/flash_attention.rs: the WGSL kernels) run on where there is no GPU.
if [[ ! -x /usr/bin/chromium ]] || ! dpkg -s mesa-vulkan-drivers >/dev/null 2>&1; then
  as_root apt-get update
  as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y chromium chromium-driver mesa-vulkan-drivers libvulkan1
fi
command -v node >/dev/null || { echo "test.sh: node (>= 18) is required" >&2; exit 1; }
(cd tests/browser && npm ci --no-audit --no-fund --loglevel=error)
phase_done

phase "layering (scripts/check-cycles.mjs: no module cycles in src/ or www/)"
node scripts/check-cycles.mjs
phase_done

phase "native tests (cargo test -j2)"
cargo test -j2
phase_done

phase "web build (ensure-tools, build-web)"
scripts/ensure-tools.sh
scripts/build-web.sh
phase_done

phase "browser tests (tests/browser/run.mjs)"
node tests/browser/run.mjs
phase_done
