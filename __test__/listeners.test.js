'use strict';
// The listener policy (README "Listener errors"), against the live server. Processing
// listeners (`change`, cursor `data`, `resumeTokenChanged`) that throw close the reader with a
// HandlerError and leave the position before the item; observer listeners that throw become
// process warnings and the reader goes on; an unhandled 'error' still surfaces as Node's.

const test = require('node:test');
const assert = require('node:assert/strict');
const { execFile } = require('node:child_process');
const { promisify } = require('node:util');
const { watch, ResilientCursor, HandlerError } = require('..');
const { LISTENER_WARNING } = require('../lib/listeners');
const { setup, insertSeq, withTimeout, waitForEvent, waitUntil, nextN, seqs, opened, skipWithoutFailPoints } = require('./helpers');
const { uniqueAppName, withUriOptions } = require('./recorder');

const FAST = { maxAwaitTimeMS: 100, backoff: { initialDelayMS: 5, maxDelayMS: 50 } };
const DEADLINE_MS = 30000;

function closeEvent(reader, ms = DEADLINE_MS) {
  return withTimeout(new Promise((resolve) => reader.once('close', resolve)), ms, "'close'");
}

/** The ResilientChangeStreamListenerWarnings emitted while the test runs. */
function listenerWarnings(t) {
  const warnings = [];
  const onWarning = (w) => {
    if (w.name === LISTENER_WARNING) warnings.push(w);
  };
  process.on('warning', onWarning);
  t.after(() => process.off('warning', onWarning));
  return warnings;
}

test('a resumeTokenChanged listener that throws: HandlerError, the token stays before that event, a resume redelivers it', async (t) => {
  const { coll } = await setup(t);
  const stream = watch(coll, [], FAST);
  t.after(() => stream.close());
  const boom = new Error('cannot persist the token');
  const seen = [];
  let armed = false;
  stream.on('resumeTokenChanged', () => {
    if (armed) throw boom;
  });
  const closed = closeEvent(stream);
  const errors = [];
  stream.on('error', (err) => errors.push(err));
  stream.on('change', (event) => {
    seen.push(event);
    if (event.fullDocument.seq === 1) armed = true;
  });
  await opened(stream);
  await insertSeq(coll, 0, 3);
  const info = await closed;

  assert.deepEqual(seqs(seen), [0, 1], 'no event after the one whose token could not be kept');
  assert.equal(errors.length, 1);
  const [err] = errors;
  assert.ok(err instanceof HandlerError);
  assert.equal(err.kind, 'HandlerFailed');
  assert.equal(err.cause, boom);
  assert.match(err.message, /"resumeTokenChanged" listener threw: cannot persist the token/);
  assert.deepStrictEqual(err.event, seen[1]);
  assert.deepStrictEqual(err.resumeToken, stream.resumeToken, 'the position before seq 1');
  assert.notDeepStrictEqual(stream.resumeToken, seen[1]._id, 'the token did not move past seq 1');
  assert.deepEqual(info, { reason: 'error', error: err });

  const again = watch(coll, [], { ...FAST, resumeAfter: err.resumeToken });
  t.after(() => again.close());
  assert.deepEqual(seqs(await nextN(again, 2)), [1, 2], 'seq 1 is delivered again');
});

test('a resumeTokenChanged listener that throws in iterator mode: next() rejects with the HandlerError', async (t) => {
  const { coll } = await setup(t);
  const stream = watch(coll, [], FAST);
  t.after(() => stream.close());
  const boom = new Error('no');
  let armed = false;
  stream.on('resumeTokenChanged', () => {
    if (armed) throw boom;
  });
  const first = stream.next();
  await opened(stream);
  await insertSeq(coll, 0, 2);
  assert.equal((await withTimeout(first, DEADLINE_MS, 'seq 0')).fullDocument.seq, 0);
  armed = true;
  const err = await withTimeout(stream.next(), DEADLINE_MS, 'next()').then(
    () => assert.fail('next() resolved'),
    (e) => e,
  );
  assert.ok(err instanceof HandlerError, `a HandlerError, got ${err}`);
  assert.equal(err.cause, boom);
  assert.equal(err.event.fullDocument.seq, 1);
  assert.equal(stream.closed, true);
});

for (const style of ['throws', 'rejects']) {
  test(`a cursor "data" listener that ${style}: HandlerError naming the document, the last key stays before it, restart() redelivers it`, async (t) => {
    const { coll, server, dbName, collName } = await setup(t);
    await insertSeq(coll, 0, 5);
    const cursor = new ResilientCursor({ uri: server.uri, db: dbName, collection: collName }, { key: 'seq', batchSize: 2 });
    t.after(() => cursor.close());
    const boom = new Error(`data listener ${style}`);
    const seen = [];
    const closed = closeEvent(cursor);
    const errors = [];
    cursor.on('error', (err) => errors.push(err));
    cursor.on('data', (doc) => {
      seen.push(doc.seq);
      if (doc.seq !== 2) return undefined;
      if (style === 'throws') throw boom;
      return Promise.reject(boom);
    });
    const info = await closed;
    assert.deepEqual(seen, [0, 1, 2]);
    assert.equal(errors.length, 1);
    const [err] = errors;
    assert.ok(err instanceof HandlerError);
    assert.equal(err.cause, boom);
    assert.equal(err.document.seq, 2);
    assert.match(err.message, /ResilientCursor: a "data" listener threw/);
    assert.deepEqual(info, { reason: 'error', error: err });
    assert.equal(cursor.lastKey, 1, 'the position stays before the failing document');

    const again = ResilientCursor.restart(cursor.state(), server.uri);
    t.after(() => again.close());
    const docs = [];
    for await (const doc of again) docs.push(doc.seq);
    assert.deepEqual(docs, [2, 3, 4]);
  });
}

test('observer listeners that throw or reject are process warnings: the stream keeps going through an outage and closes normally', async (t) => {
  const env = await setup(t);
  if (await skipWithoutFailPoints(t, env.server)) return;
  const warnings = listenerWarnings(t);
  const appName = uniqueAppName('observers');
  const stream = watch(env.coll, [], { ...FAST, uri: withUriOptions(env.server.uri, { appName }) });
  t.after(() => stream.close());
  const reconnectBoom = new Error('reconnecting observer');
  const resumedBoom = new Error('resumed observer');
  const closeBoom = new Error('close observer');
  const alsoCalled = [];
  stream.on('reconnecting', () => {
    throw reconnectBoom;
  });
  stream.on('reconnecting', (info) => alsoCalled.push(info.attempt)); // still runs after the throw
  stream.on('resumed', async () => {
    throw resumedBoom;
  });
  stream.on('close', () => {
    throw closeBoom;
  });
  const seen = [];
  stream.on('change', (e) => {
    seen.push(e.fullDocument.seq);
  });
  await opened(stream);
  await insertSeq(env.coll, 0, 1);
  await waitUntil(() => seen.length === 1, 'seq 0');
  const reconnecting = waitForEvent(stream, 'reconnecting', () => true, DEADLINE_MS);
  await env.server.failCommand({ commands: ['getMore'], errorCode: 6, errorLabels: ['ResumableChangeStreamError'], times: 1, appName });
  await reconnecting;
  // 'resumed' comes with the first progress after the outage: an event.
  const resumed = waitForEvent(stream, 'resumed', () => true, DEADLINE_MS);
  await insertSeq(env.coll, 1, 2);
  await resumed;
  await waitUntil(() => seen.length === 2, 'seq 1 after the outage');
  assert.deepEqual(seen, [0, 1], 'the stream went on');
  assert.equal(stream.closed, false);
  assert.deepEqual(alsoCalled, [1], 'the next reconnecting listener ran');

  await stream.close(); // resolves: a throwing 'close' listener is not a failure of close()
  await waitUntil(() => warnings.length >= 3, 'three listener warnings');
  const byDetail = Object.fromEntries(warnings.map((w) => [w.detail, w.cause]));
  assert.deepEqual(byDetail, {
    'reconnecting listener threw': reconnectBoom,
    'resumed listener threw': resumedBoom,
    'close listener threw': closeBoom,
  });
  for (const w of warnings) assert.match(w.message, /listener threw: \w+ observer/);
});

test("an 'error' listener and a cursor 'end' listener that throw are warnings, not crashes", async (t) => {
  const { coll, server, dbName, collName } = await setup(t);
  const warnings = listenerWarnings(t);
  await insertSeq(coll, 0, 2);
  const stream = watch(coll, [], FAST);
  t.after(() => stream.close());
  const boom = new Error('change');
  const errorBoom = new Error('error observer');
  stream.on('error', () => {
    throw errorBoom;
  });
  const closed = closeEvent(stream);
  stream.on('change', () => {
    throw boom;
  });
  await opened(stream);
  await insertSeq(coll, 2, 3);
  const info = await closed;
  assert.ok(info.error instanceof HandlerError);

  const cursor = new ResilientCursor({ uri: server.uri, db: dbName, collection: collName }, { key: 'seq' });
  t.after(() => cursor.close());
  const endBoom = 'end observer (not an Error)';
  cursor.on('end', () => {
    throw endBoom;
  });
  const cursorClosed = closeEvent(cursor);
  const docs = [];
  cursor.on('data', (doc) => docs.push(doc.seq));
  assert.deepEqual(await cursorClosed, { reason: 'exhausted' });
  assert.deepEqual(docs, [0, 1, 2]);

  await waitUntil(() => warnings.length >= 2, 'two listener warnings');
  assert.deepEqual(
    warnings.map((w) => [w.detail, w.cause]),
    [
      ['error listener threw', errorBoom],
      ['end listener threw', endBoom],
    ],
  );
});

test("emitter mode without an 'error' listener: the HandlerError is thrown as an uncaught exception, as by any EventEmitter", async (t) => {
  const { coll, server, dbName, collName } = await setup(t);
  await insertSeq(coll, 0, 1);
  const script = `
    const { ResilientCursor } = require(${JSON.stringify(require.resolve('..'))});
    const cursor = new ResilientCursor({ uri: process.argv[1], db: process.argv[2], collection: process.argv[3] });
    cursor.on('data', () => { throw new Error('unhandled data failure'); });
  `;
  const run = promisify(execFile)(process.execPath, ['-e', script, server.uri, dbName, collName], { timeout: DEADLINE_MS });
  const failure = await run.then(
    () => assert.fail('the process exited cleanly'),
    (e) => e,
  );
  assert.equal(failure.killed, false, 'it did not hang');
  assert.equal(failure.code, 1);
  assert.match(failure.stderr, /HandlerError: ResilientCursor: a "data" listener threw: unhandled data failure/);
});
