'use strict';
// Test harness: installs and runs SecantusDB (a MongoDB-compatible test
// server), or wraps MONGODB_URI when a real deployment is given.
// Used by node:test tests, cargo tests (via harness/cli.js), benchmarks, demo.

const { installServer } = require('./install');
const { startServer, TestServer, externalUri } = require('./server');

/**
 * For tests that need the embedded server (kill/restart, secantusAdmin.*):
 * skips the test when MONGODB_URI points elsewhere.
 * @param {import('node:test').TestContext} t
 * @param {string} what e.g. 'kill and restart the server'
 * @returns {boolean} true when skipped (the caller should return)
 */
function skipIfExternal(t, what) {
  if (!externalUri()) return false;
  const reason = `needs the embedded test server to ${what}; MONGODB_URI points elsewhere`;
  t.skip(reason);
  process.stderr.write(`skip: ${reason}\n`);
  return true;
}

module.exports = { installServer, startServer, skipIfExternal, TestServer };
