'use strict';
// What a stream cannot survive: non-resumable server errors (280, 286 even without labels, 260),
// a pipeline the server rejects, retries running out, and resuming after an invalidate with
// resumeAfter. Each surfaces ONCE — one 'error', one 'close' {reason: 'error', error} with the
// same error, never a 'reconnecting' — and closes the stream; in iterator mode the pending
// next() rejects with it. Also the clean end of a dropped collection (drop, invalidate, close
// {reason: 'invalidate'}) and `startAfter` continuing past it.

const test = require('node:test');
const assert = require('node:assert/strict');
const {
  ResilientChangeStreamError,
  ChangeStreamFatalError,
  ChangeStreamHistoryLostError,
  InvalidResumeTokenError,
  InvalidPipelineError,
  RetriesExhaustedError,
  ServerError,
  StreamClosedError,
} = require('..');
const { setup, insertSeq, withTimeout, seqs, range } = require('./helpers');
const {
  DEADLINE_MS, BACKOFF, uniqueAppName, openStream, freshCollection, record, describe,
} = require('./recorder');

const RESUMABLE = 'ResumableChangeStreamError';

// ---------------------------------------------------------------------------------------------
// Local helpers

const closed = (rec) => rec.closes.length > 0;

/**
 * The stream failed exactly once with `expected`: one 'error' (of that class, code, server
 * code), then one 'close' {reason: 'error', error} carrying the same error object; no
 * 'reconnecting' unless `reconnects` says how many; `closed` is true.
 */
function assertFailedOnce(stream, rec, expected) {
  const { Class, kind, code, codeName, reconnects = 0 } = expected;
  assert.equal(rec.errors.length, 1, `'error' exactly once: ${describe(rec)}`);
  const [error] = rec.errors;
  assert.ok(error instanceof Class, `${error.name} is a ${Class.name}: ${error.message}`);
  assert.ok(error instanceof ResilientChangeStreamError);
  assert.equal(error.name, Class.name);
  assert.equal(error.kind, kind);
  assert.equal(error.code, code);
  assert.deepEqual(error.errorLabels.filter((l) => !error.hasErrorLabel(l)), []);
  if (codeName !== undefined) assert.equal(error.codeName, codeName);
  assert.ok(Array.isArray(error.errorLabels));
  assert.equal(rec.closes.length, 1, `'close' exactly once: ${describe(rec)}`);
  assert.equal(rec.closes[0].reason, 'error');
  assert.equal(rec.closes[0].error, error, "'close' carries the very error emitted");
  assert.equal(rec.reconnecting.length, reconnects, `reconnects: ${describe(rec)}`);
  assert.equal(rec.resumed.length, 0);
  const kinds = rec.log.map((e) => e.kind);
  assert.ok(kinds.indexOf('error') < kinds.indexOf('close'), "'error' comes before 'close'");
  assert.equal(kinds.at(-1), 'close', `nothing after 'close': ${describe(rec)}`);
  assert.equal(stream.closed, true);
}

/**
 * Starts iterating and waits until the server cursor is open. Returns `{ outcome }`: the pending
 * next() as `{ value } | { error }` (wrapped: an async function returning it would await it).
 */
async function startIterating(stream) {
  const opened = new Promise((resolve) => stream.once('resumeTokenChanged', resolve));
  const pending = stream.next();
  const outcome = pending.then(
    (value) => ({ value }),
    (error) => ({ error }),
  );
  await withTimeout(Promise.race([opened, outcome]), DEADLINE_MS, 'the stream to open');
  return { outcome };
}

/** After a fatal error in iterator mode: a further next() throws StreamClosedError (cause: it). */
async function assertIteratorClosedBy(stream, error) {
  await assert.rejects(stream.next(), (err) => {
    assert.ok(err instanceof StreamClosedError, `${err.name}: ${err.message}`);
    assert.equal(err.cause, error);
    return true;
  });
}

// ---------------------------------------------------------------------------------------------
// Non-resumable getMore failures

const FATAL_GETMORE_CASES = [
  {
    name: '280 ChangeStreamFatal',
    data: { errorCode: 280 },
    expected: { Class: ChangeStreamFatalError, kind: 'ChangeStreamFatal', code: 280 },
  },
  {
    // As SecantusDB sends it: no NonResumableChangeStreamError label. Classified by code.
    name: '286 ChangeStreamHistoryLost with errorLabels []',
    data: { errorCode: 286, errorLabels: [] },
    expected: { Class: ChangeStreamHistoryLostError, kind: 'ChangeStreamHistoryLost', code: 286 },
  },
  {
    name: '260 InvalidResumeToken',
    data: { errorCode: 260 },
    expected: { Class: InvalidResumeTokenError, kind: 'InvalidResumeToken', code: 260 },
  },
  {
    // The spec's resume-errorLabels case "change stream does not resume if error does not
    // contain ResumableChangeStreamError": on a 4.4+ server (SecantusDB: wire version 27) the
    // label decides, a code on the pre-4.4 list is not enough.
    name: '6 HostUnreachable WITHOUT the ResumableChangeStreamError label',
    data: { errorCode: 6, errorLabels: [] },
    expected: { Class: ServerError, kind: 'ServerError', code: 6, codeName: 'HostUnreachable' },
  },
];

test('non-resumable getMore failures surface once and close the stream', async (t) => {
  const env = await setup(t);
  let n = 0;
  for (const c of FATAL_GETMORE_CASES) {
    await t.test(`${c.name}: emitter mode`, async () => {
      const e = await freshCollection(env, `emitter${n++}`);
      const appName = uniqueAppName('fatal');
      const stream = openStream(e, appName);
      const rec = record(stream);
      try {
        await rec.until((r) => r.tokens.length > 0, 'the stream to open');
        await insertSeq(e.coll, 0, 3);
        await rec.until((r) => r.changes.length >= 3, 'the first 3 events');
        await e.server.failCommand({ commands: ['getMore'], times: 1, appName, ...c.data });
        await rec.until(closed, "'close'");
      } finally {
        await e.server.failPointOff();
        await stream.close();
      }
      assertFailedOnce(stream, rec, c.expected);
      assert.deepEqual(seqs(rec.changes), range(0, 3), 'the events before the failure, once');
      assert.equal(rec.changes.length, 3);
      // close() after the failure: idempotent, nothing more emitted.
      await stream.close();
      assert.equal(rec.closes.length, 1);
      assert.equal(rec.errors.length, 1);
    });

    await t.test(`${c.name}: iterator mode, the pending next() rejects`, async () => {
      const e = await freshCollection(env, `iterator${n++}`);
      const appName = uniqueAppName('fatal');
      const stream = openStream(e, appName);
      const rec = record(stream, { changes: false });
      try {
        const { outcome } = await startIterating(stream);
        await e.server.failCommand({ commands: ['getMore'], times: 1, appName, ...c.data });
        const { value, error } = await withTimeout(outcome, DEADLINE_MS, 'the pending next() to settle');
        assert.equal(value, undefined, 'next() rejected');
        assert.ok(error instanceof c.expected.Class, `${error?.name}: ${error?.message}`);
        await rec.until(closed, "'close'");
        assertFailedOnce(stream, rec, c.expected);
        assert.equal(rec.errors[0], error, "the 'error' listener got the error next() rejected with");
        await assertIteratorClosedBy(stream, error);
      } finally {
        await e.server.failPointOff();
        await stream.close();
      }
    });
  }
});

// ---------------------------------------------------------------------------------------------
// Bad pipeline, retries exhausted

test('a pipeline the server rejects: InvalidPipelineError once', async (t) => {
  const env = await setup(t);
  // The server answers an unknown stage with 40324 (Location40324, "Unrecognized pipeline
  // stage name"), which the engine classifies as InvalidPipeline.
  const expected = { Class: InvalidPipelineError, kind: 'InvalidPipeline', code: 40324 };

  await t.test('emitter mode', async () => {
    const stream = openStream(env, uniqueAppName('fatal'), { pipeline: [{ $bogus: {} }] });
    const rec = record(stream);
    try {
      await rec.until(closed, "'close'");
    } finally {
      await stream.close();
    }
    assertFailedOnce(stream, rec, expected);
    assert.match(rec.errors[0].message, /\$bogus/);
    assert.equal(rec.changes.length, 0);
    assert.equal(rec.tokens.length, 0);
  });

  await t.test('iterator mode: next() rejects', async () => {
    const stream = openStream(env, uniqueAppName('fatal'), { pipeline: [{ $bogus: {} }] });
    const rec = record(stream, { changes: false });
    try {
      const error = await withTimeout(
        stream.next().then(
          () => assert.fail('next() resolved'),
          (err) => err,
        ),
        DEADLINE_MS,
        'next() to reject',
      );
      assert.ok(error instanceof InvalidPipelineError, `${error.name}: ${error.message}`);
      await rec.until(closed, "'close'");
      assertFailedOnce(stream, rec, expected);
      assert.equal(rec.errors[0], error);
      await assertIteratorClosedBy(stream, error);
    } finally {
      await stream.close();
    }
  });
});

test('backoff.maxRetries: 2 and a persistent failure: RetriesExhaustedError after exactly 2 reconnects', async (t) => {
  const env = await setup(t);
  const cases = [
    // Every getMore and every re-open aggregate fails.
    { name: 'getMore and the re-open aggregates fail', commands: ['getMore', 'aggregate'] },
    // The re-opens succeed but each next getMore fails: no progress, so still one outage and
    // the same retry budget.
    { name: 'only getMores fail (the re-opens succeed)', commands: ['getMore'] },
  ];
  for (const [i, c] of cases.entries()) {
    await t.test(c.name, async () => {
      const e = await freshCollection(env, `retries${i}`);
      const appName = uniqueAppName('fatal');
      const stream = openStream(e, appName, { backoff: { ...BACKOFF, maxRetries: 2 } });
      const rec = record(stream);
      try {
        await rec.until((r) => r.tokens.length > 0, 'the stream to open');
        await insertSeq(e.coll, 0, 2);
        await rec.until((r) => r.changes.length >= 2, 'the first 2 events');
        await e.server.failCommand({
          commands: c.commands,
          mode: 'alwaysOn',
          appName,
          errorCode: 6,
          errorLabels: [RESUMABLE],
        });
        await rec.until(closed, "'close'");
      } finally {
        await e.server.failPointOff();
        await stream.close();
      }
      // Failures 1 and 2 are retried ('reconnecting' #1, #2); failure 3 exhausts the retries.
      assertFailedOnce(stream, rec, {
        Class: RetriesExhaustedError,
        kind: 'RetriesExhausted',
        code: 6, // the last failure's
        reconnects: 2,
      });
      assert.deepEqual(rec.reconnecting.map((r) => r.attempt), [1, 2]);
      for (const { error } of rec.reconnecting) assert.equal(error.code, 6);
      assert.match(rec.errors[0].message, /HostUnreachable|failCommand/);
      assert.deepEqual(seqs(rec.changes), range(0, 2));
      assert.equal(rec.changes.length, 2);
    });
  }
});

// ---------------------------------------------------------------------------------------------
// Invalidate: clean end, resumeAfter fails, startAfter continues

test('a dropped collection: drop, invalidate, clean close; resumeAfter it fails, startAfter continues', async (t) => {
  const env = await setup(t);
  const { coll } = env;
  let invalidateToken;

  await t.test("the stream delivers the inserts, drop and invalidate, then closes {reason: 'invalidate'}", async () => {
    const stream = openStream(env, uniqueAppName('fatal'));
    const rec = record(stream);
    try {
      await rec.until((r) => r.tokens.length > 0, 'the stream to open');
      await insertSeq(coll, 0, 3);
      await coll.drop();
      await rec.until(closed, "'close'");
    } finally {
      await stream.close();
    }
    assert.deepEqual(
      rec.changes.map((c) => c.operationType),
      ['insert', 'insert', 'insert', 'drop', 'invalidate'],
      describe(rec),
    );
    invalidateToken = rec.changes[4]._id;
    assert.deepEqual(seqs(rec.changes), range(0, 3));
    assert.deepEqual(rec.closes, [{ reason: 'invalidate' }], describe(rec));
    assert.equal(rec.errors.length, 0);
    assert.equal(rec.reconnecting.length, 0);
    const kinds = rec.log.map((e) => e.kind);
    assert.equal(kinds.at(-1), 'close');
    assert.ok(kinds.lastIndexOf('change') < kinds.indexOf('close'));
    assert.deepEqual(stream.resumeToken, invalidateToken, 'the token is the invalidate event');
    assert.equal(stream.closed, true);
  });

  // Recreate the collection and write after the invalidate (before any stream below opens:
  // both start from the invalidate token, so they need not be positioned first).
  await insertSeq(coll, 10, 15);

  await t.test('resumeAfter the invalidate token: InvalidResumeTokenError once', async () => {
    assert.ok(invalidateToken, 'needs the token of the previous subtest');
    const stream = openStream(env, uniqueAppName('fatal'), { resumeAfter: invalidateToken });
    const rec = record(stream);
    try {
      await rec.until(closed, "'close'");
    } finally {
      await stream.close();
    }
    assertFailedOnce(stream, rec, {
      Class: InvalidResumeTokenError,
      kind: 'InvalidResumeToken',
      code: 260,
    });
    assert.equal(rec.changes.length, 0);
  });

  await t.test('startAfter the invalidate token: the later events, exactly', async () => {
    assert.ok(invalidateToken, 'needs the token of the previous subtest');
    const stream = openStream(env, uniqueAppName('fatal'), { startAfter: invalidateToken });
    const rec = record(stream);
    try {
      await rec.until((r) => r.changes.length >= 5, 'the 5 events after the invalidate');
      await insertSeq(coll, 15, 20);
      await rec.until((r) => r.changes.length >= 10, '5 more');
    } finally {
      await stream.close();
    }
    assert.deepEqual(rec.changes.map((c) => c.operationType), Array(10).fill('insert'), describe(rec));
    assert.deepEqual(seqs(rec.changes), range(10, 20));
    assert.equal(rec.errors.length, 0);
    assert.equal(rec.reconnecting.length, 0);
    assert.deepEqual(rec.closes, [{ reason: 'closed' }]);
  });
});
