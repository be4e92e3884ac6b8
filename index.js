'use strict';

// resilient-change-stream: a thin JS facade over the Rust engine (lib/native.js loads it
// on first stream construction). See lib/ for the pieces and docs/native-contract.md.

const { ResilientChangeStream } = require('./lib/stream');
const { watch } = require('./lib/watch');
const { ResilientCursor } = require('./lib/cursor');
const { errorClasses } = require('./lib/errors');

module.exports = {
  ResilientChangeStream,
  ResilientCursor,
  watch,
  ...errorClasses,
};
