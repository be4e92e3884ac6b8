'use strict';

const { InvalidOptionError } = require('./errors');
const { describeType } = require('./error-helpers');

/**
 * What a driver `Collection`, `Db` or `MongoClient` says about where to watch. Duck-typed
 * (no `instanceof`) so a driver copy other than the one this package would load still works.
 * @returns {{ client: object, db?: string, collection?: string, bsonOptions?: object, readPreference?: unknown, readConcern?: unknown }}
 */
function resolveTarget(target) {
  if (typeof target?.collectionName === 'string' && typeof target.dbName === 'string') {
    return {
      client: target.client,
      db: target.dbName,
      collection: target.collectionName,
      bsonOptions: target.bsonOptions,
      readPreference: target.readPreference,
      readConcern: target.readConcern,
    };
  }
  if (typeof target?.databaseName === 'string' && typeof target.collection === 'function') {
    return {
      client: target.client,
      db: target.databaseName,
      bsonOptions: target.bsonOptions,
      readPreference: target.readPreference,
      readConcern: target.readConcern,
    };
  }
  if (typeof target?.db === 'function' && (target.options || target.s?.url)) {
    return {
      client: target,
      bsonOptions: target.bsonOptions,
      readPreference: target.readPreference,
      readConcern: target.readConcern,
    };
  }
  throw new InvalidOptionError(
    `watch() target must be a Collection, Db or MongoClient of the mongodb driver, got ${describeType(target)}`,
  );
}

/**
 * The connection string the engine connects with, carrying the settings of a driver
 * MongoClient: its `client.s.url` (mongodb 6.x keeps the string it was built with there) with
 * the resolved `client.options` written over it — what `new MongoClient(url, { … })` was given
 * besides the string (credentials, TLS files, appName, read preference, replica set, server
 * selection and pool settings, …). A setting the engine cannot carry over is an
 * InvalidOptionError naming it (never a silent difference); the message never holds a value.
 */
function connectionString(client) {
  const url = client?.s?.url;
  if (typeof url !== 'string') {
    throw new InvalidOptionError(
      'option "uri" is required: the MongoClient of the watch() target does not expose its connection string',
    );
  }
  const options = client.options;
  if (options === null || typeof options !== 'object') return withCredentials(url, undefined, []);
  refuseUncarried(options);
  return withCredentials(url, options.credentials, clientParams(options));
}

/**
 * Settings at the driver's default are left out: the engine's own defaults apply (2 s server
 * selection, a pool of 1000, the polling monitor; see src/engine/client_pool.rs), as for a
 * connection string that does not set them.
 */
const DRIVER_DEFAULTS = {
  serverSelectionTimeoutMS: 30000,
  connectTimeoutMS: 30000,
  socketTimeoutMS: 0,
  heartbeatFrequencyMS: 10000,
  localThresholdMS: 15,
  maxPoolSize: 100,
  minPoolSize: 0,
  maxIdleTimeMS: 0,
  waitQueueTimeoutMS: 0,
  maxConnecting: 2,
  serverMonitoringMode: 'auto',
  retryReads: true,
  directConnection: false,
  loadBalanced: false,
  tls: false,
  srvMaxHosts: 0,
  srvServiceName: 'mongodb',
};

/** Resolved options that are connection-string options of the same name. */
const SAME_NAME = Object.keys(DRIVER_DEFAULTS).concat([
  'appName',
  'replicaSet',
  'tlsCAFile',
  'tlsCertificateKeyFile',
  'tlsCertificateKeyFilePassword',
]);

/**
 * The connection-string parameters for the resolved options (values as strings).
 * @param {Record<string, any>} o
 * @returns {Array<[string, string]>}
 */
function clientParams(o) {
  /** @type {Array<[string, string]>} */
  const params = [];
  for (const name of SAME_NAME) {
    const value = o[name];
    if (value === undefined || value === null || value === '') continue;
    if (name in DRIVER_DEFAULTS && value === /** @type {any} */ (DRIVER_DEFAULTS)[name]) continue;
    params.push([name, String(value)]);
  }
  const rp = o.readPreference;
  if (rp && typeof rp.mode === 'string' && rp.mode !== 'primary') {
    params.push(['readPreference', rp.mode]);
    for (const tags of Array.isArray(rp.tags) ? rp.tags : []) {
      params.push(['readPreferenceTags', Object.entries(tags).map(([k, v]) => `${k}:${v}`).join(',')]);
    }
    if (typeof rp.maxStalenessSeconds === 'number' && rp.maxStalenessSeconds > 0) {
      params.push(['maxStalenessSeconds', String(rp.maxStalenessSeconds)]);
    }
  }
  if (typeof o.readConcern?.level === 'string') params.push(['readConcernLevel', o.readConcern.level]);
  // Wire compression: the engine's driver speaks zstd, zlib and snappy too ('none' is the default).
  const compressors = Array.isArray(o.compressors) ? o.compressors.filter((c) => c !== 'none') : [];
  if (compressors.length > 0) params.push(['compressors', compressors.join(',')]);
  if (compressors.includes('zlib') && typeof o.zlibCompressionLevel === 'number' && o.zlibCompressionLevel > 0) {
    params.push(['zlibCompressionLevel', String(o.zlibCompressionLevel)]);
  }
  // The driver resolves tlsAllowInvalidCertificates / tlsAllowInvalidHostnames (and
  // tlsInsecure, both) into Node's TLS options.
  if (o.rejectUnauthorized === false) params.push(['tlsAllowInvalidCertificates', 'true']);
  if (typeof o.checkServerIdentity === 'function') params.push(['tlsAllowInvalidHostnames', 'true']);
  return params;
}

/**
 * Settings of a MongoClient the engine cannot reproduce: each an InvalidOptionError naming it.
 * @param {Record<string, any>} o
 */
function refuseUncarried(o) {
  const refuse = (name, why) => {
    throw new InvalidOptionError(
      `the MongoClient of the watch() target sets "${name}", which watch() cannot carry over to its own connection: ${why}; ` +
        'give watch() a client without it, or pass "uri" for the stream\'s own connection',
    );
  };
  if (o.autoEncryption) refuse('autoEncryption', 'the engine does not decrypt (client-side field level encryption)');
  const props = o.credentials?.mechanismProperties ?? {};
  for (const key of ['OIDC_CALLBACK', 'OIDC_HUMAN_CALLBACK', 'AWS_CREDENTIAL_PROVIDER']) {
    if (props[key] !== undefined) refuse(`authMechanismProperties.${key}`, 'a JavaScript callback cannot run in the engine');
  }
  if (o.credentials?.mechanism === 'MONGODB-OIDC') refuse('authMechanism', 'MONGODB-OIDC is not supported by the engine');
  // In-memory TLS material (as opposed to the tls*File paths, which are carried over).
  if (o.ca !== undefined && !o.tlsCAFile) refuse('ca', 'in-memory TLS material; use tlsCAFile');
  if ((o.cert !== undefined || o.key !== undefined) && !o.tlsCertificateKeyFile) {
    refuse(o.cert !== undefined ? 'cert' : 'key', 'in-memory TLS material; use tlsCertificateKeyFile');
  }
  if (o.crl !== undefined || o.tlsCRLFile) refuse(o.crl !== undefined ? 'crl' : 'tlsCRLFile', 'certificate revocation lists are not supported by the engine');
  if (o.proxyHost) refuse('proxyHost', 'the engine does not connect through a SOCKS5 proxy');
  if (o.serverApi) refuse('serverApi', 'the engine does not declare a Stable API version');
}

// Mechanisms whose whole credential is a user name and password, i.e. fits in the string.
const PASSWORD_MECHANISMS = new Set(['DEFAULT', 'SCRAM-SHA-1', 'SCRAM-SHA-256', 'PLAIN']);

/**
 * `url` with the credentials (when the string has none) and `params` written in; a parameter
 * already in the string is replaced (the resolved options won over it in the driver too).
 * @param {string} url
 * @param {any} credentials
 * @param {Array<[string, string]>} params
 */
function withCredentials(url, credentials, params) {
  const parts = /^(mongodb(?:\+srv)?:\/\/)([^/?]*)([^?]*)(?:\?(.*))?$/is.exec(url);
  if (!parts) return url;
  const [, scheme, hostsWithUser, path, query = ''] = parts;
  let hosts = hostsWithUser;
  const all = [...params];
  const mechanism = credentials?.mechanism;
  if (mechanism && mechanism !== 'DEFAULT') all.push(['authMechanism', mechanism]);
  if (credentials?.source && (credentials.username || mechanism === 'MONGODB-X509' || mechanism === 'MONGODB-AWS')) {
    all.push(['authSource', credentials.source]);
  }
  const props = Object.entries(credentials?.mechanismProperties ?? {}).filter(([, v]) => typeof v === 'string' || typeof v === 'boolean');
  if (props.length > 0) all.push(['authMechanismProperties', props.map(([k, v]) => `${k}:${v}`).join(',')]);
  if (!hostsWithUser.includes('@') && credentials?.username && (PASSWORD_MECHANISMS.has(mechanism) || mechanism === 'GSSAPI' || mechanism === 'MONGODB-X509' || mechanism === 'MONGODB-AWS')) {
    hosts =
      encodeURIComponent(credentials.username) +
      (credentials.password ? `:${encodeURIComponent(credentials.password)}` : '') +
      `@${hostsWithUser}`;
  }
  const replaced = new Set(all.map(([k]) => k.toLowerCase()));
  const kept = query
    .split('&')
    .filter((pair) => pair !== '' && !replaced.has(decodeURIComponent(pair.split('=')[0]).toLowerCase()));
  const written = all.map(([k, v]) => `${k}=${encodeURIComponent(v)}`);
  const finalQuery = [...kept, ...written].join('&');
  return `${scheme}${hosts}${path || (finalQuery ? '/' : '')}${finalQuery ? `?${finalQuery}` : ''}`;
}

module.exports = { resolveTarget, connectionString };
