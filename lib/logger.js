'use strict';

const { invalidOption } = require('./error-helpers');

const LEVELS = ['debug', 'info', 'warn', 'error'];

/**
 * Validates the `logger` option: a pino/console-style object with at least one of
 * debug/info/warn/error. Returns null when none was given (the default: silent).
 */
function checkLogger(logger) {
  if (logger === undefined || logger === null) return null;
  const usable = typeof logger === 'object' && LEVELS.some((l) => typeof logger[l] === 'function');
  if (!usable) {
    throw invalidOption('logger', 'an object with debug/info/warn/error methods', logger);
  }
  return logger;
}

/**
 * The callback the engine's log records go to. Records arrive already redacted. Called as
 * `logger[level](fields, message)` — pino's argument order, which console prints fine too.
 * A throwing logger must not take the stream (or the process) down with it.
 */
function logSink(logger, namespace) {
  return (record) => {
    const method = logger[record.level];
    if (typeof method !== 'function') return;
    try {
      method.call(logger, { component: 'resilient-change-stream', namespace, ...record.fields }, record.message);
    } catch {
      // Logging is best effort.
    }
  };
}

module.exports = { checkLogger, logSink };
