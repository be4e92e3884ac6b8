'use strict';
// Starts and controls SecantusDB server processes for tests, benchmarks and
// the demo. See /work/shared/reference/test-server.md for the server itself.

const fs = require('node:fs');
const fsp = require('node:fs/promises');
const os = require('node:os');
const path = require('node:path');
const { spawn } = require('node:child_process');
const { setTimeout: delay } = require('node:timers/promises');
const { installServer } = require('./install');

const HOST = '127.0.0.1';
const LISTEN_RE = /secantus listening on (\S+):(\d+)/;
const PORT_IN_USE_RE = /Address already in use|EADDRINUSE|Errno 98/;
const START_TIMEOUT_MS = 60_000; // first start on a loaded 2-core box can be slow
const STOP_TIMEOUT_MS = 15_000; // SIGTERM normally takes ~2 s (accept-thread join)
const KILL_TIMEOUT_MS = 10_000;
const RESTART_DEADLINE_MS = 30_000;
const OUTPUT_LINES = 50;
const MAX_PARTIAL_LINE = 64 * 1024;

// ---------------------------------------------------------------------------
// Errors

function harnessError(code, message, extra = {}) {
  return Object.assign(new Error(`harness: ${message}`), { code }, extra);
}

function notControllable(what) {
  return harnessError('HARNESS_NOT_CONTROLLABLE',
    `cannot ${what}: MONGODB_URI points at an external server the harness does not control`);
}

// ---------------------------------------------------------------------------
// Never let a server outlive us: kill every live child (and drop its temp dir)
// on process exit and on SIGINT/SIGTERM/SIGHUP. The hooks are installed only
// while servers exist. On Linux the child additionally gets PR_SET_PDEATHSIG,
// which covers the one case no JS hook can: this process being SIGKILLed.

const liveServers = new Set();
const SIGNALS = ['SIGINT', 'SIGTERM', 'SIGHUP'];
let hooksInstalled = false;

function reapAllSync() {
  for (const server of liveServers) server._reapSync();
}

function onSignal(signal) {
  reapAllSync();
  // Alone on this signal: restore the default action (terminate) by
  // re-raising. Otherwise someone else (e.g. harness/cli.js) decides.
  if (process.listenerCount(signal) === 1) {
    removeHooks();
    process.kill(process.pid, signal);
  }
}

function installHooks() {
  if (hooksInstalled) return;
  hooksInstalled = true;
  process.on('exit', reapAllSync);
  for (const s of SIGNALS) process.on(s, onSignal);
}

function removeHooks() {
  if (!hooksInstalled) return;
  hooksInstalled = false;
  process.removeListener('exit', reapAllSync);
  for (const s of SIGNALS) process.removeListener(s, onSignal);
}

function track(server) {
  liveServers.add(server);
  installHooks();
}

function untrack(server) {
  liveServers.delete(server);
  if (liveServers.size === 0) removeHooks();
}

// ---------------------------------------------------------------------------
// Child process plumbing

/** Keeps the last N lines of the child's stdout+stderr and reports each line. */
class OutputTail {
  constructor(max) {
    this.max = max;
    this.lines = [];
    this.partial = { stdout: '', stderr: '' };
    this.listeners = new Set();
  }

  push(stream, chunk) {
    const parts = (this.partial[stream] + chunk).split(/\r?\n/);
    this.partial[stream] = parts.pop();
    if (this.partial[stream].length > MAX_PARTIAL_LINE) {
      parts.push(this.partial[stream]);
      this.partial[stream] = '';
    }
    for (const line of parts) this._add(line);
  }

  _add(line) {
    this.lines.push(line);
    if (this.lines.length > this.max) this.lines.shift();
    for (const fn of this.listeners) fn(line);
  }

  text() {
    const rest = Object.values(this.partial).filter(Boolean);
    return [...this.lines, ...rest].join('\n');
  }
}

// Execs the server through a tiny python shim that sets PR_SET_PDEATHSIG, so
// the kernel SIGKILLs the server if the spawning process dies in any way.
// The pid stays the same (exec), so signals we send reach the server itself.
const PDEATHSIG_SHIM = `import ctypes, os, signal, sys
try:
    ctypes.CDLL(None).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
except Exception:
    pass
if os.getppid() != int(sys.argv[1]):
    sys.exit(70)  # our parent already died before prctl took effect
os.execv(sys.argv[2], sys.argv[2:])`;

function commandLine(bin, args) {
  if (process.platform !== 'linux') return { cmd: bin, argv: args };
  const python = path.join(path.dirname(bin), 'python3');
  return { cmd: python, argv: ['-c', PDEATHSIG_SHIM, String(process.pid), bin, ...args] };
}

function childEnv(tmpDir) {
  const env = { ...process.env, TMPDIR: tmpDir, PYTHONUNBUFFERED: '1' };
  // Would silently turn off the journal and break the crash-durability tests.
  delete env.SECANTUS_TEST_FAST_STORAGE;
  return env;
}

/**
 * Spawns the server. The child and its pipes are unref'd: only the bounded
 * waits below (which hold a timer) keep the event loop alive, so a server can
 * never keep Node running by itself. Output is drained continuously so the
 * child can never block on a full pipe.
 */
function spawnServer(bin, args, tmpDir) {
  const { cmd, argv } = commandLine(bin, args);
  // cwd = our temp dir, so a stray ./secantusd.toml is never auto-discovered.
  const child = spawn(cmd, argv, { cwd: tmpDir, env: childEnv(tmpDir), stdio: ['ignore', 'pipe', 'pipe'] });
  const tail = new OutputTail(OUTPUT_LINES);
  for (const name of ['stdout', 'stderr']) {
    child[name].setEncoding('utf8');
    child[name].on('data', (d) => tail.push(name, d));
    child[name].unref();
  }
  child.unref();
  const closed = new Promise((resolve) => {
    child.once('close', (code, signal) => resolve({ code, signal }));
    child.once('error', (error) => resolve({ error }));
  });
  return { child, tail, closed, args };
}

function exitDescription({ code, signal, error }) {
  if (error) return `could not be started (${error.message})`;
  return signal ? `was killed by ${signal}` : `exited with code ${code}`;
}

function startError(proc, why) {
  const output = proc.tail.text();
  return harnessError('HARNESS_START_FAILED',
    `SecantusDB ${why}\n  command: secantusd-py ${proc.args.join(' ')}\n  output (last ${OUTPUT_LINES} lines):\n${output || '  (none)'}`,
    { output, portInUse: PORT_IN_USE_RE.test(output) });
}

/** Resolves with the port from the "listening" line; rejects on exit/timeout. */
function waitForListening(proc, timeoutMs) {
  return new Promise((resolve, reject) => {
    let timer;
    const finish = (settle, value) => {
      clearTimeout(timer);
      proc.tail.listeners.delete(onLine);
      settle(value);
    };
    const onLine = (line) => {
      const m = LISTEN_RE.exec(line);
      if (m) finish(resolve, Number(m[2]));
    };
    proc.tail.listeners.add(onLine);
    timer = setTimeout(() => finish(reject,
      startError(proc, `did not report "secantus listening on ..." within ${timeoutMs} ms`)), timeoutMs);
    proc.closed.then((how) => finish(reject, startError(proc, `${exitDescription(how)} before listening`)));
  });
}

/** True once the child has exited and its pipes are closed, false on timeout. */
async function waitClosed(proc, timeoutMs) {
  let timer;
  const timeout = new Promise((resolve) => { timer = setTimeout(resolve, timeoutMs, false); });
  const closed = await Promise.race([proc.closed.then(() => true), timeout]);
  clearTimeout(timer);
  if (closed) return true;
  const { exitCode, signalCode } = proc.child;
  if (exitCode === null && signalCode === null) return false;
  // Exited, but something still holds the pipes open: drop our ends.
  proc.child.stdout.destroy();
  proc.child.stderr.destroy();
  return true;
}

function isRunning(proc) {
  return Boolean(proc) && proc.child.exitCode === null && proc.child.signalCode === null;
}

// ---------------------------------------------------------------------------
// Options

function numberFlag(name, value) {
  if (value === undefined || value === null) return [];
  if (!Number.isFinite(value) || value < 0) throw new TypeError(`harness: ${name} needs a number >= 0, got ${value}`);
  return [name, String(value)];
}

function serverFlags(opts) {
  if (opts.args !== undefined && !Array.isArray(opts.args)) throw new TypeError('harness: opts.args must be an array of strings');
  return [
    '--enable-test-commands',
    ...(opts.syncOnCommit ? ['--sync-on-commit'] : []),
    ...numberFlag('--oplog-max-entries', opts.oplogMaxEntries),
    ...numberFlag('--oplog-retention-seconds', opts.oplogRetentionSeconds),
    ...numberFlag('--noop-heartbeat-seconds', opts.noopHeartbeatSeconds),
    ...(opts.args || []).map(String),
  ];
}

function localUri(port) {
  return `mongodb://${HOST}:${port}/?directConnection=true`;
}

// First host's port of a mongodb:// URI (null for SRV or no explicit port).
function portOfUri(uri) {
  const m = /^mongodb:\/\/(?:[^@/]*@)?([^/?,]+)/.exec(uri);
  const port = m && /:(\d+)$/.exec(m[1]);
  return port ? Number(port[1]) : null;
}

function isNetworkError(err) {
  return Boolean(err) && (err.name === 'MongoNetworkError' || err.name === 'MongoNetworkTimeoutError' ||
    /connection .*closed|ECONNRESET|socket hang up/i.test(String(err.message)));
}

// ---------------------------------------------------------------------------
// TestServer

class TestServer {
  constructor({ uri, port, external, bin, storage, storagePath, tmpDir, flags, startTimeoutMS }) {
    this.uri = uri;
    this.port = port;
    this.external = external;
    this.storage = storage || null;
    this.storagePath = storagePath || null;
    this._bin = bin;
    this._tmpDir = tmpDir;
    this._flags = flags;
    this._startTimeoutMS = startTimeoutMS || START_TIMEOUT_MS;
    this._proc = null;
    this._client = null;
    this._closing = null;
  }

  get controllable() { return !this.external; }

  /** pid of the running server process, or null. */
  get pid() { return isRunning(this._proc) ? this._proc.child.pid : null; }

  /** Last ~50 lines the server printed (for diagnostics). */
  output() { return this._proc ? this._proc.tail.text() : ''; }

  // --- commands (work against external servers too) -------------------------

  async adminCommand(cmd) {
    this._assertOpen('run an admin command');
    return this._adminClient().db('admin').command(cmd);
  }

  /** configureFailPoint 'failCommand'. Extra keys (appName, ...) go into data. */
  async failCommand({ commands = ['getMore'], times = 1, mode, ...data } = {}) {
    const cleanData = Object.fromEntries(Object.entries(data).filter(([, v]) => v !== undefined));
    return this.adminCommand({
      configureFailPoint: 'failCommand',
      mode: mode === undefined ? { times } : mode,
      data: { failCommands: commands, ...cleanData },
    });
  }

  async failPointOff() {
    return this.adminCommand({ configureFailPoint: 'failCommand', mode: 'off' });
  }

  /**
   * Emulated on SecantusDB; real on a replica set. Some servers drop the connection. mongod
   * requires secondaryCatchUpPeriodSecs (default 10) below the step-down period.
   */
  async stepDown(secs = 2) {
    try {
      return await this.adminCommand({
        replSetStepDown: secs,
        secondaryCatchUpPeriodSecs: Math.max(0, Math.min(1, secs - 1)),
        force: true,
      });
    } catch (err) {
      if (isNetworkError(err)) return { ok: 1, networkError: err.message };
      throw err;
    }
  }

  async pruneOplog() {
    this._assertControllable('run secantusAdmin.pruneOplog');
    return this.adminCommand({ 'secantusAdmin.pruneOplog': 1 });
  }

  // --- process control (embedded server only) --------------------------------

  /** Crash: SIGKILL and wait for exit. No-op if not running. */
  async kill() {
    this._assertControllable('kill the server');
    await this._dropAdminClient();
    await this._terminate('SIGKILL');
  }

  /** Graceful (maintenance) stop: SIGTERM and wait for exit. No-op if not running. */
  async stop() {
    this._assertControllable('stop the server');
    await this._dropAdminClient();
    await this._terminate('SIGTERM');
  }

  /** Stops it if running, then starts it again on the same port, path and flags. */
  async restart() {
    this._assertControllable('restart the server');
    await this.stop();
    const deadline = Date.now() + RESTART_DEADLINE_MS;
    for (let attempt = 1; ; attempt++) {
      try {
        await this._launch(this.port);
        return this;
      } catch (err) {
        // The port may be briefly held by someone else; anything else is fatal.
        if (!err.portInUse || Date.now() + 1000 > deadline) throw err;
        await delay(Math.min(100 * attempt, 1000));
      }
    }
  }

  /** Kills the process, closes the admin client, deletes the temp dir. Idempotent. */
  close() {
    if (!this._closing) this._closing = this._close();
    return this._closing;
  }

  async _close() {
    await this._dropAdminClient();
    if (this.external) return;
    // SIGKILL, not SIGTERM: the data is thrown away anyway, and SIGTERM costs ~2 s.
    await this._terminate('SIGKILL');
    await fsp.rm(this._tmpDir, { recursive: true, force: true, maxRetries: 3 });
    untrack(this);
  }

  // --- internals --------------------------------------------------------------

  _assertOpen(what) {
    if (this._closing) throw harnessError('HARNESS_CLOSED', `cannot ${what}: the TestServer was closed`);
  }

  _assertControllable(what) {
    if (this.external) throw notControllable(what);
    this._assertOpen(what);
  }

  _argv(port) {
    return [
      // An explicit (empty) config disables auto-discovery of ~/.secantus/secantusd.toml etc.
      '--config', path.join(this._tmpDir, 'secantusd.toml'),
      '--host', HOST, '--port', String(port),
      '--storage-path', this.storagePath,
      ...this._flags,
    ];
  }

  async _launch(port) {
    const proc = spawnServer(this._bin, this._argv(port), this._tmpDir);
    this._proc = proc;
    try {
      this.port = await waitForListening(proc, this._startTimeoutMS);
      this.uri = localUri(this.port);
      writeOwnerSync(this._tmpDir, proc.child.pid);
    } catch (err) {
      proc.child.kill('SIGKILL');
      await waitClosed(proc, KILL_TIMEOUT_MS);
      this._proc = null;
      throw err;
    }
  }

  async _terminate(signal) {
    const proc = this._proc;
    if (!proc) return;
    if (isRunning(proc)) proc.child.kill(signal);
    let closed = await waitClosed(proc, signal === 'SIGKILL' ? KILL_TIMEOUT_MS : STOP_TIMEOUT_MS);
    if (!closed && signal !== 'SIGKILL') {
      process.stderr.write(`harness: SecantusDB (pid ${proc.child.pid}) ignored SIGTERM for ${STOP_TIMEOUT_MS} ms; sending SIGKILL\n`);
      proc.child.kill('SIGKILL');
      closed = await waitClosed(proc, KILL_TIMEOUT_MS);
    }
    if (!closed) throw harnessError('HARNESS_STOP_FAILED', `SecantusDB (pid ${proc.child.pid}) did not exit after SIGKILL`);
    this._proc = null;
  }

  // Lazily created and cached; dropped around process control so commands
  // after a restart get a fresh pool instead of waiting out a stale one.
  _adminClient() {
    if (!this._client) {
      const { MongoClient } = require('mongodb');
      this._client = new MongoClient(this.uri, {
        appName: 'rcs-harness',
        serverSelectionTimeoutMS: 3000, // fail fast while the server is down
        connectTimeoutMS: 3000,
        maxPoolSize: 2,
        // SecantusDB's failpoint errors carry no topologyVersion, so a state-
        // change code (91, 10107, ...) marks the server Unknown; a streaming
        // monitor then sits in its awaitable hello for up to 10 s before
        // rediscovering it. Polling re-checks at once (>= 500 ms apart).
        serverMonitoringMode: 'poll',
      });
    }
    return this._client;
  }

  async _dropAdminClient() {
    const client = this._client;
    this._client = null;
    if (client) await client.close().catch(() => {});
  }

  // Synchronous last-resort cleanup for process exit / fatal signals.
  _reapSync() {
    if (isRunning(this._proc)) {
      try { this._proc.child.kill('SIGKILL'); } catch { /* already gone */ }
    }
    if (this._tmpDir) {
      try { fs.rmSync(this._tmpDir, { recursive: true, force: true }); } catch { /* best effort */ }
    }
  }
}

// ---------------------------------------------------------------------------
// Temp dirs. Each holds an owner file naming the Node process and the server
// process. A SIGKILLed owner can't clean up (a disk server leaves ~11 MB, the
// preallocated WiredTiger log), so each process sweeps, once, the dirs whose
// owner and server are both gone.

const TMP_PREFIX = 'rcs-secantus-';
const OWNER_FILE = 'owner.json';
let sweptOrphans = false;

function pidAlive(pid) {
  if (!Number.isInteger(pid) || pid <= 0) return false;
  try {
    process.kill(pid, 0);
  } catch (err) {
    return err.code === 'EPERM'; // exists, but not ours
  }
  return !isZombie(pid);
}

// An orphaned server killed by PDEATHSIG stays a zombie until init reaps it
// (some container inits never do); it's dead for our purposes.
function isZombie(pid) {
  if (process.platform !== 'linux') return false;
  try {
    const stat = fs.readFileSync(`/proc/${pid}/stat`, 'utf8');
    return stat.slice(stat.lastIndexOf(')') + 2)[0] === 'Z';
  } catch {
    return false;
  }
}

function writeOwnerSync(tmpDir, serverPid = null) {
  fs.writeFileSync(path.join(tmpDir, OWNER_FILE), JSON.stringify({ pid: process.pid, serverPid }));
}

async function isOrphan(dir) {
  try {
    const owner = JSON.parse(await fsp.readFile(path.join(dir, OWNER_FILE), 'utf8'));
    return !pidAlive(owner.pid) && !pidAlive(owner.serverPid);
  } catch {
    return false; // no/partial owner file: being created right now, or not ours
  }
}

async function sweepOrphanedTempDirs() {
  if (sweptOrphans) return;
  sweptOrphans = true;
  const root = os.tmpdir();
  const names = await fsp.readdir(root).catch(() => []);
  for (const name of names.filter((n) => n.startsWith(TMP_PREFIX))) {
    const dir = path.join(root, name);
    if (await isOrphan(dir)) await fsp.rm(dir, { recursive: true, force: true }).catch(() => {});
  }
}

async function makeTempDir() {
  await sweepOrphanedTempDirs();
  const tmpDir = await fsp.mkdtemp(path.join(os.tmpdir(), TMP_PREFIX));
  writeOwnerSync(tmpDir);
  await fsp.writeFile(path.join(tmpDir, 'secantusd.toml'), '# harness: defaults only\n');
  return tmpDir;
}

function externalUri() {
  return process.env.MONGODB_URI || null;
}

function externalServer(uri) {
  return new TestServer({ uri, port: portOfUri(uri), external: true });
}

/**
 * Starts a SecantusDB server (or wraps MONGODB_URI when set).
 * @param {{storage?: 'memory'|'disk', syncOnCommit?: boolean, oplogMaxEntries?: number,
 *   oplogRetentionSeconds?: number, noopHeartbeatSeconds?: number, args?: string[],
 *   startTimeoutMS?: number}} [opts]
 * @returns {Promise<TestServer>}
 */
async function startServer(opts = {}) {
  const uri = externalUri();
  if (uri) return externalServer(uri);
  const storage = opts.storage || 'memory';
  if (storage !== 'memory' && storage !== 'disk') throw new TypeError(`harness: opts.storage must be 'memory' or 'disk', got ${storage}`);
  const flags = serverFlags(opts);
  const bin = await installServer();
  const tmpDir = await makeTempDir();
  const server = new TestServer({
    uri: null,
    port: null,
    external: false,
    bin,
    storage,
    storagePath: storage === 'disk' ? path.join(tmpDir, 'data') : ':memory:',
    tmpDir,
    flags,
    startTimeoutMS: opts.startTimeoutMS,
  });
  track(server);
  try {
    await server._launch(0);
  } catch (err) {
    await server.close();
    throw err;
  }
  return server;
}

module.exports = { startServer, TestServer, externalUri };
