'use strict';

// The public error classes: one line a stable kind. The engine's kinds (src/engine/errors.rs,
// `ErrorCode::as_str`; the native layer calls it `code`) are classified there; JS only maps a
// kind to a class (lib/error-helpers.js `fromNative`). Everything this module exports is public: index.js
// re-exports it whole, and the `exports.<Class> =` lines are what lets Node find the named
// exports for `import { InvalidOptionError } from 'resilient-change-stream'` (index.mjs).
// index.d.ts declares the same classes; __test__/error-codes.test.js checks they agree.

/** Marks this package's errors (see ResilientChangeStreamError[Symbol.hasInstance]). */
const BRAND = Symbol.for('resilient-change-stream.error');

/**
 * Base of every error this package raises. Shaped like the driver's errors, so code written
 * for `collection.watch()` handles them unchanged: `code` is the server's numeric code (when
 * the server reported the error), `codeName`, `errorLabels`, `hasErrorLabel()`. The package's
 * own stable kind (e.g. 'ChangeStreamHistoryLost') is `kind`.
 *
 * When the `mongodb` driver is installed, server errors are also `instanceof MongoServerError`,
 * network errors `instanceof MongoNetworkError`, and every error `instanceof MongoError` (see
 * linkDriverClasses below); `instanceof ResilientChangeStreamError` holds either way.
 */
class ResilientChangeStreamError extends Error {
  /**
   * @param {string} message
   * @param {{ kind?: string, code?: number, codeName?: string, errorLabels?: string[], cause?: unknown }} [info]
   */
  constructor(message, info = {}) {
    super(message, info.cause === undefined ? undefined : { cause: info.cause });
    linkDriverClasses();
    // A subclass's kind is fixed; the base class keeps whatever kind it was given, so kinds
    // added to the engine later still reach the user.
    /** @type {string} */
    this.kind = /** @type {any} */ (new.target).kind ?? info.kind ?? 'Unknown';
    /** @type {number | undefined} */
    this.code = info.code;
    /** @type {string | undefined} */
    this.codeName = info.codeName;
    // Own data property: it shadows the driver's `errorLabels` getter once linked.
    Object.defineProperty(this, 'errorLabels', {
      value: [...(info.errorLabels ?? [])],
      writable: true,
      enumerable: true,
      configurable: true,
    });
  }

  /** As the driver's MongoError: whether the server attached `label`. @param {string} label */
  hasErrorLabel(label) {
    return /** @type {string[]} */ (/** @type {any} */ (this).errorLabels).includes(label);
  }

  /** @param {string} label */
  addErrorLabel(label) {
    const labels = /** @type {string[]} */ (/** @type {any} */ (this).errorLabels);
    if (!labels.includes(label)) labels.push(label);
  }

  // On the prototype (like Error's own `name`) so it does not clutter util.inspect output.
  get name() {
    return this.constructor.name;
  }

  /**
   * Once linked, a server error class's prototype chain runs through the driver's
   * MongoServerError instead of this class: membership is the brand.
   * @param {unknown} value
   */
  static [Symbol.hasInstance](value) {
    if (this !== ResilientChangeStreamError) return Function.prototype[Symbol.hasInstance].call(this, value);
    return value !== null && (typeof value === 'object' || typeof value === 'function') && /** @type {any} */ (value)[BRAND] === true;
  }
}
Object.defineProperty(ResilientChangeStreamError.prototype, BRAND, { value: true });

/**
 * A class whose `kind` is fixed; it is named after the export it is assigned to (below).
 * `driverParent` names the driver class its errors are also instances of.
 * @param {string} kind
 * @param {'MongoServerError' | 'MongoNetworkError'} [driverParent]
 */
function kinded(kind, driverParent) {
  const cls = class extends ResilientChangeStreamError {
    static kind = kind;
  };
  if (driverParent) DRIVER_PARENTS.set(cls, driverParent);
  return cls;
}

/** @type {Map<Function, string>} */
const DRIVER_PARENTS = new Map();
let linked = false;

/**
 * Puts the driver's error classes into the prototype chains, once, when the first error is
 * built (requiring `mongodb` is not free; plain `require()` of this package stays cheap):
 * ResilientChangeStreamError → MongoError; the server error classes → a copy of this
 * package's base methods → MongoServerError; NetworkError → … → MongoNetworkError. The
 * driver's constructors are never called (they are internal), only its prototypes used.
 * Without the driver nothing changes. A different copy of the driver than the one
 * `require('mongodb')` finds from here is not linked.
 */
function linkDriverClasses() {
  if (linked) return;
  linked = true;
  let driver;
  try {
    driver = require('mongodb');
  } catch {
    return;
  }
  const { MongoError } = driver;
  if (typeof MongoError !== 'function') return;
  Object.setPrototypeOf(ResilientChangeStreamError.prototype, MongoError.prototype);
  const own = Object.getOwnPropertyDescriptors(ResilientChangeStreamError.prototype);
  delete (/** @type {any} */ (own)).constructor;
  /** @type {Map<string, object>} */
  const bases = new Map();
  for (const [cls, parentName] of DRIVER_PARENTS) {
    const parent = driver[parentName];
    if (typeof parent !== 'function' || !(parent.prototype instanceof MongoError)) continue;
    if (!bases.has(parentName)) bases.set(parentName, Object.create(parent.prototype, own));
    Object.setPrototypeOf(cls.prototype, /** @type {object} */ (bases.get(parentName)));
  }
}

exports.ResilientChangeStreamError = ResilientChangeStreamError;

// --- the table: export (class) name = its stable kind --------------------------------------
exports.ChangeStreamHistoryLostError = kinded('ChangeStreamHistoryLost', 'MongoServerError');
exports.InvalidResumeTokenError = kinded('InvalidResumeToken', 'MongoServerError');
exports.ChangeStreamFatalError = kinded('ChangeStreamFatal', 'MongoServerError');
exports.AuthorizationError = kinded('Unauthorized', 'MongoServerError');
exports.InvalidPipelineError = kinded('InvalidPipeline', 'MongoServerError');
exports.ServerError = kinded('ServerError', 'MongoServerError');
exports.NetworkError = kinded('NetworkError', 'MongoNetworkError');
exports.RetriesExhaustedError = kinded('RetriesExhausted');
exports.InvalidOptionError = kinded('InvalidOption');
exports.ModeConflictError = kinded('ModeConflict');
exports.StreamClosedError = kinded('StreamClosed');
exports.TokenStoreError = kinded('TokenStoreError');
exports.PositionMismatchError = kinded('PositionMismatch');
exports.LeaseStoreError = kinded('LeaseStoreError');

/**
 * Thrown (by the first stream or cursor constructed, from lib/native.js) when no usable
 * binary is found. `kind` is 'NativeAddonUnavailable'; `packageName` is the platform
 * package to install.
 */
exports.NativeAddonError = class NativeAddonError extends ResilientChangeStreamError {
  static kind = 'NativeAddonUnavailable';

  /**
   * @param {string} message
   * @param {{ cause?: unknown, platform?: string, packageName?: string }} [info]
   */
  constructor(message, { cause, platform, packageName } = {}) {
    super(message, { cause });
    this.platform = platform;
    this.packageName = packageName;
  }
};

/**
 * An item listener (`change` / cursor `data`), or a `resumeTokenChanged` listener, threw or
 * rejected: the reader closed with this error and its position stayed before that item (a
 * restart from the stored position delivers it again). `cause` is what was thrown; `event`
 * (change stream) or `document` (cursor) the item; `resumeToken` (change stream) the position
 * before that event.
 */
exports.HandlerError = class HandlerError extends ResilientChangeStreamError {
  static kind = 'HandlerFailed';

  /**
   * @param {string} message
   * @param {{ cause?: unknown, event?: unknown, document?: unknown, resumeToken?: unknown }} [info]
   */
  constructor(message, { cause, event, document, resumeToken } = {}) {
    super(message);
    // Always set, even when what was thrown is undefined: `cause` says what the listener threw.
    this.cause = cause;
    if (event !== undefined) this.event = event;
    if (document !== undefined) this.document = document;
    if (resumeToken !== undefined) this.resumeToken = resumeToken;
  }
};

for (const [name, cls] of Object.entries(exports)) {
  if (cls.name !== name) Object.defineProperty(cls, 'name', { value: name });
}
