'use strict';
// `concurrency`: up to N change handlers at once, never two for one documentKey, each
// document's events in order; the position moves only over the finished prefix, so a kill -9
// never skips an unfinished event.

const test = require('node:test');
const assert = require('node:assert/strict');
const fs = require('node:fs');
const os = require('node:os');
const path = require('node:path');
const { spawn } = require('node:child_process');
const { ResilientChangeStream, InvalidOptionError } = require('..');
const { setup, waitUntil, opened, prng } = require('./helpers');
const { CHECKPOINT, CONCURRENCY } = require('./fixtures/concurrent-consumer');

const FIXTURE = path.join(__dirname, 'fixtures', 'concurrent-consumer.js');

/** `rounds` versions of `keys` documents: round 0 inserts, later rounds update `v`. */
async function writeVersions(coll, keys, rounds) {
  await coll.insertMany(Array.from({ length: keys }, (_, k) => ({ _id: k, v: 0 })));
  for (let v = 1; v < rounds; v++) {
    await coll.bulkWrite(
      Array.from({ length: keys }, (_, k) => ({ updateOne: { filter: { _id: k }, update: { $set: { v } } } })),
      { ordered: true },
    );
  }
}

function version(event) {
  return event.operationType === 'insert' ? event.fullDocument.v : event.updateDescription.updatedFields.v;
}

test('concurrency: handlers overlap across keys, never within one; every key in order', async (t) => {
  const { server, coll, dbName, collName } = await setup(t);
  assert.throws(() => new ResilientChangeStream({ uri: server.uri, concurrency: 0 }), InvalidOptionError);
  assert.throws(() => new ResilientChangeStream({ uri: server.uri, concurrency: 2.5 }), /"concurrency" must be a whole number from 1 to 1000/);

  const KEYS = 40;
  const ROUNDS = 10;
  const stream = new ResilientChangeStream({ uri: server.uri, db: dbName, collection: collName, concurrency: 16, maxAwaitTimeMS: 100 });
  t.after(() => stream.close());
  const random = prng(7);
  const running = new Map();
  let active = 0;
  let maxActive = 0;
  const seen = new Map();
  const overlaps = [];
  stream.on('change', async (event) => {
    const key = event.documentKey._id;
    if (running.get(key)) overlaps.push(key);
    running.set(key, true);
    active += 1;
    maxActive = Math.max(maxActive, active);
    await new Promise((resolve) => setTimeout(resolve, Math.floor(random() * 6)));
    if (!seen.has(key)) seen.set(key, []);
    seen.get(key).push(version(event));
    active -= 1;
    running.set(key, false);
  });
  await opened(stream);
  await writeVersions(coll, KEYS, ROUNDS);
  await waitUntil(() => [...seen.values()].reduce((n, v) => n + v.length, 0) >= KEYS * ROUNDS, 'every event handled');
  assert.deepEqual(overlaps, [], 'never two handlers for one key at once');
  assert.ok(maxActive > 1, `handlers ran concurrently (at most ${maxActive} at once)`);
  assert.ok(maxActive <= 16, `never more than concurrency (${maxActive})`);
  for (let k = 0; k < KEYS; k++) assert.deepEqual(seen.get(k), Array.from({ length: ROUNDS }, (_, v) => v), `key ${k} in order, once each`);
});

test('concurrency with a file store: kill -9 mid-run and restart skips nothing, keeps each key in order', async (t) => {
  const { server, coll, dbName, collName } = await setup(t);
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'rcs-concurrency-'));
  t.after(() => fs.rmSync(dir, { recursive: true, force: true }));
  const positionFile = path.join(dir, 'position.json');
  const outFile = path.join(dir, 'out.log');
  const lines = () => (fs.existsSync(outFile) ? fs.readFileSync(outFile, 'utf8').split('\n').filter(Boolean) : []);
  const start = (seed) => {
    const child = spawn(process.execPath, [FIXTURE, server.uri, dbName, collName, positionFile, outFile, String(seed)], {
      stdio: ['ignore', 'pipe', 'inherit'],
    });
    child.stdout.on('data', (d) => assert.fail(`consumer: ${d}`));
    const exited = new Promise((resolve) => child.once('exit', resolve));
    t.after(() => child.kill('SIGKILL'));
    return { child, exited };
  };

  // The first run stores its start before anything is written, so every event is in its future.
  let consumer = start(1);
  await waitUntil(() => fs.existsSync(positionFile), 'the first stored position', 30000);
  const KEYS = 100;
  const ROUNDS = 10;
  const TOTAL = KEYS * ROUNDS;
  // Killed while the writes still come in (the handlers take 0–3 ms each, 8 at once).
  const writing = writeVersions(coll, KEYS, ROUNDS);
  const runs = [];
  for (const at of [150, 400]) {
    await waitUntil(() => lines().length >= at, `${at} events handled`, 60000);
    consumer.child.kill('SIGKILL');
    await consumer.exited;
    runs.push(lines().length);
    consumer = start(at);
  }
  await writing;
  const pairs = () => new Set(lines());
  await waitUntil(() => pairs().size >= TOTAL, 'every (key, version) handled', 60000);
  consumer.child.kill('SIGTERM');
  await consumer.exited;

  const all = lines().map((l) => l.split(' ').map(Number));
  const got = new Set(lines());
  for (let k = 0; k < KEYS; k++) for (let v = 0; v < ROUNDS; v++) assert.ok(got.has(`${k} ${v}`), `key ${k} version ${v} handled`);
  // Per key: in order within a run; a restart may repeat a prefix, never skip.
  const bounds = [0, ...runs, all.length];
  const highest = new Map();
  for (let r = 0; r + 1 < bounds.length; r++) {
    const last = new Map();
    for (const [k, v] of all.slice(bounds[r], bounds[r + 1])) {
      if (last.has(k)) assert.equal(v, last.get(k) + 1, `run ${r}: key ${k} went from ${last.get(k)} to ${v}`);
      else assert.ok(v <= (highest.get(k) ?? -1) + 1, `run ${r}: key ${k} resumed at ${v}, past ${highest.get(k)}`);
      last.set(k, v);
      highest.set(k, Math.max(v, highest.get(k) ?? -1));
    }
  }
  const repeated = all.length - TOTAL;
  // Each crash repeats at most the unsaved window plus what was in flight.
  assert.ok(repeated <= runs.length * (CHECKPOINT.maxUnsavedEvents + CONCURRENCY), `repeated ${repeated} events`);
  t.diagnostic(`repeated after ${runs.length} kills (at ${runs.join(", ")} of ${all.length} lines): ${repeated}`);
});
