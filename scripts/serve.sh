#!/usr/bin/env bash
# README command 1: build the web app and serve it on http://127.0.0.1:${PORT:-8080}/.
# Open the printed URL in a WebGPU browser (current Chrome/Edge; on Linux Chromium with
# --enable-unsafe-webgpu). The tiny demo model is at /models/tiny-sd1/.
# Honours PORT and CARGO_TARGET_DIR. SKIP_BUILD=1 serves the existing www/pkg/.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

if [[ "${SKIP_BUILD:-0}" != 1 ]]; then
  scripts/ensure-tools.sh
  scripts/build-web.sh
fi
port="${PORT:-8080}"
echo "serve: open the URL below in a WebGPU browser; Ctrl+C stops"
exec node scripts/serve.mjs --port "$port"
