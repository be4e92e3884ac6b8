'use strict';

const errorClasses = require('./errors');

const { ResilientChangeStreamError, InvalidOptionError } = errorClasses;

/**
 * Stable kinds without a class of their own: they arrive as ResilientChangeStreamError.
 * With the kinds of the classes in lib/errors.js, every kind the JS side knows.
 */
const BASE_CLASS_KINDS = ['ClientError', 'Stalled'];

/** @type {Map<string, typeof ResilientChangeStreamError>} */
const CLASS_BY_KIND = new Map();
for (const cls of Object.values(errorClasses)) {
  const { kind } = /** @type {any} */ (cls);
  if (kind !== undefined) CLASS_BY_KIND.set(kind, cls);
}

/** Every stable error kind, in table order (the Rust side's list must match it). */
const ERROR_KINDS = [...CLASS_BY_KIND.keys(), ...BASE_CLASS_KINDS];

/**
 * Builds the mirrored error for a `NativeErrorInfo` (see docs/native-contract.md): the
 * engine's stable `code` becomes `kind`, the server's code `code`, as the driver has them.
 * @param {import('../native/binding').NativeErrorInfo} info
 * @returns {InstanceType<typeof ResilientChangeStreamError>}
 */
function fromNative(info) {
  const ErrorClass = CLASS_BY_KIND.get(info.code) ?? ResilientChangeStreamError;
  return new ErrorClass(info.message, {
    kind: info.code,
    code: info.serverCode ?? undefined,
    codeName: info.codeName ?? undefined,
    errorLabels: info.labels ?? [],
  });
}

/**
 * The type word used in option messages, in the engine's style ("got string").
 * @param {unknown} value
 */
function describeType(value) {
  if (value === null) return 'null';
  if (Array.isArray(value)) return 'array';
  if (typeof value === 'object') {
    const ctor = Object.getPrototypeOf(value)?.constructor;
    return ctor && ctor !== Object ? ctor.name : 'object';
  }
  return typeof value;
}

/**
 * `option "<name>" must be <expected>, got <type>`: the engine's message shape for JS-side checks.
 * @param {string} name
 * @param {string} expected
 * @param {unknown} value
 */
function invalidOption(name, expected, value) {
  return new InvalidOptionError(`option "${name}" must be ${expected}, got ${describeType(value)}`);
}

module.exports = { fromNative, describeType, invalidOption, ERROR_KINDS, BASE_CLASS_KINDS };
