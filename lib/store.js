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
  if (tokenStore.fence !== undefined && typeof tokenStore.fence !== 'function') {
    throw invalidOption('tokenStore.fence', 'a function fence(name, epoch) (consumer groups)', tokenStore.fence);
  }
  // A store with fence() can serve a consumer group (the engine checks that it has one).
  const fence = typeof tokenStore.fence === 'function';
  return { spec: { type: 'custom', fence }, callback: customStoreCallback(tokenStore) };
}

/**
 * The engine's view of a custom store: one function taking `{ op, name, record }` and
 * resolving to BSON. The application sees plain records (`{ token, clusterTime, … }`) and
 * may answer synchronously or with a promise.
 */
function customStoreCallback(store) {
  return async ({ op, name, record, epoch }) => {
    const { serialize, deserialize } = bson();
    if (op === 'load') {
      const loaded = await store.load(name);
      return loaded == null ? null : serialize(loaded);
    }
    if (op === 'fence') {
      // A group member's fence: true when the record's epoch is now `epoch`.
      return serialize({ ok: (await store.fence(name, epoch)) === true });
    }
    // Longs stay Longs: a cursor's Int64 key must come back exactly (not as a lossy number).
    const saved = await store.save(name, deserialize(record, { promoteLongs: false }), epoch ?? undefined);
    // A fenced save (a group member's) answers whether it was written: false = refused.
    return epoch == null ? null : serialize({ ok: saved !== false });
  };
}

module.exports = { tokenStoreOption };
