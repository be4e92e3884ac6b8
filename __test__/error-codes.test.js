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
const { ERROR_KINDS, BASE_CLASS_KINDS } = require('../lib/error-helpers');

const DTS = fs.readFileSync(path.join(__dirname, '..', 'index.d.ts'), 'utf8');

/** `export declare class X extends ResilientChangeStreamError { … kind: 'C'; … }` → { X: 'C' } */
function declaredClassCodes() {
  const codes = {};
  const classPattern = /export declare class (\w+) extends ResilientChangeStreamError \{([\s\S]*?)\n\}/g;
  for (const [, name, body] of DTS.matchAll(classPattern)) {
    const code = /^\s*kind: '(\w+)';/m.exec(body);
    codes[name] = code ? code[1] : null;
  }
  return codes;
}

function declaredErrorCodeUnion() {
  const union = /export type ErrorKind =([^;]*);/.exec(DTS);
  assert.ok(union, 'index.d.ts declares ErrorKind');
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
      assert.equal(err.kind, cls.kind, `${name} carries its kind`);
      assert.equal(err.code, undefined, 'code: only a server code');
      codes.push(cls.kind);
    }
  }
  assert.equal(new Set(codes).size, codes.length, 'one class a code');
  assert.deepEqual([...ERROR_KINDS].sort(), [...codes, ...BASE_CLASS_KINDS].sort());
});

test('index.d.ts declares the same error classes with the same codes', () => {
  const declared = declaredClassCodes();
  const table = {};
  for (const [name, cls] of Object.entries(errorClasses)) {
    if (cls !== errorClasses.ResilientChangeStreamError) table[name] = cls.kind;
  }
  assert.deepEqual(declared, table);
  assert.match(DTS, /export declare class ResilientChangeStreamError extends Error \{/);
});

test("index.d.ts's ErrorKind union lists exactly the JS kinds", () => {
  assert.deepEqual([...declaredErrorCodeUnion()].sort(), [...ERROR_KINDS].sort());
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
  const missing = engineCodes.filter((code) => !ERROR_KINDS.includes(code));
  assert.deepEqual(missing, [], 'engine codes the JS table does not know');
  const facadeOnly = ERROR_KINDS.filter((code) => !engineCodes.includes(code)).sort();
  assert.deepEqual(facadeOnly, ['HandlerFailed', 'ModeConflict', 'NativeAddonUnavailable', 'StreamClosed']);
});

test('errors are shaped like the driver\'s: numeric code, codeName, errorLabels, hasErrorLabel, instanceof', () => {
  const { MongoError, MongoServerError, MongoNetworkError } = require('mongodb');
  const { fromNative } = require('../lib/error-helpers');
  const lost = fromNative({
    code: 'ChangeStreamHistoryLost',
    message: 'ChangeStreamHistoryLost (286): gone',
    serverCode: 286,
    codeName: 'ChangeStreamHistoryLost',
    labels: ['NonResumableChangeStreamError'],
  });
  assert.ok(lost instanceof errorClasses.ChangeStreamHistoryLostError);
  assert.ok(lost instanceof errorClasses.ResilientChangeStreamError);
  assert.ok(lost instanceof MongoServerError, 'a server error is a MongoServerError');
  assert.ok(lost instanceof MongoError);
  assert.ok(lost instanceof Error);
  assert.ok(!(lost instanceof MongoNetworkError));
  assert.ok(!(lost instanceof errorClasses.ServerError));
  assert.equal(lost.code, 286);
  assert.equal(lost.kind, 'ChangeStreamHistoryLost');
  assert.equal(lost.codeName, 'ChangeStreamHistoryLost');
  assert.deepEqual(lost.errorLabels, ['NonResumableChangeStreamError']);
  assert.equal(lost.hasErrorLabel('NonResumableChangeStreamError'), true);
  assert.equal(lost.hasErrorLabel('ResumableChangeStreamError'), false);
  assert.equal(lost.name, 'ChangeStreamHistoryLostError');
  assert.equal(lost.errmsg, lost.message, "the driver's legacy errmsg");

  const net = fromNative({ code: 'NetworkError', message: 'connection closed', labels: [] });
  assert.ok(net instanceof errorClasses.NetworkError);
  assert.ok(net instanceof MongoNetworkError, 'a network error is a MongoNetworkError');
  assert.ok(!(net instanceof MongoServerError));
  assert.equal(net.code, undefined);
  assert.equal(net.kind, 'NetworkError');

  const bad = new errorClasses.InvalidOptionError('x');
  assert.ok(bad instanceof MongoError);
  assert.ok(!(bad instanceof MongoServerError));
  const stalled = fromNative({ code: 'Stalled', message: 'no reply', labels: [] });
  assert.equal(stalled.constructor, errorClasses.ResilientChangeStreamError);
  assert.equal(stalled.kind, 'Stalled');
  assert.ok(!({} instanceof errorClasses.ResilientChangeStreamError));
  assert.ok(!(new Error('x') instanceof errorClasses.ResilientChangeStreamError));
});
