'use strict';
// Installs SecantusDB (our MongoDB-compatible test server) into a git-ignored
// venv on demand. See /work/shared/reference/test-server.md.

const fs = require('node:fs');
const path = require('node:path');
const { spawn } = require('node:child_process');

const SECANTUS_SPEC = 'SecantusDB==0.7.0b3';
const REPO_ROOT = path.resolve(__dirname, '..');
const INSTALL_TIMEOUT_MS = 10 * 60 * 1000; // includes waiting for another process's install

function venvDir() {
  return path.resolve(process.env.SECANTUS_VENV || path.join(REPO_ROOT, '.secantus', 'venv'));
}

function serverBinPath(dir = venvDir()) {
  return path.join(dir, 'bin', 'secantusd-py');
}

// The marker names the pinned version, so bumping SECANTUS_SPEC reinstalls.
function markerPath(dir = venvDir()) {
  return path.join(dir, `.harness-installed-${SECANTUS_SPEC.replace(/[^A-Za-z0-9.]+/g, '-')}`);
}

function isInstalled(dir = venvDir()) {
  return fs.existsSync(markerPath(dir)) && fs.existsSync(serverBinPath(dir));
}

// Runs under python3 so the lock is an flock(2): the kernel releases it when
// the holder dies, so a crashed install can never leave a stale lock behind,
// and concurrent callers (node --test runs files in parallel processes) queue
// up instead of running pip into the same venv at once. The marker is written
// (atomically) only after pip succeeded, and re-checked under the lock.
const INSTALL_PY = String.raw`
import fcntl, os, subprocess, sys
venv, spec, marker = sys.argv[1:4]
os.makedirs(venv, exist_ok=True)
with open(os.path.join(venv, '.harness-install.lock'), 'w') as lock:
    fcntl.flock(lock, fcntl.LOCK_EX)
    if os.path.exists(marker) and os.path.exists(os.path.join(venv, 'bin', 'secantusd-py')):
        sys.exit(0)
    print(f'harness: installing {spec} into {venv} (one-time, ~30 s)', file=sys.stderr, flush=True)
    steps = [[sys.executable, '-m', 'venv', venv],
             [os.path.join(venv, 'bin', 'pip'), 'install', '--disable-pip-version-check', '-q', spec]]
    for cmd in steps:
        r = subprocess.run(cmd, stdin=subprocess.DEVNULL, capture_output=True, text=True)
        if r.returncode != 0:
            tail = (r.stdout + r.stderr)[-4000:]
            print(f'command failed ({r.returncode}): {" ".join(cmd)}\n{tail}', flush=True)
            sys.exit(1)
    with open(marker + '.tmp', 'w') as f:
        f.write(spec + '\n')
    os.replace(marker + '.tmp', marker)
`;

/**
 * Ensures SecantusDB is installed; returns the path to `secantusd-py`.
 * Idempotent and safe to call from many processes at once.
 * @returns {Promise<string>}
 */
async function installServer() {
  const dir = venvDir();
  if (isInstalled(dir)) return serverBinPath(dir); // fast path: no python startup
  await runInstaller(dir);
  if (!isInstalled(dir)) {
    throw new Error(`harness: SecantusDB install into ${dir} reported success but ${markerPath(dir)} is missing`);
  }
  return serverBinPath(dir);
}

function runInstaller(dir) {
  const python = process.env.SECANTUS_PYTHON || 'python3';
  return new Promise((resolve, reject) => {
    // stderr is inherited so the one "installing" line reaches the user
    // while pip runs; stdout carries the failure details back to us.
    const child = spawn(python, ['-c', INSTALL_PY, dir, SECANTUS_SPEC, markerPath(dir)], {
      stdio: ['ignore', 'pipe', 'inherit'],
    });
    let out = '';
    child.stdout.setEncoding('utf8');
    child.stdout.on('data', (d) => { out = (out + d).slice(-8000); });
    const timer = setTimeout(() => child.kill('SIGKILL'), INSTALL_TIMEOUT_MS);
    child.on('error', (err) => {
      clearTimeout(timer);
      reject(new Error(`harness: cannot run ${python} to install SecantusDB (Python 3.10+ needed; set SECANTUS_PYTHON to override): ${err.message}`));
    });
    child.on('close', (code, signal) => {
      clearTimeout(timer);
      if (code === 0) return resolve();
      const why = signal ? `was killed (${signal}${signal === 'SIGKILL' ? `, timeout ${INSTALL_TIMEOUT_MS / 1000} s?` : ''})` : `exited with ${code}`;
      reject(new Error(`harness: installing ${SECANTUS_SPEC} into ${dir} failed: installer ${why}\n${out.trim()}`));
    });
  });
}

module.exports = { installServer, venvDir, serverBinPath, SECANTUS_SPEC };
