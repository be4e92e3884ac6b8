'use strict';

const { EventEmitter } = require('node:events');
const { Readable } = require('node:stream');
const { ModeConflictError } = require('./errors');
const { fromNative } = require('./error-helpers');

// How long tryNext() waits for the engine before answering null. It only has to cover a batch
// the engine already holds (a hop through the event loop), not a server round trip.
const TRY_NEXT_WAIT_MS = 10;

/**
 * The iterator surface shared by ResilientChangeStream and ResilientCursor: both pull
 * batches from a native engine into `_buffer` and hand items out one at a time. Subclasses
 * provide `_useAsIterator()` (mode and closed checks), `_flow()` (the emitter-mode pump),
 * `_pull()` (one engine item, never rejects), `_take()` (hand out the first buffered item),
 * `_commitRun()`, `_state` and `close()`, and call `_initCheckpoints()`. Items are
 * buffered in `_buffer` (an array) unless the subclass overrides `_available()` and keeps
 * them its own way.
 */
class PullSource extends EventEmitter {
  /** Resolves `true` once an item is available; `false` if it ended while waiting. */
  async hasNext() {
    this._useAsIterator();
    for (;;) {
      if (this._available()) return true;
      if (this._state !== 'open') {
        this._throwIfFailed();
        return false;
      }
      await this._pull();
    }
  }

  /** The next item if one is available now, else `null`. A later next() gets what arrives. */
  async tryNext() {
    this._useAsIterator();
    if (!this._available() && this._state === 'open') {
      let timer;
      const waited = new Promise((resolve) => {
        timer = setTimeout(resolve, TRY_NEXT_WAIT_MS);
      });
      try {
        // The pull keeps going if the timer wins: its result is buffered for the next call.
        await Promise.race([this._pull(), waited]);
      } finally {
        clearTimeout(timer);
      }
    }
    if (this._available() && this._hasRoom()) return this._take();
    if (this._state !== 'open') this._throwIfFailed();
    return null;
  }

  async *[Symbol.asyncIterator]() {
    if (this._state !== 'open' && !this._available()) return; // as the driver
    this._useAsIterator(); // outside the try: a mode conflict must not close anything
    try {
      for (;;) {
        const item = await this._next();
        if (item === null) return;
        yield item;
      }
    } finally {
      // Leaving the loop (break, return, error) closes, as the driver does.
      await this.close();
    }
  }

  /**
   * A Readable (object mode) of the items, fed by next(): unlike the driver's it keeps
   * resuming. It ends when the source ends; destroying it closes the source.
   * @param {{ transform?: (item: object) => unknown }} [options]
   */
  stream(options = {}) {
    this._useAsIterator();
    const { transform } = options;
    const source = this;
    return new Readable({
      objectMode: true,
      // Every item read ahead has already moved the position: read ahead only one.
      highWaterMark: 1,
      read() {
        source
          ._next()
          .then((item) => this.push(item === null || !transform ? item : transform(item)))
          .catch((err) => this.destroy(err));
      },
      destroy(err, callback) {
        source.close().then(
          () => callback(err),
          (closeErr) => callback(err ?? closeErr),
        );
      },
    });
  }

  /** Whether an item is buffered, ready to be handed out. */
  _available() {
    return this._buffer.length > 0;
  }

  // --- Checkpointing (a named reader) ------------------------------------------------------
  // Processed items are reported to the engine once per run, not one by one: `_cpCount`
  // items since the last native commit, the last of them at `_cpOffset` in `_cpBatch` (what
  // the subclass passed to `_handedOut`; its `_commitRun` tells the engine). A run is
  // reported when it reaches the policy's everyEvents, when nothing more is buffered, before
  // anything that may wait (a pull, room), and on commit()/close(). Nothing is reported
  // before it is processed: at-least-once holds.

  /** Call once `_native` exists: a reader with a token store has a checkpoint policy. */
  _initCheckpoints() {
    const every = this._native.checkpointEvery;
    this._durable = every !== null && every !== undefined;
    this._cpEvery = this._durable ? Math.max(1, every) : 0;
    this._cpCount = 0;
    this._cpBatch = null;
    this._cpOffset = 0;
    /** Iterator mode: the item handed out last, not processed yet. */
    this._handedBatch = null;
    this._handedOffset = 0;
    /**
     * How many more processed items the engine would take unsaved, when last asked
     * (`room()`). It shrinks only when this side commits, so it is asked after each commit,
     * and again when it looks used up (saves meanwhile may have grown it).
     */
    this._roomLeft = this._durable ? this._native.room() : Infinity;
  }

  /**
   * Iterator mode with a token store: marks the item last handed out as processed now
   * (otherwise that happens when the next one is asked for, or at close()).
   */
  commit() {
    if (!this._durable) return;
    this._processHanded();
    this._flushCommit();
  }

  /**
   * An item was handed out (the one at `offset` in `batch`). Emitter mode: its listeners have
   * finished, it is processed. Iterator mode: asking for it means the previous one is
   * processed; this one is not yet. `bufferEmpty`: nothing more is buffered.
   */
  _handedOut(batch, offset, bufferEmpty) {
    if (!this._durable) return;
    if (this._isEmitter()) {
      this._processed(batch, offset);
      if (bufferEmpty || this._runFull()) this._flushCommit();
    } else {
      this._processHanded();
      this._handedBatch = batch;
      this._handedOffset = offset;
    }
  }

  _processed(batch, offset) {
    this._cpBatch = batch;
    this._cpOffset = offset;
    this._cpCount += 1;
  }

  /** Iterator mode: the item handed out last is processed (reported with the next commit). */
  _processHanded() {
    const batch = this._handedBatch;
    if (batch === null) return;
    this._handedBatch = null;
    this._processed(batch, this._handedOffset);
    if (this._runFull()) this._flushCommit();
  }

  /**
   * The unreported run must go to the engine now: it reached everyEvents, or it uses up
   * the room the engine had (the engine can only save, and make room, for what it was told).
   */
  _runFull() {
    return this._cpCount >= this._cpEvery || this._cpCount >= this._roomLeft;
  }

  /** Reports the processed run to the engine: its last item, and how many it held. */
  _flushCommit() {
    const count = this._cpCount;
    if (count === 0) return;
    const batch = this._cpBatch;
    this._cpCount = 0;
    this._cpBatch = null;
    this._commitRun(batch, this._cpOffset, count);
    this._roomLeft = this._native.room();
  }

  /** Processed items the engine has not stored, counting those not yet reported to it. */
  _pendingCheckpoint() {
    return this._native.pendingCheckpoint() + this._cpCount;
  }

  /**
   * Whether an item may be handed out now: with a token store, only while processed but
   * unsaved items (those the engine holds plus the unreported run) are fewer than
   * maxUnsavedEvents, so that handing out one more cannot exceed it.
   */
  _hasRoom() {
    if (!this._durable || this._cpCount < this._roomLeft) return true;
    this._roomLeft = this._native.room();
    return this._cpCount < this._roomLeft;
  }

  /** Waits until an item may be handed out (or the reader closed). */
  async _admit() {
    if (this._hasRoom()) return;
    // The engine can only make room for what it was told about.
    this._flushCommit();
    if (this._hasRoom()) return;
    await this._native.waitForRoom();
    this._roomLeft = this._native.room();
  }

  /** next() without the mode/closed checks. Asking for the next item means the one handed out before is processed. */
  async _next() {
    if (this._durable) {
      this._processHanded();
      // This call may wait for the server: report what is processed first.
      if (!this._available()) this._flushCommit();
    }
    for (;;) {
      if (this._available()) {
        if (!this._hasRoom()) await this._admit();
        return this._take();
      }
      if (this._state !== 'open') {
        this._throwIfFailed();
        return null;
      }
      await this._pull();
    }
  }

  /**
   * Emitter mode from now on: a 'change' / 'data' listener is being added. Throws
   * ModeConflictError with `conflict` if the reader was used as an iterator.
   */
  _startFlowing(conflict) {
    if (this._mode === 'iterator') throw new ModeConflictError(conflict);
    if (this._mode === 'flowing') return;
    this._mode = 'flowing';
    // 'newListener' fires before the listener is added: start once it is there.
    queueMicrotask(() => this._flow());
  }

  /**
   * Emits the engine's outage items, alike for both readers: `reconnecting`, `resumed`, and
   * `stalled` (a re-open follows). Returns false for any other item.
   */
  _emitRecovery(item) {
    switch (item.kind) {
      case 'reconnecting':
        this.emit('reconnecting', { attempt: item.attempt, delayMs: item.delayMs, error: fromNative(item.error) });
        return true;
      case 'resumed':
        this.emit('resumed', { attempts: item.attempts, downtimeMs: item.downtimeMs });
        return true;
      case 'stalled':
        this.emit('stalled', { silentMs: item.silentMs });
        return true;
      default:
        return false;
    }
  }

  /** Emitter mode: items go to listeners ('change' / 'data') rather than to next(). */
  _isEmitter() {
    return this._mode === 'paused' || this._mode === 'flowing';
  }

  _throwIfFailed() {
    if (this._error) throw this._error;
  }

  /** Closes from inside (fatal error, throwing listener, engine ended); first cause wins. */
  _terminate(error, reason) {
    // A failing native close() still reaches whoever awaits close(); here it must not be an
    // unhandled rejection.
    if (this._state === 'open') this._shutdown(error, reason).catch(() => {});
  }

  /**
   * Closes the native engine (once; the subclass's `_shutdown` guards that): what was
   * processed is reported first, so the engine's close stores it. Rejects when that last
   * position could not be stored. Once the engine is gone: `error` is emitted (emitter
   * mode, or to whoever listens for it; the iterator gets it from next()), then `closed()`.
   */
  _closeEngine(error, closed) {
    try {
      this._flushCommit();
    } catch {
      // a position the engine rejects cannot be stored; close anyway
    }
    this._state = 'closing';
    this._error = error;
    return this._native
      .close()
      .then((failure) => {
        if (failure) throw fromNative(failure);
      })
      .finally(() => {
        this._state = 'closed';
        if (error && (this._isEmitter() || this.listenerCount('error') > 0)) {
          this._emitOutsidePromise('error', error);
        }
        closed();
      });
  }

  /**
   * Emits from inside a promise callback. A throw (an unhandled 'error' above all) is
   * rethrown on its own tick, as an EventEmitter would surface it, instead of vanishing into
   * a promise nobody may be awaiting.
   */
  _emitOutsidePromise(name, arg) {
    try {
      this.emit(name, arg);
    } catch (thrown) {
      process.nextTick(() => {
        throw thrown;
      });
    }
  }
}

module.exports = { PullSource };
