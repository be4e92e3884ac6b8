'use strict';
// The error codes are declared once on the JS side (lib/errors.js, one class a code, and
// lib/error-helpers.js for the codes without a class). index.d.ts must declare the same
// classes with the same codes, its ErrorCode union must list exactly those codes, and the ESM
// entry must export exactly what the CommonJS one does. No server needed.

const test = require('node:test');
const assert = require('node:assert/strict');
const fs = require('node:fs');
const path = require('node:path');
const rcs = require('..');
const errorClasses = require('../lib/errors');
const { ERROR_CODES, BASE_CLASS_CODES } = require('../lib/error-helpers');

const DTS = fs.readFileSync(path.join(__dirname, '..', 'index.d.ts'), 'utf8');

/** `export declare class X extends ResilientChangeStreamError { … code: 'C'; … }` → { X: 'C' } */
function declaredClassCodes() {
  const codes = {};
  const classPattern = /export declare class (\w+) extends ResilientChangeStreamError \{([\s\S]*?)\n\}/g;
  for (const [, name, body] of DTS.matchAll(classPattern)) {
    const code = /^\s*code: '(\w+)';/m.exec(body);
    codes[name] = code ? code[1] : null;
  }
  return codes;
}

function declaredErrorCodeUnion() {
  const union = /export type ErrorCode =([^;]*);/.exec(DTS);
  assert.ok(union, 'index.d.ts declares ErrorCode');
  return [...union[1].matchAll(/'(\w+)'/g)].map((m) => m[1]);
}

test('lib/errors.js exports only error classes, each named as exported, codes unique', () => {
  const codes = [];
  for (const [name, cls] of Object.entries(errorClasses)) {
    assert.equal(typeof cls, 'function', `${name} is a class`);
    assert.equal(cls.name, name, `${name} is named as exported`);
    assert.ok(cls === errorClasses.ResilientChangeStreamError || cls.prototype instanceof errorClasses.ResilientChangeStreamError);
    const err = new cls('m');
    assert.equal(err.name, name);
    if (cls !== errorClasses.ResilientChangeStreamError) {
      assert.equal(err.code, cls.code, `${name} carries its code`);
      codes.push(cls.code);
    }
  }
  assert.equal(new Set(codes).size, codes.length, 'one class a code');
  assert.deepEqual([...ERROR_CODES].sort(), [...codes, ...BASE_CLASS_CODES].sort());
});

test('index.d.ts declares the same error classes with the same codes', () => {
  const declared = declaredClassCodes();
  const table = {};
  for (const [name, cls] of Object.entries(errorClasses)) {
    if (cls !== errorClasses.ResilientChangeStreamError) table[name] = cls.code;
  }
  assert.deepEqual(declared, table);
  assert.match(DTS, /export declare class ResilientChangeStreamError extends Error \{/);
});

test("index.d.ts's ErrorCode union lists exactly the JS codes", () => {
  assert.deepEqual([...declaredErrorCodeUnion()].sort(), [...ERROR_CODES].sort());
});

test('index.mjs exports what index.js does, the very same objects', async () => {
  const esm = await import('../index.mjs');
  const named = Object.keys(esm).filter((name) => name !== 'default');
  assert.deepEqual(named.sort(), Object.keys(rcs).sort());
  for (const name of named) assert.equal(esm[name], rcs[name], `${name} is the CommonJS export`);
  assert.equal(esm.default, rcs);
  for (const name of Object.keys(errorClasses)) assert.equal(rcs[name], errorClasses[name], `${name} is exported`);
});

test('every code the engine can send has its JS mapping; the rest are the facade own', () => {
  const { nativeReader } = require('../lib/native');
  const engineCodes = nativeReader().errorCodes();
  assert.ok(engineCodes.length > 0, 'the engine lists its codes');
  const missing = engineCodes.filter((code) => !ERROR_CODES.includes(code));
  assert.deepEqual(missing, [], 'engine codes the JS table does not know');
  const facadeOnly = ERROR_CODES.filter((code) => !engineCodes.includes(code)).sort();
  assert.deepEqual(facadeOnly, ['HandlerFailed', 'ModeConflict', 'NativeAddonUnavailable', 'StreamClosed']);
});
