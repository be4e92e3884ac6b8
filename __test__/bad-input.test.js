'use strict';
// Bad input found by fuzzing the public API (issue #13): values BSON drops silently or cannot
// encode, at any depth; unknown options whatever their value; a bad restart() state; an
// out-of-range headroomCheckIntervalMS; ResilientCursor's `uri` option. Each is a typed
// error naming the option — or, for `uri`, a read from the right server.

const test = require('node:test');
const assert = require('node:assert/strict');
const { ResilientChangeStream, ResilientCursor, watch, InvalidOptionError } = require('..');
const { setup, insertSeq } = require('./helpers');

// Construction does not connect (the open is lazy): no server is needed to be refused.
const URI = 'mongodb://127.0.0.1:1/?serverSelectionTimeoutMS=200';
const NS = { db: 'd', collection: 'c' };
/** What watch() takes for a Collection: duck-typed, as lib/target.js reads it. */
const COLLECTION = { collectionName: 'c', dbName: 'd', client: { s: { url: URI } } };

function circular() {
  const value = { a: 1 };
  value.self = value;
  return value;
}

/** Asserts `make()` throws an InvalidOptionError whose message matches `message`. */
function assertInvalid(make, message, what) {
  assert.throws(
    make,
    (err) => {
      assert.ok(err instanceof InvalidOptionError, `${what}: an InvalidOptionError, got ${err?.name}: ${err?.message}`);
      assert.match(err.message, message, what);
      return true;
    },
    what,
  );
}

const fn = () => 1;
const sym = Symbol('option');

test('a function or a Symbol in any option, at any depth, is an InvalidOptionError naming its path (change stream)', () => {
  const cases = [
    [{ batchSize: fn }, 'batchSize'],
    [{ name: fn }, 'name'],
    [{ name: sym }, 'name'],
    [{ pipeline: [fn, { $match: { x: 1 } }] }, 'pipeline[0]'],
    [{ pipeline: [{ $match: { x: 1 } }, sym] }, 'pipeline[1]'],
    [{ pipeline: [{ $match: { a: { $in: [1, fn] } } }] }, 'pipeline[0].$match.a.$in[1]'],
    [{ collation: { locale: sym } }, 'collation.locale'],
    [{ comment: { nested: [fn] } }, 'comment.nested[0]'],
    [{ backoff: { maxRetries: fn } }, 'backoff.maxRetries'],
    [{ checkpoint: { everyEvents: sym } }, 'checkpoint.everyEvents'],
    [{ tokenStore: { type: 'file', path: fn } }, 'tokenStore.path'],
    [{ resumeAfter: { _data: fn } }, 'resumeAfter._data'],
    [{ db: sym }, 'db'],
    [{ collection: sym, logger: console }, 'collection'],
  ];
  // Values BSON changes silently are refused the same way.
  assertInvalid(() => new ResilientChangeStream({ uri: URI, ...NS, comment: { at: new Date(Number.NaN) } }), /option "comment\.at" must be a valid Date/, 'invalid Date');
  assertInvalid(() => new ResilientChangeStream({ uri: URI, ...NS, comment: [2n ** 64n] }), /option "comment\[0\]" must be a bigint within int64/, 'bigint past int64');
  for (const [options, path] of cases) {
    const message = new RegExp(`option "${path.replaceAll(/[.$[\]]/g, '\\$&')}" must be a value BSON can encode`);
    assertInvalid(() => new ResilientChangeStream({ uri: URI, ...NS, ...options }), message, `constructor ${path}`);
  }
  assertInvalid(() => watch(COLLECTION, [fn, { $match: {} }]), /option "pipeline\[0\]"/, 'watch(coll, [fn, stage])');
  assertInvalid(() => watch(COLLECTION, { batchSize: fn }), /option "batchSize"/, 'watch(coll, { batchSize: fn })');
  assertInvalid(() => watch(COLLECTION, { uri: sym }), /option "uri"/, 'watch(coll, { uri: Symbol })');
});

test('a function, a Symbol or a cycle in a cursor option (and its lastKey) is an InvalidOptionError naming its path', () => {
  const cases = [
    [{ filter: { a: fn } }, /option "filter\.a" must be a value BSON can encode/],
    [{ filter: { $or: [{ a: 1 }, { b: sym }] } }, /option "filter\.\$or\[1\]\.b"/],
    [{ projection: { a: fn } }, /option "projection\.a"/],
    [{ key: fn }, /option "key"/],
    [{ lastKey: sym }, /option "lastKey"/],
    [{ filter: circular() }, /option "filter\.self" is circular/],
  ];
  for (const [options, message] of cases) {
    assertInvalid(() => new ResilientCursor({ uri: URI, ...NS }, options), message, JSON.stringify(Object.keys(options)));
  }
});

test('a circular comment, collation, filter, pipeline or unknown option is an InvalidOptionError, not a raw BSONError', () => {
  assertInvalid(() => new ResilientChangeStream({ uri: URI, ...NS, comment: circular() }), /option "comment\.self" is circular/, 'comment');
  assertInvalid(() => new ResilientChangeStream({ uri: URI, ...NS, collation: circular() }), /option "collation\.self" is circular/, 'collation');
  assertInvalid(() => new ResilientCursor({ uri: URI, ...NS }, { filter: { $and: [circular()] } }), /option "filter\.\$and\[0\]\.self" is circular/, 'filter');
  // watch() copies a pipeline as the driver's serializer would (found by the fuzz: the copy
  // recursed until the stack ran out).
  assertInvalid(() => watch(COLLECTION, [{ $match: circular() }]), /option "pipeline\[0\]\.\$match\.self.*" is circular/, 'pipeline argument');
  assertInvalid(() => watch(COLLECTION, { pipeline: [circular()] }), /option "pipeline\[0\]\.self.*" is circular/, 'pipeline option');
  // A shared (not circular) object is fine: it is encoded twice.
  const shared = { x: 1 };
  const ok = new ResilientChangeStream({ uri: URI, ...NS, comment: { a: shared, b: shared } });
  return ok.close();
});

test('an unknown option says "unknown option" whatever its value', () => {
  for (const value of [1, fn, sym, circular(), { deep: [fn] }, undefined]) {
    const what = `bogus: ${typeof value}`;
    if (value === undefined) continue; // undefined means "not set", as in the driver
    assertInvalid(() => new ResilientChangeStream({ uri: URI, ...NS, bogus: value }), /^unknown option "bogus"$/, `stream ${what}`);
    assertInvalid(() => new ResilientCursor({ uri: URI, ...NS }, { bogus: value }), /^unknown option "bogus"$/, `cursor ${what}`);
    assertInvalid(() => watch(COLLECTION, { bogus: value }), /^unknown option "bogus"$/, `watch ${what}`);
  }
  // A name that cannot even be a BSON key (a NUL) is unknown too, not a BSONError.
  assertInvalid(() => new ResilientChangeStream({ uri: URI, ...NS, 'a\0b': 1 }), /^unknown option "a\\u0000b"$/, 'NUL in a name');
  // A NUL in a nested key cannot be encoded: named by its option.
  assertInvalid(() => new ResilientChangeStream({ uri: URI, ...NS, pipeline: [{ $match: { 'a\0': 1 } }] }), /option "pipeline" cannot be encoded as BSON/, 'NUL in a key');
});

test('ResilientCursor.restart() with a bad lastKey, filter or projection in the state: InvalidOptionError naming the field', () => {
  const state = { version: 1, namespace: NS, filter: {}, projection: null, key: '_id', lastKey: null };
  const cases = [
    [{ lastKey: { $numberLong: 'not a number' } }, /state\.lastKey is not canonical Extended JSON/],
    [{ lastKey: circular() }, /option "state\.lastKey\.self" is circular/],
    [{ lastKey: fn }, /option "state\.lastKey" must be a value BSON can encode/],
    [{ filter: { _id: { $oid: 'zz' } } }, /state\.filter is not canonical Extended JSON/],
    [{ filter: { a: sym } }, /option "state\.filter\.a"/],
    [{ projection: { a: fn } }, /option "state\.projection\.a"/],
    [{ key: fn }, /option "key"/],
    [{ batchSize: sym }, /option "batchSize"/],
  ];
  for (const [bad, message] of cases) {
    assertInvalid(() => ResilientCursor.restart({ ...state, ...bad }, URI), message, JSON.stringify(Object.keys(bad)));
  }
});

test('headroomCheckIntervalMS is bounded by the timer limit (2^31-1 ms): beyond it, a clear InvalidOptionError', async () => {
  for (const bad of [2 ** 31, 2 ** 53, Number.MAX_VALUE, Infinity, -1, 1.5, Number.NaN]) {
    assertInvalid(
      () => new ResilientChangeStream({ uri: URI, ...NS, headroomCheckIntervalMS: bad }),
      /option "headroomCheckIntervalMS" must be an integer from 0 to 2147483647 \(2\^31-1\), got number/,
      String(bad),
    );
  }
  for (const good of [0, 1, 2 ** 31 - 1]) {
    await new ResilientChangeStream({ uri: URI, ...NS, headroomCheckIntervalMS: good }).close();
  }
});

test("ResilientCursor's uri option overrides the target's connection string (as the typings say)", async (t) => {
  const { server, coll, dbName, collName } = await setup(t);
  await insertSeq(coll, 0, 3);
  // The target's string points nowhere: only the option's reaches the server.
  const cursor = new ResilientCursor(
    { uri: URI, db: dbName, collection: collName },
    { uri: server.uri, key: 'seq', backoff: { maxRetries: 0 } },
  );
  t.after(() => cursor.close());
  const seqs = [];
  for await (const doc of cursor) seqs.push(doc.seq);
  assert.deepEqual(seqs, [0, 1, 2]);
  assert.equal(cursor.state().ended, 'exhausted');
});
