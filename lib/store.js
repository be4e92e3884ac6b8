'use strict';

const { invalidOption } = require('./error-helpers');
const { bson } = require('./decode');

/**
 * Splits `tokenStore` into what the engine gets (a plain description) and, for the
 * application's own `{ load, save }` object, the callback the engine calls it through.
 * Built-in stores ('memory', 'file', 'mongodb') are the engine's; their options are
 * validated there.
 */
function tokenStoreOption(tokenStore) {
  const isCustom =
    tokenStore !== null &&
    typeof tokenStore === 'object' &&
    (typeof tokenStore.load === 'function' || typeof tokenStore.save === 'function');
  if (!isCustom) return { spec: tokenStore, callback: undefined };
  if (typeof tokenStore.load !== 'function' || typeof tokenStore.save !== 'function') {
    throw invalidOption('tokenStore', 'an object with both load(name) and save(name, record) methods', tokenStore);
  }
  return { spec: { type: 'custom' }, callback: customStoreCallback(tokenStore) };
}

/**
 * The engine's view of a custom store: one function taking `{ op, name, record }` and
 * resolving to BSON. The application sees plain records (`{ token, clusterTime, … }`) and
 * may answer synchronously or with a promise.
 */
function customStoreCallback(store) {
  return async ({ op, name, record }) => {
    const { serialize, deserialize } = bson();
    if (op === 'load') {
      const loaded = await store.load(name);
      return loaded == null ? null : serialize(loaded);
    }
    // Longs stay Longs: a cursor's Int64 key must come back exactly (not as a lossy number).
    await store.save(name, deserialize(record, { promoteLongs: false }));
    return null;
  };
}

module.exports = { tokenStoreOption };
