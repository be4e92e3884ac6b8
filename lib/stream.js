'use strict';

const { PullSource } = require('./pull');
const { decodeToken, bson } = require('./decode');
const { nativeReader } = require('./native');
const { fromNative } = require('./error-helpers');
const { readerOptions } = require('./options');
const { takeDriverOptions } = require('./driver-options');
const { headroomOptions, publicWindow, startHeadroomWatch } = require('./headroom');

/** @type {import('./pull').ReaderKind} */
const STREAM_KIND = {
  name: 'ResilientChangeStream',
  itemEvent: 'change',
  endReasons: [], // the engine's 'invalidate' end is said by 'close' ({ reason: 'invalidate' })
  closedIteratorThrows: true,
  iteratorConflict:
    'ResilientChangeStream cannot be used as an iterator (next, hasNext, tryNext, for await, ' +
    'stream) after being used as an EventEmitter (a "change" listener was added)',
  emitterConflict:
    'ResilientChangeStream cannot be used as an EventEmitter (a "change" listener) after ' +
    'being used as an iterator (next, hasNext, tryNext, for await, stream)',
};

/**
 * A change stream that survives outages. Same surface as the driver's ChangeStream; all
 * policy (backoff, error classification, resume) is the native engine's. This class only
 * decodes change events (lib/pull.js hands them out) and keeps the resume token of the
 * last event handed out.
 */
class ResilientChangeStream extends PullSource {
  /** @param {Record<string, any>} options */
  constructor(options) {
    const { decode, logger, concurrency, rest: ownOptions } = readerOptions('ResilientChangeStream', options);
    // The driver's options that are not the engine's own (lib/driver-options.js).
    const { rest } = takeDriverOptions(ownOptions);
    // JS-only options: the headroom watch runs here, not in the engine.
    const { headroomLowFraction, headroomCheckIntervalMS, ...spec } = rest;
    const headroom = headroomOptions({ headroomLowFraction, headroomCheckIntervalMS });
    super(STREAM_KIND, { create: (encoded, store) => nativeReader().changeStream(encoded, store), spec, decode, logger, concurrency });
    this._headroom = headroom;
    /** The last oplog window read (metrics()): `{ headroomMs, at }`. @type {{ headroomMs: number | null, at: number } | null} */
    this._lastOplogWindow = null;
    // The driver's public fields: what was asked for, as given.
    /** @type {object[]} */
    this.pipeline = Array.isArray(options.pipeline) ? options.pipeline : [];
    /** @type {Record<string, any>} */
    this.options = { ...options };
    // Connection strings may hold credentials: never exposed here.
    delete this.options.uri;
    if (options.tokenStore && typeof options.tokenStore === 'object' && 'uri' in options.tokenStore) {
      const { uri: _uri, ...store } = options.tokenStore;
      this.options.tokenStore = store;
    }
    /** @type {{ db: string, collection?: string } | { db?: undefined }} */
    this.namespace = options.db === undefined ? {} : { db: options.db, ...(options.collection === undefined ? {} : { collection: options.collection }) };
    // One getMore: the server holds it for maxAwaitTimeMS (default 1 s); plus a round trip.
    this._tryNextWaitMs = (typeof options.maxAwaitTimeMS === 'number' ? options.maxAwaitTimeMS : 1000) + 200;
    /** Stops the headroom timer; set when the stream starts reading. @type {(() => void) | null} */
    this._stopHeadroomWatch = null;
    /** Resume token after the last event handed out (driver: startAfter wins over resumeAfter). */
    this._token = options.startAfter ?? options.resumeAfter ?? null;
    /** The last historyLost interval, attached to the error that may follow. */
    this._historyLost = null;
    /** The position that fell off the oplog, as the engine had it (may come from the store). */
    this._lostToken = null;
    /**
     * What the engine makes of large events and transactions (src/engine/stream/assemble.rs):
     * with these options on, some items are its own documents, told by their operationType.
     */
    this._groupsTransactions = options.transactions === 'group';
    this._skipsLargeEvents = options.onLargeEvent === 'skip';
  }

  /** Resume token after the last event handed out; before any: startAfter/resumeAfter or null. */
  get resumeToken() {
    return this._token;
  }

  getResumeToken() {
    return this._token;
  }

  /**
   * The server's oplog window and how far this stream's position is from falling off it.
   * `available: false` with a `reason` when the server cannot tell (no access to
   * local.oplog.rs, or the position's cluster time is not known yet).
   */
  async oplogWindow() {
    const window = await this._native.oplogWindow(this._headroom.fraction);
    if (window.error) throw fromNative(window.error);
    const report = publicWindow(window);
    /** The last window read, for metrics() (the headroom watch reads it on its interval). */
    this._lastOplogWindow = { headroomMs: report.headroomMs, at: Date.now() };
    return report;
  }

  // --- PullSource hooks --------------------------------------------------------------------

  /** @param {import('../native/binding').NativeHealth} native */
  _ownHealth(native) {
    return {
      lastEventAt: this._lastDeliveredAt === null ? null : new Date(this._lastDeliveredAt),
      lastTokenAt: native.lastTokenAt == null ? null : new Date(native.lastTokenAt),
      lagMs: native.lagMs ?? null,
      eventsDelivered: this._delivered,
    };
  }

  _beforeRequest() {
    this._stopHeadroomWatch ??= startHeadroomWatch(
      this._headroom,
      () => this.oplogWindow(),
      (window) => this.emit('headroomLow', window),
    );
  }

  _onClosing() {
    this._stopHeadroomWatch?.();
  }

  /** @param {import('../native/binding').NativeItem} item */
  _applyOwn(item) {
    if (item.kind !== 'historyLost') return false;
    const { Timestamp } = bson();
    /** @param {{ t: number, i: number } | null | undefined} ts */
    const time = (ts) => (ts ? new Timestamp({ t: ts.t, i: ts.i }) : null);
    this._historyLost = { from: time(item.from), to: time(item.to) };
    this._lostToken = item.endToken ? decodeToken(item.endToken) : null;
    this.emit('historyLost', this._historyLost);
    return true;
  }

  /** @param {any} error */
  _annotate(error) {
    if (error.kind === 'ChangeStreamHistoryLost') {
      // What the application needs to backfill: where it was, and what may be missing.
      error.resumeToken = this._lostToken ?? this._token;
      error.historyLost = this._historyLost;
    }
    return error;
  }

  /** @param {import('./pull').Batch} batch */
  _onEmptyBatch(batch) {
    // The position moved with no event (postBatchResumeToken advanced). With nothing
    // handed out and unprocessed, it is processed as it is: checkpoint it too (quiet
    // streams must not fall off the oplog).
    if (batch.endToken === null) return;
    this._advance(decodeToken(batch.endToken));
    if (this._head === null && !this._checkpoints.holdsHanded) this._checkpoints.quiet(batch);
  }

  /**
   * Contract: the token after event i < count-1 is its _id; after the last one, endToken.
   * @param {any} event
   * @param {import('./pull').Batch} batch
   * @param {number} _offset
   * @param {number} _length
   * @param {boolean} last
   */
  _keepPosition(event, batch, _offset, _length, last) {
    // A copied document (initialSnapshot) is no position in the change stream: the resume
    // token stays null until the stream after the copy moves it (the engine stores the
    // copy's progress itself).
    if (event.operationType === 'snapshot') return;
    this._advance(last ? batch.endToken && decodeToken(batch.endToken) : event._id, event);
  }

  /** @param {any} event */
  _afterTake(event) {
    if (event.operationType === 'invalidate') this.emit('invalidate', event);
    else if (this._isNotice(event)) this.emit('largeEventSkipped', largeEventSkipped(event));
  }

  /**
   * `onLargeEvent: 'skip'`: the engine's notice in place of an event over 16 MB.
   * @param {any} item
   */
  _isNotice(item) {
    return this._skipsLargeEvents && item.operationType === 'largeEventSkipped';
  }

  /**
   * `transactions: 'group'`: a whole transaction goes to 'transaction' listeners, if any
   * (else to 'change' ones, told by `operationType: 'transaction'`).
   * @param {any} item
   */
  _itemEventOf(item) {
    return this._groupsTransactions && item.operationType === 'transaction' && this.listenerCount('transaction') > 0
      ? 'transaction'
      : 'change';
  }

  /**
   * Moves the resume token past `event` (null: the server advanced a quiet stream). A
   * 'resumeTokenChanged' listener (typically one persisting it) is part of processing: if it
   * throws, the token stays where it was, the event is not counted as processed, and the
   * stream closes with a HandlerError.
   * @param {unknown} token
   * @param {unknown} [event]
   */
  _advance(token, event = null) {
    const previous = this._token;
    this._token = token;
    try {
      this.emit('resumeTokenChanged', token);
    } catch (thrown) {
      this._token = previous;
      throw this._handlerError('resumeTokenChanged', thrown, event);
    }
  }

  /**
   * Events of one document stay in order under `concurrency`; an event without a
   * documentKey (invalidate, drop, …) runs alone.
   * @param {any} event
   */
  _orderKey(event) {
    const key = event?.documentKey;
    return key === undefined || key === null ? null : JSON.stringify(key);
  }

  /** @param {unknown} event */
  _handlerFields(event) {
    return { event, resumeToken: this._token };
  }
}

/**
 * What 'largeEventSkipped' says: the event's token (the stored position moves past it), where
 * it was, and how large it was.
 * @param {any} notice the engine's document (src/engine/stream/assemble.rs skip_notice)
 */
function largeEventSkipped(notice) {
  return {
    resumeToken: notice._id,
    operationType: notice.skippedOperationType ?? null,
    ns: notice.ns ?? null,
    documentKey: notice.documentKey ?? null,
    clusterTime: notice.clusterTime ?? null,
    sizeBytes: Number(notice.size),
    fragments: Number(notice.fragments),
  };
}

module.exports = { ResilientChangeStream };
