'use strict';
// One measurement of one client in a fresh process, so that CPU, RSS and event-loop
// utilisation are that client's only. Started by scripts/bench.js:
//
//   node scripts/bench/worker.js '<json params>'
//
// params: { scenario, client: 'driver' | 'driver-iter' | 'ours' | 'ours-raw' | 'decode',
//           uri, db, collection(s), startAt: {t, i}, ... }
// Protocol: JSON lines on stdout ({type: 'ready'|'event'|'kill'|'result'|'error', ...});
// the orchestrator may write `stop` on stdin. The last line is the result or the error.

const fs = require('node:fs');
const path = require('node:path');
const { setTimeout: sleep } = require('node:timers/promises');
const { hrMs, meter, throughput, latencyStats, rssSampler } = require('./common');

const params = JSON.parse(process.argv[2]);
// The package under test: this checkout, or a snapshot given with --package.
const PKG_ROOT = params.packageDir || path.resolve(__dirname, '..', '..');
const { MongoClient, Timestamp, BSON } = require('mongodb');

function send(obj) {
  process.stdout.write(`${JSON.stringify(obj)}\n`);
}

function finish(result) {
  send({ type: 'result', scenario: params.scenario, client: params.client, ...result });
  // Nothing may keep us alive (driver monitors, native workers): the result is out.
  process.exit(0);
}

function fail(err) {
  send({ type: 'error', scenario: params.scenario, client: params.client, message: String(err?.stack || err) });
  process.exit(1);
}
process.on('uncaughtException', fail);
process.on('unhandledRejection', fail);

const watchdog = setTimeout(() => fail(new Error(`worker timed out after ${params.timeoutMs} ms`)), params.timeoutMs ?? 600_000);
watchdog.unref();

// `stop` on stdin (the orchestrator finished writing); resolves once.
let onStop;
const stopped = new Promise((resolve) => {
  onStop = resolve;
});
process.stdin.setEncoding('utf8');
process.stdin.on('data', (chunk) => {
  if (/\bstop\b/.test(chunk)) onStop();
});
process.stdin.on('end', () => onStop());

const isOurs = () => params.client === 'ours' || params.client === 'ours-raw';

function ts(t) {
  return new Timestamp({ t: t.t, i: t.i });
}

let ours = null;
function loadOurs() {
  // The package itself (index.js); NAPI_RS_NATIVE_LIBRARY_PATH (set by the orchestrator
  // for --native) picks the addon build. Load the addon now, outside any measurement.
  ours ??= require(PKG_ROOT);
  require(path.join(PKG_ROOT, 'lib', 'native')).nativeReader();
  return ours;
}

async function connect(extraOptions = {}) {
  const client = new MongoClient(params.uri, { ...extraOptions });
  await client.connect();
  await client.db('admin').command({ ping: 1 });
  return client;
}

/** The client under test's change stream on `coll`. */
function open(coll, options) {
  const pipeline = [];
  if (isOurs()) return loadOurs().watch(coll, pipeline, options);
  return coll.watch(pipeline, options);
}

function streamOptions(extra = {}) {
  // extraOptions: e.g. the token store of a checkpoint variant (ours only).
  const options = { ...(isOurs() ? params.extraOptions : null), ...extra };
  if (params.batchSize) options.batchSize = params.batchSize;
  return options;
}

// ---------------------------------------------------------------------------
// catch-up: n queued events replayed with startAtOperationTime to a 'change' handler

async function catchUp() {
  if (params.client === 'ours-raw') return catchUpRaw();
  const client = await connect();
  const coll = client.db(params.db).collection(params.collection);
  if (isOurs()) loadOurs();
  const n = params.events;
  let count = 0;
  let firstMs = null;
  let lastI = null;
  // Loaded before the clock starts: what is measured is instrumenting, not loading the SDK.
  if (params.metrics) require('@opentelemetry/sdk-metrics');
  const t0 = hrMs();
  const m = meter();
  const stream = open(coll, streamOptions({ startAtOperationTime: ts(params.startAt) }));
  const metrics = params.metrics ? withMetrics(stream) : null;
  await new Promise((resolve, reject) => {
    stream.on('error', reject);
    stream.on('change', (event) => {
      count += 1;
      if (count === 1) firstMs = hrMs();
      if (count === n) {
        lastI = event.fullDocument?.i ?? null;
        resolve();
      }
    });
  });
  const r = m.stop();
  const firstEventMs = firstMs - t0;
  const collections = metrics ? await metrics.stop() : undefined;
  await stream.close();
  await client.close();
  finish({ ...throughput(count, r), lastI, firstEventMs, collections });
}

/**
 * instrument() on an OpenTelemetry SDK MeterProvider whose reader collects every 100 ms
 * (the metrics scenario); stop() resolves with the number of collections.
 */
function withMetrics(stream) {
  const { MeterProvider, MetricReader } = require('@opentelemetry/sdk-metrics');
  class Reader extends MetricReader {
    async onForceFlush() {}
    async onShutdown() {}
  }
  const reader = new Reader();
  const provider = new MeterProvider({ readers: [reader] });
  const handle = loadOurs().instrument(stream, { meterProvider: provider });
  let collections = 0;
  const timer = setInterval(() => {
    reader.collect().then(() => (collections += 1));
  }, 100);
  return {
    async stop() {
      clearInterval(timer);
      handle.remove();
      await provider.shutdown();
      return collections;
    },
  };
}

/**
 * The engine alone: NativeReader.nextBatch() without decoding (what our Rust side
 * costs). With `capture`, also writes the raw events to a file for the decode-limit run.
 */
async function catchUpRaw() {
  const { encodeSpec } = require(path.join(PKG_ROOT, 'lib', 'decode'));
  const NativeReader = require(path.join(PKG_ROOT, 'lib', 'native')).nativeReader();
  const spec = { uri: params.uri, db: params.db, collection: params.collection, startAtOperationTime: ts(params.startAt) };
  if (params.batchSize) spec.batchSize = params.batchSize;
  const n = params.events;
  const chunks = [];
  const batchSizes = [];
  let bytes = 0;
  let count = 0;
  const m = meter();
  const native = NativeReader.changeStream(encodeSpec(spec));
  while (count < n) {
    const item = await native.nextBatch();
    if (item.kind !== 'batch') throw new Error(`engine said ${JSON.stringify(item)}`);
    if (item.count === 0) continue;
    count += item.count;
    bytes += item.events.length;
    batchSizes.push(item.count);
    if (params.capture) chunks.push(item.events);
  }
  const r = m.stop();
  await native.close();
  if (params.capture) fs.writeFileSync(params.capture, Buffer.concat(chunks));
  batchSizes.sort((a, b) => a - b);
  finish({
    ...throughput(count, r),
    batches: batchSizes.length,
    batchMedian: batchSizes[batchSizes.length >> 1],
    batchMax: batchSizes[batchSizes.length - 1],
    avgEventBytes: bytes / count,
  });
}

// ---------------------------------------------------------------------------
// decode limit: js-bson deserialize of the captured raw events, nothing else

function decodeLimit() {
  const buffer = fs.readFileSync(params.file);
  const { eventDeserializeOptions } = require(path.join(PKG_ROOT, 'lib', 'decode'));
  // The driver's options for events, in one object whose index moves (no per-event spread):
  // the least a JS consumer can do to get the driver's objects.
  const options = { ...eventDeserializeOptions({}), index: 0, allowObjectSmallerThanBufferSize: true };
  let count = 0;
  let sink = null;
  const m = meter();
  for (let offset = 0; offset < buffer.length; offset += buffer.readInt32LE(offset)) {
    options.index = offset;
    sink = BSON.deserialize(buffer, options);
    count += 1;
  }
  const r = m.stop();
  if (sink?._id === undefined) throw new Error('decode produced no event');
  finish({ ...throughput(count, r), bytes: buffer.length });
}

/**
 * The facade alone: our stream's JS side ('change' listener, sync) over the captured raw
 * events, fed by a stub engine that answers nextBatch() at once with batches of
 * `params.batchSize` (1000) events. No server, no Rust: what our JS costs on top of the
 * decode limit. With `params.durable`, a name is set and the stub counts commits.
 */
async function facadeLimit() {
  const buffer = fs.readFileSync(params.file);
  const per = params.batchSize || 1000;
  // Batches and their end tokens (the last event's _id), prepared before measuring.
  const batches = [];
  let offset = 0;
  while (offset < buffer.length) {
    const start = offset;
    let count = 0;
    let lastAt = offset;
    while (offset < buffer.length && count < per) {
      lastAt = offset;
      offset += buffer.readInt32LE(offset);
      count += 1;
    }
    const last = BSON.deserialize(buffer.subarray(lastAt, offset));
    const seq = batches.length;
    const ordinal = seq === 0 ? 0 : batches[seq - 1].ordinal + batches[seq - 1].count;
    const endToken = Buffer.from(BSON.serialize(last._id));
    batches.push({ kind: 'batch', seq, ordinal, events: buffer.subarray(start, offset), count, endToken });
  }
  const commits = { calls: 0, events: 0 };
  class StubEngine {
    constructor() {
      this.next = 0;
      this.checkpointEvery = params.durable ? 100 : null;
      this.committed = 0;
    }
    nextBatch() {
      const item = this.next < batches.length ? batches[this.next++] : new Promise(() => {});
      return Promise.resolve(item);
    }
    close() {
      return Promise.resolve(null);
    }
    commit(seq, n) {
      const through = batches[seq].ordinal + n;
      commits.calls += 1;
      commits.events += through - this.committed;
      this.committed = through;
      return this.marks();
    }
    marks() {
      return { limit: Number.MAX_SAFE_INTEGER, reportAt: this.committed + (this.checkpointEvery ?? Infinity) };
    }
    waitForRoom() {
      return Promise.resolve();
    }
    pendingCheckpoint() {
      return 0;
    }
    health() {
      return { state: 'streaming', reconnects: 0 };
    }
    oplogWindow() {
      return Promise.resolve({ available: false, reason: 'stub' });
    }
    setLogger() {}
  }
  // The stream module takes the native reader from lib/native on load: swap it first.
  const native = require(path.join(PKG_ROOT, 'lib', 'native'));
  native.nativeReader = () => ({ changeStream: () => new StubEngine() });
  const { ResilientChangeStream } = require(path.join(PKG_ROOT, 'lib', 'stream'));
  const total = batches.reduce((n, b) => n + b.count, 0);
  let count = 0;
  const m = meter();
  const stream = new ResilientChangeStream({
    uri: 'mongodb://stub', db: 'stub', collection: 'stub', headroomCheckIntervalMS: 0,
    ...(params.durable ? { name: 'bench-facade', tokenStore: { type: 'memory' } } : {}),
  });
  await new Promise((resolve, reject) => {
    stream.on('error', reject);
    stream.on('change', (event) => {
      count += 1;
      if (count === total) resolve(event);
    });
  });
  const r = m.stop();
  finish({ ...throughput(count, r), commitCalls: commits.calls });
}

// ---------------------------------------------------------------------------
// live latency: writer (the orchestrator) stamps `t` (CLOCK_MONOTONIC ms) before insertOne;
// documents have p: 'w' (warm-up) or 'm' (measured).

async function live() {
  const client = await connect();
  const coll = client.db(params.db).collection(params.collection);
  const stream = open(coll, streamOptions({ startAtOperationTime: ts(params.startAt) }));
  const live = liveLatency(params.measured);
  stream.on('error', fail);
  stream.on('change', (event) => live.record(event.fullDocument, hrMs()));
  send({ type: 'ready' });
  await Promise.race([live.allIn, stopped]);
  const { summary, rss } = live.stop();
  await stream.close();
  await client.close();
  finish({ ...summary, ...rss });
}

/**
 * The latencies of the measured documents (`p: 'm'`, stamped `t` by the writer) as they
 * arrive; the CPU meter and the RSS sampler start with the first one. `allIn`: all
 * `measured` have come.
 */
function liveLatency(measured) {
  const latencies = [];
  let warm = 0;
  let m = null;
  let sampler = null;
  let done;
  const allIn = new Promise((resolve) => {
    done = resolve;
  });
  return {
    allIn,
    /** One event's document; false for a warm-up one. */
    record(doc, now) {
      if (doc.p !== 'm') {
        warm += 1;
        return false;
      }
      if (m === null) {
        m = meter();
        sampler = rssSampler(100);
      }
      latencies.push(now - doc.t);
      if (latencies.length === measured) done();
      return true;
    },
    stop() {
      const r = m ? m.stop() : null;
      const summary = {
        warm,
        measured: latencies.length,
        expected: measured,
        latency: latencyStats(latencies),
        ...r,
        cpuMsPer1k: r ? (r.cpuMs / latencies.length) * 1000 : null,
      };
      return { summary, rss: sampler ? sampler.stop() : null };
    },
  };
}

// ---------------------------------------------------------------------------
// recovery: the orchestrator sets a closeConnection failpoint on getMore, writes 'pre' k,
// and once we report it, 'replay' k. We report receipt times and the kills we see.

async function recovery() {
  const driver = !isOurs();
  const client = await connect(driver ? { monitorCommands: true } : {});
  const coll = client.db(params.db).collection(params.collection);
  if (driver) {
    client.on('commandFailed', (ev) => {
      if (ev.commandName === 'getMore') send({ type: 'kill', t: hrMs(), error: String(ev.failure?.message) });
    });
  }
  const m = meter();
  const stream = open(coll, streamOptions({ startAtOperationTime: ts(params.startAt) }));
  stream.on('error', fail);
  if (!driver) {
    stream.on('reconnecting', ({ attempt, delayMs, error }) => {
      send({ type: 'kill', t: hrMs(), attempt, delayMs, error: error?.kind });
    });
    stream.on('resumed', ({ attempts, downtimeMs }) => send({ type: 'resumed', t: hrMs(), attempts, downtimeMs }));
  }
  let events = 0;
  stream.on('change', (event) => {
    const t = hrMs();
    events += 1;
    const { k, kind } = event.fullDocument;
    send({ type: 'event', t, k, kind });
  });
  send({ type: 'ready' });
  await stopped;
  const r = m.stop();
  await stream.close();
  await client.close();
  finish({ events, ...r });
}

// ---------------------------------------------------------------------------
// slow consumer: a handler that sleeps 1 ms per event, while `events` are queued; RSS over
// a fixed window.

async function slowConsumer() {
  const client = await connect();
  const coll = client.db(params.db).collection(params.collection);
  if (isOurs()) loadOurs();
  global.gc?.();
  await sleep(200);
  const baselineRss = process.memoryUsage.rss();
  const sampler = rssSampler(50);
  const m = meter();
  let started = 0;
  let handled = 0;
  const stream = open(coll, streamOptions({ startAtOperationTime: ts(params.startAt) }));
  stream.on('error', fail);
  let iterating = null;
  let stopIterating = false;
  if (params.client === 'driver-iter') {
    // The driver's backpressured idiom: pull the next event only after handling one.
    iterating = (async () => {
      while (!stopIterating) {
        const event = await stream.next();
        if (event === null) return;
        started += 1;
        await sleep(1);
        handled += 1;
      }
    })();
  } else {
    stream.on('change', async () => {
      started += 1;
      await sleep(1);
      handled += 1;
    });
  }
  // RSS once started (runtime, pools, first batches, JIT): growth after this point is what
  // the queue costs while the consumer lags.
  await sleep(params.windowMs / 5);
  const settledRss = process.memoryUsage.rss();
  const late = rssSampler(50);
  await sleep(params.windowMs - params.windowMs / 5);
  const r = m.stop();
  const rss = sampler.stop();
  const lateRss = late.stop();
  const pending = started - handled;
  stopIterating = true;
  await stream.close().catch(() => {});
  await iterating?.catch(() => {});
  finish({
    baselineRssBytes: baselineRss,
    ...rss,
    peakRssBytes: Math.max(rss.peakSampledBytes, rss.maxRssBytes),
    growthBytes: Math.max(rss.peakSampledBytes, rss.maxRssBytes) - baselineRss,
    settledRssBytes: settledRss,
    lateGrowthBytes: lateRss.peakSampledBytes - settledRss,
    started,
    handled,
    pending,
    ...r,
    cpuMsPer1k: handled ? (r.cpuMs / handled) * 1000 : null,
  });
}

// ---------------------------------------------------------------------------
// fan-out: `streams` streams (one per collection c0..cN-1 of params.db) on one connection
// string; the orchestrator writes 1k events/s round-robin over them.

async function fanOut() {
  const client = await connect();
  const db = client.db(params.db);
  if (isOurs()) loadOurs();
  global.gc?.();
  const baselineRss = process.memoryUsage.rss();
  const live = liveLatency(params.measured);
  const perStream = Array.from({ length: params.streams }, () => 0);
  const streams = [];
  const errors = [];
  let closing = false;
  // The driver's pool: how many operations (getMores) waited for a connection at once.
  const pool = { waiting: 0, maxWaiting: 0, checkedOut: 0, maxCheckedOut: 0 };
  client.on('connectionCheckOutStarted', () => {
    pool.waiting += 1;
    if (pool.waiting > pool.maxWaiting) pool.maxWaiting = pool.waiting;
  });
  client.on('connectionCheckOutFailed', () => {
    pool.waiting -= 1;
  });
  client.on('connectionCheckedOut', () => {
    pool.waiting -= 1;
    pool.checkedOut += 1;
    if (pool.checkedOut > pool.maxCheckedOut) pool.maxCheckedOut = pool.checkedOut;
  });
  client.on('connectionCheckedIn', () => {
    pool.checkedOut -= 1;
  });
  for (let s = 0; s < params.streams; s++) {
    const stream = open(db.collection(`c${s}`), streamOptions({ startAtOperationTime: ts(params.startAt) }));
    stream.on('error', (err) => {
      if (!closing) errors.push(String(err?.message || err));
    });
    stream.on('change', (event) => {
      if (live.record(event.fullDocument, hrMs())) perStream[s] += 1;
    });
    streams.push(stream);
  }
  send({ type: 'ready' });
  await Promise.race([live.allIn, stopped]);
  const { summary, rss: sampled } = live.stop();
  const rss = sampled ?? { peakSampledBytes: null, maxRssBytes: process.resourceUsage().maxRSS * 1024 };
  closing = true;
  await Promise.all(streams.map((s) => s.close().catch(() => {})));
  await client.close();
  const peak = Math.max(rss.peakSampledBytes ?? 0, rss.maxRssBytes);
  finish({
    ...summary,
    streamsServed: perStream.filter((c) => c > 0).length,
    streams: params.streams,
    errors: errors.slice(0, 5),
    errorCount: errors.length,
    // Only the driver's streams use this client's pool (ours has its own, in the engine).
    driverPool: isOurs() ? null : { maxWaiting: pool.maxWaiting, maxCheckedOut: pool.maxCheckedOut },
    baselineRssBytes: baselineRss,
    peakRssBytes: peak,
  });
}

// ---------------------------------------------------------------------------
// concurrency: n queued events to an async handler that takes params.handlerMs, with our
// `concurrency` option (extraOptions) or the driver's one-at-a-time emitter

async function slowHandlers() {
  const client = await connect();
  const coll = client.db(params.db).collection(params.collection);
  if (isOurs()) loadOurs();
  const n = params.events;
  let count = 0;
  const m = meter();
  const stream = open(coll, streamOptions({ startAtOperationTime: ts(params.startAt) }));
  await new Promise((resolve, reject) => {
    stream.on('error', reject);
    stream.on('change', async () => {
      await new Promise((r) => setTimeout(r, params.handlerMs));
      count += 1;
      if (count === n) resolve();
    });
  });
  const r = m.stop();
  await stream.close();
  await client.close();
  finish(throughput(count, r));
}

// ---------------------------------------------------------------------------
// snapshot: copy a collection of params.events documents — the driver's find() loop (sorted
// by _id, as the copy reads) or our initialSnapshot phase — and stop at the last document

async function copyCollection() {
  const client = await connect();
  const coll = client.db(params.db).collection(params.collection);
  if (isOurs()) loadOurs();
  const n = params.events;
  let count = 0;
  const m = meter();
  if (isOurs()) {
    const stream = open(coll, streamOptions({ name: `bench-copy-${process.pid}`, initialSnapshot: { batchSize: params.batchSize ?? 1000 } }));
    await new Promise((resolve, reject) => {
      stream.on('error', reject);
      stream.on('change', (event) => {
        if (event.operationType !== 'snapshot') return;
        count += 1;
        if (count === n) resolve();
      });
    });
    const r = m.stop();
    await stream.close();
    await client.close();
    return finish(throughput(count, r));
  }
  const cursor = coll.find({}).sort({ _id: 1 }).batchSize(params.batchSize ?? 1000);
  for await (const doc of cursor) {
    if (doc) count += 1;
  }
  const r = m.stop();
  await client.close();
  finish(throughput(count, r));
}

// ---------------------------------------------------------------------------
// partitions: one member of a partitioned group (`group.partitions`), a params.handlerMs
// async handler at concurrency 1. Lines: {type: 'held', partitions} whenever what it holds
// changes, {type: 'handled', i} per event handled; `stop` closes it and sends its CPU use
// and where its events were split (health().group.split).

async function partitionMember() {
  const { ResilientChangeStream } = loadOurs();
  const m = meter();
  const stream = new ResilientChangeStream({
    uri: params.uri,
    db: params.db,
    collection: params.collection,
    name: params.name,
    tokenStore: { type: 'mongodb', db: `${params.db}_positions`, collection: 'positions' },
    group: { partitions: params.partitions, member: params.member, leaseMs: params.leaseMs, db: `${params.db}_positions` },
    startAtOperationTime: ts(params.startAt),
    ...(params.batchSize ? { batchSize: params.batchSize } : {}),
  });
  const held = new Set();
  const report = () => send({ type: 'held', partitions: [...held].sort((a, b) => a - b) });
  stream.on('leaseAcquired', (lease) => {
    held.add(lease.partition);
    report();
  });
  stream.on('leaseLost', (info) => {
    held.delete(info.partition);
    report();
  });
  let count = 0;
  stream.on('error', fail);
  stream.on('change', async (event) => {
    await sleep(params.handlerMs);
    count += 1;
    send({ type: 'handled', i: event.fullDocument.i });
  });
  await stopped;
  const split = stream.health().group?.split ?? null;
  await stream.close();
  finish({ handled: count, split, ...m.stop() });
}

const SCENARIOS = {
  snapshot: copyCollection,
  partitions: partitionMember,
  concurrency: slowHandlers,
  catchup: catchUp,
  checkpoint: catchUp,
  group: catchUp,
  metrics: catchUp,
  large: catchUp,
  decode: () => (params.client === 'decode' ? decodeLimit() : facadeLimit()),
  live,
  recovery,
  slow: slowConsumer,
  fanout: fanOut,
};

Promise.resolve()
  .then(() => {
    const fn = SCENARIOS[params.scenario];
    if (!fn) throw new Error(`unknown scenario ${params.scenario}`);
    return fn();
  })
  .catch(fail);
