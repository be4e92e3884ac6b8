'use strict';

const { InvalidOptionError } = require('./errors');
const { describeType, invalidOption } = require('./error-helpers');
const { takeDecodeOptions } = require('./decode');
const { checkLogger } = require('./logger');

/**
 * The options every reader takes, split: the JS-only ones (BSON decode options, `logger`)
 * and `rest`, what the engine validates. JS checks here only what the engine cannot see:
 * options that never reach it, and functions, which BSON serialization drops silently (a
 * `filter: () => …` would otherwise read everything).
 * @param {string} className for the message
 * @param {unknown} options
 * @returns {{ decode: Record<string, boolean>, logger: object | null, rest: Record<string, any> }}
 */
function readerOptions(className, options) {
  if (options === null || typeof options !== 'object' || Array.isArray(options)) {
    throw new InvalidOptionError(`${className} options must be an object, got ${describeType(options)}`);
  }
  const { decode, rest: withLogger } = takeDecodeOptions(options);
  const { logger, ...rest } = withLogger;
  for (const [name, value] of Object.entries(rest)) {
    if (typeof value === 'function') throw invalidOption(name, 'a value the engine can read', value);
  }
  return { decode, logger: checkLogger(logger), rest };
}

module.exports = { readerOptions };
