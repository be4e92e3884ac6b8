#!/usr/bin/env node
'use strict';
// `npm run demo`: an embedded test server, one ResilientChangeStream, a writer inserting
// orders continuously, and a schedule of faults (dropped connections, failpoints, a
// server kill -9 and restart, a step-down). Ends with: written N, received N, lost 0.
// Needs nothing installed by hand (the harness installs the test server on first use).
// With MONGODB_URI set, it runs against that deployment and skips the process faults.

const { MongoClient } = require('mongodb');
const { startServer } = require('../harness');
const { watch } = require('..');

const WRITE_EVERY_MS = 20;

async function main() {
  console.log('starting the embedded test server (first run installs it, ~30 s)...');
  const server = await startServer({ storage: 'disk', syncOnCommit: true });
  const client = new MongoClient(server.uri, {
    serverSelectionTimeoutMS: 2000,
    serverMonitoringMode: 'poll',
  });
  const orders = client.db('shop').collection('orders');
  await orders.deleteMany({});

  const stream = watch(orders, [], { maxAwaitTimeMS: 200, backoff: { maxDelayMS: 2000 } });
  const status = { received: 0, duplicates: 0, reconnects: 0, fault: '-' };
  const seen = new Set();
  stream.on('reconnecting', () => {
    status.reconnects += 1;
  });
  stream.on('resumed', ({ attempts, downtimeMs }) => {
    status.lastResume = `resumed after ${attempts} attempt(s), ${downtimeMs} ms down`;
  });
  stream.on('change', (event) => {
    const seq = event.fullDocument.seq;
    if (seen.has(seq)) status.duplicates += 1;
    else seen.add(seq);
    status.received += 1;
  });
  stream.on('error', (err) => console.error(`\nstream error: ${err.name}: ${err.message}`));
  // Like the driver's, a stream sees the changes made after its cursor opened (the first
  // position it reports): write only from then on, or pass startAtOperationTime.
  let opened = false;
  stream.once('resumeTokenChanged', () => {
    opened = true;
  });
  await until(() => opened, 30000);

  const writer = startWriter(orders);
  const line = startStatusLine(stream, status, writer);
  try {
    await runFaults(server, client, status);
    writer.stop();
    await writer.done;
    status.fault = 'draining';
    await until(() => seen.size >= writer.written, 60000);
  } finally {
    line.stop();
    await stream.close();
    await client.close();
    await server.close();
  }

  const lost = [...Array(writer.written).keys()].filter((seq) => !seen.has(seq)).length;
  console.log('\nsummary');
  console.log(`  written     ${writer.written}`);
  console.log(`  received    ${seen.size} distinct (${status.received} deliveries)`);
  console.log(`  lost        ${lost}`);
  console.log(`  duplicates  ${status.duplicates}`);
  console.log(`  reconnects  ${status.reconnects}`);
  process.exitCode = lost === 0 ? 0 : 1;
}

/** The fault schedule; each step waits for the stream to be back before the next. */
async function runFaults(server, client, status) {
  const steps = [
    ['dropped connections (closeConnection on getMore x3)', () =>
      server.failCommand({ commands: ['getMore'], closeConnection: true, times: 3 })],
    ['HostUnreachable (6) on getMore x4', () =>
      server.failCommand({ commands: ['getMore'], errorCode: 6, errorLabels: ['ResumableChangeStreamError'], times: 4 })],
    ['CursorNotFound (43) on getMore, no labels', () =>
      server.failCommand({ commands: ['getMore'], errorCode: 43, errorLabels: [], times: 1 })],
  ];
  if (server.controllable) {
    steps.push(['server kill -9, restart 2 s later', async () => {
      await server.kill();
      await delay(2000);
      await server.restart();
    }]);
    steps.push(['graceful server restart', () => server.restart()]);
  }
  steps.push(['primary step-down (2 s)', () => server.stepDown(2)]);

  await delay(2000);
  for (const [name, inject] of steps) {
    status.fault = name;
    const before = status.reconnects;
    await inject();
    // Wait until the fault was noticed (a reconnect) or 5 s passed, then until events flow.
    await until(() => status.reconnects > before, 5000).catch(() => {});
    const received = status.received;
    await until(() => status.received > received + 20, 30000);
  }
  status.fault = 'done';
  await delay(1000);
}

/** Inserts `{_id: seq, seq}` every WRITE_EVERY_MS; retries each seq until it is stored. */
function startWriter(orders) {
  const writer = { written: 0, failures: 0, stopped: false };
  writer.stop = () => {
    writer.stopped = true;
  };
  writer.done = (async () => {
    while (!writer.stopped) {
      const seq = writer.written;
      try {
        await orders.insertOne({ _id: seq, seq, total: Math.round(Math.random() * 10000) / 100 });
        writer.written += 1;
      } catch (err) {
        // A retry after a lost acknowledgement finds its own document: that is success.
        if (err.code === 11000) writer.written += 1;
        else writer.failures += 1;
      }
      await delay(WRITE_EVERY_MS);
    }
  })();
  return writer;
}

/** The live status line: state, lag and reconnects as the stream's health() reports them. */
function startStatusLine(stream, status, writer) {
  const tty = process.stdout.isTTY;
  const render = () => {
    const health = stream.health();
    const lag = health.lagMs === null ? '-' : `${(health.lagMs / 1000).toFixed(0)} s`;
    const backoff = health.currentBackoffMs === null ? '' : ` (backoff ${health.currentBackoffMs} ms)`;
    const text =
      `written ${writer.written} | received ${status.received} | ${health.state}${backoff}` +
      ` | lag ${lag} | reconnects ${health.reconnects}` +
      ` | fault: ${status.fault}${status.lastResume ? ` | ${status.lastResume}` : ''}`;
    if (tty) process.stdout.write(`\r\x1b[K${text}`);
    else console.log(text);
  };
  const timer = setInterval(render, tty ? 200 : 1000);
  return {
    stop() {
      clearInterval(timer);
      render();
    },
  };
}

/** Resolves once `condition()` holds; rejects after `ms`. Polls: the demo is a watcher. */
async function until(condition, ms) {
  const deadline = Date.now() + ms;
  while (!condition()) {
    if (Date.now() > deadline) throw new Error(`gave up waiting after ${ms} ms`);
    await delay(50);
  }
}

function delay(ms) {
  return new Promise((resolve) => setTimeout(resolve, ms));
}

main().catch((err) => {
  console.error(`\ndemo failed: ${err.stack || err}`);
  process.exitCode = 1;
});
