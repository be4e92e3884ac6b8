#!/usr/bin/env bash
# The whole suite, as `npm test` and CI run it. Works on a fresh clone: installs what it
# needs (npm packages, the test server), builds the addon, then checks and tests.
set -euo pipefail
cd "$(dirname "$0")/.."

step() { printf '\n=== %s\n' "$*"; }

bash scripts/install-deps.sh

step "test server (SecantusDB, pinned; installed on demand)"
node harness/cli.js install

step "cargo fmt --check"
cargo fmt --all -- --check

step "oxlint: the JavaScript (lib/, index.js, bin/, harness/, scripts/, __test__/)"
npm run lint

step "cargo clippy -D warnings"
cargo clippy --all-targets -- -D warnings

step "build the addon (release)"
npm run build

step "tsc: lib/ and index.js type-checked (JSDoc) against the generated native/binding.d.ts"
npm run typecheck:lib

step "tsc --noEmit: TypeScript usage against index.d.ts"
npx tsc -p __test__/types

step "cargo test (engine, against a live server)"
cargo test

step "node tests (against a live server)"
npm run test:node
