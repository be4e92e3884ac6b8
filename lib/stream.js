'use strict';

const { PullSource } = require('./pull');
const { InvalidOptionError, ModeConflictError, StreamClosedError } = require('./errors');
const { describeType, fromNative, invalidOption } = require('./error-helpers');
const {
  takeDecodeOptions,
  eventDeserializeOptions,
  perEventOptions,
  checkBatch,
  decodeToken,
  encodeSpec,
  bson,
} = require('./decode');
const { tokenStoreOption } = require('./store');
const { nativeChangeStream } = require('./native');
const { checkLogger, logSink } = require('./logger');
const { headroomOptions, publicWindow, startHeadroomWatch } = require('./headroom');

/**
 * A change stream that survives outages. Same surface as the driver's ChangeStream; all
 * policy (backoff, error classification, resume) is the native engine's. This class only
 * decodes, hands events out in one of two exclusive modes, and keeps the resume token of
 * the last event handed out.
 */
class ResilientChangeStream extends PullSource {
  constructor(options) {
    super();
    if (options === null || typeof options !== 'object') {
      throw new InvalidOptionError(
        `ResilientChangeStream options must be an object, got ${describeType(options)}`,
      );
    }
    const { decode, rest: withLogger } = takeDecodeOptions(options);
    const { logger, headroomLowFraction, headroomCheckIntervalMS, ...rest } = withLogger;
    checkLogger(logger);
    this._headroom = headroomOptions({ headroomLowFraction, headroomCheckIntervalMS });
    /** Stops the headroom timer; set when the stream starts. */
    this._stopHeadroomWatch = null;
    if (rest.pipeline !== undefined && !Array.isArray(rest.pipeline)) {
      throw invalidOption('pipeline', 'an array of stage documents', rest.pipeline);
    }
    const NativeChangeStream = nativeChangeStream();
    const store = tokenStoreOption(rest.tokenStore);
    const spec = encodeSpec({ ...rest, tokenStore: store.spec });
    try {
      this._native = new NativeChangeStream(spec, store.callback);
    } catch (err) {
      // The engine validates option types; only the error's class is JS's business.
      throw err?.code === 'InvalidArg' ? new InvalidOptionError(err.message, { cause: err }) : err;
    }
    if (logger) this._native.setLogger(logSink(logger, namespaceOf(rest)));
    /** deserialize() options for one event; its `index` is moved along the batch. */
    this._decodeOptions = perEventOptions(eventDeserializeOptions(decode));
    this._deserialize = bson().deserialize;
    /** Resume token after the last event handed out (driver: startAfter wins over resumeAfter). */
    this._token = options.startAfter ?? options.resumeAfter ?? null;
    /** @type {'open' | 'closing' | 'closed'} lifecycle; only moves forward. */
    this._state = 'open';
    /**
     * @type {'unset' | 'iterator' | 'paused' | 'flowing'} how events are consumed. 'paused'
     * and 'flowing' are emitter mode without/with the pump running; iterator and emitter
     * modes exclude each other.
     */
    this._mode = 'unset';
    /**
     * Events not yet handed out, kept as the engine delivered them: whole batches of raw BSON
     * (`{ events, count, endToken, end }`). `_head` is the batch being handed out;
     * `_index`/`_offset` locate its next event, which is decoded only when it is looked at or
     * handed out (`_peeked` caches it). While a batch is handed out, the engine's next item
     * is already asked for (one at a time, as the contract says): it waits in `_queue`, in
     * order, and is applied only once the events before it are handed out.
     */
    this._head = null;
    this._queue = [];
    this._index = 0;
    this._offset = 0;
    this._peeked = null;
    /** The one outstanding native nextBatch(), already chained to _handle (contract: never two). */
    this._pending = null;
    /** Ask the engine for its next item as soon as the pending call settles. */
    this._prefetch = false;
    /** The consumer asked for an item and no batch came since: what arrives is applied at once. */
    this._wanted = false;
    /** The close promise, created once by the first close (user or fatal). */
    this._closing = null;
    /** The error that closed the stream, if it did not close by close(). */
    this._error = null;
    this._initCheckpoints();
    /** The last historyLost interval, attached to the error that may follow. */
    this._historyLost = null;
    /** The position that fell off the oplog, as the engine had it (may come from the store). */
    this._lostToken = null;
    /** Events handed to the user, and when the last one was (ms since epoch; for health()). */
    this._eventsDelivered = 0;
    this._lastEventAt = null;

    /** rawListeners('change') as of the last change to them: not one copy per event. */
    this._changeListeners = null;

    this.on('newListener', (name) => {
      if (name === 'change') {
        this._changeListeners = null;
        this._startFlowing(
          'ResilientChangeStream cannot be used as an EventEmitter (a "change" listener) after ' +
            'being used as an iterator (next, hasNext, tryNext, for await, stream)',
        );
      }
    });
    this.on('removeListener', (name) => {
      if (name === 'change') this._changeListeners = null;
    });
  }

  /** Resume token after the last event handed out; before any: startAfter/resumeAfter or null. */
  get resumeToken() {
    return this._token;
  }

  getResumeToken() {
    return this._token;
  }

  get closed() {
    return this._state !== 'open';
  }

  /**
   * What the stream is doing, synchronously: the engine's view (state, position, lag,
   * reconnects, backoff) plus what this side handed out. Nothing in it holds credentials.
   */
  health() {
    const native = this._native.health();
    const closedState = this._error ? 'failed' : 'closed';
    const lastError = this._error ?? (native.lastError ? fromNative(native.lastError) : null);
    return {
      state: this._state === 'open' ? native.state : closedState,
      lastEventAt: this._lastEventAt === null ? null : new Date(this._lastEventAt),
      lastTokenAt: native.lastTokenAt == null ? null : new Date(native.lastTokenAt),
      lagMs: native.lagMs ?? null,
      reconnects: native.reconnects,
      currentBackoffMs: native.currentBackoffMs ?? null,
      lastError: lastError && {
        name: lastError.name,
        code: lastError.code,
        message: lastError.message,
        serverCode: lastError.serverCode,
      },
      eventsDelivered: this._eventsDelivered,
      pendingCheckpoint: this._pendingCheckpoint(),
    };
  }

  /**
   * The server's oplog window and how far this stream's position is from falling off it.
   * `available: false` with a `reason` when the server cannot tell (no access to
   * local.oplog.rs, or the position's cluster time is not known yet).
   */
  async oplogWindow() {
    return publicWindow(await this._native.oplogWindow(this._headroom.fraction));
  }

  /** Resolves with the next event; `null` if the stream was closed while waiting. */
  async next() {
    this._useAsIterator();
    return this._next();
  }

  /**
   * Closes the stream and the native engine, storing the last processed position (in
   * iterator mode the event last handed out counts as processed). Idempotent; a pending
   * next() resolves null. Rejects only if that position could not be stored.
   */
  async close() {
    if (this._state === 'open' && this._durable) this._processHanded();
    await this._shutdown(null);
  }

  // --- internals ---------------------------------------------------------------------------

  _useAsIterator() {
    if (this._state !== 'open') {
      throw new StreamClosedError('ResilientChangeStream is closed', {
        cause: this._error ?? undefined,
      });
    }
    if (this._isEmitter()) {
      throw new ModeConflictError(
        'ResilientChangeStream cannot be used as an iterator (next, hasNext, tryNext, for await, ' +
          'stream) after being used as an EventEmitter (a "change" listener was added)',
      );
    }
    this._mode = 'iterator';
  }

  /**
   * Emitter mode's pump. Each event goes to every 'change' listener in turn, awaiting each;
   * only then does the resume token move past it. A listener that throws closes the stream
   * with its error, and that event counts as not processed.
   */
  async _flow() {
    try {
      while (this._state === 'open' && this.listenerCount('change') > 0) {
        if (this._head === null) {
          this._flushCommit(); // nothing processed waits for the server
          await this._pull();
          continue;
        }
        if (!this._hasRoom()) {
          await this._admit();
          if (this._state !== 'open') break;
        }
        const event = this._peek();
        // rawListeners, not listeners: once() wrappers must run so they remove themselves.
        // A listener added or removed meanwhile counts from the next event on.
        this._changeListeners ??= this.rawListeners('change');
        for (const listener of this._changeListeners) {
          // Await only what a listener returns as a promise: sync listeners cost no tick.
          const result = listener.call(this, event);
          if (result !== null && typeof result?.then === 'function') {
            // The listener may take long: what was processed before it is reported now.
            if (this._cpCount > 0) this._flushCommit();
            await result;
          }
        }
        this._take();
      }
    } catch (err) {
      this._terminate(err);
    } finally {
      // Synchronous with the loop's last check, so a listener added later starts a new pump.
      this._mode = 'paused';
    }
  }

  /**
   * The consumer wants the next item: applies what waits in `_queue`, else waits for the
   * engine's next item and applies it. Never rejects: failures close the stream.
   */
  _pull() {
    this._wanted = true;
    if (this._queue.length > 0 && this._head === null) {
      this._drainQueue();
      // The queue held what was asked for (the one outstanding call, if any, stays pending).
      if (this._head !== null || this._state !== 'open' || this._queue.length > 0) return Promise.resolve();
    }
    this._stopHeadroomWatch ??= startHeadroomWatch(
      this._headroom,
      () => this.oplogWindow(),
      (window) => this.emit('headroomLow', window),
    );
    this._pending ??= this._request();
    return this._pending;
  }

  /** One native nextBatch(), its item handled (applied, or queued if nobody asked for it yet). */
  _request() {
    return this._native
      .nextBatch()
      .then((item) => this._handle(item))
      .catch((err) => this._terminate(err))
      .finally(() => {
        this._pending = null;
        if (this._prefetch) {
          this._prefetch = false;
          this._prefetchNext();
        }
      });
  }

  /**
   * While a batch is handed out, asks the engine for its next item (at most one item waits
   * in `_queue`: only a batch that became the head asks again).
   */
  _prefetchNext() {
    if (this._state !== 'open' || this._head === null || this._queue.length > 0) return;
    if (this._pending === null) this._pending = this._request();
    else this._prefetch = true; // right after the call that brought this batch settles
  }

  _handle(item) {
    // Once closing, the engine's last items (a late batch, 'end') no longer matter.
    if (this._state !== 'open') return;
    // What the consumer has not asked for yet (read ahead while events were handed out: a
    // batch, an outage, an error, the end) waits until it asks, as if it arrived then.
    if (this._head !== null || !this._wanted) {
      this._queue.push(item);
      return;
    }
    return this._apply(item);
  }

  _apply(item) {
    if (this._emitRecovery(item)) return;
    switch (item.kind) {
      case 'batch':
        return this._onBatch(item);
      case 'historyLost': {
        const { Timestamp } = bson();
        const time = (ts) => (ts ? new Timestamp({ t: ts.t, i: ts.i }) : null);
        this._historyLost = { from: time(item.from), to: time(item.to) };
        this._lostToken = item.endToken ? decodeToken(item.endToken) : null;
        this.emit('historyLost', this._historyLost);
        return;
      }
      case 'error': {
        const error = fromNative(item.error);
        if (error.code === 'ChangeStreamHistoryLost') {
          // What the application needs to backfill: where it was, and what may be missing.
          error.resumeToken = this._lostToken ?? this._token;
          error.historyLost = this._historyLost;
        }
        return this._terminate(error);
      }
      case 'end': // the engine ended by itself: 'invalidate' (drop/rename) after that event
        return this._terminate(null, item.reason);
      default:
        throw new Error(`unknown native item kind "${item.kind}"`);
    }
  }

  _onBatch({ events, count, endToken }) {
    checkBatch(events, count);
    const end = endToken && decodeToken(endToken);
    if (count === 0) {
      // The position moved with no event (postBatchResumeToken advanced). With nothing
      // handed out and unprocessed, it is processed as it is: checkpoint it too (quiet
      // streams must not fall off the oplog).
      if (end) this._advance(end);
      if (endToken && this._durable && this._head === null && this._handedBatch === null) {
        this._flushCommit(); // the events before it first
        this._native.commit(null, endToken);
      }
      return;
    }
    this._head = { events, count, endToken: endToken ?? null, end };
    this._wanted = false;
    this._index = 0;
    this._offset = 0;
    this._peeked = null;
    // Ask for the next item now: the engine reads the next batch while this one is handed
    // out (it reads only once its one slot is taken), and the server never waits for us.
    this._prefetchNext();
  }

  /**
   * The buffered events are handed out and the next item is asked for: applies what the
   * engine sent after them, in order (as if it arrived now).
   */
  _drainQueue() {
    while (this._head === null && this._queue.length > 0 && this._state === 'open') {
      try {
        this._apply(this._queue.shift());
      } catch (err) {
        this._terminate(err);
      }
    }
  }

  _available() {
    return this._head !== null;
  }

  /** The next event (decoded once, when first looked at). A batch that cannot be decoded closes the stream. */
  _peek() {
    if (this._peeked === null) {
      const options = this._decodeOptions;
      options.index = this._offset;
      try {
        this._peeked = this._deserialize(this._head.events, options);
      } catch (err) {
        this._terminate(err);
        throw err;
      }
    }
    return this._peeked;
  }

  /** Hands out the next event, moving the resume token past it. */
  _take() {
    const event = this._peek();
    const batch = this._head;
    const last = this._index === batch.count - 1;
    // Contract: the token after event i < count-1 is its _id; after the last one, endToken.
    const token = last ? batch.end : event._id;
    try {
      this._advance(token);
    } catch (err) {
      this._terminate(err);
      throw err;
    }
    const offset = this._offset;
    const length = batch.events.readInt32LE(offset);
    this._peeked = null;
    if (last) {
      this._head = null; // what came after it is applied when the next item is asked for
    } else {
      this._index += 1;
      this._offset = offset + length;
    }
    this._eventsDelivered += 1;
    this._lastEventAt = Date.now();
    this._handedOut(batch, offset, last);
    if (event.operationType === 'invalidate') this.emit('invalidate', event);
    return event;
  }

  /** Reports `count` processed events, the last of them at `offset` in `batch`. */
  _commitRun(batch, offset, count) {
    const end = offset + batch.events.readInt32LE(offset);
    this._native.commit(batch.events.subarray(offset, end), end === batch.events.length ? batch.endToken : null, count);
  }

  /**
   * Moves the resume token. If a 'resumeTokenChanged' listener (typically one persisting it)
   * throws, the token stays where it was, so the event is not counted as processed.
   */
  _advance(token) {
    const previous = this._token;
    this._token = token;
    try {
      this.emit('resumeTokenChanged', token);
    } catch (err) {
      this._token = previous;
      throw err;
    }
  }

  /** @param {string} [reason] the engine's end reason when it ended without an error */
  _shutdown(error, reason = 'closed') {
    if (this._closing === null) {
      this._stopHeadroomWatch?.();
      this._closing = this._closeEngine(error, () =>
        this._emitOutsidePromise('close', error ? { reason: 'error', error } : { reason }),
      );
    }
    return this._closing;
  }
}

/** `db.coll`, `db`, or `<cluster>`: what logs may name (never the URI). */
function namespaceOf({ db, collection }) {
  if (!db) return '<cluster>';
  return collection ? `${db}.${collection}` : db;
}

module.exports = { ResilientChangeStream };
