'use strict';
// The package as users get it. Stages the release the way .github/workflows/release.yml does
// (`napi artifacts`, `napi pre-publish`), `npm pack`s the main package and its linux-x64-gnu
// binary package, installs both into a fresh project in a temp dir — offline, from local
// tarballs only, with no Rust toolchain on PATH, no ~/.npmrc and nothing of the source tree
// reachable — and there runs a CommonJS script, an ES-module script, a strict TypeScript
// build (then runs its output), and the CLI (killed and restarted: no event missing), all
// against the test server. Finally it removes/breaks the binary package: one clear error.
//
// Third-party dependencies (bson, mongodb and its dependencies, typescript, @types/node) are
// `npm pack`ed from this repo's node_modules and installed from those files (`--offline`, an
// empty npm cache): the test needs no registry and no network.

const test = require('node:test');
const assert = require('node:assert/strict');
const fs = require('node:fs');
const os = require('node:os');
const path = require('node:path');
const { execFile, spawnSync } = require('node:child_process');
const { promisify } = require('node:util');
const { MongoClient } = require('mongodb');
const { startServer } = require('../harness');
const { uniqueDb } = require('./helpers');
const { CliRun, insertPaced, checkContinuity } = require('./fixtures/pack-cli-driver');
const { currentPlatform } = require('../lib/native');

const execFileAsync = promisify(execFile);

const REPO = path.join(__dirname, '..');
const FIXTURES = path.join(__dirname, 'fixtures');
const PKG = require('../package.json');
const PLATFORM = 'linux-x64-gnu';
const PLATFORM_PKG = `${PKG.name}-${PLATFORM}`;
const BINARY = `${PKG.napi.binaryName}.${PLATFORM}.node`;
const LOCAL_BINARY = path.join(REPO, 'native', BINARY);
/** napi-rs target triple → npm platform suffix, for every target the release builds. */
const TARGETS = {
  'x86_64-unknown-linux-gnu': { dir: 'linux-x64-gnu', os: 'linux', cpu: 'x64', libc: 'glibc' },
  'x86_64-unknown-linux-musl': { dir: 'linux-x64-musl', os: 'linux', cpu: 'x64', libc: 'musl' },
  'aarch64-unknown-linux-gnu': { dir: 'linux-arm64-gnu', os: 'linux', cpu: 'arm64', libc: 'glibc' },
  'x86_64-apple-darwin': { dir: 'darwin-x64', os: 'darwin', cpu: 'x64' },
  'aarch64-apple-darwin': { dir: 'darwin-arm64', os: 'darwin', cpu: 'arm64' },
  'x86_64-pc-windows-msvc': { dir: 'win32-x64-msvc', os: 'win32', cpu: 'x64' },
};
/** What the consumer installs besides our two tarballs (and their dependency closure). */
const THIRD_PARTY_ROOTS = ['bson', 'mongodb', 'typescript', '@types/node'];
const NAPI = path.join(REPO, 'node_modules', '@napi-rs', 'cli', 'dist', 'cli.js');

const skipReason =
  currentPlatform() !== PLATFORM
    ? `packs the ${PLATFORM} binary; this is ${currentPlatform()}`
    : !fs.existsSync(LOCAL_BINARY)
      ? `no built addon at ${path.relative(REPO, LOCAL_BINARY)} (npm run build)`
      : !findNpmCli()
        ? 'npm-cli.js not found'
        : null;

const state = {
  tmp: null,
  consumer: null,
  env: null,
  server: null,
  client: null,
  timings: {},
  mainTarball: null,
  platformTarball: null,
};

/** The npm CLI script (run with this node, so PATH can be stripped bare). */
function findNpmCli() {
  const candidates = [process.env.npm_execpath];
  for (const dir of (process.env.PATH ?? '').split(path.delimiter)) {
    if (dir) candidates.push(path.join(dir, 'npm'));
  }
  candidates.push(path.join(path.dirname(process.execPath), '..', 'lib', 'node_modules', 'npm', 'bin', 'npm-cli.js'));
  for (const candidate of candidates) {
    if (!candidate || !fs.existsSync(candidate)) continue;
    const real = fs.realpathSync(candidate);
    if (real.endsWith('npm-cli.js')) return real;
  }
  return null;
}

/** Runs a command; resolves { stdout, stderr }; rejects with both in the message. */
async function run(file, args, { cwd, env, timeout = 120000 } = {}) {
  try {
    return await execFileAsync(file, args, { cwd, env, timeout, maxBuffer: 64 * 1024 * 1024 });
  } catch (err) {
    throw new Error(
      `${[file, ...args].join(' ')} failed (${err.code ?? err.signal}):\n${err.stdout ?? ''}\n${err.stderr ?? ''}`,
      { cause: err },
    );
  }
}

async function timed(name, fn) {
  const started = Date.now();
  try {
    return await fn();
  } finally {
    state.timings[name] = Date.now() - started;
  }
}

/** `name` and every package it depends on, per the repo's lockfile. */
function dependencyClosure(roots) {
  const lock = require('../package-lock.json');
  const seen = new Set();
  const queue = [...roots];
  while (queue.length) {
    const name = queue.shift();
    if (seen.has(name)) continue;
    const entry = lock.packages[`node_modules/${name}`];
    if (!entry) throw new Error(`${name} is not in package-lock.json (run npm ci)`);
    seen.add(name);
    queue.push(...Object.keys(entry.dependencies ?? {}));
  }
  return [...seen];
}

/** Every file below `dir`, relative, with forward slashes. */
function listFiles(dir, base = dir) {
  return fs.readdirSync(dir, { withFileTypes: true }).flatMap((entry) => {
    const full = path.join(dir, entry.name);
    return entry.isDirectory() ? listFiles(full, base) : [path.relative(base, full).split(path.sep).join('/')];
  });
}

test.before(async () => {
  if (skipReason) return;
  const npm = findNpmCli();
  const tmp = fs.mkdtempSync(path.join(os.tmpdir(), 'rcs-pack-'));
  state.tmp = tmp;

  // 1. Stage the release as the workflow's publish job sees it: the files `npm pack` takes
  //    from the repo, the committed npm/<platform>/ dirs, the binaries as downloaded artifacts.
  const stage = path.join(tmp, 'stage');
  await timed('stage', async () => {
    const { stdout } = await run(process.execPath, [npm, 'pack', '--dry-run', '--json', '--ignore-scripts'], {
      cwd: REPO,
    });
    const [{ files }] = JSON.parse(stdout);
    for (const { path: file } of files) {
      fs.mkdirSync(path.dirname(path.join(stage, file)), { recursive: true });
      fs.copyFileSync(path.join(REPO, file), path.join(stage, file));
    }
    fs.cpSync(path.join(REPO, 'npm'), path.join(stage, 'npm'), { recursive: true });
    for (const [triple, { dir }] of Object.entries(TARGETS)) {
      const artifactDir = path.join(stage, 'artifacts', `bindings-${triple}`);
      fs.mkdirSync(artifactDir, { recursive: true });
      const artifact = path.join(artifactDir, `${PKG.napi.binaryName}.${dir}.node`);
      if (dir === PLATFORM) {
        fs.copyFileSync(LOCAL_BINARY, artifact);
        // A debug build carries 100+ MB of DWARF; release builds are stripped (Cargo.toml
        // profile.release strip = "symbols"). Strip the copy so packing stays fast.
        spawnSync('strip', ['--strip-debug', artifact]);
      } else {
        // Built on other runners by the release workflow; never installed here.
        fs.writeFileSync(artifact, 'placeholder: built by the release workflow\n');
      }
    }
  });

  // 2. The release tooling itself: binaries into npm/<platform>/, optionalDependencies into
  //    the main package.json (as the publish job does; here without publishing).
  const prePublish = timed('napi artifacts + pre-publish', async () => {
    await run(process.execPath, [NAPI, 'artifacts', '--output-dir', 'artifacts', '--npm-dir', 'npm'], { cwd: stage });
    await run(
      process.execPath,
      [NAPI, 'pre-publish', '-t', 'npm', '--skip-optional-publish', '--no-gh-release'],
      { cwd: stage, timeout: 180000 },
    );
  });

  // 3. npm pack: ours; and (meanwhile) the third-party packages from node_modules, kept
  //    between runs in the git-ignored __test__/.tmp/ (a tarball of name@version never changes).
  const tarballs = path.join(tmp, 'tarballs');
  fs.mkdirSync(tarballs);
  const ours = (async () => {
    await prePublish;
    await timed('npm pack (ours)', async () => {
      const { stdout } = await run(
        process.execPath,
        [npm, 'pack', '--json', '--ignore-scripts', '--pack-destination', tarballs, stage, path.join(stage, 'npm', PLATFORM)],
        { cwd: tmp },
      );
      const packed = JSON.parse(stdout);
      state.mainTarball = packed.find((p) => p.name === PKG.name);
      state.platformTarball = packed.find((p) => p.name === PLATFORM_PKG);
    });
  })();
  const thirdParty = timed('npm pack (third-party)', async () => {
    const cache = path.join(__dirname, '.tmp', 'pack-deps');
    fs.mkdirSync(cache, { recursive: true });
    const lock = require('../package-lock.json');
    const wanted = dependencyClosure(THIRD_PARTY_ROOTS).map((name) => {
      const { version } = lock.packages[`node_modules/${name}`];
      return { name, file: `${name.replace(/^@/, '').replace('/', '-')}-${version}.tgz` };
    });
    const missing = wanted.filter(({ file }) => !fs.existsSync(path.join(cache, file)));
    if (missing.length) {
      const scratch = fs.mkdtempSync(path.join(cache, 'packing-'));
      try {
        await run(
          process.execPath,
          [
            npm,
            'pack',
            '--ignore-scripts',
            '--pack-destination',
            scratch,
            ...missing.map(({ name }) => path.join(REPO, 'node_modules', name)),
          ],
          { cwd: tmp },
        );
        for (const { file } of missing) fs.renameSync(path.join(scratch, file), path.join(cache, file));
      } finally {
        fs.rmSync(scratch, { recursive: true, force: true });
      }
    }
    for (const { file } of wanted) fs.copyFileSync(path.join(cache, file), path.join(tarballs, file));
  });
  await Promise.all([ours, thirdParty]);

  // 4. A fresh project, an environment with nothing but node on PATH, no user npmrc, an
  //    empty npm cache, offline.
  const binDir = path.join(tmp, 'bin');
  fs.mkdirSync(binDir);
  fs.symlinkSync(process.execPath, path.join(binDir, 'node'));
  fs.symlinkSync('/bin/sh', path.join(binDir, 'sh')); // npm exec runs bins through sh
  const home = path.join(tmp, 'home');
  fs.mkdirSync(home);
  state.env = {
    PATH: binDir,
    HOME: home,
    TMPDIR: os.tmpdir(),
    npm_config_cache: path.join(tmp, 'npm-cache'),
    npm_config_update_notifier: 'false',
  };
  const consumer = path.join(tmp, 'consumer');
  fs.mkdirSync(consumer);
  fs.writeFileSync(
    path.join(consumer, 'package.json'),
    `${JSON.stringify({ name: 'consumer', version: '1.0.0', private: true }, null, 2)}\n`,
  );
  state.consumer = consumer;
  await timed('npm install', async () => {
    const files = fs.readdirSync(tarballs).map((file) => path.join(tarballs, file));
    await run(
      process.execPath,
      [npm, 'install', '--offline', '--ignore-scripts', '--no-audit', '--no-fund', ...files],
      { cwd: consumer, env: state.env, timeout: 180000 },
    );
  });
  for (const fixture of ['pack-cjs.cjs', 'pack-esm.mjs', 'pack-types.mts', 'pack-types-cjs.cts']) {
    fs.copyFileSync(path.join(FIXTURES, fixture), path.join(consumer, fixture));
  }
  fs.copyFileSync(path.join(FIXTURES, 'pack-tsconfig.json'), path.join(consumer, 'tsconfig.json'));

  state.server = await startServer();
  state.client = new MongoClient(state.server.uri, { serverSelectionTimeoutMS: 15000 });
  await state.client.connect();
});

test.after(async () => {
  await state.client?.close().catch(() => {});
  await state.server?.close();
  if (state.tmp && !process.env.RCS_KEEP_PACK_TMP) fs.rmSync(state.tmp, { recursive: true, force: true });
  if (Object.keys(state.timings).length) {
    process.stderr.write(`pack.test.js timings (ms): ${JSON.stringify(state.timings)}\n`);
  }
});

/** Runs node with a fixture inside the consumer project, in the bare environment. */
async function consumerNode(args, options = {}) {
  return run(path.join(state.env.PATH, 'node'), args, { cwd: state.consumer, env: state.env, ...options });
}

test('index.mjs re-exports every export of index.js (the same objects)', async () => {
  const { pathToFileURL } = require('node:url');
  const esm = await import(pathToFileURL(path.join(REPO, 'index.mjs')).href);
  const cjs = require('..');
  assert.deepEqual(
    Object.keys(cjs).filter((name) => esm[name] !== cjs[name]),
    [],
    'add the missing names to index.mjs',
  );
  assert.equal(esm.default, cjs);
});

test('the npm/<platform>/ packages match napi.targets and the version', () => {
  assert.deepEqual([...PKG.napi.targets].sort(), Object.keys(TARGETS).sort());
  for (const [triple, target] of Object.entries(TARGETS)) {
    const manifest = JSON.parse(fs.readFileSync(path.join(REPO, 'npm', target.dir, 'package.json'), 'utf8'));
    const binary = `${PKG.napi.binaryName}.${target.dir}.node`;
    assert.equal(manifest.name, `${PKG.name}-${target.dir}`, triple);
    assert.equal(manifest.version, PKG.version, `${triple}: npm/${target.dir} must follow the version (napi version)`);
    assert.deepEqual(manifest.os, [target.os], triple);
    assert.deepEqual(manifest.cpu, [target.cpu], triple);
    assert.deepEqual(manifest.libc, target.libc ? [target.libc] : undefined, triple);
    assert.equal(manifest.main, binary, triple);
    assert.deepEqual(manifest.files, [binary], triple);
  }
  assert.equal(PKG.optionalDependencies, undefined, 'napi pre-publish adds them at release time');
  for (const script of ['preinstall', 'install', 'postinstall', 'prepare']) {
    assert.equal(PKG.scripts[script], undefined, `no ${script} script: installing must not build`);
  }
});

test('the packed tarballs hold what a user needs and nothing of the build', { skip: skipReason ?? false }, () => {
  const files = state.mainTarball.files.map((f) => f.path).sort();
  for (const needed of ['index.js', 'index.mjs', 'index.d.ts', 'index.d.mts', 'package.json', 'README.md']) {
    assert.ok(files.includes(needed), `${needed} is packed`);
  }
  for (const module of fs.readdirSync(path.join(REPO, 'lib'))) assert.ok(files.includes(`lib/${module}`), module);
  assert.ok(files.includes('bin/resilient-change-stream.js'));
  const unwanted = files.filter((f) => /(^|\/)(native|src|target|__test__|harness|npm|artifacts)\/|\.node$|^Cargo/.test(f));
  assert.deepEqual(unwanted, []);
  assert.deepEqual(
    state.platformTarball.files.map((f) => f.path).sort(),
    ['README.md', BINARY, 'package.json'].sort(),
  );

  const installed = path.join(state.consumer, 'node_modules', PKG.name);
  const manifest = JSON.parse(fs.readFileSync(path.join(installed, 'package.json'), 'utf8'));
  assert.deepEqual(
    manifest.optionalDependencies,
    Object.fromEntries(Object.values(TARGETS).map(({ dir }) => [`${PKG.name}-${dir}`, PKG.version])),
    'napi pre-publish declared every platform package at this version',
  );
  assert.deepEqual(manifest.engines, PKG.engines);
  assert.equal(manifest.bin['resilient-change-stream'], 'bin/resilient-change-stream.js');
  assert.deepEqual(listFiles(installed).sort(), files);

  const platformDir = path.join(state.consumer, 'node_modules', PLATFORM_PKG);
  assert.ok(fs.statSync(path.join(platformDir, BINARY)).size > 1024 * 1024, 'the real binary, not a placeholder');
  // Only this platform's package: npm skipped the others (os/cpu/libc, or not obtainable).
  const ours = fs.readdirSync(path.join(state.consumer, 'node_modules')).filter((d) => d.startsWith(`${PKG.name}-`));
  assert.deepEqual(ours, [PLATFORM_PKG]);
  const rust = spawnSync('/bin/sh', ['-c', 'command -v cargo || command -v rustc || command -v rustup'], {
    env: state.env,
  });
  assert.notEqual(rust.status, 0, `no Rust toolchain on the consumer's PATH: ${rust.stdout}`);
});

test('CommonJS: require() in the fresh project watches the test server', { skip: skipReason ?? false }, async () => {
  const db = uniqueDb('pack');
  const { stdout } = await consumerNode(['pack-cjs.cjs', state.server.uri, db]);
  const result = JSON.parse(stdout);
  assert.deepEqual(result.event, {
    operationType: 'insert',
    seq: 1,
    from: 'cjs',
    idType: 'ObjectId',
    ns: { db, coll: 'cjs' },
  });
  assert.deepEqual(result.closeInfo, { reason: 'closed' });
  const consumerReal = fs.realpathSync(state.consumer);
  assert.equal(result.resolved, path.join(consumerReal, 'node_modules', PKG.name, 'index.js'));
  assert.deepEqual(result.binaries, [path.join(consumerReal, 'node_modules', PLATFORM_PKG, BINARY)]);
  const outside = result.modules.filter((file) => !file.startsWith(`${consumerReal}${path.sep}`));
  assert.deepEqual(outside, [], 'every module comes from the fresh project');
  assert.deepEqual(result.invalid && { ...result.invalid, message: undefined }, {
    name: 'InvalidOptionError',
    kind: 'InvalidOption',
    message: undefined,
    isInvalidOptionError: true,
    isBaseError: true,
  });
  assert.match(result.invalid.message, /batchSize/);
  assert.deepEqual(result.exports, Object.keys(require('..')).sort());
});

test('ES modules: import { ResilientChangeStream, watch } in the fresh project', { skip: skipReason ?? false }, async () => {
  const db = uniqueDb('pack');
  const { stdout } = await consumerNode(['pack-esm.mjs', state.server.uri, db]);
  const result = JSON.parse(stdout);
  assert.deepEqual(result.seqs, [1, 2]);
  assert.equal(result.closed, true);
  assert.deepEqual(result.afterClose, { name: 'StreamClosedError', isStreamClosedError: true });
  assert.equal(result.watchIsFunction, true);
  assert.deepEqual(result.missingOrDifferent, [], 'ESM exports = CJS exports, same objects');
  assert.equal(result.defaultIsCjs, true);
  if (result.resolved) {
    assert.equal(
      result.resolved,
      `file://${path.join(fs.realpathSync(state.consumer), 'node_modules', PKG.name, 'index.mjs')}`,
    );
  }
});

test('TypeScript: a strict build against the installed typings, then its output runs', { skip: skipReason ?? false }, async () => {
  const tsc = path.join('node_modules', 'typescript', 'bin', 'tsc');
  await timed('tsc', () => consumerNode([tsc, '-p', 'tsconfig.json']));
  // The @ts-expect-error lines are errors, or tsc would have failed ("Unused directive").
  const db = uniqueDb('pack');
  const { stdout } = await consumerNode([path.join('dist', 'pack-types.mjs'), state.server.uri, db]);
  assert.deepEqual(JSON.parse(stdout), {
    seq: 42,
    customer: 'ada',
    hasToken: true,
    defaultHasWatch: true,
    invalidOptionCode: 'InvalidOption',
  });
  const cjs = await consumerNode([path.join('dist', 'pack-types-cjs.cjs')]);
  assert.deepEqual(JSON.parse(cjs.stdout), { watch: 'function', same: true, batchSize: 10 });

  // Negative control: the same build fails when an expected error is not one.
  const broken = path.join(state.consumer, 'pack-types-broken.mts');
  fs.writeFileSync(
    broken,
    "import { watch } from 'resilient-change-stream';\nimport type { Collection } from 'mongodb';\n" +
      'declare const c: Collection;\n// @ts-expect-error\nwatch(c, { batchSize: 10 });\n',
  );
  try {
    await assert.rejects(
      consumerNode([tsc, '--noEmit', '--strict', '--skipLibCheck', '--module', 'nodenext', '--types', 'node', broken]),
      /Unused '@ts-expect-error' directive/,
    );
  } finally {
    fs.rmSync(broken);
  }
});

test('CLI: npx works; killed (SIGKILL) and restarted, then stopped and restarted: no event missing', { skip: skipReason ?? false }, async () => {
  const npm = findNpmCli();
  const { stdout: version } = await consumerNode([npm, 'exec', '--offline', '--', 'resilient-change-stream', '--version']);
  assert.equal(version.trim(), PKG.version);

  const bin = path.join(state.consumer, 'node_modules', '.bin', 'resilient-change-stream');
  const db = uniqueDb('pack');
  const coll = await state.client.db(db).createCollection('cli');
  const tokenFile = path.join(state.consumer, 'cli.token.json');
  const args = ['tail', state.server.uri, `${db}.cli`, '--token-file', tokenFile];
  const cli = () => new CliRun(bin, args, { cwd: state.consumer, env: state.env });
  const TOTAL = 230;

  await timed('cli', async () => {
    const run1 = cli();
    await run1.waitFor(() => fs.existsSync(tokenFile), 'the first saved position');
    const writer = insertPaced(coll, 0, 200, { batch: 5, pauseMs: 5 });
    await run1.waitFor((r) => r.lines.length >= 30, '30 events');
    await run1.stop('SIGKILL');

    const run2 = cli(); // while the writer is still writing
    await writer;
    await run2.waitFor((r) => r.seqs().includes(199), 'seq 199 after the restart', 60000);
    assert.deepEqual(await run2.stop('SIGINT'), { code: 0, signal: null }, run2.stderr);

    await insertPaced(coll, 200, TOTAL, { batch: 10, pauseMs: 0 });
    const run3 = cli();
    await run3.waitFor((r) => r.seqs().includes(TOTAL - 1), `seq ${TOTAL - 1}`);
    assert.deepEqual(await run3.stop('SIGTERM'), { code: 0, signal: null }, run3.stderr);

    const runs = [
      { seqs: run1.seqs(), killed: true },
      { seqs: run2.seqs(), killed: false },
      { seqs: run3.seqs(), killed: false },
    ];
    const expected = Array.from({ length: TOTAL }, (_, i) => i);
    const bounds = JSON.stringify(runs.map((r) => [r.seqs[0], r.seqs.at(-1)]));
    assert.equal(checkContinuity(runs, expected), null, bounds);
    assert.equal(run3.seqs()[0], 200, `a clean stop resumes right after the last printed event: ${bounds}`);
    assert.equal(fs.statSync(tokenFile).mode & 0o777, 0o600);
  });
});

test('a missing, mismatched or broken binary package: one clear error naming the package', { skip: skipReason ?? false }, async () => {
  const modules = path.join(state.consumer, 'node_modules');
  const platformDir = path.join(modules, PLATFORM_PKG);
  const hidden = path.join(state.tmp, 'hidden-platform-package');
  const probe = [
    '-e',
    `const rcs = require('resilient-change-stream');
     let stream;
     try { stream = new rcs.ResilientChangeStream({ uri: 'mongodb://127.0.0.1:1', db: 'x' }); }
     catch (e) { console.log(JSON.stringify({ name: e.name, kind: e.kind, message: e.message, packageName: e.packageName, exported: e instanceof rcs.NativeAddonError && e instanceof rcs.ResilientChangeStreamError })); }
     if (stream) stream.close().then(() => console.log('{}'));`,
  ];
  const expectOneClearError = async (what, pattern) => {
    const { stdout } = await consumerNode(probe);
    const error = JSON.parse(stdout);
    assert.equal(error.name, 'NativeAddonError', what);
    assert.equal(error.kind, 'NativeAddonUnavailable', what);
    assert.equal(error.exported, true, `${what}: an instance of the exported NativeAddonError`);
    assert.equal(error.packageName, PLATFORM_PKG, what);
    assert.match(error.message, new RegExp(`${PLATFORM_PKG}@${PKG.version.replaceAll('.', '\\.')}`), what);
    assert.match(error.message, pattern, what);
    assert.doesNotMatch(error.message, /\n|Require stack|Cannot find native binding/, `${what}: one line`);
    return error;
  };

  fs.renameSync(platformDir, hidden);
  try {
    const error = await expectOneClearError('missing', /is not installed.*npm install resilient-change-stream-linux-x64-gnu@/);
    assert.doesNotMatch(error.message, /npm run build/, 'no build advice outside a source checkout');
    // The CLI reports the same single error, exit code 1.
    const bin = path.join(modules, '.bin', 'resilient-change-stream');
    const cli = spawnSync(bin, ['tail', 'mongodb://127.0.0.1:1', 'db.c'], { env: state.env, encoding: 'utf8' });
    assert.equal(cli.status, 1, cli.stderr);
    assert.equal(cli.stderr.trim().split('\n').length, 1, cli.stderr);
    assert.match(cli.stderr, new RegExp(PLATFORM_PKG));
  } finally {
    fs.renameSync(hidden, platformDir);
  }

  const manifestPath = path.join(platformDir, 'package.json');
  const manifest = fs.readFileSync(manifestPath, 'utf8');
  fs.writeFileSync(manifestPath, manifest.replace(`"version": "${PKG.version}"`, '"version": "0.0.0-other"'));
  try {
    await expectOneClearError('mismatched', /but version 0\.0\.0-other is installed/);
  } finally {
    fs.writeFileSync(manifestPath, manifest);
  }

  const binaryPath = path.join(platformDir, BINARY);
  const saved = path.join(state.tmp, 'saved.node');
  fs.renameSync(binaryPath, saved);
  fs.writeFileSync(binaryPath, 'not an ELF file');
  try {
    await expectOneClearError('broken', /installed but its binary cannot be loaded \(.*\)\. Reinstall it/);
  } finally {
    fs.rmSync(binaryPath);
    fs.renameSync(saved, binaryPath);
  }
  // And back to working.
  const { stdout } = await consumerNode(probe);
  assert.equal(stdout.trim(), '{}');
});
