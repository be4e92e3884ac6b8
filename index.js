'use strict';

// resilient-change-stream: a thin JS facade over the Rust engine (lib/native.js loads it
// on first stream construction). See lib/ for the pieces and docs/native-contract.md.
// The export list stays literal (a spread of a require() call is fine): Node reads it to
// give index.mjs its named exports.

const { ResilientChangeStream } = require('./lib/stream');
const { watch } = require('./lib/watch');
const { ResilientCursor } = require('./lib/cursor');
const { instrument } = require('./lib/metrics');
const { healthCheck } = require('./lib/health-check');

module.exports = {
  ResilientChangeStream,
  ResilientCursor,
  watch,
  instrument,
  healthCheck,
  ...require('./lib/errors'),
};
