'use strict';

// Error classes mirrored from the engine's stable codes (src/engine/errors.rs,
// `ErrorCode::as_str`). Classification happens in the engine; JS only maps a code to a class.

class ResilientChangeStreamError extends Error {
  /**
   * @param {string} message
   * @param {{ code?: string, serverCode?: number, codeName?: string, labels?: string[], cause?: unknown }} [info]
   */
  constructor(message, info = {}) {
    super(message, info.cause === undefined ? undefined : { cause: info.cause });
    // A subclass's code is fixed; the base class keeps whatever code it was given, so codes
    // added to the engine later still reach the user.
    this.code = new.target.code ?? info.code ?? 'Unknown';
    this.serverCode = info.serverCode;
    this.codeName = info.codeName;
    this.labels = info.labels ?? [];
  }

  // On the prototype (like Error's own `name`) so it does not clutter util.inspect output.
  get name() {
    return this.constructor.name;
  }
}

class ChangeStreamHistoryLostError extends ResilientChangeStreamError {
  static code = 'ChangeStreamHistoryLost';
}
class InvalidResumeTokenError extends ResilientChangeStreamError {
  static code = 'InvalidResumeToken';
}
class ChangeStreamFatalError extends ResilientChangeStreamError {
  static code = 'ChangeStreamFatal';
}
class AuthorizationError extends ResilientChangeStreamError {
  static code = 'Unauthorized';
}
class InvalidPipelineError extends ResilientChangeStreamError {
  static code = 'InvalidPipeline';
}
class RetriesExhaustedError extends ResilientChangeStreamError {
  static code = 'RetriesExhausted';
}
class ServerError extends ResilientChangeStreamError {
  static code = 'ServerError';
}
class InvalidOptionError extends ResilientChangeStreamError {
  static code = 'InvalidOption';
}
class ModeConflictError extends ResilientChangeStreamError {
  static code = 'ModeConflict';
}
class StreamClosedError extends ResilientChangeStreamError {
  static code = 'StreamClosed';
}
class TokenStoreError extends ResilientChangeStreamError {
  static code = 'TokenStoreError';
}
class PositionMismatchError extends ResilientChangeStreamError {
  static code = 'PositionMismatch';
}

/**
 * Thrown (by the first stream or cursor constructed, from lib/native.js) when no usable
 * binary is found. `code` is 'NativeAddonUnavailable'; `packageName` is the platform
 * package to install.
 */
class NativeAddonError extends ResilientChangeStreamError {
  static code = 'NativeAddonUnavailable';

  constructor(message, { cause, platform, packageName } = {}) {
    super(message, { cause });
    this.platform = platform;
    this.packageName = packageName;
  }
}

/** Every class with a stable code of its own; the base class takes any other code. */
const CODED_CLASSES = [
  ChangeStreamHistoryLostError,
  InvalidResumeTokenError,
  ChangeStreamFatalError,
  AuthorizationError,
  InvalidPipelineError,
  RetriesExhaustedError,
  ServerError,
  InvalidOptionError,
  ModeConflictError,
  StreamClosedError,
  TokenStoreError,
  PositionMismatchError,
  NativeAddonError,
];

const CLASS_BY_CODE = new Map(CODED_CLASSES.map((cls) => [cls.code, cls]));

/** The public error classes by name (what index.js exports). */
const errorClasses = Object.fromEntries(
  [ResilientChangeStreamError, ...CODED_CLASSES].map((cls) => [cls.name, cls]),
);

/** Builds the mirrored error for a `NativeErrorInfo` (see docs/native-contract.md). */
function fromNative(info) {
  const ErrorClass = CLASS_BY_CODE.get(info.code) ?? ResilientChangeStreamError;
  return new ErrorClass(info.message, info);
}

/** The type word used in option messages, in the engine's style ("got string"). */
function describeType(value) {
  if (value === null) return 'null';
  if (Array.isArray(value)) return 'array';
  if (typeof value === 'object') {
    const ctor = Object.getPrototypeOf(value)?.constructor;
    return ctor && ctor !== Object ? ctor.name : 'object';
  }
  return typeof value;
}

/** `option "<name>" must be <expected>, got <type>`: the engine's message shape for JS-side checks. */
function invalidOption(name, expected, value) {
  return new InvalidOptionError(`option "${name}" must be ${expected}, got ${describeType(value)}`);
}

module.exports = {
  ...errorClasses,
  errorClasses,
  fromNative,
  describeType,
  invalidOption,
};
