'use strict';
// The swap test: code written for the driver's `collection.watch()` — emitter, iterator,
// `for await`, `stream()`, error handling by code and label, driver options — run twice, once
// with `collection.watch` and once with this package's `watch`, must observe the same thing.
// Where the product deliberately differs (it keeps resuming where the driver gives up) the
// scenario says so; README "Differences from the driver" lists every difference.

const test = require('node:test');
const assert = require('node:assert/strict');
const { once } = require('node:events');
const { MongoServerError } = require('mongodb');
const { watch } = require('..');
const { setup, insertSeq, withTimeout, skipWithoutFailPoints } = require('./helpers');

const DEADLINE_MS = 30000;

/** The two ways of opening a stream that the scenarios are written against. */
const OPENERS = {
  driver: (coll, pipeline, options) => coll.watch(pipeline, options),
  product: (coll, pipeline, options) => watch(coll, pipeline, options),
};

/**
 * Both the driver and the product open lazily (first next() / listener) and say nothing when
 * the cursor is open, so the scenarios write markers until `seen()` reports one came through
 * (a condition polled with a deadline, not a sleep); real documents are written after that.
 */
async function untilOpen(coll, seen) {
  const deadline = Date.now() + DEADLINE_MS;
  while (!seen()) {
    if (Date.now() > deadline) throw new Error('the stream did not open');
    await coll.insertOne({ marker: true });
    await new Promise((resolve) => setImmediate(resolve));
    await coll.findOne({ _id: null }); // one round trip: lets a getMore answer
  }
}

/** next() until a real (non-marker) change. */
async function nextReal(stream) {
  for (;;) {
    const change = await withTimeout(stream.next(), DEADLINE_MS, 'next()');
    if (!change.fullDocument?.marker) return change;
  }
}

/** Iterator mode: the first next() starts it; resolves once a marker came through it. */
async function openIterator(stream, coll) {
  let first = null;
  const pending = stream.next().then((c) => (first = c));
  await untilOpen(coll, () => first !== null);
  await pending;
}

// ---------------------------------------------------------------------------------------------
// The scenarios: written as one writes code for the driver. Each returns what it observed.

const SCENARIOS = {
  /** Iterator: next(), hasNext(), the driver's public fields. */
  async iterator(open, coll) {
    const pipeline = [{ $match: { operationType: 'insert' } }];
    const stream = open(coll, pipeline, { fullDocument: 'updateLookup', batchSize: 10, maxAwaitTimeMS: 300, comment: 'swap' });
    try {
      await openIterator(stream, coll);
      await insertSeq(coll, 0, 3);
      const seqs = [];
      while (seqs.length < 3) seqs.push((await nextReal(stream)).fullDocument.seq);
      return {
        seqs,
        has: await (async () => {
          await coll.insertOne({ seq: 3 });
          return stream.hasNext();
        })(),
        fields: { pipeline: stream.pipeline, comment: stream.options.comment },
        tokenIsObject: typeof stream.resumeToken === 'object' && stream.resumeToken !== null,
      };
    } finally {
      await stream.close();
    }
  },

  /** Emitter: on('change'), close(), on('close'). */
  async emitter(open, coll) {
    const stream = open(coll, [{ $match: { operationType: 'insert' } }]);
    const seen = [];
    let markers = 0;
    const done = new Promise((resolve) => {
      stream.on('change', (change) => {
        if (change.fullDocument.marker) markers += 1;
        else seen.push(change.fullDocument.seq);
        if (seen.length === 3) resolve();
      });
    });
    const closed = once(stream, 'close');
    await untilOpen(coll, () => markers > 0);
    await insertSeq(coll, 0, 3);
    await withTimeout(done, DEADLINE_MS, '3 changes');
    await stream.close();
    await withTimeout(closed, DEADLINE_MS, "'close'");
    return { seen, closed: stream.closed };
  },

  /** for await, then break: the loop closes the stream. */
  async forAwait(open, coll) {
    const stream = open(coll, []);
    await openIterator(stream, coll);
    await insertSeq(coll, 0, 4);
    const seqs = [];
    for await (const change of stream) {
      if (change.fullDocument?.marker) continue;
      seqs.push(change.fullDocument.seq);
      if (seqs.length === 3) break;
    }
    return { seqs, closedAfterBreak: stream.closed };
  },

  /** stream(): a Readable of the changes. */
  async readable(open, coll) {
    const stream = open(coll, []);
    await openIterator(stream, coll);
    const readable = stream.stream();
    // The driver's Readable may report the getMore that close() cut off (43): only errors
    // before close() count.
    let closing = false;
    const errors = [];
    readable.on('error', (err) => {
      if (!closing) errors.push(err.message);
    });
    const got = [];
    const enough = new Promise((resolve) => {
      readable.on('data', (change) => {
        if (!change.fullDocument?.marker) got.push(change.fullDocument.seq);
        if (got.length === 2) resolve();
      });
    });
    await insertSeq(coll, 0, 2);
    await withTimeout(enough, DEADLINE_MS, '2 changes');
    closing = true;
    await stream.close();
    return { got, errors };
  },

  /** Error handling by code, label and class, as driver code does it. */
  async nonResumable(open, coll, server) {
    const stream = open(coll, []);
    await openIterator(stream, coll);
    await server.failCommand({ commands: ['getMore'], times: 1, errorCode: 280, errorLabels: ['NonResumableChangeStreamError'] });
    try {
      let outcome = null;
      for (;;) {
        try {
          const change = await withTimeout(stream.next(), DEADLINE_MS, 'the error');
          if (!change.fullDocument?.marker) break;
        } catch (err) {
          outcome = err;
          break;
        }
      }
      return {
        code: outcome?.code,
        codeName: outcome?.codeName,
        nonResumable: outcome?.hasErrorLabel?.('NonResumableChangeStreamError'),
        isServerError: outcome instanceof MongoServerError,
      };
    } finally {
      await server.failPointOff();
      await stream.close();
    }
  },

  /** A labelled resumable getMore error: both resume and lose nothing. */
  async resumable(open, coll, server) {
    const stream = open(coll, []);
    await openIterator(stream, coll);
    await server.failCommand({ commands: ['getMore'], times: 1, errorCode: 6, errorLabels: ['ResumableChangeStreamError'] });
    try {
      await insertSeq(coll, 0, 3);
      const seqs = [];
      while (seqs.length < 3) seqs.push((await nextReal(stream)).fullDocument.seq);
      return { seqs };
    } finally {
      await server.failPointOff();
      await stream.close();
    }
  },
};

test('code written for collection.watch() observes the same with watch()', async (t) => {
  const env = await setup(t);
  let n = 0;
  for (const [name, scenario] of Object.entries(SCENARIOS)) {
    await t.test(name, async (st) => {
      if ((name === 'nonResumable' || name === 'resumable') && (await skipWithoutFailPoints(st, env.server))) return;
      const results = {};
      for (const [who, open] of Object.entries(OPENERS)) {
        const coll = await env.db.createCollection(`swap_${name}_${who}_${n++}`);
        results[who] = await scenario(open, coll, env.server);
      }
      assert.deepEqual(results.product, results.driver);
    });
  }
});
