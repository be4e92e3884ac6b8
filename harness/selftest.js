'use strict';
// Self-test of the harness (a plain script): `node harness/selftest.js`.
// Exercises install, start, adminCommand, failCommand, kill + restart on the
// same port with durable storage, and close; prints timings and OK.

const assert = require('node:assert/strict');
const fs = require('node:fs');
const { MongoClient } = require('mongodb');
const { installServer, startServer } = require('./index');

async function timed(label, fn) {
  const t0 = process.hrtime.bigint();
  const result = await fn();
  const ms = Number(process.hrtime.bigint() - t0) / 1e6;
  process.stdout.write(`  ${label}: ${ms.toFixed(0)} ms\n`);
  return result;
}

function isAlive(pid) {
  try { process.kill(pid, 0); return true; } catch { return false; }
}

async function withClient(uri, fn) {
  const client = new MongoClient(uri, { serverSelectionTimeoutMS: 5000 });
  try { return await fn(client); } finally { await client.close(); }
}

async function checkFailCommandOnPing(server) {
  await server.failCommand({ commands: ['ping'], errorCode: 2, times: 1 });
  await assert.rejects(server.adminCommand({ ping: 1 }), (err) => err.code === 2);
  assert.equal((await server.adminCommand({ ping: 1 })).ok, 1, 'failpoint should fire only once');
}

async function checkFailCommandOnGetMore(server) {
  await withClient(server.uri, async (client) => {
    const coll = client.db('selftest').collection('c');
    await coll.insertMany([{ n: 1 }, { n: 2 }, { n: 3 }]);
    await server.failCommand({ errorCode: 6, errorLabels: ['ResumableChangeStreamError'] });
    const cursor = coll.find({}, { batchSize: 1 });
    assert.equal((await cursor.next()).n, 1);
    await assert.rejects(cursor.next(), (err) => err.code === 6 && err.hasErrorLabel('ResumableChangeStreamError'));
    await cursor.close().catch(() => {});
    await server.failPointOff();
  });
}

async function checkMemoryServer() {
  const server = await timed('start (memory)', () => startServer());
  const { pid, port } = server;
  process.stdout.write(`  server ${server.uri} pid ${pid}\n`);
  assert.equal(server.uri, `mongodb://127.0.0.1:${port}/?directConnection=true`);
  assert.equal((await server.adminCommand({ ping: 1 })).ok, 1);
  await checkFailCommandOnPing(server);
  await checkFailCommandOnGetMore(server);
  await timed('close (memory)', () => server.close());
  await server.close(); // idempotent
  assert.equal(isAlive(pid), false, 'server process should be gone after close()');
}

async function checkCrashRestart() {
  const server = await timed('start (disk, sync-on-commit)', () => startServer({ storage: 'disk', syncOnCommit: true }));
  const { port, pid, storagePath } = server;
  await withClient(server.uri, (c) => c.db('selftest').collection('durable').insertOne({ _id: 'survivor' }));
  await timed('kill -9', () => server.kill());
  assert.equal(server.pid, null);
  assert.equal(isAlive(pid), false, 'killed process should be gone');
  await timed('restart after kill', () => server.restart());
  assert.equal(server.port, port, 'restart must reuse the port');
  assert.notEqual(server.pid, pid);
  const doc = await withClient(server.uri, (c) => c.db('selftest').collection('durable').findOne({ _id: 'survivor' }));
  assert.deepEqual(doc, { _id: 'survivor' }, 'doc written before kill -9 should survive with --sync-on-commit');
  await timed('restart of a running server (SIGTERM + start)', () => server.restart());
  assert.equal(server.port, port);
  assert.equal((await server.stepDown(1)).ok, 1);
  assert.equal((await server.pruneOplog()).ok, 1);
  const lastPid = server.pid;
  await server.close();
  assert.equal(isAlive(lastPid), false);
  assert.equal(fs.existsSync(storagePath), false, 'temp dir should be deleted by close()');
}

// Nothing the harness held may keep the event loop alive after close(). The
// driver's destroyed sockets take a few ms to finish closing, hence the poll.
async function checkNoLeftoverHandles() {
  const leftovers = () => process.getActiveResourcesInfo().filter((r) => r !== 'TTYWrap' && r !== 'Timeout');
  const deadline = Date.now() + 2000;
  while (leftovers().length > 0 && Date.now() < deadline) await new Promise((r) => setTimeout(r, 10));
  assert.deepEqual(leftovers(), [], `handles still alive after close(): ${leftovers().join(', ')}`);
}

async function main() {
  const t0 = Date.now();
  const bin = await timed('installServer', () => installServer());
  process.stdout.write(`  secantusd-py: ${bin}\n`);
  if (process.env.MONGODB_URI) {
    const server = await startServer();
    assert.equal(server.external, true);
    assert.equal((await server.adminCommand({ ping: 1 })).ok, 1);
    await assert.rejects(server.kill(), { code: 'HARNESS_NOT_CONTROLLABLE' });
    await server.close();
  } else {
    await checkMemoryServer();
    await checkCrashRestart();
  }
  await checkNoLeftoverHandles();
  process.stdout.write(`OK (${Date.now() - t0} ms)\n`);
}

main().catch((err) => {
  process.stderr.write(`selftest FAILED: ${err.stack || err}\n`);
  process.exitCode = 1;
});
