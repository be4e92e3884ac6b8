'use strict';
// health() tells the truth, and the stall watchdog re-opens a stream whose server stops
// answering.

const test = require('node:test');
const assert = require('node:assert/strict');
const { watch } = require('..');
const { setup, insertSeq, nextN, seqs, range, waitForEvent, withTimeout, skipIfExternal, withUniqueAppName } = require('./helpers');

const FAST = { maxAwaitTimeMS: 100, backoff: { initialDelayMS: 5, maxDelayMS: 50 } };

test('health() follows the stream through start, events, an outage, and close', async (t) => {
  const { server, coll } = await setup(t);
  const stream = watch(coll, [], FAST);
  t.after(() => stream.close());

  const initial = stream.health();
  assert.equal(initial.state, 'starting');
  assert.equal(initial.eventsDelivered, 0);
  assert.equal(initial.lastEventAt, null);
  assert.equal(initial.reconnects, 0);

  const first = stream.next();
  await waitForEvent(stream, 'resumeTokenChanged'); // positioned
  await insertSeq(coll, 0, 5);
  const events = [await first, ...(await nextN(stream, 4))];
  assert.deepEqual(seqs(events), range(0, 5));
  const streaming = stream.health();
  assert.equal(streaming.state, 'streaming');
  assert.equal(streaming.eventsDelivered, 5);
  assert.ok(streaming.lastEventAt instanceof Date);
  assert.ok(streaming.lastTokenAt instanceof Date);
  assert.equal(typeof streaming.lagMs, 'number');
  assert.ok(streaming.lagMs >= 0 && streaming.lagMs < 60000, `lag ${streaming.lagMs}`);
  assert.equal(streaming.currentBackoffMs, null);

  // An outage with a long backoff: health() shows it while it lasts.
  // Scoped to the slow stream by its appName: the first stream's getMores must not take it.
  const { uri, appName } = withUniqueAppName(server.uri, 'health-slow');
  await server.failCommand({ commands: ['getMore'], errorCode: 6, errorLabels: ['ResumableChangeStreamError'], times: 1, appName });
  const slow = watch(coll, [], { uri, ...FAST, backoff: { initialDelayMS: 60000, multiplier: 1, maxDelayMS: 60000 } });
  t.after(() => slow.close());
  const reconnecting = waitForEvent(slow, 'reconnecting');
  const pending = slow.next();
  await reconnecting;
  const during = slow.health();
  assert.equal(during.state, 'reconnecting');
  assert.equal(during.reconnects, 1);
  assert.equal(typeof during.currentBackoffMs, 'number');
  assert.equal(during.lastError.kind, 'ServerError');
  assert.equal(during.lastError.code, 6);
  const rejected = assert.rejects(pending, { kind: 'StreamClosed' });
  await slow.close();
  await rejected;
  assert.equal(slow.health().state, 'closed');

  await stream.close();
  assert.equal(stream.health().state, 'closed');
  assert.equal(stream.health().eventsDelivered, 5);
});

test('health() reports failed with the error after a fatal error', async (t) => {
  const { server, coll } = await setup(t);
  const stream = watch(coll, [], FAST);
  const first = stream.next();
  await waitForEvent(stream, 'resumeTokenChanged');
  await server.failCommand({ commands: ['getMore'], errorCode: 280, errorLabels: [], times: 1 });
  await assert.rejects(withTimeout(first, 30000, 'the fatal error'), { kind: 'ChangeStreamFatal', code: 280 });
  const health = stream.health();
  assert.equal(health.state, 'failed');
  assert.equal(health.lastError.kind, 'ChangeStreamFatal');
  assert.equal(health.lastError.code, 280);
});

test('stall watchdog: a getMore that hangs is abandoned and the stream re-opens', async (t) => {
  const { server, coll } = await setup(t);
  const stream = watch(coll, [], { ...FAST, stallTimeoutMS: 500 });
  t.after(() => stream.close());
  const seen = [];
  for (const name of ['stalled', 'reconnecting', 'resumed']) stream.on(name, (info) => seen.push([name, info]));
  const first = stream.next();
  await waitForEvent(stream, 'resumeTokenChanged');
  // The server holds the next getMore for 5 s: far beyond maxAwaitTimeMS + stallTimeoutMS.
  await server.failCommand({ commands: ['getMore'], blockConnection: true, blockTimeMS: 5000, times: 1 });
  const stalled = await waitForEvent(stream, 'stalled', () => true, 20000);
  assert.ok(stalled.silentMs >= 500, `silent ${stalled.silentMs}`);
  await insertSeq(coll, 0, 10);
  const events = [await withTimeout(first, 30000, 'first event'), ...(await nextN(stream, 9))];
  assert.deepEqual(seqs(events), range(0, 10), 'no event lost or repeated across the stall');
  const names = seen.map(([name]) => name);
  assert.deepEqual(names.slice(0, 2), ['stalled', 'reconnecting']);
  assert.equal(seen[1][1].error.kind, 'Stalled');
  assert.ok(names.includes('resumed'), `events: ${names}`);
});

test('stall watchdog: a server that stops answering (SIGSTOP) is detected and survived', async (t) => {
  if (skipIfExternal(t, 'freeze its process')) return;
  const { server, coll } = await setup(t);
  const stream = watch(coll, [], { ...FAST, stallTimeoutMS: 500 });
  t.after(() => stream.close());
  const first = stream.next();
  await waitForEvent(stream, 'resumeTokenChanged');
  await insertSeq(coll, 0, 3);
  const before = [await withTimeout(first, 30000, 'first event'), ...(await nextN(stream, 2))];
  assert.deepEqual(seqs(before), range(0, 3));
  // Notifications reach an iterator while it waits: keep a next() pending over the freeze.
  const pending = stream.next();
  process.kill(server.pid, 'SIGSTOP');
  let resumed = false;
  try {
    await waitForEvent(stream, 'stalled', () => true, 20000);
  } finally {
    process.kill(server.pid, 'SIGCONT');
  }
  stream.once('resumed', () => {
    resumed = true;
  });
  await insertSeq(coll, 3, 6);
  const after = [await withTimeout(pending, 60000, 'an event after the freeze'), ...(await nextN(stream, 2, 60000))];
  assert.deepEqual(seqs(after), range(3, 6), 'nothing lost, nothing repeated');
  assert.ok(resumed, "'resumed' after the re-open");
});

test('oplogWindow() reports the headroom, and headroomLow fires as the position falls off', async (t) => {
  if (skipIfExternal(t, 'prune its oplog')) return;
  const { server, coll } = await setup(t, { oplogMaxEntries: 20 });
  // batchSize 1: the engine reads at most one event ahead of this idle consumer.
  const stream = watch(coll, [], { ...FAST, batchSize: 1, headroomLowFraction: 0.5, headroomCheckIntervalMS: 100 });
  t.after(() => stream.close());
  const first = stream.next();
  await waitForEvent(stream, 'resumeTokenChanged');
  await insertSeq(coll, 0, 1);
  assert.deepEqual(seqs([await withTimeout(first, 30000, 'first event')]), [0]);

  const healthy = await stream.oplogWindow();
  assert.equal(healthy.available, true, healthy.reason);
  assert.ok(healthy.oldest instanceof Date && healthy.newest instanceof Date && healthy.position instanceof Date);
  assert.equal(healthy.lost, false);
  assert.ok(healthy.headroomMs >= 0);

  // The consumer stops; writes go on and the oplog is pruned past its position.
  const low = waitForEvent(stream, 'headroomLow', () => true, 30000);
  await insertSeq(coll, 1, 100);
  await server.pruneOplog();
  // The server prunes on its own as writes pass its 20-entry bound, so the one
  // headroomLow of this episode may come before the forced prune (still inside the
  // window, but low) or after it (lost): either way it reports low.
  const window = await low;
  assert.equal(window.low, true);
  assert.ok(window.lost || window.headroomMs >= 0, 'a position inside the window has headroom');
  const fallen = await stream.oplogWindow();
  assert.equal(fallen.low, true);
  assert.equal(fallen.lost, true, 'the position is older than the oldest entry');
  assert.ok(fallen.headroomMs <= 0);
});
