'use strict';

const { InvalidOptionError } = require('./errors');
const { describeType, invalidOption } = require('./error-helpers');
const { encodeSpec, takeDecodeOptions } = require('./decode');
const { checkLogger } = require('./logger');

/**
 * The options every reader takes, split: the JS-only ones (BSON decode options, `logger`)
 * and `rest`, what the engine validates (after `createValidated` made sure it can be encoded
 * as it is).
 * @param {string} className for the message
 * @param {unknown} options
 * @returns {{ decode: Record<string, boolean>, logger: object | null, concurrency: number, rest: Record<string, any> }}
 */
function readerOptions(className, options) {
  if (options === null || typeof options !== 'object' || Array.isArray(options)) {
    throw new InvalidOptionError(`${className} options must be an object, got ${describeType(options)}`);
  }
  const { decode, rest: withLogger } = takeDecodeOptions(options);
  const { logger, concurrency, ...rest } = withLogger;
  if (rest.group !== null && typeof rest.group === 'object' && !Array.isArray(rest.group) && rest.group.member == null) {
    // What only this side knows names the member best: the host and the process.
    rest.group = { ...rest.group, member: defaultMember() };
  }
  return { decode, logger: checkLogger(logger), concurrency: checkConcurrency(concurrency), rest };
}

/** The most item listeners a reader runs at once (`concurrency`, JS-only: the pump's). */
const MAX_CONCURRENCY = 1000;

/** @param {unknown} value */
function checkConcurrency(value) {
  if (value === undefined || value === null) return 1;
  if (typeof value !== 'number' || !Number.isInteger(value) || value < 1 || value > MAX_CONCURRENCY) {
    throw invalidOption('concurrency', `a whole number from 1 to ${MAX_CONCURRENCY}`, value);
  }
  return value;
}

/** `host:pid:nonce`: unique per process, readable in health() and the lease collection. */
function defaultMember() {
  const nonce = Math.floor(Math.random() * 0x10000)
    .toString(16)
    .padStart(4, '0');
  return `${require('node:os').hostname()}:${process.pid}:${nonce}`;
}

/**
 * Builds a native reader from `spec`, every option validated. BSON serialization loses some
 * values silently — a function or a Symbol is dropped, from an array too (`pipeline: [() => 0,
 * stage]` would lose a stage, `filter: { a: fn }` read everything, `name: fn` make the reader
 * quietly non-durable) — and throws a raw BSONError on others (a cycle, a key with a NUL).
 * Such a value is an InvalidOptionError naming its path (`pipeline[0]`, `filter.a`).
 *
 * An unknown option is reported as unknown whatever its value: only the engine knows the
 * names (no second list here), so it first sees the spec with each unencodable option as
 * null (absent, to its checks). Its "unknown option" error wins; otherwise the unencodable
 * value is reported (and a reader the engine built meanwhile is closed: it never opened).
 * @template R
 * @param {(encoded: Buffer, callback?: any) => R & { close(): Promise<unknown> }} create
 * @param {Record<string, any>} spec
 * @param {any} [callback] passed to `create` (a custom token store)
 * @returns {R}
 */
function createValidated(create, spec, callback) {
  const { encoded, unencodable } = encodeChecked(spec);
  let native;
  try {
    native = create(encoded, callback);
  } catch (err) {
    // The engine validates the options; only the error's class is JS's business.
    if (err?.code !== 'InvalidArg') throw err;
    const engineError = new InvalidOptionError(err.message, { cause: err });
    if (unencodable === null || String(err.message).startsWith('unknown option "')) throw engineError;
    throw unencodable;
  }
  if (unencodable !== null) {
    native.close().catch(() => {});
    throw unencodable;
  }
  return native;
}

/**
 * `spec` encoded, each top-level option that cannot be encoded faithfully replaced by null,
 * and the error for the first such option (null when there is none).
 * @param {Record<string, any>} spec
 * @returns {{ encoded: Buffer, unencodable: Error | null }}
 */
function encodeChecked(spec) {
  /** @type {Map<string, Error>} */
  const problems = new Map();
  for (const [name, value] of Object.entries(spec)) {
    const problem = unencodableAt(value, name, new Set());
    if (problem) problems.set(name, problem);
  }
  let encoded;
  try {
    encoded = encodeSpec(withNulls(spec, problems));
  } catch (err) {
    // What the walk does not know (a NUL in a key, a foreign bson version's value): find the
    // option by encoding each on its own.
    for (const [name, value] of Object.entries(spec)) {
      if (problems.has(name)) continue;
      // No option's name holds a NUL: one that cannot even be a BSON key is unknown.
      if (name.includes('\0')) throw new InvalidOptionError(`unknown option ${JSON.stringify(name)}`);
      try {
        encodeSpec({ [name]: value });
      } catch (optionErr) {
        problems.set(name, new InvalidOptionError(`option "${name}" cannot be encoded as BSON: ${optionErr.message}`, { cause: optionErr }));
      }
    }
    if (problems.size === 0) throw new InvalidOptionError(`the options cannot be encoded as BSON: ${err.message}`, { cause: err });
    encoded = encodeSpec(withNulls(spec, problems));
  }
  const [first] = problems.values();
  return { encoded, unencodable: first ?? null };
}

/**
 * @param {Record<string, any>} spec
 * @param {Map<string, unknown>} problems
 */
function withNulls(spec, problems) {
  if (problems.size === 0) return spec;
  const copy = { ...spec };
  for (const name of problems.keys()) copy[name] = null;
  return copy;
}

/**
 * The error for the first value under `value` that BSON would drop, change or cannot encode
 * — a function, a Symbol, a cycle, an invalid Date, a bigint past int64 — named by its path;
 * null when there is none. Walks what the
 * serializer walks: arrays, plain and class objects, Maps, what toBSON() returns; BSON values,
 * Dates, RegExps and binary data are leaves.
 * @param {unknown} value
 * @param {string} path
 * @param {Set<object>} ancestors the objects being walked above `value`
 * @returns {Error | null}
 */
function unencodableAt(value, path, ancestors) {
  if (typeof value === 'function' || typeof value === 'symbol') {
    return invalidOption(path, 'a value BSON can encode (BSON drops functions and Symbols)', value);
  }
  // BSON turns these into other values silently: an invalid Date into 1970, a bigint past
  // int64 into its low 64 bits.
  if (typeof value === 'bigint' && BigInt.asIntN(64, value) !== value) {
    return invalidOption(path, 'a bigint within int64 (BSON would wrap it)', value);
  }
  if (value instanceof Date && Number.isNaN(value.getTime())) {
    return invalidOption(path, 'a valid Date (BSON would store 1970-01-01)', value);
  }
  if (value === null || typeof value !== 'object' || isBsonLeaf(value)) return null;
  if (ancestors.has(value)) {
    return new InvalidOptionError(`option "${path}" is circular (it contains itself): BSON cannot encode it`);
  }
  if (typeof (/** @type {any} */ (value).toBSON) === 'function') {
    return unencodableAt(/** @type {any} */ (value).toBSON(), path, ancestors);
  }
  ancestors.add(value);
  try {
    const entries = value instanceof Map ? [...value] : Object.entries(value);
    for (const [key, child] of entries) {
      const childPath = Array.isArray(value) ? `${path}[${key}]` : `${path}.${String(key)}`;
      const problem = unencodableAt(child, childPath, ancestors);
      if (problem) return problem;
    }
    return null;
  } finally {
    ancestors.delete(value);
  }
}

/** @param {object} value */
function isBsonLeaf(value) {
  return (
    '_bsontype' in value ||
    value instanceof Date ||
    value instanceof RegExp ||
    ArrayBuffer.isView(value) ||
    value instanceof ArrayBuffer
  );
}

/**
 * Throws the InvalidOptionError of the first value under `value` BSON (or Extended JSON,
 * which drops the same) would lose or cannot encode; `path` names `value`.
 * @param {unknown} value
 * @param {string} path
 */
function checkEncodable(value, path) {
  const problem = unencodableAt(value, path, new Set());
  if (problem) throw problem;
}

module.exports = { readerOptions, createValidated, encodeChecked, checkEncodable };
