'use strict';
// Partitioned groups (`group: { partitions: P }`): 3 member processes share P = 6 partitions
// of one stream; a writer updates 50 keys over and over; a 4th member (with `concurrency: 4`)
// joins mid-run and one of the first three is killed with -9 later. Every partition is served, each key's versions come
// in order across the whole run (a hand-over may repeat what was already delivered, never skip
// or reorder), nothing is lost and repeats stay bounded.

const test = require('node:test');
const assert = require('node:assert/strict');
const path = require('node:path');
const fs = require('node:fs');
const os = require('node:os');
const { ResilientChangeStream, InvalidOptionError } = require('..');
const { setup, waitUntil, range } = require('./helpers');
const { MemberProcess } = require('./member-process');
const { CHECKPOINT, partitionOf } = require('./fixtures/partition-member');

const FIXTURE = path.join(__dirname, 'fixtures', 'partition-member.js');
const LEASE_MS = 1500;
const PARTITIONS = 6;
const KEYS = 50;

/** One member process; `holds` follows its acquired/lost lines. */
class Member extends MemberProcess {
  constructor(config, dir) {
    super(FIXTURE, config, dir);
    /** partition → epoch held now */
    this.holds = new Map();
  }

  onLine(kind, rest) {
    const [partition, epoch] = rest.map(Number);
    if (kind === 'acquired') this.holds.set(partition, epoch);
    else if (kind === 'lost' && this.holds.get(partition) === epoch) this.holds.delete(partition);
  }

  /** Every event it handed out: `{ member, partition, epoch, key, v, at }`, in order. */
  deliveries() {
    return this.outLines().map(([partition, epoch, key, v, at]) => ({
      member: this.id,
      partition: Number(partition),
      epoch: Number(epoch),
      key,
      v: Number(v),
      at: Number(at),
    }));
  }
}

/** Updates keys k0..k49 in rounds (`{ $set: { v: round } }`, upserted) until stopped. */
function writer(coll) {
  let stop = false;
  let rounds = 0;
  const done = (async () => {
    while (!stop) {
      const round = rounds + 1;
      for (let k = 0; k < KEYS; k += 10) {
        const batch = [];
        for (let j = k; j < k + 10; j++) batch.push({ updateOne: { filter: { _id: `k${j}` }, update: { $set: { v: round } }, upsert: true } });
        await coll.bulkWrite(batch, { ordered: true });
      }
      rounds = round;
    }
    return rounds;
  })();
  return { stop: () => ((stop = true), done), rounds: () => rounds };
}

/**
 * Member processes of one partitioned group on `ctx`'s collection (`options`: what differs from
 * the fixture's defaults, for every member); `t.after` kills what is left.
 */
function groupOf(t, ctx, options) {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'rcs-parts-'));
  const members = [];
  const start = (member, extra = {}) => {
    const m = new Member(
      {
        uri: ctx.server.uri,
        db: ctx.dbName,
        collection: ctx.collName,
        member,
        leaseMs: LEASE_MS,
        tokenStore: { type: 'mongodb', db: ctx.dbName, collection: 'positions' },
        ...options,
        ...extra,
      },
      dir,
    );
    m.on('failed', (line) => assert.fail(`${m.id}: ${line}`));
    members.push(m);
    return m;
  };
  t.after(async () => {
    for (const m of members) m.proc.kill('SIGKILL');
    await Promise.all(members.map((m) => m.exited));
    fs.rmSync(dir, { recursive: true, force: true });
  });
  return { members, start };
}

test('partitions: 3 members, P = 6; one joins and one is killed -9 mid-run — every partition served, per-key order, 0 lost', async (t) => {
  const ctx = await setup(t);
  const { operationTime } = await ctx.db.command({ ping: 1 });
  assert.ok(operationTime, 'the server reports its operation time');
  const { members, start } = groupOf(t, ctx, {
    name: 'indexer',
    partitions: PARTITIONS,
    startAt: { t: operationTime.high, i: operationTime.low },
  });
  const live = () => members.filter((m) => m.alive());
  /** Every partition held by exactly one live member, each holding its fair share. */
  const balanced = () => {
    const holders = live().flatMap((m) => [...m.holds.keys()]);
    const share = Math.floor(PARTITIONS / live().length);
    return (
      holders.length === PARTITIONS &&
      new Set(holders).size === PARTITIONS &&
      live().every((m) => m.holds.size >= share && m.holds.size <= share + 1)
    );
  };
  const describe = () =>
    live()
      .map((m) => `${m.id}: [${[...m.holds.keys()].join(',')}] delivered ${m.deliveries().length} (${m.lines.slice(-8).join(' | ')})`)
      .join('; ') + `; writer at round ${w ? w.rounds() : 0}`;
  let w = null;
  const delivered = () => members.reduce((n, m) => n + m.deliveries().length, 0);

  for (const id of ['m0', 'm1', 'm2']) start(id);
  await waitUntil(balanced, 'the 3 members sharing the 6 partitions', 30000).catch((e) => assert.fail(`${e.message}: ${describe()}`));
  w = writer(ctx.coll);
  await waitUntil(() => delivered() >= 1500, '1500 deliveries', 30000).catch((e) => assert.fail(`${e.message}: ${describe()}`));

  // A 4th member joins, running up to 4 handlers at once (key-ordered): the others hand
  // partitions over to it.
  const joiner = start('m3', { concurrency: 4 });
  await waitUntil(() => joiner.holds.size >= 1 && balanced(), 'the 4 members rebalanced', 30000).catch((e) =>
    assert.fail(`${e.message}: ${describe()}`),
  );
  await waitUntil(() => joiner.deliveries().length >= 200, 'the new member delivering', 30000).catch((e) =>
    assert.fail(`${e.message}: ${describe()}`),
  );

  // kill -9 a member holding partitions: the others take them over once its leases lapse.
  const victim = members.find((m) => m.id === 'm1');
  assert.ok(victim.holds.size > 0, 'the victim holds partitions');
  const before = delivered();
  victim.proc.kill('SIGKILL');
  await victim.exited;
  await waitUntil(() => balanced() && delivered() >= before + 1500, 'the 3 survivors sharing the 6 partitions, delivering', 45000).catch(
    (e) => assert.fail(`${e.message}: ${describe()}`),
  );

  const rounds = await w.stop();
  const everything = () => members.flatMap((m) => m.deliveries());
  const complete = () => {
    const seen = new Set(everything().map((d) => `${d.key} ${d.v}`));
    for (let k = 0; k < KEYS; k++) for (let v = 1; v <= rounds; v++) if (!seen.has(`k${k} ${v}`)) return false;
    return true;
  };
  await waitUntil(complete, `all ${rounds} rounds of ${KEYS} keys delivered`, 60000).catch((e) => {
    const seen = new Set(everything().map((d) => `${d.key} ${d.v}`));
    const missing = new Map();
    for (let k = 0; k < KEYS; k++) {
      const partition = partitionOf({ _id: `k${k}` }, PARTITIONS);
      for (let v = 1; v <= rounds; v++) if (!seen.has(`k${k} ${v}`)) missing.set(partition, (missing.get(partition) ?? 0) + 1);
    }
    assert.fail(`${e.message}: missing by partition ${JSON.stringify([...missing])}; ${describe()}`);
  });
  for (const m of live()) m.proc.kill('SIGTERM');
  const codes = await Promise.all(live().map((m) => m.exited));
  assert.ok(codes.every((c) => c === 0), `members closed cleanly: ${codes}`);

  const stats = checkPartitioned(everything(), rounds);
  t.diagnostic(
    `${rounds} rounds × ${KEYS} keys = ${rounds * KEYS} writes; ${stats.deliveries} deliveries, ${stats.repeats} repeated ` +
      `(${stats.tenures} tenures, largest repeat ${stats.largestRepeat} versions of one key)`,
  );
});

/**
 * Every partition served; per key the versions 1..rounds all delivered (0 lost); over the key's
 * partition's tenures in epoch order, each delivery either continues the last one (v + 1) or
 * goes back (a repeated prefix after a hand-over or a dropped read) by a bounded amount — never a
 * gap, never an older version after a newer one except as such a repeat. And a tenure that ended
 * hands out at most one event after the next tenure of its partition began.
 */
function checkPartitioned(all, rounds) {
  const partitionsServed = new Set(all.map((d) => d.partition));
  assert.equal(partitionsServed.size, PARTITIONS, `partitions served: ${[...partitionsServed].sort()}`);
  for (const d of all) assert.ok(Number.isInteger(d.epoch), `a delivery without a held epoch: ${JSON.stringify(d)}`);
  // Tenures: (partition, epoch) → deliveries in order; one member each.
  const tenures = new Map();
  for (const d of all) {
    const id = `${d.partition} ${d.epoch}`;
    if (!tenures.has(id)) tenures.set(id, []);
    tenures.get(id).push(d);
  }
  for (const [id, run] of tenures) assert.equal(new Set(run.map((d) => d.member)).size, 1, `tenure ${id} has one member`);
  const ordered = [...tenures.values()].sort((a, b) => a[0].partition - b[0].partition || a[0].epoch - b[0].epoch);
  for (let i = 1; i < ordered.length; i++) {
    const [prev, next] = [ordered[i - 1], ordered[i]];
    if (prev[0].partition !== next[0].partition) continue;
    const late = prev.filter((d) => d.at > next[0].at).length;
    assert.ok(late <= 1, `partition ${next[0].partition}: epoch ${prev[0].epoch} handed out ${late} events after epoch ${next[0].epoch} began`);
  }
  let repeats = 0;
  let largestRepeat = 0;
  const byKey = new Map();
  for (const run of ordered) for (const d of run) {
    if (!byKey.has(d.key)) byKey.set(d.key, []);
    byKey.get(d.key).push(d);
  }
  for (const [key, seq] of byKey) {
    assert.equal(new Set(seq.map((d) => d.partition)).size, 1, `${key} stays in one partition`);
    assert.equal(seq[0].v, 1, `${key} starts at its first version`);
    let max = seq[0].v;
    for (let i = 1; i < seq.length; i++) {
      const [prev, d] = [seq[i - 1], seq[i]];
      if (d.v === prev.v + 1) {
        max = Math.max(max, d.v);
        continue;
      }
      assert.ok(d.v <= prev.v, `${key}: v ${d.v} after v ${prev.v} (epoch ${prev.epoch} → ${d.epoch}): a gap or reorder`);
      const back = max - d.v + 1;
      repeats += 1;
      largestRepeat = Math.max(largestRepeat, back);
      // The unsaved window of its partition (maxUnsavedEvents), in versions of one key.
      assert.ok(back <= CHECKPOINT.maxUnsavedEvents + 1, `${key}: went back ${back} versions`);
    }
    const seen = new Set(seq.map((d) => d.v));
    for (let v = 1; v <= rounds; v++) assert.ok(seen.has(v), `${key} v ${v} was delivered`);
  }
  return { deliveries: all.length, repeats, largestRepeat, tenures: tenures.size };
}

/** Whether the server computes `$toHashedIndexKey` (MongoDB 7.0+). */
async function serverHashesKeys(ctx) {
  const pipeline = [{ $documents: [{ k: 1 }] }, { $project: { h: { $toHashedIndexKey: '$k' } } }];
  return ctx.client
    .db(ctx.dbName)
    .aggregate(pipeline)
    .toArray()
    .then(() => true, () => false);
}

test('group.partitions is validated and needs a store that fences', async (t) => {
  const ctx = await setup(t);
  const base = { uri: ctx.server.uri, db: ctx.dbName, collection: ctx.collName, name: 'g' };
  const tokenStore = { type: 'mongodb', db: ctx.dbName, collection: 'positions' };
  for (const [partitions, got] of [[0, '0'], [1.5, '1.5'], [1025, '1025'], ['6', 'string'], [-1, '-1']]) {
    assert.throws(
      () => new ResilientChangeStream({ ...base, tokenStore, group: { partitions } }),
      (err) => err instanceof InvalidOptionError && err.message.includes(`option "group.partitions" must be an integer 1..=1024, got ${got}`),
      String(partitions),
    );
  }
  for (const [group, message] of [
    [{ partitions: 6, split: 'server' }, `option "group.split" must be 'auto' or 'client', got 'server'`],
    [{ partitions: 6, split: 1 }, 'option "group.split" must be a non-empty string'],
    [{ split: 'client' }, 'option "group.split" must be given only with group.partitions'],
  ]) {
    assert.throws(
      () => new ResilientChangeStream({ ...base, tokenStore, group }),
      (err) => err instanceof InvalidOptionError && err.message.includes(message),
      JSON.stringify(group),
    );
  }
  for (const store of [{ type: 'memory' }, { type: 'file', path: path.join(os.tmpdir(), 'rcs-p.json') }]) {
    assert.throws(
      () => new ResilientChangeStream({ ...base, tokenStore: store, group: { partitions: 2 } }),
      (err) => err instanceof InvalidOptionError && /option "group" needs a token store .* fences writes/.test(err.message),
    );
  }
  const s = new ResilientChangeStream({ ...base, tokenStore, group: { partitions: 2, member: 'solo', leaseMs: 1000 } });
  const acquired = [];
  s.on('leaseAcquired', (lease) => acquired.push(lease.partition));
  s.on('change', () => {});
  await waitUntil(() => acquired.length === 2, 'a lone member takes both partitions');
  assert.deepEqual(acquired.sort(), [0, 1]);
  const group = s.health().group;
  assert.deepEqual(group.partitions, [0, 1]);
  assert.equal(group.partitionCount, 2);
  assert.equal(group.role, 'holder');
  // Known once the stream opened: the test server cannot hash keys ($toHashedIndexKey), a
  // MongoDB 7.0+ server can.
  await waitUntil(() => s.health().group.split != null, 'the split is known');
  assert.equal(s.health().group.split, (await serverHashesKeys(ctx)) ? 'server' : 'client');
  await s.close();
});

test("a partition's first position is stored at once: a member killed -9 before its first checkpoint leaves its successor nothing to skip", async (t) => {
  const ctx = await setup(t);
  const NAME = 'first-save';
  const COUNT = 2;
  const { start } = groupOf(t, ctx, {
    name: NAME,
    partitions: COUNT,
    // No start option (a member without a stored position starts at "now"), and no save
    // by the policy within the test: only the first position of each partition.
    checkpoint: { everyEvents: 1_000_000, everyMs: 3_600_000, maxUnsavedEvents: 1_000_000 },
  });
  const positions = ctx.client.db(ctx.dbName).collection('positions');
  const names = range(0, COUNT).map((p) => `${NAME}#p${p}`);
  const keys = (m) => new Set(m.deliveries().map((d) => d.key));

  const first = start('a');
  await waitUntil(() => first.holds.size === COUNT, 'the first member takes both partitions');
  await waitUntil(
    async () => (await positions.countDocuments({ _id: { $in: names }, 'token._data': { $type: 'string' } })) === COUNT,
    'a stored position for each partition (not only its fence)',
    20000,
  );
  const written = range(0, 20).map((i) => ({ _id: `k${i}`, v: 1 }));
  await ctx.coll.insertMany(written);
  await waitUntil(() => keys(first).size === written.length, 'the first member hands out every insert');
  const partitionsWritten = new Set(written.map((d) => partitionOf({ _id: d._id }, COUNT)));
  assert.equal(partitionsWritten.size, COUNT, 'the inserts fall in both partitions');
  first.proc.kill('SIGKILL');
  await first.exited;

  // Its leases lapse; the successor continues from the first positions, before the inserts.
  const second = start('b');
  await waitUntil(() => second.holds.size === COUNT, 'the successor takes both partitions', 20000);
  await ctx.coll.insertOne({ _id: 'after', v: 1 });
  await waitUntil(() => keys(second).size === written.length + 1, 'the successor hands out every insert', 20000).catch((e) =>
    assert.fail(`${e.message}: it handed out ${[...keys(second)].sort().join(',')}`),
  );
  for (const d of second.deliveries()) assert.equal(d.v, 1);
  assert.equal(second.deliveries().length, written.length + 1, 'each once');
});
