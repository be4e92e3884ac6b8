'use strict';

const { invalidOption } = require('./error-helpers');

let BSON = null;

/**
 * The BSON implementation: the driver's own copy when `mongodb` is installed, so events carry
 * the very classes the user's driver uses (`instanceof ObjectId` etc. hold), else `bson`.
 * Loaded lazily: requiring `mongodb` is not free and plain `require()` of this package must
 * stay cheap.
 */
function bson() {
  if (BSON === null) {
    try {
      BSON = require('mongodb').BSON;
    } catch (err) {
      if (err?.code !== 'MODULE_NOT_FOUND') throw err;
      BSON = require('bson');
    }
  }
  return BSON;
}

// BSON options the driver applies when it decodes change stream documents. They are JS-only:
// they never reach the engine. Defaults are those of mongodb 6.x `resolveBSONOptions`
// (lib/bson.js); `raw`/`fieldsAsRaw` are left out because the stream must read each event.
const DECODE_OPTION_DEFAULTS = {
  promoteLongs: true,
  promoteValues: true,
  promoteBuffers: false,
  useBigInt64: false,
  bsonRegExp: false,
  enableUtf8Validation: true,
};
const DECODE_OPTION_NAMES = Object.keys(DECODE_OPTION_DEFAULTS);

/**
 * Splits the JS-only decode options out of `options`.
 * @returns {{ decode: object, rest: object }} `decode` holds only the options that were set.
 */
function takeDecodeOptions(options) {
  const decode = {};
  const rest = { ...options };
  for (const name of DECODE_OPTION_NAMES) {
    const value = rest[name];
    delete rest[name];
    if (value === undefined) continue;
    if (typeof value !== 'boolean') throw invalidOption(name, 'a boolean', value);
    decode[name] = value;
  }
  return { decode, rest };
}

/** The driver's deserialize options for event documents (abstract_cursor.js `deserializationOptions`). */
function eventDeserializeOptions(decode) {
  const { enableUtf8Validation, ...promote } = { ...DECODE_OPTION_DEFAULTS, ...decode };
  return { ...promote, fieldsAsRaw: {}, raw: false, validation: { utf8: enableUtf8Validation } };
}

// How the driver decodes postBatchResumeToken (cmap/wire_protocol/responses.js).
const TOKEN_DESERIALIZE_OPTIONS = {
  promoteValues: false,
  promoteLongs: false,
  promoteBuffers: false,
  validation: { utf8: true },
};

/**
 * The options for decoding one document of a batch in place (no copy), as the driver's
 * OnDemandDocument.toObject does: one object per stream or batch whose `index` the caller
 * moves to each document's offset (not one object per event).
 */
function perEventOptions(options) {
  return { ...options, index: 0, allowObjectSmallerThanBufferSize: true };
}

/** Checks that `buffer` holds exactly `count` BSON documents back to back. */
function checkBatch(buffer, count) {
  let offset = 0;
  for (let i = 0; i < count; i++) {
    if (offset + 4 > buffer.length) throw new Error(`native batch holds fewer than ${count} documents`);
    offset += buffer.readInt32LE(offset);
  }
  if (offset !== buffer.length) throw new Error(`native batch holds more than ${count} documents`);
}

function decodeToken(buffer) {
  return bson().deserialize(buffer, TOKEN_DESERIALIZE_OPTIONS);
}

/**
 * The engine's `spec` document. `{ batchSize: undefined }` means "not set", as in the
 * driver, so undefined fields are left out (BSON would otherwise encode them as null).
 */
function encodeSpec(spec) {
  return bson().serialize(spec, { ignoreUndefined: true });
}

module.exports = {
  bson,
  perEventOptions,
  checkBatch,
  takeDecodeOptions,
  eventDeserializeOptions,
  decodeToken,
  encodeSpec,
  DECODE_OPTION_NAMES,
};
