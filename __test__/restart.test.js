'use strict';
// The server goes away under a live stream — crash (kill -9), maintenance stop (SIGTERM), an
// outage long enough for several failed re-open rounds, a step-down — while a writer keeps
// inserting. The stream keeps backing off (never fatal) and afterwards has delivered every
// written document exactly once, in write order.
//
// Duplicates bound: 0. The stream re-opens with resumeAfter its cached token (the last event it
// handed out), so nothing is replayed; the writer's retries cannot duplicate either (see
// startWriter).

const test = require('node:test');
const assert = require('node:assert/strict');
const { setTimeout: delay } = require('node:timers/promises');
const { ResilientChangeStreamError } = require('..');
const { setup, insertSeq, withTimeout, skipIfExternal, seqs, range } = require('./helpers');
const { BACKOFF, uniqueAppName, openStream, record, opened, describe, ceiling } = require('./recorder');

// Pace of the writer's retries while the server is down or not primary. Pacing only (so a
// failing insert is not retried in a hot loop); no outcome depends on it.
const RETRY_PACE_MS = 20;

// ---------------------------------------------------------------------------------------------
// Local helpers

/**
 * Inserts `{ _id: seq, seq }` for seq in [from, to), one at a time and in order, each retried
 * until acknowledged. A retry answered with a duplicate key error (11000) means the earlier
 * attempt was committed but its acknowledgement was lost (to the crash): done, and no second
 * event exists. So when `done` resolves, exactly seq [from, to) were written, once each.
 */
function startWriter(coll, from, to, deadlineMs = 120000) {
  const writer = { written: from, failures: new Map(), done: null, stopped: false };
  /** Ends the writer early (a failed test must not leave it retrying). */
  writer.stop = () => {
    writer.stopped = true;
  };
  const giveUpAt = Date.now() + deadlineMs;
  writer.done = (async () => {
    for (let seq = from; seq < to && !writer.stopped; seq++) {
      for (;;) {
        try {
          await coll.insertOne({ _id: seq, seq });
          break;
        } catch (err) {
          if (err.code === 11000) break;
          const key = err.code ?? err.name;
          writer.failures.set(key, (writer.failures.get(key) ?? 0) + 1);
          if (writer.stopped || Date.now() > giveUpAt) throw err;
          await delay(RETRY_PACE_MS);
        }
      }
      writer.written = seq + 1;
    }
  })();
  writer.done.catch(() => {}); // awaited by the test
  return writer;
}

/**
 * The stream's outages are well-formed: attempts count 1, 2, … within each outage, each delay
 * within the backoff ceiling, every error of the package's class and resumable-looking, and
 * each outage closed by one 'resumed' with its attempt count (after its last 'reconnecting').
 */
function assertOutagesResolved(rec, backoff = BACKOFF) {
  let attempts = 0;
  for (const { kind, value } of rec.log) {
    if (kind === 'reconnecting') {
      assert.equal(value.attempt, attempts + 1, `attempts count up within an outage: ${describe(rec)}`);
      attempts = value.attempt;
      assert.ok(value.error instanceof ResilientChangeStreamError);
      const max = ceiling(value.attempt, backoff);
      assert.ok(value.delayMs >= 0 && value.delayMs <= max, `delayMs ${value.delayMs} ≤ ${max}`);
    } else if (kind === 'resumed') {
      assert.ok(attempts > 0, `'resumed' without an outage: ${describe(rec)}`);
      assert.equal(value.attempts, attempts, `'resumed' counts the outage's attempts: ${describe(rec)}`);
      attempts = 0;
    }
  }
  assert.equal(attempts, 0, `the last outage ended with 'resumed': ${describe(rec)}`);
}

/**
 * Streams while a writer inserts `total` documents; once the stream has `outageAfter` of them,
 * `takeDown()` runs and the test waits until the stream noticed (a 'reconnecting'), then
 * `bringBack()`. Asserts every written document arrived exactly once, in order.
 */
async function outageWhileWriting(t, env, { takeDown, bringBack, total = 400, outageAfter = 100 }) {
  const stream = openStream(env, uniqueAppName('restart'));
  const rec = record(stream);
  let writer;
  try {
    await opened(rec);
    writer = startWriter(env.coll, 0, total);
    await rec.until((r) => r.changes.length >= outageAfter, `${outageAfter} events before the outage`);
    const writtenAtOutage = writer.written;
    await takeDown();
    await rec.until((r) => r.reconnecting.length >= 1, 'the stream to notice the outage');
    await bringBack();
    await withTimeout(writer.done, 120000, 'the writer to finish');
    await rec.until(
      (r) => r.changes.some((c) => c.fullDocument.seq === total - 1),
      'the last written event',
      60000,
    );
    t.diagnostic(`written at the outage: ${writtenAtOutage}/${total}`);
    t.diagnostic(`writer failures: ${JSON.stringify([...writer.failures])}`);
    t.diagnostic(`stream: ${describe(rec)}`);
    assert.ok(writtenAtOutage < total, 'the writer was still writing when the server went away');
  } finally {
    writer?.stop();
    await stream.close();
  }
  assert.deepEqual(seqs(rec.changes), range(0, total), 'every written document exactly once, in order');
  assert.equal(rec.changes.length, total, 'duplicates: 0');
  assert.equal(rec.errors.length, 0, `never fatal: ${describe(rec)}`);
  assert.ok(rec.reconnecting.length >= 1);
  for (const { error } of rec.reconnecting) assert.equal(error.kind, 'NetworkError', error.message);
  assert.ok(rec.resumed.length >= 1, "'resumed' seen");
  assertOutagesResolved(rec);
  assert.deepEqual(rec.closes, [{ reason: 'closed' }]);
}

// ---------------------------------------------------------------------------------------------

test('crash (kill -9) and restart mid-stream: every written event exactly once, in order', async (t) => {
  if (skipIfExternal(t, 'kill and restart it')) return;
  const env = await setup(t, { storage: 'disk', syncOnCommit: true });
  await outageWhileWriting(t, env, {
    takeDown: () => env.server.kill(),
    bringBack: () => env.server.restart(),
  });
});

test('graceful stop (SIGTERM) and restart mid-stream: every written event exactly once, in order', async (t) => {
  if (skipIfExternal(t, 'stop and restart it')) return;
  const env = await setup(t, { storage: 'disk', syncOnCommit: true });
  await outageWhileWriting(t, env, {
    takeDown: () => env.server.stop(),
    bringBack: () => env.server.restart(),
  });
});

test('down for several backoff rounds: keeps backing off (never fatal), then recovers exactly', async (t) => {
  if (skipIfExternal(t, 'kill and restart it')) return;
  const env = await setup(t, { storage: 'disk', syncOnCommit: true });
  // A short server selection timeout, so that each re-open attempt fails within ~0.5 s while
  // the server is down (the driver's default would wait 30 s per attempt).
  const stream = openStream(env, uniqueAppName('restart'), {}, { serverSelectionTimeoutMS: 500 });
  const rec = record(stream);
  try {
    await opened(rec);
    await insertSeq(env.coll, 0, 50);
    await rec.until((r) => r.changes.length >= 50, 'the first 50 events');
    await env.server.kill();
    await rec.until((r) => r.reconnecting.some((x) => x.attempt >= 3), '3 failed re-open attempts', 60000);
    assert.equal(rec.errors.length, 0, 'still not fatal');
    assert.equal(stream.closed, false);
    await env.server.restart();
    await insertSeq(env.coll, 50, 100);
    await rec.until((r) => r.changes.some((c) => c.fullDocument.seq === 99), 'the 50 events after', 60000);
    t.diagnostic(`stream: ${describe(rec)}`);
  } finally {
    await stream.close();
  }
  assert.deepEqual(seqs(rec.changes), range(0, 100), 'exactly once, in order');
  assert.equal(rec.changes.length, 100);
  assert.equal(rec.errors.length, 0);
  assert.ok(rec.reconnecting.length >= 3);
  for (const { error } of rec.reconnecting) assert.equal(error.kind, 'NetworkError', error.message);
  // One outage, however many rounds it took.
  assert.deepEqual(rec.reconnecting.map((r) => r.attempt), range(1, rec.reconnecting.length + 1));
  assert.equal(rec.resumed.length, 1);
  assertOutagesResolved(rec);
  assert.deepEqual(rec.closes, [{ reason: 'closed' }]);
});

test('step-down while streaming and writing: no loss, the stream continues', async (t) => {
  // Real on a replica set, emulated on SecantusDB: runs against MONGODB_URI too.
  const env = await setup(t);
  const total = 300;
  const stream = openStream(env, uniqueAppName('restart'));
  const rec = record(stream);
  let writer;
  try {
    await opened(rec);
    writer = startWriter(env.coll, 0, total);
    await rec.until((r) => r.changes.length >= 100, '100 events before the step-down');
    const writtenAtStepDown = writer.written;
    const reply = await env.server.stepDown(2); // emulated on SecantusDB; real on MONGODB_URI
    assert.equal(reply.ok, 1, 'the step-down was accepted');
    await withTimeout(writer.done, 120000, 'the writer to finish');
    await rec.until((r) => r.changes.some((c) => c.fullDocument.seq === total - 1), 'the last event', 60000);
    t.diagnostic(`step-down reply ok: ${reply.ok}; written at the step-down: ${writtenAtStepDown}/${total}`);
    t.diagnostic(`writer failures: ${JSON.stringify([...writer.failures])}`);
    t.diagnostic(`stream: ${describe(rec)}`);
    assert.ok(writtenAtStepDown < total, 'the writer was still writing at the step-down');
  } finally {
    writer?.stop();
    await stream.close();
  }
  assert.deepEqual(seqs(rec.changes), range(0, total), 'every written document exactly once, in order');
  assert.equal(rec.changes.length, total, 'duplicates: 0');
  assert.equal(rec.errors.length, 0, `never fatal: ${describe(rec)}`);
  // The stream may or may not have needed a re-open (SecantusDB keeps an open change stream
  // working through a step-down); if it did, each outage ended with 'resumed'.
  assertOutagesResolved(rec);
  assert.deepEqual(rec.closes, [{ reason: 'closed' }]);
});
