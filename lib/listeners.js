'use strict';

// The listener policy (README "Listener errors"). Item listeners (`change` / `data`) and
// `resumeTokenChanged` listeners are part of processing: what they throw closes the reader
// with a HandlerError (lib/pull.js). Every other event is an observation: a throwing (or
// rejecting) observer must neither close the reader nor kill the process, so each listener
// is called on its own and what it throws becomes a process warning.

const { HandlerError } = require('./errors');

/** `process.emitWarning` type of a throwing observer listener. */
const LISTENER_WARNING = 'ResilientChangeStreamListenerWarning';

/** What a listener threw, in one line (anything may be thrown, even undefined or a Symbol). */
function describeThrown(thrown) {
  try {
    return thrown instanceof Error ? thrown.message : String(thrown);
  } catch {
    return Object.prototype.toString.call(thrown);
  }
}

/**
 * Reports what an observer listener of `eventName` threw as a process warning. Node ignores
 * `type`/`detail` when emitWarning() is given an Error (and rejects anything else), so the
 * warning is an Error of our own: `name` the type, `detail` the event, `cause` what was thrown.
 * @param {string | symbol} eventName
 * @param {unknown} thrown
 */
function warnListenerThrew(eventName, thrown) {
  const detail = `${String(eventName)} listener threw`;
  const warning = new Error(`${detail}: ${describeThrown(thrown)}`, { cause: thrown });
  warning.name = LISTENER_WARNING;
  Object.assign(warning, { detail });
  process.emitWarning(warning);
}

/**
 * Calls every listener of `eventName` as EventEmitter#emit does (once() wrappers included),
 * each on its own: a throw or a rejected promise is reported with warnListenerThrew and the
 * other listeners still run. Returns whether there were listeners.
 * @param {import('node:events').EventEmitter} emitter
 * @param {string | symbol} eventName
 * @param {unknown[]} args
 */
function emitObserved(emitter, eventName, args) {
  const listeners = emitter.rawListeners(eventName);
  for (const listener of listeners) {
    try {
      const result = Reflect.apply(/** @type {Function} */ (listener), emitter, args);
      if (result !== null && typeof result?.then === 'function') {
        result.then(undefined, (/** @type {unknown} */ rejected) => warnListenerThrew(eventName, rejected));
      }
    } catch (thrown) {
      warnListenerThrew(eventName, thrown);
    }
  }
  return listeners.length > 0;
}

/**
 * The error a reader closes with when a processing listener of `eventName` threw `thrown`
 * while handling an item; `fields` says which item and where (event / document, resumeToken).
 * @param {string} readerName
 * @param {string} eventName
 * @param {unknown} thrown
 * @param {{ event?: unknown, document?: unknown, resumeToken?: unknown }} fields
 */
function handlerError(readerName, eventName, thrown, fields) {
  return new HandlerError(`${readerName}: a "${eventName}" listener threw: ${describeThrown(thrown)}`, {
    cause: thrown,
    ...fields,
  });
}

module.exports = { emitObserved, handlerError, warnListenerThrew, LISTENER_WARNING };
