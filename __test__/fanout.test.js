'use strict';
// Many streams on one connection string share one client and do not starve each other:
// every stream holds a connection during its getMore, far more streams than the driver's
// default pool of 10.

const test = require('node:test');
const assert = require('node:assert/strict');
const { watch } = require('..');
const { setup, insertSeq, seqs, range, withTimeout } = require('./helpers');

const STREAMS = 60;

test(`${STREAMS} concurrent streams on one URI each receive every event in order`, async (t) => {
  const { coll } = await setup(t);
  const streams = Array.from({ length: STREAMS }, () => watch(coll, [], { maxAwaitTimeMS: 1000 }));
  t.after(() => Promise.all(streams.map((s) => s.close())));
  const received = streams.map(() => []);
  let total = 0;
  let allReceived;
  const done = new Promise((resolve) => {
    allReceived = resolve;
  });
  const positioned = streams.map(
    (s, i) =>
      new Promise((resolve) => {
        s.once('resumeTokenChanged', resolve);
        s.on('change', (e) => {
          received[i].push(e);
          total += 1;
          if (total === STREAMS * 20) allReceived();
        });
      }),
  );
  await withTimeout(Promise.all(positioned), 60000, 'every stream to open');
  await insertSeq(coll, 0, 20);
  await withTimeout(done, 60000, `${STREAMS * 20} deliveries (got ${total})`);
  for (const r of received) assert.deepEqual(seqs(r), range(0, 20));
});
