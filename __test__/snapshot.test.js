'use strict';
// Initial snapshot (issue #15): a named stream first delivers every document that exists
// (`snapshot` events, in _id order), then every change from the moment the copy began.
//
// Crash: 50k documents, a writer doing inserts, updates and deletes while a named consumer
// with a file store (fixtures/snapshot-consumer.js) copies and streams; it is killed with
// SIGKILL three times during the copy and once after it. At the end a Map built by applying
// every delivered event (copied documents as upserts, then changes) equals the collection;
// the documents re-read after each crash are at most the checkpoint window
// (maxUnsavedEvents + 1: the +1 is the event whose listener the kill cut short). A document
// the writer updated and then deleted ahead of the copy is not copied, yet its update arrives
// (then its delete): the consumer skips updates of documents it does not hold, as the README
// tells consumers to; that case also has a test of its own.
//
// History lost: the copy's start time pruned from the oplog during the copy, under
// initialSnapshot.onHistoryLost 'error' and 'restart'; onHistoryLost 'resnapshot' on a plain
// named stream after a stop long enough for its position to fall off.

const test = require('node:test');
const assert = require('node:assert/strict');
const fs = require('node:fs');
const os = require('node:os');
const path = require('node:path');
const { spawn } = require('node:child_process');
const { ResilientChangeStream, ChangeStreamHistoryLostError, InvalidOptionError } = require('..');
const helpers = require('./helpers');
const { CHECKPOINT } = require('./fixtures/snapshot-consumer');

const { setup, uniqueDb, withTimeout, skipIfExternal } = helpers;
const FIXTURE = path.join(__dirname, 'fixtures', 'snapshot-consumer.js');
const DEADLINE_MS = 60000;
const waitUntil = (predicate, what, ms = DEADLINE_MS) => helpers.waitUntil(predicate, what, ms);

const DOCS = 50000;
const INSERT_BATCH = 10000;
/** Kill points during the copy: after this many copied documents of the whole output. */
const COPY_KILLS = [9000, 21000, 34000];
const WRITES_PER_ROUND = 300;
const REREAD_BOUND = CHECKPOINT.maxUnsavedEvents + 1;

function tempDir(t) {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'rcs-snapshot-'));
  t.after(() => fs.rmSync(dir, { recursive: true, force: true, maxRetries: 3 }));
  return dir;
}

/** Reads the consumer's output incrementally (whole lines only), cheap to poll. */
function outputReader(file) {
  let offset = 0;
  let rest = '';
  const lines = [];
  return {
    lines,
    refresh() {
      const fd = fs.openSync(file, 'r');
      try {
        const size = fs.fstatSync(fd).size;
        if (size > offset) {
          const buf = Buffer.alloc(size - offset);
          fs.readSync(fd, buf, 0, buf.length, offset);
          offset = size;
          const parts = (rest + buf.toString('utf8')).split('\n');
          rest = parts.pop();
          for (const p of parts) lines.push(JSON.parse(p));
        }
      } finally {
        fs.closeSync(fd);
      }
      return lines.length;
    },
  };
}

function startConsumer(t, env, storePath, outFile) {
  const child = spawn(process.execPath, [FIXTURE, env.server.uri, env.dbName, env.collName, storePath, outFile], {
    stdio: ['ignore', 'pipe', 'pipe'],
  });
  const consumer = { child, output: '', killedByUs: false, done: false };
  child.stdout.on('data', (d) => (consumer.output += d));
  child.stderr.on('data', (d) => (consumer.output += d));
  consumer.exited = new Promise((resolve) => child.once('exit', (code, signal) => resolve({ code, signal })));
  consumer.exited.then(() => (consumer.done = true));
  t.after(() => {
    if (!consumer.done) child.kill('SIGKILL');
    return consumer.exited;
  });
  return consumer;
}

function assertAlive(consumer) {
  if (consumer.done && !consumer.killedByUs) throw new Error(`the consumer exited by itself:\n${consumer.output}`);
  assert.doesNotMatch(consumer.output, /^error /m, `the consumer reported an error:\n${consumer.output}`);
}

async function kill(consumer) {
  consumer.killedByUs = true;
  consumer.child.kill('SIGKILL');
  const { signal } = await withTimeout(consumer.exited, 10000, 'the consumer to die');
  assert.equal(signal, 'SIGKILL');
}

/**
 * Applies delivered events (JSON lines of the fixture) to `map`: copies as upserts, then
 * changes. An update of a document the consumer does not hold is legitimate only when the
 * document was deleted before the copy reached it (the stream replays every change since the
 * start time: the update, then the delete): it is skipped and its key kept in `unheld` until
 * its delete comes.
 */
function apply(map, line, unheld) {
  switch (line.o) {
    case 's':
    case 'i':
    case 'r':
      assert.ok(!unheld.has(line.k), `document ${line.k} delivered after an update that found it missing`);
      map.set(line.k, line.d);
      break;
    case 'u': {
      const doc = map.get(line.k);
      if (!doc) {
        unheld.add(line.k);
        unheld.skipped += 1;
        break;
      }
      const next = { ...doc, ...line.f };
      for (const f of line.x) delete next[f];
      map.set(line.k, next);
      break;
    }
    case 'd':
      unheld.delete(line.k);
      map.delete(line.k);
      break;
    default:
      throw new Error(`unknown line ${JSON.stringify(line)}`);
  }
}

/** The collection as a Map _id → document (plain JSON values). */
async function collectionMap(coll) {
  const docs = await coll.find({}, { sort: { _id: 1 } }).toArray();
  return new Map(docs.map((d) => [d._id, d]));
}

function sameState(map, expected) {
  if (map.size !== expected.size) return false;
  for (const [k, v] of expected) {
    if (JSON.stringify(map.get(k)) !== JSON.stringify(v)) return false;
  }
  return true;
}

/** An identity per delivered line: a copied document by its key, a change by its token. */
const identity = (line) => (line.o === 's' ? `s:${line.k}` : `c:${line.t}`);

/** A round of writes: inserts of new ids, updates and deletes of random existing ones. */
async function writeRound(coll, state, random) {
  const ops = [];
  for (let i = 0; i < WRITES_PER_ROUND; i++) {
    const r = random();
    if (r < 0.3) {
      ops.push({ insertOne: { document: { _id: state.nextId++, v: 0, g: 'new' } } });
    } else if (r < 0.85) {
      const id = Math.floor(random() * state.nextId);
      ops.push({ updateOne: { filter: { _id: id }, update: { $set: { v: Math.floor(random() * 1e6) } } } });
    } else {
      const id = Math.floor(random() * state.nextId);
      ops.push({ deleteOne: { filter: { _id: id } } });
    }
  }
  await coll.bulkWrite(ops, { ordered: true });
}

test('50k documents copied and streamed with a writer running; kill -9 three times during the copy and once after: the applied events equal the collection, re-reads ≤ the checkpoint window', async (t) => {
  const started = Date.now();
  const env = await setup(t);
  const dir = tempDir(t);
  const outFile = path.join(dir, 'processed.jsonl');
  const storePath = path.join(dir, 'positions.json');
  fs.writeFileSync(outFile, '');
  const seed = Number(process.env.SNAPSHOT_SEED ?? Math.floor(Math.random() * 2 ** 31));
  const random = helpers.prng(seed);
  t.diagnostic(`seed ${seed} (SNAPSHOT_SEED=${seed} repeats the writes)`);

  for (let from = 0; from < DOCS; from += INSERT_BATCH) {
    const docs = [];
    for (let id = from; id < from + INSERT_BATCH; id++) docs.push({ _id: id, v: id, g: 'initial' });
    await env.coll.insertMany(docs, { ordered: false });
  }
  const state = { nextId: DOCS };
  t.diagnostic(`loaded ${DOCS} documents in ${Date.now() - started} ms`);

  const out = outputReader(outFile);
  let copiedLines = 0;
  let counted = 0;
  const copied = () => {
    out.refresh();
    for (; counted < out.lines.length; counted++) if (out.lines[counted].o === 's') copiedLines += 1;
    return copiedLines;
  };
  const boundaries = [];
  let consumer = startConsumer(t, env, storePath, outFile);
  let copiedCount = 0;
  for (const [i, at] of COPY_KILLS.entries()) {
    // Writes while the copy runs (not awaited first: the copy is fast): some behind the
    // copy's cursor, some ahead of it.
    const writes = writeRound(env.coll, state, random);
    await waitUntil(() => {
      assertAlive(consumer);
      copiedCount = copied();
      return copiedCount >= at;
    }, `${at} copied documents (kill ${i + 1})`);
    await kill(consumer);
    boundaries.push(out.refresh());
    await writes;
    const stored = JSON.parse(fs.readFileSync(storePath, 'utf8'));
    const record = stored.records?.['snapshot-consumer'] ?? stored['snapshot-consumer'] ?? stored;
    assert.ok(JSON.stringify(record).includes('"snapshot"'), `the stored position holds the copy's progress: ${JSON.stringify(record).slice(0, 300)}`);

    consumer = startConsumer(t, env, storePath, outFile);
  }
  // The copy completes; then changes stream. One more kill once changes after the copy were
  // processed.
  await writeRound(env.coll, state, random);
  await waitUntil(() => {
    assertAlive(consumer);
    out.refresh();
    const lastCopy = out.lines.findLastIndex((l) => l.o === 's');
    return lastCopy >= 0 && out.lines.length - lastCopy > 50;
  }, 'the copy to complete and changes after it to be processed');
  await writeRound(env.coll, state, random);
  await kill(consumer);
  boundaries.push(out.refresh());
  consumer = startConsumer(t, env, storePath, outFile);
  await writeRound(env.coll, state, random);

  // The end: what the consumer applied equals the collection.
  const expected = await collectionMap(env.coll);
  const map = new Map();
  const unheld = Object.assign(new Set(), { skipped: 0 });
  let applied = 0;
  await waitUntil(() => {
    assertAlive(consumer);
    out.refresh();
    for (; applied < out.lines.length; applied++) apply(map, out.lines[applied], unheld);
    return sameState(map, expected) && unheld.size === 0;
  }, 'the consumer to reach the collection state');
  consumer.child.kill('SIGTERM');
  const { code } = await withTimeout(consumer.exited, 10000, 'a graceful stop');
  assert.equal(code, 0, consumer.output);
  out.refresh();
  for (; applied < out.lines.length; applied++) apply(map, out.lines[applied], unheld);
  assert.deepEqual([...map.entries()].sort((a, b) => a[0] - b[0]), [...expected.entries()], 'the applied events equal the collection exactly');
  assert.deepEqual([...unheld], [], 'every update of a document the consumer did not hold was followed by its delete');

  // Re-reads per crash: deliveries in a run that an earlier run already made.
  const runs = [];
  let from = 0;
  for (const end of [...boundaries, out.lines.length]) {
    runs.push(out.lines.slice(from, end));
    from = end;
  }
  const seen = new Set();
  const rereads = runs.map((run) => {
    let n = 0;
    for (const line of run) {
      const id = identity(line);
      if (seen.has(id)) n += 1;
      seen.add(id);
    }
    return n;
  });
  t.diagnostic(`runs ${runs.map((r) => r.length).join(', ')}; re-read after each crash ${rereads.slice(1).join(', ')} (bound ${REREAD_BOUND}); updates of documents deleted before the copy reached them ${unheld.skipped}; ${Date.now() - started} ms`);
  assert.equal(rereads[0], 0, 'the first run delivers nothing twice');
  for (const [i, n] of rereads.slice(1).entries()) {
    assert.ok(n <= REREAD_BOUND, `crash ${i + 1}: ${n} documents re-read > ${REREAD_BOUND}`);
  }
  // Every document of the collection at the start was copied (once per copy, not from zero
  // again): the copy's keys across runs cover 0..DOCS-1 except those deleted before the copy
  // reached them, and each run after a copy crash continued after the last processed key.
  // In documents, not keys: the keys of documents deleted before the copy reached them are
  // gaps in the copy's key sequence.
  for (const [i, run] of runs.slice(1, COPY_KILLS.length + 1).entries()) {
    const firstCopy = run.find((l) => l.o === 's');
    const before = runs.slice(0, i + 1).flat().filter((l) => l.o === 's');
    const lastBefore = before[before.length - 1].k;
    const copiedAgain = before.slice(-REREAD_BOUND).map((l) => l.k);
    const continues = copiedAgain.includes(firstCopy.k) || (firstCopy.k > lastBefore && firstCopy.k <= lastBefore + 1 + REREAD_BOUND);
    assert.ok(continues, `run ${i + 1} continues the copy within the last ${REREAD_BOUND} documents before key ${lastBefore}, not from the beginning (first key ${firstCopy.k})`);
  }
});

test('a document updated and then deleted before the copy reaches it: not copied, and its update arrives before its delete (an update for a document the consumer never had)', async (t) => {
  // The copy reads each document when it gets there, not as of the start time; the stream
  // replays every change since the start time. So a document updated and then deleted after
  // the start time, ahead of the copy, is not copied, and the stream still delivers its
  // update, then its delete. (The 50k test's writer does this at random.)
  const env = await setup(t);
  const dir = tempDir(t);
  await env.coll.insertMany(Array.from({ length: 300 }, (_, i) => ({ _id: i, v: 0 })));
  const options = {
    uri: env.server.uri,
    db: env.dbName,
    collection: env.collName,
    name: 'copy',
    tokenStore: { type: 'file', path: path.join(dir, 'p.json') },
    initialSnapshot: { batchSize: 50 },
    maxAwaitTimeMS: 100,
  };
  // First life: copies _id 0..98; the listener of _id 99 closes it (99 is not processed).
  const first = new ResilientChangeStream(options);
  const firstEvents = [];
  first.on('change', (e) => {
    if (e.documentKey._id === 99) first.close();
    else firstEvents.push(e);
  });
  await waitUntil(() => first.closed, 'the first life to close');
  assert.deepEqual(firstEvents.map((e) => `${e.operationType} ${e.documentKey._id}`), Array.from({ length: 99 }, (_, i) => `snapshot ${i}`));

  // Ahead of the copy, after its start time: 250 updated, then deleted; 260 updated.
  await env.coll.updateOne({ _id: 250 }, { $set: { v: 1 } });
  await env.coll.deleteOne({ _id: 250 });
  await env.coll.updateOne({ _id: 260 }, { $set: { v: 2 } });

  const second = new ResilientChangeStream(options);
  t.after(() => second.close());
  const events = [];
  second.on('change', (e) => events.push(e));
  await waitUntil(() => events.filter((e) => e.operationType !== 'snapshot').length === 3, 'the three changes after the copy');
  const copies = events.filter((e) => e.operationType === 'snapshot');
  const expectedKeys = Array.from({ length: 201 }, (_, i) => 99 + i).filter((k) => k !== 250);
  assert.deepEqual(copies.map((e) => e.documentKey._id), expectedKeys, 'the copy continues after 98 and has no 250');
  assert.deepEqual(copies.find((e) => e.documentKey._id === 260).fullDocument, { _id: 260, v: 2 }, '260 copied with its update');
  assert.deepEqual(events.slice(copies.length).map((e) => `${e.operationType} ${e.documentKey._id}`), ['update 250', 'delete 250', 'update 260']);

  // A consumer that skips an update of a document it does not hold (its delete follows) ends
  // with exactly the collection.
  const map = new Map();
  for (const e of [...firstEvents, ...events]) {
    if (e.operationType === 'update' && !map.has(e.documentKey._id)) continue;
    applyEvent(map, e);
  }
  assert.deepEqual([...map.entries()], [...(await collectionMap(env.coll)).entries()]);
  await second.close();
});

// ---------------------------------------------------------------------------------------------
// History lost during the copy

/** A stream with an initial snapshot that prunes the oplog past its start time while copying. */
async function copyWithPrunedStart(t, policy) {
  const env = await setup(t, { oplogMaxEntries: 20 });
  const docs = Array.from({ length: 300 }, (_, i) => ({ _id: i, v: 0 }));
  await env.coll.insertMany(docs);
  const stream = new ResilientChangeStream({
    uri: env.server.uri,
    db: env.dbName,
    collection: env.collName,
    name: uniqueDb('snap'),
    initialSnapshot: { batchSize: 50, onHistoryLost: policy },
    maxAwaitTimeMS: 100,
  });
  t.after(() => stream.close());
  const seen = { events: [], historyLost: [], errors: [], headroomLow: [] };
  let pruned = false;
  stream.on('historyLost', (info) => seen.events.push({ historyLost: info }) && seen.historyLost.push(info));
  stream.on('error', (err) => seen.errors.push(err));
  stream.on('change', async (event) => {
    seen.events.push(event);
    if (!pruned && event.operationType === 'snapshot' && event.documentKey._id === 100) {
      pruned = true;
      // While the copy runs: changes to copied and uncopied documents, then more writes
      // than the oplog keeps, and a prune: the start time is gone.
      await env.coll.updateOne({ _id: 5 }, { $set: { v: 1 } });
      await env.coll.updateOne({ _id: 250 }, { $set: { v: 1 } });
      await env.coll.deleteOne({ _id: 6 });
      await env.coll.insertMany(Array.from({ length: 50 }, (_, i) => ({ _id: 1000 + i, v: 0 })));
      await env.server.pruneOplog();
    }
  });
  return { env, stream, seen };
}

test("history lost during the copy, initialSnapshot.onHistoryLost 'error': historyLost {from: the start time}, then ChangeStreamHistoryLostError", async (t) => {
  if (skipIfExternal(t, 'prune its oplog')) return;
  const { stream, seen } = await copyWithPrunedStart(t, 'error');
  await waitUntil(() => seen.errors.length > 0, 'the stream to fail');
  assert.equal(seen.historyLost.length, 1, "one 'historyLost'");
  assert.ok(seen.historyLost[0].from, 'from: the copy start time');
  assert.ok(seen.historyLost[0].to && seen.historyLost[0].to.greaterThan(seen.historyLost[0].from), 'to: the oldest entry, after the start time');
  assert.ok(seen.errors[0] instanceof ChangeStreamHistoryLostError, String(seen.errors[0]));
  assert.match(seen.errors[0].message, /start time .* fell off the oplog/);
  // Nothing after the copy was delivered as if no gap existed.
  assert.equal(seen.events.filter((e) => e.operationType && e.operationType !== 'snapshot').length, 0);
  await waitUntil(() => stream.closed, 'the stream to close');
});

test("history lost during the copy, initialSnapshot.onHistoryLost 'restart': historyLost, then a full copy with a new start time, then changes; the events after it equal the collection", async (t) => {
  if (skipIfExternal(t, 'prune its oplog')) return;
  const { env, seen } = await copyWithPrunedStart(t, 'restart');
  await waitUntil(() => seen.historyLost.length >= 1, "'historyLost'");
  // After the loss: a new copy of the whole collection, then live changes. (On a loaded
  // machine the new start time may fall off the 20-entry oplog too: each loss restarts the
  // copy, so what counts is what follows the last one.)
  const lastLoss = () => seen.events.map((e) => Boolean(e.historyLost)).lastIndexOf(true);
  await env.coll.insertOne({ _id: 5000, v: 9 });
  await env.coll.updateOne({ _id: 7 }, { $set: { v: 9 } });
  const expected = await collectionMap(env.coll);
  await waitUntil(() => {
    const map = new Map();
    for (const e of seen.events.slice(lastLoss() + 1)) applyEvent(map, e);
    return sameState(map, expected);
  }, 'the re-copy and the changes after it to give the collection state');
  const lostAt = lastLoss();
  const after = seen.events.slice(lostAt + 1);
  const copies = after.filter((e) => e.operationType === 'snapshot');
  // Every document there is (one deleted, 50 inserted), each once; _id 5000 was inserted
  // while the re-copy may still have been running: copied, or not, and streamed either way.
  const copiedIds = copies.map((e) => e.documentKey._id).filter((id) => id !== 5000);
  assert.deepEqual(copiedIds, [...expected.keys()].filter((id) => id !== 5000), 'the re-copy delivers every document there is, in _id order');
  const firstChange = after.findIndex((e) => e.operationType !== 'snapshot');
  const shape = after.map((e) => (e.operationType === 'snapshot' ? 's' : `${e.operationType}:${e.documentKey?._id}`)).join(' ').replace(/(s )+/g, 's… ');
  assert.ok(firstChange >= copies.length, `every copied document comes before the first change: ${shape}; losses ${seen.historyLost.length}`);
  assert.deepEqual(seen.errors, []);
});

/** Applies a decoded event (copied documents as upserts). */
function applyEvent(map, e) {
  if (e.historyLost) return;
  const k = e.documentKey._id;
  if (e.operationType === 'snapshot' || e.operationType === 'insert' || e.operationType === 'replace') map.set(k, e.fullDocument);
  else if (e.operationType === 'update') {
    const doc = { ...map.get(k), ...e.updateDescription.updatedFields };
    for (const f of e.updateDescription.removedFields) delete doc[f];
    map.set(k, doc);
  } else if (e.operationType === 'delete') map.delete(k);
}

test("onHistoryLost 'resnapshot' on a plain named stream: after a stop long enough for its position to fall off, historyLost, a re-copy, then changes", async (t) => {
  if (skipIfExternal(t, 'prune its oplog')) return;
  const env = await setup(t, { oplogMaxEntries: 20 });
  const dir = tempDir(t);
  const options = {
    uri: env.server.uri,
    db: env.dbName,
    collection: env.collName,
    name: 'cache',
    tokenStore: { type: 'file', path: path.join(dir, 'p.json') },
    onHistoryLost: 'resnapshot',
    maxAwaitTimeMS: 100,
  };
  const first = new ResilientChangeStream(options);
  const firstEvents = [];
  first.on('change', (e) => firstEvents.push(e));
  await helpers.opened(first);
  await env.coll.insertMany(Array.from({ length: 10 }, (_, i) => ({ _id: i, v: 0 })));
  await waitUntil(() => firstEvents.length === 10, 'the first ten inserts');
  await first.close();

  // The long stop: many writes, the oldest pruned.
  await env.coll.insertMany(Array.from({ length: 100 }, (_, i) => ({ _id: 100 + i, v: 1 })));
  await env.coll.deleteMany({ _id: { $lt: 5 } });
  await env.coll.updateMany({ _id: { $gte: 100, $lt: 110 } }, { $set: { v: 2 } });
  await env.server.pruneOplog();

  const second = new ResilientChangeStream(options);
  t.after(() => second.close());
  const events = [];
  const lost = [];
  const errors = [];
  second.on('historyLost', (info) => lost.push({ info, at: events.length }));
  second.on('error', (e) => errors.push(e));
  second.on('change', (e) => events.push(e));
  await waitUntil(() => lost.length === 1, "'historyLost'");
  assert.equal(lost[0].at, 0, "'historyLost' comes before anything else");
  assert.ok(lost[0].info.from, 'from: the stored position');
  await waitUntil(() => events.filter((e) => e.operationType === 'snapshot').length === 105, 'the re-copy: every document there is');
  await env.coll.insertOne({ _id: 999, v: 3 });
  const expected = await collectionMap(env.coll);
  await waitUntil(() => {
    const map = new Map();
    for (const e of events) applyEvent(map, e);
    return sameState(map, expected);
  }, 'the re-copy and the change after it to give the collection state');
  // _id 999 was inserted once 105 were copied: the copy's last getMore may still see it.
  assert.ok(events.findIndex((e) => e.operationType !== 'snapshot') >= 105, 'changes come after the copy');
  assert.deepEqual(errors, []);
  await second.close();
});

test('database and cluster streams refuse initialSnapshot and resnapshot with a clear error', () => {
  const uri = 'mongodb://127.0.0.1:1';
  assert.throws(() => new ResilientChangeStream({ uri, db: 'd', initialSnapshot: true }), (err) => err instanceof InvalidOptionError && /copies one collection: use it on a collection stream/.test(err.message));
  assert.throws(() => new ResilientChangeStream({ uri, onHistoryLost: 'resnapshot' }), InvalidOptionError);
  assert.throws(() => new ResilientChangeStream({ uri, db: 'd', collection: 'c', initialSnapshot: { nope: 1 } }), /unknown option "initialSnapshot.nope"/);
});
