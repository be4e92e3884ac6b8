'use strict';
// Resumable failures: for every resumable server code (labelled and, for some, unlabelled, to
// prove classification by code) and for a dropped connection, the stream re-opens as many times
// in a row as it takes, from where it was, and delivers exactly the events written meanwhile:
// same count, same order, no loss, no duplicates. Also: failures of the re-open `aggregate`
// itself, of the very first `aggregate`, separate outages counted separately, and the backoff
// ceiling growing with the attempt number.
//
// The stream prefetches: a getMore already in flight when a failpoint is set is not affected
// by it. So each test sets the failpoint, WAITS for the expected 'reconnecting' events, and only
// THEN writes: the events can only have come through a re-opened cursor.
//
// Every failpoint is scoped to the stream under test with `appName` (each stream gets a
// connection string with its own appName, hence its own driver client and its own SDAM state),
// so the test's own client and other streams are never failed.

const test = require('node:test');
const assert = require('node:assert/strict');
const { ResilientChangeStreamError } = require('..');
const { setup, insertSeq, withTimeout, seqs, range } = require('./helpers');
const {
  DEADLINE_MS, BACKOFF, uniqueAppName, openStream, freshCollection, record, opened, describe, ceiling,
} = require('./recorder');

const EXTERNAL = Boolean(process.env.MONGODB_URI);
const RESUMABLE = 'ResumableChangeStreamError';

// ---------------------------------------------------------------------------------------------
// Local helpers

/**
 * Checks every 'reconnecting' of ONE outage: attempts 1, 2, …, n in order, a delay within the
 * backoff ceiling, and an error of the package's class.
 */
function assertOneOutage(rec, backoff = BACKOFF) {
  const attempts = rec.reconnecting.map((r) => r.attempt);
  assert.deepEqual(attempts, range(1, attempts.length + 1), `one outage: ${describe(rec)}`);
  for (const { attempt, delayMs, error } of rec.reconnecting) {
    assert.ok(error instanceof ResilientChangeStreamError, `attempt ${attempt}: ${error}`);
    assert.ok(Number.isInteger(delayMs) && delayMs >= 0, `attempt ${attempt}: delayMs ${delayMs}`);
    assert.ok(
      delayMs <= ceiling(attempt, backoff),
      `attempt ${attempt}: delayMs ${delayMs} above the ceiling ${ceiling(attempt, backoff)}`,
    );
  }
}

/**
 * After an outage that ended with the writes of seq [from, to): every event exactly once, in
 * order; 'resumed' once, after the last 'reconnecting' and before the first event written after
 * the outage; no 'error'.
 */
function assertRecovered(rec, { total, firstAfter, failedAt }) {
  assert.deepEqual(seqs(rec.changes), range(0, total), 'every event exactly once, in order');
  assert.equal(rec.changes.length, total, 'nothing but the inserts');
  assert.equal(rec.errors.length, 0, `no 'error': ${describe(rec)}`);
  assert.equal(rec.resumed.length, 1, `'resumed' once: ${describe(rec)}`);
  const [{ attempts, downtimeMs }] = rec.resumed;
  assert.equal(attempts, rec.reconnecting.length, "'resumed' counts every attempt of the outage");
  const resumedAt = rec.indexOf('resumed');
  assert.ok(resumedAt > rec.log.findLastIndex((e) => e.kind === 'reconnecting'));
  assert.ok(resumedAt < rec.indexOf('change', (c) => c.fullDocument.seq === firstAfter));
  // The outage began after the failpoint was set and ended before 'resumed' reached us.
  assert.ok(Number.isFinite(downtimeMs) && downtimeMs >= 0, `downtimeMs ${downtimeMs}`);
  assert.ok(
    downtimeMs <= rec.log[resumedAt].at - failedAt + 2,
    `downtimeMs ${downtimeMs} > ${rec.log[resumedAt].at - failedAt} ms since the failpoint was set`,
  );
}

// ---------------------------------------------------------------------------------------------
// failCommand on getMore, times: 3, for each resumable failure

// Codes the drivers' SDAM treats as a server state change ("not writable primary" / "node is
// recovering / shutting down"): the driver marks the server Unknown and waits for its monitor to
// rediscover it. SecantusDB's failpoint errors carry no topologyVersion, so each failure costs
// the engine's driver ~10 s (its streaming monitor sits out an awaitable hello) before the
// re-open gets a server. These run concurrently, each on a server of its own.
const STATE_CHANGE_CASES = [
  [91, 'ShutdownInProgress'],
  [189, 'PrimarySteppedDown'],
  [10107, 'NotWritablePrimary'],
  [11600, 'InterruptedAtShutdown'],
  [11602, 'InterruptedDueToReplStateChange'],
  [13436, 'NotPrimaryOrSecondary'],
].map(([code, codeName]) => ({
  name: `code ${code} ${codeName} (labelled)`,
  data: { errorCode: code, errorLabels: [RESUMABLE] },
  code,
  codeName,
  errorLabels: [RESUMABLE],
  stateChange: true,
}));

const FAST_CASES = [
  ...[
    [6, 'HostUnreachable'],
    [89, 'NetworkTimeout'],
    [262, 'ExceededTimeLimit'],
    [9001, 'SocketException'],
    [43, 'CursorNotFound'],
  ].map(([code, codeName]) => ({
    name: `code ${code} ${codeName} (labelled)`,
    data: { errorCode: code, errorLabels: [RESUMABLE] },
    code,
    codeName,
    errorLabels: [RESUMABLE],
  })),
  // `errorLabels: []` replaces the labels a server would add. On a 4.4+ server (wire version
  // >= 9) only CursorNotFound resumes without the label (the spec); an unlabelled 6 is
  // surfaced (fatal.test.js).
  {
    name: 'code 43 CursorNotFound WITHOUT labels (resumable on every server version)',
    data: { errorCode: 43, errorLabels: [] },
    code: 43,
    codeName: 'CursorNotFound',
    errorLabels: [],
  },
  { name: 'closeConnection (network error)', data: { closeConnection: true }, network: true },
];

/** How a recorded failure matches the case (state-change cases may add driver-side failures). */
function isCaseFailure(c, error) {
  return c.network ? error.kind === 'NetworkError' : error.code === c.code;
}

async function getMoreFailuresCase(env, c) {
  const appName = uniqueAppName('resume');
  const stream = openStream(env, appName);
  const rec = record(stream);
  // Each state-change failure can cost ~10 s of server rediscovery (see STATE_CHANGE_CASES).
  const outageDeadline = c.stateChange ? 90000 : DEADLINE_MS;
  try {
    await opened(rec);
    await insertSeq(env.coll, 0, 5);
    await rec.until((r) => r.changes.length >= 5, 'the first 5 events');
    assert.equal(rec.reconnecting.length, 0);

    const failedAt = Date.now();
    await env.server.failCommand({ commands: ['getMore'], times: 3, appName, ...c.data });
    try {
      await rec.until(
        (r) => r.reconnecting.filter((x) => isCaseFailure(c, x.error)).length >= 3,
        'three failed getMores',
        outageDeadline,
      );
    } finally {
      await env.server.failPointOff();
    }
    assert.equal(rec.changes.length, 5, 'nothing written during the failures');
    // Only now write: these events can only come through a re-opened cursor.
    await insertSeq(env.coll, 5, 25);
    await rec.until(
      (r) => r.changes.some((e) => e.fullDocument?.seq === 24),
      'the 20 events written after the failures',
      outageDeadline,
    );

    assertOneOutage(rec);
    const caseFailures = rec.reconnecting.filter((r) => isCaseFailure(c, r.error));
    if (c.stateChange) {
      // The driver's SDAM may add failures of its own (e.g. a server-selection timeout or a
      // cleared pool while the server is Unknown): at least the 3 injected ones, all in one
      // outage; any extra one is a network/selection error.
      assert.ok(rec.reconnecting.length >= 3, describe(rec));
      assert.equal(caseFailures.length, 3, `the 3 injected failures: ${describe(rec)}`);
      for (const { error } of rec.reconnecting.filter((r) => !isCaseFailure(c, r.error))) {
        assert.equal(error.kind, 'NetworkError', `an extra failure is driver-side: ${error.message}`);
      }
    } else {
      assert.deepEqual(
        rec.reconnecting.map((r) => r.attempt),
        [1, 2, 3],
        `exactly the 3 injected failures: ${describe(rec)}`,
      );
      assert.equal(caseFailures.length, 3);
    }
    for (const { error } of caseFailures) {
      if (c.network) {
        assert.equal(error.kind, 'NetworkError');
        assert.equal(error.code, undefined);
      } else {
        assert.equal(error.code, c.code);
        assert.equal(error.codeName, c.codeName);
        assert.deepEqual(error.errorLabels, c.errorLabels);
      }
    }
    assertRecovered(rec, { total: 25, firstAfter: 5, failedAt });
    assert.ok(rec.resumed[0].attempts >= 3);
  } finally {
    await stream.close();
  }
  assert.deepEqual(rec.closes, [{ reason: 'closed' }], "'close' once, by close()");
  assert.equal(rec.errors.length, 0);
}

test('resumable getMore failures, 3 in a row: exact events after each kind', async (t) => {
  const env = await setup(t);
  for (const [i, c] of FAST_CASES.entries()) {
    await t.test(c.name, async () => {
      await getMoreFailuresCase(await freshCollection(env, `fast${i}`), c);
    });
  }
});

test(
  'state-change codes, 3 in a row: recovery with exact events',
  // Against MONGODB_URI all cases share one server, whose single failpoint they would fight
  // over: one at a time there.
  { concurrency: EXTERNAL ? 1 : true },
  async (t) => {
    await Promise.all(
      STATE_CHANGE_CASES.map((c) =>
        t.test(c.name, async (t) => {
          await getMoreFailuresCase(await setup(t), c);
        }),
      ),
    );
  },
);

// ---------------------------------------------------------------------------------------------
// Re-open failures, first open, separate outages, backoff growth (one shared server)

test('re-opens, outages and backoff', async (t) => {
  const env = await setup(t);

  await t.test('a failing re-open aggregate keeps backing off, then recovers', async () => {
    const e = await freshCollection(env, 'reopen');
    const appName = uniqueAppName('resume');
    const stream = openStream(e, appName);
    const rec = record(stream);
    try {
      await opened(rec);
      await insertSeq(e.coll, 0, 3);
      await rec.until((r) => r.changes.length >= 3, 'the first 3 events');
      const failedAt = Date.now();
      // The first failure hits a getMore; after it the engine issues nothing but aggregates
      // until one succeeds, so failures 2..4 are the re-open aggregates.
      await e.server.failCommand({
        commands: ['getMore', 'aggregate'],
        times: 4,
        appName,
        errorCode: 6,
        errorLabels: [RESUMABLE],
      });
      try {
        await rec.until((r) => r.reconnecting.length >= 4, '4 failures (getMore, then 3 aggregates)');
      } finally {
        await e.server.failPointOff();
      }
      assert.equal(rec.changes.length, 3);
      await insertSeq(e.coll, 3, 13);
      await rec.until((r) => r.changes.some((c) => c.fullDocument.seq === 12), '10 events after');
      assertOneOutage(rec);
      assert.deepEqual(rec.reconnecting.map((r) => r.attempt), [1, 2, 3, 4], describe(rec));
      for (const { error } of rec.reconnecting) assert.equal(error.code, 6);
      assertRecovered(rec, { total: 13, firstAfter: 3, failedAt });
    } finally {
      await stream.close();
    }
    assert.deepEqual(rec.closes, [{ reason: 'closed' }]);
  });

  await t.test('a failing FIRST aggregate is retried too', async () => {
    const e = await freshCollection(env, 'firstopen');
    const appName = uniqueAppName('resume');
    const failedAt = Date.now();
    await e.server.failCommand({
      commands: ['aggregate'],
      times: 2,
      appName,
      errorCode: 6,
      errorLabels: [RESUMABLE],
    });
    const stream = openStream(e, appName);
    let rec;
    try {
      rec = record(stream);
      await opened(rec);
      await e.server.failPointOff();
      assert.deepEqual(rec.reconnecting.map((r) => r.attempt), [1, 2], describe(rec));
      for (const { error } of rec.reconnecting) assert.equal(error.code, 6);
      assertOneOutage(rec);
      await insertSeq(e.coll, 0, 10);
      await rec.until((r) => r.changes.some((c) => c.fullDocument.seq === 9), '10 events');
      assertRecovered(rec, { total: 10, firstAfter: 0, failedAt });
    } finally {
      await e.server.failPointOff();
      await stream.close();
    }
    assert.deepEqual(rec.closes, [{ reason: 'closed' }]);
  });

  await t.test('two outages are counted separately (attempts restart at 1)', async () => {
    const e = await freshCollection(env, 'twooutages');
    const appName = uniqueAppName('resume');
    const stream = openStream(e, appName);
    const rec = record(stream);
    const failOnce = async (times, what) => {
      await e.server.failCommand({ commands: ['getMore'], times, appName, errorCode: 6, errorLabels: [RESUMABLE] });
      try {
        await rec.until(what.done, what.label);
      } finally {
        await e.server.failPointOff();
      }
    };
    try {
      await opened(rec);
      await failOnce(2, { done: (r) => r.reconnecting.length >= 2, label: 'outage 1 (2 failures)' });
      await insertSeq(e.coll, 0, 5);
      await rec.until((r) => r.changes.length >= 5 && r.resumed.length >= 1, 'events after outage 1');
      await failOnce(3, { done: (r) => r.reconnecting.length >= 5, label: 'outage 2 (3 failures)' });
      assert.equal(rec.changes.length, 5);
      await insertSeq(e.coll, 5, 10);
      await rec.until((r) => r.changes.some((c) => c.fullDocument.seq === 9), 'events after outage 2');
      assert.deepEqual(rec.reconnecting.map((r) => r.attempt), [1, 2, 1, 2, 3], describe(rec));
      assert.deepEqual(rec.resumed.map((r) => r.attempts), [2, 3], describe(rec));
      assert.deepEqual(seqs(rec.changes), range(0, 10));
      assert.equal(rec.changes.length, 10);
      assert.equal(rec.errors.length, 0);
      // Each 'resumed' comes before the first event after its outage.
      assert.ok(rec.indexOf('resumed') < rec.indexOf('change', (c) => c.fullDocument.seq === 0));
      const second = rec.log.findIndex((x, i) => x.kind === 'resumed' && i > rec.indexOf('resumed'));
      assert.ok(second > rec.log.findLastIndex((x) => x.kind === 'reconnecting'));
      assert.ok(second < rec.indexOf('change', (c) => c.fullDocument.seq === 5));
    } finally {
      await stream.close();
    }
  });

  await t.test('the backoff ceiling grows with the attempt number, capped', async () => {
    const e = await freshCollection(env, 'backoff');
    const appName = uniqueAppName('resume');
    const backoff = { initialDelayMS: 5, maxDelayMS: 50 }; // multiplier: the default 2
    const stream = openStream(e, appName, { backoff });
    const rec = record(stream);
    try {
      await opened(rec);
      const failedAt = Date.now();
      await e.server.failCommand({
        commands: ['getMore', 'aggregate'],
        mode: 'alwaysOn',
        appName,
        errorCode: 6,
        errorLabels: [RESUMABLE],
      });
      try {
        await rec.until((r) => r.reconnecting.length >= 12, '12 failed attempts');
      } finally {
        await e.server.failPointOff();
      }
      await insertSeq(e.coll, 0, 10);
      await rec.until((r) => r.changes.some((c) => c.fullDocument.seq === 9), '10 events after');
      assertOneOutage(rec, backoff); // every delay within 5 × 2^(attempt-1), capped at 50
      // Full jitter draws each delay from [0, ceiling]. From attempt 5 on the ceiling is the
      // 50 ms cap: if it had stayed at 5 ms, 8+ draws above 5 ms would be impossible; with the
      // cap, all 8 landing in [0, 5] has probability (6/51)^8 ≈ 4e-8.
      const late = rec.reconnecting.filter((r) => r.attempt >= 5).map((r) => r.delayMs);
      assert.ok(late.length >= 8);
      assert.ok(
        late.some((d) => d > backoff.initialDelayMS),
        `the delay grew past initialDelayMS: ${late}`,
      );
      assertRecovered(rec, { total: 10, firstAfter: 0, failedAt });
    } finally {
      await stream.close();
    }
  });

  await t.test('iterator mode: a pending next() waits through the outage', async () => {
    const e = await freshCollection(env, 'iterator');
    const appName = uniqueAppName('resume');
    const stream = openStream(e, appName);
    const reconnecting = [];
    const resumed = [];
    const openedToken = new Promise((resolve) => stream.once('resumeTokenChanged', resolve));
    stream.on('reconnecting', (r) => reconnecting.push(r));
    stream.on('resumed', (r) => resumed.push(r));
    let allFailed;
    const threeFailures = new Promise((resolve) => {
      allFailed = resolve;
    });
    stream.on('reconnecting', () => reconnecting.length >= 3 && allFailed());
    try {
      const first = stream.next();
      first.catch(() => {}); // observed below
      await withTimeout(openedToken, DEADLINE_MS, 'the stream to open');
      await e.server.failCommand({ commands: ['getMore'], times: 3, appName, errorCode: 6, errorLabels: [RESUMABLE] });
      try {
        await withTimeout(threeFailures, DEADLINE_MS, '3 failed getMores');
      } finally {
        await e.server.failPointOff();
      }
      await insertSeq(e.coll, 0, 10);
      const events = [await withTimeout(first, DEADLINE_MS, 'the pending next()')];
      while (events.length < 10) events.push(await withTimeout(stream.next(), DEADLINE_MS, 'next()'));
      assert.deepEqual(seqs(events), range(0, 10));
      assert.deepEqual(reconnecting.map((r) => r.attempt), [1, 2, 3]);
      assert.deepEqual(resumed.map((r) => r.attempts), [3]);
      assert.equal(await stream.tryNext(), null, 'no duplicate follows');
    } finally {
      await stream.close();
    }
  });
});
