'use strict';
// ResilientCursor against the live server: a long read stopped, saved and restarted in
// another process; the same through a server crash and a getMore failpoint; a tailable
// cursor on a capped collection across a consumer restart; position lost under a burst.
// Every proof: each document exactly once, in key order.

const test = require('node:test');
const assert = require('node:assert/strict');
const fs = require('node:fs');
const os = require('node:os');
const path = require('node:path');
const { execFile } = require('node:child_process');
const { promisify } = require('node:util');
const { ResilientCursor, InvalidOptionError } = require('..');
const helpers = require('./helpers');

const { setup, insertSeq, withTimeout, skipIfExternal, range } = helpers;

const BACKOFF = { initialDelayMS: 5, maxDelayMS: 100 };
const DEADLINE_MS = 60000;

let appCounter = 0;
/** The server's URI with a fresh appName (a client of its own) and fast server selection. */
function cursorUri(env) {
  appCounter += 1;
  const sep = env.server.uri.includes('?') ? '&' : '?';
  return `${env.server.uri}${sep}appName=rcs-cursor-${process.pid}-${appCounter}&serverSelectionTimeoutMS=1000`;
}

function open(env, options = {}, collection = env.collName) {
  return new ResilientCursor(
    { uri: cursorUri(env), db: env.dbName, collection },
    { backoff: BACKOFF, ...options },
  );
}

/** Records the cursor's events. */
function record(cursor) {
  const rec = { reconnecting: [], resumed: [], positionLost: [], errors: [], ends: [] };
  cursor.on('reconnecting', (e) => rec.reconnecting.push(e));
  cursor.on('resumed', (e) => rec.resumed.push(e));
  cursor.on('positionLost', (e) => rec.positionLost.push(e));
  cursor.on('error', (e) => rec.errors.push(e));
  cursor.on('end', (e) => rec.ends.push(e));
  return rec;
}

/** The shared take, with this file's deadline: the `seq` of each document. */
async function take(cursor, n, ms = DEADLINE_MS) {
  return (await helpers.take(cursor, n, ms)).map((doc) => doc.seq);
}

/** Inserts [from, to) in chunks (large reads). */
async function insertMany(coll, from, to, chunk = 10000) {
  for (let i = from; i < to; i += chunk) await insertSeq(coll, i, Math.min(to, i + chunk));
}

function tmpFile(t, name) {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'rcs-cursor-'));
  t.after(() => fs.rmSync(dir, { recursive: true, force: true }));
  return path.join(dir, name);
}

const CHILD = path.join(__dirname, 'fixtures', 'cursor-child.js');

async function restartInChild(t, env, state) {
  const stateFile = tmpFile(t, 'state.json');
  const outFile = `${stateFile}.out`;
  fs.writeFileSync(stateFile, JSON.stringify(state));
  await withTimeout(
    promisify(execFile)(process.execPath, [CHILD, stateFile, cursorUri(env), outFile], {
      env: process.env,
      maxBuffer: 1 << 24,
    }),
    120000,
    'the child process',
  );
  return JSON.parse(fs.readFileSync(outFile, 'utf8'));
}

// ---------------------------------------------------------------------------------------------

test('options are checked, and state() is plain JSON that restart() accepts', async (t) => {
  const target = { uri: 'mongodb://127.0.0.1:1/', db: 'd', collection: 'c' };
  assert.throws(() => new ResilientCursor(target, { key: 'seq', projection: { seq: 0 } }), InvalidOptionError);
  assert.throws(() => new ResilientCursor(target, { batchSize: 'x' }), /option "batchSize" must be a non-negative integer, got string/);
  assert.throws(() => new ResilientCursor(target, { awaitData: true }), /"awaitData"/);
  assert.throws(() => new ResilientCursor(target, { onPositionLost: 'x' }), /"onPositionLost"/);
  assert.throws(() => ResilientCursor.restart({ version: 99 }, target), InvalidOptionError);
  const { ObjectId } = require('mongodb');
  const id = new ObjectId();
  const cursor = new ResilientCursor(target, { filter: { at: new Date(0), ref: id }, batchSize: 10 });
  const state = cursor.state();
  assert.deepEqual(JSON.parse(JSON.stringify(state)), state, 'JSON-safe');
  assert.equal(state.key, '_id');
  assert.equal(state.lastKey, null);
  const again = ResilientCursor.restart(state, target);
  assert.deepEqual(again.state(), state, 'round trip');
  assert.throws(
    () => ResilientCursor.restart(state, { uri: target.uri, db: 'other', collection: 'c' }),
    InvalidOptionError,
  );
  await cursor.close();
  await again.close();
  t.diagnostic('ok');
});

test('100k documents: stop mid-way, save state to a file, restart in a child process: each exactly once, in order', async (t) => {
  const env = await setup(t);
  const total = 100000;
  let started = Date.now();
  await insertMany(env.coll, 0, total);
  t.diagnostic(`inserted ${total} in ${Date.now() - started} ms`);
  started = Date.now();
  const cursor = open(env, { batchSize: 1000 });
  const first = await take(cursor, 40000);
  cursor.stop();
  // Documents already received are still handed out, then the read ends.
  for (;;) {
    const doc = await withTimeout(cursor.next(), DEADLINE_MS, 'the stopped cursor to drain');
    if (doc === null) break;
    first.push(doc.seq);
  }
  assert.ok(first.length >= 40000 && first.length < total, `stopped mid-way at ${first.length}`);
  const state = cursor.state();
  assert.equal(state.ended, 'stopped');
  assert.ok(state.lastKey.$oid, 'ObjectId key as canonical EJSON');
  assert.equal(await cursor.next(), null, 'next() after the end is null');
  const child = await restartInChild(t, env, JSON.parse(JSON.stringify(state)));
  t.diagnostic(`read ${first.length} here, ${child.seqs.length} in the child, ${Date.now() - started} ms`);
  assert.equal(child.state.ended, 'exhausted');
  const all = first.concat(child.seqs);
  assert.equal(all.length, total, 'no duplicates, none missing');
  // Key order is _id order, which is seq order unless the driver's ObjectId counter wrapped
  // within one second of the insert (~0.6% of runs): ask the server for it.
  const inKeyOrder = await env.coll.find({}, { projection: { _id: 0, seq: 1 } }).sort({ _id: 1 }).toArray();
  assert.deepEqual(all, inKeyOrder.map((d) => d.seq), 'every document exactly once, in key order');
});

test('server killed and restarted mid-read: each document exactly once, in key order', async (t) => {
  if (skipIfExternal(t, 'kill and restart it')) return;
  const env = await setup(t, { storage: 'disk', syncOnCommit: true });
  const total = 20000;
  await insertMany(env.coll, 0, total);
  await env.coll.createIndex({ seq: 1 }, { unique: true });
  const cursor = open(env, { key: 'seq', batchSize: 500, projection: { _id: 0, seq: 1 } });
  const rec = record(cursor);
  const seen = await take(cursor, 5000);
  await env.server.kill();
  const more = take(cursor, total);
  await withTimeout(
    (async () => {
      while (rec.reconnecting.length === 0) await new Promise((r) => setTimeout(r, 20));
    })(),
    DEADLINE_MS,
    'the cursor to notice the outage',
  );
  await env.server.restart();
  seen.push(...(await more));
  t.diagnostic(`reconnecting: ${rec.reconnecting.map((r) => r.error.kind).join(',')}; resumed: ${rec.resumed.length}`);
  assert.equal(cursor.state().ended, 'exhausted');
  assert.ok(rec.reconnecting.length >= 1);
  assert.equal(rec.errors.length, 0);
  assert.deepEqual(seen, range(0, total), 'every document exactly once, in key order');
  await cursor.close();
});

test('failpoints on getMore (CursorNotFound, dropped connection): each document exactly once', async (t) => {
  const env = await setup(t);
  const total = 5000;
  await insertMany(env.coll, 0, total);
  const cursor = open(env, { batchSize: 100 });
  const rec = record(cursor);
  const seen = await take(cursor, 1000);
  await env.server.failCommand({ commands: ['getMore'], times: 2, errorCode: 43 });
  seen.push(...(await take(cursor, 1000)));
  await env.server.failCommand({ commands: ['getMore'], times: 1, closeConnection: true });
  seen.push(...(await take(cursor, total)));
  await env.server.failPointOff();
  const codes = rec.reconnecting.map((r) => r.error.code ?? r.error.kind);
  t.diagnostic(`reconnecting: ${codes.join(',')}`);
  assert.ok(codes.includes(43), 'CursorNotFound re-opened');
  assert.ok(rec.reconnecting.length >= 3);
  assert.equal(rec.errors.length, 0);
  assert.deepEqual(seen, range(0, total), 'every document exactly once, in key order');
  await cursor.close();
});

test('tailable cursor on a capped collection: waits on an empty collection, survives a consumer restart', async (t) => {
  const env = await setup(t);
  const capped = await env.db.createCollection('log', { capped: true, size: 1 << 20 });
  const opts = { tailable: true, awaitData: true, maxAwaitTimeMS: 100, batchSize: 20, tailRetryMS: 50 };
  const cursor = open(env, opts, 'log');
  const rec = record(cursor);
  // Empty capped collection: the dead cursor is re-issued, not ended.
  assert.equal(await cursor.tryNext(), null);
  await new Promise((r) => setTimeout(r, 300));
  assert.equal(cursor.closed, false, 'still open on an empty capped collection');
  await insertSeq(capped, 0, 50);
  const seen = await take(cursor, 50);
  await insertSeq(capped, 50, 80);
  seen.push(...(await take(cursor, 20)));
  cursor.stop();
  for (;;) {
    const doc = await withTimeout(cursor.next(), DEADLINE_MS, 'the stopped cursor to drain');
    if (doc === null) break;
    seen.push(doc.seq);
  }
  await cursor.close(); // resolves once the end was announced
  assert.deepEqual(rec.ends, [{ reason: 'stopped' }]);
  const state = JSON.parse(JSON.stringify(cursor.state()));
  assert.equal(state.tailable, true);
  await insertSeq(capped, 80, 100);
  const restarted = ResilientCursor.restart(state, { uri: cursorUri(env) });
  seen.push(...(await take(restarted, 100 - seen.length)));
  assert.deepEqual(seen, range(0, 100), 'every document exactly once, in insertion order');
  // And it keeps tailing.
  await insertSeq(capped, 100, 103);
  assert.deepEqual(await take(restarted, 3), [100, 101, 102]);
  await restarted.close();
});

for (const policy of ['error', 'restartFromOldest']) {
  test(`position lost on a small capped collection under a burst: policy "${policy}" fires`, async (t) => {
    const env = await setup(t);
    const capped = await env.db.createCollection('tiny', { capped: true, size: 4096, max: 5 });
    await insertSeq(capped, 0, 5);
    const cursor = open(
      env,
      { tailable: true, awaitData: true, maxAwaitTimeMS: 100, batchSize: 1, onPositionLost: policy },
      'tiny',
    );
    const rec = record(cursor);
    const seen = await take(cursor, 1);
    // The engine holds the next batch; the cursor lags behind a burst that overwrites it.
    await insertSeq(capped, 5, 60);
    await withTimeout(
      (async () => {
        while (rec.positionLost.length === 0) {
          const doc = policy === 'error' ? await cursor.next().catch(() => null) : await cursor.tryNext();
          if (doc) seen.push(doc.seq);
          else if (cursor.closed) break;
        }
      })(),
      DEADLINE_MS,
      'positionLost',
    );
    assert.equal(rec.positionLost.length, 1, 'reported, never silent');
    assert.equal(rec.positionLost[0].error.code, 136);
    if (policy === 'error') {
      await assert.rejects(async () => {
        for (;;) if ((await cursor.next()) === null) break;
      }, (err) => err.code === 136 && err.positionLost !== undefined);
      assert.equal(cursor.state().ended, 'error');
    } else {
      // Continues with the oldest documents still there after the last key seen.
      const lastBefore = seen[seen.length - 1];
      const left = (await capped.find().toArray()).map((d) => d.seq).filter((s) => s > lastBefore);
      t.diagnostic(`left in the capped collection after ${lastBefore}: ${left.join(',')}`);
      const after = await take(cursor, left.length);
      assert.deepEqual(after, left, 'continued with the oldest documents left');
      seen.push(...after);
      assert.equal(rec.errors.length, 0);
      for (let i = 1; i < seen.length; i++) assert.ok(seen[i] > seen[i - 1], `increasing: ${seen}`);
    }
    t.diagnostic(`seen: ${seen.join(',')}`);
    await cursor.close();
  });
}
