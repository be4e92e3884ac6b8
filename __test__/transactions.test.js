'use strict';
// `transactions: 'group'` (issue #16): the events of one multi-document transaction are handed
// out together and positions move only at transaction boundaries.
//
// The writer: transactions of 1–50 inserts (each insert `{ txn, seq }`) interleaved with plain
// inserts (`{ seq }`), seeded. A transaction is known to have ended when the next event (or a
// moved server position) shows it: the writer ends with a plain insert so the last one is
// handed out without waiting for an idle position advance (this server makes none by default).

const test = require('node:test');
const assert = require('node:assert/strict');
const fs = require('node:fs');
const os = require('node:os');
const path = require('node:path');
const { spawn } = require('node:child_process');
const { ResilientChangeStream } = require('..');
const helpers = require('./helpers');

const { setup, prng, withTimeout } = helpers;
const FIXTURE = path.join(__dirname, 'fixtures', 'txn-consumer.js');
const CRASHES = 6;

/** Units to write: { txn, seqs } for a transaction, { seq } for a plain insert. */
function plan(seed, units) {
  const random = prng(seed);
  const out = [];
  let seq = 0;
  for (let i = 0; i < units; i++) {
    if (random() < 0.4) {
      out.push({ seq: seq++ });
    } else {
      const size = 1 + Math.floor(random() * 50);
      const seqs = [];
      for (let k = 0; k < size; k++) seqs.push(seq++);
      out.push({ txn: i, seqs });
    }
  }
  out.push({ seq: seq++ }); // ends the last transaction for the stream (see the header)
  return out;
}

/** Writes one unit: a transaction through a session, or a plain insert. */
async function writeUnit(env, unit) {
  if (unit.seqs === undefined) {
    await env.coll.insertOne({ seq: unit.seq });
    return;
  }
  const session = env.client.startSession();
  try {
    await session.withTransaction(async () => {
      for (const seq of unit.seqs) await env.coll.insertOne({ txn: unit.txn, seq }, { session });
    });
  } finally {
    await session.endSession();
  }
}

/** A unit as the consumer reports it. */
function line(unit) {
  return unit.seqs === undefined ? `P ${unit.seq}` : `T ${unit.txn} ${unit.seqs.join(' ')}`;
}

test('each transaction is handed out whole, in order, between plain events', async (t) => {
  const env = await setup(t);
  const units = plan(16, 30);
  const stream = new ResilientChangeStream({
    uri: env.server.uri,
    db: env.dbName,
    collection: env.collName,
    transactions: 'group',
    batchSize: 4, // replies end inside transactions
    maxAwaitTimeMS: 100,
  });
  t.after(() => stream.close());
  const got = [];
  const done = new Promise((resolve) => {
    const record = (text) => {
      got.push(text);
      if (got.length === units.length) resolve();
    };
    stream.on('transaction', (txn) => {
      assert.equal(txn.operationType, 'transaction');
      assert.deepEqual(txn._id, txn.events.at(-1)._id, 'positioned after its last event');
      for (const e of txn.events) {
        assert.deepEqual(e.lsid, txn.lsid);
        assert.equal(Number(e.txnNumber), Number(txn.txnNumber));
      }
      record(`T ${txn.events[0].fullDocument.txn} ${txn.events.map((e) => e.fullDocument.seq).join(' ')}`);
    });
    stream.on('change', (e) => record(`P ${e.fullDocument.seq}`));
  });
  await helpers.opened(stream);
  for (const unit of units) await writeUnit(env, unit);
  await withTimeout(done, 60000, 'every unit');
  assert.deepEqual(got, units.map(line));
});

test('without a transaction listener, next() yields transactions; a position is never inside one', async (t) => {
  const env = await setup(t);
  const units = plan(7, 12);
  const stream = new ResilientChangeStream({
    uri: env.server.uri,
    db: env.dbName,
    collection: env.collName,
    transactions: 'group',
    batchSize: 3,
    maxAwaitTimeMS: 100,
    name: 'txn-iterator',
    checkpoint: { everyEvents: 1 },
  });
  t.after(() => stream.close());
  const tokens = [];
  stream.on('resumeTokenChanged', (token) => tokens.push(token._data));
  const { pending } = await helpers.startIterating(stream);
  for (const unit of units) await writeUnit(env, unit);
  const items = [await pending, ...(await helpers.nextN(stream, units.length - 1, 60000))];
  assert.deepEqual(
    items.map((i) =>
      i.operationType === 'transaction'
        ? `T ${i.events[0].fullDocument.txn} ${i.events.map((e) => e.fullDocument.seq).join(' ')}`
        : `P ${i.fullDocument.seq}`,
    ),
    units.map(line),
  );
  // Every position the stream took is after a whole unit (or a quiet advance outside one).
  const inside = new Set();
  for (const i of items) {
    if (i.operationType === 'transaction') for (const e of i.events.slice(0, -1)) inside.add(e._id._data);
  }
  assert.deepEqual(
    tokens.filter((tok) => inside.has(tok)),
    [],
  );
});

test('a consumer killed at random points never resumes inside a transaction', async (t) => {
  const env = await setup(t);
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'rcs-txn-'));
  t.after(() => fs.rmSync(dir, { recursive: true, force: true }));
  const store = path.join(dir, 'position.json');
  const outFile = path.join(dir, 'out.txt');
  const seed = Number(process.env.TXN_CRASH_SEED ?? Date.now() % 100000);
  process.stderr.write(`transactions crash test seed ${seed} (TXN_CRASH_SEED)\n`);
  const random = prng(seed);
  const units = plan(seed, 60);
  const expected = units.map(line);

  const start = () => {
    const child = spawn(process.execPath, [FIXTURE, env.server.uri, env.dbName, env.collName, store, outFile], {
      stdio: ['ignore', 'pipe', 'inherit'],
    });
    let output = '';
    child.stdout.on('data', (d) => {
      output += d;
    });
    const exited = new Promise((resolve) => child.on('exit', (code, signal) => resolve({ code, signal })));
    return { child, exited, output: () => output };
  };
  const lines = () => (fs.existsSync(outFile) ? fs.readFileSync(outFile, 'utf8').split('\n').filter(Boolean) : []);

  // The first consumer stores its position (the start) before anything is written.
  let consumer = start();
  await helpers.waitUntil(() => fs.existsSync(store), 'the first stored position', 30000);
  const writing = (async () => {
    for (const unit of units) await writeUnit(env, unit);
  })();
  // Distinct units processed (a unit processed again after a kill counts once).
  const progress = () => new Set(lines()).size;
  let kills = 0;
  while (kills < CRASHES) {
    const target = Math.min(progress() + 1 + Math.floor(random() * 8), expected.length);
    await helpers.waitUntil(() => progress() >= target, `${target} units processed`, 60000);
    if (progress() >= expected.length) break;
    consumer.child.kill('SIGKILL');
    await consumer.exited;
    assert.equal(consumer.output(), '', 'the consumer did not fail');
    kills += 1;
    consumer = start();
  }
  await writing;
  await helpers.waitUntil(() => progress() >= expected.length, 'every unit processed', 60000);
  consumer.child.kill('SIGKILL');
  await consumer.exited;
  assert.equal(consumer.output(), '', 'the consumer did not fail');
  process.stderr.write(`killed ${kills} times, ${lines().length} lines for ${expected.length} units\n`);
  assert.ok(kills >= 3, `killed ${kills} times`);

  const seen = lines();
  // Every line is a whole unit as written: a transaction is never delivered in part, so a
  // consumer never resumed inside one.
  const known = new Set(expected);
  for (const l of seen) assert.ok(known.has(l), `a unit as written, got ${JSON.stringify(l)}`);
  // Each run continued at a unit boundary at or before where the last one stopped, and in
  // order: the output is the expected sequence with runs restarting a little back.
  let at = 0;
  for (const l of seen) {
    const index = expected.indexOf(l);
    assert.ok(index <= at, `no unit skipped: ${l} at ${index}, expected ≤ ${at}`);
    at = Math.max(at, index + 1);
  }
  assert.equal(at, expected.length, 'every unit processed');
});
