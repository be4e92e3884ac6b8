'use strict';

const { invalidOption } = require('./error-helpers');

const DEFAULTS = { fraction: 0.1, intervalMS: 60000 };
/** setInterval's largest delay: Node runs a longer one after 1 ms (a TimeoutOverflowWarning), back to back. */
const MAX_INTERVAL_MS = 2 ** 31 - 1;

/** Validates `headroomLowFraction` and `headroomCheckIntervalMS` (JS-only options). */
function headroomOptions({ headroomLowFraction, headroomCheckIntervalMS }) {
  const fraction = headroomLowFraction ?? DEFAULTS.fraction;
  if (typeof fraction !== 'number' || !(fraction >= 0 && fraction <= 1)) {
    throw invalidOption('headroomLowFraction', 'a number from 0 to 1', headroomLowFraction);
  }
  const intervalMS = headroomCheckIntervalMS ?? DEFAULTS.intervalMS;
  if (!Number.isInteger(intervalMS) || intervalMS < 0 || intervalMS > MAX_INTERVAL_MS) {
    throw invalidOption('headroomCheckIntervalMS', `an integer from 0 to ${MAX_INTERVAL_MS} (2^31-1)`, headroomCheckIntervalMS);
  }
  return { fraction, intervalMS };
}

/** The native window report as the public shape (times as Dates, seconds precision). */
function publicWindow(w) {
  const date = (s) => (s == null ? null : new Date(s * 1000));
  return {
    available: w.available,
    oldest: date(w.oldestSeconds),
    newest: date(w.newestSeconds),
    position: date(w.positionSeconds),
    windowMs: w.windowMs ?? null,
    headroomMs: w.headroomMs ?? null,
    lost: w.lost ?? null,
    low: w.low ?? null,
    reason: w.reason ?? null,
  };
}

/**
 * Checks the oplog headroom every `intervalMS` and calls `onLow(window)` when the position
 * becomes low (once per episode: again only after it recovered). The timer never keeps
 * the process alive. A failed check (server down) is skipped: the stream reports outages.
 */
function startHeadroomWatch({ intervalMS }, check, onLow) {
  if (intervalMS === 0) return () => {};
  let wasLow = false;
  let running = false;
  const timer = setInterval(async () => {
    if (running) return;
    running = true;
    try {
      const window = await check();
      if (window.low && !wasLow) onLow(window);
      wasLow = window.low === true;
    } catch {
      // Unreachable server: 'reconnecting' already says so.
    } finally {
      running = false;
    }
  }, intervalMS);
  timer.unref();
  return () => clearInterval(timer);
}

module.exports = { headroomOptions, publicWindow, startHeadroomWatch, MAX_INTERVAL_MS };
