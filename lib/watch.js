'use strict';

const { ResilientChangeStream } = require('./stream');
const { resolveTarget, connectionString } = require('./target');
const { DECODE_OPTION_NAMES } = require('./decode');
const { InvalidOptionError } = require('./errors');
const { describeType } = require('./error-helpers');

/**
 * `watch(target, pipeline?, options?)`: the drop-in for `target.watch(pipeline, options)`.
 * The namespace and connection string come from the driver object (`options.uri` wins).
 */
function watch(target, pipeline, options) {
  // As in collection.watch(options): the pipeline may be left out.
  if (options === undefined && isObject(pipeline) && !Array.isArray(pipeline)) {
    options = pipeline;
    pipeline = undefined;
  }
  if (options !== undefined && !isObject(options)) {
    throw new InvalidOptionError(`watch() options must be an object, got ${describeType(options)}`);
  }
  const { client, db, collection, bsonOptions, readPreference, readConcern } = resolveTarget(target);
  for (const name of ['db', 'collection']) {
    if (options?.[name] !== undefined) {
      throw new InvalidOptionError(
        `option "${name}" cannot be used with watch(): the namespace comes from the target`,
      );
    }
  }
  return new ResilientChangeStream({
    // The target's BSON settings, which the driver would apply to its events; options win.
    ...pickDefined(bsonOptions, DECODE_OPTION_NAMES),
    ...options,
    // As the driver's watch(): the target's read preference and read concern unless given.
    readPreference: options?.readPreference ?? readPreference,
    readConcern: options?.readConcern ?? readConcern,
    uri: options?.uri ?? connectionString(client),
    db,
    collection,
    pipeline: pipeline ?? options?.pipeline,
  });
}

function isObject(value) {
  return value !== null && typeof value === 'object';
}

function pickDefined(source, names) {
  const picked = {};
  for (const name of names) {
    if (source?.[name] !== undefined) picked[name] = source[name];
  }
  return picked;
}

module.exports = { watch };
