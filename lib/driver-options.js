'use strict';

// The driver's ChangeStreamOptions that are not the engine's own, each given the meaning it
// has for `collection.watch()` in the official driver (mongodb 6.x change_stream.js,
// operations/aggregate.js, utils.js `resolveOptions`):
// - server options the engine puts into the `aggregate` (readConcern, maxTimeMS, hint, let,
//   allowDiskUse, bypassDocumentValidation) and readPreference (where it runs) are converted
//   here to plain BSON and validated by the engine (src/engine/stream/spec.rs);
// - BSON options: the promote*/useBigInt64/bsonRegExp ones decode events (lib/decode.js);
//   serializeFunctions and ignoreUndefined shape how the pipeline is encoded, as the driver's
//   command serializer does;
// - options the driver's change stream ignores are accepted and ignored the same way;
// - options that cannot apply to a stream that outlives sessions and processes are refused
//   with an InvalidOptionError that says why.
// This is the one list of them.

const { InvalidOptionError } = require('./errors');
const { invalidOption } = require('./error-helpers');
const { bson } = require('./decode');

/** Options the driver's change stream accepts and does nothing with: so do we. */
const IGNORED = {
  // ChangeStream's constructor sets both to undefined: "timeoutMS and timeoutMode are no-ops".
  timeoutMS: 'a no-op for change streams in the driver',
  timeoutMode: 'a no-op for change streams in the driver',
  // Deleted by the driver's ChangeStream constructor.
  writeConcern: 'deleted by the driver for change streams',
  // The aggregate runs on the target's database whatever these say.
  dbName: "the driver's aggregate runs on the target's namespace",
  authdb: 'not used by the aggregate',
  retryWrites: 'a change stream writes nothing',
  willRetryWrite: 'a change stream writes nothing',
  noResponse: 'not used by the aggregate',
  // The driver's command serializer does not check keys (stages are $-prefixed).
  checkKeys: 'the driver does not check command keys',
  // mongodb 6.x decodes change events without it (checked: fullDocument stays an object).
  fieldsAsRaw: "the driver's change stream decodes events without it",
};

/** Options refused, with the reason. */
const REFUSED = {
  session:
    'a ResilientChangeStream outlives sessions (it re-opens on other connections, across outages ' +
    'and process restarts), so it cannot run in a ClientSession; leave "session" out',
  raw:
    "raw events carry no decoded _id, which a change stream needs for its resume token (the driver's " +
    'ChangeStream fails on the first raw event too)',
  out: 'a change stream cannot write its output to a collection ($out)',
  explain: 'a change stream cannot be explained; run explain on an aggregate instead',
  cursor: 'the cursor document is built by the stream; use "batchSize"',
};

/**
 * Takes the driver options out of `options`: what the engine receives instead (plain BSON
 * values).
 * @param {Record<string, any>} options
 * @param {{ readPreference?: unknown, readConcern?: unknown }} [inherited] the target's, used
 *   when the options give none (as the driver's resolveOptions)
 * @returns {{ rest: Record<string, any> }}
 */
function takeDriverOptions(options, inherited = {}) {
  const rest = { ...options };
  for (const [name, reason] of Object.entries(REFUSED)) {
    const value = rest[name];
    delete rest[name];
    if (value === undefined || value === null || (name === 'raw' && value === false)) continue;
    throw new InvalidOptionError(`option "${name}" is not supported: ${reason}`);
  }
  for (const name of Object.keys(IGNORED)) delete rest[name];

  const { serializeFunctions, ignoreUndefined } = rest;
  delete rest.serializeFunctions;
  delete rest.ignoreUndefined;
  for (const [name, value] of [['serializeFunctions', serializeFunctions], ['ignoreUndefined', ignoreUndefined]]) {
    if (value !== undefined && typeof value !== 'boolean') throw invalidOption(name, 'a boolean', value);
  }
  if (Array.isArray(rest.pipeline)) {
    rest.pipeline = rest.pipeline.map((stage) => asCommandValue(stage, { serializeFunctions, ignoreUndefined }));
  }

  const readPreference = rest.readPreference ?? inherited.readPreference;
  rest.readPreference = readPreference == null ? undefined : plainReadPreference(readPreference);
  const readConcern = rest.readConcern ?? inherited.readConcern;
  rest.readConcern = readConcern == null ? undefined : plainReadConcern(readConcern);
  return { rest };
}

/**
 * A value as the driver's command serializer would encode it: functions become BSON Code
 * with `serializeFunctions` (else they are left for the encodability check to refuse, as BSON
 * would drop them), undefined becomes null unless `ignoreUndefined`.
 * A value that contains itself is returned as it is where it repeats, for the encodability
 * check to refuse as circular (naming its path).
 * @param {unknown} value
 * @param {{ serializeFunctions?: boolean, ignoreUndefined?: boolean }} flags
 * @param {Set<object>} [within] the objects this one is inside (cycle detection)
 * @returns {unknown}
 */
function asCommandValue(value, flags, within = new Set()) {
  if (typeof value === 'function' && flags.serializeFunctions) return new (bson().Code)(value.toString());
  if (value === null || typeof value !== 'object' || '_bsontype' in value || value instanceof Date || value instanceof RegExp || ArrayBuffer.isView(value)) {
    return value;
  }
  if (within.has(value)) return value;
  within.add(value);
  try {
    if (Array.isArray(value)) return value.map((v) => (v === undefined && !flags.ignoreUndefined ? null : asCommandValue(v, flags, within)));
    if (Object.getPrototypeOf(value) !== Object.prototype && Object.getPrototypeOf(value) !== null) return value;
    /** @type {Record<string, unknown>} */
    const out = {};
    for (const [key, v] of Object.entries(value)) {
      if (v === undefined) {
        if (!flags.ignoreUndefined) out[key] = null;
        continue;
      }
      out[key] = asCommandValue(v, flags, within);
    }
    return out;
  } finally {
    within.delete(value);
  }
}

const READ_PREFERENCE_MODES = ['primary', 'primaryPreferred', 'secondary', 'secondaryPreferred', 'nearest'];

/**
 * The driver's ReadPreference (or its mode string, or `{ mode, tags, maxStalenessSeconds }`)
 * as the engine's `readPreference` document.
 * @param {any} value
 */
function plainReadPreference(value) {
  const rp = typeof value === 'string' ? { mode: value } : value;
  if (rp === null || typeof rp !== 'object' || !READ_PREFERENCE_MODES.includes(rp.mode)) {
    throw invalidOption('readPreference', `a ReadPreference or one of ${READ_PREFERENCE_MODES.map((m) => `'${m}'`).join(', ')}`, value);
  }
  /** @type {Record<string, unknown>} */
  const plain = { mode: rp.mode };
  if (Array.isArray(rp.tags) && rp.tags.length > 0) plain.tags = rp.tags;
  if (typeof rp.maxStalenessSeconds === 'number' && rp.maxStalenessSeconds >= 0) plain.maxStalenessSeconds = rp.maxStalenessSeconds;
  return plain;
}

/**
 * The driver's ReadConcern (or its level string, or `{ level }`) as the `readConcern` the
 * aggregate carries.
 * @param {any} value
 */
function plainReadConcern(value) {
  const rc = typeof value === 'string' ? { level: value } : value;
  if (rc === null || typeof rc !== 'object' || typeof rc.level !== 'string') {
    throw invalidOption('readConcern', 'a ReadConcern, { level } or a level string', value);
  }
  return { level: rc.level };
}

module.exports = { takeDriverOptions, IGNORED, REFUSED };
