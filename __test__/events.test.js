'use strict';
// What a ResilientChangeStream delivers: exactly the driver's events (same documents, same
// BSON classes, same order, same count), filtered by a pipeline, at collection, database and
// cluster level, and resume tokens that continue exactly where an event left off.

const test = require('node:test');
const assert = require('node:assert/strict');
const { isDeepStrictEqual } = require('node:util');
const { ObjectId, Long, Decimal128, Timestamp, Binary, MinKey, MaxKey } = require('mongodb');
const { watch } = require('..');
const { setup, uniqueDb, insertSeq, withTimeout, waitForEvent, seqs, range } = require('./helpers');

const FAST = { maxAwaitTimeMS: 100, backoff: { initialDelayMS: 50 } };
const DEADLINE_MS = 30000;

/** watch() with small waits so that tests stay fast; `options` win. */
function ours(target, pipeline, options = {}) {
  const stream = watch(target, pipeline, { ...FAST, ...options });
  return stream;
}

/**
 * Starts iterating (`next()`) and resolves once the server cursor is open, i.e. the stream
 * reported its first position (the open reply's postBatchResumeToken) or its first event.
 * Returns `{ first }`: the pending first `next()` (wrapped, so that awaiting this function does
 * not wait for the event itself).
 */
async function startIterating(stream) {
  const opened = waitForEvent(stream, 'resumeTokenChanged', () => true, DEADLINE_MS);
  const first = stream.next();
  first.catch(() => {}); // observed by the caller
  await Promise.race([opened, first]);
  return { first };
}

/** Resolves when the emitter-mode stream is open (see startIterating). */
function opened(stream) {
  return waitForEvent(stream, 'resumeTokenChanged', () => true, DEADLINE_MS);
}

/** Pulls with next() until `isLast(event)`; returns every event including the last. */
async function nextUntil(stream, isLast, what, ms = DEADLINE_MS) {
  const events = [];
  await withTimeout(
    (async () => {
      for (;;) {
        const event = await stream.next();
        if (event === null) throw new Error(`stream closed after ${events.length} events`);
        events.push(event);
        if (isLast(event)) return;
      }
    })(),
    ms,
    `${what} (got ${events.length} events)`,
  );
  return events;
}

const isSentinel = (event) => event.operationType === 'insert' && event.fullDocument?.sentinel === true;

/** The operationTime of a write, via a session (what a user would take for startAtOperationTime). */
async function writeOperationTime(client, write) {
  const session = client.startSession();
  try {
    await write(session);
    assert.ok(session.operationTime instanceof Timestamp, 'the write reply carries an operationTime');
    return session.operationTime;
  } finally {
    await session.endSession();
  }
}

/** Every BSON type a user document commonly holds, with values that catch lossy decoding. */
function richDocument(n) {
  return {
    _id: new ObjectId(),
    n,
    when: new Date(Date.UTC(2026, 0, 2, 3, 4, 5, 678) + n),
    bigLong: Long.fromString('9007199254740993'), // 2^53 + 1: not representable as a number
    negBigLong: Long.fromString('-9223372036854775808'),
    smallLong: Long.fromNumber(42 + n),
    dec: Decimal128.fromString('1234567890.123456789012345678901234'),
    ts: new Timestamp({ t: 1700000000 + n, i: 7 }),
    bin: new Binary(Buffer.from([0, 1, 2, 254, 255]), 0),
    uuid: new Binary(Buffer.alloc(16, 0xab), Binary.SUBTYPE_UUID),
    double: 1.5,
    negZero: -0,
    int: 7,
    bool: true,
    nothing: null,
    str: 'héllo ✓ \u0000 end',
    regex: /ab+c/i,
    min: new MinKey(),
    max: new MaxKey(),
    nested: {
      a: { b: [1, { c: 'x', d: new Date(0), e: Long.fromString('-9007199254740993') }], empty: {} },
      arr: [Long.fromString('9007199254740995'), 3, 'three', [new ObjectId(), []]],
    },
  };
}

/**
 * Writes inserts, updates (set/unset/inc, nested paths), a replace and deletes covering the
 * types above. Returns the operation types in write order; the caller ends with a sentinel.
 */
async function writeMixedOps(coll) {
  const [a, b, c] = [richDocument(1), richDocument(2), richDocument(3)];
  await coll.insertOne(a);
  await coll.insertOne(b);
  await coll.insertOne(c);
  await coll.updateOne(
    { _id: a._id },
    {
      $set: {
        'nested.a.b.1.c': 'y',
        dec: Decimal128.fromString('-0.000000000000000000000000000000001'),
        newLong: Long.fromString('9223372036854775807'),
        when: new Date(Date.UTC(1969, 11, 31, 23, 59, 59, 999)),
        ts: new Timestamp({ t: 1, i: 1 }),
      },
      $unset: { str: '' },
      $inc: { int: 1, smallLong: Long.fromNumber(1) },
    },
  );
  await coll.updateOne({ _id: c._id }, { $set: { bin: new Binary(Buffer.from('payload')) } });
  await coll.replaceOne({ _id: b._id }, { replaced: true, big: Long.fromString('9007199254740997'), doc: { x: [1, 2] } });
  await coll.deleteOne({ _id: a._id });
  const [d, e] = [richDocument(4), richDocument(5)];
  await coll.insertMany([d, e]);
  return ['insert', 'insert', 'insert', 'update', 'update', 'replace', 'delete', 'insert', 'insert'];
}

async function driverNextUntil(driverStream, isLast, what) {
  const events = [];
  await withTimeout(
    (async () => {
      for (;;) {
        const event = await driverStream.next();
        events.push(event);
        if (isLast(event)) return;
      }
    })(),
    DEADLINE_MS,
    `${what} (got ${events.length} events)`,
  );
  return events;
}

// --- (1) exact event types, compared with the driver --------------------------------------

for (const fullDocument of [undefined, 'updateLookup']) {
  const label = fullDocument ?? 'default';
  test(`events equal the driver's, document for document, with the driver's BSON classes (fullDocument: ${label})`, async (t) => {
    const { client, coll } = await setup(t);
    // Both streams start at the first write's operationTime, so both see exactly the same
    // history. Default: both tail live (reading starts before the writes). 'updateLookup': the
    // lookup reads the document as it is when the event is read, so both read only after every
    // write, and both look up the same (final) documents.
    const live = fullDocument === undefined;
    const options = fullDocument ? { fullDocument } : {};
    const start = await writeOperationTime(client, async (session) => {
      await coll.insertOne({ first: true }, { session });
    });
    const driverStream = coll.watch([], { ...options, startAtOperationTime: start });
    t.after(() => driverStream.close());
    const stream = ours(coll, [], { ...options, startAtOperationTime: start });
    t.after(() => stream.close());
    const read = () => [
      driverNextUntil(driverStream, isSentinel, "the driver's events"),
      nextUntil(stream, isSentinel, 'our events'),
    ];
    const reading = live ? read() : null;
    reading?.forEach((p) => p.catch(() => {})); // awaited below

    const expectedTypes = ['insert', ...(await writeMixedOps(coll))];
    // A document that is updated and never touched again: its looked-up fullDocument is known.
    const kept = await coll.insertOne({ kept: 1, long: Long.fromString('9007199254740993') });
    await coll.updateOne({ _id: kept.insertedId }, { $set: { kept: 2 } });
    expectedTypes.push('insert', 'update');
    await coll.insertOne({ sentinel: true });
    expectedTypes.push('insert');

    const [theirs, mine] = await Promise.all(reading ?? read());

    // Precondition: the driver saw what we wrote (guards against comparing two wrong lists).
    // expectedTypes counts the { first: true } insert at the start and the sentinel at the end.
    assert.deepEqual(
      theirs.map((e) => e.operationType),
      expectedTypes,
    );
    assert.equal(mine.length, theirs.length, 'same number of events as the driver');
    for (let i = 0; i < theirs.length; i++) {
      assert.deepStrictEqual(mine[i], theirs[i], `event ${i} (${theirs[i].operationType}) equals the driver's`);
    }

    // The classes are the driver's own (not a second copy of bson).
    const richInsert = mine.find((e) => e.operationType === 'insert' && e.fullDocument.n === 1);
    const doc = richInsert.fullDocument;
    assert.ok(richInsert._id && typeof richInsert._id._data === 'string', 'the token is { _data: <string> }');
    assert.ok(richInsert.clusterTime instanceof Timestamp, 'clusterTime is a driver Timestamp');
    if ('wallTime' in richInsert) assert.ok(richInsert.wallTime instanceof Date);
    assert.ok(richInsert.documentKey._id instanceof ObjectId);
    assert.ok(doc._id instanceof ObjectId);
    assert.ok(doc.when instanceof Date);
    assert.ok(doc.bigLong instanceof Long, 'int64 beyond 2^53 stays a Long');
    assert.equal(doc.bigLong.toString(), '9007199254740993');
    assert.equal(doc.negBigLong.toString(), '-9223372036854775808');
    assert.equal(doc.smallLong, 43, 'a small int64 is promoted to a number (promoteLongs)');
    assert.ok(doc.dec instanceof Decimal128);
    assert.equal(doc.dec.toString(), '1234567890.123456789012345678901234');
    assert.ok(doc.ts instanceof Timestamp);
    assert.ok(doc.ts.equals(new Timestamp({ t: 1700000001, i: 7 })));
    assert.ok(doc.bin instanceof Binary);
    assert.deepEqual([...doc.bin.buffer], [0, 1, 2, 254, 255]);
    assert.ok(doc.uuid instanceof Binary);
    assert.equal(doc.uuid.sub_type, Binary.SUBTYPE_UUID);
    assert.ok(doc.min instanceof MinKey);
    assert.ok(doc.max instanceof MaxKey);
    assert.ok(doc.nested.a.b[1].e instanceof Long);
    assert.ok(doc.nested.arr[0] instanceof Long);
    assert.ok(doc.nested.arr[3][0] instanceof ObjectId);

    const updates = mine.filter((e) => e.operationType === 'update');
    const richUpdate = updates[0];
    assert.ok(richUpdate.updateDescription.updatedFields.newLong instanceof Long);
    assert.ok(richUpdate.updateDescription.updatedFields.dec instanceof Decimal128);
    assert.ok(richUpdate.updateDescription.updatedFields.when instanceof Date);
    assert.deepEqual(richUpdate.updateDescription.removedFields, ['str']);

    const keptUpdate = updates.at(-1);
    assert.deepStrictEqual(keptUpdate.documentKey, { _id: kept.insertedId });
    if (fullDocument === 'updateLookup') {
      // The looked-up document is the collection's current one, decoded like the driver does.
      const current = await coll.findOne({ _id: kept.insertedId });
      assert.deepStrictEqual(keptUpdate.fullDocument, current);
      assert.ok(keptUpdate.fullDocument.long instanceof Long);
      // The update of a document deleted later looks up nothing.
      assert.equal(richUpdate.fullDocument, null);
    } else {
      assert.equal('fullDocument' in keptUpdate, false, 'no fullDocument on updates by default');
    }
    const replace = mine.find((e) => e.operationType === 'replace');
    assert.ok(replace.fullDocument.big instanceof Long);
    assert.equal(replace.fullDocument.big.toString(), '9007199254740997');
    const del = mine.find((e) => e.operationType === 'delete');
    assert.equal('fullDocument' in del, false);

    await stream.close();
  });
}

// --- (2) order and count ----------------------------------------------------------------------

test('500 inserts arrive in order, each exactly once, through for await', async (t) => {
  const { coll } = await setup(t);
  const stream = ours(coll, [], { batchSize: 64 });
  t.after(() => stream.close());
  const got = [];
  let sentinel = null;
  const isOpen = opened(stream);
  const consumer = (async () => {
    for await (const event of stream) {
      if (isSentinel(event)) {
        sentinel = event;
        break;
      }
      got.push(event);
    }
  })();
  await Promise.race([isOpen, consumer]);
  for (let from = 0; from < 500; from += 100) await insertSeq(coll, from, from + 100);
  await coll.insertOne({ sentinel: true });
  await withTimeout(consumer, 60000, `500 events through for await (got ${got.length})`);

  assert.ok(sentinel, 'the sentinel written last arrived');
  assert.equal(got.length, 500, 'exactly 500 events before the sentinel');
  assert.deepEqual(seqs(got), range(0, 500));
  assert.equal(new Set(got.map((e) => e._id._data)).size, 500, '500 distinct resume tokens');
  assert.equal(stream.closed, true, 'leaving the for await loop closed the stream');
});

test("500 inserts arrive in order, each exactly once, through on('change')", async (t) => {
  const { coll } = await setup(t);
  const stream = ours(coll, [], { batchSize: 64 });
  t.after(() => stream.close());
  const got = [];
  const errors = [];
  stream.on('error', (err) => errors.push(err));
  const done = new Promise((resolve) => {
    stream.on('change', (event) => {
      if (isSentinel(event)) resolve();
      else got.push(event);
    });
  });
  await opened(stream);
  for (let from = 0; from < 500; from += 100) await insertSeq(coll, from, from + 100);
  await coll.insertOne({ sentinel: true });
  await withTimeout(done, 60000, `500 change events (got ${got.length})`);
  await stream.close();

  assert.deepEqual(errors, []);
  assert.equal(got.length, 500, 'exactly 500 events before the sentinel');
  assert.deepEqual(seqs(got), range(0, 500));
  assert.equal(new Set(got.map((e) => e._id._data)).size, 500, '500 distinct resume tokens');
});

// --- (3) pipeline ---------------------------------------------------------------------------------

test('a $match pipeline delivers exactly the matching events, in order', async (t) => {
  const { coll } = await setup(t);
  const inserts = ours(coll, [{ $match: { operationType: 'insert', 'fullDocument.keep': true } }]);
  t.after(() => inserts.close());
  const removals = ours(coll, [
    { $match: { operationType: { $in: ['update', 'delete'] } } },
    { $project: { operationType: 1, documentKey: 1 } },
  ]);
  t.after(() => removals.close());
  const { first: firstInsert } = await startIterating(inserts);
  const { first: firstRemoval } = await startIterating(removals);

  const docs = range(0, 30).map((seq) => ({ _id: new ObjectId(), seq, keep: seq % 3 === 0 }));
  await coll.insertMany(docs);
  await coll.updateMany({}, { $set: { touched: true } });
  await coll.deleteMany({ keep: false });
  await coll.insertOne({ seq: 1000, keep: true, sentinel: true });
  const end = await coll.insertOne({ seq: 1001, keep: false });
  await coll.deleteOne({ _id: end.insertedId });

  const got = [await withTimeout(firstInsert, DEADLINE_MS, 'the first matching insert')];
  if (!isSentinel(got[0])) got.push(...(await nextUntil(inserts, isSentinel, 'matching inserts')));
  assert.deepEqual(
    got.map((e) => e.operationType),
    got.map(() => 'insert'),
  );
  assert.deepEqual(seqs(got), [...range(0, 30).filter((s) => s % 3 === 0), 1000]);

  const isEnd = (e) => e.operationType === 'delete' && e.documentKey._id.equals(end.insertedId);
  const removed = [await withTimeout(firstRemoval, DEADLINE_MS, 'the first update/delete')];
  if (!isEnd(removed[0])) removed.push(...(await nextUntil(removals, isEnd, 'updates and deletes')));
  const updates = removed.filter((e) => e.operationType === 'update');
  const deletes = removed.filter((e) => e.operationType === 'delete');
  assert.equal(removed.length, 30 + 20 + 1, '30 updates, 20 deletes and the final delete');
  assert.deepEqual(
    removed.map((e) => e.operationType),
    [...Array(30).fill('update'), ...Array(21).fill('delete')],
  );
  const key = (e) => e.documentKey._id.toHexString();
  assert.deepEqual(new Set(updates.map(key)), new Set(docs.map((d) => d._id.toHexString())));
  assert.deepEqual(
    new Set(deletes.map(key)),
    new Set([...docs.filter((d) => !d.keep).map((d) => d._id.toHexString()), end.insertedId.toHexString()]),
  );
  for (const e of removed) {
    assert.deepEqual(Object.keys(e).sort(), ['_id', 'documentKey', 'operationType'], 'the $project stage applied');
  }
  await inserts.close();
  await removals.close();
});

// --- (4) database and cluster streams -------------------------------------------------------

test('watch(db) and watch(client) deliver the events of several collections (and databases)', async (t) => {
  const { client, db, coll, dbName } = await setup(t);
  const items = await db.createCollection('items');
  const otherDbName = uniqueDb('rcs_other');
  const other = await client.db(otherDbName).createCollection('other');
  t.after(() => client.db(otherDbName).dropDatabase().catch(() => {}));

  const dbStream = ours(db, []);
  t.after(() => dbStream.close());
  const clusterStream = ours(client, []);
  t.after(() => clusterStream.close());
  const { first: dbFirst } = await startIterating(dbStream);
  const { first: clusterFirst } = await startIterating(clusterStream);

  const order = await coll.insertOne({ seq: 0 });
  const item = await items.insertOne({ seq: 1 });
  await other.insertOne({ seq: 2 });
  await coll.updateOne({ _id: order.insertedId }, { $set: { paid: true } });
  await items.deleteOne({ _id: item.insertedId });
  await other.insertOne({ seq: 3 });
  await coll.insertOne({ sentinel: true });

  const describe = (e) => `${e.operationType} ${e.ns.db === dbName ? 'db' : e.ns.db === otherDbName ? 'other' : e.ns.db}.${e.ns.coll}`;

  const dbEvents = [await withTimeout(dbFirst, DEADLINE_MS, 'the first database event')];
  dbEvents.push(...(await nextUntil(dbStream, isSentinel, 'database events')));
  assert.deepEqual(dbEvents.map(describe), [
    'insert db.orders',
    'insert db.items',
    'update db.orders',
    'delete db.items',
    'insert db.orders',
  ]);
  assert.deepEqual(dbEvents[1].documentKey, { _id: item.insertedId });

  // A cluster stream sees every database; other tests (MONGODB_URI) may write elsewhere.
  const ours2 = (e) => e.ns?.db === dbName || e.ns?.db === otherDbName;
  const clusterEvents = [await withTimeout(clusterFirst, DEADLINE_MS, 'the first cluster event')];
  clusterEvents.push(...(await nextUntil(clusterStream, (e) => isSentinel(e) && e.ns.db === dbName, 'cluster events')));
  assert.deepEqual(clusterEvents.filter(ours2).map(describe), [
    'insert db.orders',
    'insert db.items',
    'insert other.other',
    'update db.orders',
    'delete db.items',
    'insert other.other',
    'insert db.orders',
  ]);
  assert.deepEqual(
    clusterEvents.filter((e) => e.ns?.db === otherDbName).map((e) => e.fullDocument.seq),
    [2, 3],
  );
  // The same write is the same event in both streams.
  assert.deepStrictEqual(clusterEvents.filter((e) => e.ns?.db === dbName), dbEvents);
  await dbStream.close();
  await clusterStream.close();
});

// --- (5) resume tokens ------------------------------------------------------------------------

/**
 * Writes `n` single-document inserts (distinct cluster times) and a sentinel, all before any
 * stream reads, then reads them all with `batchSize` from the time before the first write.
 * Returns the events and the resume token after each one.
 */
async function historyWithTokens(t, { n, batchSize }) {
  const ctx = await setup(t);
  const hello = await ctx.client.db('admin').command({ hello: 1 });
  const before = hello.operationTime ?? (await ctx.client.db('admin').command({ ping: 1 })).operationTime;
  assert.ok(before instanceof Timestamp, 'the server reports an operationTime');
  for (let seq = 0; seq < n; seq++) await ctx.coll.insertOne({ seq });
  await ctx.coll.insertOne({ sentinel: true });

  const stream = ours(ctx.coll, [], { startAtOperationTime: before, batchSize });
  t.after(() => stream.close());
  const events = [];
  const tokens = [];
  await withTimeout(
    (async () => {
      while (events.length < n + 1) {
        const event = await stream.next();
        events.push(event);
        tokens.push(stream.getResumeToken());
      }
    })(),
    DEADLINE_MS,
    `${n + 1} events`,
  );
  await stream.close();
  assert.deepEqual(seqs(events.slice(0, n)), range(0, n), 'hello.operationTime replays every later write');
  assert.ok(isSentinel(events[n]));
  return { ...ctx, before, events, tokens };
}

/** Opens a stream with `options` and reads until the sentinel (or fails on a deadline). */
async function replay(t, coll, options) {
  const stream = ours(coll, [], options);
  t.after(() => stream.close());
  const events = await nextUntil(stream, isSentinel, `a replay with ${Object.keys(options).join(', ')}`);
  await stream.close();
  return events;
}

test('resume tokens: the token after each event resumes exactly after it (resumeAfter and startAfter)', async (t) => {
  const n = 12;
  const batchSize = 5;
  const { coll, events, tokens } = await historyWithTokens(t, { n, batchSize });

  // After each event the token is that event's _id, except possibly at a batch end, where it
  // may be the batch's postBatchResumeToken. At most one per batch may differ.
  const differing = tokens.filter((token, i) => !isDeepStrictEqual(token, events[i]._id)).length;
  assert.ok(
    differing <= Math.ceil((n + 1) / batchSize) + 1,
    `${differing} tokens differ from their event's _id: more than one per batch`,
  );
  for (let i = 1; i < tokens.length; i++) {
    assert.notDeepStrictEqual(tokens[i], tokens[i - 1], `the token moved with event ${i}`);
  }
  for (const token of tokens) assert.equal(typeof token._data, 'string');

  // resumeAfter the token taken after event k: exactly events k+1.. (no loss, no duplicate).
  for (let k = 0; k < n; k++) {
    const replayed = await replay(t, coll, { resumeAfter: tokens[k] });
    assert.deepStrictEqual(replayed, events.slice(k + 1), `resumeAfter the token after event ${k}`);
  }
  // startAfter likewise (sampled: first, inside a batch, around a batch end, last).
  for (const k of [0, 2, batchSize - 1, batchSize, n - 1]) {
    const replayed = await replay(t, coll, { startAfter: tokens[k] });
    assert.deepStrictEqual(replayed, events.slice(k + 1), `startAfter the token after event ${k}`);
  }
  // resumeAfter an event's own _id also continues right after it.
  const replayed = await replay(t, coll, { resumeAfter: events[3]._id });
  assert.deepStrictEqual(replayed, events.slice(4));
});

test('resume tokens: resumeToken is the start token before any event, and a new stream starts from it', async (t) => {
  const { coll, events } = await historyWithTokens(t, { n: 3, batchSize: 100 });
  const stream = ours(coll, [], { resumeAfter: events[0]._id });
  t.after(() => stream.close());
  assert.deepStrictEqual(stream.resumeToken, events[0]._id, 'resumeToken starts as resumeAfter');
  assert.deepStrictEqual(stream.getResumeToken(), events[0]._id);
  const first = await withTimeout(stream.next(), DEADLINE_MS, 'the first event');
  assert.deepStrictEqual(first, events[1]);
  await stream.close();

  const fresh = ours(coll, []);
  t.after(() => fresh.close());
  assert.equal(fresh.resumeToken, null, 'no start option: null before any event');
  await fresh.close();

  const started = ours(coll, [], { startAfter: events[1]._id });
  t.after(() => started.close());
  assert.deepStrictEqual(started.resumeToken, events[1]._id, 'resumeToken starts as startAfter');
  await started.close();
});

test('startAtOperationTime replays from an event clusterTime and from a write operationTime', async (t) => {
  const n = 8;
  const { client, coll, events } = await historyWithTokens(t, { n, batchSize: 3 });
  // Precondition: single-document writes got distinct, increasing cluster times.
  for (let i = 1; i < events.length; i++) {
    assert.ok(events[i].clusterTime.greaterThan(events[i - 1].clusterTime), `clusterTime of event ${i} increases`);
  }
  for (const k of [0, 3, n - 1, n]) {
    const replayed = await replay(t, coll, { startAtOperationTime: events[k].clusterTime });
    assert.deepStrictEqual(replayed, events.slice(k), `startAtOperationTime = clusterTime of event ${k}`);
  }

  // A write's operationTime (what a user gets back from the server) starts at that write.
  await coll.deleteOne({ sentinel: true });
  const at = await writeOperationTime(client, (session) => coll.insertOne({ seq: 100 }, { session }));
  await coll.insertOne({ seq: 101 });
  await coll.insertOne({ sentinel: true });
  const replayed = await replay(t, coll, { startAtOperationTime: at });
  assert.deepEqual(
    replayed.map((e) => (isSentinel(e) ? 'sentinel' : e.fullDocument.seq)),
    [100, 101, 'sentinel'],
  );
  assert.ok(replayed[0].clusterTime.equals(at), "the first event's clusterTime is the write's operationTime");
});

// --- (6) resumeTokenChanged -------------------------------------------------------------------

test("resumeTokenChanged fires for each event handed out, with the stream's new token (iterator)", async (t) => {
  const { coll, events: history } = await historyWithTokens(t, { n: 10, batchSize: 4 });
  const stream = ours(coll, [], { resumeAfter: history[0]._id, batchSize: 4 });
  t.after(() => stream.close());
  const emitted = [];
  stream.on('resumeTokenChanged', (token) => emitted.push(token));
  const got = [];
  for (let i = 1; i < history.length; i++) {
    const before = emitted.length;
    const event = await withTimeout(stream.next(), DEADLINE_MS, `event ${i}`);
    got.push(event);
    assert.ok(emitted.length > before, `resumeTokenChanged fired for event ${i}`);
    assert.deepStrictEqual(emitted.at(-1), stream.resumeToken, `it carried the token after event ${i}`);
  }
  assert.deepStrictEqual(got, history.slice(1));
  await stream.close();
});

test("resumeTokenChanged fires after each event's listeners completed (emitter)", async (t) => {
  const { coll, events: history } = await historyWithTokens(t, { n: 10, batchSize: 4 });
  const stream = ours(coll, [], { resumeAfter: history[0]._id, batchSize: 4 });
  t.after(() => stream.close());
  const log = [];
  stream.on('resumeTokenChanged', (token) => log.push({ kind: 'token', token }));
  const got = [];
  const done = new Promise((resolve, reject) => {
    stream.on('error', reject);
    stream.on('change', async (event) => {
      log.push({ kind: 'change', event, tokenDuring: stream.resumeToken });
      got.push(event);
      await Promise.resolve(); // an async listener: the token moves only after it settles
      if (isSentinel(event)) resolve();
    });
  });
  await withTimeout(done, DEADLINE_MS, 'all events');
  await stream.close();
  assert.deepStrictEqual(got, history.slice(1));

  const changes = log.map((entry, index) => ({ ...entry, index })).filter((e) => e.kind === 'change');
  let previousToken = history[0]._id;
  for (const [i, change] of changes.entries()) {
    // While the listener runs, the token still points before this event.
    assert.deepStrictEqual(change.tokenDuring, previousToken, `token during event ${i + 1} is the previous one`);
    const nextChange = changes[i + 1]?.index ?? log.length;
    const tokensAfter = log.slice(change.index + 1, nextChange).filter((e) => e.kind === 'token');
    assert.ok(tokensAfter.length >= 1, `resumeTokenChanged fired after event ${i + 1}`);
    previousToken = tokensAfter.at(-1).token;
  }
  assert.deepStrictEqual(stream.resumeToken, previousToken);
});

