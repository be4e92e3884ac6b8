'use strict';
// Events larger than 16 MB (issue #16).
//
// The test server does NOT enforce the 16 MB limit: it delivers an 18 MB event whole where
// mongod fails the stream with BSONObjectTooLarge (10334). So the failure is injected with a
// failCommand fail point (errorCode 10334), and what follows is real: the server does split
// events with $changeStreamSplitLargeEvent, and the stream joins those real fragments. (It
// also marks every unsplit event `splitEvent: {fragment: 1, of: 1}`, which mongod does not:
// the stream strips that too.)
//
// The large event: an update with fullDocument 'updateLookup' of a 12 MB document that sets a
// 6 MB field — 18 MB with its update description, split into 2 fragments.

const test = require('node:test');
const assert = require('node:assert/strict');
const { ResilientChangeStream, InvalidPipelineError, ChangeStreamFatalError } = require('..');
const { setup, skipWithoutFailPoints, withTimeout, take, waitUntil } = require('./helpers');

const SIX_MB = 6 * 1024 * 1024;

/** Writes: seq 0, the 6 MB insert of 'big', its 18 MB update, seq 1. */
async function writeWithLargeEvent(coll) {
  await coll.insertOne({ _id: 'small-0', seq: 0 });
  await coll.insertOne({ _id: 'big', a: 'a'.repeat(SIX_MB) });
  await coll.updateOne({ _id: 'big' }, { $set: { b: 'b'.repeat(SIX_MB) } });
  await coll.insertOne({ _id: 'small-1', seq: 1 });
}

function streamOptions(env, extra = {}) {
  return {
    uri: env.server.uri,
    db: env.dbName,
    collection: env.collName,
    fullDocument: 'updateLookup',
    maxAwaitTimeMS: 100,
    batchSize: 1, // the fragments come in separate replies: the join holds across them
    backoff: { initialDelayMS: 10, maxDelayMS: 100 },
    ...extra,
  };
}

/** The operation time now: streams opened at it see exactly the writes after it. */
async function now(env) {
  const hello = await env.db.admin().command({ ping: 1 });
  return hello.operationTime;
}

/** Every top-level field name of `events`, with `splitEvent` reported if any carries it. */
function splitMarks(events) {
  return events.filter((e) => Object.hasOwn(e, 'splitEvent')).length;
}

test('a 10334 re-opens with $changeStreamSplitLargeEvent and hands out the joined event as it would be whole', async (t) => {
  const env = await setup(t);
  if (await skipWithoutFailPoints(t, env.server)) return;
  const start = await now(env);
  await writeWithLargeEvent(env.coll);

  // Without the limit (this server delivers the event whole): what the user would see.
  const plain = new ResilientChangeStream(streamOptions(env, { startAtOperationTime: start }));
  const expected = await take(plain, 4);
  await plain.close();

  await env.server.failCommand({ commands: ['getMore'], times: 1, errorCode: 10334 });
  const logged = [];
  const log = (level) => (_fields, message) => logged.push(`${level} ${message}`);
  const logger = { debug: () => {}, info: log('info'), warn: log('warn'), error: log('error') };
  const stream = new ResilientChangeStream(
    streamOptions(env, { startAtOperationTime: start, name: 'large-split', checkpoint: { everyEvents: 1 }, logger }),
  );
  const tokens = [];
  stream.on('resumeTokenChanged', (token) => tokens.push(token));
  const reconnects = [];
  stream.on('reconnecting', (info) => reconnects.push(info));
  const events = await take(stream, 4);
  await stream.close();

  assert.deepEqual(
    events.map((e) => [e.operationType, e.documentKey._id]),
    [
      ['insert', 'small-0'],
      ['insert', 'big'],
      ['update', 'big'],
      ['insert', 'small-1'],
    ],
  );
  assert.equal(splitMarks(events), 0, 'no splitEvent field reaches the user');
  assert.deepEqual(reconnects, [], 'the re-open with the stage is not an outage');
  const update = events[2];
  assert.equal(update.fullDocument.b.length, SIX_MB);
  assert.equal(update.updateDescription.updatedFields.b.length, SIX_MB);
  // The same event as without the limit, but for its token: the last fragment's, the only
  // one that resumes after the whole event.
  for (let i = 0; i < 4; i++) {
    const { _id: _a, ...got } = events[i];
    const { _id: _b, ...want } = expected[i];
    assert.deepEqual(got, want, `event ${i}`);
  }
  assert.deepEqual(
    logged.filter((line) => /re-opening with \$changeStreamSplitLargeEvent/.test(line)),
    ['warn a change event is larger than 16 MB; re-opening with $changeStreamSplitLargeEvent'],
  );

  // Never a position inside the fragment group: the first fragment's token was never a
  // position (the driver reads the fragments raw, for comparison).
  const fragments = await rawFragments(env, start);
  assert.equal(fragments.length, 2);
  assert.deepEqual(update._id, fragments[1]._id, 'the joined event is positioned after its last fragment');
  // One position per event handed out, each its own token (this server gives both fragments
  // the same token, so positions are checked by count and value, not by fragment token).
  assert.deepEqual(
    tokens,
    events.map((e) => e._id),
  );

  // A stream resuming after the joined event continues with the next one.
  const after = new ResilientChangeStream(streamOptions(env, { resumeAfter: update._id, splitLargeEvents: true }));
  t.after(() => after.close());
  const [next] = await take(after, 1);
  assert.equal(next.documentKey._id, 'small-1');
});

/** The fragments of the large update, as the driver hands them out (raw). */
async function rawFragments(env, start) {
  const cs = env.coll.watch([{ $changeStreamSplitLargeEvent: {} }], {
    fullDocument: 'updateLookup',
    startAtOperationTime: start,
  });
  const out = [];
  try {
    while (out.length < 2) {
      const e = await withTimeout(cs.next(), 30000, 'a fragment');
      if (e.splitEvent && e.splitEvent.of > 1) out.push(e);
    }
  } finally {
    await cs.close();
  }
  return out;
}

test("onLargeEvent 'skip': largeEventSkipped names the event, and the stored position moves past it", async (t) => {
  const env = await setup(t);
  const start = await now(env);
  await writeWithLargeEvent(env.coll);
  const options = streamOptions(env, {
    startAtOperationTime: start,
    splitLargeEvents: true,
    onLargeEvent: 'skip',
    name: 'large-skip',
  });
  const stream = new ResilientChangeStream(options);
  const seen = [];
  const skipped = new Promise((resolve) => {
    stream.on('largeEventSkipped', (info) => {
      resolve(info);
      stream.close();
    });
  });
  stream.on('change', (e) => seen.push(e.documentKey._id));
  const info = await withTimeout(skipped, 30000, 'largeEventSkipped');
  await stream.close();
  assert.deepEqual(seen, ['small-0', 'big']);
  assert.equal(info.operationType, 'update');
  assert.deepEqual(info.documentKey, { _id: 'big' });
  assert.deepEqual(info.ns, { db: env.dbName, coll: env.collName });
  assert.equal(info.fragments, 2);
  assert.ok(info.sizeBytes > 2 * SIX_MB && info.sizeBytes < 4 * SIX_MB, `size ${info.sizeBytes}`);
  assert.deepEqual(stream.resumeToken, info.resumeToken);

  // The same name continues after the skipped event.
  const { startAtOperationTime: _s, ...again } = options;
  const next = new ResilientChangeStream(again);
  t.after(() => next.close());
  const [first] = await take(next, 1);
  assert.equal(first.documentKey._id, 'small-1');
});

test("onLargeEvent 'error' closes the stream naming the event's token, documentKey and size", async (t) => {
  const env = await setup(t);
  const start = await now(env);
  await writeWithLargeEvent(env.coll);
  const stream = new ResilientChangeStream(
    streamOptions(env, { startAtOperationTime: start, splitLargeEvents: true, onLargeEvent: 'error' }),
  );
  assert.equal((await stream.next()).documentKey._id, 'small-0');
  assert.equal((await stream.next()).documentKey._id, 'big');
  const err = await stream.next().then(
    () => assert.fail('the large event must fail the stream'),
    (e) => e,
  );
  assert.ok(err instanceof ChangeStreamFatalError, err.name);
  assert.equal(err.code, 10334);
  assert.match(err.message, /larger than 16 MB \(\d+ bytes: update of documentKey \{"_id":"big"\}/);
  assert.match(err.message, /resume token \{"_data":"[0-9a-f]+"\}/);
  assert.match(err.message, /onLargeEvent 'split'/);
});

test('a server without the stage: a clear error naming the position and what to do', async (t) => {
  const env = await setup(t);
  if (await skipWithoutFailPoints(t, env.server)) return;
  await env.coll.insertOne({ seq: 0 });
  // The server's answer to an unknown stage (40324), injected: this one has the stage.
  await env.server.failCommand({ commands: ['aggregate'], times: 1, errorCode: 40324 });
  const stream = new ResilientChangeStream(
    streamOptions(env, { startAtOperationTime: await now(env), splitLargeEvents: true }),
  );
  const err = await stream.next().then(
    () => assert.fail('must fail'),
    (e) => e,
  );
  assert.ok(err instanceof InvalidPipelineError, err.name);
  assert.equal(err.code, 40324);
  assert.match(err.message, /does not support \$changeStreamSplitLargeEvent \(MongoDB 7\.0\+ or 6\.0\.9\+\)/);
  assert.match(err.message, /upgrade/);
});

test('a 10334 again with the stage on (one field over 16 MB) fails instead of looping', async (t) => {
  const env = await setup(t);
  if (await skipWithoutFailPoints(t, env.server)) return;
  const stream = new ResilientChangeStream(streamOptions(env, { startAtOperationTime: await now(env) }));
  await env.coll.insertOne({ seq: 0 });
  // The first getMore fails, then the re-open with the stage fails the same way.
  await env.server.failCommand({ commands: ['getMore', 'aggregate'], times: 2, errorCode: 10334 });
  const err = await stream.next().then(
    () => assert.fail('must fail'),
    (e) => e,
  );
  assert.ok(err instanceof ChangeStreamFatalError, err.name);
  assert.equal(err.code, 10334);
  assert.match(err.message, /even with \$changeStreamSplitLargeEvent/);
});

test('partitions with split large events: each event joined, in its own partition, positioned after its last fragment', async (t) => {
  const env = await setup(t);
  const { partitionOf } = require('./fixtures/partition-member');
  const start = await now(env);
  await writeWithLargeEvent(env.coll);
  const options = streamOptions(env, {
    name: 'large-partitions',
    startAtOperationTime: start,
    splitLargeEvents: true,
    tokenStore: { type: 'mongodb', db: env.dbName, collection: 'positions' },
    checkpoint: { everyEvents: 1 },
    group: { partitions: 2, member: 'solo', leaseMs: 1000 },
  });
  const read = async (want) => {
    const stream = new ResilientChangeStream(options);
    const got = [];
    stream.on('change', (event, ctx) => got.push({ event, ctx }));
    await waitUntil(() => got.length >= want, `${want} events`, 60000);
    await stream.close();
    return got;
  };
  const first = await read(4);
  assert.deepEqual(
    first.map(({ event }) => [event.operationType, event.documentKey._id]),
    [
      ['insert', 'small-0'],
      ['insert', 'big'],
      ['update', 'big'],
      ['insert', 'small-1'],
    ],
  );
  for (const { event, ctx } of first) {
    assert.equal(ctx.partition, partitionOf(event.documentKey, 2), `${event.documentKey._id}'s partition`);
    assert.equal(splitMarks([event]), 0);
  }
  assert.equal(first[2].event.fullDocument.b.length, SIX_MB, 'the update joined whole');
  assert.equal(first[2].event.updateDescription.updatedFields.b.length, SIX_MB);

  // Every partition's position was stored after its last event (the update's, its last
  // fragment's): a restart hands out only what comes next.
  await env.coll.insertOne({ _id: 'small-2', seq: 2 });
  const second = await read(1);
  assert.deepEqual(
    second.map(({ event }) => event.documentKey._id),
    ['small-2'],
  );
});
