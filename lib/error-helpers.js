'use strict';

const errorClasses = require('./errors');

const { ResilientChangeStreamError, InvalidOptionError } = errorClasses;

/**
 * Stable codes without a class of their own: they arrive as ResilientChangeStreamError.
 * With the codes of the classes in lib/errors.js, every code the JS side knows.
 */
const BASE_CLASS_CODES = ['NetworkError', 'ClientError', 'Stalled'];

/** @type {Map<string, typeof ResilientChangeStreamError>} */
const CLASS_BY_CODE = new Map();
for (const cls of Object.values(errorClasses)) {
  const { code } = /** @type {any} */ (cls);
  if (code !== undefined) CLASS_BY_CODE.set(code, cls);
}

/** Every stable error code, in table order (the Rust side's list must match it). */
const ERROR_CODES = [...CLASS_BY_CODE.keys(), ...BASE_CLASS_CODES];

/**
 * Builds the mirrored error for a `NativeErrorInfo` (see docs/native-contract.md).
 * @param {import('../native/binding').NativeErrorInfo} info
 * @returns {InstanceType<typeof ResilientChangeStreamError>}
 */
function fromNative(info) {
  const ErrorClass = CLASS_BY_CODE.get(info.code) ?? ResilientChangeStreamError;
  return new ErrorClass(info.message, info);
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

module.exports = { fromNative, describeType, invalidOption, ERROR_CODES, BASE_CLASS_CODES };
