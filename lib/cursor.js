'use strict';

const { PullSource } = require('./pull');
const { InvalidOptionError, ModeConflictError } = require('./errors');
const { describeType, fromNative, invalidOption } = require('./error-helpers');
const { takeDecodeOptions, eventDeserializeOptions, decodeEvents, documentViews, encodeSpec, bson } = require('./decode');
const { nativeCursor } = require('./native');
const { resolveTarget, connectionString } = require('./target');
const { checkLogger, logSink } = require('./logger');
const { tokenStoreOption } = require('./store');

/** The version of the `state()` document; `restart()` refuses others. */
const STATE_VERSION = 1;

/** The value at a dotted `path` of `doc` (undefined when absent). */
function valueAt(doc, path) {
  let value = doc;
  for (const part of path.split('.')) {
    if (value === null || typeof value !== 'object') return undefined;
    value = value[part];
  }
  return value;
}

function isObject(value) {
  return value !== null && typeof value === 'object' && !Array.isArray(value);
}

/**
 * `{ uri, db, collection }` from a driver Collection or a plain `{ uri, db, collection }`;
 * a Db or MongoClient (or a connection string) gives the connection only (restart()).
 */
function connectionOf(target, uriOption) {
  if (typeof target === 'string') return { uri: target };
  if (isObject(target) && typeof target.uri === 'string' && typeof target.db !== 'function') {
    return { uri: target.uri, db: target.db, collection: target.collection };
  }
  if (!isObject(target)) {
    throw new InvalidOptionError(
      `ResilientCursor needs a driver Collection or { uri, db, collection }, got ${describeType(target)}`,
    );
  }
  const { client, db, collection } = resolveTarget(target);
  return { uri: uriOption ?? connectionString(client), db, collection };
}

/**
 * A long read — a huge find worked through in batches, or a tailable cursor on a capped
 * collection — that survives failures and can be stopped, saved (`state()`) and restarted
 * anywhere (`ResilientCursor.restart(state, connection)`). Documents come in key order (a
 * tailable cursor: insertion order) and are handed out exactly once across re-opens and
 * restarts. All policy is the native engine's; this class decodes, hands documents out and
 * keeps the key of the last one handed out.
 */
class ResilientCursor extends PullSource {
  /**
   * @param {object} target a driver Collection, or `{ uri, db, collection }`
   * @param {object} [options] filter, projection, key, batchSize, tailable, awaitData,
   *   maxAwaitTimeMS, backoff, onPositionLost, tailRetryMS, stallTimeoutMS, name, tokenStore,
   *   checkpoint, allowPositionMismatch, logger, uri, BSON decode options
   */
  constructor(target, options = {}) {
    super();
    if (!isObject(options)) {
      throw new InvalidOptionError(`ResilientCursor options must be an object, got ${describeType(options)}`);
    }
    const { decode, rest: withLogger } = takeDecodeOptions(options);
    const { logger, uri: uriOption, lastKey, ...rest } = withLogger;
    checkLogger(logger);
    const { uri, db, collection } = connectionOf(target, uriOption);
    for (const name of ['filter', 'projection']) {
      if (rest[name] !== undefined && rest[name] !== null && !isObject(rest[name])) {
        throw invalidOption(name, 'an object', rest[name]);
      }
    }
    this._key = rest.key ?? '_id';
    /** The options state() records (everything but the connection). */
    this._options = {
      filter: rest.filter ?? {},
      projection: rest.projection ?? null,
      key: this._key,
      batchSize: rest.batchSize ?? null,
      tailable: rest.tailable ?? false,
      awaitData: rest.awaitData ?? false,
      maxAwaitTimeMS: rest.maxAwaitTimeMS ?? null,
      onPositionLost: rest.onPositionLost ?? 'error',
    };
    this._namespace = { db, collection };
    const NativeCursor = nativeCursor();
    const store = tokenStoreOption(rest.tokenStore);
    const spec = encodeSpec({ ...rest, tokenStore: store.spec, uri, db, collection, lastKey });
    try {
      this._native = new NativeCursor(spec, store.callback);
    } catch (err) {
      throw err?.code === 'InvalidArg' ? new InvalidOptionError(err.message, { cause: err }) : err;
    }
    if (logger) this._native.setLogger(logSink(logger, `${db}.${collection}`));
    this._decodeOptions = eventDeserializeOptions(decode);
    // A named cursor stores the key of its last processed document (lib/pull.js).
    this._initCheckpoints();
    /** The key of the last document handed out (before any: where a restart began). */
    this._lastKey = lastKey ?? null;
    /** The BSON of the last document handed out: its key, exactly. */
    this._lastRaw = null;
    /** @type {'open' | 'closing' | 'closed'} */
    this._state = 'open';
    /** @type {'unset' | 'iterator' | 'paused' | 'flowing'} as in ResilientChangeStream */
    this._mode = 'unset';
    this._buffer = [];
    this._pending = null;
    this._closing = null;
    this._error = null;
    /** How the read ended: 'exhausted' | 'stopped' | 'closed' | 'error' | null (still open). */
    this._endReason = null;
    this._stopped = false;
    /** The engine's end reason, until what it sent before is handed out. */
    this._endedBy = null;
    this._delivered = 0;
    this._endEmitted = false;
    this._positionLost = null;
    this.on('newListener', (name) => {
      if (name === 'data') {
        this._startFlowing('ResilientCursor cannot get a "data" listener after being used as an iterator');
      }
    });
  }

  /**
   * Continues a read from a `state()` document, in this or any other process. `connection`:
   * a driver Collection/Db/MongoClient, `{ uri }`, or a connection string (the namespace comes
   * from the state). `options`: logger, backoff, tailRetryMS, decode options.
   */
  static restart(state, connection, options = {}) {
    if (!isObject(state) || state.version !== STATE_VERSION || !isObject(state.namespace)) {
      throw new InvalidOptionError(
        `ResilientCursor.restart() needs a state() document of version ${STATE_VERSION}, got ${describeType(state)}`,
      );
    }
    const { EJSON } = bson();
    const parse = (v) => (v === null || v === undefined ? undefined : EJSON.deserialize(v, { relaxed: false }));
    const { db, collection } = state.namespace;
    const conn = connectionOf(connection, options.uri);
    if ((conn.db && conn.db !== db) || (conn.collection && conn.collection !== collection)) {
      throw new InvalidOptionError(
        `ResilientCursor.restart(): the connection names ${conn.db}.${conn.collection}, the state ${db}.${collection}`,
      );
    }
    let lastKey;
    if (state.lastKey !== null && state.lastKey !== undefined) {
      lastKey = EJSON.deserialize({ k: state.lastKey }, { relaxed: false }).k;
    }
    return new ResilientCursor(
      { uri: conn.uri, db, collection },
      {
        ...options,
        uri: undefined,
        filter: parse(state.filter),
        projection: parse(state.projection),
        key: state.key,
        batchSize: state.batchSize ?? undefined,
        tailable: state.tailable || undefined,
        awaitData: state.awaitData || undefined,
        maxAwaitTimeMS: state.maxAwaitTimeMS ?? undefined,
        onPositionLost: state.onPositionLost ?? undefined,
        lastKey,
      },
    );
  }

  /** The key of the last document handed out (null before any). */
  get lastKey() {
    return this._lastKey;
  }

  get closed() {
    return this._state !== 'open';
  }

  /**
   * A plain, JSON-safe document of where the read is: enough for `restart()` to continue
   * after the last document handed out. BSON values (filter, key) are canonical Extended
   * JSON, so ObjectId/Date/Long keys round-trip. Holds no connection string.
   */
  state() {
    const { EJSON } = bson();
    const ejson = (v) => (v === null || v === undefined ? null : EJSON.serialize(v, { relaxed: false }));
    return {
      version: STATE_VERSION,
      namespace: { ...this._namespace },
      filter: ejson(this._options.filter),
      projection: ejson(this._options.projection),
      key: this._key,
      lastKey: this._exactLastKey(),
      batchSize: this._options.batchSize,
      tailable: this._options.tailable,
      awaitData: this._options.awaitData,
      maxAwaitTimeMS: this._options.maxAwaitTimeMS,
      onPositionLost: this._options.onPositionLost,
      ended: this._endReason,
      delivered: this._delivered,
    };
  }

  /** The last key handed out as canonical Extended JSON, with its exact BSON type. */
  _exactLastKey() {
    const { EJSON, deserialize } = bson();
    const key =
      this._lastRaw === null ? this._lastKey : valueAt(deserialize(this._lastRaw, { promoteValues: false }), this._key);
    return key === null || key === undefined ? null : EJSON.serialize({ k: key }, { relaxed: false }).k;
  }

  health() {
    const native = this._native.health();
    return {
      state: this._state === 'open' ? native.state : this._error ? 'failed' : 'closed',
      reconnects: native.reconnects,
      currentBackoffMs: native.currentBackoffMs ?? null,
      lastError: native.lastError ? fromNative(native.lastError) : null,
      documentsRead: native.eventsRead,
      documentsDelivered: this._delivered,
      pendingCheckpoint: this._pendingCheckpoint(),
    };
  }

  /**
   * No further batches are requested (the server cursor is killed); documents already
   * received are still handed out, then next() resolves null and 'end' is emitted with
   * `{ reason: 'stopped' }`. Save `state()` afterwards (or at any time). Idempotent.
   */
  stop() {
    if (this._stopped || this._state !== 'open') return;
    this._stopped = true;
    this._native.stop();
  }

  /** Resolves with the next document; null once the read ended (exhausted, stopped, closed). */
  async next() {
    this._useAsIterator();
    return this._next();
  }

  /**
   * Closes at once: buffered documents are dropped (state() still says what was handed
   * out). A named cursor stores its last processed position first (in iterator mode the
   * document last handed out counts as processed); rejects only if that fails.
   */
  async close() {
    if (this._state === 'open') this._processHanded();
    await this._shutdown(null, 'closed');
  }

  // --- internals ---------------------------------------------------------------------------

  _useAsIterator() {
    // An ended cursor answers null (or its error), as the driver's cursors do.
    if (this._mode === 'paused' || this._mode === 'flowing') {
      throw new ModeConflictError(
        'ResilientCursor cannot be used as an iterator after a "data" listener was added',
      );
    }
    this._mode = 'iterator';
  }

  /** Emitter mode: each document goes to every 'data' listener (awaited) before the next. */
  async _flow() {
    try {
      while (this.listenerCount('data') > 0) {
        if (this._buffer.length === 0) {
          if (this._state !== 'open') break;
          await this._pull();
          continue;
        }
        if (!this._hasRoom()) {
          await this._admit();
          continue;
        }
        const { doc } = this._buffer[0];
        for (const listener of this.rawListeners('data')) await listener.call(this, doc);
        this._take();
      }
    } catch (err) {
      this._terminate(err);
    } finally {
      this._mode = 'paused';
    }
  }

  _pull() {
    // The engine ended by itself (exhausted, stopped) and everything it sent was handed out
    // and, with a token store, reported as processed: close it now, which stores the last
    // position. (Closing at the 'end' item would lose what is handed out after it.)
    if (this._endedBy !== null) {
      this._terminate(null, this._endedBy);
      return Promise.resolve();
    }
    this._pending ??= this._native
      .nextBatch()
      .then((item) => this._handle(item))
      .catch((err) => this._terminate(err))
      .finally(() => {
        this._pending = null;
      });
    return this._pending;
  }

  _handle(item) {
    if (this._state !== 'open' || this._emitRecovery(item)) return;
    switch (item.kind) {
      case 'batch': {
        const docs = decodeEvents(item.events, item.count, this._decodeOptions);
        // The raw bytes stay with each document: the exact key (an Int64 beyond 2^53 too)
        // for state() and the token store comes from them, not from the decoded value.
        const raws = documentViews(item.events, item.count);
        docs.forEach((doc, i) => this._buffer.push({ doc, raw: raws[i] }));
        return;
      }
      case 'positionLost': {
        const error = fromNative(item.error);
        this._positionLost = { lastKey: this._lastKeyReceived(), error };
        this.emit('positionLost', this._positionLost);
        return;
      }
      case 'error': {
        const error = fromNative(item.error);
        if (this._positionLost) error.positionLost = this._positionLost;
        return this._terminate(error);
      }
      case 'end':
        this._endedBy = item.reason;
        return;
      default:
        throw new Error(`unknown native item kind "${item.kind}"`);
    }
  }

  /** The key of the last document received (handed out or buffered): where the loss begins. */
  _lastKeyReceived() {
    const last = this._buffer[this._buffer.length - 1];
    return last === undefined ? this._lastKey : valueAt(last.doc, this._key);
  }

  _take() {
    const entry = this._buffer.shift();
    const key = valueAt(entry.doc, this._key);
    if (key !== undefined) {
      this._lastKey = key;
      this._lastRaw = entry.raw;
    }
    this._delivered += 1;
    this._handedOut(entry.raw, 0, this._buffer.length === 0);
    if (this._buffer.length === 0) this._maybeEnded();
    return entry.doc;
  }

  /** Reports `count` processed documents, the last of them `raw` (the engine reads its key). */
  _commitRun(raw, _offset, count) {
    this._native.commit(raw, count);
  }

  /** Ends the read. Documents already buffered stay available unless close() was called. */
  _shutdown(error, reason = 'closed') {
    if (this._closing === null) {
      this._endReason = error ? 'error' : reason;
      if (reason === 'closed' && !error) this._buffer = [];
      this._closing = this._closeEngine(error, () => this._maybeEnded());
    } else if (reason === 'closed' && !error) {
      this._buffer = [];
    }
    return this._closing;
  }

  /**
   * Once closed AND every received document was handed out: 'end' (exhausted, stopped),
   * then 'close'. Emitted once.
   */
  _maybeEnded() {
    if (this._state !== 'closed' || this._buffer.length > 0 || this._endEmitted) return;
    this._endEmitted = true;
    const reason = this._endReason;
    if (reason === 'exhausted' || reason === 'stopped') this._emitOutsidePromise('end', { reason });
    this._emitOutsidePromise('close', this._error ? { reason: 'error', error: this._error } : { reason });
  }
}

module.exports = { ResilientCursor, STATE_VERSION };
