'use strict';
// The server for `npm run bench` (scripts/bench.js). Benchmarks must not be server-bound,
// so the default is SecantusDB's Rust server `secantusd-rs` (crate secantus-mdb), built on
// demand into the git-ignored `.bench/secantus-rs/` (~8 min on 2 cores, once). Also:
// the Python test server of the harness (`kind: 'py'`, the only one with failpoints), or a
// real deployment given by BENCH_MONGODB_URI. See /work/shared/reference/test-server.md.

const fs = require('node:fs');
const fsp = require('node:fs/promises');
const os = require('node:os');
const path = require('node:path');
const { spawn, spawnSync } = require('node:child_process');
const { setTimeout: delay } = require('node:timers/promises');

const REPO_ROOT = path.resolve(__dirname, '..');
const RS_CRATE = 'secantus-mdb';
const RS_VERSION = '0.5.3-beta.196';
// SECANTUS_RS_ROOT: use (or build into) another folder, e.g. one shared by several checkouts.
const RS_ROOT = process.env.SECANTUS_RS_ROOT
  ? path.resolve(process.env.SECANTUS_RS_ROOT)
  : path.join(REPO_ROOT, '.bench', 'secantus-rs');
const RS_BIN = path.join(RS_ROOT, 'bin', 'secantusd-rs');
const RS_MARKER = path.join(RS_ROOT, `.installed-${RS_CRATE}-${RS_VERSION}`);
const RS_LOCK = `${RS_ROOT}.lock`;
const RS_LISTEN_RE = /secantusd-rs listening on (\S+):(\d+)/;
const START_TIMEOUT_MS = 60_000;
// The default oplog cap (100k entries) would prune the queued events of the catch-up
// scenario while later scenarios write: keep everything for the length of a run.
const OPLOG_MAX_ENTRIES = 20_000_000;
const OPLOG_RETENTION_SECONDS = 7 * 24 * 3600;
const OPLOG_ARGS = ['--oplog-max-entries', String(OPLOG_MAX_ENTRIES), '--oplog-retention-seconds', String(OPLOG_RETENTION_SECONDS)];
// secantusd-rs holds about one copy of the oplog per open change stream cursor (seen: 200
// cursors x a 370k-entry oplog = 24 GB, OOM-killed). Callers should use a fresh server per
// scenario; this watchdog kills the server before it can take the machine down with it.
const MAX_RSS_BYTES = Number(process.env.BENCH_SERVER_MAX_RSS_MB || 0) * 2 ** 20 ||
  Math.min(8 * 2 ** 30, Math.floor(os.totalmem() * 0.35));
const CACHE_ARGS = ['--cache-size', '512M'];
const BUILD_TIMEOUT_MS = 60 * 60 * 1000;

function log(message) {
  process.stderr.write(`bench-server: ${message}\n`);
}

// ---------------------------------------------------------------------------
// Building secantusd-rs

function commandOk(cmd, args) {
  const r = spawnSync(cmd, args, { stdio: 'ignore' });
  return r.status === 0;
}

function run(cmd, args, what) {
  log(`${what}: ${cmd} ${args.join(' ')}`);
  const r = spawnSync(cmd, args, { stdio: ['ignore', 'inherit', 'inherit'] });
  if (r.status !== 0) throw new Error(`bench-server: ${what} failed (${cmd} exited with ${r.status})`);
}

function ensureCmake() {
  if (commandOk('cmake', ['--version'])) return;
  if (typeof process.getuid !== 'function' || process.getuid() !== 0) {
    throw new Error('bench-server: building secantusd-rs needs cmake; install it (apt-get install -y cmake)');
  }
  try {
    run('apt-get', ['install', '-y', '-q', 'cmake'], 'installing cmake');
  } catch {
    run('apt-get', ['update', '-q'], 'apt-get update');
    run('apt-get', ['install', '-y', '-q', 'cmake'], 'installing cmake');
  }
}

function pidAlive(pid) {
  try {
    process.kill(pid, 0);
    return true;
  } catch (err) {
    return err.code === 'EPERM';
  }
}

/** A lock file holding the builder's pid; a dead holder's lock is taken over. */
async function withBuildLock(fn) {
  fs.mkdirSync(path.dirname(RS_LOCK), { recursive: true });
  const deadline = Date.now() + BUILD_TIMEOUT_MS;
  let waitingSaid = false;
  for (;;) {
    try {
      fs.writeFileSync(RS_LOCK, String(process.pid), { flag: 'wx' });
      break;
    } catch (err) {
      if (err.code !== 'EEXIST') throw err;
      const holder = Number(fs.readFileSync(RS_LOCK, 'utf8').trim());
      if (!pidAlive(holder)) {
        fs.rmSync(RS_LOCK, { force: true });
        continue;
      }
      if (!waitingSaid) log(`waiting for another build of secantusd-rs (pid ${holder})`);
      waitingSaid = true;
      if (Date.now() > deadline) throw new Error('bench-server: timed out waiting for the secantusd-rs build lock');
      await delay(2000);
    }
  }
  try {
    return await fn();
  } finally {
    fs.rmSync(RS_LOCK, { force: true });
  }
}

/** `cargo install`, printing progress (crates compiled, elapsed) every ~15 s. */
function cargoInstall() {
  const args = ['install', RS_CRATE, '--version', RS_VERSION, '--ignore-rust-version', '--root', RS_ROOT];
  log(`building secantusd-rs (one-time, ~8 min on 2 cores): cargo ${args.join(' ')}`);
  const logFile = `${RS_ROOT}-build.log`;
  const out = fs.createWriteStream(logFile);
  return new Promise((resolve, reject) => {
    const child = spawn('cargo', args, { stdio: ['ignore', 'pipe', 'pipe'] });
    const started = Date.now();
    let compiled = 0;
    let last = '';
    const onData = (chunk) => {
      out.write(chunk);
      for (const line of String(chunk).split('\n')) {
        if (/^\s*Compiling /.test(line)) {
          compiled += 1;
          last = line.trim();
        }
      }
    };
    child.stdout.on('data', onData);
    child.stderr.on('data', onData);
    const timer = setInterval(() => {
      log(`  ... ${Math.round((Date.now() - started) / 1000)} s, ${compiled} crates compiled (${last})`);
    }, 15_000);
    child.on('error', (err) => {
      clearInterval(timer);
      reject(new Error(`bench-server: cannot run cargo: ${err.message}`));
    });
    child.on('close', (code) => {
      clearInterval(timer);
      out.end();
      if (code === 0) {
        log(`built secantusd-rs in ${Math.round((Date.now() - started) / 1000)} s`);
        resolve();
      } else {
        reject(new Error(`bench-server: cargo install ${RS_CRATE} failed (exit ${code}); see ${logFile}`));
      }
    });
  });
}

/** Path of `secantusd-rs`, building it first if needed. Safe from parallel processes. */
async function installSecantusRs() {
  if (fs.existsSync(RS_MARKER) && fs.existsSync(RS_BIN)) return RS_BIN;
  return withBuildLock(async () => {
    if (fs.existsSync(RS_BIN)) {
      // Built earlier (e.g. by hand with the same command): check it runs.
      if (commandOk(RS_BIN, ['--help'])) {
        fs.writeFileSync(RS_MARKER, `${RS_CRATE} ${RS_VERSION}\n`);
        return RS_BIN;
      }
    }
    ensureCmake();
    await cargoInstall();
    fs.writeFileSync(RS_MARKER, `${RS_CRATE} ${RS_VERSION}\n`);
    return RS_BIN;
  });
}

// ---------------------------------------------------------------------------
// Running it

// As harness/server.js: exec through a shim that sets PR_SET_PDEATHSIG, so the kernel
// kills the server if we die in any way. The pid stays the server's (exec).
const PDEATHSIG_SHIM = `import ctypes, os, signal, sys
try:
    ctypes.CDLL(None).prctl(1, signal.SIGKILL)
except Exception:
    pass
if os.getppid() != int(sys.argv[1]):
    sys.exit(70)
os.execv(sys.argv[2], sys.argv[2:])`;

const live = new Set();
let hooked = false;
function reapAll() {
  for (const fn of live) fn();
}
function hookExit() {
  if (hooked) return;
  hooked = true;
  process.on('exit', reapAll);
  for (const sig of ['SIGINT', 'SIGTERM', 'SIGHUP']) {
    process.on(sig, () => {
      reapAll();
      process.exit(128 + os.constants.signals[sig]);
    });
  }
}

async function startRs() {
  const bin = await installSecantusRs();
  const tmpDir = await fsp.mkdtemp(path.join(os.tmpdir(), 'rcs-bench-rs-'));
  // An explicit (empty) config stops the auto-discovery of ~/.secantus/secantusd.toml etc.
  const config = path.join(tmpDir, 'secantusd.toml');
  await fsp.writeFile(config, '# bench-server: defaults only\n');
  const args = ['--config', config, '--port', '0', '--storage-path', path.join(tmpDir, 'data'), ...OPLOG_ARGS, ...CACHE_ARGS];
  const useShim = process.platform === 'linux' && commandOk('python3', ['-c', '0']);
  const child = useShim
    ? spawn('python3', ['-c', PDEATHSIG_SHIM, String(process.pid), bin, ...args], { cwd: tmpDir, stdio: ['ignore', 'pipe', 'pipe'] })
    : spawn(bin, args, { cwd: tmpDir, stdio: ['ignore', 'pipe', 'pipe'] });
  const tail = [];
  const reap = () => {
    try { child.kill('SIGKILL'); } catch { /* gone */ }
    try { fs.rmSync(tmpDir, { recursive: true, force: true }); } catch { /* best effort */ }
  };
  live.add(reap);
  hookExit();
  const exited = new Promise((resolve) => child.once('close', (code, signal) => resolve({ code, signal })));
  const port = await new Promise((resolve, reject) => {
    const timer = setTimeout(() => reject(new Error(`bench-server: secantusd-rs did not start within ${START_TIMEOUT_MS} ms:\n${tail.join('\n')}`)), START_TIMEOUT_MS);
    let partial = '';
    const onData = (chunk) => {
      const lines = (partial + chunk).split('\n');
      partial = lines.pop();
      for (const line of lines) {
        tail.push(line);
        if (tail.length > 50) tail.shift();
        const m = RS_LISTEN_RE.exec(line);
        if (m) {
          clearTimeout(timer);
          resolve(Number(m[2]));
        }
      }
    };
    child.stdout.setEncoding('utf8').on('data', onData);
    child.stderr.setEncoding('utf8').on('data', onData);
    exited.then(({ code, signal }) => {
      clearTimeout(timer);
      reject(new Error(`bench-server: secantusd-rs exited (${signal || code}) before listening:\n${tail.join('\n')}`));
    });
  });
  // Keep draining its output (a full pipe would stall it), but let us exit without it.
  child.stdout.unref?.();
  child.stderr.unref?.();
  child.unref();
  const server = {};
  const watchdog = setInterval(() => {
    const rss = processRssBytes(child.pid);
    if (rss !== null && rss > MAX_RSS_BYTES && child.exitCode === null && child.signalCode === null) {
      server.killedReason = `secantusd-rs used ${Math.round(rss / 2 ** 20)} MB (limit ${Math.round(MAX_RSS_BYTES / 2 ** 20)} MB, BENCH_SERVER_MAX_RSS_MB): killed`;
      log(server.killedReason);
      child.kill('SIGKILL');
    }
  }, 500);
  watchdog.unref();
  exited.then(() => clearInterval(watchdog));
  let closing = null;
  return Object.assign(server, {
    kind: 'rs',
    name: `secantusd-rs (${RS_CRATE} ${RS_VERSION})`,
    uri: `mongodb://127.0.0.1:${port}/?directConnection=true`,
    pid: child.pid,
    output: () => tail.join('\n'),
    close() {
      closing ??= (async () => {
        if (child.exitCode === null && child.signalCode === null) child.kill('SIGKILL');
        await Promise.race([exited, delay(10_000)]);
        live.delete(reap);
        await fsp.rm(tmpDir, { recursive: true, force: true }).catch(() => {});
      })();
      return closing;
    },
  });
}

function processRssBytes(pid) {
  try {
    const m = /VmRSS:\s+(\d+) kB/.exec(fs.readFileSync(`/proc/${pid}/status`, 'utf8'));
    return m ? Number(m[1]) * 1024 : null;
  } catch {
    return null;
  }
}

async function startPy() {
  const { startServer } = require('./server');
  // The bench's own external server is BENCH_MONGODB_URI; never let MONGODB_URI (the
  // tests' variable) turn an explicit `py` request into an external one.
  const saved = process.env.MONGODB_URI;
  delete process.env.MONGODB_URI;
  let server;
  try {
    server = await startServer({ storage: 'memory', oplogMaxEntries: OPLOG_MAX_ENTRIES, oplogRetentionSeconds: OPLOG_RETENTION_SECONDS });
  } finally {
    if (saved !== undefined) process.env.MONGODB_URI = saved;
  }
  return {
    kind: 'py',
    name: 'secantusd-py (SecantusDB 0.7.0b3, Python)',
    uri: server.uri,
    pid: server.pid,
    failCommand: (opts) => server.failCommand(opts),
    failPointOff: () => server.failPointOff(),
    output: () => server.output(),
    close: () => server.close(),
  };
}

function startExternal(uri) {
  return {
    kind: 'external',
    name: 'BENCH_MONGODB_URI deployment',
    uri,
    pid: null,
    output: () => '',
    close: async () => {},
  };
}

/**
 * Starts the benchmark server.
 * @param {{ kind?: 'rs' | 'py' }} [opts] ignored when BENCH_MONGODB_URI is set (unless
 *   `ignoreExternal`), which is then used as is.
 * @returns {Promise<{ kind: 'rs'|'py'|'external', name: string, uri: string,
 *   pid: number|null, close(): Promise<void>, output(): string,
 *   failCommand?: Function, failPointOff?: Function }>}
 */
async function startBenchServer(opts = {}) {
  const external = process.env.BENCH_MONGODB_URI;
  if (external && !opts.ignoreExternal) return startExternal(external);
  const kind = opts.kind || 'rs';
  if (kind === 'rs') return startRs();
  if (kind === 'py') return startPy();
  throw new TypeError(`bench-server: kind must be 'rs' or 'py', got ${kind}`);
}

/** CPU seconds (user+sys) a local process has used so far, or null (Linux /proc only). */
function processCpuSeconds(pid) {
  if (!pid) return null;
  try {
    const stat = fs.readFileSync(`/proc/${pid}/stat`, 'utf8');
    const fields = stat.slice(stat.lastIndexOf(')') + 2).split(' ');
    // fields[11], [12] = utime, stime (fields 14 and 15 of proc(5), counted from state).
    const ticks = Number(fields[11]) + Number(fields[12]);
    return ticks / 100; // USER_HZ is 100 on every Linux we run on
  } catch {
    return null;
  }
}

module.exports = { startBenchServer, installSecantusRs, processCpuSeconds, processRssBytes, RS_VERSION, RS_BIN };
