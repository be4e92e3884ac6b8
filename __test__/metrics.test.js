'use strict';
// Metrics: the OpenTelemetry instruments, read through the SDK's in-memory reader while
// faults are injected, move as they should (reconnects count up by error kind, outages,
// time down, lag rises while the consumer does not read and falls after); metrics() says
// the same without OpenTelemetry; healthCheck() answers with the reason.

const test = require('node:test');
const assert = require('node:assert/strict');
const { MeterProvider, MetricReader } = require('@opentelemetry/sdk-metrics');
const { watch, instrument, healthCheck } = require('..');
const { setup, insertSeq, nextN, seqs, range, startIterating, waitForEvent, waitUntil, skipWithoutFailPoints } = require('./helpers');

const FAST = { maxAwaitTimeMS: 100, backoff: { initialDelayMS: 5, maxDelayMS: 50 } };

/** A pull reader: collect() when the test asks. */
class TestReader extends MetricReader {
  async onForceFlush() {}
  async onShutdown() {}
}

/** name → [{ attributes, value }] of one collection. */
async function collect(reader) {
  const { resourceMetrics, errors } = await reader.collect();
  assert.deepEqual(errors, []);
  const out = new Map();
  for (const scope of resourceMetrics.scopeMetrics) {
    for (const metric of scope.metrics) {
      out.set(
        metric.descriptor.name,
        metric.dataPoints.map((p) => ({ attributes: p.attributes, value: p.value })),
      );
    }
  }
  return out;
}

/** The value of `name` for the data point whose attributes include `match`. */
function valueOf(metrics, name, match = {}) {
  const points = (metrics.get(name) ?? []).filter((p) => Object.entries(match).every(([k, v]) => p.attributes[k] === v));
  assert.equal(points.length, 1, `one ${name} point for ${JSON.stringify(match)}: ${JSON.stringify(metrics.get(name))}`);
  return points[0].value;
}

test('instruments through the OpenTelemetry SDK move with the stream: events, checkpoints, reconnects, outages, lag', async (t) => {
  const { server, coll, dbName } = await setup(t);
  if (await skipWithoutFailPoints(t, server)) return;
  const reader = new TestReader();
  const meterProvider = new MeterProvider({ readers: [reader] });
  t.after(() => meterProvider.shutdown());

  const stream = watch(coll, [], { ...FAST, name: 'orders-index', tokenStore: { type: 'memory' }, checkpoint: { everyEvents: 1, everyMs: 10 } });
  t.after(() => stream.close());
  const handle = instrument(stream, { meterProvider });
  const attrs = { stream: 'orders-index', namespace: `${dbName}.orders` };

  const { pending } = await startIterating(stream);
  await insertSeq(coll, 0, 5);
  assert.deepEqual(seqs([await pending, ...(await nextN(stream, 4))]), range(0, 5));
  stream.commit();
  await waitUntil(() => stream.metrics().checkpointWrites > 0 && stream.metrics().unsavedEvents === 0, 'a checkpoint write');

  let m = await collect(reader);
  assert.equal(valueOf(m, 'rcs.events', attrs), 5);
  assert.ok(valueOf(m, 'rcs.batches', attrs) >= 2, 'the open and the events');
  assert.equal(valueOf(m, 'rcs.batches', attrs), stream.metrics().batches);
  assert.equal(valueOf(m, 'rcs.state', { ...attrs, state: 'streaming' }), 1);
  assert.equal(valueOf(m, 'rcs.state', { ...attrs, state: 'reconnecting' }), 0);
  assert.ok(valueOf(m, 'rcs.checkpoint.writes', attrs) >= 1);
  assert.equal(valueOf(m, 'rcs.checkpoint.failures', attrs), 0);
  assert.equal(valueOf(m, 'rcs.checkpoint.unsaved', attrs), 0);
  assert.ok(valueOf(m, 'rcs.checkpoint.age', attrs) >= 0);
  assert.equal(valueOf(m, 'rcs.downtime', attrs), 0);
  assert.equal(m.get('rcs.reconnects'), undefined, 'no reconnect yet');
  assert.equal(m.get('rcs.group.role'), undefined, 'no group');
  for (const point of [...m.values()].flat()) {
    assert.deepEqual(Object.keys(point.attributes).filter((k) => !['stream', 'namespace', 'state', 'error.kind', 'role'].includes(k)), []);
    assert.ok(!JSON.stringify(point.attributes).includes('mongodb://'));
  }
  const lagBefore = valueOf(m, 'rcs.lag', attrs);
  assert.ok(lagBefore >= 0 && lagBefore < 5, `lag ${lagBefore}`);

  // Two resumable failures in a row: one outage, two reconnects of kind ServerError.
  await server.failCommand({ commands: ['getMore'], errorCode: 6, errorLabels: ['ResumableChangeStreamError'], times: 2 });
  const resumed = waitForEvent(stream, 'resumed');
  const next = stream.next();
  // Both failures first (the engine keeps polling), then the event that ends the outage.
  await waitUntil(() => stream.health().reconnects === 2, 'two reconnects', 10000);
  await insertSeq(coll, 5, 6);
  assert.deepEqual(seqs([await next]), [5]);
  const { downtimeMs } = await resumed;
  m = await collect(reader);
  assert.equal(valueOf(m, 'rcs.reconnects', { ...attrs, 'error.kind': 'ServerError' }), 2);
  assert.equal(valueOf(m, 'rcs.outages', { ...attrs, 'error.kind': 'ServerError' }), 1);
  assert.equal(stream.metrics().reconnects, 2);
  assert.equal(stream.metrics().outages, 1);
  const down = valueOf(m, 'rcs.downtime', attrs);
  assert.ok(down > 0 && Math.abs(down * 1000 - downtimeMs) < 50, `downtime ${down} s vs resumed ${downtimeMs} ms`);
  assert.equal(valueOf(m, 'rcs.outage.duration', attrs), 0, 'no outage under way');
  assert.equal(valueOf(m, 'rcs.events', attrs), 6);

  // The consumer stops reading: the position stands still while the clock moves, and the
  // lag rises; once it reads again (a new event), the lag falls.
  await insertSeq(coll, 6, 7);
  await waitUntil(() => stream.health().lagMs >= 2000, 'the lag to rise past 2 s', 10000);
  m = await collect(reader);
  const risen = valueOf(m, 'rcs.lag', attrs);
  assert.ok(risen >= 2, `lag ${risen} s while the consumer does not read`);
  assert.deepEqual(seqs(await nextN(stream, 1)), [6]);
  await insertSeq(coll, 7, 8);
  assert.deepEqual(seqs(await nextN(stream, 1)), [7]);
  m = await collect(reader);
  const fallen = valueOf(m, 'rcs.lag', attrs);
  assert.ok(fallen < risen && fallen < 2, `lag ${fallen} s after reading again (was ${risen})`);

  // metrics() says the same without OpenTelemetry.
  const snapshot = stream.metrics();
  assert.equal(snapshot.stream, 'orders-index');
  assert.equal(snapshot.namespace, `${dbName}.orders`);
  assert.equal(snapshot.eventsDelivered, 8);
  assert.equal(snapshot.reconnects, 2);
  assert.equal(snapshot.group, null);
  assert.equal(snapshot.headroomMs, null, 'not checked yet');
  await stream.oplogWindow();
  assert.equal(typeof stream.metrics().headroomMs, 'number');
  m = await collect(reader);
  assert.equal(valueOf(m, 'rcs.oplog.headroom', attrs) * 1000, stream.metrics().headroomMs);

  // remove(): nothing of this stream is listened to any more.
  assert.equal(stream.listenerCount('reconnecting'), 1);
  handle.remove();
  assert.equal(stream.listenerCount('reconnecting'), 0);
  assert.equal(stream.listenerCount('close'), 0);
});

test('healthCheck(): healthy while streaming, unhealthy with the reason past the reconnect bound and once failed', async (t) => {
  const { server, coll } = await setup(t);
  if (await skipWithoutFailPoints(t, server)) return;
  const stream = watch(coll, [], { ...FAST, backoff: { initialDelayMS: 400, multiplier: 1, maxDelayMS: 400 } });
  t.after(() => stream.close());
  const readiness = healthCheck(stream, { probe: 'readiness', maxReconnectingMs: 200 });
  const liveness = healthCheck([stream], { maxReconnectingMs: 200 });
  assert.equal(readiness.check().status, 503, 'not ready before it streams');
  assert.equal(readiness.check().streams[0].reason, 'starting: not streaming yet');
  assert.equal(liveness.check().status, 200);

  const { pending } = await startIterating(stream);
  await insertSeq(coll, 0, 1);
  await pending;
  assert.deepEqual(readiness.check(), {
    healthy: true,
    status: 200,
    streams: [{ stream: null, namespace: `${coll.dbName}.orders`, state: 'streaming', healthy: true, reason: null }],
  });

  // A long outage (the backoff is 400 ms per attempt): healthy at first, then not.
  await server.failCommand({ commands: ['getMore', 'aggregate'], errorCode: 6, errorLabels: ['ResumableChangeStreamError'], times: 50 });
  const next = stream.next();
  next.catch(() => {});
  await waitForEvent(stream, 'reconnecting');
  await waitUntil(() => (stream.health().currentOutageMs ?? 0) > 200, 'the outage to pass the bound', 10000);
  const report = liveness.check();
  assert.equal(report.status, 503);
  assert.match(report.streams[0].reason, /^reconnecting for \d+ ms, more than 200 \(last error: ServerError: /);

  // The HTTP form: the same report as JSON.
  let head;
  let body;
  liveness.handle({}, { writeHead: (status, headers) => (head = { status, headers }), end: (text) => (body = text) });
  assert.equal(head.status, 503);
  assert.equal(head.headers['content-type'], 'application/json');
  assert.equal(JSON.parse(body).healthy, false);

  await server.failPointOff();
  await stream.close();
  assert.equal(liveness.check().streams[0].reason, 'closed');
  assert.throws(() => healthCheck(stream, { maxReconnectingMs: -1 }), /"maxReconnectingMs" must be a number ≥ 0/);
});

test('without @opentelemetry/api installed: the package loads, metrics() works, instrument() says what to install', () => {
  const { spawnSync } = require('node:child_process');
  const script = `
    const Module = require('node:module');
    const resolve = Module._resolveFilename;
    Module._resolveFilename = function (request, ...rest) {
      if (request.startsWith('@opentelemetry/')) throw Object.assign(new Error('Cannot find module ' + request), { code: 'MODULE_NOT_FOUND' });
      return resolve.call(this, request, ...rest);
    };
    const rcs = require(${JSON.stringify(require.resolve('..'))});
    const stream = new rcs.ResilientChangeStream({ uri: 'mongodb://127.0.0.1:9', db: 'd', collection: 'c' });
    const m = stream.metrics();
    let message = null;
    try { rcs.instrument(stream); } catch (err) { message = err.message; }
    const viaProvider = rcs.instrument(stream, { meterProvider: { getMeter: () => ({
      createObservableCounter: () => ({}), createObservableGauge: () => ({}), createCounter: () => ({ add() {} }),
      addBatchObservableCallback() {},
    }) } });
    viaProvider.remove();
    process.stdout.write(JSON.stringify({ state: m.state, namespace: m.namespace, message }));
    stream.close();
  `;
  const result = spawnSync(process.execPath, ['-e', script], { encoding: 'utf8', timeout: 30000 });
  assert.equal(result.status, 0, result.stderr);
  assert.deepEqual(JSON.parse(result.stdout), {
    state: 'starting',
    namespace: 'd.c',
    message:
      'resilient-change-stream: instrument() needs @opentelemetry/api (npm install @opentelemetry/api), or pass { meterProvider } or { meter }; metrics() needs nothing',
  });
});
