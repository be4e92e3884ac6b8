'use strict';

const { fromNative } = require('./error-helpers');

/**
 * The facade's side of checkpointing for a named reader. The engine owns every count (what
 * is unsaved, how much room is left, when everyEvents is reached); this side only names
 * positions — "the first n items of batch seq are processed" — and compares document
 * numbers with the engine's marks (docs/native-contract.md):
 *   - an item numbered `o` may be handed out only while `o < marks.limit`;
 *   - processed items are reported (`commit(seq, n)`) once they reach `marks.reportAt`,
 *     when nothing more is held, before anything that may wait, and on commit()/close().
 * Nothing is reported before it is processed: at-least-once holds.
 *
 * @typedef {import('../native/binding').NativeReader} NativeReader
 * @typedef {import('../native/binding').NativeMarks} NativeMarks
 * @typedef {{ seq: number, ordinal: number, count: number }} NumberedBatch
 * @typedef {{ seq: number, n: number, through: number }} Processed "the first n of batch
 *   seq": `through` = the number of the item after the last processed one
 */
class Checkpoints {
  /**
   * @param {NativeReader} native
   * @param {(error: Error) => void} fail closes the reader: saving failed for good
   */
  constructor(native, fail) {
    this._native = native;
    this._fail = fail;
    /** Whether the reader has a token store (then a checkpoint policy). */
    this.durable = native.checkpointEvery !== null && native.checkpointEvery !== undefined;
    /** @type {NativeMarks} the engine's marks when last told (an older copy is stricter) */
    this._marks = this.durable ? native.marks() : { limit: Infinity, reportAt: Infinity };
    /** Processed and not reported yet. @type {Processed | null} */
    this._processed = null;
    /** Iterator mode: the item handed out last, not processed yet. @type {Processed | null} */
    this._handed = null;
    /** Items numbered below this were reported. */
    this._reported = 0;
  }

  /**
   * Item `index` of `batch` was handed out. Emitter mode (`processed`): its listeners have
   * finished. Iterator mode: asking for it means the one before is processed; this one is
   * not yet.
   * @param {NumberedBatch} batch
   * @param {number} index
   * @param {boolean} processed
   */
  handedOut(batch, index, processed) {
    if (!this.durable) return;
    const at = { seq: batch.seq, n: index + 1, through: batch.ordinal + index + 1 };
    if (processed) {
      this._markProcessed(at);
    } else {
      this.processHanded();
      this._handed = at;
    }
  }

  /** Iterator mode: the item handed out last is processed (reported when due). */
  processHanded() {
    const handed = this._handed;
    if (handed === null) return;
    this._handed = null;
    this._markProcessed(handed);
  }

  /** Whether an item handed out in iterator mode still waits to count as processed. */
  get holdsHanded() {
    return this._handed !== null;
  }

  /** @param {Processed} at */
  _markProcessed(at) {
    this._processed = at;
    if (at.through >= this._marks.reportAt) this.report();
  }

  /** Reports what is processed to the engine (the engine maps it to a position and a count). */
  report() {
    const processed = this._processed;
    if (processed === null) return;
    this._processed = null;
    this._reported = processed.through;
    this._marks = this._native.commit(processed.seq, processed.n);
  }

  /**
   * A batch without items moved the position (a quiet change stream): with nothing handed
   * out and unprocessed, it is processed as it is, after what came before it.
   * @param {NumberedBatch} batch
   */
  quiet(batch) {
    if (!this.durable) return;
    this.report();
    this._reported = Math.max(this._reported, batch.ordinal);
    this._marks = this._native.commit(batch.seq, 0);
  }

  /**
   * Whether item number `ordinal` may be handed out now: more would leave more processed
   * items unsaved than maxUnsavedEvents.
   * @param {number} ordinal
   */
  mayHandOut(ordinal) {
    if (ordinal < this._marks.limit) return true;
    if (!this.durable) return true;
    // Saves meanwhile may have moved the limit.
    this._marks = this._native.marks();
    return ordinal < this._marks.limit;
  }

  /**
   * Waits until item number `ordinal` may be handed out, or the reader closed. If saving
   * failed for good, no room will come: the reader closes with the store's error.
   * @param {number} ordinal
   */
  async admit(ordinal) {
    if (this.mayHandOut(ordinal)) return;
    // The engine can only save, and make room, for what it was told.
    this.report();
    if (this.mayHandOut(ordinal)) return;
    const failure = await this._native.waitForRoom();
    if (failure) {
      this._fail(fromNative(failure));
      return;
    }
    this._marks = this._native.marks();
  }

  /**
   * A group member's tenure ended: what it handed out will be read again by the next holder;
   * nothing of it is reported (the engine forgot those batches too).
   */
  endTenure() {
    this._processed = null;
    this._handed = null;
    if (this.durable) this._marks = this._native.marks();
  }

  /** Processed items not stored yet: what the engine holds plus what it was not told. */
  pending() {
    if (!this.durable) return 0;
    const unreported = this._processed === null ? 0 : this._processed.through - this._reported;
    return this._native.pendingCheckpoint() + unreported;
  }
}

module.exports = { Checkpoints };
