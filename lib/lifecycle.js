'use strict';

/**
 * Where a reader (ResilientChangeStream or ResilientCursor) is in its life. Only forward:
 *
 *   open ──stop()──▶ stopping          a cursor: the engine sends what it has, then ends
 *   open | stopping ──close(), the engine's end or error, a throwing listener──▶ closing
 *   closing ──the native close settled──▶ closed, or failed when it closed on an error
 *
 * Items are read and handed out only while open or stopping. The engine's end is applied
 * only once everything it sent before was handed out, so nothing is dropped by it; close()
 * and failures drop what is still buffered.
 * @type {Record<LifecycleState, LifecycleState[]>}
 */
const TRANSITIONS = {
  open: ['stopping', 'closing'],
  stopping: ['closing'],
  closing: ['closed', 'failed'],
  closed: [],
  failed: [],
};

/**
 * How items are consumed, the other axis. Iterator mode (next, hasNext, tryNext, for await,
 * stream()) and emitter mode (an item listener: 'flowing' while the pump runs, 'paused'
 * when it stopped) exclude each other, for good: ModeConflictError.
 * @type {Record<ConsumptionMode, ConsumptionMode[]>}
 */
const MODE_TRANSITIONS = {
  unset: ['iterator', 'flowing'],
  iterator: ['iterator'],
  flowing: ['paused'],
  paused: ['flowing'],
};

/**
 * @typedef {'open' | 'stopping' | 'closing' | 'closed' | 'failed'} LifecycleState
 * @typedef {'unset' | 'iterator' | 'paused' | 'flowing'} ConsumptionMode
 */

class Lifecycle {
  constructor() {
    /** @type {LifecycleState} */
    this.state = 'open';
    /** @type {ConsumptionMode} */
    this.mode = 'unset';
    /**
     * Why it closed, once closing: 'closed' (close()), the engine's end reason ('exhausted',
     * 'stopped', 'invalidate'), or 'error'. Null while reading.
     * @type {string | null}
     */
    this.reason = null;
    /** The error it closes on (then it ends failed). @type {Error | null} */
    this.error = null;
  }

  /** Items are read and handed out. */
  get reading() {
    return this.state === 'open' || this.state === 'stopping';
  }

  /** Emitter mode: items go to listeners, not to next(). */
  get emitter() {
    return this.mode === 'flowing' || this.mode === 'paused';
  }

  /** @param {LifecycleState} next */
  to(next) {
    if (!TRANSITIONS[this.state].includes(next)) {
      throw new Error(`reader lifecycle: ${this.state} → ${next} is not a transition`);
    }
    this.state = next;
  }

  /** @param {ConsumptionMode} next */
  toMode(next) {
    if (!MODE_TRANSITIONS[this.mode].includes(next)) {
      throw new Error(`reader mode: ${this.mode} → ${next} is not a transition`);
    }
    this.mode = next;
  }

  /**
   * Starts closing, on `error` (it ends failed) or for `reason`.
   * @param {Error | null} error
   * @param {string} reason
   */
  close(error, reason) {
    this.to('closing');
    this.error = error;
    this.reason = error ? 'error' : reason;
  }

  /** The native close settled. */
  settle() {
    this.to(this.error ? 'failed' : 'closed');
  }
}

module.exports = { Lifecycle };
