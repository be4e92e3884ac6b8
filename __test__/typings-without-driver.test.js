'use strict';
// `mongodb` is an optional peer dependency: a strict TypeScript consumer that does not have
// it must still compile against our typings (the driver's types then degrade to `any`),
// and option types must still be checked.

const test = require('node:test');
const assert = require('node:assert/strict');
const fs = require('node:fs');
const os = require('node:os');
const path = require('node:path');
const { execFileSync } = require('node:child_process');

const ROOT = path.join(__dirname, '..');

test('a strict TypeScript consumer without the mongodb package compiles against index.d.ts', (t) => {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'rcs-types-'));
  t.after(() => fs.rmSync(dir, { recursive: true, force: true }));
  const modules = path.join(dir, 'node_modules');
  const ours = path.join(modules, 'resilient-change-stream');
  fs.mkdirSync(ours, { recursive: true });
  for (const file of ['index.d.ts', 'package.json']) fs.copyFileSync(path.join(ROOT, file), path.join(ours, file));
  // Everything a consumer would have except `mongodb`.
  for (const dep of ['typescript', 'bson', 'undici-types', '@types']) {
    fs.symlinkSync(path.join(ROOT, 'node_modules', dep), path.join(modules, dep), 'dir');
  }
  fs.writeFileSync(
    path.join(dir, 'app.ts'),
    `import { watch, ResilientChangeStream, InvalidOptionError } from 'resilient-change-stream';
declare const orders: unknown;
const stream = watch(orders as never, [], { batchSize: 10, backoff: { maxRetries: 3 } });
stream.on('reconnecting', ({ attempt, delayMs }) => console.log(attempt + delayMs));
stream.on('change', async (event) => console.log(event));
const explicit = new ResilientChangeStream({ uri: 'mongodb://h', db: 'shop', collection: 'orders' });
const health: number = explicit.health().reconnects;
void health;
void explicit.close().catch((e: unknown) => e instanceof InvalidOptionError);
// @ts-expect-error batchSize is a number
watch(orders as never, [], { batchSize: 'ten' });
`,
  );
  fs.writeFileSync(
    path.join(dir, 'tsconfig.json'),
    JSON.stringify({
      compilerOptions: { strict: true, noEmit: true, module: 'commonjs', target: 'es2022', types: ['node'], skipLibCheck: false },
      files: ['app.ts'],
    }),
  );
  assert.equal(fs.existsSync(path.join(modules, 'mongodb')), false, 'precondition: no driver');
  const tsc = path.join(modules, 'typescript', 'bin', 'tsc');
  let output = '';
  try {
    output = execFileSync(process.execPath, [tsc, '-p', dir], { encoding: 'utf8' });
  } catch (err) {
    assert.fail(`tsc failed:\n${err.stdout}${err.stderr}`);
  }
  assert.equal(output.trim(), '');
});
