'use strict';

const { InvalidOptionError } = require('./errors');
const { describeType } = require('./error-helpers');

/**
 * What a driver `Collection`, `Db` or `MongoClient` says about where to watch. Duck-typed
 * (no `instanceof`) so a driver copy other than the one this package would load still works.
 * @returns {{ client: object, db?: string, collection?: string, bsonOptions?: object }}
 */
function resolveTarget(target) {
  if (typeof target?.collectionName === 'string' && typeof target.dbName === 'string') {
    return {
      client: target.client,
      db: target.dbName,
      collection: target.collectionName,
      bsonOptions: target.bsonOptions,
    };
  }
  if (typeof target?.databaseName === 'string' && typeof target.collection === 'function') {
    return { client: target.client, db: target.databaseName, bsonOptions: target.bsonOptions };
  }
  if (typeof target?.db === 'function' && (target.options || target.s?.url)) {
    return { client: target, bsonOptions: target.bsonOptions };
  }
  throw new InvalidOptionError(
    `watch() target must be a Collection, Db or MongoClient of the mongodb driver, got ${describeType(target)}`,
  );
}

/**
 * The connection string of a driver MongoClient. mongodb 6.x keeps the string it was built
 * with in `client.s.url` (mongo_client.js); credentials given separately (`{ auth }`) live
 * only in `client.options.credentials`, so they are written into the string.
 */
function connectionString(client) {
  const url = client?.s?.url;
  if (typeof url !== 'string') {
    throw new InvalidOptionError(
      'option "uri" is required: the MongoClient of the watch() target does not expose its connection string',
    );
  }
  return withCredentials(url, client.options?.credentials);
}

// Mechanisms whose whole credential is a user name and password, i.e. fits in the string.
const PASSWORD_MECHANISMS = new Set(['DEFAULT', 'SCRAM-SHA-1', 'SCRAM-SHA-256', 'PLAIN']);

function withCredentials(url, credentials) {
  if (!credentials?.username || !PASSWORD_MECHANISMS.has(credentials.mechanism)) return url;
  const parts = /^(mongodb(?:\+srv)?:\/\/)([^/?]*)(.*)$/is.exec(url);
  if (!parts || parts[2].includes('@')) return url; // the string already carries credentials
  const [, scheme, hosts, tail] = parts;
  const userinfo =
    encodeURIComponent(credentials.username) +
    (credentials.password ? `:${encodeURIComponent(credentials.password)}` : '');
  const params = [];
  if (credentials.source && !/[?&]authSource=/i.test(tail)) {
    params.push(`authSource=${encodeURIComponent(credentials.source)}`);
  }
  if (credentials.mechanism !== 'DEFAULT' && !/[?&]authMechanism=/i.test(tail)) {
    params.push(`authMechanism=${credentials.mechanism}`);
  }
  return `${scheme}${userinfo}@${hosts}${appendQuery(tail, params)}`;
}

/** Appends `params` to the `/db?query` part of a connection string. */
function appendQuery(tail, params) {
  if (params.length === 0) return tail;
  if (!tail.includes('?')) return `${tail || '/'}?${params.join('&')}`;
  return /[?&]$/.test(tail) ? tail + params.join('&') : `${tail}&${params.join('&')}`;
}

module.exports = { resolveTarget, connectionString };
