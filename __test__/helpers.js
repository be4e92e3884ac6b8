'use strict';
// Shared helpers for the node tests. Every test that needs a server gets one from the
// project's harness (or MONGODB_URI). No sleeps as synchronisation: wait on events or
// conditions, always with a deadline.

const { once } = require('node:events');
const { MongoClient } = require('mongodb');
const { startServer, skipIfExternal } = require('../harness');

let counter = 0;
/** A database name unique to this process and call, so tests can share a MONGODB_URI. */
function uniqueDb(prefix = 'rcs') {
  counter += 1;
  return `${prefix}_${process.pid}_${Date.now().toString(36)}_${counter}`;
}

/**
 * Starts a server and a driver client; `t.after` closes both. Returns
 * `{ server, client, db, coll, dbName, collName }` with a fresh, existing collection.
 */
async function setup(t, serverOptions = {}) {
  const server = await startServer(serverOptions);
  const client = new MongoClient(server.uri, { serverSelectionTimeoutMS: 15000 });
  await client.connect();
  const dbName = uniqueDb();
  const collName = 'orders';
  const db = client.db(dbName);
  const coll = await db.createCollection(collName);
  t.after(async () => {
    await client.close().catch(() => {});
    await server.close();
  });
  return { server, client, db, coll, dbName, collName };
}

/** Inserts `{ seq }` documents for seq in [from, to). */
async function insertSeq(coll, from, to) {
  const docs = [];
  for (let seq = from; seq < to; seq++) docs.push({ seq });
  if (docs.length) await coll.insertMany(docs);
}

/** Rejects after `ms` with a message saying what was awaited. */
function withTimeout(promise, ms, what) {
  let timer;
  const timeout = new Promise((_, reject) => {
    timer = setTimeout(() => reject(new Error(`timed out after ${ms} ms waiting for ${what}`)), ms);
  });
  return Promise.race([promise, timeout]).finally(() => clearTimeout(timer));
}

/** The next `name` event (its first argument) matching `predicate`, within `ms`. */
async function waitForEvent(emitter, name, predicate = () => true, ms = 30000) {
  const ac = new AbortController();
  const waiting = (async () => {
    for (;;) {
      const [arg] = await once(emitter, name, { signal: ac.signal });
      if (predicate(arg)) return arg;
    }
  })();
  try {
    return await withTimeout(waiting, ms, `"${name}"`);
  } finally {
    ac.abort();
    waiting.catch(() => {});
  }
}

/** next() `n` times, or until it answers null (closed, ended), within `ms`; returns the items. */
async function take(reader, n, ms = 30000) {
  const out = [];
  await withTimeout(
    (async () => {
      while (out.length < n) {
        const item = await reader.next();
        if (item === null) return;
        out.push(item);
      }
    })(),
    ms,
    `${n} items (got ${out.length})`,
  );
  return out;
}

/** Pulls `n` events with next(), within `ms`; returns them in order. A close before is an error. */
async function nextN(stream, n, ms = 30000) {
  const events = await take(stream, n, ms);
  if (events.length < n) throw new Error(`stream closed after ${events.length} of ${n} events`);
  return events;
}

/** Waits (polling every 5 ms, within `ms`) until `predicate()` (may be async) is truthy; returns it. */
async function waitUntil(predicate, what, ms = 30000) {
  const deadline = Date.now() + ms;
  for (;;) {
    const value = await predicate();
    if (value) return value;
    if (Date.now() > deadline) throw new Error(`timed out after ${ms} ms waiting for ${what}`);
    await new Promise((resolve) => setTimeout(resolve, 5));
  }
}

/** The `fullDocument.seq` of insert events. */
function seqs(events) {
  return events.filter((e) => e.operationType === 'insert').map((e) => e.fullDocument.seq);
}

/** [from, to) as an array. */
function range(from, to) {
  return Array.from({ length: to - from }, (_, i) => from + i);
}

/** Resolves when the stream reported its first position: its server cursor is open. */
function opened(stream, ms = 30000) {
  return waitForEvent(stream, 'resumeTokenChanged', () => true, ms);
}

/** Starts next() and waits until the cursor is open; returns `{ pending }` (that next()). */
async function startIterating(stream) {
  const isOpen = opened(stream);
  const pending = stream.next();
  pending.catch(() => {}); // observed by the caller
  await Promise.race([isOpen, pending]);
  return { pending };
}

/**
 * Fail points need test commands (always on for the harness's server; a real replica set
 * needs enableTestCommands). Skips the test, with a printed reason, when they are missing.
 */
async function skipWithoutFailPoints(t, server) {
  try {
    await server.failPointOff();
    t.after(() => server.failPointOff().catch(() => {}));
    return false;
  } catch (err) {
    if (err?.code !== 59 && !/no such (command|cmd)|not found|failpoint/i.test(String(err?.message))) throw err;
    const reason = `needs configureFailPoint (test commands) on the server: ${err.message}`;
    t.skip(reason);
    process.stderr.write(`skip: ${reason}\n`);
    return true;
  }
}

let appCounter = 0;
/** `uri` with an appName unique to one reader, to scope fail points to it (`appName`). */
function withUniqueAppName(uri, label) {
  appCounter += 1;
  const appName = `rcs-${label}-${process.pid}-${appCounter}`;
  const url = new URL(uri);
  url.searchParams.set('appName', appName);
  return { uri: url.toString(), appName };
}

/** A small seeded PRNG (mulberry32): a failing run can be repeated with its seed. */
function prng(seed) {
  let a = seed >>> 0;
  return () => {
    a = (a + 0x6d2b79f5) >>> 0;
    let x = a;
    x = Math.imul(x ^ (x >>> 15), x | 1);
    x ^= x + Math.imul(x ^ (x >>> 7), x | 61);
    return ((x ^ (x >>> 14)) >>> 0) / 4294967296;
  };
}

module.exports = {
  prng,
  withUniqueAppName,
  skipWithoutFailPoints,
  opened,
  startIterating,
  setup,
  uniqueDb,
  insertSeq,
  withTimeout,
  waitForEvent,
  take,
  nextN,
  waitUntil,
  seqs,
  range,
  skipIfExternal,
  startServer,
};
