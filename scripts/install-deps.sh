#!/usr/bin/env bash
# Installs the locked npm packages when node_modules is missing or older than the lock
# (used by `npm test` and `npm run demo`, so both work on a fresh clone).
set -euo pipefail
cd "$(dirname "$0")/.."

# The versions come from package-lock.json. Not `npm ci`: the registry this project's
# machines reach serves only the linux-x64 builds of @napi-rs/cli's own native helpers
# (@napi-rs/lzma, wasm-tools), so their other platforms' optional packages cannot be
# recorded in the lock, and `npm ci` refuses a lock without them. `npm install --no-save`
# installs the locked versions and leaves the lock alone.
if [ ! -f node_modules/.package-lock.json ] || [ package-lock.json -nt node_modules/.package-lock.json ]; then
  printf '\n=== %s\n' "npm install (locked versions)"
  npm install --no-save --no-audit --no-fund
fi
