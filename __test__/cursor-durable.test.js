'use strict';
// ResilientCursor positions that outlive the process (issue #5): a named cursor keeps the key
// of its last processed document in a token store; a crashed reader resumes its read. Also:
// Int64 keys beyond 2^53 restart exactly; a capped collection overwritten while nobody was
// reading is reported (never skipped silently); a getMore that hangs trips the stall watchdog.

const test = require('node:test');
const assert = require('node:assert/strict');
const fs = require('node:fs');
const os = require('node:os');
const path = require('node:path');
const { spawn } = require('node:child_process');
const { Long } = require('bson');
const { ResilientCursor } = require('..');
const helpers = require('./helpers');

const { setup, insertSeq, withTimeout, range, skipIfExternal } = helpers;
const { CHECKPOINT, BATCH_SIZE } = require('./fixtures/durable-cursor');

const FIXTURE = path.join(__dirname, 'fixtures', 'durable-cursor.js');
const BACKOFF = { initialDelayMS: 5, maxDelayMS: 100 };
const DEADLINE_MS = 60000;

function tmpDir(t) {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'rcs-cursor-durable-'));
  t.after(() => fs.rmSync(dir, { recursive: true, force: true }));
  return dir;
}

function open(env, options = {}, collection = env.collName) {
  return new ResilientCursor({ uri: env.server.uri, db: env.dbName, collection }, { backoff: BACKOFF, ...options });
}

/** The shared take / waitUntil, with this file's deadline. */
const take = (cursor, n, ms = DEADLINE_MS) => helpers.take(cursor, n, ms);
const waitUntil = (predicate, what, ms = DEADLINE_MS) => helpers.waitUntil(predicate, what, ms);

function lines(file) {
  return fs.existsSync(file) ? fs.readFileSync(file, 'utf8').split('\n').filter(Boolean) : [];
}

test('a named cursor killed with SIGKILL mid-read resumes from its token store: none missing, bounded repeats, exact after a graceful end', async (t) => {
  const env = await setup(t);
  const total = 3000;
  for (let i = 0; i < total; i += 1000) await insertSeq(env.coll, i, i + 1000);
  await env.coll.createIndex({ seq: 1 });
  const dir = tmpDir(t);
  const storeFile = path.join(dir, 'position.json');
  const outFile = path.join(dir, 'out.txt');
  const run = () => {
    const child = spawn(process.execPath, [FIXTURE, env.server.uri, env.dbName, env.collName, storeFile, outFile], {
      stdio: ['ignore', 'ignore', 'pipe'],
    });
    let stderr = '';
    child.stderr.on('data', (d) => {
      stderr += d;
    });
    const exited = new Promise((resolve) => child.on('exit', (code, signal) => resolve({ code, signal, stderr })));
    return { child, exited };
  };

  const CRASHES = 4;
  for (let crash = 0; crash < CRASHES; crash++) {
    const before = lines(outFile).length;
    const grow = 100 + Math.floor(Math.random() * 500);
    const { child, exited } = run();
    await waitUntil(() => lines(outFile).length >= before + 1 + grow, `the reader to process ${grow} documents`);
    child.kill('SIGKILL');
    assert.equal((await exited).signal, 'SIGKILL');
  }
  const last = await withTimeout(run().exited, DEADLINE_MS, 'the last run to finish the read');
  assert.equal(last.code, 0, last.stderr);

  // Split the output into runs.
  const runs = [];
  for (const line of lines(outFile)) {
    if (line === 'start') runs.push([]);
    else runs[runs.length - 1].push(Number(line));
  }
  assert.equal(runs.length, CRASHES + 1);
  // Each run continues where the stored position was: a contiguous run of seqs...
  // Processed but unsaved: at most maxUnsavedEvents; plus the document written out whose
  // processing (asking for the next one) the kill cut short.
  const bound = CHECKPOINT.maxUnsavedEvents + 1;
  let next = 0;
  runs.forEach((seqs, i) => {
    assert.ok(seqs.length > 0, `run ${i} processed something`);
    assert.deepEqual(seqs, range(seqs[0], seqs[0] + seqs.length), `run ${i} is contiguous`);
    // ...starting after the stored position: nothing skipped, at most `bound` repeated.
    assert.ok(seqs[0] <= next, `run ${i} starts at ${seqs[0]}, after ${next - 1}: nothing skipped`);
    assert.ok(next - seqs[0] <= bound, `run ${i} repeats ${next - seqs[0]} (bound ${bound})`);
    t.diagnostic(`run ${i}: ${seqs[0]}..${seqs[seqs.length - 1]} (${next - seqs[0]} repeated)`);
    next = seqs[seqs.length - 1] + 1;
  });
  assert.equal(next, total, 'the read reached the end');

  // A graceful end stores the exact position: a new run reads only what was added since.
  const record = JSON.parse(fs.readFileSync(storeFile, 'utf8'));
  assert.equal(record.kind, 'cursor');
  assert.deepEqual(record.lastKey, { $numberInt: String(total - 1) });
  await insertSeq(env.coll, total, total + 10);
  const before = lines(outFile).length;
  const again = await withTimeout(run().exited, DEADLINE_MS, 'a run after the end');
  assert.equal(again.code, 0, again.stderr);
  assert.deepEqual(lines(outFile).slice(before), ['start', ...range(total, total + 10).map(String)]);
  t.diagnostic(`batch size ${BATCH_SIZE}, checkpoint ${JSON.stringify(CHECKPOINT)}`);
});

for (const storeType of ['file', 'mongodb']) {
  test(`${storeType} store: a named cursor continues after close(); a record for another filter is refused`, async (t) => {
    const env = await setup(t);
    await insertSeq(env.coll, 0, 20);
    const tokenStore =
      storeType === 'file'
        ? { type: 'file', path: path.join(tmpDir(t), 'p.json') }
        : { type: 'mongodb', db: `${env.dbName}_positions`, collection: 'positions' };
    const first = open(env, { key: 'seq', name: 'orders', tokenStore, batchSize: 5 });
    assert.deepEqual((await take(first, 5)).map((d) => d.seq), range(0, 5));
    await first.close();
    const other = open(env, { key: 'seq', name: 'orders', tokenStore, filter: { seq: { $gte: 0 } } });
    await assert.rejects(other.next(), (err) => err.kind === 'PositionMismatch' && /allowPositionMismatch/.test(err.message));
    await other.close();
    // The same shape continues exactly where the first stopped (close() stored the last one).
    const same = open(env, { key: 'seq', name: 'orders', tokenStore });
    assert.deepEqual((await take(same, 100)).map((d) => d.seq), range(5, 20));
    await same.close();
    assert.throws(() => open(env, { tokenStore }), /option "name"/);
  });
}

test('Int64 keys beyond 2^53 restart exactly, through state() and through a custom token store', async (t) => {
  const env = await setup(t);
  const base = Long.fromString('9007199254740992'); // 2^53: neighbours are not JS numbers
  await env.coll.insertMany(range(0, 20).map((i) => ({ k: base.add(i), i })));
  const options = { key: 'k', batchSize: 3 };
  const cursor = open(env, options);
  const first = await take(cursor, 8);
  assert.deepEqual(first.map((d) => d.i), range(0, 8));
  const state = JSON.parse(JSON.stringify(cursor.state()));
  assert.deepEqual(state.lastKey, { $numberLong: base.add(7).toString() }, 'the exact key, not a rounded number');
  await cursor.close();
  const restarted = ResilientCursor.restart(state, { uri: env.server.uri }, { backoff: BACKOFF });
  assert.deepEqual((await take(restarted, 100)).map((d) => d.i), range(8, 20), 'none repeated, none skipped');
  await restarted.close();

  // The same through an application store: the record it is handed keeps the Long.
  const saved = new Map();
  const tokenStore = { load: async (name) => saved.get(name) ?? null, save: async (name, rec) => void saved.set(name, rec) };
  const named = open(env, { ...options, name: 'longs', tokenStore });
  assert.deepEqual((await take(named, 11)).map((d) => d.i), range(0, 11));
  await named.close();
  const rec = saved.get('longs');
  assert.ok(Long.isLong(rec.lastKey) && rec.lastKey.equals(base.add(10)), `stored ${rec.lastKey}`);
  const resumed = open(env, { ...options, name: 'longs', tokenStore });
  assert.deepEqual((await take(resumed, 100)).map((d) => d.i), range(11, 20));
  await resumed.close();
});

for (const policy of ['error', 'restartFromOldest']) {
  test(`a capped collection overwritten while no cursor was reading: positionLost fires (policy "${policy}")`, async (t) => {
    const env = await setup(t);
    const capped = await env.db.createCollection('tiny', { capped: true, size: 4096, max: 5 });
    await insertSeq(capped, 0, 5);
    const tail = { tailable: true, awaitData: true, maxAwaitTimeMS: 100, tailRetryMS: 20, onPositionLost: policy };
    const cursor = open(env, tail, 'tiny');
    assert.deepEqual((await take(cursor, 5)).map((d) => d.seq), range(0, 5));
    const state = JSON.parse(JSON.stringify(cursor.state()));
    await cursor.close();

    // Nothing overwritten yet: a restart continues quietly.
    await insertSeq(capped, 5, 7);
    const quiet = ResilientCursor.restart(state, { uri: env.server.uri }, { backoff: BACKOFF });
    const quietLost = [];
    quiet.on('positionLost', (e) => quietLost.push(e));
    assert.deepEqual((await take(quiet, 2)).map((d) => d.seq), [5, 6]);
    await quiet.close();
    assert.equal(quietLost.length, 0, 'no loss reported when nothing was lost');

    // Now a burst overwrites the last document read (seq 4) and the ones after it.
    // One insert per document: the test server trims a capped collection per insert command.
    for (let seq = 7; seq < 30; seq++) await capped.insertOne({ seq });
    const left = (await capped.find().toArray()).map((d) => d.seq);
    assert.ok(!left.includes(4) && !left.includes(5), `overwritten: ${left}`);
    const restarted = ResilientCursor.restart(state, { uri: env.server.uri }, { backoff: BACKOFF });
    const lost = [];
    restarted.on('positionLost', (e) => lost.push(e));
    if (policy === 'error') {
      await assert.rejects(
        withTimeout(restarted.next(), DEADLINE_MS, 'the failure'),
        (err) => err.code === 136 && err.positionLost !== undefined,
      );
      assert.equal(restarted.state().ended, 'error');
    } else {
      const after = await take(restarted, left.length);
      assert.deepEqual(after.map((d) => d.seq), left, 'the oldest documents left');
      await insertSeq(capped, 30, 32);
      assert.deepEqual((await take(restarted, 2)).map((d) => d.seq), [30, 31], 'and it keeps tailing');
    }
    assert.equal(lost.length, 1, 'reported once, never silent');
    assert.equal(lost[0].error.code, 136);
    assert.match(lost[0].error.message, /overwritten/);
    await restarted.close();
  });
}

test('stall watchdog: a getMore that hangs is abandoned, the cursor re-opens after the last key', async (t) => {
  if (skipIfExternal(t, 'use a blocking failpoint')) return;
  const env = await setup(t);
  await insertSeq(env.coll, 0, 50);
  const cursor = open(env, { key: 'seq', batchSize: 10, stallTimeoutMS: 500 });
  const seen = [];
  cursor.on('stalled', (e) => seen.push(['stalled', e]));
  cursor.on('reconnecting', (e) => seen.push(['reconnecting', e]));
  const docs = await take(cursor, 10);
  // The next getMore the engine sends is held for 5 s, far beyond stallTimeoutMS.
  await env.server.failCommand({ commands: ['getMore'], blockConnection: true, blockTimeMS: 5000, times: 1 });
  docs.push(...(await take(cursor, 100, 20000)));
  assert.deepEqual(docs.map((d) => d.seq), range(0, 50), 'every document exactly once, in key order');
  assert.deepEqual(seen.map(([name]) => name).slice(0, 2), ['stalled', 'reconnecting']);
  assert.ok(seen[0][1].silentMs >= 500, `silent ${seen[0][1].silentMs}`);
  assert.equal(seen[1][1].error.kind, 'Stalled');
  await cursor.close();
});
