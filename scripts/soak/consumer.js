'use strict';
// The chaos soak's consumer (scripts/soak.js runs it, SIGKILLs it and runs it again): one
// named ResilientChangeStream with a file store, through the package's public API, in
// emitter mode. It reports on stdout, one line each, stamped with hrMs() (CLOCK_MONOTONIC,
// one clock for every process on the machine, so the soak can compare stamps):
//   e <t> <seq>                          an event delivered (written synchronously: a pipe)
//   m <t> <rss>                          resident set size, at the first event and every 2 s
//   r <t> <attempt> <delayMs> <code>     reconnecting
//   s <t> <silentMs>                     stalled (the watchdog gave up on a silent cursor)
//   u <t> <attempts> <downtimeMs>        resumed
//   x <t> <name> <code> <message>        error (the stream could not survive something)
//   c <t> <reason>                       closed
// SIGTERM closes the stream (the position is saved) and exits 0 if it closed cleanly.
// Configuration comes from the environment (SOAK_*), so the URI stays out of `ps`.

const path = require('node:path');
const { hrMs } = require('../bench/common');
const { ResilientChangeStream } = require(path.resolve(__dirname, '..', '..'));

const RSS_EVERY_MS = 2000;
const PARENT_CHECK_MS = 1000;

const { SOAK_URI, SOAK_DB, SOAK_COLLECTION, SOAK_NAME, SOAK_TOKEN_FILE } = process.env;

function report(...fields) {
  process.stdout.write(`${fields.join(' ')}\n`);
}

const rss = () => process.memoryUsage().rss;

const stream = new ResilientChangeStream({
  uri: SOAK_URI,
  db: SOAK_DB,
  collection: SOAK_COLLECTION,
  pipeline: [{ $match: { operationType: 'insert' } }],
  name: SOAK_NAME,
  tokenStore: { type: 'file', path: SOAK_TOKEN_FILE },
  // Short waits so faults are noticed quickly; the watchdog turns a blocked getMore into a
  // reconnect after 2 s of silence.
  maxAwaitTimeMS: 200,
  stallTimeoutMS: 2000,
  backoff: { initialDelayMS: 50, multiplier: 2, maxDelayMS: 1000 },
});

let first = true;
stream.on('change', (event) => {
  report('e', hrMs().toFixed(1), event.fullDocument.seq);
  if (first) {
    first = false;
    report('m', hrMs().toFixed(1), rss());
  }
});
stream.on('reconnecting', ({ attempt, delayMs, error }) => {
  report('r', hrMs().toFixed(1), attempt, delayMs, error?.kind ?? error?.name ?? 'unknown');
});
stream.on('stalled', ({ silentMs }) => report('s', hrMs().toFixed(1), silentMs));
stream.on('resumed', ({ attempts, downtimeMs }) => report('u', hrMs().toFixed(1), attempts, downtimeMs));
stream.on('error', (err) => {
  report('x', hrMs().toFixed(1), err.name, err.kind ?? err.code ?? '-', String(err.message).split('\n')[0]);
});

const rssTimer = setInterval(() => report('m', hrMs().toFixed(1), rss()), RSS_EVERY_MS);

// If the soak dies without killing us, we would retry a dead server forever: when our parent
// changes (we were re-parented), close and exit. unref'd: it never keeps the process alive.
const parent = process.ppid;
const parentTimer = setInterval(() => {
  if (process.ppid !== parent) stream.close().catch(() => {});
}, PARENT_CHECK_MS).unref();

stream.on('close', ({ reason }) => {
  report('c', hrMs().toFixed(1), reason);
  clearInterval(rssTimer);
  clearInterval(parentTimer);
  process.exitCode = reason === 'closed' ? 0 : 1;
});

process.on('SIGTERM', () => {
  stream.close().catch((err) => {
    report('x', hrMs().toFixed(1), err.name, err.kind ?? err.code ?? '-', String(err.message).split('\n')[0]);
    process.exitCode = 1;
  });
});
