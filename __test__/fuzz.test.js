'use strict';
// A seeded fuzz of the public API (issue #13): for every option of watch(), new
// ResilientChangeStream, new ResilientCursor and ResilientCursor.restart() (state and options),
// generated wrong types, unknown keys, extreme numbers, functions, Symbols, cycles and nested
// junk, next to values that should work. Every case must end in a typed error naming the
// option, or a reader that works against the live server (opens, delivers the inserted
// document, closes) having sent the engine exactly the value given (or a typed error while
// running) — never a crash, a Rust panic, a hang or a silently dropped value.
//
// The cases run in a child process (__test__/fixtures/fuzz-child.js), whose stderr is
// checked for panics. `npm test` runs FUZZ_CASES (default 300) cases of a fresh seed;
// reproduce a failure with the FUZZ_SEED it prints: FUZZ_SEED=<seed> FUZZ_CASES=<n> node --test __test__/fuzz.test.js

const test = require('node:test');
const assert = require('node:assert/strict');
const path = require('node:path');
const { execFile } = require('node:child_process');
const { setup } = require('./helpers');

const CASES = Number(process.env.FUZZ_CASES ?? 300);
const SEED = Number(process.env.FUZZ_SEED ?? Math.floor(Math.random() * 2 ** 31));
const WORKER = path.join(__dirname, 'fixtures', 'fuzz-child.js');
/** The whole run's deadline: each case takes milliseconds; one that hangs is cut at 15 s. */
const DEADLINE_MS = 60000 + CASES * 100;

test(`fuzz of the public API: ${CASES} cases, seed ${SEED}`, { timeout: DEADLINE_MS + 30000 }, async (t) => {
  const { server, dbName } = await setup(t);
  const repro = `FUZZ_SEED=${SEED} FUZZ_CASES=${CASES} node --test __test__/fuzz.test.js`;
  const run = await new Promise((resolve) => {
    execFile(
      process.execPath,
      [WORKER, server.uri, dbName, String(SEED), '0', String(CASES)],
      { timeout: DEADLINE_MS, maxBuffer: 64 * 1024 * 1024 },
      (error, stdout, stderr) => resolve({ error, stdout, stderr }),
    );
  });
  const results = run.stdout.split('\n').filter(Boolean).map((line) => JSON.parse(line));
  const context = `seed ${SEED} (reproduce: ${repro})`;
  assert.doesNotMatch(run.stderr, /panicked/, `a Rust panic, ${context}:\n${run.stderr}`);
  assert.equal(run.error?.killed ?? false, false, `the worker hung (killed after ${DEADLINE_MS} ms), ${context}; last case: ${JSON.stringify(results.at(-1))}`);
  assert.equal(run.error, null, `the worker crashed (${run.error?.code}), ${context}:\n${run.stderr}`);
  assert.equal(results.length, CASES, `every case reported, ${context}`);
  const violations = results.filter((r) => r.violation !== null);
  assert.deepEqual(violations, [], `cases that broke the contract, ${context}`);
  const count = (outcome) => results.filter((r) => r.outcome === outcome).length;
  // Both halves were exercised: bad input refused, good input streaming.
  assert.ok(count('rejected') > 0 && count('works') > 0, `rejected ${count('rejected')}, works ${count('works')}, ${context}`);
  t.diagnostic(`seed ${SEED}: ${count('rejected')} rejected, ${count('works')} worked, ${count('failed')} failed with a typed error`);
});
