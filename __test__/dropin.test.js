'use strict';
// Swapping `collection.watch()` for `watch(collection)`: every option of the driver's
// ChangeStreamOptions is accepted with the driver's meaning (or refused saying why), the
// target's read preference and read concern are inherited, and the MongoClient's settings
// reach the engine's connection (or are refused naming the setting). The connection string
// mapping needs no server; the options are also checked against one.

const test = require('node:test');
const assert = require('node:assert/strict');
const { MongoClient, ReadPreference, ReadConcern } = require('mongodb');
const { watch, InvalidOptionError } = require('..');
const { connectionString } = require('../lib/target');
const { takeDriverOptions, IGNORED, REFUSED } = require('../lib/driver-options');
const { setup, insertSeq, withTimeout, startIterating } = require('./helpers');

const DEADLINE_MS = 30000;

/** The query of an engine connection string as [key, value] pairs, in order. */
function paramsOf(uri) {
  return [...new URLSearchParams(uri.slice(uri.indexOf('?') + 1))];
}

test('MongoClient settings given besides the URL reach the engine connection string', () => {
  const client = new MongoClient('mongodb://h1:27017,h2:27018/app?replicaSet=rs0', {
    auth: { username: 'us er', password: 'p@ss:w/rd' },
    authSource: 'admin',
    authMechanism: 'SCRAM-SHA-256',
    appName: 'billing',
    tls: true,
    tlsCAFile: '/etc/ssl/ca.pem',
    tlsCertificateKeyFile: '/etc/ssl/client.pem',
    tlsAllowInvalidHostnames: true,
    readPreference: new ReadPreference('secondaryPreferred', [{ dc: 'east' }], { maxStalenessSeconds: 120 }),
    readConcern: { level: 'majority' },
    serverSelectionTimeoutMS: 5000,
    maxPoolSize: 50,
    heartbeatFrequencyMS: 2000,
    compressors: ['zstd', 'zlib'],
    zlibCompressionLevel: 6,
  });
  const uri = connectionString(client);
  assert.ok(uri.startsWith('mongodb://us%20er:p%40ss%3Aw%2Frd@h1:27017,h2:27018/app?'), uri);
  assert.deepEqual(new Map(paramsOf(uri)), new Map([
    ['replicaSet', 'rs0'],
    ['serverSelectionTimeoutMS', '5000'],
    ['heartbeatFrequencyMS', '2000'],
    ['maxPoolSize', '50'],
    ['tls', 'true'],
    ['appName', 'billing'],
    ['tlsCAFile', '/etc/ssl/ca.pem'],
    ['tlsCertificateKeyFile', '/etc/ssl/client.pem'],
    ['readPreference', 'secondaryPreferred'],
    ['readPreferenceTags', 'dc:east'],
    ['maxStalenessSeconds', '120'],
    ['readConcernLevel', 'majority'],
    ['compressors', 'zstd,zlib'],
    ['zlibCompressionLevel', '6'],
    ['tlsAllowInvalidHostnames', 'true'],
    ['authMechanism', 'SCRAM-SHA-256'],
    ['authSource', 'admin'],
  ]));
});

test('settings at the driver defaults are left to the engine defaults; the string wins where it says more', () => {
  const uri = connectionString(new MongoClient('mongodb://127.0.0.1:1/?directConnection=true&appName=x'));
  assert.equal(uri, 'mongodb://127.0.0.1:1/?directConnection=true&appName=x');
  assert.equal(connectionString(new MongoClient('mongodb://127.0.0.1:1')), 'mongodb://127.0.0.1:1');
});

test('settings the engine cannot carry over are refused, naming the setting and no secret', () => {
  // Without mongodb-client-encryption installed the driver itself refuses autoEncryption:
  // a client that has it is simulated over a real one's resolved options.
  const plain = new MongoClient('mongodb://user:hunter2@127.0.0.1:1/');
  const encrypted = Object.create(plain, {
    options: { value: { ...plain.options, autoEncryption: { keyVaultNamespace: 'k.v' } } },
  });
  assert.throws(() => connectionString(encrypted), (err) => {
    assert.ok(err instanceof InvalidOptionError);
    assert.match(err.message, /sets "autoEncryption"/);
    assert.doesNotMatch(err.message, /hunter2/);
    return true;
  });
  const cases = [
    [
      {
        authMechanism: 'MONGODB-OIDC',
        authMechanismProperties: { OIDC_CALLBACK: async () => ({ accessToken: 'secret-token' }) },
      },
      'authMechanismProperties.OIDC_CALLBACK',
      'mongodb://127.0.0.1:1/',
    ],
    [{ ca: Buffer.from('pem'), tls: true }, 'ca'],
    [{ serverApi: '1' }, 'serverApi'],
    [{ proxyHost: 'proxy', proxyPort: 1080 }, 'proxyHost'],
  ];
  for (const [options, name, url = 'mongodb://user:hunter2@127.0.0.1:1/'] of cases) {
    let client;
    try {
      client = new MongoClient(url, options);
    } catch (err) {
      // A driver build that refuses the option itself (e.g. a missing optional dependency).
      assert.fail(`the driver refused ${name}: ${err.message}`);
    }
    assert.throws(
      () => watch(client.db('d').collection('c')),
      (err) => {
        assert.ok(err instanceof InvalidOptionError, `${err.name}: ${err.message}`);
        assert.match(err.message, new RegExp(`sets "${name.replace('.', '\\.')}"`));
        assert.doesNotMatch(err.message, /hunter2|secret-token/);
        return true;
      },
      name,
    );
  }
});

test("every driver ChangeStreamOptions name is handled: the engine's, converted, ignored as the driver does, or refused with a reason", () => {
  const refusedMessages = {};
  for (const name of Object.keys(REFUSED)) {
    const value = name === 'raw' ? true : {};
    assert.throws(() => takeDriverOptions({ [name]: value }), (err) => {
      assert.ok(err instanceof InvalidOptionError);
      assert.match(err.message, new RegExp(`^option "${name}" is not supported: .+`));
      refusedMessages[name] = err.message;
      return true;
    });
  }
  assert.match(refusedMessages.session, /outlives sessions/);
  // raw: false is the default: accepted.
  assert.deepEqual(takeDriverOptions({ raw: false }).rest, { readPreference: undefined, readConcern: undefined });
  for (const name of Object.keys(IGNORED)) {
    assert.deepEqual(takeDriverOptions({ [name]: 1 }).rest, { readPreference: undefined, readConcern: undefined }, name);
  }
  const { rest } = takeDriverOptions({
    readPreference: ReadPreference.secondaryPreferred,
    readConcern: new ReadConcern('majority'),
    serializeFunctions: true,
    pipeline: [{ $match: { a: undefined, $expr: { $function: { body: function f() { return true; }, args: [], lang: 'js' } } } }],
  });
  assert.deepEqual(rest.readPreference, { mode: 'secondaryPreferred' });
  assert.deepEqual(rest.readConcern, { level: 'majority' });
  assert.equal(rest.pipeline[0].$match.a, null, 'undefined becomes null (ignoreUndefined: false, as the driver)');
  assert.equal(rest.pipeline[0].$match.$expr.$function.body._bsontype, 'Code', 'serializeFunctions: a function becomes Code');
});

test('the driver options against a server: accepted, passed to the aggregate, inherited from the target', async (t) => {
  const { client, coll, dbName, collName } = await setup(t);
  await t.test('readConcern, maxTimeMS, allowDiskUse, hint, comment, dbName, timeoutMS, serializeFunctions, …: accepted', async () => {
    const stream = watch(coll, [{ $match: { 'fullDocument.seq': 2 } }], {
      readConcern: { level: 'majority' },
      maxTimeMS: 60000,
      allowDiskUse: false,
      hint: { $natural: 1 },
      comment: 'swap',
      dbName: 'ignored',
      timeoutMS: 1,
      serializeFunctions: false,
      ignoreUndefined: true,
      checkKeys: false,
      fieldsAsRaw: { fullDocument: true },
      promoteLongs: true,
      raw: false,
    });
    try {
      const { pending } = await startIterating(stream);
      await insertSeq(coll, 0, 4);
      const event = await withTimeout(pending, DEADLINE_MS, 'the one event');
      assert.equal(event.fullDocument.seq, 2);
      assert.equal(event.fullDocument.constructor, Object, 'fieldsAsRaw: decoded, as by the driver');
    } finally {
      await stream.close();
    }
  });

  await t.test('let reaches the aggregate: the server answers as it answers the driver', async () => {
    const pipeline = [{ $match: { $expr: { $eq: ['$fullDocument.seq', '$$wanted'] } } }];
    const outcome = async (next) => {
      try {
        return { event: (await withTimeout(next, DEADLINE_MS, 'the event')).fullDocument.seq };
      } catch (err) {
        return { code: err.code };
      }
    };
    const driverStream = coll.watch(pipeline, { let: { wanted: 2 } });
    const ours = watch(coll, pipeline, { let: { wanted: 2 } });
    try {
      const driverNext = outcome(driverStream.next());
      const { pending } = await startIterating(ours);
      const oursNext = outcome(pending);
      await insertSeq(coll, 10, 11);
      await coll.insertOne({ seq: 2 });
      assert.deepEqual(await oursNext, await driverNext);
    } finally {
      await ours.close();
      await driverStream.close();
    }
  });

  await t.test("the target's read preference and read concern are inherited; a server-rejected one surfaces", async () => {
    const target = client.db(dbName, { readConcern: { level: 'bogus-level' } }).collection(collName);
    const stream = watch(target);
    try {
      await assert.rejects(withTimeout(stream.next(), DEADLINE_MS, 'the server to refuse the read concern'), (err) => {
        assert.equal(typeof err.code, 'number', `${err.name}: ${err.message}`);
        return true;
      });
    } finally {
      await stream.close();
    }
  });

  await t.test('session is refused, saying why', () => {
    const session = client.startSession();
    try {
      assert.throws(() => watch(coll, [], { session }), /option "session" is not supported: a ResilientChangeStream outlives sessions/);
    } finally {
      session.endSession().catch(() => {});
    }
  });
});

test('a client with wire compressors: the stream connects with them and delivers', async (t) => {
  const { server, dbName, collName } = await setup(t);
  const client = new MongoClient(server.uri, { compressors: ['zstd', 'zlib', 'snappy'], zlibCompressionLevel: 4 });
  t.after(() => client.close());
  const coll = client.db(dbName).collection(collName);
  const stream = watch(coll, [], { maxAwaitTimeMS: 100 });
  t.after(() => stream.close());
  const { pending } = await startIterating(stream);
  await insertSeq(coll, 1, 2);
  const event = await withTimeout(pending, DEADLINE_MS, 'the event');
  assert.equal(event.fullDocument.seq, 1);
});
