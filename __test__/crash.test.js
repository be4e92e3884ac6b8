'use strict';
// Crash safety of durable positions (issue #3).
//
// Consumer crash: a child process (fixtures/durable-consumer.js) consumes with a file store, or
// a MongoDB store, and is killed with SIGKILL at random points while a writer inserts seq
// 0..N-1; each time it is started again. At the end every written event was processed at
// least once, none is missing, first occurrences are in write order, each run of the consumer
// processed a contiguous run of seqs, and the events processed again after each crash are at
// most the checkpoint window:
//
//   duplicates per crash ≤ maxUnsavedEvents + 1  (= 11 with the fixture's policy)
//
// because the stream hands out an event only while fewer than maxUnsavedEvents processed
// events are unsaved (its unreported run counted), and the +1 is the event whose listener
// the kill cut short (written out, not processed). A graceful stop (SIGTERM → close())
// stores the exact position: 0 duplicates on the next start.
//
// Server crash: the server (storage on disk, --sync-on-commit) is killed with SIGKILL and
// restarted while two named consumers run — one with a file store, one with a MongoDB store on
// that very server (so its store goes down too). Both end with every event exactly once, in
// order, and their stored positions survive another server crash.

const test = require('node:test');
const assert = require('node:assert/strict');
const fs = require('node:fs');
const os = require('node:os');
const path = require('node:path');
const { spawn } = require('node:child_process');
const { setTimeout: delay } = require('node:timers/promises');
const { EJSON } = require('bson');
const { ResilientChangeStream } = require('..');
const helpers = require('./helpers');

const { setup, uniqueDb, withTimeout, range, skipIfExternal } = helpers;
const { CHECKPOINT } = require('./fixtures/durable-consumer');

const FIXTURE = path.join(__dirname, 'fixtures', 'durable-consumer.js');
const DEADLINE_MS = 60000;
// Pace of the writer's retries while the server is down (so a failing insert is not retried
// in a hot loop); no outcome depends on it.
const RETRY_PACE_MS = 20;

const CRASHES = 6;
const MIN_EVENTS = 2000;
const WRITE_BATCH = 25;
// The writer stays at most this many events ahead of what the consumer has processed, so the
// consumer is killed while writes are still coming and the final catch-up stays short.
const MAX_LEAD = 300;
// After each (re)start, the consumer is killed once its output grew by 1..KILL_SPREAD lines.
const KILL_SPREAD = 200;
const DUPLICATE_BOUND = CHECKPOINT.maxUnsavedEvents + 1;

// ---------------------------------------------------------------------------------------------
// Local helpers

/** The shared waitUntil, with this file's deadline. */
const waitUntil = (predicate, what, ms = DEADLINE_MS) => helpers.waitUntil(predicate, what, ms);

const { prng } = helpers;

/** The consumer's output: processed seqs in processing order. */
function readOut(file) {
  const text = fs.readFileSync(file, 'utf8');
  const lines = text.split('\n');
  assert.equal(lines.pop(), '', 'the output ends with a whole line (one append per event)');
  return lines.map((line) => {
    assert.match(line, /^\d+$/, `a well-formed output line, got ${JSON.stringify(line)}`);
    return Number(line);
  });
}

/** The consumer child process; `exited` resolves with { code, signal }. */
function startConsumer(t, env, storeJson, outFile) {
  const child = spawn(process.execPath, [FIXTURE, env.server.uri, env.dbName, env.collName, storeJson, outFile], {
    stdio: ['ignore', 'pipe', 'pipe'],
  });
  const consumer = { child, output: '', killedByUs: false };
  child.stdout.on('data', (d) => {
    consumer.output += d;
  });
  child.stderr.on('data', (d) => {
    consumer.output += d;
  });
  consumer.exited = new Promise((resolve) => child.once('exit', (code, signal) => resolve({ code, signal })));
  consumer.done = false;
  consumer.exited.then(() => {
    consumer.done = true;
  });
  t.after(() => {
    if (!consumer.done) child.kill('SIGKILL');
    return consumer.exited;
  });
  return consumer;
}

/** Fails if the consumer died by itself (not killed by the test). */
function assertAlive(consumer) {
  if (consumer.done && !consumer.killedByUs) {
    throw new Error(`the consumer exited by itself:\n${consumer.output}`);
  }
  assert.doesNotMatch(consumer.output, /^error /m, `the consumer reported an error:\n${consumer.output}`);
}

async function kill(consumer) {
  consumer.killedByUs = true;
  consumer.child.kill('SIGKILL');
  const { signal } = await withTimeout(consumer.exited, 10000, 'the consumer to die');
  assert.equal(signal, 'SIGKILL');
}

/**
 * Splits the output at the kill points and checks it. Returns per-run duplicate counts.
 * - every seq in [0, total) is present, and nothing else;
 * - first occurrences are 0, 1, 2, … (in write order, none skipped);
 * - within one run of the consumer the seqs are consecutive (a run never skips or repeats);
 * - the first run has no duplicate; each restarted run ≤ DUPLICATE_BOUND.
 */
function analyse(out, boundaries, total) {
  const runs = [];
  let from = 0;
  for (const end of [...boundaries, out.length]) {
    runs.push(out.slice(from, end));
    from = end;
  }
  const seen = new Set();
  let expectedNext = 0;
  const duplicates = [];
  runs.forEach((run, r) => {
    let dups = 0;
    run.forEach((seq, i) => {
      if (i > 0) {
        assert.equal(seq, run[i - 1] + 1, `run ${r}: consecutive seqs (${run[i - 1]} then ${seq} at line ${i})`);
      }
      if (seen.has(seq)) {
        dups += 1;
      } else {
        assert.equal(seq, expectedNext, `run ${r}: first occurrences in write order, none missing (expected ${expectedNext}, got ${seq})`);
        seen.add(seq);
        expectedNext += 1;
      }
    });
    duplicates.push(dups);
  });
  assert.equal(expectedNext, total, `every seq 0..${total - 1} processed`);
  assert.equal(seen.size, total);
  assert.equal(duplicates[0], 0, 'the first run repeats nothing');
  return { runs, duplicates };
}

// ---------------------------------------------------------------------------------------------
// Consumer crash

/**
 * @param {(env) => { json: string, record: () => Promise<object | null> }} storeFor
 */
async function consumerCrashes(t, storeFor) {
  const started = Date.now();
  const env = await setup(t);
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'rcs-crash-'));
  t.after(() => fs.rmSync(dir, { recursive: true, force: true, maxRetries: 3 }));
  const outFile = path.join(dir, 'processed.txt');
  fs.writeFileSync(outFile, '');
  const store = storeFor(env, dir);
  const seed = Number(process.env.CRASH_SEED ?? Math.floor(Math.random() * 2 ** 31));
  const random = prng(seed);
  t.diagnostic(`seed ${seed} (CRASH_SEED=${seed} repeats the kill points)`);

  let lines = 0; // lines in the output, refreshed by every read
  const processed = () => {
    lines = readOut(outFile).length;
    return lines;
  };

  let consumer = startConsumer(t, env, store.json, outFile);
  // The first run stores its opening position before anything is written: from then on a
  // restart never starts from "now".
  await waitUntil(async () => {
    assertAlive(consumer);
    return store.record();
  }, 'the consumer to store its first position');

  // The writer: { _id: seq, seq } in batches, at most MAX_LEAD ahead of the consumer, until
  // every crash is done and at least MIN_EVENTS are written.
  const writer = { written: 0, stop: false, killsDone: false };
  writer.done = (async () => {
    while (!writer.stop && !(writer.killsDone && writer.written >= MIN_EVENTS)) {
      await waitUntil(() => writer.stop || writer.written - processed() < MAX_LEAD, 'the consumer to catch up with the writer');
      const from = writer.written;
      await env.coll.insertMany(range(from, from + WRITE_BATCH).map((seq) => ({ _id: seq, seq })));
      writer.written = from + WRITE_BATCH;
    }
  })();
  t.after(() => {
    writer.stop = true;
    return writer.done.catch(() => {});
  });

  const boundaries = [];
  const killedAt = [];
  try {
    for (let crash = 0; crash < CRASHES; crash++) {
      const base = processed();
      const grow = 1 + Math.floor(random() * KILL_SPREAD);
      await waitUntil(() => {
        assertAlive(consumer);
        return processed() >= base + grow;
      }, `the output to grow by ${grow} lines (crash ${crash + 1})`);
      await kill(consumer);
      boundaries.push(processed());
      killedAt.push({ lines, written: writer.written });
      // Whatever instant the kill hit, the stored record is whole.
      const rec = await store.record();
      assert.ok(rec && rec.token && typeof rec.token._data === 'string', `crash ${crash + 1}: a whole record is stored`);
      consumer = startConsumer(t, env, store.json, outFile);
    }
    writer.killsDone = true;
    await withTimeout(writer.done, DEADLINE_MS, 'the writer');
    const total = writer.written;
    await waitUntil(() => {
      assertAlive(consumer);
      const out = readOut(outFile);
      lines = out.length;
      return out.at(-1) === total - 1;
    }, `the consumer to process seq ${total - 1}`);

    // A graceful stop stores the exact position: the next run repeats nothing.
    consumer.killedByUs = true;
    consumer.child.kill('SIGTERM');
    const { code } = await withTimeout(consumer.exited, 15000, 'the consumer to stop on SIGTERM');
    assert.equal(code, 0, `graceful stop:\n${consumer.output}`);
    boundaries.push(processed());
    await env.coll.insertOne({ _id: total, seq: total });
    consumer = startConsumer(t, env, store.json, outFile);
    await waitUntil(() => {
      assertAlive(consumer);
      return readOut(outFile).at(-1) === total;
    }, `the restarted consumer to process seq ${total}`);
    await kill(consumer);

    const out = readOut(outFile);
    const { runs, duplicates } = analyse(out, boundaries, total + 1);
    const afterCrashes = duplicates.slice(1, CRASHES + 1);
    for (const [i, dups] of afterCrashes.entries()) {
      assert.ok(dups <= DUPLICATE_BOUND, `crash ${i + 1}: ${dups} events processed again, bound ${DUPLICATE_BOUND}`);
    }
    const totalDups = afterCrashes.reduce((a, b) => a + b, 0);
    assert.ok(totalDups <= CRASHES * DUPLICATE_BOUND, `total duplicates ${totalDups} ≤ ${CRASHES} × ${DUPLICATE_BOUND}`);
    assert.deepEqual(runs.at(-1), [total], 'after a graceful stop: exactly the new event, nothing repeated');
    t.diagnostic(
      `${total + 1} events, ${CRASHES} crashes at output lines ${killedAt.map((k) => `${k.lines}(written ${k.written})`).join(', ')}; ` +
        `duplicates per crash ${afterCrashes.join(', ')} (bound ${DUPLICATE_BOUND}), total ${totalDups}; ` +
        `${Date.now() - started} ms`,
    );
  } finally {
    writer.stop = true;
  }
}

test('consumer crash (file store): killed with SIGKILL at random points while a writer inserts, restarted each time: every event processed, in order, duplicates within the checkpoint window', async (t) => {
  await consumerCrashes(t, (env, dir) => {
    const file = path.join(dir, 'position.json');
    return {
      json: JSON.stringify({ type: 'file', path: file }),
      record: async () => {
        if (!fs.existsSync(file)) return null;
        // Never torn: whenever it exists, it parses.
        const rec = EJSON.parse(fs.readFileSync(file, 'utf8'), { relaxed: true });
        assert.equal(rec.name, 'crash-consumer');
        assert.equal(rec.namespace, `${env.dbName}.${env.collName}`);
        assert.equal(fs.statSync(file).mode & 0o777, 0o600);
        return rec;
      },
    };
  });
});

test('consumer crash (mongodb store): killed with SIGKILL at random points while a writer inserts, restarted each time: every event processed, in order, duplicates within the checkpoint window', async (t) => {
  await consumerCrashes(t, (env) => {
    const storeDb = uniqueDb('rcs_positions');
    const positions = env.client.db(storeDb).collection('consumers');
    return {
      json: JSON.stringify({ type: 'mongodb', db: storeDb, collection: 'consumers' }),
      record: async () => {
        const docs = await positions.find({}).toArray();
        assert.ok(docs.length <= 1, `one document per name, got ${docs.length}`);
        if (docs.length === 0) return null;
        assert.equal(docs[0]._id, 'crash-consumer');
        assert.equal(docs[0].namespace, `${env.dbName}.${env.collName}`);
        return docs[0];
      },
    };
  });
});

// ---------------------------------------------------------------------------------------------
// Server crash

/**
 * Inserts `{ _id: seq, seq }` for seq in [from, to), one at a time and in order, each retried
 * until acknowledged. A retry answered with a duplicate key error (11000) means the earlier
 * attempt was committed but its acknowledgement was lost to the crash: done, and no second
 * event exists. So exactly seq [from, to) are written, once each.
 */
function startWriter(coll, from, to) {
  const writer = { written: from, stopped: false, failures: 0 };
  writer.done = (async () => {
    for (let seq = from; seq < to && !writer.stopped; seq++) {
      for (;;) {
        try {
          await coll.insertOne({ _id: seq, seq });
          break;
        } catch (err) {
          if (err.code === 11000) break;
          writer.failures += 1;
          if (writer.stopped) throw err;
          await delay(RETRY_PACE_MS);
        }
      }
      writer.written = seq + 1;
    }
  })();
  writer.done.catch(() => {});
  return writer;
}

function durableConsumer(t, env, name, tokenStore) {
  const stream = new ResilientChangeStream({
    uri: env.server.uri,
    db: env.dbName,
    collection: env.collName,
    name,
    tokenStore,
    checkpoint: { everyEvents: 10, everyMs: 100, maxUnsavedEvents: 50 },
    maxAwaitTimeMS: 100,
    backoff: { initialDelayMS: 10, maxDelayMS: 200 },
  });
  t.after(() => stream.close().catch(() => {}));
  const c = { stream, seqs: [], events: [], errors: [], reconnecting: 0, opened: false };
  stream.on('resumeTokenChanged', () => {
    c.opened = true;
  });
  stream.on('reconnecting', () => {
    c.reconnecting += 1;
  });
  stream.on('error', (err) => c.errors.push(err));
  stream.on('change', async (event) => {
    await new Promise((resolve) => setImmediate(resolve)); // really asynchronous processing
    c.events.push(event);
    c.seqs.push(event.fullDocument.seq);
  });
  return c;
}

test('server crash (kill -9, --sync-on-commit, disk) and restart while named consumers run (file store, and a mongodb store on that server): every event exactly once, in order; the stored positions survive', async (t) => {
  if (skipIfExternal(t, 'kill and restart it')) return;
  const started = Date.now();
  const env = await setup(t, { storage: 'disk', syncOnCommit: true });
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'rcs-crash-'));
  t.after(() => fs.rmSync(dir, { recursive: true, force: true, maxRetries: 3 }));
  const fileStore = { type: 'file', path: path.join(dir, 'a.json') };
  const storeDb = uniqueDb('rcs_positions');
  const mongoStore = { type: 'mongodb', db: storeDb, collection: 'consumers' };
  const TOTAL = 600;
  const CRASH_AT = 150;

  let a = durableConsumer(t, env, 'server-crash-a', fileStore);
  let b = durableConsumer(t, env, 'server-crash-b', mongoStore);
  await waitUntil(() => a.opened && b.opened, 'both consumers to open');
  const writer = startWriter(env.coll, 0, TOTAL);
  t.after(() => {
    writer.stopped = true;
  });
  await waitUntil(() => a.seqs.length >= CRASH_AT && b.seqs.length >= CRASH_AT, `both consumers to process ${CRASH_AT} events`);
  await env.server.kill();
  await waitUntil(() => a.reconnecting > 0 && b.reconnecting > 0, 'both consumers to notice the crash');
  await env.server.restart();
  await withTimeout(writer.done, DEADLINE_MS, 'the writer');
  await waitUntil(() => a.seqs.length >= TOTAL && b.seqs.length >= TOTAL, `both consumers to process ${TOTAL} events`);
  assert.deepEqual(a.seqs, range(0, TOTAL), 'file-store consumer: every event exactly once, in order');
  assert.deepEqual(b.seqs, range(0, TOTAL), 'mongodb-store consumer (its store crashed too): every event exactly once, in order');
  assert.deepEqual(a.errors, []);
  assert.deepEqual(b.errors, []);
  // The MongoDB store came back: everything processed gets stored.
  await waitUntil(() => b.stream.health().pendingCheckpoint === 0 && a.stream.health().pendingCheckpoint === 0, 'both stores to catch up');
  await a.stream.close();
  await b.stream.close();
  const aRec = EJSON.parse(fs.readFileSync(fileStore.path, 'utf8'), { relaxed: true });
  const bRec = await env.client.db(storeDb).collection('consumers').findOne({ _id: 'server-crash-b' });
  // The stored position is the last event's, or a later quiet advance (postBatchResumeToken,
  // timed by the server's reply); the restart below proves it continues exactly after it.
  assert.ok(aRec.clusterTime.compare(a.events.at(-1).clusterTime) >= 0, 'file store: the last event is stored');
  assert.ok(bRec.clusterTime.compare(b.events.at(-1).clusterTime) >= 0, 'mongodb store: the last event is stored');

  // Crash again with both consumers stopped: the positions (one of them in the crashed server)
  // are intact, and each consumer continues exactly after its own.
  await env.server.kill();
  await env.server.restart();
  await startWriter(env.coll, TOTAL, TOTAL + 10).done;
  a = durableConsumer(t, env, 'server-crash-a', fileStore);
  b = durableConsumer(t, env, 'server-crash-b', mongoStore);
  await waitUntil(() => a.seqs.length >= 10 && b.seqs.length >= 10, 'both restarted consumers to process 10 events');
  assert.deepEqual(a.seqs, range(TOTAL, TOTAL + 10));
  assert.deepEqual(b.seqs, range(TOTAL, TOTAL + 10));
  await a.stream.close();
  await b.stream.close();
  assert.deepEqual(a.errors, []);
  assert.deepEqual(b.errors, []);
  t.diagnostic(`writer retries during the crash: ${writer.failures}; ${Date.now() - started} ms`);
});
