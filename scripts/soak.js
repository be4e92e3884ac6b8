#!/usr/bin/env node
'use strict';
// `npm run soak -- --minutes 10 [--seed N]` — the chaos soak (issue #13, "nothing wedges it").
//
// A writer inserts { _id: seq, seq } at a steady rate into a SecantusDB test server (disk
// storage, --sync-on-commit, so a kill -9 keeps every acknowledged write); two consumer child
// processes (scripts/soak/consumer.js: a named ResilientChangeStream with a file store each)
// print every event's seq: A is SIGKILLed and restarted once a round, B is never killed (one
// life through every server-side fault: its RSS over the whole run). Meanwhile faults are
// injected one at a time, drawn from a seeded RNG:
//
//   getmore-error       a resumable error on A's or B's getMore, 1-4 times in a row
//   closed-connection   the server closes A's or B's connection on getMore, 1-3 times
//   blocked-connection  A's or B's getMore hangs 3-6 s (the stall watchdog must notice)
//   server-kill         kill -9 of the server, down 0.5-3 s, restarted on the same data
//   step-down           replSetStepDown for 1-3 s (writes fail meanwhile)
//   consumer-kill       SIGKILL of A, restarted 0-1 s later from its file store
//
// Every kind runs once per round, rounds in a seeded random order, until the time is up (or
// --max-faults). Then the writer stops, the consumers drain and are stopped with SIGTERM, and
// it prints, per consumer: lost (a written seq never delivered), out of order (within one
// life, a seq that does not directly follow its predecessor), duplicates per consumer kill
// (seqs a new life delivered again), RSS at the start and end of the lives; and the recovery
// time per fault kind: fault end -> the next event delivered, for each consumer the fault hit.
// Exit 1 on any loss, disorder, unrecovered fault or consumer failure.
//
// Fault end: server-kill, the restarted server listening; step-down, its period over;
// consumer-kill, the new consumer spawned (recovery includes Node's start); getmore-error and
// closed-connection, the consumer's last reconnect report of the fault; blocked-connection,
// the consumer's stall report (it abandoned the hung getMore). Loopback only: everything
// runs on 127.0.0.1, failpoints are scoped to the target consumer's appName.

const fs = require('node:fs');
const os = require('node:os');
const path = require('node:path');
const { spawn } = require('node:child_process');
const { setTimeout: sleep } = require('node:timers/promises');
const { MongoClient } = require('mongodb');
const { startServer } = require('../harness');
const { SECANTUS_SPEC } = require('../harness/install');
const { hrMs, percentile } = require('./bench/common');

const CONSUMER = path.join(__dirname, 'soak', 'consumer.js');
const DB = 'rcs_soak';
const COLLECTION = 'events';
const FAILPOINT_KINDS = new Set(['getmore-error', 'closed-connection', 'blocked-connection']);
const FAULT_KINDS = [
  'getmore-error',
  'closed-connection',
  'blocked-connection',
  'server-kill',
  'step-down',
  'consumer-kill',
];
// Labelled ResumableChangeStreamError (43 half the time without: it resumes by code); none is a state-change code, whose
// failpoint replies (no topologyVersion) would also test the driver's monitor, not us.
const RESUMABLE_CODES = [6, 7, 89, 9001, 43];
const RECOVERY_TIMEOUT_MS = 60_000;
const DRAIN_TIMEOUT_MS = 120_000;
const NOTICE_TIMEOUT_MS = 15_000;
const STOP_TIMEOUT_MS = 30_000;
const MB = 1024 * 1024;

// ---------------------------------------------------------------------------
// Options

function usage(exitCode) {
  process.stdout.write(`usage: node scripts/soak.js [options]     (npm run soak -- [options])
  --minutes M       how long faults are injected (default 10; fractions allowed)
  --seed N          the RNG seed for the fault schedule (default: drawn, and printed)
  --rate N          writes per second (default 50)
  --max-faults N    stop injecting after N faults (default: no limit but the time)
Needs the embedded test server (kill -9 and restart): MONGODB_URI must not be set.
`);
  process.exit(exitCode);
}

function parseOptions(argv) {
  const opts = { minutes: 10, seed: null, rate: 50, maxFaults: Infinity };
  for (let i = 0; i < argv.length; i++) {
    const arg = argv[i];
    const number = (isValid) => {
      const v = Number(argv[++i]);
      if (!isValid(v)) {
        process.stderr.write(`soak: bad value for ${arg}\n`);
        usage(2);
      }
      return v;
    };
    switch (arg) {
      case '--minutes': opts.minutes = number((v) => v > 0 && Number.isFinite(v)); break;
      case '--seed': opts.seed = number((v) => Number.isInteger(v) && v >= 0); break;
      case '--rate': opts.rate = number((v) => v > 0 && v <= 1000); break;
      case '--max-faults': opts.maxFaults = number((v) => Number.isInteger(v) && v >= 1); break;
      case '-h': case '--help': usage(0); break;
      default:
        process.stderr.write(`soak: unknown option ${arg}\n`);
        usage(2);
    }
  }
  if (opts.seed === null) opts.seed = Math.floor(Math.random() * 2 ** 31);
  return opts;
}

// ---------------------------------------------------------------------------
// Seeded randomness (mulberry32): the same seed gives the same fault schedule.

function rngFrom(seed) {
  let a = seed >>> 0;
  const next = () => {
    a = (a + 0x6d2b79f5) >>> 0;
    let t = a;
    t = Math.imul(t ^ (t >>> 15), t | 1);
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296;
  };
  return {
    next,
    /** An integer in [min, max]. */
    int: (min, max) => min + Math.floor(next() * (max - min + 1)),
    pick: (items) => items[Math.floor(next() * items.length)],
    shuffled: (items) => {
      const out = [...items];
      for (let i = out.length - 1; i > 0; i--) {
        const j = Math.floor(next() * (i + 1));
        [out[i], out[j]] = [out[j], out[i]];
      }
      return out;
    },
  };
}

// ---------------------------------------------------------------------------
// Waiting on conditions: re-checked whenever something reports (a consumer line, a write),
// always with a deadline.

const waiters = new Set();

function changed() {
  for (const waiter of [...waiters]) waiter();
}

function until(condition, ms, what) {
  return new Promise((resolve, reject) => {
    const check = () => {
      const value = condition();
      if (value) {
        done();
        resolve(value);
      }
    };
    const timer = setTimeout(() => {
      done();
      reject(new Error(`timed out after ${ms} ms waiting for ${what}`));
    }, ms);
    const done = () => {
      clearTimeout(timer);
      waiters.delete(check);
    };
    waiters.add(check);
    check();
  });
}

// ---------------------------------------------------------------------------
// The writer: one insert at a time, so the oplog holds the seqs in order; each seq retried
// until stored (a retry after a lost acknowledgement finds its own document: that is success).

function startWriter(coll, rate) {
  const writer = { written: 0, failures: 0, stopped: false };
  const intervalMs = 1000 / rate;
  writer.stop = () => {
    writer.stopped = true;
  };
  writer.done = (async () => {
    let due = hrMs();
    while (!writer.stopped) {
      const seq = writer.written;
      try {
        await coll.insertOne({ _id: seq, seq });
        writer.written += 1;
      } catch (err) {
        if (err.code === 11000) {
          writer.written += 1;
        } else {
          writer.failures += 1;
          await sleep(50); // the server is down or stepped down: try again shortly
          continue;
        }
      }
      changed();
      // Pacing, not synchronisation: a steady rate, no burst after an outage.
      due = Math.max(due + intervalMs, hrMs());
      await sleep(Math.max(0, due - hrMs()));
    }
  })();
  return writer;
}

// ---------------------------------------------------------------------------
// A consumer: a child process per life; every life's deliveries kept in order.

class Consumer {
  /** @param {string} label 'A', 'B'; @param {string} appName its connections' (failpoint scope) */
  constructor(label, role, appName, env) {
    this.label = label;
    this.role = role;
    this.appName = appName;
    this.env = env;
    this.lives = [];
    this.deliveryTimes = []; // every delivery's stamp, in order, over all lives
    this.reconnects = []; // { t, code } over all lives
    this.stalls = []; // { t }
    this.errors = []; // 'x' reports and unexpected exits
    this.maxDelivered = -1;
    this.child = null;
  }

  get life() {
    return this.lives[this.lives.length - 1];
  }

  get lastEventAt() {
    return this.deliveryTimes.length ? this.deliveryTimes[this.deliveryTimes.length - 1] : -Infinity;
  }

  /** The first delivery stamped at or after `t`, or null. */
  firstDeliveryAfter(t) {
    const times = this.deliveryTimes;
    let lo = 0;
    let hi = times.length;
    while (lo < hi) {
      const mid = (lo + hi) >> 1;
      if (times[mid] < t) lo = mid + 1;
      else hi = mid;
    }
    return lo < times.length ? times[lo] : null;
  }

  spawn() {
    const life = {
      index: this.lives.length,
      startedAt: hrMs(),
      endedAt: null,
      seqs: [],
      maxBefore: this.maxDelivered, // what earlier lives delivered: repeats below it are duplicates
      rss: [], // [t, bytes]
      disorder: [],
      end: null, // 'killed' | 'stopped' | 'died'
      exit: null,
    };
    this.lives.push(life);
    const child = spawn(process.execPath, [CONSUMER], { env: { ...process.env, ...this.env }, stdio: ['ignore', 'pipe', 'pipe'] });
    this.child = child;
    life.pid = child.pid;
    let partial = '';
    child.stdout.setEncoding('utf8').on('data', (chunk) => {
      const lines = (partial + chunk).split('\n');
      partial = lines.pop();
      for (const line of lines) this.onLine(life, line);
      changed();
    });
    let stderr = '';
    child.stderr.setEncoding('utf8').on('data', (chunk) => {
      stderr = (stderr + chunk).slice(-4000);
    });
    life.exited = new Promise((resolve) => {
      child.on('close', (code, signal) => {
        life.exit = { code, signal };
        life.endedAt = hrMs();
        if (life.end === null) {
          life.end = 'died';
          this.errors.push(`consumer ${this.label} life ${life.index} (pid ${life.pid}) exited by itself: ${JSON.stringify(life.exit)}${stderr ? `\n${stderr}` : ''}`);
          log(`consumer ${this.label} life ${life.index} DIED (${JSON.stringify(life.exit)}); restarting it`);
          if (!this.stopping) this.spawn();
        } else if (life.end === 'stopped' && code !== 0) {
          this.errors.push(`consumer ${this.label} life ${life.index} did not stop cleanly: ${JSON.stringify(life.exit)}${stderr ? `\n${stderr}` : ''}`);
        }
        changed();
        resolve(life.exit);
      });
    });
    return life;
  }

  onLine(life, line) {
    const [type, stamp, ...rest] = line.split(' ');
    const t = Number(stamp);
    switch (type) {
      case 'e': {
        const seq = Number(rest[0]);
        const prev = life.seqs.length ? life.seqs[life.seqs.length - 1] : null;
        if (prev !== null && seq !== prev + 1) life.disorder.push({ after: prev, got: seq });
        life.seqs.push(seq);
        this.deliveryTimes.push(t);
        if (seq > this.maxDelivered) this.maxDelivered = seq;
        break;
      }
      case 'm':
        life.rss.push([t, Number(rest[0])]);
        break;
      case 'r':
        this.reconnects.push({ t, code: rest[2] });
        break;
      case 's':
        this.stalls.push({ t });
        break;
      case 'x':
        this.errors.push(`consumer ${this.label} life ${life.index}: ${rest.join(' ')}`);
        break;
      default:
        break; // 'u' resumed, 'c' closed: for the record only
    }
  }

  async kill() {
    const life = this.life;
    life.end = 'killed';
    this.child.kill('SIGKILL');
    await life.exited;
  }

  /** SIGTERM: the consumer closes its stream (saving its position) and exits 0. */
  async stop() {
    this.stopping = true;
    const life = this.life;
    if (life.exit) return;
    life.end = 'stopped';
    this.child.kill('SIGTERM');
    await until(() => life.exit, STOP_TIMEOUT_MS, `consumer ${this.label} to stop after SIGTERM`).catch((err) => {
      this.errors.push(`consumer ${this.label} life ${life.index}: ${err.message}`);
      this.child.kill('SIGKILL');
    });
  }

  killNow() {
    if (this.child && this.child.exitCode === null && this.child.signalCode === null) this.child.kill('SIGKILL');
  }
}

// ---------------------------------------------------------------------------
// Faults. Each injects, waits until it is over, and returns { end, detail, hit }: end is the
// hrMs() stamp recovery is measured from (null: it never took effect), hit the consumers it
// affected. `target`: the consumer a failpoint is scoped to.

async function lastReconnectOf(consumer, mark, times) {
  await until(() => consumer.reconnects.length - mark >= times, NOTICE_TIMEOUT_MS, `${times} reconnect report(s)`).catch(() => {});
  const seen = consumer.reconnects.slice(mark);
  return { end: seen.length ? seen[seen.length - 1].t : null, noticed: seen.length };
}

const FAULTS = {
  async 'getmore-error'({ server, target, rng }) {
    const code = rng.pick(RESUMABLE_CODES);
    const times = rng.int(1, 4);
    // On a 4.4+ server only CursorNotFound resumes without the ResumableChangeStreamError
    // label (the change-streams spec); the others are injected as such a server sends them.
    const labelled = code !== 43 || rng.next() < 0.5;
    const mark = target.reconnects.length;
    await server.failCommand({ commands: ['getMore'], errorCode: code, errorLabels: labelled ? ['ResumableChangeStreamError'] : [], times, appName: target.appName });
    const { end, noticed } = await lastReconnectOf(target, mark, times);
    await server.failPointOff();
    return { end, hit: [target], detail: `${target.label}: code ${code}${labelled ? ' (labelled)' : ''} x${times}, ${noticed} reconnect(s)` };
  },

  async 'closed-connection'({ server, target, rng }) {
    const times = rng.int(1, 3);
    const mark = target.reconnects.length;
    await server.failCommand({ commands: ['getMore'], closeConnection: true, times, appName: target.appName });
    const { end, noticed } = await lastReconnectOf(target, mark, times);
    await server.failPointOff();
    return { end, hit: [target], detail: `${target.label}: x${times}, ${noticed} reconnect(s)` };
  },

  async 'blocked-connection'({ server, target, rng }) {
    const blockTimeMS = rng.int(3000, 6000);
    const mark = target.stalls.length;
    await server.failCommand({ commands: ['getMore'], blockConnection: true, blockTimeMS, times: 1, appName: target.appName });
    const stalled = await until(() => target.stalls[mark], blockTimeMS + NOTICE_TIMEOUT_MS, 'a stall report').catch(() => null);
    await server.failPointOff();
    return { end: stalled ? stalled.t : null, hit: [target], detail: `${target.label}: getMore blocked ${blockTimeMS} ms, ${stalled ? 'stall noticed' : 'NO stall noticed'}` };
  },

  async 'server-kill'({ server, consumers, rng }) {
    const downMs = rng.int(500, 3000);
    await server.kill();
    await sleep(downMs); // the outage itself
    await server.restart();
    return { end: hrMs(), hit: consumers, detail: `down ${downMs} ms + restart` };
  },

  async 'step-down'({ server, consumers, rng }) {
    const secs = rng.int(1, 3);
    const start = hrMs();
    await server.stepDown(secs);
    const end = start + secs * 1000;
    await sleep(Math.max(0, end - hrMs())); // the step-down period itself
    return { end, hit: consumers, detail: `${secs} s` };
  },

  async 'consumer-kill'({ killed, rng }) {
    const downMs = rng.int(0, 1000);
    const life = killed.life;
    await killed.kill();
    await sleep(downMs); // the consumer's outage
    const next = killed.spawn();
    return { end: next.startedAt, hit: [killed], detail: `${killed.label}: life ${life.index} (${life.seqs.length} events) killed, restarted after ${downMs} ms` };
  },
};

// ---------------------------------------------------------------------------
// Summary

function stats(values) {
  if (values.length === 0) return { n: 0, min: null, p50: null, p99: null, max: null };
  return { n: values.length, min: Math.min(...values), p50: percentile(values, 50), p99: percentile(values, 99), max: Math.max(...values) };
}

function mb(bytes) {
  return bytes == null ? '-' : (bytes / MB).toFixed(1);
}

function ms(value) {
  return value == null ? '-' : String(Math.round(value));
}

function table(rows) {
  const widths = rows[0].map((_, c) => Math.max(...rows.map((r) => String(r[c]).length)));
  return rows
    .map((r) => r.map((cell, c) => (c === 0 ? String(cell).padEnd(widths[c]) : String(cell).padStart(widths[c]))).join('  '))
    .join('\n');
}

/** What one consumer delivered, checked against the written seqs [0, written). */
function checkConsumer(consumer, written, finishedAt) {
  const delivered = new Set();
  let deliveries = 0;
  for (const life of consumer.lives) {
    deliveries += life.seqs.length;
    for (const s of life.seqs) delivered.add(s);
  }
  const lost = [];
  for (let s = 0; s < written; s++) if (!delivered.has(s)) lost.push(s);
  const disorder = consumer.lives.flatMap((life) => life.disorder.map((d) => ({ life: life.index, ...d })));
  // Duplicates per consumer kill: what the life after each kill delivered again.
  const lives = consumer.lives;
  const repeats = (life) => life.seqs.filter((s) => s <= life.maxBefore).length;
  const dupsPerKill = lives.filter((life, i) => i > 0 && lives[i - 1].end === 'killed').map(repeats);
  const dupsElsewhere = lives.filter((life, i) => i > 0 && lives[i - 1].end !== 'killed').reduce((n, life) => n + repeats(life), 0);
  // RSS: the first sample (at the first event) and the last of each life.
  const rss = lives
    .filter((life) => life.rss.length > 0)
    .map((life) => ({
      minutes: ((life.endedAt ?? finishedAt) - life.startedAt) / 60000,
      start: life.rss[0][1],
      end: life.rss[life.rss.length - 1][1],
      max: Math.max(...life.rss.map(([, bytes]) => bytes)),
    }));
  return { consumer, deliveries, distinct: delivered.size, lost, disorder, dupsPerKill, dupsElsewhere, rss };
}

function summarize({ opts, consumers, writer, serverSeqs, faults, startedAt, finishedAt, loadBefore }) {
  const written = writer.written;
  const notOnServer = [];
  for (let s = 0; s < written; s++) if (!serverSeqs.has(s)) notOnServer.push(s);
  const checks = consumers.map((c) => checkConsumer(c, written, finishedAt));
  const each = (f) => checks.map((c) => `${c.consumer.label} ${f(c)}`).join(', ');

  const lines = [];
  const say = (text = '') => lines.push(text);
  const cpus = os.cpus();
  say('');
  say(`resilient-change-stream chaos soak — ${new Date().toISOString()}`);
  say(`machine:  ${cpus[0]?.model ?? 'unknown CPU'}, ${cpus.length} cores, ${Math.round(os.totalmem() / 1024 ** 3)} GB, ${os.platform()} ${os.release()}; 1-min load ${loadBefore.toFixed(2)} before, ${os.loadavg()[0].toFixed(2)} after`);
  say(`software: node ${process.version}, ${SECANTUS_SPEC} (Python server, disk storage, --sync-on-commit)`);
  say(`run:      seed ${opts.seed}; faults for ${opts.minutes} min (${((finishedAt - startedAt) / 60000).toFixed(1)} min in all with drain); writer ${opts.rate} writes/s target`);
  say('');
  say(`written                       ${written} (server holds ${written - notOnServer.length} of them)`);
  for (const c of checks) {
    say(`consumer ${c.consumer.label} ${c.consumer.role.padEnd(19)} ${c.consumer.lives.length} ${c.consumer.lives.length === 1 ? 'life' : 'lives'}, ${c.deliveries} deliveries, ${c.distinct} distinct`);
  }
  say(`lost                          ${each((c) => `${c.lost.length}${c.lost.length ? ` (first: ${c.lost.slice(0, 10).join(', ')})` : ''}`)}`);
  say(`out of order                  ${each((c) => `${c.disorder.length}${c.disorder.length ? ` (first: ${c.disorder.slice(0, 5).map((d) => `life ${d.life}: ${d.got} after ${d.after}`).join('; ')})` : ''}`)}`);
  for (const c of checks.filter((x) => x.dupsPerKill.length > 0)) {
    const d = stats(c.dupsPerKill);
    say(`duplicates per consumer kill  ${c.consumer.label}: ${d.n} kills: min ${d.min}, p50 ${d.p50}, max ${d.max} (total ${c.dupsPerKill.reduce((a, b) => a + b, 0)})`);
  }
  say(`duplicates without a kill     ${each((c) => c.dupsElsewhere)}`);
  for (const c of checks.filter((x) => x.rss.length > 0)) {
    const r = c.rss;
    const label = `consumer ${c.consumer.label} RSS MB`.padEnd(30);
    if (r.length === 1) {
      say(`${label}its one life (${r[0].minutes.toFixed(1)} min): ${mb(r[0].start)} → ${mb(r[0].end)} (max ${mb(r[0].max)})`);
    } else {
      const range = (key) => `${mb(Math.min(...r.map((l) => l[key])))}–${mb(Math.max(...r.map((l) => l[key])))}`;
      const longest = r.reduce((a, b) => (b.minutes > a.minutes ? b : a));
      say(`${label}${r.length} lives: start ${range('start')}, end ${range('end')}; longest (${longest.minutes.toFixed(1)} min) ${mb(longest.start)} → ${mb(longest.end)}`);
    }
  }
  // Reconnects and stalls outside any fault's window (injection to recovery): unprovoked.
  const inFaults = (key) => faults.reduce((n, f) => n + (f[key] ?? 0), 0);
  const total = (key) => consumers.reduce((n, c) => n + c[key].length, 0);
  say(`consumer reports              ${each((c) => `${c.consumer.reconnects.length} reconnects, ${c.consumer.stalls.length} stalls`)}; ` +
    `outside the faults ${total('reconnects') - inFaults('reconnects')}, ${total('stalls') - inFaults('stalls')}; ` +
    `errors ${total('errors')}; writer retries ${writer.failures}`);
  say('');
  const rows = [['fault kind', 'count', 'recoveries', 'p50 ms', 'p99 ms', 'max ms']];
  for (const kind of FAULT_KINDS) {
    const ofKind = faults.filter((f) => f.kind === kind);
    const r = stats(ofKind.flatMap((f) => f.recoveries.map((x) => x.ms)));
    rows.push([kind, ofKind.length, r.n, ms(r.p50), ms(r.p99), ms(r.max)]);
  }
  say(table(rows));
  say('(recovery = fault end → the next event delivered, per consumer hit; see scripts/soak.js for each fault\'s end)');

  const failures = [];
  for (const c of checks) {
    if (c.lost.length) failures.push(`consumer ${c.consumer.label}: ${c.lost.length} written events never delivered`);
    if (c.disorder.length) failures.push(`consumer ${c.consumer.label}: ${c.disorder.length} order breaks within a life`);
  }
  const unrecovered = faults.filter((f) => f.error);
  if (unrecovered.length) failures.push(`${unrecovered.length} fault(s) without a recovery: ${unrecovered.map((f) => `${f.kind} (${f.detail}; ${f.error})`).join('; ')}`);
  const missingKinds = FAULT_KINDS.filter((k) => !faults.some((f) => f.kind === k));
  if (missingKinds.length) failures.push(`fault kinds never exercised: ${missingKinds.join(', ')} (run longer)`);
  for (const c of consumers) failures.push(...c.errors);
  if (notOnServer.length) say(`note: ${notOnServer.length} acknowledged writes are not on the server (the server lost them, not the stream)`);
  say('');
  say(failures.length ? `FAIL\n  ${failures.join('\n  ')}` : 'PASS: nothing lost, nothing out of order, every fault recovered');
  return { text: lines.join('\n'), ok: failures.length === 0 };
}

// ---------------------------------------------------------------------------

const t0 = hrMs();
function log(text) {
  process.stderr.write(`[${((hrMs() - t0) / 1000).toFixed(1).padStart(6)} s] ${text}\n`);
}

function withAppName(uri, appName) {
  return `${uri}${uri.includes('?') ? '&' : '?'}appName=${appName}`;
}

async function main() {
  const opts = parseOptions(process.argv.slice(2));
  if (process.env.MONGODB_URI) {
    process.stderr.write('soak: needs the embedded test server (kill -9 and restart it); unset MONGODB_URI\n');
    process.exit(2);
  }
  const rng = rngFrom(opts.seed);
  const loadBefore = os.loadavg()[0];
  const workDir = fs.mkdtempSync(path.join(os.tmpdir(), 'rcs-soak-'));
  let server;
  let client;
  const consumers = [];
  const killAll = () => consumers.forEach((c) => c.killNow());
  const onSignal = (signal) => {
    killAll();
    process.stderr.write(`soak: ${signal}, stopping\n`);
    process.exit(130); // the harness kills the server on exit
  };
  process.on('SIGINT', onSignal);
  process.on('SIGTERM', onSignal);
  process.on('exit', killAll);

  try {
    log(`seed ${opts.seed}; starting the test server (disk, --sync-on-commit; first run installs it)`);
    server = await startServer({ storage: 'disk', syncOnCommit: true });
    client = new MongoClient(server.uri, {
      appName: 'rcs-soak-writer',
      serverSelectionTimeoutMS: 1000,
      // Re-checks a server marked unknown at once (>= 500 ms apart) after a restart.
      serverMonitoringMode: 'poll',
      heartbeatFrequencyMS: 500,
    });
    const coll = await client.db(DB).createCollection(COLLECTION);

    const consumer = (label, role) => {
      const appName = `rcs-soak-consumer-${label.toLowerCase()}`;
      return new Consumer(label, role, appName, {
        SOAK_URI: withAppName(server.uri, appName),
        SOAK_DB: DB,
        SOAK_COLLECTION: COLLECTION,
        SOAK_NAME: `soak-${label.toLowerCase()}`,
        SOAK_TOKEN_FILE: path.join(workDir, `soak-${label.toLowerCase()}.position.json`),
      });
    };
    const killed = consumer('A', '(killed each round)');
    const steady = consumer('B', '(never killed)');
    consumers.push(killed, steady);
    for (const c of consumers) c.spawn();
    // A first life has no stored position and starts at "now": write only once both are open
    // (their first saved positions), so they see the first write.
    for (const c of consumers) {
      await until(() => fs.existsSync(c.env.SOAK_TOKEN_FILE) || c.life.exit, 60_000, `consumer ${c.label} to open its stream`);
      if (c.life.exit) throw new Error(`consumer ${c.label} died at start: ${c.errors.join('; ')}`);
    }

    const startedAt = hrMs();
    const writer = startWriter(coll, opts.rate);
    await until(() => consumers.every((c) => c.maxDelivered >= 0), 30_000, 'the first event');
    log(`streaming; injecting faults for ${opts.minutes} min`);

    const faults = [];
    const deadline = startedAt + opts.minutes * 60_000;
    let round = [];
    while (hrMs() < deadline && faults.length < opts.maxFaults) {
      // A quiet spell between faults: the streams settle, events flow.
      await sleep(rng.int(1000, 3000));
      if (hrMs() >= deadline) break;
      if (round.length === 0) round = rng.shuffled(FAULT_KINDS);
      const kind = round.shift();
      const target = FAILPOINT_KINDS.has(kind) ? rng.pick(consumers) : null;
      const fault = { kind, end: null, recoveries: [], detail: '' };
      faults.push(fault);
      const marks = consumers.map((c) => ({ reconnects: c.reconnects.length, stalls: c.stalls.length }));
      try {
        const { end, hit, detail } = await FAULTS[kind]({ server, consumers, killed, target, rng });
        fault.end = end;
        fault.detail = detail;
        if (end === null) throw new Error('the fault never took effect');
        for (const c of hit) {
          const delivered = await until(() => c.firstDeliveryAfter(end), RECOVERY_TIMEOUT_MS, `an event in consumer ${c.label} after the ${kind}`);
          fault.recoveries.push({ consumer: c.label, ms: delivered - end });
        }
        fault.reconnects = consumers.reduce((n, c, i) => n + c.reconnects.length - marks[i].reconnects, 0);
        fault.stalls = consumers.reduce((n, c, i) => n + c.stalls.length - marks[i].stalls, 0);
        log(`${kind.padEnd(18)} ${detail} → next event after ${fault.recoveries.map((r) => `${Math.round(r.ms)} ms (${r.consumer})`).join(', ')} ` +
          `[${fault.reconnects} reconnects, ${fault.stalls} stalls; written ${writer.written}, delivered up to ${consumers.map((c) => `${c.label} ${c.maxDelivered}`).join(', ')}]`);
      } catch (err) {
        fault.error = err.message;
        log(`${kind.padEnd(18)} ${fault.detail} → NOT RECOVERED: ${err.message}`);
        break; // a wedge: stop here, drain and report
      }
    }

    log(`faults done (${faults.length}); stopping the writer and draining`);
    writer.stop();
    await writer.done;
    const last = writer.written - 1;
    await until(() => consumers.every((c) => c.maxDelivered >= last), DRAIN_TIMEOUT_MS, `seq ${last} delivered`).catch((err) => log(err.message));
    await Promise.all(consumers.map((c) => c.stop()));
    const finishedAt = hrMs();
    const serverSeqs = new Set((await coll.find({}, { projection: { _id: 0, seq: 1 } }).toArray()).map((doc) => doc.seq));

    const { text, ok } = summarize({ opts, consumers, writer, serverSeqs, faults, startedAt, finishedAt, loadBefore });
    process.stdout.write(`${text}\n`);
    process.exitCode = ok ? 0 : 1;
  } finally {
    killAll();
    await client?.close().catch(() => {});
    await server?.close();
    fs.rmSync(workDir, { recursive: true, force: true });
  }
}

main().catch((err) => {
  process.stderr.write(`soak: ${err.stack || err}\n`);
  process.exit(1);
});
