#!/usr/bin/env bash
# The whole suite, as `npm test` and CI run it. Works on a fresh clone: installs what it
# needs (npm packages, the test server), builds the addon, then checks and tests.
set -euo pipefail
cd "$(dirname "$0")/.."

step() { printf '\n=== %s\n' "$*"; }

# The versions come from package-lock.json. Not `npm ci`: the registry this project's
# machines reach serves only the linux-x64 builds of @napi-rs/cli's own native helpers
# (@napi-rs/lzma, wasm-tools), so their other platforms' optional packages cannot be
# recorded in the lock, and `npm ci` refuses a lock without them. `npm install --no-save`
# installs the locked versions and leaves the lock alone.
if [ ! -f node_modules/.package-lock.json ] || [ package-lock.json -nt node_modules/.package-lock.json ]; then
  step "npm install (locked versions)"
  npm install --no-save --no-audit --no-fund
fi

step "test server (SecantusDB, pinned; installed on demand)"
node harness/cli.js install

step "cargo fmt --check"
cargo fmt --all -- --check

step "cargo clippy -D warnings"
cargo clippy --all-targets -- -D warnings

step "build the addon (release)"
npm run build

step "tsc --noEmit: TypeScript usage against index.d.ts"
npx tsc -p __test__/types

step "cargo test (engine, against a live server)"
cargo test

step "node tests (against a live server)"
npm run test:node
