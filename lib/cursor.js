'use strict';

const { PullSource } = require('./pull');
const { InvalidOptionError } = require('./errors');
const { describeType, fromNative } = require('./error-helpers');
const { bson } = require('./decode');
const { nativeReader } = require('./native');
const { readerOptions, checkEncodable } = require('./options');
const { resolveTarget, connectionString } = require('./target');

/** The version of the `state()` document; `restart()` refuses others. */
const STATE_VERSION = 1;

/** @type {import('./pull').ReaderKind} */
const CURSOR_KIND = {
  name: 'ResilientCursor',
  itemEvent: 'data',
  endReasons: ['exhausted', 'stopped'],
  closedIteratorThrows: false, // an ended cursor answers null (or its error), as the driver's do
  iteratorConflict: 'ResilientCursor cannot be used as an iterator after a "data" listener was added',
  emitterConflict: 'ResilientCursor cannot get a "data" listener after being used as an iterator',
};

/** The value at a dotted `path` of `doc` (undefined when absent). */
function valueAt(doc, path) {
  let value = doc;
  for (const part of path.split('.')) {
    if (value === null || typeof value !== 'object') return undefined;
    value = value[part];
  }
  return value;
}

/**
 * A `state()` field holding canonical Extended JSON, decoded (undefined when null or absent).
 * A field that is not (a cycle, `{ $numberLong: 'x' }`) is an InvalidOptionError naming it.
 * @param {Record<string, any>} state
 * @param {'filter' | 'projection' | 'lastKey'} field
 */
function fromStateEJSON(state, field) {
  const value = state[field];
  if (value === null || value === undefined) return undefined;
  // Extended JSON parsing goes through JSON.stringify, which drops functions and Symbols.
  checkEncodable(value, `state.${field}`);
  try {
    return bson().EJSON.deserialize({ value }, { relaxed: false }).value;
  } catch (err) {
    throw new InvalidOptionError(
      `ResilientCursor.restart(): state.${field} is not canonical Extended JSON: ${String(err?.message ?? err).split('\n')[0]}`,
      { cause: err },
    );
  }
}

function isObject(value) {
  return value !== null && typeof value === 'object' && !Array.isArray(value);
}

/**
 * `{ uri, db, collection }` from a driver Collection or a plain `{ uri, db, collection }`;
 * a Db or MongoClient (or a connection string) gives the connection only (restart()).
 * The `uri` option wins over the target's, whatever the target (as in watch()).
 */
function connectionOf(target, uriOption) {
  if (typeof target === 'string') return { uri: uriOption ?? target };
  if (isObject(target) && typeof target.uri === 'string' && typeof target.db !== 'function') {
    return { uri: uriOption ?? target.uri, db: target.db, collection: target.collection };
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
    const { decode, logger, concurrency, rest } = readerOptions('ResilientCursor', options);
    const { uri: uriOption, lastKey, ...cursorOptions } = rest;
    const { uri, db, collection } = connectionOf(target, uriOption);
    super(CURSOR_KIND, {
      create: (encoded, store) => nativeReader().cursor(encoded, store),
      spec: { ...cursorOptions, uri, db, collection, lastKey },
      decode,
      logger,
      concurrency,
    });
    this._key = cursorOptions.key ?? '_id';
    /** The options state() records (everything but the connection). */
    this._options = {
      filter: cursorOptions.filter ?? {},
      projection: cursorOptions.projection ?? null,
      key: this._key,
      batchSize: cursorOptions.batchSize ?? null,
      tailable: cursorOptions.tailable ?? false,
      awaitData: cursorOptions.awaitData ?? false,
      maxAwaitTimeMS: cursorOptions.maxAwaitTimeMS ?? null,
      onPositionLost: cursorOptions.onPositionLost ?? 'error',
    };
    this._namespace = { db, collection };
    /** The key of the last document handed out (before any: where a restart began). */
    this._lastKey = lastKey ?? null;
    /** The BSON of the last document handed out: its key, exactly. @type {Buffer | null} */
    this._lastRaw = null;
    /** The position lost under a tailable cursor (the 'positionLost' payload), for the error that follows. */
    this._positionLost = null;
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
    const { db, collection } = state.namespace;
    const conn = connectionOf(connection, options.uri);
    if ((conn.db && conn.db !== db) || (conn.collection && conn.collection !== collection)) {
      throw new InvalidOptionError(
        `ResilientCursor.restart(): the connection names ${conn.db}.${conn.collection}, the state ${db}.${collection}`,
      );
    }
    const lastKey = fromStateEJSON(state, 'lastKey');
    return new ResilientCursor(
      { uri: conn.uri, db, collection },
      {
        ...options,
        uri: undefined,
        filter: fromStateEJSON(state, 'filter'),
        projection: fromStateEJSON(state, 'projection'),
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
      ended: this._lifecycle.reason,
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

  /**
   * No further batches are requested (the server cursor is killed); documents already
   * received are still handed out, then next() resolves null and 'end' is emitted with
   * `{ reason: 'stopped' }`. Save `state()` afterwards (or at any time). Idempotent.
   */
  stop() {
    if (this._lifecycle.state !== 'open') return;
    this._lifecycle.to('stopping');
    this._native.stop();
  }

  // --- PullSource hooks --------------------------------------------------------------------

  /** @param {import('../native/binding').NativeHealth} native */
  _ownHealth(native) {
    return { documentsRead: native.eventsRead, documentsDelivered: this._delivered };
  }

  /** @param {import('../native/binding').NativeItem} item */
  _applyOwn(item) {
    if (item.kind !== 'positionLost') return false;
    // Applied only once everything received before it was handed out: the loss begins
    // after the last key handed out.
    this._positionLost = { lastKey: this._lastKey, error: fromNative(/** @type {any} */ (item.error)) };
    this.emit('positionLost', this._positionLost);
    return true;
  }

  /** @param {any} document */
  _orderKey(document) {
    // Every document has its own key: under `concurrency` no two share one.
    return JSON.stringify(valueAt(document, this._key) ?? null);
  }

  /** @param {any} document */
  _handlerFields(document) {
    return { document };
  }

  /** @param {any} error */
  _annotate(error) {
    if (this._positionLost) error.positionLost = this._positionLost;
    return error;
  }

  /**
   * The key of a document handed out, with its exact BSON (an Int64 beyond 2^53 too) for
   * state() and the token store.
   * @param {any} doc
   * @param {import('./pull').Batch} batch
   * @param {number} offset
   * @param {number} length
   */
  _keepPosition(doc, batch, offset, length) {
    const key = valueAt(doc, this._key);
    if (key === undefined) return;
    this._lastKey = key;
    this._lastRaw = batch.events.subarray(offset, offset + length);
  }
}

module.exports = { ResilientCursor, STATE_VERSION };
