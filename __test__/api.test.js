'use strict';
// The public surface of ResilientChangeStream: exclusive iterator/emitter modes, option
// validation, how listeners are awaited and what a failing listener does, the Readable that
// keeps resuming, hasNext/tryNext, and the exported error classes.

const test = require('node:test');
const assert = require('node:assert/strict');
const { Writable } = require('node:stream');
const { MongoClient, Timestamp } = require('mongodb');
const rcs = require('..');
const {
  ResilientChangeStream,
  watch,
  ResilientChangeStreamError,
  ChangeStreamHistoryLostError,
  InvalidResumeTokenError,
  ChangeStreamFatalError,
  AuthorizationError,
  InvalidPipelineError,
  RetriesExhaustedError,
  ServerError,
  InvalidOptionError,
  ModeConflictError,
  StreamClosedError,
  HandlerError,
} = rcs;
const { setup, insertSeq, withTimeout, waitForEvent, nextN, seqs, range, opened, startIterating, skipWithoutFailPoints, withUniqueAppName } = require('./helpers');

const FAST = { maxAwaitTimeMS: 100, backoff: { initialDelayMS: 50 } };
const DEADLINE_MS = 30000;

function ours(target, pipeline, options = {}) {
  return watch(target, pipeline, { ...FAST, ...options });
}

/**
 * The 'close' event within a deadline. Not waitForEvent: events.once() rejects on an 'error'
 * event, which precedes 'close' when the stream fails.
 */
function closeEvent(stream, ms = DEADLINE_MS) {
  return withTimeout(new Promise((resolve) => stream.once('close', resolve)), ms, "'close'");
}

const isSentinel = (event) => event.operationType === 'insert' && event.fullDocument?.sentinel === true;

/** Asserts `err` is an instance of `Class` with the class's stable kind and name. */
function assertErrorClass(err, Class, kind) {
  assert.ok(err instanceof Class, `expected a ${Class.name}, got ${err?.name}: ${err?.message}`);
  assert.ok(err instanceof ResilientChangeStreamError);
  assert.ok(err instanceof Error);
  assert.equal(err.kind, kind);
  assert.equal(err.name, Class.name);
  return true;
}

// --- (1) iterator vs emitter -------------------------------------------------------------------

test('iterator and emitter modes exclude each other: ModeConflictError both ways', async (t) => {
  const { coll } = await setup(t);

  // Iterator first: adding a 'change' listener throws, and the listener is not added.
  const iterated = ours(coll, []);
  t.after(() => iterated.close());
  const { pending: first } = await startIterating(iterated);
  const listener = () => {};
  assert.throws(() => iterated.on('change', listener), (err) => assertErrorClass(err, ModeConflictError, 'ModeConflict'));
  assert.throws(() => iterated.once('change', listener), ModeConflictError);
  assert.throws(() => iterated.prependListener('change', listener), ModeConflictError);
  assert.equal(iterated.listenerCount('change'), 0, 'the conflicting listener was not added');
  assert.equal(iterated.closed, false, 'a mode conflict does not close the stream');
  await coll.insertOne({ seq: 0 });
  const event = await withTimeout(first, DEADLINE_MS, 'the iterator event');
  assert.equal(event.fullDocument.seq, 0, 'the iterator still works after the conflict');
  await iterated.close();

  // Emitter first: every iterator entry point throws or rejects with ModeConflictError.
  const emitting = ours(coll, []);
  t.after(() => emitting.close());
  const got = [];
  const firstChange = new Promise((resolve) => {
    emitting.on('change', (e) => {
      got.push(e);
      resolve();
    });
  });
  await opened(emitting);
  const isConflict = (err) => assertErrorClass(err, ModeConflictError, 'ModeConflict');
  await assert.rejects(emitting.next(), isConflict);
  await assert.rejects(emitting.hasNext(), isConflict);
  await assert.rejects(emitting.tryNext(), isConflict);
  assert.throws(() => emitting.stream(), isConflict);
  await assert.rejects(
    (async () => {
      for await (const e of emitting) assert.fail(`for await got ${e.operationType}`);
    })(),
    isConflict,
  );
  assert.equal(emitting.closed, false, 'a mode conflict does not close the stream');
  await coll.insertOne({ seq: 1 });
  await withTimeout(firstChange, DEADLINE_MS, 'the emitter event');
  assert.deepEqual(seqs(got), [1], 'the emitter still works after the conflicts');
  // Removing the listener does not return the stream to iterator mode.
  emitting.removeAllListeners('change');
  await assert.rejects(emitting.next(), ModeConflictError);
  await emitting.close();
});

// --- (2) options ----------------------------------------------------------------------------------

const BAD_OPTIONS = [
  [{ batchSize: 'x' }, /option "batchSize" must be a non-negative integer, got string/],
  [{ batchSize: 1.5 }, /option "batchSize" must be a non-negative integer/],
  [{ maxAwaitTimeMS: -1 }, /option "maxAwaitTimeMS" must be a non-negative integer/],
  [{ pipeline: 'x' }, /option "pipeline" must be an array of stage documents, got string/],
  [{ pipeline: [5] }, /option "pipeline" must be an array of stage documents/],
  [{ backoff: { multiplier: 0 } }, /option "backoff\.multiplier" must be a number ≥ 1, got 0/],
  [{ backoff: { maxRetries: -1 } }, /option "backoff\.maxRetries" must be a non-negative integer/],
  [{ backoff: { initialDelayMS: 'x' } }, /option "backoff\.initialDelayMS" must be a non-negative integer, got string/],
  [{ backoff: { jitter: true } }, /unknown option "backoff\.jitter"/],
  [{ backoff: 5 }, /option "backoff" must be an object, got number/],
  [{ bogus: 1 }, /unknown option "bogus"/],
  [{ fullDocument: 5 }, /option "fullDocument" must be a non-empty string/],
  [{ startAtOperationTime: 5 }, /option "startAtOperationTime" must be a BSON Timestamp, got number/],
  [{ resumeAfter: 'x' }, /option "resumeAfter" must be an object, got string/],
  [{ showExpandedEvents: 'x' }, /option "showExpandedEvents" must be a boolean, got string/],
  [{ promoteLongs: 'yes' }, /option "promoteLongs" must be a boolean, got string/],
  [{ resumeAfter: { _data: 'aa' }, startAfter: { _data: 'aa' } }, /"resumeAfter", "startAfter".*mutually exclusive/],
  [
    { resumeAfter: { _data: 'aa' }, startAtOperationTime: new Timestamp({ t: 1, i: 1 }) },
    /"resumeAfter".*"startAtOperationTime".*mutually exclusive/,
  ],
];

test('invalid options throw InvalidOptionError naming the option and the expected type', async (t) => {
  // No server needed: options are validated before anything connects.
  const uri = 'mongodb://127.0.0.1:1/?directConnection=true';
  const client = new MongoClient(uri);
  t.after(() => client.close());
  const coll = client.db('rcs_api_options').collection('orders');
  for (const [bad, message] of BAD_OPTIONS) {
    const what = JSON.stringify(bad);
    const check = (err) => {
      assertErrorClass(err, InvalidOptionError, 'InvalidOption');
      assert.match(err.message, message, `message for ${what}`);
      return true;
    };
    assert.throws(() => new ResilientChangeStream({ uri, db: 'd', collection: 'c', ...bad }), check, `constructor ${what}`);
    assert.throws(() => watch(coll, bad), check, `watch(coll, ${what})`);
  }
  assert.throws(() => watch(coll, 'x'), /option "pipeline" must be an array of stage documents, got string/);
});

test('watch() of something that is not a Collection, Db or MongoClient throws a clear InvalidOptionError', () => {
  for (const [target, type] of [
    [42, 'number'],
    [null, 'null'],
    [undefined, 'undefined'],
    ['orders', 'string'],
    [{}, 'object'],
  ]) {
    assert.throws(
      () => watch(target),
      (err) => {
        assertErrorClass(err, InvalidOptionError, 'InvalidOption');
        assert.match(err.message, /watch\(\) target must be a Collection, Db or MongoClient/);
        assert.match(err.message, new RegExp(`got ${type}$`));
        return true;
      },
      `watch(${String(target)})`,
    );
  }
  assert.throws(() => new ResilientChangeStream(42), InvalidOptionError);
  assert.throws(() => new ResilientChangeStream({ db: 'd' }), /option "uri"/);
});

// --- (3) listeners -------------------------------------------------------------------------------

test("async 'change' listeners are awaited one event at a time, listeners in registration order", async (t) => {
  const { coll } = await setup(t);
  const stream = ours(coll, []);
  t.after(() => stream.close());
  const log = [];
  const errors = [];
  stream.on('error', (err) => errors.push(err));
  let inFlight = 0;
  let maxInFlight = 0;
  stream.on('change', async (event) => {
    const id = isSentinel(event) ? 's' : event.fullDocument.seq;
    inFlight += 1;
    maxInFlight = Math.max(maxInFlight, inFlight);
    log.push(`A start ${id}`);
    // Simulated work of varying length: an implementation that did not await would interleave.
    await new Promise((resolve) => setTimeout(resolve, typeof id === 'number' ? (id % 3) * 4 : 0));
    log.push(`A end ${id}`);
    inFlight -= 1;
  });
  stream.on('change', (event) => {
    log.push(`B ${isSentinel(event) ? 's' : event.fullDocument.seq}`);
  });
  const done = new Promise((resolve) => {
    stream.on('change', async (event) => {
      const id = isSentinel(event) ? 's' : event.fullDocument.seq;
      log.push(`C start ${id}`);
      await new Promise((r) => setImmediate(r));
      log.push(`C end ${id}`);
      if (id === 's') resolve();
    });
  });
  await opened(stream);
  await insertSeq(coll, 0, 12);
  await coll.insertOne({ sentinel: true });
  await withTimeout(done, DEADLINE_MS, 'the sentinel through all listeners');
  await stream.close();

  const expected = [...range(0, 12), 's'].flatMap((id) => [
    `A start ${id}`,
    `A end ${id}`,
    `B ${id}`,
    `C start ${id}`,
    `C end ${id}`,
  ]);
  assert.deepEqual(log, expected);
  assert.equal(maxInFlight, 1, 'never two events in a listener at once');
  assert.deepEqual(errors, []);
});

for (const style of ['throws', 'rejects']) {
  test(`a listener that ${style} closes the stream with a HandlerError (cause: what it threw), without moving the token past the event`, async (t) => {
    const { coll, client } = await setup(t);
    const hello = await client.db('admin').command({ hello: 1 });
    // Five events exist before the stream reads, so events after the failing one are available.
    await insertSeq(coll, 0, 5);
    const stream = ours(coll, [], { startAtOperationTime: hello.operationTime });
    t.after(() => stream.close());
    const boom = new Error(`listener ${style}`);
    const seen = [];
    const tokenAtEntry = [];
    const errors = [];
    const closes = [];
    const tokensEmitted = [];
    stream.on('error', (err) => errors.push(err));
    stream.on('close', (info) => closes.push(info));
    stream.on('resumeTokenChanged', (token) => tokensEmitted.push(token));
    const closed = closeEvent(stream);
    const listener =
      style === 'throws'
        ? (event) => {
            seen.push(event);
            tokenAtEntry.push(stream.resumeToken);
            if (event.fullDocument.seq === 2) throw boom;
          }
        : async (event) => {
            seen.push(event);
            tokenAtEntry.push(stream.resumeToken);
            await new Promise((r) => setImmediate(r));
            if (event.fullDocument.seq === 2) throw boom;
          };
    stream.on('change', listener);
    await closed;

    assert.deepEqual(seqs(seen), [0, 1, 2], 'no event after the failing one');
    assert.equal(errors.length, 1, "'error' emitted once");
    const [err] = errors;
    assert.ok(err instanceof HandlerError, `a HandlerError, got ${err?.constructor?.name}`);
    assert.equal(err.kind, 'HandlerFailed');
    assert.equal(err.cause, boom, "its cause is the listener's own error");
    assert.match(err.message, new RegExp(`"change" listener threw: listener ${style}`));
    assert.deepStrictEqual(err.event, seen[2], 'it names the event being processed');
    assert.deepStrictEqual(err.resumeToken, tokenAtEntry[2], 'and the position before it');
    assert.equal(closes.length, 1, "'close' emitted once");
    assert.deepEqual(Object.keys(closes[0]).sort(), ['error', 'reason']);
    assert.equal(closes[0].reason, 'error');
    assert.equal(closes[0].error, err);
    assert.equal(stream.closed, true);
    // The token is the one after event 1: exactly what it was when the failing listener began.
    assert.deepStrictEqual(stream.resumeToken, tokenAtEntry[2]);
    assert.notDeepStrictEqual(stream.resumeToken, seen[2]._id, 'the token did not move past the failing event');
    assert.deepStrictEqual(tokensEmitted.at(-1), stream.resumeToken, 'no resumeTokenChanged for the failing event');

    // Resuming from the stored token redelivers the failing event first: nothing is lost.
    const again = ours(coll, [], { resumeAfter: stream.resumeToken });
    t.after(() => again.close());
    const redelivered = await nextN(again, 3);
    assert.deepEqual(seqs(redelivered), [2, 3, 4]);
    assert.deepStrictEqual(redelivered[0], seen[2]);
    await again.close();
    // Still nothing more reached the failed stream's listener.
    assert.deepEqual(seqs(seen), [0, 1, 2]);
    assert.equal(closes.length, 1);
  });
}

// --- (5) stream() -------------------------------------------------------------------------------

test('stream() is a Readable of the events that keeps going across resumable getMore failures', async (t) => {
  const { server, coll, dbName, collName } = await setup(t);
  if (await skipWithoutFailPoints(t, server)) return;
  const { uri, appName } = withUniqueAppName(server.uri, 'readable');
  const stream = new ResilientChangeStream({ uri, db: dbName, collection: collName, ...FAST });
  t.after(() => stream.close());
  const reconnects = [];
  const resumed = [];
  const closes = [];
  stream.on('reconnecting', (info) => reconnects.push(info));
  stream.on('resumed', (info) => resumed.push(info));
  stream.on('close', (info) => closes.push(info));

  const readable = stream.stream({ transform: (e) => (isSentinel(e) ? 'sentinel' : e.fullDocument.seq) });
  const got = [];
  const waiters = [];
  const reached = (n) =>
    new Promise((resolve) => {
      if (got.length >= n) resolve();
      else waiters.push({ n, resolve });
    });
  const sink = new Writable({
    objectMode: true,
    write(value, _encoding, callback) {
      got.push(value);
      for (const w of waiters) if (got.length >= w.n) w.resolve();
      callback();
    },
  });
  readable.pipe(sink);
  await opened(stream);

  await insertSeq(coll, 0, 50);
  await withTimeout(reached(50), DEADLINE_MS, `50 events through the Readable (got ${got.length})`);
  assert.deepEqual(got, range(0, 50));

  // The next two getMores fail with a resumable error: the stream re-opens twice.
  const secondReconnect = waitForEvent(stream, 'reconnecting', (info) => info.attempt === 2, DEADLINE_MS);
  await server.failCommand({
    commands: ['getMore'],
    errorCode: 6,
    errorLabels: ['ResumableChangeStreamError'],
    times: 2,
    appName,
  });
  await secondReconnect;
  await insertSeq(coll, 50, 100);
  await coll.insertOne({ sentinel: true });
  await withTimeout(reached(101), DEADLINE_MS, `101 values through the Readable (got ${got.length})`);

  assert.deepEqual(got, [...range(0, 100), 'sentinel'], 'every event exactly once, in order');
  assert.deepEqual(
    reconnects.map((r) => r.attempt),
    [1, 2],
  );
  for (const r of reconnects) {
    assert.ok(r.error instanceof ResilientChangeStreamError);
    assert.equal(r.error.code, 6);
    assert.ok(r.error.errorLabels.includes('ResumableChangeStreamError'));
    assert.equal(typeof r.delayMs, 'number');
  }
  assert.equal(resumed.length, 1, "one 'resumed' after the outage");
  assert.equal(resumed[0].attempts, 2);
  assert.ok(resumed[0].downtimeMs >= 0);

  // Destroying the Readable closes the stream.
  const closed = closeEvent(stream);
  readable.destroy();
  await closed;
  assert.equal(stream.closed, true);
  assert.deepEqual(closes, [{ reason: 'closed' }]);
});

test('stream() ends when the stream is closed', async (t) => {
  const { coll } = await setup(t);
  const stream = ours(coll, []);
  t.after(() => stream.close());
  const readable = stream.stream();
  const got = [];
  const ended = new Promise((resolve, reject) => {
    readable.on('data', (e) => got.push(e.fullDocument.seq));
    readable.on('end', resolve);
    readable.on('error', reject);
  });
  await opened(stream);
  await insertSeq(coll, 0, 3);
  while (got.length < 3) await withTimeout(new Promise((r) => readable.once('data', r)), DEADLINE_MS, 'data');
  await stream.close();
  await withTimeout(ended, DEADLINE_MS, "the Readable's end");
  assert.deepEqual(got, [0, 1, 2]);
});

// --- (6) hasNext / tryNext -----------------------------------------------------------------------

test('tryNext() answers null when nothing is there, and no event is lost to it', async (t) => {
  const { coll } = await setup(t);
  const stream = ours(coll, []);
  t.after(() => stream.close());

  assert.equal(await stream.tryNext(), null, 'nothing yet (the stream is only opening)');
  if (stream.resumeToken === null) await opened(stream);
  assert.equal(await stream.tryNext(), null, 'open, nothing written');
  // The getMore started by that tryNext() is still waiting; what it returns is kept.
  await insertSeq(coll, 0, 3);
  assert.deepEqual(seqs(await nextN(stream, 3)), [0, 1, 2]);

  // hasNext() waits for an event without consuming it.
  const has = stream.hasNext();
  await insertSeq(coll, 3, 6);
  assert.equal(await withTimeout(has, DEADLINE_MS, 'hasNext()'), true);
  assert.equal(await stream.hasNext(), true, 'hasNext() again: still there');
  const e3 = await stream.tryNext();
  assert.equal(e3?.fullDocument.seq, 3, 'after hasNext() true, tryNext() returns the event');
  assert.deepEqual(seqs(await nextN(stream, 2)), [4, 5]);
  assert.equal(await stream.tryNext(), null, 'nothing more');

  // Polling with tryNext() alone, while writes happen, still gets every event once, in order.
  const polled = [];
  const writes = (async () => {
    for (let seq = 6; seq < 26; seq++) await coll.insertOne({ seq });
  })();
  await withTimeout(
    (async () => {
      while (polled.length < 20) {
        const e = await stream.tryNext();
        if (e !== null) polled.push(e);
      }
    })(),
    DEADLINE_MS,
    `20 events by tryNext() (got ${polled.length})`,
  );
  await writes;
  assert.deepEqual(seqs(polled), range(6, 26));
  assert.equal(await stream.tryNext(), null);

  // A hasNext() waiting when the stream is closed resolves false.
  const waiting = stream.hasNext();
  await stream.close();
  assert.equal(await withTimeout(waiting, DEADLINE_MS, 'hasNext() after close'), false);
});

// --- (7) errors ---------------------------------------------------------------------------------

test('error classes are exported with stable codes and names', () => {
  const table = [
    [ChangeStreamHistoryLostError, 'ChangeStreamHistoryLost'],
    [InvalidResumeTokenError, 'InvalidResumeToken'],
    [ChangeStreamFatalError, 'ChangeStreamFatal'],
    [AuthorizationError, 'Unauthorized'],
    [InvalidPipelineError, 'InvalidPipeline'],
    [RetriesExhaustedError, 'RetriesExhausted'],
    [ServerError, 'ServerError'],
    [InvalidOptionError, 'InvalidOption'],
    [ModeConflictError, 'ModeConflict'],
    [StreamClosedError, 'StreamClosed'],
  ];
  for (const [Class, kind] of table) {
    assert.equal(rcs[Class.name], Class, `${Class.name} is exported under its own name`);
    const cause = new Error('root');
    const err = new Class('message', { kind: 'SomethingElse', code: 286, codeName: 'X', errorLabels: ['L'], cause });
    assertErrorClass(err, Class, kind);
    assert.equal(err.hasErrorLabel('L'), true);
    assert.equal(err.hasErrorLabel('M'), false);
    assert.equal(err.message, 'message');
    assert.equal(err.code, 286);
    assert.equal(err.codeName, 'X');
    assert.deepEqual(err.errorLabels, ['L']);
    assert.equal(err.cause, cause);
    assert.match(String(err.stack), new RegExp(`^${Class.name}: message`));
    assert.deepEqual(new Class('m').errorLabels, []);
  }
  // The base class keeps a kind it was given (kinds the engine adds later reach the user).
  const base = new ResilientChangeStreamError('m', { kind: 'SomethingNew' });
  assert.equal(base.kind, 'SomethingNew');
  assert.equal(base.name, 'ResilientChangeStreamError');
  assert.ok(base instanceof Error);
});

test('a pipeline the server rejects fails next() with InvalidPipelineError and closes the stream', async (t) => {
  const { coll } = await setup(t);
  const stream = ours(coll, [{ $bogusStage: 1 }]);
  t.after(() => stream.close());
  const closes = [];
  stream.on('close', (info) => closes.push(info));
  const closed = closeEvent(stream);
  let failure;
  await assert.rejects(withTimeout(stream.next(), DEADLINE_MS, 'next()'), (err) => {
    failure = err;
    assertErrorClass(err, InvalidPipelineError, 'InvalidPipeline');
    assert.equal(typeof err.code, 'number');
    return true;
  });
  await closed;
  assert.equal(stream.closed, true);
  assert.equal(closes.length, 1);
  assert.equal(closes[0].reason, 'error');
  assert.equal(closes[0].error, failure);
  await assert.rejects(stream.next(), (err) => {
    assertErrorClass(err, StreamClosedError, 'StreamClosed');
    assert.equal(err.cause, failure, 'StreamClosedError.cause is the error that closed the stream');
    return true;
  });
});
