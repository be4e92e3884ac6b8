'use strict';

// The public error classes: one line a stable code. The engine's codes (src/engine/errors.rs,
// `ErrorCode::as_str`) are classified there; JS only maps a code to a class
// (lib/error-helpers.js `fromNative`). Everything this module exports is public: index.js
// re-exports it whole, and the `exports.<Class> =` lines are what lets Node find the named
// exports for `import { InvalidOptionError } from 'resilient-change-stream'` (index.mjs).
// index.d.ts declares the same classes; __test__/error-codes.test.js checks they agree.

class ResilientChangeStreamError extends Error {
  /**
   * @param {string} message
   * @param {{ code?: string, serverCode?: number, codeName?: string, labels?: string[], cause?: unknown }} [info]
   */
  constructor(message, info = {}) {
    super(message, info.cause === undefined ? undefined : { cause: info.cause });
    // A subclass's code is fixed; the base class keeps whatever code it was given, so codes
    // added to the engine later still reach the user.
    /** @type {string} */
    this.code = /** @type {any} */ (new.target).code ?? info.code ?? 'Unknown';
    this.serverCode = info.serverCode;
    this.codeName = info.codeName;
    this.labels = info.labels ?? [];
  }

  // On the prototype (like Error's own `name`) so it does not clutter util.inspect output.
  get name() {
    return this.constructor.name;
  }
}

/**
 * A class whose `code` is fixed; it is named after the export it is assigned to (below).
 * @param {string} code
 */
function coded(code) {
  return class extends ResilientChangeStreamError {
    static code = code;
  };
}

exports.ResilientChangeStreamError = ResilientChangeStreamError;

// --- the table: export (class) name = its stable code ------------------------------------
exports.ChangeStreamHistoryLostError = coded('ChangeStreamHistoryLost');
exports.InvalidResumeTokenError = coded('InvalidResumeToken');
exports.ChangeStreamFatalError = coded('ChangeStreamFatal');
exports.AuthorizationError = coded('Unauthorized');
exports.InvalidPipelineError = coded('InvalidPipeline');
exports.RetriesExhaustedError = coded('RetriesExhausted');
exports.ServerError = coded('ServerError');
exports.InvalidOptionError = coded('InvalidOption');
exports.ModeConflictError = coded('ModeConflict');
exports.StreamClosedError = coded('StreamClosed');
exports.TokenStoreError = coded('TokenStoreError');
exports.PositionMismatchError = coded('PositionMismatch');
exports.LeaseStoreError = coded('LeaseStoreError');

/**
 * Thrown (by the first stream or cursor constructed, from lib/native.js) when no usable
 * binary is found. `code` is 'NativeAddonUnavailable'; `packageName` is the platform
 * package to install.
 */
exports.NativeAddonError = class NativeAddonError extends ResilientChangeStreamError {
  static code = 'NativeAddonUnavailable';

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
  static code = 'HandlerFailed';

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
