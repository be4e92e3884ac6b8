'use strict';
// Durable positions (issue #3): named consumers, token stores, checkpointing, and what happens
// when the stored position cannot be used.
//
// - `name` identifies a consumer's position; several names on one collection are independent.
// - Stores: memory (default), file (atomic, mode 0600), mongodb (one document per name,
//   upserted), custom `{ load, save }` (sync or async). The record holds the token, the cluster
//   time of the last processed event, the fingerprint, the namespace and when it was written.
// - A token is stored only once its event, and every event before it, is processed: every
//   'change' listener finished (async ones awaited); in iterator mode when the next event is
//   asked for, on commit(), or at close(). Policy { everyEvents, everyMs }; close() flushes.
// - Quiet filtered streams: the advancing postBatchResumeToken is stored too.
// - Store failures: retried; events flow only within maxUnsavedEvents; a store down for ~30 s
//   is an 'error'.
// - History lost (286): 'historyLost' {from, to}, then 'error' or resume from now.
//   Invalidate: 'invalidate', then close or restart with startAfter.
// - Bad records (corrupt, unreadable, other pipeline/namespace/name) are clear errors, never a
//   silent start from "now"; an explicit resumeAfter/startAfter wins over the store.
//
// Crash-safety (consumer and server killed with SIGKILL) is in crash.test.js.

const { test, before, after } = require('node:test');
const assert = require('node:assert/strict');
const fs = require('node:fs');
const os = require('node:os');
const path = require('node:path');
const { setTimeout: delay } = require('node:timers/promises');
const { EJSON, Timestamp } = require('bson');
const {
  ResilientChangeStream,
  ChangeStreamHistoryLostError,
  TokenStoreError,
  PositionMismatchError,
  HandlerError,
} = require('..');
const {
  setup,
  startServer,
  uniqueDb,
  insertSeq,
  withTimeout,
  nextN,
  waitUntil,
  seqs,
  range,
  skipIfExternal,
} = require('./helpers');
const { MongoClient } = require('mongodb');

const EXTERNAL = Boolean(process.env.MONGODB_URI);
const DEADLINE_MS = 30000;
const BACKOFF = { initialDelayMS: 5, maxDelayMS: 50 };
// A checkpoint policy that never writes by itself during a test: only close() does.
const NEVER = { everyEvents: 1_000_000, everyMs: 3_600_000 };

// ---------------------------------------------------------------------------------------------
// One server for the tests that need no special server options (each test gets its own
// database); tests that need oplog pruning or a heartbeat start their own.

let shared;
before(async () => {
  const server = await startServer();
  const client = new MongoClient(server.uri, { serverSelectionTimeoutMS: 15000 });
  await client.connect();
  shared = { server, client };
});
after(async () => {
  await shared?.client.close().catch(() => {});
  await shared?.server.close();
  for (const dir of tempDirs) fs.rmSync(dir, { recursive: true, force: true, maxRetries: 3 });
});

/** A fresh collection on the shared server: `{ uri, client, coll, dbName, collName, db }`. */
async function fresh() {
  const dbName = uniqueDb('rcs_durable');
  const db = shared.client.db(dbName);
  const coll = await db.createCollection('orders');
  return { uri: shared.server.uri, server: shared.server, client: shared.client, db, coll, dbName, collName: 'orders' };
}

let nameCounter = 0;
/** A consumer name unique to this process (the memory store is shared by the whole process). */
function uniqueName(prefix) {
  nameCounter += 1;
  return `${prefix}-${process.pid}-${nameCounter}`;
}

const tempDirs = [];
/** A temp directory, removed at the end of the file (after every stream closed). */
function tempDir() {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'rcs-durable-'));
  tempDirs.push(dir);
  return dir;
}

function open(env, options = {}) {
  const stream = new ResilientChangeStream({
    uri: env.uri ?? env.server.uri,
    db: env.dbName,
    collection: env.collName,
    maxAwaitTimeMS: 100,
    backoff: BACKOFF,
    ...options,
  });
  return stream;
}

/** Registers close() of `stream` at the end of the test (errors there are the test's business). */
function closeAfter(t, stream) {
  t.after(() => stream.close().catch(() => {}));
  return stream;
}

/**
 * Records what a stream emits; `until` waits for a condition over the record (checked on every
 * emitted event), failing at once if the stream closes first. With `changes: false` no
 * 'change' listener is added (iterator mode).
 */
function record(stream, { changes = true } = {}) {
  const rec = { log: [], changes: [], tokens: [], errors: [], closes: [], historyLost: [], invalidates: [], reconnecting: [] };
  const lists = {
    resumeTokenChanged: rec.tokens,
    error: rec.errors,
    close: rec.closes,
    historyLost: rec.historyLost,
    invalidate: rec.invalidates,
    reconnecting: rec.reconnecting,
  };
  if (changes) lists.change = rec.changes; // last: a 'change' listener starts the stream
  const waiters = new Set();
  for (const [kind, list] of Object.entries(lists)) {
    stream.on(kind, (value) => {
      rec.log.push({ kind, value });
      list.push(value);
      for (const check of [...waiters]) check();
    });
  }
  rec.until = async (predicate, what, { ms = DEADLINE_MS, allowClose = false } = {}) => {
    let check;
    const reached = new Promise((resolve, reject) => {
      check = () => {
        try {
          if (predicate(rec)) resolve();
          else if (!allowClose && rec.closes.length > 0) {
            reject(new Error(`the stream closed (${describeClose(rec.closes[0])}) before ${what}`));
          }
        } catch (err) {
          reject(err);
        }
      };
    });
    waiters.add(check);
    check();
    try {
      await withTimeout(reached, ms, what);
    } finally {
      waiters.delete(check);
    }
  };
  return rec;
}

function describeClose(info) {
  return info.error ? `${info.reason}: ${info.error.name}: ${info.error.message}` : info.reason;
}

/** Starts next() on each stream and waits until all are open; returns the pending next()s. */
async function openStreams(streams) {
  const opened = streams.map((s) => new Promise((resolve) => s.once('resumeTokenChanged', resolve)));
  const firsts = streams.map((s) => {
    const first = s.next();
    first.catch(() => {});
    return first;
  });
  await withTimeout(Promise.all(opened), DEADLINE_MS, 'the streams to open');
  return firsts;
}

/** The first event of a stream opened in iterator mode: inserts `from..to` once it is open. */
async function openAndInsert(stream, coll, from, to) {
  const opened = new Promise((resolve) => stream.once('resumeTokenChanged', resolve));
  const first = stream.next();
  first.catch(() => {});
  await withTimeout(opened, DEADLINE_MS, 'the stream to open');
  await insertSeq(coll, from, to);
  return first;
}

/** `n` events by next(), the first one inserted only once the stream is open. */
async function openInsertNext(stream, coll, from, to, n = to - from) {
  const first = await withTimeout(openAndInsert(stream, coll, from, to), DEADLINE_MS, 'the first event');
  if (first === null) throw new Error('the stream closed before its first event');
  return [first, ...(await nextN(stream, n - 1))];
}

/**
 * A custom store keeping records in a Map, and a ledger of every save. `processed` (a Set of
 * token `_data`) is what the stream has moved past so far: every save is checked against it at
 * the moment it happens (a stored position must be a processed one).
 */
function ledgerStore({ async = true, processed = null } = {}) {
  const store = {
    records: new Map(),
    saves: [],
    loads: [],
    violations: [],
    failSaves: false,
    failLoads: false,
    failedSaves: 0,
    failedLoads: 0,
    load(name) {
      const run = () => {
        store.loads.push(name);
        if (store.failLoads) {
          store.failedLoads += 1;
          throw new Error('store is down (load)');
        }
        return store.records.get(name) ?? null;
      };
      return async ? Promise.resolve().then(run) : run();
    },
    save(name, rec) {
      const run = () => {
        if (store.failSaves) {
          store.failedSaves += 1;
          throw new Error('store is down (save)');
        }
        if (processed && !processed.has(rec.token._data)) {
          store.violations.push(`saved a token never processed: ${rec.token._data}`);
        }
        store.saves.push({ name, record: rec, at: Date.now() });
        store.records.set(name, rec);
      };
      return async ? delay(1).then(run) : run();
    },
  };
  return store;
}

function readRecord(file) {
  return EJSON.parse(fs.readFileSync(file, 'utf8'), { relaxed: true });
}

function assertTimestampEqual(actual, expected, what) {
  assert.ok(actual instanceof Timestamp || actual?._bsontype === 'Timestamp', `${what}: a Timestamp, got ${actual}`);
  assert.ok(expected, `${what}: expected a Timestamp`);
  assert.equal(actual.toString(), expected.toString(), `${what}: ${actual.inspect?.()} vs ${expected.inspect?.()}`);
}

/** Asserts a stored record's shape: the position after `event`, for `name` on `namespace`. */
function assertRecord(rec, { name, namespace, token, clusterTime, startAfter = false, since }) {
  assert.equal(rec.version, 1);
  assert.equal(rec.name, name);
  assert.deepEqual(rec.token, token, 'the stored token is the position after the last processed event');
  if (clusterTime === null) assert.equal(rec.clusterTime, null);
  else assertTimestampEqual(rec.clusterTime, clusterTime, 'the stored cluster time is the last processed event\'s');
  assert.equal(rec.startAfter, startAfter);
  assert.match(rec.fingerprint, /^[0-9a-f]{16}$/);
  assert.equal(rec.namespace, namespace);
  assert.ok(rec.writtenAt instanceof Date, `writtenAt is a Date, got ${rec.writtenAt}`);
  if (since) {
    assert.ok(rec.writtenAt.getTime() >= since - 1000 && rec.writtenAt.getTime() <= Date.now() + 1000, `writtenAt ${rec.writtenAt.toISOString()} is now`);
  }
}

/** The oldest entry still in the oplog (its `ts`). */
async function oldestOplogTs(client) {
  const [oldest] = await client.db('local').collection('oplog.rs').find({}).sort({ $natural: 1 }).limit(1).toArray();
  return oldest.ts;
}

// =============================================================================================
// Names and stores

test('names: consumers with different names on one collection keep independent positions (memory store: the default, and explicit)', async (t) => {
  const env = await fresh();
  const a = uniqueName('A');
  const b = uniqueName('B');
  let sa = closeAfter(t, open(env, { name: a, checkpoint: NEVER }));
  let sb = closeAfter(t, open(env, { name: b, tokenStore: { type: 'memory' }, checkpoint: NEVER }));
  const [firstA, firstB] = await openStreams([sa, sb]);
  await insertSeq(env.coll, 0, 10);
  assert.deepEqual(seqs([await firstA, ...(await nextN(sa, 5))]), range(0, 6), 'A processed 0..5');
  assert.deepEqual(seqs([await firstB, ...(await nextN(sb, 2))]), range(0, 3), 'B processed 0..2');
  await sa.close();
  await sb.close();

  await insertSeq(env.coll, 10, 12);
  sa = closeAfter(t, open(env, { name: a, checkpoint: NEVER }));
  sb = closeAfter(t, open(env, { name: b, tokenStore: { type: 'memory' }, checkpoint: NEVER }));
  assert.deepEqual(seqs(await nextN(sa, 6)), range(6, 12), 'A continues after its own position');
  assert.deepEqual(seqs(await nextN(sb, 9)), range(3, 12), 'B continues after its own position');
  const tail = await Promise.all([sa.tryNext(), sb.tryNext()]);
  assert.deepEqual(tail, [null, null], 'nothing more');
});

test('file store: the record (token, clusterTime, fingerprint, namespace, writtenAt) is written atomically with mode 0600; close() flushes it; a restart continues right after it', async (t) => {
  const env = await fresh();
  const dir = tempDir();
  const file = path.join(dir, 'orders.position.json');
  const name = uniqueName('file');
  const since = Date.now();
  const first = open(env, { name, tokenStore: { type: 'file', path: file }, checkpoint: NEVER });
  closeAfter(t, first);
  const events = await openInsertNext(first, env.coll, 0, 5);
  assert.deepEqual(seqs(events), range(0, 5));
  const tokenAfter = first.resumeToken;
  assert.equal(first.health().pendingCheckpoint, 4, 'iterator mode: four events processed (the fifth is only handed out)');
  await first.close();

  assert.equal(fs.statSync(file).mode & 0o777, 0o600, 'mode 0600');
  assert.deepEqual(fs.readdirSync(dir), ['orders.position.json'], 'no temp file left behind');
  const text = fs.readFileSync(file, 'utf8');
  assert.doesNotMatch(text, /mongodb:\/\//, 'the record holds no connection string');
  assert.match(text, /"\$timestamp"/, 'canonical Extended JSON (BSON types kept)');
  assert.match(text, /"\$date"/, 'canonical Extended JSON (BSON types kept)');
  const rec = readRecord(file);
  assertRecord(rec, {
    name,
    namespace: `${env.dbName}.orders`,
    token: tokenAfter,
    clusterTime: events[4].clusterTime,
    since,
  });

  // Same name, same pipeline; batchSize/maxAwaitTimeMS do not shape the events (same fingerprint).
  await insertSeq(env.coll, 5, 8);
  const second = closeAfter(t, open(env, { name, tokenStore: { type: 'file', path: file }, checkpoint: NEVER, batchSize: 2, maxAwaitTimeMS: 50 }));
  assert.deepEqual(seqs(await nextN(second, 3)), range(5, 8), 'continues right after the stored position: nothing lost, nothing repeated');
  assert.equal(await second.tryNext(), null);
  await second.close();
  const rec2 = readRecord(file);
  assert.equal(rec2.fingerprint, rec.fingerprint, 'batchSize and maxAwaitTimeMS do not change the fingerprint');
  assert.ok(rec2.writtenAt >= rec.writtenAt);
  assert.deepEqual(fs.readdirSync(dir), ['orders.position.json'], 'still one file, replaced in place');
});

test('mongodb store: one document per name (_id: name), upserted in place; a restart continues after it', async (t) => {
  const env = await fresh();
  const storeDb = uniqueDb('rcs_positions');
  const store = { type: 'mongodb', db: storeDb, collection: 'consumers' };
  const positions = env.client.db(storeDb).collection('consumers');
  const x = uniqueName('mx');
  const y = uniqueName('my');
  const since = Date.now();

  const sx = closeAfter(t, open(env, { name: x, tokenStore: store, checkpoint: { everyEvents: 1, everyMs: 10 } }));
  const sy = closeAfter(t, open(env, { name: y, tokenStore: store, checkpoint: NEVER }));
  const [firstX, firstY] = await openStreams([sx, sy]);
  await insertSeq(env.coll, 0, 6);
  const ex = [await firstX, ...(await nextN(sx, 5))];
  const ey = [await firstY, ...(await nextN(sy, 1))];
  await sx.close();
  await sy.close();

  const docs = await positions.find({}).toArray();
  assert.deepEqual(docs.map((d) => d._id).sort(), [x, y].sort(), 'one document per name, nothing else');
  const byName = new Map(docs.map((d) => [d._id, d]));
  assertRecord(byName.get(x), { name: x, namespace: `${env.dbName}.orders`, token: sx.resumeToken, clusterTime: ex[5].clusterTime, since });
  assertRecord(byName.get(y), { name: y, namespace: `${env.dbName}.orders`, token: sy.resumeToken, clusterTime: ey[1].clusterTime, since });

  await insertSeq(env.coll, 6, 8);
  const sx2 = closeAfter(t, open(env, { name: x, tokenStore: store, checkpoint: { everyEvents: 1, everyMs: 10 } }));
  const sy2 = closeAfter(t, open(env, { name: y, tokenStore: store, checkpoint: NEVER }));
  const ex2 = await nextN(sx2, 2);
  assert.deepEqual(seqs(ex2), [6, 7]);
  assert.deepEqual(seqs(await nextN(sy2, 6)), range(2, 8));
  await sx2.close();
  await sy2.close();
  assert.equal(await positions.countDocuments({}), 2, 'saves replace the document (upsert), never add one');
  const x2 = await positions.findOne({ _id: x });
  assertRecord(x2, { name: x, namespace: `${env.dbName}.orders`, token: sx2.resumeToken, clusterTime: ex2[1].clusterTime, since });
  assert.ok(x2.writtenAt >= byName.get(x).writtenAt);
});

for (const async of [true, false]) {
  test(`custom store (${async ? 'async' : 'sync'} load/save): gets the name and the record; a restart continues from what load() returns`, async (t) => {
    const env = await fresh();
    const name = uniqueName('custom');
    const store = ledgerStore({ async });
    const since = Date.now();
    const s1 = closeAfter(t, open(env, { name, tokenStore: store, checkpoint: { everyEvents: 2, everyMs: 3_600_000 } }));
    const events = await openInsertNext(s1, env.coll, 0, 4);
    await s1.close();
    assert.deepEqual(store.loads, [name], 'load(name) once, at start');
    assert.ok(store.saves.length >= 1);
    for (const { name: saved } of store.saves) assert.equal(saved, name);
    const last = store.saves.at(-1).record;
    assertRecord(last, { name, namespace: `${env.dbName}.orders`, token: s1.resumeToken, clusterTime: events[3].clusterTime, since });

    await insertSeq(env.coll, 4, 6);
    const s2 = closeAfter(t, open(env, { name, tokenStore: store, checkpoint: NEVER }));
    assert.deepEqual(seqs(await nextN(s2, 2)), [4, 5], 'continues after the record load() returned');
    assert.equal(await s2.tryNext(), null);
  });
}

test('an explicit resumeAfter / startAfter wins over the stored position', async (t) => {
  const env = await fresh();
  const name = uniqueName('explicit');
  const store = ledgerStore();
  const s1 = closeAfter(t, open(env, { name, tokenStore: store, checkpoint: NEVER }));
  const events = await openInsertNext(s1, env.coll, 0, 6);
  await s1.close();
  assert.ok(store.records.has(name), 'a position is stored (after seq 5)');

  for (const option of ['resumeAfter', 'startAfter']) {
    const s = closeAfter(t, open(env, { name, tokenStore: store, checkpoint: NEVER, [option]: events[1]._id }));
    assert.deepEqual(seqs(await nextN(s, 4)), range(2, 6), `${option} the token of seq 1 → seq 2.., not the stored position`);
    await s.close();
  }
});

// =============================================================================================
// When a position is stored

test('emitter mode: a position is stored only after every change listener (async ones awaited) finished with its event', async (t) => {
  const env = await fresh();
  const name = uniqueName('emitter');
  const tokens = new Set();
  const ledger = ledgerStore({ processed: tokens });
  const s = closeAfter(t, open(env, { name, tokenStore: ledger, checkpoint: { everyEvents: 1, everyMs: 1 } }));
  s.on('resumeTokenChanged', (token) => tokens.add(token._data));

  // Two listeners: a sync one that records, and an async one that holds seq 2 until released.
  const seen = [];
  let release;
  const held = new Promise((resolve) => {
    release = resolve;
  });
  let entered;
  const enteredSeq2 = new Promise((resolve) => {
    entered = resolve;
  });
  s.on('change', (e) => {
    seen.push(e);
  });
  s.on('change', async (e) => {
    if (e.fullDocument.seq === 2) {
      entered();
      await held;
    }
  });
  await withTimeout(new Promise((resolve) => s.once('resumeTokenChanged', resolve)), DEADLINE_MS, 'open');
  await insertSeq(env.coll, 0, 5);
  await withTimeout(enteredSeq2, DEADLINE_MS, 'the listener to receive seq 2');
  // seq 1 is processed: with everyEvents 1 its position is stored.
  // Saved = the store got it AND save() resolved (only then does the engine count it).
  await waitUntil(
    () =>
      ledger.saves.some((x) => x.record.clusterTime?.toString() === seen[1].clusterTime.toString()) &&
      s.health().pendingCheckpoint === 0,
    'the position after seq 1 to be stored and acknowledged',
  );
  // close() stores the last PROCESSED position: seq 2's listener has not finished, so that is
  // still seq 1, not seq 2 (the sync listener already ran for seq 2: not enough).
  await s.close();
  const last = ledger.saves.at(-1).record;
  assertTimestampEqual(last.clusterTime, seen[1].clusterTime, 'the stored position is seq 1 while seq 2 is still being processed');
  assert.ok(!ledger.saves.some((s) => s.record.clusterTime?.toString() === seen[2].clusterTime.toString()), 'seq 2 was never stored');
  assert.deepEqual(ledger.violations, [], 'every stored token is one the stream had moved past (processed)');
  release();
  assert.deepEqual(seqs(seen), [0, 1, 2]);
});

test('iterator mode: the event handed out counts as processed when the next one is asked for, on commit(), or at close()', async (t) => {
  const env = await fresh();
  const name = uniqueName('iter');
  const store = ledgerStore();
  const s = closeAfter(t, open(env, { name, tokenStore: store, checkpoint: NEVER }));
  const e0 = await withTimeout(openAndInsert(s, env.coll, 0, 5), DEADLINE_MS, 'seq 0');
  assert.equal(e0.fullDocument.seq, 0);
  assert.equal(s.health().pendingCheckpoint, 0, 'seq 0 handed out, not processed yet');
  const [e1] = await nextN(s, 1);
  assert.equal(e1.fullDocument.seq, 1);
  assert.equal(s.health().pendingCheckpoint, 1, 'asking for seq 1 means seq 0 is processed');
  s.commit();
  assert.equal(s.health().pendingCheckpoint, 2, 'commit(): seq 1 is processed');
  s.commit();
  assert.equal(s.health().pendingCheckpoint, 2, 'a second commit() counts nothing twice');
  const [e2] = await nextN(s, 1);
  assert.equal(e2.fullDocument.seq, 2);
  assert.equal(s.health().pendingCheckpoint, 2, 'seq 1 was already committed; seq 2 only handed out');
  assert.equal(store.saves.length, 0, 'the policy (1e6 events / 1 h) wrote nothing yet');
  await s.close();
  assert.equal(store.saves.length, 1, 'close() wrote once');
  assertTimestampEqual(store.saves[0].record.clusterTime, e2.clusterTime, 'close(): the event last handed out counts as processed');

  const s2 = closeAfter(t, open(env, { name, tokenStore: store, checkpoint: NEVER }));
  assert.deepEqual(seqs(await nextN(s2, 2)), [3, 4]);
});

test('iterator mode on a quiet stream: asking for the next event makes the previous one processed, without waiting for another event', async (t) => {
  const env = await fresh();
  const name = uniqueName('iter-quiet');
  const store = ledgerStore();
  const s = closeAfter(t, open(env, { name, tokenStore: store, checkpoint: { everyEvents: 1, everyMs: 10 } }));
  const e0 = await withTimeout(openAndInsert(s, env.coll, 0, 1), DEADLINE_MS, 'seq 0');
  assert.equal(e0.fullDocument.seq, 0);
  // The consumer processed seq 0 and asks for the next event; none comes.
  const pending = s.next();
  pending.catch(() => {});
  // The store sees the record while the save is in flight; the engine counts it saved only
  // once save() resolved, so wait for both.
  await waitUntil(
    () =>
      store.saves.some((x) => x.record.clusterTime?.toString() === e0.clusterTime.toString()) &&
      s.health().pendingCheckpoint === 0,
    'the position after seq 0 to be stored (everyEvents 1) and acknowledged while next() waits',
    5000,
  );
  assert.equal(s.health().pendingCheckpoint, 0);
});

test('a change listener that throws: the stream closes with a HandlerError (cause: that error) and the stored position stays before that event; a restart processes it again', async (t) => {
  const env = await fresh();
  const name = uniqueName('throws');
  const processed = new Set();
  const store = ledgerStore({ processed });
  const s = closeAfter(t, open(env, { name, tokenStore: store, checkpoint: { everyEvents: 1, everyMs: 10 } }));
  s.on('resumeTokenChanged', (token) => processed.add(token._data));
  const boom = new Error('cannot process seq 2');
  const seen = [];
  s.on('change', (e) => {
    seen.push(e);
    if (e.fullDocument.seq === 2) throw boom;
  });
  const rec = record(s);
  await rec.until((r) => r.tokens.length > 0, 'open');
  await insertSeq(env.coll, 0, 5);
  await rec.until((r) => r.closes.length === 1, 'the stream to close', { allowClose: true });
  assert.equal(rec.errors.length, 1);
  const [err] = rec.errors;
  assert.ok(err instanceof HandlerError, `a HandlerError, got ${err?.constructor?.name}`);
  assert.equal(err.cause, boom);
  assert.deepStrictEqual(err.event, seen[2]);
  assert.deepStrictEqual(err.resumeToken, s.resumeToken, 'the position before the failing event');
  assert.notDeepStrictEqual(err.resumeToken, seen[2]._id);
  assert.deepEqual(rec.closes, [{ reason: 'error', error: err }]);
  assert.deepEqual(seqs(seen), [0, 1, 2]);
  assertTimestampEqual(store.saves.at(-1).record.clusterTime, seen[1].clusterTime, 'stored: seq 1, the last event processed');
  assert.deepEqual(store.violations, [], 'only processed positions were ever stored');

  const s2 = closeAfter(t, open(env, { name, tokenStore: store, checkpoint: NEVER }));
  assert.deepEqual(seqs(await nextN(s2, 3)), [2, 3, 4], 'seq 2 is processed again, nothing skipped');
});

test('close() while the store is down: rejects with a TokenStoreError once the last position cannot be stored', async (t) => {
  const env = await fresh();
  const name = uniqueName('close-down');
  const store = ledgerStore();
  const s = closeAfter(t, open(env, { name, tokenStore: store, checkpoint: NEVER }));
  await openInsertNext(s, env.coll, 0, 2);
  store.failSaves = true;
  const err = await s.close().then(
    () => null,
    (e) => e,
  );
  assert.ok(err, 'close() rejects: the last processed position was not stored');
  assert.ok(err instanceof TokenStoreError, `a TokenStoreError, got ${err?.constructor?.name} (code ${err?.code}): ${err?.message}`);
  assert.equal(err.kind, 'TokenStoreError');
  assert.match(err.message, /store is down \(save\)/);
  assert.equal(store.saves.length, 0);
});

test('checkpoint.everyEvents: a write once that many events are processed (not before), the rest at close()', async (t) => {
  const env = await fresh();
  const name = uniqueName('every-events');
  const store = ledgerStore();
  const s = closeAfter(t, open(env, { name, tokenStore: store, checkpoint: { everyEvents: 5, everyMs: 3_600_000 } }));
  const events = [];
  s.on('change', (e) => {
    events.push(e);
  });
  await withTimeout(new Promise((resolve) => s.once('resumeTokenChanged', resolve)), DEADLINE_MS, 'open');
  await insertSeq(env.coll, 0, 12);
  await waitUntil(() => events.length === 12 && s.health().pendingCheckpoint < 5, '12 events processed and fewer than 5 unsaved');
  const saves = store.saves.map((x) => x.record);
  assert.ok(saves.length >= 1 && saves.length <= 2, `12 events, every 5: one or two writes, got ${saves.length}`);
  const stored = events.findIndex((e) => e.clusterTime.toString() === saves.at(-1).clusterTime.toString());
  assert.ok(stored >= 12 - 5, `the last write covers seq ≥ 7 (fewer than 5 unsaved), got seq ${stored}`);
  assert.equal(s.health().pendingCheckpoint, 11 - stored);
  await s.close();
  assertTimestampEqual(store.saves.at(-1).record.clusterTime, events[11].clusterTime, 'close() writes the last processed event');
});

test('checkpoint.everyMs: with events trickling in, writes come about every everyMs, never closer together', async (t) => {
  const env = await fresh();
  const name = uniqueName('every-ms');
  const store = ledgerStore({ async: false });
  const EVERY_MS = 200;
  const s = closeAfter(t, open(env, { name, tokenStore: store, checkpoint: { everyEvents: 1_000_000, everyMs: EVERY_MS } }));
  const events = [];
  s.on('change', (e) => {
    events.push(e);
  });
  await withTimeout(new Promise((resolve) => s.once('resumeTokenChanged', resolve)), DEADLINE_MS, 'open');
  const started = Date.now();
  // One insert every ~20 ms for ~1.2 s (pacing only; nothing below depends on exact timing).
  let seq = 0;
  while (Date.now() - started < 1200) {
    await insertSeq(env.coll, seq, seq + 1);
    seq += 1;
    await delay(20);
  }
  await waitUntil(() => events.length === seq, `all ${seq} events`);
  await waitUntil(
    () =>
      store.saves.some((x) => x.record.clusterTime?.compare(events.at(-1).clusterTime) >= 0) &&
      s.health().pendingCheckpoint === 0,
    'the last event (or a later quiet position) to be stored by the time policy (no close), and acknowledged',
    5000,
  );
  // The engine's own write times (the record's writtenAt): the JS callback may run late
  // on a loaded machine, which says nothing about the policy.
  const times = store.saves.map((x) => x.record.writtenAt.getTime());
  assert.ok(times.length >= 3, `about one write per ${EVERY_MS} ms over 1.2 s, got ${times.length}`);
  for (let i = 1; i < times.length; i++) {
    // 10 ms of slack for timer granularity.
    assert.ok(times[i] - times[i - 1] >= EVERY_MS - 10, `writes ${i - 1} and ${i} are ${times[i] - times[i - 1]} ms apart (< ${EVERY_MS})`);
  }
  assert.equal(s.health().pendingCheckpoint, 0);
});

test('quiet filtered stream: the stored token advances while no event matches; after the oplog is pruned, a restart needs no lost history', async (t) => {
  // The test server advances an idle stream's postBatchResumeToken only with a heartbeat
  // (mongod: every ~10 s).
  const env = await setup(t, { noopHeartbeatSeconds: 1, oplogMaxEntries: 30 });
  const dir = tempDir();
  const file = path.join(dir, 'quiet.json');
  const name = uniqueName('quiet');
  const options = {
    name,
    tokenStore: { type: 'file', path: file },
    pipeline: [{ $match: { 'fullDocument.kind': 'wanted' } }],
    checkpoint: { everyEvents: 10, everyMs: 100 },
  };
  const s = closeAfter(t, open(env, options));
  const rec = record(s);
  const stored = () => (fs.existsSync(file) ? readRecord(file) : null);
  const first = await waitUntil(stored, 'a first stored position (the opening postBatchResumeToken)');
  await env.coll.insertMany(range(0, 100).map((i) => ({ kind: 'other', i })));
  // Two more distinct stored tokens after the writes were acknowledged.
  const tokens = new Set([first.token._data]);
  let afterWrites = 0;
  let lastSeen = stored().token._data;
  await waitUntil(
    () => {
      const now = stored().token._data;
      if (now !== lastSeen && !tokens.has(now)) {
        afterWrites += 1;
        tokens.add(now);
        lastSeen = now;
      }
      return afterWrites >= 2;
    },
    'the stored token to advance twice while no event matches',
    EXTERNAL ? 45000 : DEADLINE_MS,
  );
  assert.deepEqual(rec.changes, [], 'no event matched');
  const quietRecord = stored();
  assert.notEqual(quietRecord.clusterTime, null, "the position's time comes from the server's reply");
  assert.equal(quietRecord.namespace, `${env.dbName}.orders`);
  await s.close();
  if (EXTERNAL) return; // pruning needs the embedded server

  // The 100 non-matching writes fall off the oplog; the stored position is past them.
  await env.server.pruneOplog();
  const s2 = closeAfter(t, open(env, options));
  const rec2 = record(s2);
  await rec2.until((r) => r.tokens.length > 0, 'the restarted stream to open');
  await env.coll.insertOne({ kind: 'wanted', n: 1 });
  await rec2.until((r) => r.changes.length === 1, 'the matching event');
  assert.equal(rec2.changes[0].fullDocument.n, 1);
  assert.deepEqual(rec2.historyLost, [], 'the stored position was recent enough');
  assert.deepEqual(rec2.errors, []);
});

// =============================================================================================
// History lost

/**
 * A consumer processes seq 0..4 (position stored at close), then 100 more writes and a forced
 * prune push its position off the oplog. Returns what the restart needs.
 */
async function lostPosition(t, env) {
  const dir = tempDir();
  const file = path.join(dir, 'lost.json');
  const name = uniqueName('lost');
  const options = { name, tokenStore: { type: 'file', path: file }, checkpoint: NEVER };
  const s = closeAfter(t, open(env, options));
  const events = await openInsertNext(s, env.coll, 0, 5);
  await s.close();
  const stored = readRecord(file);
  assertTimestampEqual(stored.clusterTime, events[4].clusterTime, 'stored position: seq 4');
  await insertSeq(env.coll, 5, 105);
  await env.server.pruneOplog();
  const oldest = await oldestOplogTs(env.client);
  assert.ok(oldest.greaterThan(events[4].clusterTime), 'the stored position fell off the oplog');
  return { options, file, stored, lastEvent: events[4], oldest };
}

test("history lost, onHistoryLost 'error' (default): 'historyLost' {from: the position's cluster time, to: the oldest entry}, then ChangeStreamHistoryLostError carrying the interval", async (t) => {
  if (skipIfExternal(t, 'prune its oplog')) return;
  const env = await setup(t, { oplogMaxEntries: 20 });
  const { options, file, stored, lastEvent } = await lostPosition(t, env);
  const before = fs.readFileSync(file, 'utf8');
  const s = closeAfter(t, open(env, options));
  const rec = record(s);
  await rec.until((r) => r.closes.length === 1, 'the stream to close', { allowClose: true });
  const oldest = await oldestOplogTs(env.client);
  assert.equal(rec.historyLost.length, 1, "one 'historyLost'");
  const { from, to } = rec.historyLost[0];
  assertTimestampEqual(from, lastEvent.clusterTime, 'from = cluster time of the last processed event');
  assertTimestampEqual(to, oldest, 'to = the oldest oplog entry still there');
  assert.equal(rec.errors.length, 1);
  const err = rec.errors[0];
  assert.ok(err instanceof ChangeStreamHistoryLostError, `${err.name}: ${err.message}`);
  assert.equal(err.kind, 'ChangeStreamHistoryLost');
  assert.equal(err.code, 286);
  assert.deepEqual(err.historyLost, rec.historyLost[0], 'the error carries the interval');
  assert.deepEqual(rec.closes, [{ reason: 'error', error: err }]);
  const order = rec.log.map((x) => x.kind).filter((k) => k !== 'resumeTokenChanged');
  assert.deepEqual(order, ['historyLost', 'error', 'close']);
  assert.deepEqual(rec.changes, [], 'no event from "now" was handed out');
  assert.equal(fs.readFileSync(file, 'utf8'), before, 'the stored position is left as it was (for backfilling)');
  assert.deepEqual(readRecord(file).token, stored.token);
});

test("history lost, onHistoryLost 'error': the error carries the stored token (err.resumeToken) when the position came from the store", async (t) => {
  if (skipIfExternal(t, 'prune its oplog')) return;
  const env = await setup(t, { oplogMaxEntries: 20 });
  const { options, stored } = await lostPosition(t, env);
  const s = closeAfter(t, open(env, options));
  const rec = record(s);
  await rec.until((r) => r.closes.length === 1, 'the stream to close', { allowClose: true });
  const err = rec.errors[0];
  assert.ok(err instanceof ChangeStreamHistoryLostError);
  assert.deepEqual(err.resumeToken, stored.token, 'err.resumeToken = the stored token (where to backfill from)');
});

test("history lost, onHistoryLost 'resumeFromNow': 'historyLost' with the interval, then the stream continues from the present and stores its new position", async (t) => {
  if (skipIfExternal(t, 'prune its oplog')) return;
  const env = await setup(t, { oplogMaxEntries: 20 });
  const { options, file, lastEvent } = await lostPosition(t, env);
  const s = closeAfter(t, open(env, { ...options, onHistoryLost: 'resumeFromNow' }));
  const rec = record(s);
  await rec.until((r) => r.historyLost.length === 1, "'historyLost'");
  const oldest = await oldestOplogTs(env.client);
  const { from, to } = rec.historyLost[0];
  assertTimestampEqual(from, lastEvent.clusterTime, 'from');
  assertTimestampEqual(to, oldest, 'to');
  // Re-opened from now: its opening position is announced after 'historyLost'.
  await rec.until((r) => r.log.findIndex((x) => x.kind === 'historyLost') < r.log.findLastIndex((x) => x.kind === 'resumeTokenChanged'), 'the stream to re-open from now');
  await insertSeq(env.coll, 1000, 1003);
  await rec.until((r) => r.changes.length === 3, 'the events written after the re-open');
  assert.deepEqual(seqs(rec.changes), [1000, 1001, 1002], 'only events from now');
  assert.deepEqual(rec.errors, []);
  await s.close();
  const stored = readRecord(file);
  assertTimestampEqual(stored.clusterTime, rec.changes[2].clusterTime, 'the new position is stored');
  assert.deepEqual(stored.token, s.resumeToken);
});

// =============================================================================================
// Invalidate

test("invalidate, onInvalidate 'close' (default): 'invalidate' then close; the stored position (startAfter) lets a restart continue with the re-created collection", async (t) => {
  const env = await fresh();
  const dir = tempDir();
  const file = path.join(dir, 'inv.json');
  const name = uniqueName('inv-close');
  const options = { name, tokenStore: { type: 'file', path: file }, checkpoint: { everyEvents: 1, everyMs: 10 } };
  const s = closeAfter(t, open(env, options));
  const rec = record(s);
  await rec.until((r) => r.tokens.length > 0, 'open');
  await insertSeq(env.coll, 0, 2);
  await env.coll.drop();
  await rec.until((r) => r.closes.length === 1, 'the stream to close', { allowClose: true });
  assert.deepEqual(rec.changes.map((e) => e.operationType), ['insert', 'insert', 'drop', 'invalidate']);
  assert.equal(rec.invalidates.length, 1);
  assert.equal(rec.invalidates[0], rec.changes[3], "'invalidate' carries the invalidate event");
  assert.deepEqual(rec.closes, [{ reason: 'invalidate' }]);
  assert.deepEqual(rec.errors, []);
  const stored = readRecord(file);
  assert.deepEqual(stored.token, rec.changes[3]._id, 'the stored position is the invalidate event');
  assert.equal(stored.startAfter, true, 'marked: continue with startAfter');

  const coll = await env.db.createCollection('orders');
  await insertSeq(coll, 2, 4);
  const s2 = closeAfter(t, open(env, options));
  assert.deepEqual(seqs(await nextN(s2, 2)), [2, 3], 'a restart continues after the invalidate, in the re-created collection');
});

test("invalidate, onInvalidate 'restart': 'invalidate' is emitted and a dropped-and-recreated collection keeps streaming", async (t) => {
  const env = await fresh();
  const name = uniqueName('inv-restart');
  const store = ledgerStore();
  const s = closeAfter(t, open(env, { name, tokenStore: store, onInvalidate: 'restart', checkpoint: { everyEvents: 1, everyMs: 10 } }));
  const rec = record(s);
  await rec.until((r) => r.tokens.length > 0, 'open');
  await insertSeq(env.coll, 0, 2);
  await env.coll.drop();
  let coll = await env.db.createCollection('orders');
  await insertSeq(coll, 2, 4);
  await rec.until((r) => seqs(r.changes).includes(3), 'the inserts into the re-created collection');
  // Again: a second drop restarts too.
  await coll.drop();
  coll = await env.db.createCollection('orders');
  await insertSeq(coll, 4, 5);
  await rec.until((r) => seqs(r.changes).includes(4), 'the insert after a second drop');
  assert.deepEqual(
    rec.changes.map((e) => (e.operationType === 'insert' ? e.fullDocument.seq : e.operationType)),
    [0, 1, 'drop', 'invalidate', 2, 3, 'drop', 'invalidate', 4],
  );
  assert.equal(rec.invalidates.length, 2, "'invalidate' emitted for each");
  assert.deepEqual(rec.closes, [], 'not closed');
  assert.deepEqual(rec.errors, []);
  await s.close();
  const last = store.saves.at(-1).record;
  assertTimestampEqual(last.clusterTime, rec.changes.at(-1).clusterTime, 'the last processed event is stored');
  assert.equal(last.startAfter, false);
});

test("invalidate with a filtering pipeline: 'close' ends the stream without an error even when the pipeline drops the invalidate event; 'restart' keeps streaming when invalidate events pass the pipeline, and says why it cannot when they do not", async (t) => {
  const env = await fresh();
  const pipeline = [{ $match: { operationType: 'insert' } }];
  // 'close': the stream ends when the collection is dropped, without an error.
  const s1 = closeAfter(t, open(env, { name: uniqueName('inv-filtered-close'), pipeline }));
  const rec1 = record(s1);
  await rec1.until((r) => r.tokens.length > 0, 'open');
  await insertSeq(env.coll, 0, 1);
  await env.coll.drop();
  await rec1.until((r) => r.closes.length === 1, 'the stream to end', { allowClose: true });
  assert.deepEqual(seqs(rec1.changes), [0]);
  assert.deepEqual(rec1.errors, [], `no error: ${rec1.errors.map((e) => `${e.name}: ${e.message}`)}`);
  assert.deepEqual(rec1.closes, [{ reason: 'invalidate' }]);

  // 'restart' with invalidate events let through: the re-created collection keeps streaming.
  let coll = await env.db.createCollection('orders');
  const passing = [{ $match: { operationType: { $in: ['insert', 'invalidate'] } } }];
  const s2 = closeAfter(t, open(env, { name: uniqueName('inv-filtered-restart'), pipeline: passing, onInvalidate: 'restart' }));
  const rec2 = record(s2);
  await rec2.until((r) => r.tokens.length > 0, 'open');
  await insertSeq(coll, 1, 2);
  await coll.drop();
  coll = await env.db.createCollection('orders');
  await insertSeq(coll, 2, 3);
  await rec2.until((r) => seqs(r.changes).includes(2), 'the insert into the re-created collection');
  assert.deepEqual(seqs(rec2.changes), [1, 2]);
  assert.deepEqual(rec2.errors, []);
  assert.deepEqual(rec2.closes, []);

  // 'restart' with the invalidate filtered out: there is no token to restart after, and
  // guessing one could skip events, so the stream fails once, saying why.
  const s3 = closeAfter(t, open(env, { name: uniqueName('inv-filtered-norestart'), pipeline, onInvalidate: 'restart' }));
  const rec3 = record(s3);
  await rec3.until((r) => r.tokens.length > 0, 'open');
  await insertSeq(coll, 3, 4);
  await coll.drop();
  await rec3.until((r) => r.closes.length === 1, 'the stream to end', { allowClose: true });
  assert.deepEqual(seqs(rec3.changes), [3]);
  assert.equal(rec3.errors.length, 1);
  assert.equal(rec3.errors[0].kind, 'ChangeStreamFatal');
  assert.match(rec3.errors[0].message, /invalidate events to pass the pipeline/);
});

// =============================================================================================
// Records that cannot be used

/** Opens in emitter mode and waits for the close; asserts nothing was delivered. */
async function failsToStart(t, env, options) {
  const s = closeAfter(t, open(env, options));
  const rec = record(s);
  await rec.until((r) => r.closes.length === 1, 'the stream to close', { allowClose: true });
  assert.deepEqual(rec.changes, [], 'no event delivered (never a silent start from "now")');
  assert.equal(rec.errors.length, 1, `one 'error': ${rec.log.map((x) => x.kind)}`);
  assert.deepEqual(rec.closes, [{ reason: 'error', error: rec.errors[0] }]);
  assert.equal(s.closed, true);
  assert.equal(s.health().state, 'failed');
  return rec.errors[0];
}

test('a corrupt, unreadable or incomplete position file is a clear TokenStoreError naming the path, and is left as it was', async (t) => {
  const env = await fresh();
  const dir = tempDir();
  const cases = [
    ['corrupt.json', '{ "version": 1, "name": "x", "tok', /corrupt\.json/],
    ['incomplete.json', '{"version": {"$numberInt": "1"}, "name": "x"}', /incomplete\.json.*(token|unreadable)|unreadable.*incomplete\.json/],
    ['array.json', '[1, 2]', /array\.json/],
    ['version.json', '{"version": {"$numberInt": "99"}, "name": "x"}', /version\.json.*(version|99)/],
  ];
  for (const [fileName, content, pattern] of cases) {
    const file = path.join(dir, fileName);
    fs.writeFileSync(file, content);
    const err = await failsToStart(t, env, { name: 'x', tokenStore: { type: 'file', path: file } });
    assert.ok(err instanceof TokenStoreError, `${fileName}: ${err.name}: ${err.message}`);
    assert.equal(err.kind, 'TokenStoreError');
    assert.ok(err.message.includes(file), `${fileName}: the message names the path: ${err.message}`);
    assert.match(err.message, pattern);
    assert.equal(fs.readFileSync(file, 'utf8'), content, `${fileName} is not overwritten`);
  }
  // Unreadable: the path is a directory.
  const asDir = path.join(dir, 'a-directory.json');
  fs.mkdirSync(asDir);
  const err = await failsToStart(t, env, { name: 'x', tokenStore: { type: 'file', path: asDir } });
  assert.ok(err instanceof TokenStoreError, `${err.name}: ${err.message}`);
  assert.ok(err.message.includes(asDir), `the message names the path: ${err.message}`);
  // Unreadable: a path through a regular file.
  const through = path.join(dir, 'corrupt.json', 'position.json');
  const err2 = await failsToStart(t, env, { name: 'x', tokenStore: { type: 'file', path: through } });
  assert.ok(err2 instanceof TokenStoreError, `${err2.name}: ${err2.message}`);
  assert.ok(err2.message.includes(through), `the message names the path: ${err2.message}`);
});

test('a stored position of another pipeline, namespace or name is refused with PositionMismatchError unless allowPositionMismatch', async (t) => {
  const env = await fresh();
  const dir = tempDir();
  const file = path.join(dir, 'fp.json');
  const name = uniqueName('fp');
  const p1 = [{ $match: { operationType: 'insert' } }];
  const s1 = closeAfter(t, open(env, { name, tokenStore: { type: 'file', path: file }, pipeline: p1, checkpoint: NEVER }));
  await openInsertNext(s1, env.coll, 0, 2);
  await s1.close();
  const stored = fs.readFileSync(file, 'utf8');

  const p2 = [{ $match: { operationType: 'insert', 'fullDocument.seq': { $gte: 0 } } }];
  const cases = [
    ['another pipeline', { name, pipeline: p2 }, /different pipeline/],
    ['other watch options', { name, pipeline: p1, fullDocument: 'updateLookup' }, /different watch options/],
    ['another namespace', { name, pipeline: p1, collection: 'other' }, new RegExp(`namespace ${env.dbName}\\.orders`)],
    ['another name', { name: `${name}-other`, pipeline: p1 }, new RegExp(`belongs to "${name}"`)],
  ];
  for (const [what, opts, pattern] of cases) {
    const err = await failsToStart(t, env, { tokenStore: { type: 'file', path: file }, ...opts });
    assert.ok(err instanceof PositionMismatchError, `${what}: ${err.name}: ${err.message}`);
    assert.equal(err.kind, 'PositionMismatch');
    assert.match(err.message, pattern, `${what}: ${err.message}`);
    assert.match(err.message, /allowPositionMismatch/, `${what}: the message says how to opt in`);
    assert.ok(err.message.includes(file), `${what}: names the store: ${err.message}`);
    assert.equal(fs.readFileSync(file, 'utf8'), stored, `${what}: the record is left as it was`);
  }

  // Opting in: the stored position is used with the new pipeline.
  await insertSeq(env.coll, 2, 4);
  const s2 = closeAfter(t, open(env, { name, tokenStore: { type: 'file', path: file }, pipeline: p2, allowPositionMismatch: true, checkpoint: NEVER }));
  assert.deepEqual(seqs(await nextN(s2, 2)), [2, 3], 'continues from the stored position');
});

test('mongodb store: an unreadable stored document is a TokenStoreError naming the store', async (t) => {
  const env = await fresh();
  const storeDb = uniqueDb('rcs_positions');
  const name = uniqueName('mbad');
  await env.client.db(storeDb).collection('consumers').insertOne({ _id: name, version: 1, name, token: 'not a document' });
  const err = await failsToStart(t, env, { name, tokenStore: { type: 'mongodb', db: storeDb, collection: 'consumers' } });
  assert.ok(err instanceof TokenStoreError, `${err.name}: ${err.message}`);
  assert.ok(err.message.includes(`${storeDb}.consumers`), err.message);
  assert.doesNotMatch(err.message, /mongodb:\/\//, 'no connection string in the message');
});

test('custom store: a record load() returns that is not a position is a TokenStoreError', async (t) => {
  const env = await fresh();
  const name = uniqueName('cbad');
  const err = await failsToStart(t, env, { name, tokenStore: { load: async () => ({ hello: 'world' }), save: async () => {} } });
  assert.ok(err instanceof TokenStoreError, `${err.name}: ${err.message}`);
  assert.match(err.message, /custom token store/);
});

test('custom store whose load() throws: retried (reconnecting, TokenStoreError), never a start from "now"; once it answers, the stream continues from the stored position', async (t) => {
  const env = await fresh();
  const name = uniqueName('cload');
  const store = ledgerStore();
  const s1 = closeAfter(t, open(env, { name, tokenStore: store, checkpoint: NEVER }));
  await openInsertNext(s1, env.coll, 0, 2);
  await s1.close();

  store.failLoads = true;
  const s2 = closeAfter(t, open(env, { name, tokenStore: store, checkpoint: NEVER }));
  const rec = record(s2);
  await rec.until((r) => r.reconnecting.length >= 2, 'two failed loads reported');
  for (const { error } of rec.reconnecting) {
    assert.ok(error instanceof TokenStoreError, `${error.name}: ${error.message}`);
    assert.match(error.message, /store is down \(load\)/);
  }
  await insertSeq(env.coll, 2, 4); // written while the position is unknown
  store.failLoads = false;
  await rec.until((r) => r.changes.length === 2, 'the events after the stored position');
  assert.deepEqual(seqs(rec.changes), [2, 3], 'continued from the stored position once load() answered');
  assert.deepEqual(rec.errors, []);
});

test('custom store whose save() fails: events stop once maxUnsavedEvents are unsaved, flow again when it recovers; only processed positions are ever stored', async (t) => {
  const env = await fresh();
  const name = uniqueName('csave');
  const MAX = 5;
  const processed = new Set();
  const store = ledgerStore({ processed });
  store.failSaves = true;
  const s2 = closeAfter(t, open(env, { name, tokenStore: store, batchSize: 1, checkpoint: { everyEvents: 1, everyMs: 10, maxUnsavedEvents: MAX } }));
  s2.on('resumeTokenChanged', (token) => processed.add(token._data));
  const rec = record(s2);
  await rec.until((r) => r.tokens.length > 0, 'open');
  await insertSeq(env.coll, 0, 20);
  await waitUntil(() => s2.health().pendingCheckpoint >= MAX, `${MAX} processed events unsaved`);
  // The store keeps failing: two more failed attempts later, still no more events handed out.
  const failed = store.failedSaves;
  await waitUntil(() => store.failedSaves >= failed + 2, 'two more failed saves');
  assert.equal(rec.changes.length, MAX, `exactly ${MAX} events handed out while the store is down (batchSize 1)`);
  assert.equal(s2.health().pendingCheckpoint, MAX);
  assert.deepEqual(rec.errors, [], 'not an error (yet)');

  store.failSaves = false;
  await rec.until((r) => r.changes.length === 20, 'all events once the store is back', { ms: DEADLINE_MS });
  assert.deepEqual(seqs(rec.changes), range(0, 20));
  await waitUntil(() => s2.health().pendingCheckpoint === 0, 'everything saved');
  await s2.close();
  assertTimestampEqual(store.saves.at(-1).record.clusterTime, rec.changes[19].clusterTime, 'the last processed event is stored');
  assert.deepEqual(store.violations, [], 'only processed positions were ever stored');
  assert.deepEqual(rec.errors, []);
});

test('custom store whose save() fails: no more than maxUnsavedEvents processed events are unsaved, with the server\'s batch size', async (t) => {
  const env = await fresh();
  const name = uniqueName('cwindow');
  const MAX = 5;
  const store = ledgerStore();
  store.failSaves = true;
  const s = closeAfter(t, open(env, { name, tokenStore: store, checkpoint: { everyEvents: 1, everyMs: 10, maxUnsavedEvents: MAX } }));
  const rec = record(s);
  await rec.until((r) => r.tokens.length > 0, 'open');
  await insertSeq(env.coll, 0, 30);
  await waitUntil(() => s.health().pendingCheckpoint >= MAX, `${MAX} processed events unsaved`);
  const failed = store.failedSaves;
  await waitUntil(() => store.failedSaves >= failed + 1, 'one more failed save');
  assert.ok(rec.changes.length <= MAX, `"Stop handing out events while ${MAX} processed events are unsaved": ${rec.changes.length} were handed out`);
  assert.ok(s.health().pendingCheckpoint <= MAX, `pendingCheckpoint ${s.health().pendingCheckpoint} ≤ ${MAX}`);
});

test('custom store whose save() fails, everyEvents < maxUnsavedEvents: exactly maxUnsavedEvents processed events unsaved, in emitter and in iterator mode', async (t) => {
  // Runs of processed events reach the engine every 5; the 8th must be reported early
  // (room for 3 after the first run), or 10 would be handed out before the engine knew.
  const EVERY = 5;
  const MAX = 8;
  const checkpoint = { everyEvents: EVERY, everyMs: 10, maxUnsavedEvents: MAX };
  const env = await fresh();

  // Emitter mode.
  const emitterStore = ledgerStore();
  emitterStore.failSaves = true;
  const s = closeAfter(t, open(env, { name: uniqueName('exact-emit'), tokenStore: emitterStore, checkpoint }));
  const rec = record(s);
  await rec.until((r) => r.tokens.length > 0, 'open');
  // The iterator below replays the same 20 inserts from here.
  const startAtOperationTime = (await env.client.db('admin').command({ hello: 1 })).operationTime;
  await insertSeq(env.coll, 0, 20);
  await waitUntil(() => s.health().pendingCheckpoint >= MAX, `${MAX} processed events unsaved`);
  let failed = emitterStore.failedSaves;
  await waitUntil(() => emitterStore.failedSaves >= failed + 2, 'two more failed saves');
  assert.equal(rec.changes.length, MAX, `emitter mode: exactly ${MAX} events handed out while the store is down`);
  assert.equal(s.health().pendingCheckpoint, MAX);
  emitterStore.failSaves = false;
  await rec.until((r) => r.changes.length === 20, 'all events once the store is back');
  assert.deepEqual(seqs(rec.changes), range(0, 20));
  assert.deepEqual(rec.errors, []);

  // Iterator mode: asking for the next event makes the one before it processed.
  const iterStore = ledgerStore();
  iterStore.failSaves = true;
  const it = closeAfter(t, open(env, { name: uniqueName('exact-iter'), tokenStore: iterStore, checkpoint, startAtOperationTime }));
  assert.deepEqual(seqs(await nextN(it, MAX)), range(0, MAX), 'seq 0..7 handed out');
  const ninth = it.next();
  ninth.catch(() => {});
  await waitUntil(() => it.health().pendingCheckpoint >= MAX, `${MAX} processed events unsaved`);
  failed = iterStore.failedSaves;
  await waitUntil(() => iterStore.failedSaves >= failed + 2, 'two more failed saves');
  let settled = false;
  ninth.then(() => {
    settled = true;
  }, () => {});
  await new Promise((resolve) => setImmediate(resolve));
  assert.equal(settled, false, 'iterator mode: the 9th next() waits while 8 processed events are unsaved');
  assert.equal(it.health().pendingCheckpoint, MAX);
  iterStore.failSaves = false;
  assert.equal((await withTimeout(ninth, DEADLINE_MS, 'seq 8 once the store is back')).fullDocument.seq, 8);
});

test('custom store whose save() keeps failing: after ~30 s an error (TokenStoreError) closes the stream; nothing unprocessed was ever stored', async (t) => {
  const env = await fresh();
  const name = uniqueName('cdown');
  const processed = new Set();
  const store = ledgerStore({ processed });
  const s = closeAfter(t, open(env, { name, tokenStore: store, checkpoint: { everyEvents: 1, everyMs: 10 } }));
  s.on('resumeTokenChanged', (token) => processed.add(token._data));
  const rec = record(s);
  await rec.until((r) => r.tokens.length > 0, 'open');
  await insertSeq(env.coll, 0, 3);
  await rec.until((r) => r.changes.length === 3, 'three events');
  await waitUntil(() => store.saves.length > 0 && s.health().pendingCheckpoint === 0, 'the first positions saved');
  const savedBefore = store.saves.length;
  store.failSaves = true;
  const downSince = Date.now();
  await insertSeq(env.coll, 3, 5);
  await rec.until((r) => r.closes.length === 1, 'the stream to give up on the store', { ms: 60000, allowClose: true });
  const downFor = Date.now() - downSince;
  assert.ok(downFor >= 25000 && downFor <= 45000, `gave up after ~30 s, took ${downFor} ms`);
  assert.equal(rec.errors.length, 1);
  const err = rec.errors[0];
  assert.ok(err instanceof TokenStoreError, `${err.name}: ${err.message}`);
  assert.match(err.message, /store is down \(save\)/);
  assert.deepEqual(rec.closes, [{ reason: 'error', error: err }]);
  assert.deepEqual(seqs(rec.changes), range(0, 5), 'events kept flowing within the unsaved window');
  assert.equal(store.saves.length, savedBefore, 'nothing saved while the store was down');
  assert.deepEqual(store.violations, [], 'only processed positions were ever stored');
});

