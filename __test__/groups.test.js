'use strict';
// Consumer groups: several processes share one named stream's position. One member (the
// lease holder) reads; the others wait and take over when it is killed, paused past its lease,
// or closed; a paused holder's writes are fenced. Real processes, real signals, a real server.

const test = require('node:test');
const assert = require('node:assert/strict');
const path = require('node:path');
const fs = require('node:fs');
const os = require('node:os');
const { ResilientChangeStream, InvalidOptionError } = require('..');
const { setup, waitUntil, waitForEvent, insertSeq, uniqueDb, range } = require('./helpers');
const { startServer, skipIfExternal } = require('../harness');
const { MemberProcess } = require('./member-process');
const { CHECKPOINT } = require('./fixtures/group-member');

const FIXTURE = path.join(__dirname, 'fixtures', 'group-member.js');
const LEASE_MS = 1000;

/** One member process; its control lines become events ('acquired', 'lost', 'failed'). */
class Member extends MemberProcess {
  constructor(config, dir) {
    super(FIXTURE, config, dir);
    /** Its stream is open (it said so once). */
    this.reading = false;
  }

  onLine(kind, rest) {
    if (kind === 'acquired') this.emit('acquired', { epoch: Number(rest[0]), at: Number(rest[1]), member: this });
    else if (kind === 'lost') this.emit('lost', { epoch: Number(rest[0]), reason: rest[1], at: Number(rest[2]) });
    else if (kind === 'reading') this.reading = true;
  }

  /** Every event it handed out: `{ member, epoch, seq, at }`, in order. */
  deliveries() {
    return this.outLines().map(([epoch, seq, at]) => ({ member: this.id, epoch: Number(epoch), seq: Number(seq), at: Number(at) }));
  }
}

/** Starts a group of members on `ctx`'s collection; `t.after` kills what is left. */
function groupOf(t, ctx, { tokenStore, groupUri, name = 'indexer', checkpoint }) {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'rcs-group-'));
  const members = [];
  let next = 0;
  const config = () => ({
    uri: ctx.server.uri,
    db: ctx.dbName,
    collection: ctx.collName,
    name,
    member: `m${next++}`,
    leaseMs: LEASE_MS,
    tokenStore,
    groupUri,
    checkpoint,
  });
  const start = () => {
    const member = new Member(config(), dir);
    member.on('failed', (line) => assert.fail(`${member.id}: ${line}`));
    members.push(member);
    return member;
  };
  t.after(async () => {
    for (const m of members) m.signal('SIGKILL');
    await Promise.all(members.map((m) => m.exited));
    fs.rmSync(dir, { recursive: true, force: true });
  });
  return { members, start };
}

/** The next acquisition by any of `members` with an epoch above `above`. */
function nextAcquisition(members, above, ms = 20000) {
  return Promise.race(
    members.map((m) => waitForEvent(m, 'acquired', (a) => a.epoch > above, ms).catch(() => new Promise(() => {}))),
  ).then((a) => a, () => null);
}

/** Writes `{ seq }` documents at ~300/s until stopped; resolves with the last seq written. */
function writer(coll) {
  let stop = false;
  let seq = 0;
  const done = (async () => {
    while (!stop) {
      await insertSeq(coll, seq + 1, seq + 4);
      seq += 3;
      await new Promise((resolve) => setTimeout(resolve, 10)); // pacing, not synchronisation
    }
    return seq;
  })();
  return { stop: () => ((stop = true), done), written: () => seq };
}

/** Every write to the token store's record, in order: `{ epoch, time }` (time: its clusterTime). */
async function recordWrites(t, positions) {
  const writes = [];
  const changes = positions.watch([], { fullDocument: 'updateLookup' });
  changes.on('change', (c) => {
    const doc = c.operationType === 'update' ? null : c.fullDocument;
    const epoch = doc ? doc.epoch : c.updateDescription?.updatedFields?.epoch;
    const time = doc?.clusterTime ?? null;
    writes.push({ op: c.operationType, epoch: Number(epoch), time: time ? time.toString() : null, timeValue: time });
  });
  changes.on('error', () => {}); // the client closes first at teardown
  t.after(() => changes.close());
  // Open before anything is written.
  await changes.tryNext().catch(() => {});
  return writes;
}

test('3 members: kill -9 the holder twice, pause one past its lease, close one — nothing lost, order kept, writes fenced', async (t) => {
  const ctx = await setup(t);
  const tokenStore = { type: 'mongodb', db: ctx.dbName, collection: 'positions' };
  const writes = await recordWrites(t, ctx.db.collection('positions'));
  const group = groupOf(t, ctx, { tokenStore });
  const live = () => group.members.filter((m) => m.proc.exitCode === null && m.proc.signalCode === null);
  for (let i = 0; i < 3; i++) group.start();

  let current = await nextAcquisition(group.members, 0);
  assert.ok(current, 'a member took the lease');
  // Written before its stream opens, an event is not in it: a new stream starts at "now".
  await waitUntil(() => current.member.reading, `${current.member.id}'s stream open`);
  const w = writer(ctx.coll);
  const deliveredBy = (m, epoch) => m.deliveries().filter((d) => d.epoch === epoch).length;
  const failovers = [];

  // Twice: kill -9 the holder once it delivers; a standby takes over; a new member replaces it.
  for (let round = 0; round < 2; round++) {
    const holder = current.member;
    await waitUntil(() => deliveredBy(holder, current.epoch) >= 100, `${holder.id} delivering`);
    const killedAt = Date.now();
    holder.signal('SIGKILL');
    await holder.exited;
    const next = await nextAcquisition(live(), current.epoch);
    assert.ok(next, 'a standby took over');
    failovers.push(next.at - killedAt);
    assert.ok(next.at - killedAt < LEASE_MS + 3000, `taken over ${next.at - killedAt} ms after the kill`);
    group.start();
    current = next;
  }

  // SIGSTOP the holder past its lease: a standby takes over; after SIGCONT the zombie's
  // writes are refused and it hands out nothing more.
  const zombie = current.member;
  const zombieEpoch = current.epoch;
  await waitUntil(() => deliveredBy(zombie, zombieEpoch) >= 100, `${zombie.id} delivering`);
  zombie.signal('SIGSTOP');
  const stoppedAt = Date.now();
  const successor = await nextAcquisition(live().filter((m) => m !== zombie), zombieEpoch);
  assert.ok(successor, 'a standby took over from the paused holder');
  assert.ok(successor.at - stoppedAt >= LEASE_MS * 0.8, 'not before the paused holder could have lapsed');
  await waitUntil(() => deliveredBy(successor.member, successor.epoch) >= 50, 'the successor delivering');
  const lost = waitForEvent(zombie, 'lost', (l) => l.epoch === zombieEpoch, 20000);
  zombie.signal('SIGCONT');
  const loss = await lost;
  assert.ok(['takenOver', 'fenced', 'unresponsive', 'renewFailed'].includes(loss.reason), loss.reason);
  current = successor;

  // Close the holder gracefully: its lease is released and taken at once.
  const closing = current.member;
  await waitUntil(() => deliveredBy(closing, current.epoch) >= 50, `${closing.id} delivering`);
  const closedAt = Date.now();
  closing.signal('SIGTERM');
  const afterClose = await nextAcquisition(live().filter((m) => m !== closing), current.epoch);
  assert.ok(afterClose, 'a standby took over after the close');
  assert.ok(afterClose.at - closedAt < LEASE_MS, `a released lease is taken at once (${afterClose.at - closedAt} ms)`);
  assert.equal(await closing.exited, 0);

  const last = await w.stop();
  const everything = () => group.members.flatMap((m) => m.deliveries());
  await waitUntil(() => new Set(everything().map((d) => d.seq)).size >= last, `all ${last} events delivered`, 90000);
  for (const m of live()) m.signal('SIGTERM');
  await Promise.all(group.members.map((m) => m.exited));

  const { byEpoch, duplicates } = checkDeliveries(everything(), last);
  // The zombie handed out nothing after it woke.
  const zombieLate = byEpoch.get(zombieEpoch).filter((d) => d.at > successor.at);
  assert.ok(zombieLate.length <= 1, `the paused holder handed out ${zombieLate.length} events after its successor began`);

  // The stored position never moved backwards, and its epoch never went down.
  const saved = writes.filter((x) => x.epoch > 0);
  assert.ok(saved.length > 10, 'the store was written');
  for (let i = 1; i < saved.length; i++) {
    assert.ok(saved[i].epoch >= saved[i - 1].epoch, `epoch went down at write ${i}: ${JSON.stringify(saved.slice(i - 1, i + 1))}`);
  }
  const times = saved.filter((x) => x.timeValue).map((x) => x.timeValue);
  for (let i = 1; i < times.length; i++) {
    assert.ok(times[i].compare(times[i - 1]) >= 0, `the stored position moved backwards at write ${i}`);
  }
  t.diagnostic(`failover ms: ${failovers.join(', ')}; repeated per takeover: ${duplicates.join(', ')}`);
});

/**
 * 0 lost; per tenure consecutive and in order; across tenures (by epoch) the next continues at
 * or before where the last stopped (a repeated prefix, bounded by the checkpoint window), never
 * after (a gap); never two members handing out at once.
 */
/** What each member handed out per tenure, and which seqs nobody did: for a failure's report. */
function describeDeliveries(members, last) {
  const lines = [];
  const seen = new Set();
  for (const m of members) {
    const tenures = new Map();
    for (const d of m.deliveries()) {
      seen.add(d.seq);
      const t = tenures.get(d.epoch) ?? { first: d, last: d, count: 0 };
      t.last = d;
      t.count++;
      tenures.set(d.epoch, t);
    }
    const spans = [...tenures].map(([e, t]) => `epoch ${e}: ${t.count} seq ${t.first.seq}..${t.last.seq} at ${t.first.at}..${t.last.at}`);
    lines.push(`${m.id}: ${m.lines.join(' | ')} || ${spans.join('; ')}`);
  }
  const missing = [];
  for (let seq = 1; seq <= last; seq++) if (!seen.has(seq)) missing.push(seq);
  lines.push(`missing ${missing.length}: ${missing.slice(0, 20).join(',')}${missing.length > 20 ? ',…' : ''}`);
  return lines.join('\n');
}

function checkDeliveries(all, last) {
  const seen = new Set(all.map((d) => d.seq));
  for (let seq = 1; seq <= last; seq++) assert.ok(seen.has(seq), `seq ${seq} was delivered`);
  const byEpoch = new Map();
  for (const d of all) {
    if (!byEpoch.has(d.epoch)) byEpoch.set(d.epoch, []);
    byEpoch.get(d.epoch).push(d);
  }
  const epochs = [...byEpoch.keys()].sort((a, b) => a - b);
  let previous = null;
  const duplicates = [];
  for (const epoch of epochs) {
    const run = byEpoch.get(epoch);
    assert.equal(new Set(run.map((d) => d.member)).size, 1, `epoch ${epoch} has one member`);
    for (let i = 1; i < run.length; i++) assert.equal(run[i].seq, run[i - 1].seq + 1, `epoch ${epoch} in order`);
    if (previous) {
      const lastSeq = previous[previous.length - 1].seq;
      assert.ok(run[0].seq <= lastSeq + 1, `epoch ${epoch} starts at ${run[0].seq}, after a gap from ${lastSeq}`);
      const repeated = lastSeq + 1 - run[0].seq;
      duplicates.push(repeated);
      // The checkpoint window (maxUnsavedEvents) plus the one in flight.
      assert.ok(repeated <= CHECKPOINT.maxUnsavedEvents + 1, `epoch ${epoch} repeats ${repeated} events`);
      // Never two members delivering at once: the next tenure starts after the last one's
      // last hand-out (allowing the one hand-out a pause may catch in flight).
      const overlapping = previous.filter((d) => d.at > run[0].at).length;
      assert.ok(overlapping <= 1, `epoch ${epoch - 1} handed out ${overlapping} events after epoch ${epoch} began`);
    }
    previous = run;
  }
  return { byEpoch, duplicates };
}

test('lease store outages (fail points, then its server killed and restarted empty): the holder stops at its lease, nothing is lost', async (t) => {
  const ctx = await setup(t);
  if (skipIfExternal(t, 'kill and restart the coordination server')) return;
  const coordination = await startServer();
  t.after(() => coordination.close());
  const tokenStore = { type: 'mongodb', db: ctx.dbName, collection: 'positions' };
  const group = groupOf(t, ctx, { tokenStore, groupUri: coordination.uri });
  group.start();
  group.start();
  let current = await nextAcquisition(group.members, 0);
  assert.ok(current, 'a member took the lease');
  // Written before its stream opens, an event is not in it: a new stream starts at "now".
  await waitUntil(() => current.member.reading, `${current.member.id}'s stream open`);
  const w = writer(ctx.coll);
  const deliveredBy = (m, epoch) => m.deliveries().filter((d) => d.epoch === epoch).length;
  /** The holder's tenure ends by renewFailed; nothing of it is handed out after that. */
  const expectStop = async (what) => {
    const holder = current.member;
    const loss = await waitForEvent(holder, 'lost', (l) => l.epoch === current.epoch, 20000);
    assert.equal(loss.reason, 'renewFailed', what);
    const late = holder.deliveries().filter((d) => d.epoch === current.epoch && d.at > loss.at);
    assert.equal(late.length, 0, `${what}: nothing handed out after the lease ran out`);
  };

  // 1. Every lease command fails: the holder cannot renew and stops within its lease.
  await waitUntil(() => deliveredBy(current.member, current.epoch) >= 50, 'the holder delivering');
  await coordination.failCommand({
    commands: ['update', 'find', 'findAndModify', 'insert'],
    mode: 'alwaysOn',
    errorCode: 91,
  });
  await expectStop('fail points on the lease collection');
  await coordination.failPointOff();
  current = await nextAcquisition(group.members, current.epoch);
  assert.ok(current, 'taken again once the lease collection answers');

  // 2. The coordination server dies, and comes back empty (epochs restart at 1): the holder
  // stops; the next holder's epoch is lifted above what the token store holds.
  await waitUntil(() => deliveredBy(current.member, current.epoch) >= 50, 'the holder delivering');
  const before = current.epoch;
  await coordination.kill();
  await expectStop('the coordination server killed');
  await coordination.restart();
  // A later epoch than any before (a member may take one and lose it again while the server
  // comes back), delivering.
  const later = () => group.members.flatMap((m) => m.deliveries()).filter((d) => d.epoch > before);
  // Generous: on a loaded machine a getMore cut by the restart can wait out the 30 s stall
  // watchdog before the stream re-opens; what is asserted is that nothing is lost.
  await waitUntil(() => later().length >= 20, 'a later epoch delivering', 90000).catch((err) => {
    t.diagnostic(describeDeliveries(group.members, w.written()));
    throw err;
  });
  const last = await w.stop();
  const everything = () => group.members.flatMap((m) => m.deliveries());
  await waitUntil(() => new Set(everything().map((d) => d.seq)).size >= last, `all ${last} events delivered`, 90000).catch((err) => {
    t.diagnostic(describeDeliveries(group.members, last));
    throw err;
  });
  checkDeliveries(everything(), last);
});

test('a group is refused over stores that cannot fence; a custom store with fence() serves one (close hands over at once)', async (t) => {
  const ctx = await setup(t);
  const base = { uri: ctx.server.uri, db: ctx.dbName, collection: ctx.collName, name: 'g' };
  for (const tokenStore of [{ type: 'memory' }, { type: 'file', path: path.join(os.tmpdir(), 'rcs-g.json') }, { load() {}, save() {} }]) {
    assert.throws(
      () => new ResilientChangeStream({ ...base, tokenStore, group: {} }),
      (err) => err instanceof InvalidOptionError && /option "group" needs a token store .* fences writes/.test(err.message),
    );
  }
  assert.throws(() => new ResilientChangeStream({ ...base, group: { leaseMs: 'x' } }), /group\.leaseMs/);
  assert.throws(() => new ResilientChangeStream({ ...base, name: undefined, group: {} }), /"name"/);

  // An in-process store: conditional writes by epoch.
  const records = new Map();
  const store = {
    load: (name) => records.get(name) ?? null,
    save: (name, record, epoch) => {
      if (epoch !== undefined && (records.get(name)?.epoch ?? 0) > epoch) return false;
      records.set(name, record);
      return true;
    },
    fence: (name, epoch) => {
      const record = records.get(name);
      if ((record?.epoch ?? 0) >= epoch) return false;
      records.set(name, { ...record, epoch });
      return true;
    },
  };
  const group = { leaseMs: 1000, db: uniqueDb('leases') };
  const a = new ResilientChangeStream({ ...base, tokenStore: store, group: { ...group, member: 'a' }, maxAwaitTimeMS: 100 });
  const b = new ResilientChangeStream({ ...base, tokenStore: store, group: { ...group, member: 'b' }, maxAwaitTimeMS: 100 });
  t.after(() => Promise.all([a.close(), b.close()]));
  const got = { a: [], b: [] };
  const acquiredA = waitForEvent(a, 'leaseAcquired');
  a.on('change', (e, context) => got.a.push([e.fullDocument.seq, context.epoch]));
  assert.equal((await acquiredA).epoch, 1);
  b.on('change', (e, context) => got.b.push([e.fullDocument.seq, context.epoch]));
  await waitUntil(
    () => b.health().group.holder === 'a' && a.health().state === 'streaming',
    'a streaming, b standing by and seeing a hold the lease',
  );
  assert.equal(b.health().state, 'standby');
  assert.deepEqual(a.lease, { epoch: 1, member: 'a', since: a.lease.since });
  assert.equal(b.lease, null);
  assert.equal(b.health().group.holder, 'a');
  await insertSeq(ctx.coll, 1, 11);
  await waitUntil(() => got.a.length === 10, 'a handed out 10 events');
  const acquiredB = waitForEvent(b, 'leaseAcquired');
  const closedAt = Date.now();
  await a.close();
  assert.equal((await acquiredB).epoch, 2);
  assert.ok(Date.now() - closedAt < 1000, 'a released lease is taken before it would lapse');
  await insertSeq(ctx.coll, 11, 21);
  await waitUntil(() => got.b.length === 10, 'b handed out 10 events');
  assert.deepEqual(got.a, Array.from({ length: 10 }, (_, i) => [i + 1, 1]));
  assert.deepEqual(got.b, Array.from({ length: 10 }, (_, i) => [i + 11, 2]), 'b continues after what a stored: no loss, no repeat');
  assert.equal(records.get('g').epoch, 2);
  assert.deepEqual(b.health().group.role, 'holder');
});

test("the group's first position is stored at once: a holder killed -9 before its first checkpoint leaves its successor nothing to skip", async (t) => {
  const ctx = await setup(t);
  const name = 'first-save';
  const tokenStore = { type: 'mongodb', db: ctx.dbName, collection: 'positions' };
  // No save by the policy within the test: only the group's first position.
  const checkpoint = { everyEvents: 1_000_000, everyMs: 3_600_000, maxUnsavedEvents: 1_000_000 };
  const { start } = groupOf(t, ctx, { tokenStore, name, checkpoint });
  const positions = ctx.client.db(ctx.dbName).collection('positions');
  const first = start();
  await waitForEvent(first, 'acquired', () => true, 20000);
  await waitUntil(() => first.reading, 'the holder reading');
  await waitUntil(
    async () => (await positions.countDocuments({ _id: name, 'token._data': { $type: 'string' } })) === 1,
    'a stored position (not only its fence)',
    20000,
  );
  await insertSeq(ctx.coll, 0, 10);
  await waitUntil(() => first.deliveries().length === 10, 'the holder hands out every insert');
  first.signal('SIGKILL');
  await first.exited;

  // No start option: without that position the successor would start at "now", after them.
  const second = start();
  await waitForEvent(second, 'acquired', () => true, 20000);
  await insertSeq(ctx.coll, 10, 11);
  await waitUntil(() => second.deliveries().length >= 11, 'the successor hands out every insert', 20000).catch((e) =>
    assert.fail(`${e.message}: it handed out ${second.deliveries().map((d) => d.seq)}`),
  );
  assert.deepEqual(
    second.deliveries().map((d) => d.seq),
    range(0, 11),
    'from the first position: each insert once, in order',
  );
});
