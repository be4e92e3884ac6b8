'use strict';
// `resilient-change-stream positions`: list, rewind and reset stored positions, against the
// live server: a rewind a restarted named stream picks up (the events since that time come
// again), a pruned time refused, a live group lease respected (and fenced with --force),
// and no connection string in anything printed.

const test = require('node:test');
const assert = require('node:assert/strict');
const fs = require('node:fs');
const os = require('node:os');
const path = require('node:path');
const { spawn } = require('node:child_process');
const { Long, EJSON } = require('bson');
const { watch } = require('..');
const { setup, insertSeq, nextN, seqs, range, startIterating, waitUntil, skipIfExternal } = require('./helpers');

const BIN = path.join(__dirname, '..', 'bin', 'resilient-change-stream.js');
const FAST = { maxAwaitTimeMS: 100, backoff: { initialDelayMS: 5, maxDelayMS: 50 } };

/** Runs the CLI (stdin not a terminal); resolves `{ status, stdout, stderr }`. */
function cli(args, env = {}) {
  return new Promise((resolve, reject) => {
    const child = spawn(process.execPath, [BIN, 'positions', ...args], {
      env: { ...process.env, MONGODB_URI: '', ...env },
      stdio: ['ignore', 'pipe', 'pipe'],
    });
    let stdout = '';
    let stderr = '';
    child.stdout.on('data', (d) => (stdout += d));
    child.stderr.on('data', (d) => (stderr += d));
    const timer = setTimeout(() => child.kill('SIGKILL'), 30000);
    child.on('error', reject);
    child.on('close', (status) => {
      clearTimeout(timer);
      resolve({ status, stdout, stderr });
    });
  });
}

function iso(seconds) {
  return new Date(seconds * 1000).toISOString().replace('.000Z', 'Z');
}

function tempFile(name) {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'rcs-positions-'));
  return path.join(dir, name);
}

/** Nothing printed may name the deployment (its host:port stands in for credentials here). */
function assertNoUri(result, uri) {
  const host = new URL(uri.replace(/^mongodb(\+srv)?:/, 'http:')).host;
  assert.ok(!`${result.stdout}${result.stderr}`.includes(host), `printed the deployment: ${result.stdout}${result.stderr}`);
}

/** Reads `n` events with a named stream (emits nothing else), then closes it: the position is stored. */
async function consume(coll, options, n, write) {
  const stream = watch(coll, [], { ...FAST, ...options });
  const { pending } = await startIterating(stream);
  await write();
  const events = [await pending, ...(await nextN(stream, n - 1))];
  await stream.close();
  return events;
}

test('file store: list; rewind to a time that a restarted named stream picks up; reset', async (t) => {
  const { server, client, coll, dbName } = await setup(t);
  const admin = client.db('admin');
  const file = tempFile('orders.position.json');
  const named = { name: 'orders-sync', tokenStore: { type: 'file', path: file } };

  // Two batches of writes in different seconds (of the server's cluster time), so that a
  // rewind to the second one's second brings back exactly it.
  let first;
  const events = await consume(coll, named, 10, async () => {
    await insertSeq(coll, 0, 5);
    first = await coll.findOne({ seq: 4 });
    const stamp = (await admin.command({ ping: 1 })).operationTime;
    await waitUntil(
      async () => (await admin.command({ ping: 1 })).operationTime.high > stamp.high,
      'the cluster time to reach the next second',
    );
    await insertSeq(coll, 5, 10);
  });
  assert.ok(first);
  assert.deepEqual(seqs(events), range(0, 10));
  const last = events[9].clusterTime.high;

  const listed = await cli([file, '--uri', server.uri]);
  assert.equal(listed.status, 0, listed.stderr);
  const [header, row, ...more] = listed.stdout.trimEnd().split('\n');
  assert.match(header, /^NAME\s+KIND\s+NAMESPACE\s+POSITION\s+WRITTEN\s+LAG\s+HEADROOM\s+EPOCH$/);
  assert.deepEqual(more, []);
  assert.equal(row.split(/\s{2,}/)[0], 'orders-sync');
  assert.equal(row.split(/\s{2,}/)[1], 'changeStream');
  assert.equal(row.split(/\s{2,}/)[2], `${dbName}.orders`);
  assert.equal(row.split(/\s{2,}/)[3], iso(last));
  assertNoUri(listed, server.uri);

  const json = await cli([file, 'orders-sync', '--uri', server.uri, '--json']);
  assert.equal(json.status, 0, json.stderr);
  const [entry] = json.stdout.trimEnd().split('\n').map((l) => JSON.parse(l));
  assert.equal(entry.name, 'orders-sync');
  assert.equal(entry.clusterTime, iso(last));
  assert.ok(entry.lagMs >= 0 && entry.lagMs < 60000, `lag ${entry.lagMs}`);
  assert.ok(entry.headroomMs >= 0, `headroom ${entry.headroomMs}`);
  assert.ok(entry.ageMs >= 0 && entry.ageMs < 60000, `age ${entry.ageMs}`);
  assert.equal(entry.record.token._data === undefined, false);

  // Without a deployment a time cannot be checked against the oplog: refused.
  const unchecked = await cli(['rewind', file, 'orders-sync', '--to', iso(events[5].clusterTime.high)]);
  assert.equal(unchecked.status, 1);
  assert.match(unchecked.stderr, /needs the deployment's connection string/);

  const to = events[5].clusterTime.high;
  const rewound = await cli(['rewind', file, 'orders-sync', '--to', iso(to), '--uri', server.uri]);
  assert.equal(rewound.status, 0, rewound.stderr);
  assert.match(rewound.stdout, new RegExp(`^rewound: "orders-sync" \\(${dbName}\\.orders\\) from ${iso(last)} to ${iso(to)}`));
  assertNoUri(rewound, server.uri);
  const stored = EJSON.parse(fs.readFileSync(file, 'utf8'), { relaxed: false });
  assert.equal(stored.token, null);
  assert.equal(stored.clusterTime.high, to);
  assert.equal(stored.clusterTime.low, 0);
  assert.equal(stored.name, 'orders-sync');
  assert.equal(stored.namespace, `${dbName}.orders`);
  assert.equal((fs.statSync(file).mode & 0o777).toString(8), '600');

  const relisted = await cli([file, '--uri', server.uri]);
  assert.equal(relisted.stdout.split('\n')[1].split(/\s{2,}/)[3], `at ${iso(to)} (rewound: startAtOperationTime)`);

  // The named stream, restarted, delivers every event since that time again, then goes on.
  const again = watch(coll, [], { ...FAST, ...named });
  t.after(() => again.close());
  const expected = events.filter((e) => e.clusterTime.high >= to).map((e) => e.fullDocument.seq);
  assert.deepEqual(expected, range(5, 10));
  const replayed = await nextN(again, expected.length);
  assert.deepEqual(seqs(replayed), expected);
  await insertSeq(coll, 10, 11);
  assert.deepEqual(seqs(await nextN(again, 1)), [10]);
  await again.close();
  const moved = EJSON.parse(fs.readFileSync(file, 'utf8'), { relaxed: false });
  assert.notEqual(moved.token, null, 'the stream stored a token again');

  const reset = await cli(['reset', file, 'orders-sync', '--yes']);
  assert.equal(reset.status, 0, reset.stderr);
  assert.match(reset.stdout, /^reset: "orders-sync"/);
  assert.equal(fs.existsSync(file), false);
  const empty = await cli([file]);
  assert.equal(empty.status, 0);
  assert.equal(empty.stdout, `no stored positions in file ${file}\n`);
});

test('MongoDB store: every name listed; a pruned time refused; a live lease refused without --force, fenced with it', async (t) => {
  if (skipIfExternal(t, 'secantusAdmin.pruneOplog')) return;
  const { server, client, coll, dbName } = await setup(t, { oplogMaxEntries: 5 });
  const store = { type: 'mongodb', db: dbName, collection: 'positions' };
  const a = await consume(coll, { name: 'a', tokenStore: store }, 3, () => insertSeq(coll, 0, 3));
  await consume(coll, { name: 'b', tokenStore: store }, 2, () => insertSeq(coll, 3, 5));
  const storeArg = `mongodb:${dbName}.positions`;

  const listed = await cli([storeArg], { MONGODB_URI: server.uri });
  assert.equal(listed.status, 0, listed.stderr);
  const rows = listed.stdout.trimEnd().split('\n').slice(1).map((l) => l.split(/\s{2,}/));
  assert.deepEqual(
    rows.map((r) => [r[0], r[1], r[2]]),
    [
      ['a', 'changeStream', `${dbName}.orders`],
      ['b', 'changeStream', `${dbName}.orders`],
    ],
  );
  assertNoUri(listed, server.uri);

  // The oplog keeps 5 entries: after more writes and a prune, the first events' time is gone.
  await insertSeq(coll, 5, 20);
  await server.pruneOplog();
  const oldest = await client.db('local').collection('oplog.rs').find().sort({ $natural: 1 }).limit(1).next();
  const pruned = a[0].clusterTime;
  assert.ok(pruned.high < oldest.ts.high || (pruned.high === oldest.ts.high && pruned.low < oldest.ts.low));
  const before = await client.db(dbName).collection('positions').findOne({ _id: 'a' });
  const refused = await cli(['rewind', storeArg, 'a', '--to', iso(pruned.high), '--yes', '--uri', server.uri]);
  assert.equal(refused.status, 1);
  assert.match(refused.stderr, new RegExp(`the oplog no longer holds ${iso(pruned.high).replace('Z', '')}`));
  assertNoUri(refused, server.uri);
  assert.deepEqual(await client.db(dbName).collection('positions').findOne({ _id: 'a' }), before, 'unchanged');

  // A live lease on "a": no move without --force.
  const leases = client.db('resilient_change_stream').collection('leases');
  t.after(() => leases.deleteMany({ _id: 'a' }).catch(() => {}));
  await leases.insertOne({
    _id: 'a',
    holder: 'member-1',
    epoch: Long.fromNumber(4),
    renewals: Long.fromNumber(9),
    renewedAt: new Date(),
    leaseMs: 600000,
    released: false,
  });
  const token = EJSON.stringify(a[1]._id, { relaxed: false });
  const held = await cli(['rewind', storeArg, 'a', '--to', token, '--yes', '--uri', server.uri]);
  assert.equal(held.status, 1);
  assert.match(held.stderr, /"a" is held by a live lease \(holder member-1, epoch 4,/);
  const heldReset = await cli(['reset', storeArg, 'a', '--yes', '--uri', server.uri]);
  assert.equal(heldReset.status, 1);
  assert.deepEqual(await client.db(dbName).collection('positions').findOne({ _id: 'a' }), before, 'unchanged');

  const forced = await cli(['rewind', storeArg, 'a', '--to', token, '--yes', '--force', '--uri', server.uri]);
  assert.equal(forced.status, 0, forced.stderr);
  assert.match(forced.stdout, /fencing the live holder member-1 \(epoch 4 → 5\)/);
  const after = await client.db(dbName).collection('positions').findOne({ _id: 'a' }, { promoteLongs: false });
  assert.deepEqual(after.token, a[1]._id);
  assert.equal(after.startAfter, false);
  assert.ok(after.epoch instanceof Long && after.epoch.toNumber() === 5, `epoch ${after.epoch}`);
  assert.equal(after.fingerprint, before.fingerprint);
  const lease = await leases.findOne({ _id: 'a' }, { promoteLongs: false });
  assert.equal(lease.epoch.toNumber(), 5);

  // A released lease does not hold anything: reset works without --force.
  await leases.updateOne({ _id: 'a' }, { $set: { released: true } });
  const reset = await cli(['reset', storeArg, 'a', '--yes', '--uri', server.uri]);
  assert.equal(reset.status, 0, reset.stderr);
  assert.equal(await client.db(dbName).collection('positions').findOne({ _id: 'a' }), null);
  assert.deepEqual(
    (await client.db(dbName).collection('positions').find().toArray()).map((d) => d._id),
    ['b'],
  );
});

test('usage errors exit 2 and never echo a connection string', async () => {
  const secret = 'mongodb://alice:s3cr3t@db1.example:27017/';
  for (const [args, message] of [
    [[], /no store given/],
    [[secret], /give the connection string with --uri/],
    [['mongodb:app.positions', '--uri', ''], /needs --uri or \$MONGODB_URI/],
    [['rewind', '/tmp/x.json', 'n'], /rewind needs --to/],
    [['rewind', '/tmp/x.json', 'n', '--to', 'yesterday'], /--to must be an ISO time/],
    [['reset', '/tmp/x.json'], /reset needs <store> <name>/],
    [['/tmp/x.json', '--force'], /--force is for rewind and reset/],
  ]) {
    const result = await cli(args.includes('--uri') ? args : [...args, '--uri', secret]);
    assert.equal(result.status, 2, `${args.join(' ')}: ${result.stderr}`);
    assert.match(result.stderr, message);
    assert.ok(!result.stderr.includes('s3cr3t') && !result.stderr.includes('alice'), result.stderr);
  }
});

test('on a terminal, a change is asked for first: "n" leaves the position, "y" changes it', async (t) => {
  const { spawnSync } = require('node:child_process');
  if (process.platform !== 'linux' || spawnSync('script', ['--version']).status !== 0) {
    t.skip('needs util-linux script(1) for a pseudo-terminal');
    return;
  }
  const { coll } = await setup(t);
  const file = tempFile('asked.position.json');
  await consume(coll, { name: 'asked', tokenStore: { type: 'file', path: file } }, 1, () => insertSeq(coll, 0, 1));
  const stored = fs.readFileSync(file, 'utf8');
  const quote = (s) => `'${s.replaceAll("'", "'\\''")}'`;
  /** Runs `reset` on a pseudo-terminal (script(1)) and types `answer` once it asks. */
  const resetOnTerminal = async (answer) => {
    const command = `exec ${[process.execPath, BIN, 'positions', 'reset', file, 'asked'].map(quote).join(' ')}`;
    const child = spawn('script', ['-qfec', command, '/dev/null'], {
      stdio: ['pipe', 'pipe', 'pipe'],
      env: { ...process.env, SHELL: '/bin/sh', MONGODB_URI: '' },
    });
    let screen = '';
    for (const s of [child.stdout, child.stderr]) s.setEncoding('utf8').on('data', (d) => (screen += d));
    const exited = new Promise((resolve) => child.on('close', (code) => resolve(code)));
    // (readline may move the cursor after the question: match it anywhere)
    await waitUntil(() => /\[y\/N\] /.test(screen), 'the question').catch((err) => {
      throw new Error(`${err.message}; screen: ${JSON.stringify(screen)}`);
    });
    child.stdin.write(`${answer}\r`);
    const code = await exited;
    return { code, screen };
  };
  const no = await resetOnTerminal('n');
  assert.equal(no.code, 1, no.screen);
  assert.match(no.screen, /reset "asked" .*delete its position\? \[y\/N\] /);
  assert.match(no.screen, /not changed/);
  assert.equal(fs.readFileSync(file, 'utf8'), stored, 'answered no: the position is unchanged');
  const yes = await resetOnTerminal('y');
  assert.equal(yes.code, 0, yes.screen);
  assert.match(yes.screen, /reset: "asked"/);
  assert.equal(fs.existsSync(file), false, 'answered yes: the position is gone');
});
