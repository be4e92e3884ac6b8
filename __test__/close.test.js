'use strict';
// close(): fast in every state (backoff, re-open in flight, getMore in flight, never opened),
// idempotent, 'close' exactly once with { reason: 'closed' }, nothing happens afterwards, and
// a process whose only stream was closed exits by itself.

const test = require('node:test');
const assert = require('node:assert/strict');
const path = require('node:path');
const { spawn } = require('node:child_process');
const { setTimeout: delay } = require('node:timers/promises');
const { ResilientChangeStream, StreamClosedError, ResilientChangeStreamError } = require('..');
const { setup, insertSeq, withTimeout, waitForEvent, seqs, opened, startIterating, skipWithoutFailPoints } = require('./helpers');

const FAST = { maxAwaitTimeMS: 100, backoff: { initialDelayMS: 50 } };
const DEADLINE_MS = 30000;
const CLOSE_WITHIN_MS = 2000;
const FIXTURE = path.join(__dirname, 'fixtures', 'close-exit.js');

let appCounter = 0;
/** The server's URI with an appName unique to one stream: scopes fail points and currentOp. */
function withUniqueAppName(uri, label) {
  appCounter += 1;
  const appName = `rcs-close-${label}-${process.pid}-${appCounter}`;
  const url = new URL(uri);
  url.searchParams.set('appName', appName);
  return { uri: url.toString(), appName };
}

/** A stream on the setup's collection whose connections carry a unique appName. */
function openStream(t, ctx, label, options = {}) {
  const { uri, appName } = withUniqueAppName(ctx.server.uri, label);
  const stream = new ResilientChangeStream({ uri, db: ctx.dbName, collection: ctx.collName, ...FAST, ...options });
  t.after(() => stream.close());
  return { stream, appName };
}

/** Records every 'close' and every 'change'/'resumed'/'reconnecting' emitted after close(). */
function recordLifecycle(stream, { emitter = false } = {}) {
  const record = { closes: [], afterClose: [], closeCalled: false };
  stream.on('close', (info) => record.closes.push(info));
  for (const name of ['resumed', 'reconnecting', ...(emitter ? ['change'] : [])]) {
    stream.on(name, () => {
      if (record.closeCalled) record.afterClose.push(name);
    });
  }
  return record;
}

/** close(), asserting it resolves within CLOSE_WITHIN_MS. */
async function closeFast(stream, record) {
  if (record) record.closeCalled = true;
  const started = Date.now();
  await withTimeout(stream.close(), CLOSE_WITHIN_MS * 5, 'close()');
  const took = Date.now() - started;
  assert.ok(took < CLOSE_WITHIN_MS, `close() took ${took} ms`);
  return took;
}

/** Names of the commands the server is running for `appName` (currentOp). */
async function commandsOf(server, appName) {
  const { inprog } = await server.adminCommand({ currentOp: 1 });
  return inprog
    .filter((op) => (op.appName ?? op.clientMetadata?.application?.name) === appName)
    .map((op) => (op.command ? Object.keys(op.command)[0] : op.op));
}

/** Polls `condition` (a server-side fact) until true, within `ms`. */
async function waitUntil(condition, ms, what) {
  const deadline = Date.now() + ms;
  for (;;) {
    if (await condition()) return;
    if (Date.now() > deadline) throw new Error(`timed out after ${ms} ms waiting for ${what}`);
    await delay(25);
  }
}

/** getMores the server ran so far and cursors open on it (only meaningful on a private server). */
async function cursorActivity(server) {
  const status = await server.adminCommand({ serverStatus: 1 });
  return { getmores: Number(status.opcounters.getmore), open: Number(status.metrics?.cursor?.open?.total ?? 0) };
}

/**
 * Proves that nothing of a closed stream still talks to the server: for a window several
 * times longer than its backoff and await time, no getMore runs and no cursor stays open
 * (private server only: on a shared MONGODB_URI other tests move these counters), and no
 * command of its appName is running at the end.
 */
async function assertQuietAfterClose(server, appName) {
  const busy = (names) => names.some((n) => /^(aggregate|getMore|find)$/i.test(n));
  const before = server.external ? null : await cursorActivity(server);
  // An observation window, not synchronisation: a stream that re-opened (backoff 50 ms,
  // awaitData 100 ms) would run several getMores within it.
  await delay(600);
  assert.deepEqual((await commandsOf(server, appName)).filter((n) => busy([n])), [], 'no command of the stream is running');
  if (before) {
    const after = await cursorActivity(server);
    assert.equal(after.getmores, before.getmores, 'no getMore ran after close');
    assert.equal(after.open, 0, 'no cursor is left open on the server');
  }
}

/**
 * A next() pending when close() is called: as the driver's ChangeStream.next(), it never
 * resolves null; it rejects with StreamClosedError (no cause: closed by close()).
 */
async function assertClosedWhileWaiting(pending) {
  const outcome = await withTimeout(
    pending.then((value) => ({ value }), (error) => ({ error })),
    CLOSE_WITHIN_MS,
    'the pending next()',
  );
  assert.ok(outcome.error instanceof StreamClosedError, `rejected with StreamClosedError: ${JSON.stringify(outcome)}`);
  assert.equal(outcome.error.cause, undefined);
}

// --- (1) close during backoff -------------------------------------------------------------------

test('close() during a 60 s backoff resolves at once; a pending next() rejects with StreamClosedError', async (t) => {
  const ctx = await setup(t);
  if (await skipWithoutFailPoints(t, ctx.server)) return;
  const { stream, appName } = openStream(t, ctx, 'backoff', {
    backoff: { initialDelayMS: 60000, multiplier: 1, maxDelayMS: 60000 },
  });
  const record = recordLifecycle(stream);
  const { pending } = await startIterating(stream);

  // The engine draws each delay uniformly from [0, ceiling] (full jitter; the ceiling is 60 s
  // here). Inject resumable getMore failures until a delay long enough to close inside it is
  // drawn (P(delay < 2 s) = 1/30 per try).
  let info;
  for (let tries = 1; ; tries++) {
    const reconnecting = waitForEvent(stream, 'reconnecting', () => true, DEADLINE_MS);
    await ctx.server.failCommand({
      commands: ['getMore'],
      errorCode: 6,
      errorLabels: ['ResumableChangeStreamError'],
      times: 1,
      appName,
    });
    info = await reconnecting;
    assert.equal(info.attempt, tries, 'no progress between failures: one outage, attempts count up');
    assert.ok(info.delayMs >= 0 && info.delayMs <= 60000, `delayMs ${info.delayMs} within [0, 60000]`);
    assert.ok(info.error instanceof ResilientChangeStreamError);
    assert.equal(info.error.code, 6);
    if (info.delayMs >= 2000) break;
    assert.ok(tries < 6, 'six short delays in a row out of [0, 60 s]');
    // The short backoff ends by itself; wait for the re-opened cursor's getMore to fail next.
  }
  // The re-open is at least 2 s away; closing now closes during the backoff.
  await closeFast(stream, record);
  await assertClosedWhileWaiting(pending);
  assert.equal(stream.closed, true);
  assert.deepStrictEqual(record.closes, [{ reason: 'closed' }]);
  // Writes after close reach nobody, and the stream stays silent.
  await insertSeq(ctx.coll, 0, 3);
  await assertQuietAfterClose(ctx.server, appName);
  assert.deepEqual(record.afterClose, [], "no 'resumed'/'reconnecting' after close");
  assert.equal(record.closes.length, 1);
});

// --- (2) close during a re-open --------------------------------------------------------------

test('close() while the re-open aggregate is blocked on the server resolves at once; nothing re-opens', async (t) => {
  const ctx = await setup(t);
  if (await skipWithoutFailPoints(t, ctx.server)) return;
  const { stream, appName } = openStream(t, ctx, 'reopen');
  const record = recordLifecycle(stream);
  const { pending } = await startIterating(stream);

  // One fail point for both commands (there is only one failCommand): the next getMore
  // stalls 3 s and fails resumably, then the re-open aggregate stalls 3 s (and would fail).
  const reconnecting = waitForEvent(stream, 'reconnecting', () => true, DEADLINE_MS);
  await ctx.server.failCommand({
    commands: ['getMore', 'aggregate'],
    errorCode: 6,
    errorLabels: ['ResumableChangeStreamError'],
    blockConnection: true,
    blockTimeMS: 3000,
    times: 2,
    appName,
  });
  const info = await reconnecting;
  assert.equal(info.error.code, 6);
  await waitUntil(
    async () => (await commandsOf(ctx.server, appName)).includes('aggregate'),
    10000,
    'the re-open aggregate to be running on the server',
  );

  await closeFast(stream, record);
  await assertClosedWhileWaiting(pending);
  assert.equal(stream.closed, true);
  assert.deepStrictEqual(record.closes, [{ reason: 'closed' }]);

  // Once the server is done with the stalled aggregate, nothing of the stream comes back.
  await waitUntil(
    async () => !(await commandsOf(ctx.server, appName)).includes('aggregate'),
    10000,
    'the stalled aggregate to finish on the server',
  );
  await insertSeq(ctx.coll, 0, 3);
  await assertQuietAfterClose(ctx.server, appName);
  assert.deepEqual(record.afterClose, [], "no 'resumed'/'reconnecting' after close");
  assert.equal(record.closes.length, 1);
  assert.equal(stream.closed, true);
});

// --- (3) close with a pending next() / a getMore in flight -------------------------------------

test('close() with a getMore in flight and a pending next() resolves at once; next() rejects with StreamClosedError', async (t) => {
  const ctx = await setup(t);
  // The server holds each getMore up to 10 s waiting for events.
  const { stream, appName } = openStream(t, ctx, 'getmore', { maxAwaitTimeMS: 10000 });
  const record = recordLifecycle(stream);
  const { pending } = await startIterating(stream);
  await waitUntil(
    async () => (await commandsOf(ctx.server, appName)).includes('getMore'),
    10000,
    'the awaitData getMore to be running on the server',
  );
  await closeFast(stream, record);
  await assertClosedWhileWaiting(pending);
  assert.deepStrictEqual(record.closes, [{ reason: 'closed' }]);
  assert.deepEqual(record.afterClose, []);
});

test('close() from outside ends a waiting for await loop normally, and an emitter without a change event', async (t) => {
  const ctx = await setup(t);

  // for await: the loop ends (no throw) once the stream is closed elsewhere.
  const { stream: iterated } = openStream(t, ctx, 'forawait');
  const got = [];
  let gotTwo;
  const two = new Promise((resolve) => {
    gotTwo = resolve;
  });
  const isOpen = opened(iterated);
  const loop = (async () => {
    for await (const event of iterated) {
      got.push(event);
      if (got.length === 2) gotTwo();
    }
  })();
  await Promise.race([isOpen, loop]);
  await insertSeq(ctx.coll, 0, 2);
  await withTimeout(two, DEADLINE_MS, 'two events in the loop');
  await closeFast(iterated);
  await withTimeout(loop, CLOSE_WITHIN_MS, 'the for await loop to end');
  assert.deepEqual(seqs(got), [0, 1]);

  // Emitter: closed while the pump waits for events; no 'change' after close().
  const { stream: emitting, appName } = openStream(t, ctx, 'emitter', { maxAwaitTimeMS: 10000 });
  const record = recordLifecycle(emitting, { emitter: true });
  const changes = [];
  emitting.on('change', (event) => changes.push(event));
  await opened(emitting);
  await closeFast(emitting, record);
  await insertSeq(ctx.coll, 2, 4);
  await assertQuietAfterClose(ctx.server, appName);
  assert.deepEqual(changes, []);
  assert.deepEqual(record.afterClose, []);
  assert.deepStrictEqual(record.closes, [{ reason: 'closed' }]);
});

test("close() awaited inside a 'change' listener resolves, and no further event is delivered", async (t) => {
  const ctx = await setup(t);
  const { stream } = openStream(t, ctx, 'inlistener');
  const record = recordLifecycle(stream, { emitter: true });
  const seen = [];
  const closedInside = new Promise((resolve, reject) => {
    stream.on('change', async (event) => {
      seen.push(event);
      if (seen.length === 1) {
        record.closeCalled = true;
        await stream.close().then(resolve, reject);
      }
    });
  });
  await opened(stream);
  await insertSeq(ctx.coll, 0, 3); // three events at once: two are left when the first closes
  await withTimeout(closedInside, DEADLINE_MS, 'close() inside the listener');
  await withTimeout(
    (async () => {
      while (record.closes.length === 0) await new Promise((r) => stream.once('close', r));
    })(),
    DEADLINE_MS,
    "'close'",
  );
  assert.deepEqual(seqs(seen), [0]);
  assert.deepStrictEqual(record.closes, [{ reason: 'closed' }]);
  assert.deepEqual(record.afterClose, []);
});

// --- (4) idempotent ---------------------------------------------------------------------------

test("close() is idempotent: three concurrent calls, one 'close'; afterwards the iterator API reports StreamClosedError", async (t) => {
  const ctx = await setup(t);
  const { stream } = openStream(t, ctx, 'idempotent');
  const record = recordLifecycle(stream);
  const { pending } = await startIterating(stream);
  await ctx.coll.insertOne({ seq: 0 });
  assert.equal((await withTimeout(pending, DEADLINE_MS, 'the first event')).fullDocument.seq, 0);

  record.closeCalled = true;
  const results = await withTimeout(
    Promise.all([stream.close(), stream.close(), stream.close()]),
    CLOSE_WITHIN_MS,
    'three concurrent close()',
  );
  assert.deepEqual(results, [undefined, undefined, undefined]);
  await withTimeout(stream.close(), CLOSE_WITHIN_MS, 'a fourth close()');
  assert.deepStrictEqual(record.closes, [{ reason: 'closed' }], "'close' emitted exactly once");
  assert.equal(stream.closed, true);

  const isClosedError = (err) => {
    assert.ok(err instanceof StreamClosedError, `expected StreamClosedError, got ${err?.name}`);
    assert.ok(err instanceof ResilientChangeStreamError);
    assert.equal(err.kind, 'StreamClosed');
    assert.equal(err.name, 'StreamClosedError');
    assert.equal(err.cause, undefined, 'closed by close(), not by an error');
    return true;
  };
  await assert.rejects(stream.next(), isClosedError);
  await assert.rejects(stream.hasNext(), isClosedError);
  await assert.rejects(stream.tryNext(), isClosedError);
  assert.throws(() => stream.stream(), isClosedError);
  const iterated = [];
  for await (const event of stream) iterated.push(event);
  assert.deepEqual(iterated, [], 'iterating a closed stream yields nothing');
  assert.equal(record.closes.length, 1);
});

test("a stream never read from closes once, with { reason: 'closed' }, under concurrent close() calls", async (t) => {
  const ctx = await setup(t);
  const { stream } = openStream(t, ctx, 'unread');
  const record = recordLifecycle(stream);
  await withTimeout(Promise.all([stream.close(), stream.close(), stream.close()]), CLOSE_WITHIN_MS, 'close()');
  assert.equal(stream.closed, true);
  assert.deepStrictEqual(record.closes, [{ reason: 'closed' }]);
  await assert.rejects(stream.next(), StreamClosedError);
});

// --- (6) the 'close' payload -----------------------------------------------------------------

test("the 'close' payload of a user close() is exactly { reason: 'closed' } (iterator and emitter)", async (t) => {
  const ctx = await setup(t);
  const { stream: iterated } = openStream(t, ctx, 'payload-it');
  const { stream: emitting } = openStream(t, ctx, 'payload-em');
  const payloads = [];
  iterated.on('close', (info) => payloads.push(['iterator', info]));
  emitting.on('close', (info) => payloads.push(['emitter', info]));
  const emitterOpen = opened(emitting);
  const got = new Promise((resolve) => emitting.on('change', resolve));
  const { pending } = await startIterating(iterated);
  await emitterOpen;
  await ctx.coll.insertOne({ seq: 0 });
  await withTimeout(Promise.all([pending, got]), DEADLINE_MS, 'an event in both streams');
  await closeFast(iterated);
  await closeFast(emitting);
  assert.equal(payloads.length, 2);
  for (const [mode, info] of payloads) {
    assert.deepStrictEqual(info, { reason: 'closed' }, `${mode} close payload`);
    assert.equal('error' in info, false, `${mode}: no error key`);
  }
});

// index.d.ts, close(): "Idempotent; no timers or sockets remain."
test(
  'after close() no connection of the stream remains open to the server',
  async (t) => {
    const ctx = await setup(t);
    const connections = async () => Number((await ctx.server.adminCommand({ serverStatus: 1 })).connections.current);
    const connectionsOf = async (appName) => {
      const { inprog } = await ctx.server.adminCommand({ currentOp: 1, $all: true });
      return inprog.filter((op) => (op.appName ?? op.clientMetadata?.application?.name) === appName).length;
    };
    const baseline = ctx.server.external ? null : await connections();
    const { stream, appName } = openStream(t, ctx, 'sockets');
    const { pending } = await startIterating(stream);
    assert.ok((await connectionsOf(appName)) > 0, 'precondition: the stream is connected under its appName');
    await closeFast(stream);
    await assertClosedWhileWaiting(pending);
    await waitUntil(
      async () => (await connectionsOf(appName)) === 0 && (baseline === null || (await connections()) <= baseline),
      5000,
      'the connections of the closed stream to go away',
    );
  },
);

// --- (5) the process exits after close -------------------------------------------------------

/**
 * Runs the fixture in `mode`, reacting to its "open" line with `onOpen`. Resolves with its exit
 * code, signal and stdout lines; kills it (by pid) and fails if it has not exited within `ms`.
 */
async function runFixture({ uri, dbName, collName, mode, onOpen = async () => {}, ms = 10000 }) {
  const child = spawn(process.execPath, [FIXTURE, uri, dbName, collName, mode], {
    stdio: ['ignore', 'pipe', 'pipe'],
    env: { ...process.env },
  });
  let stdout = '';
  let stderr = '';
  let reacted = null;
  child.stderr.setEncoding('utf8').on('data', (d) => {
    stderr += d;
  });
  child.stdout.setEncoding('utf8').on('data', (d) => {
    stdout += d;
    if (reacted === null && stdout.split('\n').includes('open')) {
      reacted = onOpen().catch((err) => {
        stderr += `\n(parent) onOpen failed: ${err.stack}`;
        child.kill('SIGKILL');
      });
    }
  });
  const exited = new Promise((resolve) => {
    child.on('close', (code, signal) => resolve({ code, signal }));
  });
  const started = Date.now();
  try {
    const result = await withTimeout(exited, ms, `the fixture (mode ${mode}) to exit by itself`);
    await reacted;
    return { ...result, took: Date.now() - started, lines: stdout.split('\n').filter(Boolean), stderr };
  } catch (err) {
    child.kill('SIGKILL');
    await exited;
    err.message += `\nstdout: ${stdout}\nstderr: ${stderr}`;
    throw err;
  }
}

const EXIT_CASES = [
  { mode: 'never-next', lines: ['closed'] },
  { mode: 'idle', lines: ['open', 'closed'] },
  { mode: 'event', lines: ['open', 'event 7', 'closed'], insert: true },
  { mode: 'emitter', lines: ['open', 'event 7', 'closed'], insert: true },
  { mode: 'break', lines: ['open', 'event 7', 'closed'], insert: true },
  { mode: 'backoff', lines: ['open', 'reconnecting', 'closed'], failGetMore: true },
];

for (const { mode, lines, insert, failGetMore } of EXIT_CASES) {
  test(`the process exits by itself after close() (${mode})`, async (t) => {
    const ctx = await setup(t);
    if (failGetMore && (await skipWithoutFailPoints(t, ctx.server))) return;
    const { uri, appName } = withUniqueAppName(ctx.server.uri, `exit-${mode}`);
    const result = await runFixture({
      uri,
      dbName: ctx.dbName,
      collName: ctx.collName,
      mode,
      onOpen: async () => {
        if (insert) await ctx.coll.insertOne({ seq: 7 });
        if (failGetMore) {
          await ctx.server.failCommand({
            commands: ['getMore'],
            errorCode: 6,
            errorLabels: ['ResumableChangeStreamError'],
            times: 1,
            appName,
          });
        }
      },
    });
    assert.equal(result.stderr, '', 'the fixture reported no failure');
    assert.deepEqual(result.lines, lines);
    assert.deepEqual({ code: result.code, signal: result.signal }, { code: 0, signal: null });
  });
}
