'use strict';
// Helpers shared by the failure tests (resume, fatal, restart): a connection string of a
// stream's own (appName and other query options), a stream on a test env's collection, and an
// ordered record of everything a stream emits, with deadline-bound waits over it.

const { ResilientChangeStream } = require('..');
const { withTimeout } = require('./helpers');

/** Default deadline of a wait. */
const DEADLINE_MS = 30000;
/** Default backoff of a stream under test: short, so outages resolve fast. */
const BACKOFF = { initialDelayMS: 5, maxDelayMS: 50 };

let appCounter = 0;
/**
 * A driver appName unique to this process and call, `rcs-<prefix>-<pid>-<n>`: each stream gets
 * a client of its own, and failpoints can be scoped to it.
 */
function uniqueAppName(prefix) {
  appCounter += 1;
  return `rcs-${prefix}-${process.pid}-${appCounter}`;
}

/** `uri` with the given query options (appName, ...) set, replacing any the URI already has. */
function withUriOptions(uri, options) {
  const q = uri.indexOf('?');
  let base = uri;
  let params = [];
  if (q === -1) {
    const hostsEnd = uri.indexOf('/', uri.indexOf('://') + 3);
    if (hostsEnd === -1) base = `${uri}/`;
  } else {
    base = uri.slice(0, q);
    const names = Object.keys(options).map((n) => n.toLowerCase());
    params = uri
      .slice(q + 1)
      .split('&')
      .filter((p) => p !== '' && !names.includes(p.split('=')[0].toLowerCase()));
  }
  for (const [name, value] of Object.entries(options)) params.push(`${name}=${encodeURIComponent(value)}`);
  return `${base}?${params.join('&')}`;
}

/**
 * A stream on `env`'s collection through a connection string of its own (`appName`, plus any
 * `uriOptions`), with a short maxAwaitTimeMS and BACKOFF unless `options` says otherwise.
 */
function openStream(env, appName, options = {}, uriOptions = {}) {
  return new ResilientChangeStream({
    uri: withUriOptions(env.server.uri, { appName, ...uriOptions }),
    db: env.dbName,
    collection: env.collName,
    maxAwaitTimeMS: 100,
    backoff: BACKOFF,
    ...options,
  });
}

/** A fresh, existing collection in env's database (so each subtest sees only its own writes). */
async function freshCollection(env, name) {
  const coll = await env.db.createCollection(name);
  return { ...env, coll, collName: name };
}

/**
 * Records everything a stream emits, in one ordered log (`{ kind, value, at }`), and lets a
 * test wait (with a deadline) for a condition over what was recorded so far. Waiting looks at
 * the whole log, so an event that arrived before the wait began is never missed. With
 * `changes: false` no 'change' listener is added (iterator mode).
 */
function record(stream, { changes = true } = {}) {
  const rec = { log: [], changes: [], reconnecting: [], resumed: [], errors: [], closes: [], tokens: [] };
  const lists = {
    reconnecting: rec.reconnecting,
    resumed: rec.resumed,
    error: rec.errors,
    close: rec.closes,
    resumeTokenChanged: rec.tokens,
    ...(changes ? { change: rec.changes } : {}), // last: a 'change' listener starts the stream
  };
  const waiters = new Set();
  for (const [kind, list] of Object.entries(lists)) {
    stream.on(kind, (value) => {
      rec.log.push({ kind, value, at: Date.now() });
      list.push(value);
      for (const check of [...waiters]) check();
    });
  }
  /** Resolves once `predicate(rec)` holds; rejects on the deadline or if the stream closes first. */
  rec.until = async (predicate, what, ms = DEADLINE_MS) => {
    let check;
    const reached = new Promise((resolve, reject) => {
      check = () => {
        try {
          if (predicate(rec)) resolve();
          else if (rec.closes.length > 0) reject(new Error(`the stream closed before ${what}`));
        } catch (err) {
          reject(err);
        }
      };
    });
    waiters.add(check);
    check();
    try {
      await withTimeout(reached, ms, what);
    } catch (err) {
      err.message += `\n  recorded: ${describe(rec)}`;
      throw err;
    } finally {
      waiters.delete(check);
    }
  };
  /** Index in the log of the first entry of `kind` whose value matches. */
  rec.indexOf = (kind, predicate = () => true) =>
    rec.log.findIndex((e) => e.kind === kind && predicate(e.value));
  return rec;
}

/** Resolves once the server cursor is open: the open reply's token (or a first event) arrived. */
function opened(rec) {
  return rec.until((r) => r.tokens.length > 0 || r.changes.length > 0, 'the stream to open');
}

/** A compact line of what was recorded, for failure messages (runs of consecutive seqs collapsed). */
function describe(rec) {
  const parts = [];
  for (const { kind, value: v } of rec.log) {
    if (kind === 'resumeTokenChanged') continue;
    if (kind === 'change' && v.operationType === 'insert') {
      const last = parts.at(-1);
      if (last && last.run && last.to + 1 === v.fullDocument.seq) last.to += 1;
      else parts.push({ run: true, from: v.fullDocument.seq, to: v.fullDocument.seq });
      continue;
    }
    if (kind === 'change') parts.push(v.operationType);
    else if (kind === 'reconnecting') {
      parts.push(`reconnecting#${v.attempt}(${v.error.kind}/${v.error.code ?? '-'})`);
    } else if (kind === 'resumed') parts.push(`resumed(${v.attempts})`);
    else if (kind === 'error') parts.push(`error(${v.name}: ${v.message})`);
    else if (kind === 'close') parts.push(`close(${v.reason})`);
    else parts.push(kind);
  }
  return parts.map((p) => (p.run ? (p.from === p.to ? `${p.from}` : `${p.from}..${p.to}`) : p)).join(' ');
}

/** The backoff ceiling of `attempt` (1-based): initial × 2^(attempt-1), capped. */
function ceiling(attempt, { initialDelayMS, maxDelayMS }) {
  return Math.min(initialDelayMS * 2 ** (attempt - 1), maxDelayMS);
}

module.exports = {
  DEADLINE_MS,
  BACKOFF,
  uniqueAppName,
  withUriOptions,
  openStream,
  freshCollection,
  record,
  opened,
  describe,
  ceiling,
};
