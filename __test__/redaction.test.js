'use strict';
// Credentials never appear in errors or event payloads, whatever fails.

const test = require('node:test');
const assert = require('node:assert/strict');
const net = require('node:net');
const fs = require('node:fs');
const os = require('node:os');
const path = require('node:path');
const { ResilientChangeStream, RetriesExhaustedError } = require('..');
const { setup, withTimeout } = require('./helpers');

const SECRET = 's3cr3t-Pa55word';

/** A loopback port nothing listens on. */
async function closedPort() {
  const server = net.createServer();
  await new Promise((resolve) => server.listen(0, '127.0.0.1', resolve));
  const { port } = server.address();
  await new Promise((resolve) => server.close(resolve));
  return port;
}

/** Everything a user could see of an error: message, stack, own properties, cause chain. */
function exposed(value) {
  const parts = [];
  for (let e = value; e; e = e.cause) {
    parts.push(String(e.message), String(e.stack), JSON.stringify(e, Object.getOwnPropertyNames(e)));
  }
  return parts.join('\n');
}

/** Runs a stream until it closes; returns every error and reconnecting payload it produced. */
async function runUntilClosed(stream) {
  const seen = [];
  stream.on('reconnecting', (r) => seen.push(r.error));
  stream.on('error', (e) => seen.push(e));
  const closed = new Promise((resolve) => stream.once('close', resolve));
  stream.on('change', () => {});
  const close = await withTimeout(closed, 60000, 'the stream to give up');
  return { seen, close };
}

/** A logger that keeps every line as text. */
function recordingLogger() {
  const lines = [];
  const record = (level) => (fields, message) => lines.push({ level, message, fields, text: JSON.stringify([fields, message]) });
  return { lines, logger: { debug: record('debug'), info: record('info'), warn: record('warn'), error: record('error') } };
}

test('an unreachable server with credentials in the URI: no error or log line shows the password', async () => {
  const port = await closedPort();
  const uri = `mongodb://alice:${SECRET}@127.0.0.1:${port}/?serverSelectionTimeoutMS=300&connectTimeoutMS=300`;
  const { lines, logger } = recordingLogger();
  const stream = new ResilientChangeStream({
    uri,
    db: 'x',
    collection: 'y',
    backoff: { initialDelayMS: 1, maxRetries: 2 },
    logger,
  });
  const { seen, close } = await runUntilClosed(stream);
  const warnings = lines.filter((l) => l.level === 'warn' && l.message === 'change stream reconnecting');
  assert.equal(warnings.length, 2, `log lines: ${lines.map((l) => l.text).join('\n')}`);
  assert.deepEqual(warnings.map((l) => l.fields.attempt), [1, 2]);
  assert.equal(warnings[0].fields.namespace, 'x.y');
  assert.ok(lines.some((l) => l.level === 'error' && l.message === 'change stream failed'));
  for (const l of lines) assert.ok(!l.text.includes(SECRET), `leaked in log: ${l.text}`);
  assert.ok(!JSON.stringify(stream.health()).includes(SECRET), 'health() is clean');
  assert.equal(close.reason, 'error');
  assert.ok(close.error instanceof RetriesExhaustedError, `got ${close.error}`);
  assert.equal(seen.filter((e) => e === close.error).length, 1, "'error' emitted once");
  assert.equal(seen.length, 3, 'two reconnecting errors and the final one');
  for (const e of seen) assert.ok(!exposed(e).includes(SECRET), `leaked in: ${exposed(e)}`);
  assert.ok(!exposed(close.error).includes('alice:'), 'user:password pair is redacted');
});

test('credentials the server rejects or ignores: nothing shows the password', async (t) => {
  const { server } = await setup(t);
  const base = new URL(server.uri);
  base.username = 'mallory';
  base.password = SECRET;
  const { lines, logger } = recordingLogger();
  const positionFile = path.join(fs.mkdtempSync(path.join(os.tmpdir(), 'rcs-redaction-')), 'position.json');
  t.after(() => fs.rmSync(path.dirname(positionFile), { recursive: true, force: true }));
  const stream = new ResilientChangeStream({
    uri: base.toString(),
    db: 'x',
    collection: 'y',
    maxAwaitTimeMS: 100,
    backoff: { initialDelayMS: 1, maxRetries: 1 },
    logger,
    name: 'redaction',
    tokenStore: { type: 'file', path: positionFile },
  });
  // The test server may accept any credentials; a real one rejects them. Either way, look
  // at everything produced until the stream is open or closed.
  const seen = [];
  stream.on('reconnecting', (r) => seen.push(r.error));
  stream.on('error', (e) => seen.push(e));
  stream.on('change', () => {});
  const outcome = await withTimeout(
    Promise.race([
      new Promise((resolve) => stream.once('close', (c) => resolve(c))),
      new Promise((resolve) => stream.once('resumeTokenChanged', () => resolve('open'))),
    ]),
    60000,
    'the stream to open or close',
  );
  assert.ok(!JSON.stringify(stream.health()).includes(SECRET), 'health() is clean');
  await stream.close();
  if (outcome !== 'open') seen.push(outcome.error);
  assert.ok(lines.length > 0, 'the engine logged something');
  t.diagnostic(`outcome: ${outcome === 'open' ? 'open' : 'closed'}`);
  // (The test server rejects these credentials, so usually nothing is stored; the record's
  // fields are checked in src/engine/position.rs.)
  if (outcome === 'open') {
    // close() stored the position: the record names the namespace, never the connection.
    const stored = fs.readFileSync(positionFile, 'utf8');
    assert.ok(stored.includes('"x.y"'), stored);
    assert.ok(!stored.includes(SECRET) && !stored.includes('mallory'), `leaked in the stored record: ${stored}`);
  }
  for (const l of lines) assert.ok(!l.text.includes(SECRET), `leaked in log: ${l.text}`);
  for (const e of seen.filter(Boolean)) assert.ok(!exposed(e).includes(SECRET), `leaked in: ${exposed(e)}`);
});
