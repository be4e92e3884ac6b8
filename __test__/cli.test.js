'use strict';
// The `resilient-change-stream tail` CLI (bin/), run from the source tree as a child process
// against the test server. pack.test.js runs the same CLI from an installed package.

const test = require('node:test');
const assert = require('node:assert/strict');
const fs = require('node:fs');
const os = require('node:os');
const path = require('node:path');
const { spawn, spawnSync } = require('node:child_process');
const { MongoClient, Binary, BSONRegExp, Double, Int32, Long } = require('mongodb');
const { EJSON } = require('bson');
const { startServer, skipIfExternal } = require('../harness');
const { uniqueDb, withTimeout } = require('./helpers');
const { CliRun, insertPaced, checkContinuity } = require('./fixtures/pack-cli-driver');

const BIN = path.join(__dirname, '..', 'bin', 'resilient-change-stream.js');

let server;
let client;
let tmp;

test.before(async () => {
  server = await startServer();
  client = new MongoClient(server.uri, { serverSelectionTimeoutMS: 15000 });
  await client.connect();
  tmp = fs.mkdtempSync(path.join(os.tmpdir(), 'rcs-cli-'));
});

test.after(async () => {
  await client?.close().catch(() => {});
  await server?.close();
  if (tmp) fs.rmSync(tmp, { recursive: true, force: true });
});

function cli(args, options) {
  return new CliRun(process.execPath, [BIN, ...args], options);
}

/** A fresh namespace (its collection created) and a token file path. */
async function namespace() {
  const db = uniqueDb('cli');
  const coll = await client.db(db).createCollection('orders');
  return { db, coll, ns: `${db}.orders`, tokenFile: path.join(tmp, `${db}.token.json`) };
}

/** Started, and its position saved once (the token file exists): later writes are seen. */
async function startTail(args, tokenFile) {
  const run = cli(args);
  await run.waitFor(() => fs.existsSync(tokenFile), 'the first saved position');
  return run;
}

test('prints canonical Extended JSON lines and saves the position (0600, the named record, no URI)', async () => {
  const { db, coll, ns, tokenFile } = await namespace();
  // A marker in the connection string: it must never reach the token file.
  const uri = `${server.uri}${server.uri.includes('?') ? '&' : '?'}appName=cli-uri-marker`;
  const run = await startTail(
    [
      'tail',
      uri,
      ns,
      '--token-file',
      tokenFile,
      '--full-document',
      'updateLookup',
      '--pipeline',
      '[{"$match":{"operationType":{"$in":["insert","update"]}}}]',
    ],
    tokenFile,
  );

  const doc = {
    seq: 1,
    i32: new Int32(7),
    whole: new Double(2),
    frac: 1.5,
    long: Long.fromString('9007199254740993'),
    at: new Date(0),
    bin: new Binary(Buffer.from([1, 2, 3]), 0x80),
    re: new BSONRegExp('^a', 'imx'),
  };
  await coll.insertOne(doc);
  await coll.updateOne({ seq: 1 }, { $set: { updated: true } });
  // updateLookup reads the document when the update event is read: delete it only after
  // that, or fullDocument is rightly null (seen under load).
  await run.waitFor((r) => r.lines.length >= 2, 'the insert and the update');
  await coll.deleteOne({ seq: 1 }); // filtered out by the pipeline
  await coll.insertOne({ seq: 2 });
  await run.waitFor((r) => r.lines.length >= 3, '3 events');

  const exit = await run.stop('SIGINT');
  assert.deepEqual(exit, { code: 0, signal: null }, run.stderr);
  assert.match(run.stderr, /stopped by SIGINT after 3 events; position saved in /);

  assert.equal(run.lines.length, 3, `the delete is filtered out:\n${run.lines.join('\n')}`);
  const [insert, update, insert2] = run.lines.map((line) => EJSON.parse(line, { relaxed: false }));
  for (const line of run.lines) {
    // Canonical: a fixpoint of parse(relaxed: false) + stringify(relaxed: false).
    assert.equal(EJSON.stringify(EJSON.parse(line, { relaxed: false }), { relaxed: false }), line);
  }
  assert.equal(insert.operationType, 'insert');
  const printed = run.lines[0];
  assert.match(printed, /"i32":\{"\$numberInt":"7"\}/);
  assert.match(printed, /"whole":\{"\$numberDouble":"2\.0"\}/);
  assert.match(printed, /"frac":\{"\$numberDouble":"1\.5"\}/);
  assert.match(printed, /"long":\{"\$numberLong":"9007199254740993"\}/);
  assert.match(printed, /"at":\{"\$date":\{"\$numberLong":"0"\}\}/);
  assert.match(printed, /"bin":\{"\$binary":\{"base64":"AQID","subType":"80"\}\}/);
  assert.match(printed, /"re":\{"\$regularExpression":\{"pattern":"\^a","options":"imx"\}\}/);
  assert.equal(update.operationType, 'update');
  assert.equal(update.fullDocument.updated, true, '--full-document updateLookup');
  assert.equal(insert2.fullDocument.seq.valueOf(), 2);

  const stat = fs.statSync(tokenFile);
  assert.equal(stat.mode & 0o777, 0o600);
  const text = fs.readFileSync(tokenFile, 'utf8');
  assert.doesNotMatch(text, /cli-uri-marker|127\.0\.0\.1|mongodb:/);
  // The library's file store record of the stream named "cli".
  const saved = EJSON.parse(text, { relaxed: false });
  assert.equal(saved.kind, 'changeStream');
  assert.equal(saved.name, 'cli');
  assert.equal(saved.namespace, `${db}.orders`);
  assert.deepEqual(saved.token, insert2._id, 'the token of the last printed event');
  assert.equal(saved.startAfter, false);
  const base = path.basename(tokenFile);
  assert.deepEqual(
    fs.readdirSync(tmp).filter((f) => f.includes(base) && f !== base),
    [],
    'no temp files left behind',
  );
});

test('SIGKILL, restart, SIGINT, restart: no event missing, none repeated after a clean stop', async () => {
  const { coll, ns, tokenFile } = await namespace();
  const args = ['tail', server.uri, ns, '--token-file', tokenFile];
  const TOTAL = 300;

  const run1 = await startTail(args, tokenFile);
  const writer = insertPaced(coll, 0, 240, { batch: 5, pauseMs: 5 });
  await run1.waitFor((r) => r.lines.length >= 40, '40 events');
  await run1.stop('SIGKILL');
  assert.equal(run1.exit.signal, 'SIGKILL');

  // The writer keeps going while nothing is listening.
  const run2 = cli(args);
  await writer;
  await run2.waitFor((r) => r.seqs().includes(239), 'seq 239 after the restart', 60000);
  const exit2 = await run2.stop('SIGINT');
  assert.deepEqual(exit2, { code: 0, signal: null }, run2.stderr);

  await insertPaced(coll, 240, TOTAL, { batch: 20, pauseMs: 0 });
  const run3 = cli(args);
  await run3.waitFor((r) => r.seqs().includes(TOTAL - 1), `seq ${TOTAL - 1}`);
  const exit3 = await run3.stop('SIGTERM');
  assert.deepEqual(exit3, { code: 0, signal: null }, run3.stderr);
  assert.match(run3.stderr, /stopped by SIGTERM/);

  const runs = [
    { seqs: run1.seqs(), killed: true },
    { seqs: run2.seqs(), killed: false },
    { seqs: run3.seqs(), killed: false },
  ];
  const expected = Array.from({ length: TOTAL }, (_, i) => i);
  assert.equal(checkContinuity(runs, expected), null, JSON.stringify(runs.map((r) => [r.seqs[0], r.seqs.at(-1)])));
  assert.equal(run3.seqs()[0], 240, 'a clean stop resumes exactly after the last printed event');
});

// A parent that runs the CLI (its argv) with the same stdio, says the CLI's pid on stderr and
// waits: as npx or a shell without exec sits between a supervisor and the CLI.
const RUN_AS_CHILD = `const { spawn } = require('node:child_process');
const child = spawn(process.execPath, process.argv.slice(1), { stdio: 'inherit' });
process.stderr.write('cli pid ' + child.pid + '\\n');`;

test('its parent process dying (npx killed by a supervisor) stops it cleanly, position saved', async (t) => {
  const { coll, ns, tokenFile } = await namespace();
  const args = ['tail', server.uri, ns, '--token-file', tokenFile];
  const parent = new CliRun(process.execPath, ['-e', RUN_AS_CHILD, BIN, ...args]);
  const cliPid = () => Number(/cli pid (\d+)/.exec(parent.stderr)?.[1]);
  t.after(() => {
    // Only if the test failed before the CLI exited: never leave it running.
    if (parent.exit === undefined && cliPid()) process.kill(cliPid(), 'SIGKILL');
  });
  await parent.waitFor(() => cliPid() > 0 && fs.existsSync(tokenFile), 'the CLI to start and save a position');
  await coll.insertMany([{ seq: 0 }, { seq: 1 }, { seq: 2 }]);
  await parent.waitFor((r) => r.lines.length >= 3, '3 events');

  parent.kill('SIGKILL');
  // The parent's pipes close once their last holder, the orphaned CLI, has exited.
  await withTimeout(parent.exited, 10000, 'the orphaned CLI to exit by itself');
  assert.equal(parent.exit.signal, 'SIGKILL');
  assert.match(parent.stderr, /stopped because its parent process \(pid \d+\) exited, after 3 events; position saved in /);
  const saved = EJSON.parse(fs.readFileSync(tokenFile, 'utf8'), { relaxed: false });
  assert.deepEqual(saved.token, EJSON.parse(parent.lines[2], { relaxed: false })._id, 'the last printed event');

  // A clean stop: the next run prints only what came after.
  await coll.insertOne({ seq: 3 });
  const again = cli(args);
  await again.waitFor((r) => r.seqs().includes(3), 'seq 3');
  assert.equal((await again.stop('SIGINT')).code, 0, again.stderr);
  assert.deepEqual(again.seqs(), [3]);
});

test('a database stream (<db> without a collection)', async () => {
  const { db, tokenFile } = await namespace();
  const run = await startTail(['tail', server.uri, db, '--token-file', tokenFile], tokenFile);
  await client.db(db).collection('a').insertOne({ seq: 1 });
  await client.db(db).collection('b.with.dots').insertOne({ seq: 2 });
  await run.waitFor((r) => r.lines.length >= 2, '2 events');
  assert.equal((await run.stop('SIGINT')).code, 0, run.stderr);
  assert.deepEqual(
    run.events().map((e) => e.ns.coll),
    ['a', 'b.with.dots'],
  );
  assert.equal(EJSON.parse(fs.readFileSync(tokenFile, 'utf8')).namespace, db);

  // <db>.<coll> splits at the first dot: collection names may contain dots.
  const dotted = cli(['tail', server.uri, `${db}.b.with.dots`, '--token-file', tokenFile]);
  await dotted.exited;
  assert.equal(dotted.exit.code, 2, 'the token file belongs to the database stream');
  assert.match(dotted.stderr, new RegExp(`written for namespace ${db}, not ${db}\\.b\\.with\\.dots`));
});

test('--snapshot: the documents first (snapshot lines, _id order), then the changes; a restart after the copy prints no document again', async () => {
  const { db, coll, ns, tokenFile } = await namespace();
  await coll.insertMany(Array.from({ length: 20 }, (_, i) => ({ _id: i, v: 0 })));
  const run = cli(['tail', server.uri, ns, '--snapshot', '--token-file', tokenFile]);
  await run.waitFor((r) => r.lines.length >= 20, 'the 20 copied documents');
  await coll.insertOne({ _id: 20, v: 1 });
  await run.waitFor((r) => r.lines.length >= 21, 'the insert after the copy');
  assert.equal((await run.stop('SIGINT')).code, 0, run.stderr);
  const events = run.events();
  assert.deepEqual(events.slice(0, 20).map((e) => [e.operationType, Number(e.documentKey._id)]), Array.from({ length: 20 }, (_, i) => ['snapshot', i]));
  assert.equal(events[20].operationType, 'insert');
  assert.equal(events.length, 21);

  const again = cli(['tail', server.uri, ns, '--snapshot', '--token-file', tokenFile]);
  await again.waitFor(() => EJSON.parse(fs.readFileSync(tokenFile, 'utf8')).writtenAt !== undefined, 'the restarted tail');
  await coll.insertOne({ _id: 21, v: 2 });
  await again.waitFor((r) => r.lines.length >= 1, 'the next insert');
  assert.equal((await again.stop('SIGINT')).code, 0, again.stderr);
  assert.deepEqual(again.events().map((e) => e.operationType), ['insert'], 'nothing copied again');

  const whole = cli(['tail', server.uri, db, '--snapshot']);
  await whole.exited;
  assert.equal(whole.exit.code, 2);
  assert.match(whole.stderr, /--snapshot copies one collection/);
});

test('refuses a token file of another namespace, pipeline or --full-document, or not a token file; leaves it alone', async () => {
  const { db, coll, ns, tokenFile } = await namespace();
  const run = await startTail(['tail', server.uri, ns, '--token-file', tokenFile], tokenFile);
  assert.equal((await run.stop('SIGINT')).code, 0, run.stderr);
  const before = fs.readFileSync(tokenFile, 'utf8');
  // Events written meanwhile: a refused run must not print them (nor move the position).
  await coll.insertOne({ seq: 1 });

  const refusals = [
    { args: [`${db}.other`], why: new RegExp(`written for namespace ${db}\\.orders, not ${db}\\.other`) },
    { args: [ns, '--pipeline', '[{"$match":{"operationType":"insert"}}]'], why: /a different pipeline/ },
    { args: [ns, '--full-document', 'updateLookup'], why: /a different pipeline or different watch options/ },
  ];
  for (const { args, why } of refusals) {
    const other = cli(['tail', server.uri, ...args, '--token-file', tokenFile]);
    await other.exited;
    const what = `${args.join(' ')}: ${other.stderr}`;
    assert.equal(other.exit.code, 2, what);
    assert.match(other.stderr, why, what);
    assert.match(other.stderr, /PositionMismatchError: .*; use another --token-file for this stream\n$/, what);
    assert.doesNotMatch(other.stderr, /allowPositionMismatch/, `${what}: a library option the CLI does not have`);
    assert.equal(other.lines.length, 0, what);
    assert.equal(fs.readFileSync(tokenFile, 'utf8'), before, what);
  }

  const garbage = path.join(tmp, 'not-a-token.json');
  fs.writeFileSync(garbage, '{"hello":"world"}\n');
  const bad = cli(['tail', server.uri, ns, '--token-file', garbage]);
  await bad.exited;
  assert.equal(bad.exit.code, 2);
  assert.match(bad.stderr, /TokenStoreError: the stored position in file .*not-a-token\.json is unreadable/);
  assert.match(bad.stderr, /delete it to start from now, or use another --token-file/);
  assert.equal(fs.readFileSync(garbage, 'utf8'), '{"hello":"world"}\n');

  // A token file of the CLI before it used the library's store: said so, not read.
  const old = path.join(tmp, 'old-cli.token.json');
  const oldText = `{"ns":{"db":"${db}","coll":"orders"},"resumeAfter":{"_data":"8266"}}\n`;
  fs.writeFileSync(old, oldText);
  const oldRun = cli(['tail', server.uri, ns, '--token-file', old]);
  await oldRun.exited;
  assert.equal(oldRun.exit.code, 2, oldRun.stderr);
  assert.match(
    oldRun.stderr,
    /written by an earlier version of this CLI.*delete it to start from now, or use a new --token-file/,
  );
  assert.equal(oldRun.lines.length, 0);
  assert.equal(fs.readFileSync(old, 'utf8'), oldText);

  const missingDir = cli(['tail', server.uri, ns, '--token-file', path.join(tmp, 'no', 'such', 'dir', 't.json')]);
  await missingDir.exited;
  assert.equal(missingDir.exit.code, 2);
  assert.match(missingDir.stderr, /cannot write token file/);
  assert.equal(missingDir.lines.length, 0);
});

test('an event counts as printed only once its line is written (the position waits for it)', async () => {
  const { Writable } = require('node:stream');
  const { writeOut } = require('../bin/tail');
  // A sink that takes its time, as stdout does where pipes are asynchronous (macOS, Windows).
  const written = [];
  let hold = true;
  const held = [];
  const slow = new Writable({
    write(chunk, _encoding, callback) {
      const done = () => {
        written.push(String(chunk));
        callback();
      };
      if (hold) held.push(done);
      else setImmediate(done);
    },
  });
  const pending = writeOut(slow, 'a\n');
  assert.ok(pending instanceof Promise, 'not in the sink yet: the listener must wait');
  let settled = false;
  pending.then(() => {
    settled = true;
  });
  await new Promise((resolve) => setImmediate(resolve));
  assert.equal(settled, false, 'not before the sink took the line');
  hold = false;
  for (const done of held.splice(0)) done();
  await withTimeout(pending, 5000, 'the write to settle');
  assert.equal(written.join(''), 'a\n');

  // A sink that writes at once (Linux pipes, files, terminals): no promise, no tick.
  const immediate = new Writable({
    write(_chunk, _encoding, callback) {
      callback();
    },
  });
  assert.equal(writeOut(immediate, 'b\n'), undefined);

  // A sink that fails (the reader went away): the listener throws, the event is not processed.
  const broken = new Writable({
    write(_chunk, _encoding, callback) {
      callback(Object.assign(new Error('write EPIPE'), { code: 'EPIPE' }));
    },
  });
  broken.on('error', () => {});
  assert.throws(() => writeOut(broken, 'c\n'), { code: 'EPIPE' });
});

test('usage errors exit 2 and never echo the connection string', async () => {
  const cases = [
    { args: [], message: /no command given/ },
    { args: ['follow', 'mongodb://x', 'db.c'], message: /unknown command "follow"/ },
    { args: ['tail', 'mongodb://localhost'], message: /needs a connection string and <db>/ },
    { args: ['tail', 'mongodb://localhost', 'db.c', '--bogus'], message: /Unknown option '--bogus'/ },
    { args: ['tail', 'mongodb://localhost', '.c'], message: /is not <db> or <db>\.<collection>/ },
    { args: ['tail', 'mongodb://localhost', 'db.c', '--pipeline', '[{'], message: /--pipeline is not valid/ },
    { args: ['tail', 'mongodb://localhost', 'db.c', '--pipeline', '[1]'], message: /array of stage documents/ },
    { args: ['tail', 'postgres://user:hunter2@h/db', 'db.c'], message: /option "uri" must be a connection string/ },
  ];
  const env = { ...process.env };
  delete env.MONGODB_URI;
  for (const { args, message } of cases) {
    const result = spawnSync(process.execPath, [BIN, ...args], { encoding: 'utf8', env, timeout: 30000 });
    const what = `${args.join(' ')}: ${result.stderr}`;
    assert.equal(result.status, 2, what);
    assert.match(result.stderr, message, what);
    assert.doesNotMatch(result.stderr, /hunter2/, what);
    assert.equal(result.stdout, '', what);
  }
  // A library error that names the package itself: the name is printed once.
  const noAddon = spawnSync(process.execPath, [BIN, 'tail', 'mongodb://localhost', 'db.c'], {
    encoding: 'utf8',
    env: { ...env, NAPI_RS_NATIVE_LIBRARY_PATH: path.join(tmp, 'no-such-addon.node') },
    timeout: 30000,
  });
  assert.equal(noAddon.status, 1, noAddon.stderr);
  assert.match(noAddon.stderr, /^resilient-change-stream: [^\n]*no-such-addon\.node/);
  assert.equal(noAddon.stderr.match(/resilient-change-stream:/g).length, 1, noAddon.stderr);
  assert.equal(noAddon.stdout, '');

  const help = spawnSync(process.execPath, [BIN, '--help'], { encoding: 'utf8' });
  assert.equal(help.status, 0);
  assert.match(help.stdout, /resilient-change-stream tail <uri> <db>\[\.<coll>\]/);
  const version = spawnSync(process.execPath, [BIN, '--version'], { encoding: 'utf8' });
  assert.equal(version.stdout.trim(), require('../package.json').version);
});

test('$MONGODB_URI stands in for <uri>', async () => {
  const { coll, ns, tokenFile } = await namespace();
  const run = new CliRun(process.execPath, [BIN, 'tail', ns, '--token-file', tokenFile], {
    env: { ...process.env, MONGODB_URI: server.uri },
  });
  await run.waitFor(() => fs.existsSync(tokenFile), 'the first saved position');
  await coll.insertOne({ seq: 1 });
  await run.waitFor((r) => r.lines.length >= 1, 'an event');
  assert.equal((await run.stop('SIGINT')).code, 0, run.stderr);
});

test('a dropped collection: prints invalidate, exits 0, saves startAfter; a restart continues after it', async () => {
  const { db, coll, ns, tokenFile } = await namespace();
  const args = ['tail', server.uri, ns, '--token-file', tokenFile];
  const run = await startTail(args, tokenFile);
  await coll.insertOne({ seq: 1 });
  await run.waitFor((r) => r.lines.length >= 1, 'the insert');
  await coll.drop();
  const exit = await withTimeout(run.exited, 30000, 'the CLI to end after the invalidate');
  assert.deepEqual(exit, { code: 0, signal: null }, run.stderr);
  const events = run.events();
  assert.deepEqual(
    events.map((e) => e.operationType),
    ['insert', 'drop', 'invalidate'],
  );
  assert.match(run.stderr, /invalidated \(the collection was dropped or renamed\).*run again to continue/);
  const saved = EJSON.parse(fs.readFileSync(tokenFile, 'utf8'), { relaxed: false });
  assert.equal(saved.startAfter, true, 'continues with startAfter');
  assert.deepEqual(saved.token, EJSON.parse(run.lines[2], { relaxed: false })._id);

  // startAfter the invalidate replays everything after it: no need to wait for the open.
  const again = cli(args);
  await client.db(db).collection('orders').insertOne({ seq: 2 });
  await again.waitFor((r) => r.seqs().includes(2), 'the insert into the re-created collection');
  assert.equal((await again.stop('SIGINT')).code, 0, again.stderr);
  assert.deepEqual(again.seqs(), [2]);
});

test('the reader going away (| head -1) ends it quietly with exit 0', async () => {
  const { coll, ns, tokenFile } = await namespace();
  const child = spawn(process.execPath, [BIN, 'tail', server.uri, ns, '--token-file', tokenFile], {
    stdio: ['ignore', 'pipe', 'pipe'],
  });
  let stderr = '';
  child.stderr.setEncoding('utf8').on('data', (d) => {
    stderr += d;
  });
  const exited = new Promise((resolve) => child.on('close', (code, signal) => resolve({ code, signal })));
  await withTimeout(
    (async () => {
      while (!fs.existsSync(tokenFile)) await new Promise((r) => setTimeout(r, 20));
    })(),
    30000,
    'the first saved position',
  );
  const firstLine = new Promise((resolve) => {
    let buffered = '';
    child.stdout.setEncoding('utf8').on('data', (d) => {
      buffered += d;
      if (buffered.includes('\n')) resolve(buffered.split('\n')[0]);
    });
  });
  await coll.insertOne({ seq: 0 });
  const line = await withTimeout(firstLine, 30000, 'the first line');
  assert.equal(EJSON.parse(line).fullDocument.seq, 0);
  child.stdout.destroy(); // as `head -1` exits
  // Keep writing until the CLI notices (the pipe buffer may absorb a few lines first).
  let seq = 1;
  const exit = await withTimeout(
    (async () => {
      for (;;) {
        const done = await Promise.race([exited, new Promise((r) => setTimeout(() => r(null), 50))]);
        if (done) return done;
        await coll.insertOne({ seq: seq++ });
      }
    })(),
    30000,
    'the CLI to notice the closed pipe',
  );
  assert.deepEqual(exit, { code: 0, signal: null }, stderr);
  assert.doesNotMatch(stderr, /EPIPE|Error/);
});

test('a terminal gets a live status line on stderr; Ctrl-C through the terminal stops it cleanly', async (t) => {
  if (process.platform !== 'linux' || spawnSync('script', ['--version']).status !== 0) {
    t.skip('needs util-linux script(1) for a pseudo-terminal');
    return;
  }
  const { coll, ns, tokenFile } = await namespace();
  const quote = (s) => `'${s.replaceAll("'", "'\\''")}'`;
  // `exec`: without it some shells (dash, which script(1) uses when $SHELL is unset) stay
  // between script and the CLI, take the tty's SIGINT themselves and die of it (exit 130).
  const command = `exec ${[process.execPath, BIN, 'tail', server.uri, ns, '--token-file', tokenFile].map(quote).join(' ')}`;
  // script(1) runs the CLI on a pseudo-terminal (stdout and stderr both on it); what we write
  // to script's stdin is typed on that terminal, so \x03 is a real Ctrl-C (SIGINT from the tty).
  const child = spawn('script', ['-qfec', command, '/dev/null'], {
    stdio: ['pipe', 'pipe', 'pipe'],
    env: { ...process.env, SHELL: '/bin/sh' },
  });
  let screen = '';
  child.stdout.setEncoding('utf8').on('data', (d) => {
    screen += d;
  });
  child.stderr.setEncoding('utf8').on('data', (d) => {
    screen += d;
  });
  const exited = new Promise((resolve) => child.on('close', (code, signal) => resolve({ code, signal })));
  const until = async (predicate, what) =>
    withTimeout(
      (async () => {
        while (!predicate()) await new Promise((r) => setTimeout(r, 20));
      })(),
      30000,
      `${what}; screen so far: ${JSON.stringify(screen)}`,
    );
  await until(() => fs.existsSync(tokenFile) && /0 events/.test(screen), 'the status line');
  await coll.insertOne({ seq: 1 });
  await until(() => /1 events · last/.test(screen), 'the status line to count the event');
  child.stdin.write('\x03');
  const exit = await withTimeout(exited, 30000, 'script to exit after Ctrl-C');
  assert.deepEqual(exit, { code: 0, signal: null }, screen);
  assert.match(screen, /\r\x1b\[2K[^\r\n]*orders · 0 events · last none yet/);
  // The status line is cleared before the event line, so the line stands alone.
  assert.match(screen, /\r\x1b\[2K\{"_id":\{"_data":"[^"]+"\},"operationType":"insert"/);
  assert.match(screen, /stopped by SIGINT after 1 events; position saved in /);
});

test('keeps printing through a server crash and restart; says so on stderr', async (t) => {
  if (skipIfExternal(t, 'kill and restart it')) return;
  const disk = await startServer({ storage: 'disk', syncOnCommit: true });
  t.after(() => disk.close());
  const driver = new MongoClient(disk.uri, { serverSelectionTimeoutMS: 30000 });
  t.after(() => driver.close().catch(() => {}));
  const db = uniqueDb('cli');
  const coll = await driver.db(db).createCollection('orders');
  const tokenFile = path.join(tmp, `${db}.token.json`);
  const run = await startTail(['tail', disk.uri, `${db}.orders`, '--token-file', tokenFile], tokenFile);
  await insertPaced(coll, 0, 20, { batch: 5, pauseMs: 0 });
  await run.waitFor((r) => r.lines.length >= 20, '20 events');
  await disk.kill();
  await run.waitFor((r) => /reconnecting \(attempt 1, in \d+ ms\) after /.test(r.stderr), 'a reconnecting line');
  await disk.restart();
  await insertPaced(coll, 20, 40, { batch: 5, pauseMs: 0 });
  await run.waitFor((r) => r.seqs().includes(39), 'the events after the restart', 60000);
  assert.match(run.stderr, /resumed after \d+ attempt\(s\), \d+ ms down/);
  assert.equal((await run.stop('SIGINT')).code, 0, run.stderr);
  assert.deepEqual(run.seqs(), Array.from({ length: 40 }, (_, i) => i));
});
