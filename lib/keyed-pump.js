'use strict';

/**
 * Emitter mode with `concurrency: n > 1` (lib/pull.js runs its sequential pump otherwise).
 * Up to n items' listeners run at once, never two for the same key (a change's documentKey, a
 * cursor document's key), and each key's items in order: an item whose key is busy waits
 * behind it while items of other keys go ahead. An item without a key (an invalidate, a
 * drop) is a barrier: it runs alone, after everything before it finished.
 *
 * Items are handed out (taken from the batch) when dispatched, but the position moves only
 * over the contiguous prefix of finished ones, in order: `complete()` runs for each as the
 * prefix reaches it (resume token, resumeTokenChanged, checkpoint). A crash never skips an
 * unfinished item. At most `window` items are dispatched and unfinished (memory is bounded,
 * and the engine reads no further than one batch past what is held), and never past the
 * checkpoint marks (`maxUnsavedEvents` stays exact).
 *
 * @typedef {object} Dispatched one item handed to its listeners
 * @property {any} item
 * @property {string | null} key
 * @property {boolean} done
 * @property {number} tenure the source's tenure when it was dispatched (a group member's lost
 *   lease drops what was in flight: its completion no longer moves the position)
 * @property {() => void} [complete] moves the position past it (absent: a quiet batch)
 * @property {() => void} [quiet] applies a batch without items, in order
 *
 * @typedef {object} KeyedSource what the pump needs of PullSource
 * @property {() => boolean} reading
 * @property {() => boolean} hasListeners
 * @property {() => boolean} available
 * @property {() => Promise<void>} pull
 * @property {() => boolean} mayHandOut the next item may be handed out (checkpoint marks)
 * @property {() => Promise<void>} admit waits for room (the engine saved)
 * @property {() => void} report reports what is processed
 * @property {() => boolean} holdsLease
 * @property {() => any} peek
 * @property {(item: any) => string | null} keyOf
 * @property {() => () => void} dispatch takes the next item from the batch; returns its completion
 * @property {(item: any) => Promise<void>} runListeners
 * @property {(item: any, thrown: unknown) => Error} handlerError
 * @property {(error: unknown) => void} fail
 * @property {() => number} tenure
 */
class KeyedPump {
  /**
   * @param {KeyedSource} source
   * @param {number} concurrency
   */
  constructor(source, concurrency) {
    this._source = source;
    this._concurrency = concurrency;
    // Enough to keep n handlers busy behind a few hot keys; bounded.
    this._capacity = Math.max(64, concurrency * 32);
    /** Dispatched and not yet passed by the prefix, in order. @type {Dispatched[]} */
    this._window = [];
    /** Keys with a running item, each with the items waiting behind it. @type {Map<string, Dispatched[]>} */
    this._busy = new Map();
    this._running = 0;
    this._barrier = false;
    /** @type {(() => void) | null} */
    this._wake = null;
  }

  /** Whether items are dispatched and not yet passed by the prefix. */
  get holding() {
    return this._window.length > 0;
  }

  /** A group member's tenure ended: nothing in flight counts any more. */
  drop() {
    this._window = [];
    this._busy.clear();
    this._barrier = false;
  }

  /**
   * A batch without items moved the position: in order, after what is in flight.
   * @param {any} batch
   * @param {(batch: any) => void} apply
   */
  quiet(batch, apply) {
    this._window.push({ item: null, key: null, done: true, tenure: this._source.tenure(), quiet: () => apply(batch) });
    this._advance();
  }

  async run() {
    const source = this._source;
    while (source.reading() && source.hasListeners()) {
      if (!source.available()) {
        if (!this.holding) source.report(); // nothing processed waits for the server
        await source.pull();
        continue;
      }
      if (!source.mayHandOut()) {
        // Room comes from saving what is finished: wait for a handler first, if one runs.
        if (this._running > 0) await this._finished();
        else await source.admit();
        continue;
      }
      if (this._running >= this._concurrency || this._window.length >= this._capacity || this._barrier) {
        await this._finished();
        continue;
      }
      if (!source.holdsLease()) continue; // what it read is dropped; the engine says why next
      const key = source.keyOf(source.peek());
      if (key === null && this._running > 0) {
        await this._finished(); // a barrier runs after everything before it
        continue;
      }
      const item = source.peek();
      const record = { item, key, done: false, tenure: source.tenure(), complete: source.dispatch() };
      this._window.push(record);
      if (key === null) {
        this._barrier = true;
        this._start(record);
      } else if (this._busy.has(key)) {
        /** @type {Dispatched[]} */ (this._busy.get(key)).push(record);
      } else {
        this._busy.set(key, []);
        this._start(record);
      }
    }
  }

  /** @param {Dispatched} record */
  _start(record) {
    this._running += 1;
    this._source.runListeners(record.item).then(
      () => this._finish(record, null),
      (thrown) => this._finish(record, { thrown }),
    );
  }

  /**
   * @param {Dispatched} record
   * @param {{ thrown: unknown } | null} failure
   */
  _finish(record, failure) {
    this._running -= 1;
    const source = this._source;
    const current = source.reading() && record.tenure === source.tenure();
    if (record.key === null) this._barrier = false;
    if (current && failure) {
      // Its position stays before it: the prefix never passes an unfinished item.
      source.fail(source.handlerError(record.item, failure.thrown));
    } else if (current) {
      record.done = true;
      if (record.key !== null) {
        const waiting = this._busy.get(record.key);
        const next = waiting?.shift();
        if (next) this._start(next);
        else this._busy.delete(record.key);
      }
      this._advance();
      // Nothing more to hand out yet (the pump waits for the engine): what finished is
      // reported now, not when the next batch comes.
      if (!source.available()) source.report();
    }
    const wake = this._wake;
    this._wake = null;
    wake?.();
  }

  /** Moves the position over the finished prefix, in order. */
  _advance() {
    const window = this._window;
    while (window.length > 0 && window[0].done && this._source.reading()) {
      const record = /** @type {Dispatched} */ (window.shift());
      try {
        if (record.quiet) record.quiet();
        else record.complete?.();
      } catch (err) {
        this._source.fail(err);
        return;
      }
    }
  }

  /** Resolves when a running item finishes. */
  _finished() {
    return new Promise((resolve) => {
      this._wake = () => resolve(undefined);
    });
  }
}

module.exports = { KeyedPump };
