'use strict';
// Issue #13, the engine's half: a token store that never answers cannot wedge a stream (every
// store call has a deadline, close() finishes), the unsaved bound holds even after saving
// failed for good, and an outage is announced at the first failed attempt and retried at the
// backoff's rhythm (not the driver's 30 s server-selection timeout).

const test = require('node:test');
const assert = require('node:assert/strict');
const net = require('node:net');
const { ResilientChangeStream, TokenStoreError } = require('..');
const { setup, insertSeq, withTimeout, waitForEvent, waitUntil } = require('./helpers');

const BACKOFF = { initialDelayMS: 20, maxDelayMS: 200 };
/** The engine's give-up time for a store that stays down (STORE_GIVE_UP_AFTER) plus slack. */
const STORE_GIVE_UP_MS = 30_000;

let nameCounter = 0;
function uniqueName(prefix) {
  nameCounter += 1;
  return `${prefix}-${process.pid}-${nameCounter}`;
}

function open(env, options) {
  return new ResilientChangeStream({
    uri: env.server.uri,
    db: env.dbName,
    collection: env.collName,
    maxAwaitTimeMS: 100,
    backoff: BACKOFF,
    ...options,
  });
}

/** A custom store whose load() / save() calls never settle (each call recorded). */
function hangingStore({ hangLoads = false, hangSaves = false } = {}) {
  const store = {
    loads: 0,
    saves: 0,
    load() {
      store.loads += 1;
      return hangLoads ? new Promise(() => {}) : null;
    },
    save() {
      store.saves += 1;
      return hangSaves ? new Promise(() => {}) : undefined;
    },
  };
  return store;
}

test('a custom store whose save() never settles: health() shows the store error, TokenStoreError after the give-up, close() finishes', async (t) => {
  const env = await setup(t);
  const store = hangingStore({ hangSaves: true });
  const stream = open(env, { name: uniqueName('hang-save'), tokenStore: store, checkpoint: { everyEvents: 1, everyMs: 50 } });
  const changes = [];
  stream.on('change', (e) => changes.push(e));
  const failed = waitForEvent(stream, 'error', () => true, STORE_GIVE_UP_MS + 20_000);
  await waitForEvent(stream, 'resumeTokenChanged');
  await insertSeq(env.coll, 0, 3);
  await waitUntil(() => changes.length === 3 && store.saves > 0, '3 events and a save attempt');
  // A save that does not settle counts as failed after its deadline (10 s) — or sooner, if V8
  // collects the forgotten promise first: health says so either way.
  const health = await waitUntil(() => {
    const h = stream.health();
    return h.lastError?.kind === 'TokenStoreError' ? h : null;
  }, 'health() to show the store error', 20_000);
  assert.match(health.lastError.message, /save\(\) (did not settle|failed: it returned a promise that was dropped without settling)/);
  assert.ok(health.pendingCheckpoint > 0, 'what is processed is unsaved');
  const error = await failed;
  assert.ok(error instanceof TokenStoreError, `TokenStoreError, got ${error?.name}: ${error?.message}`);
  const started = Date.now();
  await stream.close().catch(() => {});
  assert.ok(Date.now() - started < 8_000, `close() finished in ${Date.now() - started} ms`);
});

test('a custom store whose save() hangs: close() still finishes within its flush deadline', async (t) => {
  const env = await setup(t);
  const store = hangingStore({ hangSaves: true });
  const stream = open(env, { name: uniqueName('hang-close'), tokenStore: store, checkpoint: { everyEvents: 1, everyMs: 50 } });
  const changes = [];
  stream.on('change', (e) => changes.push(e));
  await waitForEvent(stream, 'resumeTokenChanged');
  await insertSeq(env.coll, 0, 2);
  await waitUntil(() => changes.length === 2 && store.saves > 0, '2 events and a save attempt');
  const started = Date.now();
  // The last position cannot be stored: close() says so, and does not hang.
  await assert.rejects(withTimeout(stream.close(), 15_000, 'close()'), (err) => err instanceof TokenStoreError);
  assert.ok(Date.now() - started < 8_000, `close() took ${Date.now() - started} ms`);
});

test('a custom store whose load() never settles: the start is retried after its deadline (reconnecting with the store error), close() finishes', async (t) => {
  const env = await setup(t);
  const store = hangingStore({ hangLoads: true });
  const stream = open(env, { name: uniqueName('hang-load'), tokenStore: store });
  stream.on('change', () => {});
  stream.on('error', () => {});
  const reconnecting = await waitForEvent(stream, 'reconnecting', () => true, 20_000);
  assert.equal(reconnecting.error.kind, 'TokenStoreError');
  assert.match(reconnecting.error.message, /load\(\) (did not settle|failed: it returned a promise that was dropped without settling)/);
  assert.ok(store.loads >= 1);
  const started = Date.now();
  await withTimeout(stream.close(), 10_000, 'close()');
  assert.ok(Date.now() - started < 5_000, `close() took ${Date.now() - started} ms`);
});

test('saves failing for good: no more than maxUnsavedEvents are handed out, also after the give-up; then TokenStoreError', async (t) => {
  const env = await setup(t);
  const store = {
    saves: 0,
    load: () => null,
    save() {
      store.saves += 1;
      throw new Error('store down');
    },
  };
  const MAX = 20;
  const stream = open(env, {
    name: uniqueName('fail-save'),
    tokenStore: store,
    checkpoint: { everyEvents: 5, everyMs: 50, maxUnsavedEvents: MAX },
  });
  const changes = [];
  stream.on('change', (e) => changes.push(e));
  const failed = waitForEvent(stream, 'error', () => true, STORE_GIVE_UP_MS + 20_000);
  await waitForEvent(stream, 'resumeTokenChanged');
  await insertSeq(env.coll, 0, 60);
  await waitUntil(() => changes.length === MAX, `${MAX} events`);
  const error = await failed;
  assert.ok(error instanceof TokenStoreError, `TokenStoreError, got ${error?.name}`);
  assert.equal(changes.length, MAX, `exactly maxUnsavedEvents (${MAX}) handed out`);
  await stream.close().catch(() => {});
});

test('an unreachable server: the outage is announced at the first failed attempt and retried at the backoff rhythm', async () => {
  // A port nothing listens on (taken, then released).
  const port = await new Promise((resolve) => {
    const probe = net.createServer().listen(0, '127.0.0.1', () => {
      const { port: free } = probe.address();
      probe.close(() => resolve(free));
    });
  });
  const started = Date.now();
  const stream = new ResilientChangeStream({
    uri: `mongodb://127.0.0.1:${port}/?directConnection=true`,
    db: 'd',
    collection: 'c',
    backoff: { initialDelayMS: 100, maxDelayMS: 100 },
  });
  const attempts = [];
  stream.on('reconnecting', (r) => attempts.push({ at: Date.now() - started, ...r }));
  stream.on('change', () => {});
  try {
    await waitUntil(() => attempts.length >= 3, 'three reconnecting events', 20_000);
    // The driver's default selection timeout (30 s) would put the first one at ~30 s.
    assert.ok(attempts[0].at < 6_000, `first reconnecting after ${attempts[0].at} ms`);
    assert.ok(attempts[2].at < 15_000, `third after ${attempts[2].at} ms`);
    assert.equal(attempts[0].error.kind, 'NetworkError');
    const { currentBackoffMs, state } = stream.health();
    assert.equal(state, 'reconnecting');
    assert.ok(currentBackoffMs === null || currentBackoffMs <= 100, `backoff left now: ${currentBackoffMs}`);
  } finally {
    await stream.close();
  }
});
