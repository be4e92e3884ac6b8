'use strict';

const { EventEmitter } = require('node:events');
const { Readable } = require('node:stream');
const { ModeConflictError, StreamClosedError } = require('./errors');
const { fromNative } = require('./error-helpers');
const { bson, checkBatch, eventDeserializeOptions, perEventOptions } = require('./decode');
const { createValidated } = require('./options');
const { Checkpoints } = require('./checkpoints');
const { emitObserved, handlerError } = require('./listeners');
const { Lifecycle } = require('./lifecycle');
const { logSink } = require('./logger');
const { tokenStoreOption } = require('./store');
const { KeyedPump } = require('./keyed-pump');
const { metricsSnapshot } = require('./metrics');

// The engine's default group.leaseMs (src/engine/group/mod.rs): paces the heartbeat.
const DEFAULT_LEASE_MS = 10000;

// How long a cursor's tryNext() waits for the engine before answering null when the reader
// sets no other bound (`_tryNextWaitMs`): a batch the engine already holds (a hop through the
// event loop). A change stream waits for one server round trip, as the driver's tryNext().
const TRY_NEXT_WAIT_MS = 10;

/**
 * @typedef {import('../native/binding').NativeReader} NativeReader
 * @typedef {import('../native/binding').NativeItem} NativeItem
 * @typedef {import('../native/binding').NativeHealth} NativeHealth
 *
 * @typedef {object} ReaderKind what differs between the two readers, besides their hooks
 * @property {string} name the class name, for messages
 * @property {'change' | 'data'} itemEvent the event items go to in emitter mode
 * @property {string[]} endReasons the engine's end reasons announced with an 'end' event
 * @property {boolean} closedIteratorThrows whether next() & co. throw StreamClosedError once
 *   closed (else they answer null / false, as the driver's cursors do)
 * @property {string} iteratorConflict ModeConflictError message: iterator use in emitter mode
 * @property {string} emitterConflict ModeConflictError message: an item listener in iterator mode
 *
 * @typedef {object} Batch a batch of items as the engine sent it: `count` BSON documents
 *   back to back in `events`; `endToken` the position after the last (change streams);
 *   `seq` names it in commits, and its first item is number `ordinal`
 * @property {number} seq
 * @property {number} ordinal
 * @property {Buffer} events
 * @property {number} count
 * @property {Buffer | null} endToken
 * @property {number[] | null} partitions a partitioned group member's: each item's partition
 *
 * @typedef {{ name: string, kind: string, message: string, code?: number, codeName?: string }} HealthError
 */

/**
 * What ResilientChangeStream and ResilientCursor share: the native engine's construction, one
 * pull / read-ahead / queue machinery, the emitter-mode pump, the iterator surface, the
 * lifecycle (lib/lifecycle.js), health() and checkpointing. A subclass provides only what
 * differs: its ReaderKind, and the hooks
 *   `_keepPosition(item, batch, offset, length, last)` the position after a handed-out item
 *     (resume token / last key); may throw, which closes the reader,
 *   `_applyOwn(item)` its own native items (stream: historyLost; cursor: positionLost),
 *   `_annotate(error)` what the error that closes it should carry,
 *   `_handlerFields(item)` what a HandlerError says about the item (event / document, position),
 *   `_ownHealth(native)` its own health() fields,
 * and optionally `_onEmptyBatch(batch)`, `_afterTake(item)`, `_beforeRequest()`, `_onClosing()`,
 * `_isNotice(item)` (an item announced by an event of its own, not handed out), `_itemEventOf(item)`.
 */
class PullSource extends EventEmitter {
  /**
   * The one constructor path: builds the native reader from `spec` (lib/options.js
   * createValidated: every value encodable, the engine's 'InvalidArg' an InvalidOptionError)
   * and the shared state.
   * @param {ReaderKind} kind
   * @param {{ create: (spec: Buffer, store?: any) => NativeReader, spec: Record<string, any>,
   *   decode: Record<string, boolean>, logger: object | null, concurrency?: number }} setup
   */
  constructor(kind, { create, spec, decode, logger, concurrency = 1 }) {
    super();
    this._kind = kind;
    const store = tokenStoreOption(spec.tokenStore);
    /** @type {NativeReader} */
    this._native = createValidated(create, { ...spec, tokenStore: store.spec }, store.callback);
    // Named only now: the engine has checked that db and collection are strings.
    if (logger) this._native.setLogger(logSink(logger, namespaceOf(spec)));
    /** What metrics and health checks name it by (never the URI). */
    this._identity = { name: typeof spec.name === 'string' ? spec.name : null, namespace: namespaceOf(spec) };
    /** deserialize() options for one item; its `index` is moved along the batch. */
    this._decodeOptions = perEventOptions(eventDeserializeOptions(decode));
    this._deserialize = bson().deserialize;
    this._lifecycle = new Lifecycle();
    /** The close promise, created once by the first close (user, engine end, failure). */
    this._closing = null;

    /**
     * Items not yet handed out, kept as the engine delivered them: whole batches of raw BSON.
     * `_head` is the batch being handed out; `_index`/`_offset` locate its next item, which
     * is decoded only when it is looked at or handed out (`_peeked` caches it). While a
     * batch is handed out, the engine's next item is already asked for (one at a time, as
     * the contract says): it waits in `_queue`, in order, and is applied only once the
     * items before it are handed out and the consumer asks for more.
     * @type {Batch | null}
     */
    this._head = null;
    /** @type {NativeItem[]} */
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

    /** Items handed out, and when the last one was (ms since epoch; for health()). */
    this._delivered = 0;
    this._lastDeliveredAt = null;
    /** rawListeners(itemEvent) as of the last change to them: not one copy per item. */
    this._itemListeners = null;
    /** tryNext()'s bound on waiting for the engine's next reply (ms); a subclass may set it. */
    this._tryNextWaitMs = TRY_NEXT_WAIT_MS;

    this._checkpoints = new Checkpoints(this._native, (error) => this._terminate(error));
    /** Bumped when a group member's tenure ends: what was in flight no longer counts. */
    this._tenure = 0;
    /** Emitter mode with `concurrency` > 1: the keyed pump (lib/keyed-pump.js). */
    this._keyed = concurrency > 1 ? new KeyedPump(this._keyedSource(), concurrency) : null;

    /**
     * A consumer group's member (`group` option): what it holds, and until when (on
     * performance.now()'s clock) it may hand out what it read without asking the engine
     * again. Without a group it always may.
     * @type {{ epoch: number, member: string, since: Date } | null}
     */
    this._lease = null;
    this._grouped = spec.group != null;
    this._leaseDeadline = this._grouped ? 0 : Infinity;
    /** The second argument of item listeners in a group: `{ epoch }` of the tenure. */
    this._eventContext = undefined;
    /**
     * A partitioned member (`group.partitions`): the epoch of each partition it holds, and
     * each handed-out event's context (`{ partition, epoch }`), by event.
     * @type {Map<number, number>}
     */
    this._partitionEpochs = new Map();
    /** @type {WeakMap<object, Readonly<{ partition: number, epoch: number | null }>>} */
    this._partitionContexts = new WeakMap();
    /** Tells the engine this event loop runs: a blocked one lets the lease lapse. */
    this._heartbeat = null;
    if (this._grouped) {
      const leaseMs = typeof spec.group.leaseMs === 'number' ? spec.group.leaseMs : DEFAULT_LEASE_MS;
      this._native.heartbeat();
      this._heartbeat = setInterval(() => this._native.heartbeat(), Math.max(25, leaseMs / 4));
      this._heartbeat.unref();
    }

    this.on('newListener', (name) => {
      if (name !== kind.itemEvent) return;
      this._itemListeners = null;
      this._startFlowing();
    });
    this.on('removeListener', (name) => {
      if (name === kind.itemEvent) this._itemListeners = null;
    });
  }

  get closed() {
    return !this._lifecycle.reading;
  }

  /**
   * The listener policy (lib/listeners.js). Processing events — the item event and
   * `resumeTokenChanged` — throw to the caller, which closes the reader with a HandlerError;
   * so do EventEmitter's own `newListener`/`removeListener` (a mode conflict is thrown to
   * whoever adds the listener) and an 'error' nobody listens for (Node's way of surfacing
   * it). Every other listener is an observer: what it throws becomes a process warning.
   * @param {string | symbol} eventName
   * @param {...any} args
   */
  emit(eventName, ...args) {
    if (PROCESSING_EVENTS.has(eventName) || eventName === this._kind.itemEvent) return super.emit(eventName, ...args);
    if (eventName === 'error' && this.listenerCount('error') === 0) return super.emit(eventName, ...args);
    return emitObserved(this, eventName, args);
  }

  /**
   * What the reader is doing, synchronously: the engine's view plus what this side handed
   * out. `lastError` is plain data (JSON-safe, for monitoring); nothing in it holds credentials.
   */
  health() {
    const native = this._native.health();
    const { reading, error } = this._lifecycle;
    return {
      state: reading ? native.state : error ? 'failed' : 'closed',
      reconnects: native.reconnects,
      currentBackoffMs: native.currentBackoffMs ?? null,
      lastError: healthError(error ?? (native.lastError ? fromNative(native.lastError) : null)),
      ...this._ownHealth(native),
      pendingCheckpoint: this._checkpoints.pending(),
      ...(native.group ? { group: groupHealth(native.group) } : {}),
      batches: native.batchesRead,
      outages: native.outages,
      downtimeMs: native.downtimeMs,
      currentOutageMs: native.currentOutageMs ?? null,
      stalls: native.stalls,
      checkpointsSaved: native.checkpointsSaved,
      checkpointFailures: native.checkpointFailures,
      lastCheckpointAt: native.lastCheckpointAt == null ? null : new Date(native.lastCheckpointAt),
    };
  }

  /**
   * A consumer group's member: the lease it holds (`epoch` fences the position; handlers can
   * fence their own writes with it), or null while it is a standby (or not in a group).
   */
  get lease() {
    return this._lease;
  }

  /**
   * The reader's metrics now, as plain data (lib/metrics.js): what `instrument()` reports
   * through OpenTelemetry, without it.
   */
  metrics() {
    return metricsSnapshot(this);
  }

  /**
   * Resolves with the next item. Once the reader ended: a cursor answers null; a change
   * stream rejects with StreamClosedError, as the driver's ChangeStream.next() does (it never
   * resolves null), also when it is closed while waiting.
   */
  async next() {
    this._useAsIterator();
    const item = await this._next();
    if (item === null && this._kind.closedIteratorThrows) {
      throw new StreamClosedError(`${this._kind.name} is closed`, { cause: this._lifecycle.error ?? undefined });
    }
    return item;
  }

  /** Resolves `true` once an item is available; `false` if it ended while waiting. */
  async hasNext() {
    this._useAsIterator();
    for (;;) {
      if (this._available()) return true;
      if (!this._lifecycle.reading) {
        this._throwIfFailed();
        return false;
      }
      await this._pull();
    }
  }

  /**
   * The next item if one is available, else `null` — after at most one round trip, as the
   * driver's tryNext() (at most one getMore): with nothing buffered it waits for the engine's
   * next reply, bounded by `_tryNextWaitMs` (a change stream: its await time, `maxAwaitTimeMS`
   * or the server's 1 s). A later next() gets what arrives after that.
   */
  async tryNext() {
    this._useAsIterator();
    if (!this._available() && this._lifecycle.reading) {
      let timer;
      const waited = new Promise((resolve) => {
        timer = setTimeout(resolve, this._tryNextWaitMs);
      });
      try {
        // The pull keeps going if the timer wins: its result is buffered for the next call.
        await Promise.race([this._pull(), waited]);
      } finally {
        clearTimeout(timer);
      }
    }
    while (this._available() && this._checkpoints.mayHandOut(this._ordinal()) && this._holdsLease()) {
      const item = this._take();
      if (!this._isNotice(item)) return item;
    }
    if (!this._lifecycle.reading) this._throwIfFailed();
    return null;
  }

  async *[Symbol.asyncIterator]() {
    if (!this._lifecycle.reading && !this._available()) return; // as the driver
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

  /**
   * Closes the reader and the native engine, storing the last processed position (in
   * iterator mode the item last handed out counts as processed). What is still buffered is
   * dropped. Idempotent; a pending next() resolves null (a cursor) or rejects with StreamClosedError (a stream). Rejects only if that position
   * could not be stored.
   */
  async close() {
    if (this._lifecycle.reading) this._checkpoints.processHanded();
    await this._shutdown(null, 'closed');
  }

  /** `await using stream = watch(…)`: closes it (as the driver's ChangeStream). */
  [Symbol.asyncDispose]() {
    return this.close();
  }

  /**
   * Iterator mode with a token store: marks the item last handed out as processed now
   * (otherwise that happens when the next one is asked for, or at close()).
   */
  commit() {
    this._checkpoints.processHanded();
    this._checkpoints.report();
  }

  // --- consumption modes -----------------------------------------------------------------

  _useAsIterator() {
    const { name, closedIteratorThrows, iteratorConflict } = this._kind;
    if (closedIteratorThrows && !this._lifecycle.reading) {
      throw new StreamClosedError(`${name} is closed`, { cause: this._lifecycle.error ?? undefined });
    }
    if (this._lifecycle.emitter) throw new ModeConflictError(iteratorConflict);
    this._lifecycle.toMode('iterator');
  }

  /** Emitter mode from now on: an item listener is being added. */
  _startFlowing() {
    const lifecycle = this._lifecycle;
    if (lifecycle.mode === 'iterator') throw new ModeConflictError(this._kind.emitterConflict);
    if (lifecycle.mode === 'flowing') return;
    lifecycle.toMode('flowing');
    // 'newListener' fires before the listener is added: start once it is there.
    queueMicrotask(() => this._flow());
  }

  _isEmitter() {
    return this._lifecycle.emitter;
  }

  /**
   * Emitter mode's pump. Each item goes to every item listener in turn; only what a listener
   * returns as a promise is awaited (sync listeners cost no tick). Only then is it handed
   * out: the position moves past it. A listener that throws (or rejects) closes the reader
   * with a HandlerError, and that item counts as not processed; so does one whose listener
   * closed it.
   */
  async _flow() {
    const eventName = this._kind.itemEvent;
    if (this._keyed) {
      try {
        await this._keyed.run();
      } catch (err) {
        this._terminate(err);
      } finally {
        this._lifecycle.toMode('paused');
      }
      return;
    }
    try {
      while (this._lifecycle.reading && this.listenerCount(eventName) > 0) {
        if (this._head === null) {
          this._checkpoints.report(); // nothing processed waits for the server
          await this._pull();
          continue;
        }
        if (!this._checkpoints.mayHandOut(this._ordinal())) {
          await this._checkpoints.admit(this._ordinal());
          continue;
        }
        if (!this._holdsLease()) continue; // what it read is dropped; the engine says why next
        const item = this._peek();
        if (this._isNotice(item)) {
          this._take(); // a notice is not the listeners' to process: the position moves past it
          continue;
        }
        const itemEvent = this._itemEventOf(item);
        // rawListeners, not listeners: once() wrappers must run so they remove themselves.
        // A listener added or removed meanwhile counts from the next item on.
        this._itemListeners ??= this.rawListeners(eventName);
        const listeners = itemEvent === eventName ? this._itemListeners : this.rawListeners(itemEvent);
        try {
          for (const listener of listeners) {
            const result = listener.call(this, item, this._contextOf(item));
            if (result !== null && typeof result?.then === 'function') {
              // The listener may take long: what was processed before it is reported now.
              this._checkpoints.report();
              await result;
            }
          }
        } catch (thrown) {
          throw this._handlerError(itemEvent, thrown, item);
        }
        if (!this._lifecycle.reading) break; // a listener closed it: the item was dropped
        this._take();
      }
    } catch (err) {
      this._terminate(err);
    } finally {
      // Synchronous with the loop's last check, so a listener added later starts a new pump.
      this._lifecycle.toMode('paused');
    }
  }

  /**
   * Every item listener in turn, each one's promise awaited before the next (as the
   * sequential pump); rejects with what one threw.
   * @param {any} item
   */
  async _runListeners(item) {
    // A notice is not the listeners' to process: its completion announces it.
    if (this._isNotice(item)) return;
    const eventName = this._kind.itemEvent;
    const itemEvent = this._itemEventOf(item);
    this._itemListeners ??= this.rawListeners(eventName);
    const listeners = itemEvent === eventName ? this._itemListeners : this.rawListeners(itemEvent);
    for (const listener of listeners) {
      const result = listener.call(this, item, this._contextOf(item));
      if (result !== null && typeof result?.then === 'function') await result;
    }
  }

  /** What the keyed pump (`concurrency` > 1) needs of this reader. @returns {import('./keyed-pump').KeyedSource} */
  _keyedSource() {
    const eventName = this._kind.itemEvent;
    return {
      reading: () => this._lifecycle.reading,
      hasListeners: () => this.listenerCount(eventName) > 0,
      available: () => this._available(),
      pull: () => this._pull(),
      mayHandOut: () => this._checkpoints.mayHandOut(this._ordinal()),
      admit: () => this._checkpoints.admit(this._ordinal()),
      report: () => this._checkpoints.report(),
      holdsLease: () => this._holdsLease(),
      peek: () => this._peek(),
      keyOf: (item) => this._orderKey(item),
      dispatch: () => this._dispatch(),
      runListeners: (item) => this._runListeners(item),
      handlerError: (item, thrown) => this._handlerError(this._itemEventOf(item), thrown, item),
      fail: (error) => this._terminate(error),
      tenure: () => this._tenure,
    };
  }

  // --- pulling from the engine -----------------------------------------------------------

  /** Whether an item is buffered, ready to be handed out. */
  _available() {
    return this._head !== null;
  }

  /** The number of the next item to hand out (the engine numbers them; see Checkpoints). */
  _ordinal() {
    return /** @type {Batch} */ (this._head).ordinal + this._index;
  }

  /** next() without the mode/closed checks. Asking for the next item means the one handed out before is processed. */
  async _next() {
    const checkpoints = this._checkpoints;
    checkpoints.processHanded();
    // This call may wait for the server: report what is processed first.
    if (!this._available()) checkpoints.report();
    for (;;) {
      if (this._available()) {
        if (!checkpoints.mayHandOut(this._ordinal())) await checkpoints.admit(this._ordinal());
        // Closed while waiting for room (or the lease is gone): what was buffered is gone.
        if (this._available() && this._holdsLease()) {
          const item = this._take();
          if (!this._isNotice(item)) return item;
        }
        continue;
      }
      if (!this._lifecycle.reading) {
        this._throwIfFailed();
        return null;
      }
      await this._pull();
    }
  }

  /**
   * The consumer wants the next item: applies what waits in `_queue`, else waits for the
   * engine's next item and applies it. Never rejects: failures close the reader.
   * @returns {Promise<void>}
   */
  _pull() {
    this._wanted = true;
    if (this._queue.length > 0 && this._head === null) {
      this._drainQueue();
      // The queue held what was asked for (the one outstanding call, if any, stays pending).
      if (this._head !== null || !this._lifecycle.reading || this._queue.length > 0) return Promise.resolve();
    }
    this._pending ??= this._request();
    return this._pending;
  }

  /** One native nextBatch(), its item handled (applied, or queued if nobody asked for it yet). */
  _request() {
    this._beforeRequest();
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
    if (!this._lifecycle.reading || this._head === null || this._queue.length > 0) return;
    if (this._pending === null) this._pending = this._request();
    else this._prefetch = true; // right after the call that brought this batch settles
  }

  /** @param {NativeItem} item */
  _handle(item) {
    // Once closing, the engine's last items (a late batch, 'end') no longer matter.
    if (!this._lifecycle.reading) return;
    // What the consumer has not asked for yet (read ahead while items were handed out: a
    // batch, an outage, an error, the end) waits until it asks, as if it arrived then.
    if (this._head !== null || !this._wanted) {
      this._queue.push(item);
      return;
    }
    this._apply(item);
  }

  /**
   * The buffered items are handed out and the next one is asked for: applies what the
   * engine sent after them, in order (as if it arrived now).
   */
  _drainQueue() {
    while (this._head === null && this._queue.length > 0 && this._lifecycle.reading) {
      try {
        this._apply(/** @type {NativeItem} */ (this._queue.shift()));
      } catch (err) {
        this._terminate(err);
      }
    }
  }

  /** @param {NativeItem} item */
  _apply(item) {
    switch (item.kind) {
      case 'batch':
        return this._onBatch(item);
      case 'reconnecting':
        this.emit('reconnecting', {
          attempt: item.attempt,
          delayMs: item.delayMs,
          error: fromNative(/** @type {any} */ (item.error)),
        });
        return;
      case 'resumed':
        this.emit('resumed', { attempts: item.attempts, downtimeMs: item.downtimeMs });
        return;
      case 'stalled': // a re-open follows
        this.emit('stalled', { silentMs: item.silentMs });
        return;
      case 'leaseAcquired': {
        const partition = item.partition ?? null;
        /** @type {{ epoch: number, member: string, since: Date, partition?: number }} */
        const lease = { epoch: item.epoch, member: item.member, since: new Date(item.sinceMs) };
        if (partition !== null) lease.partition = partition;
        this._lease = Object.freeze(lease);
        // A partitioned member's events come from several leases: no one epoch to give.
        if (partition === null) this._eventContext = Object.freeze({ epoch: item.epoch });
        else this._partitionEpochs.set(partition, item.epoch);
        this._leaseDeadline = 0; // asked on the first hand-out
        this.emit('leaseAcquired', this._lease);
        return;
      }
      case 'leaseLost': {
        this._dropTenure();
        const partition = item.partition ?? null;
        if (partition !== null && this._partitionEpochs.get(partition) === item.epoch) this._partitionEpochs.delete(partition);
        this.emit('leaseLost', partition === null
          ? { epoch: item.epoch, reason: item.reason }
          : { epoch: item.epoch, reason: item.reason, partition });
        return;
      }
      case 'error':
        return this._terminate(this._annotate(fromNative(/** @type {any} */ (item.error))));
      case 'end': // the engine ended by itself, after everything it sent was handed out
        return this._terminate(null, item.reason);
      default:
        if (!this._applyOwn(item)) throw new Error(`unknown native item kind "${item.kind}"`);
    }
  }

  /**
   * A group member may hand out what it read only while it holds the lease: checked
   * against a deadline on the local clock, the engine asked again once it passed (a paused
   * process finds it passed when it wakes, before it hands out anything). When the lease is
   * gone, what is buffered is dropped and false returned.
   */
  _holdsLease() {
    if (!this._grouped || performance.now() < this._leaseDeadline) return true;
    // The batch being handed out: a partitioned member may have dropped it.
    const validMs = this._native.leaseValidMs(this._head === null ? undefined : this._head.seq);
    if (validMs === null || validMs === undefined) {
      this._leaseDeadline = Infinity;
      return true;
    }
    if (validMs > 0) {
      this._leaseDeadline = performance.now() + validMs;
      return true;
    }
    this._dropTenure();
    return false;
  }

  /** The tenure ended: nothing read under it is handed out, or counted as processed. */
  _dropTenure() {
    this._tenure += 1;
    this._keyed?.drop();
    this._lease = null;
    this._eventContext = undefined;
    this._leaseDeadline = 0;
    this._head = null;
    this._peeked = null;
    this._queue = this._queue.filter((queued) => queued.kind !== 'batch');
    this._checkpoints.endTenure();
  }

  /** @param {NativeItem} item */
  _onBatch(item) {
    if (item.kind !== 'batch') return;
    const { seq, ordinal, events, count } = item;
    checkBatch(events, count);
    const batch = { seq, ordinal, events, count, endToken: item.endToken ?? null, partitions: item.partitions ?? null };
    if (count === 0) {
      // With items in flight (keyed pump), the position moves past them first.
      if (this._keyed?.holding) return this._keyed.quiet(batch, (b) => this._onEmptyBatch(b));
      return this._onEmptyBatch(batch);
    }
    this._head = batch;
    this._wanted = false;
    this._index = 0;
    this._offset = 0;
    this._peeked = null;
    // Ask for the next item now: the engine reads the next batch while this one is handed
    // out (it reads only once its one slot is taken), and the server never waits for us.
    this._prefetchNext();
  }

  /** The next item (decoded once, when first looked at). A batch that cannot be decoded closes the reader. */
  _peek() {
    if (this._peeked === null) {
      const options = this._decodeOptions;
      options.index = this._offset;
      try {
        const head = /** @type {Batch} */ (this._head);
        this._peeked = this._deserialize(head.events, options);
        const partition = head.partitions?.[this._index];
        if (partition !== undefined && this._peeked !== null && typeof this._peeked === 'object') {
          const epoch = this._partitionEpochs.get(partition) ?? null;
          this._partitionContexts.set(this._peeked, Object.freeze({ partition, epoch }));
        }
      } catch (err) {
        this._terminate(err);
        throw err;
      }
    }
    return this._peeked;
  }

  /**
   * The second argument of an item's listeners: a partitioned member's `{ partition, epoch }`
   * of that event, a group member's `{ epoch }`, or undefined.
   * @param {any} item
   */
  _contextOf(item) {
    return (item !== null && typeof item === 'object' && this._partitionContexts.get(item)) || this._eventContext;
  }

  /** Hands out the next item, moving the position past it. */
  _take() {
    const item = this._peek();
    this._dispatch()();
    return item;
  }

  /**
   * Takes the next item from its batch; returns what moves the position past it (run at
   * once by `_take`, or when the keyed pump's finished prefix reaches it). That may throw
   * (a resumeTokenChanged listener): the reader then closes and the position stays.
   * @returns {() => void}
   */
  _dispatch() {
    const item = this._peek();
    const batch = /** @type {Batch} */ (this._head);
    const offset = this._offset;
    const index = this._index;
    const length = batch.events.readInt32LE(offset);
    const last = index === batch.count - 1;
    this._peeked = null;
    if (last) {
      this._head = null; // what came after it is applied when the next item is asked for
    } else {
      this._index += 1;
      this._offset = offset + length;
    }
    return () => {
      try {
        this._keepPosition(item, batch, offset, length, last);
      } catch (err) {
        this._terminate(err);
        throw err;
      }
      this._delivered += 1;
      this._lastDeliveredAt = Date.now();
      this._checkpoints.handedOut(batch, index, this._lifecycle.emitter);
      this._afterTake(item);
    };
  }

  // --- hooks: what differs between the readers ------------------------------------------

  /**
   * Moves the position past a handed-out item (resume token / last key). May throw (the
   * reader then closes and the item is not handed out).
   * @abstract
   * @param {any} _item the decoded item
   * @param {Batch} _batch its batch
   * @param {number} _offset where its BSON starts in `_batch.events`
   * @param {number} _length its BSON's length
   * @param {boolean} _last whether it is the batch's last
   * @returns {void}
   */
  _keepPosition(_item, _batch, _offset, _length, _last) {
    throw new Error('PullSource subclasses implement _keepPosition');
  }

  /**
   * Applies a native item only this kind of reader gets; false for an unknown kind.
   * @abstract
   * @param {NativeItem} _item
   * @returns {boolean}
   */
  _applyOwn(_item) {
    throw new Error('PullSource subclasses implement _applyOwn');
  }

  /**
   * The HandlerError a reader closes with when a processing listener of `eventName` threw
   * `thrown` for `item` (its position not moved past it).
   * @param {string} eventName
   * @param {unknown} thrown
   * @param {any} item
   */
  _handlerError(eventName, thrown, item) {
    return handlerError(this._kind.name, eventName, thrown, this._handlerFields(item));
  }

  /**
   * Which item a HandlerError is about, under this reader's names.
   * @abstract
   * @param {any} _item
   * @returns {{ event?: unknown, document?: unknown, resumeToken?: unknown }}
   */
  _handlerFields(_item) {
    throw new Error('PullSource subclasses implement _handlerFields');
  }

  /**
   * The error that closes the reader, with what this reader adds to it.
   * @param {any} error
   * @returns {any}
   */
  _annotate(error) {
    return error;
  }

  /**
   * This reader's own health() fields.
   * @abstract
   * @param {NativeHealth} _native
   * @returns {object}
   */
  _ownHealth(_native) {
    throw new Error('PullSource subclasses implement _ownHealth');
  }

  /**
   * The key whose items must stay in order under `concurrency` (a string; null: an item that
   * runs alone, after everything before it).
   * @abstract
   * @param {any} _item
   * @returns {string | null}
   */
  _orderKey(_item) {
    throw new Error('PullSource subclasses implement _orderKey');
  }

  /**
   * Whether an item is a notice the reader announces itself (an event of its own) rather
   * than hands to the consumer; the position moves past it all the same.
   * @param {any} _item
   */
  _isNotice(_item) {
    return false;
  }

  /**
   * The event an item goes to in emitter mode (default: the kind's item event).
   * @param {any} _item
   * @returns {string}
   */
  _itemEventOf(_item) {
    return this._kind.itemEvent;
  }

  /** @param {Batch} _batch a batch without items (the position may have moved) */
  _onEmptyBatch(_batch) {}
  /** @param {any} _item */
  _afterTake(_item) {}
  _beforeRequest() {}
  _onClosing() {}

  // --- lifecycle: closing ------------------------------------------------------------------

  _throwIfFailed() {
    if (this._lifecycle.error) throw this._lifecycle.error;
  }

  /**
   * Closes from inside (fatal error, throwing listener, engine ended); first cause wins.
   * @param {any} error
   * @param {string} [reason]
   */
  _terminate(error, reason) {
    // A failing native close() still reaches whoever awaits close(); here it must not be an
    // unhandled rejection.
    if (this._lifecycle.reading) this._shutdown(error, reason).catch(() => {});
  }

  /**
   * Closes (once): drops what is buffered and closes the native engine, what was processed
   * reported first so that the engine's close stores it. Once the engine is gone: 'error'
   * (emitter mode, or to whoever listens for it; the iterator gets it from next()), 'end'
   * for the kind's end reasons, then 'close'. Rejects when the last position could not be stored.
   * @param {any} error
   * @param {string} [reason]
   * @returns {Promise<void>}
   */
  _shutdown(error, reason = 'closed') {
    if (!this._lifecycle.reading) return /** @type {Promise<void>} */ (this._closing);
    try {
      this._checkpoints.report();
    } catch {
      // a position the engine rejects cannot be stored; close anyway
    }
    this._lifecycle.close(error ?? null, reason);
    if (this._heartbeat !== null) clearInterval(this._heartbeat);
    this._head = null;
    this._queue = [];
    this._peeked = null;
    this._onClosing();
    this._closing = this._native
      .close()
      .then((failure) => {
        if (failure) throw fromNative(failure);
      })
      .finally(() => this._closed());
    return this._closing;
  }

  /** The native close settled: the last events. */
  _closed() {
    const lifecycle = this._lifecycle;
    lifecycle.settle();
    const { error, reason } = lifecycle;
    if (error && (lifecycle.emitter || this.listenerCount('error') > 0)) this._emitOutsidePromise('error', error);
    if (reason !== null && this._kind.endReasons.includes(reason)) this._emitOutsidePromise('end', { reason });
    this._emitOutsidePromise('close', error ? { reason: 'error', error } : { reason });
  }

  /**
   * Emits from inside a promise callback. A throw (an unhandled 'error' above all) is
   * rethrown on its own tick, as an EventEmitter would surface it, instead of vanishing into
   * a promise nobody may be awaiting.
   * @param {string} name
   * @param {unknown} arg
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

/** Events whose listeners are part of processing besides the item event (see emit()). @type {Set<string | symbol>} */
const PROCESSING_EVENTS = new Set(['resumeTokenChanged', 'newListener', 'removeListener']);

/**
 * `db.coll`, `db`, or `<cluster>`: what logs may name (never the URI).
 * @param {{ db?: string, collection?: string }} spec
 */
function namespaceOf({ db, collection }) {
  if (!db) return '<cluster>';
  return collection ? `${db}.${collection}` : db;
}

/**
 * A group member's part of health(), as plain data.
 * @param {import('../native/binding').NativeGroupHealth} g
 */
function groupHealth(g) {
  return {
    member: g.member,
    role: g.role,
    holder: g.holder ?? null,
    epoch: g.epoch ?? null,
    since: g.sinceMs == null ? null : new Date(g.sinceMs),
    leaseMs: g.leaseMs,
    takeovers: g.takeovers,
    ...(g.partitions == null
      ? {}
      : {
          partitions: [...g.partitions],
          partitionCount: g.partitionCount ?? null,
          membersAlive: g.membersAlive ?? null,
          split: g.split ?? null,
        }),
  };
}

/**
 * The error health() reports, as plain data.
 * @param {any} error
 * @returns {HealthError | null}
 */
function healthError(error) {
  if (!error) return null;
  /** @type {HealthError} */
  const plain = { name: error.name, kind: error.kind, message: error.message };
  if (typeof error.code === 'number') plain.code = error.code;
  if (error.codeName !== undefined) plain.codeName = error.codeName;
  return plain;
}

module.exports = { PullSource };
