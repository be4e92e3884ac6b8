'use strict';

const path = require('node:path');

const BINDING_PATH = path.join(__dirname, '..', 'native', 'binding.js');

let NativeChangeStream = null;

/**
 * The addon's `NativeChangeStream` class (docs/native-contract.md). Loaded on first use so
 * that `require('resilient-change-stream')` works without a built addon (typings, pure-JS
 * tests) and the failure, if any, names what is missing.
 */
function nativeChangeStream() {
  if (NativeChangeStream === null) {
    let binding;
    try {
      binding = require(BINDING_PATH);
    } catch (err) {
      // First line only: the rest of a MODULE_NOT_FOUND message is the require stack.
      const reason = String(err?.message).split('\n')[0];
      throw new Error(
        `resilient-change-stream: cannot load the native addon (${BINDING_PATH}): ${reason}. ` +
          'Build it with `npm run build`, or reinstall the package for this platform.',
        { cause: err },
      );
    }
    if (typeof binding.NativeChangeStream !== 'function') {
      throw new Error(`resilient-change-stream: ${BINDING_PATH} does not export NativeChangeStream`);
    }
    NativeChangeStream = binding.NativeChangeStream;
  }
  return NativeChangeStream;
}

module.exports = { nativeChangeStream };
