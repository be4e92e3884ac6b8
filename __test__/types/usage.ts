// Typical user code against the hand-written index.d.ts. Type-checked only (never run):
// `npx tsc -p __test__/types`. Lines marked @ts-expect-error must stay errors.

import { MongoClient, Timestamp } from 'mongodb';
import type { ChangeStreamDocument, ChangeStreamInsertDocument, Document } from 'mongodb';
import {
  watch,
  ResilientChangeStream,
  ResilientCursor,
  ResilientChangeStreamError,
  ChangeStreamHistoryLostError,
  RetriesExhaustedError,
  InvalidOptionError,
  ModeConflictError,
  StreamClosedError,
  HandlerError,
  type CloseEvent,
  type ReconnectingEvent,
  type ResumeToken,
  type WatchOptions,
  type TransactionGroup,
  type LargeEventSkippedEvent,
  type ChangeStreamWithSnapshot,
} from 'resilient-change-stream';

interface Order {
  _id: string;
  total: number;
  customer: string;
}

declare function loadToken(): Promise<ResumeToken | undefined>;
declare function saveToken(token: ResumeToken): Promise<void>;

async function iterate(client: MongoClient): Promise<void> {
  const orders = client.db('shop').collection<Order>('orders');

  const options: WatchOptions = {
    fullDocument: 'updateLookup',
    resumeAfter: await loadToken(),
    batchSize: 100,
    maxAwaitTimeMS: 1000,
    backoff: { initialDelayMS: 50, multiplier: 1.5, maxDelayMS: 10_000, maxRetries: null },
  };
  const stream = watch<Order>(orders, [{ $match: { operationType: 'insert' } }], options);
  for await (const event of stream) {
    if (event.operationType === 'insert') {
      const total: number = event.fullDocument.total;
      console.log(event.documentKey._id, total);
    }
    await saveToken(stream.resumeToken);
  }

  // The schema is inferred from a typed collection; the pipeline may be left out.
  const inferred = watch(orders, { showExpandedEvents: true });
  const next = await inferred.next();
  if (next !== null && next.operationType === 'update') {
    const total: number | undefined = next.fullDocument?.total;
    console.log(total, next.updateDescription.updatedFields);
  }
  const maybe: ChangeStreamDocument<Order> | null = await inferred.tryNext();
  const has: boolean = await inferred.hasNext();
  console.log(maybe, has, inferred.closed, inferred.getResumeToken());
  inferred.stream({ transform: (change) => JSON.stringify(change) }).pipe(process.stdout);
  await inferred.close();

  // As the driver's: next() never resolves null (it rejects once closed).
  const unchecked: ChangeStreamDocument<Order> = await inferred.next();
  console.log(unchecked);
  // The driver's fields and event names.
  const pipeline: Document[] = inferred.pipeline;
  console.log(pipeline, inferred.options, inferred.namespace.db);
  inferred.on('init', (r) => console.log(r)).on('more', (r) => console.log(r)).on('response', () => {}).on('end', () => {});
  {
    await using disposable = watch<Order>(client.db('shop').collection('orders'));
    console.log(disposable.closed);
  }
}

function emitter(client: MongoClient): ResilientChangeStream<Order> {
  const stream = watch<Order>(client.db('shop').collection('orders'));
  stream
    .on('change', async (e) => {
      if (e.operationType === 'insert' && e.fullDocument.total > 100) await saveToken(e._id);
    })
    .on('reconnecting', ({ attempt, delayMs, error }: ReconnectingEvent) => {
      console.warn(`attempt ${attempt} in ${delayMs} ms:`, error.kind, error.code, error.errorLabels);
    })
    .on('resumed', (info) => console.log(info.attempts, info.downtimeMs))
    .on('resumeTokenChanged', (token) => void saveToken(token))
    .on('error', (err) => {
      if (err instanceof ChangeStreamHistoryLostError) console.error('resync needed', err.codeName);
      else if (err instanceof RetriesExhaustedError) console.error(err.message);
    })
    .once('close', (info: CloseEvent) => {
      if (info.reason === 'error') console.error(info.error.message);
    });
  return stream;
}

function explicitForm(): ResilientChangeStream {
  return new ResilientChangeStream({
    uri: 'mongodb://localhost:27017/?replicaSet=rs0',
    db: 'shop',
    collection: 'orders',
    pipeline: [{ $project: { fullDocument: 1 } }],
    startAtOperationTime: new Timestamp({ t: 1_700_000_000, i: 1 }),
    fullDocumentBeforeChange: 'whenAvailable',
    collation: { locale: 'en' },
    comment: { app: 'billing' },
    useBigInt64: true,
  });
}

// A pipeline that reshapes events: the second type argument types them.
async function reshaped(client: MongoClient): Promise<void> {
  interface Slim extends Document {
    _id: ResumeToken;
    total: number;
  }
  const stream = watch<Order, Slim>(client.db('shop').collection<Order>('orders'), [
    { $project: { total: '$fullDocument.total' } },
  ]);
  const slim = await stream.next();
  if (slim) console.log(slim.total.toFixed(2));
  const insert: ChangeStreamInsertDocument<Order> | null = null;
  console.log(insert);
}

function errors(err: unknown): void {
  if (err instanceof ResilientChangeStreamError) {
    const kind: string = err.kind;
    const code: number | undefined = err.code;
    const labels: string[] = err.errorLabels;
    const resumable: boolean = err.hasErrorLabel('ResumableChangeStreamError');
    console.log(kind, code, err.codeName, labels, resumable, err.name);
  }
  if (err instanceof InvalidOptionError) {
    const code: 'InvalidOption' = err.kind;
    console.log(code);
  }
  console.log(err instanceof ModeConflictError, err instanceof StreamClosedError);
  if (err instanceof HandlerError) {
    // A throwing change/data/resumeTokenChanged listener: what it threw, the item, the position before it.
    const code: 'HandlerFailed' = err.kind;
    const before: ResumeToken | null | undefined = err.resumeToken;
    console.log(code, err.cause, err.event, err.document, before);
  }
}

function wrongUsage(client: MongoClient, stream: ResilientChangeStream<Order>): void {
  const orders = client.db('shop').collection<Order>('orders');
  // @ts-expect-error batchSize is a number
  watch(orders, [], { batchSize: 'x' });
  // @ts-expect-error unknown option
  watch(orders, { fullDocuments: 'updateLookup' });
  // @ts-expect-error not a fullDocument mode
  watch(orders, { fullDocument: 'always' });
  // @ts-expect-error maxRetries is a count or null
  watch(orders, { backoff: { maxRetries: 'forever' } });
  // @ts-expect-error the pipeline is an array of stages
  watch(orders, '$match');
  // @ts-expect-error not a driver object
  watch('mongodb://localhost', []);
  // @ts-expect-error the explicit form needs a uri
  new ResilientChangeStream({ db: 'shop' });
  // @ts-expect-error change listeners receive the change document
  stream.on('change', (e: string) => console.log(e));
  // @ts-expect-error reconnecting info has no such field
  stream.on('reconnecting', (info) => console.log(info.retryIn));
  // @ts-expect-error a token, not a number
  stream.on('resumeTokenChanged', (token: number) => console.log(token));
  // @ts-expect-error no such event
  stream.on('changed', () => {});
  // @ts-expect-error insert documents have a typed fullDocument
  stream.on('change', (e) => e.operationType === 'insert' && e.fullDocument.missing);
}

async function namedCursor(client: MongoClient): Promise<void> {
  const orders = client.db('shop').collection<Order>('orders');
  const cursor = new ResilientCursor<Order>(orders, {
    key: '_id',
    batchSize: 500,
    name: 'orders-export',
    tokenStore: { type: 'file', path: '/var/lib/app/orders-export.json' },
    checkpoint: { everyEvents: 1000, everyMs: 5000 },
    stallTimeoutMS: 60000,
  });
  cursor.on('stalled', (info) => console.log(info.silentMs));
  for (let doc = await cursor.next(); doc !== null; doc = await cursor.next()) {
    const total: number = doc.total;
    console.log(total);
    cursor.commit();
  }
  const pending: number = cursor.health().pendingCheckpoint;
  console.log(pending);
  const again = ResilientCursor.restart<Order>(cursor.state(), client, { name: 'orders-export' });
  await again.close();
  // @ts-expect-error a name is a string
  new ResilientCursor(orders, { name: 7 });
  // @ts-expect-error checkpoint counts are numbers
  new ResilientCursor(orders, { name: 'x', checkpoint: { everyEvents: 'often' } });
}

export { iterate, emitter, explicitForm, reshaped, errors, wrongUsage, namedCursor };

// Metrics and health checks (no @opentelemetry/api types needed).
import { instrument, healthCheck, type MetricsSnapshot, type HealthReport } from 'resilient-change-stream';
declare const observed: ResilientChangeStream;
const snapshot: MetricsSnapshot = observed.metrics();
const lagNow: number | null = snapshot.lagMs;
const role: string | undefined = snapshot.group?.role;
const outages: number = observed.health().outages;
const handle: { remove(): void } = instrument([observed], { meterProvider: { getMeter: () => ({}) } });
handle.remove();
const probe = healthCheck(observed, { probe: 'readiness', maxReconnectingMs: 30000, minHeadroomMs: 3600000 });
const report: HealthReport = probe.check();
const code: 200 | 503 = report.status;
void [lagNow, role, outages, code];

// Consumer groups: the option, the lease events, the epoch on each change, a fencing store.
import { type Lease, type LeaseLostEvent, type GroupHealth, type CustomTokenStore, LeaseStoreError } from 'resilient-change-stream';
async function replicas(client: MongoClient): Promise<void> {
  const orders = client.db('shop').collection<Order>('orders');
  const grouped = watch(orders, [], {
    name: 'orders-to-search',
    tokenStore: { type: 'mongodb', db: 'app', collection: 'positions' },
    group: { leaseMs: 10000, member: 'pod-a', collection: 'leases' },
  });
  grouped.on('leaseAcquired', (lease: Lease) => console.log(lease.epoch, lease.member, lease.since.getTime()));
  grouped.on('leaseLost', (info: LeaseLostEvent) => console.log(info.reason === 'fenced', info.epoch));
  grouped.on('change', async (event, context) => console.log(event.operationType, context?.epoch));
  const held: Lease | null = grouped.lease;
  const group: GroupHealth | undefined = grouped.health().group;
  console.log(held?.epoch, group?.role === 'standby', grouped.health().state === 'standby');
  const records = new Map<string, object>();
  const fencing: CustomTokenStore = {
    load: (name) => (records.get(name) as never) ?? null,
    save: (name, record, epoch) => {
      records.set(name, { ...record, epoch });
      return epoch === undefined ? undefined : true;
    },
    fence: async () => true,
  };
  watch(orders, { name: 'x', tokenStore: fencing, group: {} });
  // @ts-expect-error leaseMs is a number
  watch(orders, { name: 'x', group: { leaseMs: '10s' } });
  // @ts-expect-error no such lease-loss reason
  grouped.on('leaseLost', (info) => info.reason === 'expired');
  // Partitions: where the split happens, and what health says of it.
  const parts = watch(orders, [], { name: 'p', tokenStore: fencing, group: { partitions: 6, split: 'client' } });
  parts.on('change', (_event, context) => console.log(context?.partition));
  const split: 'server' | 'client' | null | undefined = parts.health().group?.split;
  console.log(split, parts.health().group?.membersAlive);
  // @ts-expect-error the server split is chosen at run time ('auto'), not forced
  watch(orders, { name: 'p', group: { partitions: 6, split: 'server' } });
  console.log(new LeaseStoreError('x').kind);
  await grouped.close();
}
export { replicas };

// Large events and transactions (issue #16).
async function transactionsAndLargeEvents(client: MongoClient): Promise<void> {
  type Change = ChangeStreamDocument<Order>;
  const orders = client.db('shop').collection<Order>('orders');
  const stream = watch<Order, Change | TransactionGroup<Change>>(orders, [], {
    transactions: 'group',
    onLargeEvent: 'skip',
    splitLargeEvents: true,
  });
  stream.on('transaction', async (txn, context) => {
    const events: Change[] = txn.events;
    const token: ResumeToken = txn._id;
    void [events, token, txn.lsid, txn.txnNumber, context?.epoch];
  });
  stream.on('change', (item) => {
    if (item.operationType === 'transaction') {
      const count: number = item.events.length; // no 'transaction' listener: it comes here
      void count;
    }
  });
  stream.on('largeEventSkipped', (info: LargeEventSkippedEvent) => {
    const size: number = info.sizeBytes;
    void [size, info.resumeToken, info.documentKey, info.ns?.db];
  });
  const item = await stream.next().catch(() => null);
  if (item && item.operationType === 'transaction') void item.events[0];
  // @ts-expect-error not a policy
  watch(orders, [], { onLargeEvent: 'truncate' });
  // @ts-expect-error not a mode
  watch(orders, [], { transactions: true });
  await stream.close();
}
void transactionsAndLargeEvents;

// Initial snapshot (issue #15): copied documents, then changes; the typings tell them apart.
async function copyThenStream(client: MongoClient): Promise<void> {
  const orders = client.db('shop').collection<Order>('orders');
  const copy = new Map<string, Order>();
  const stream = watch(orders, [], {
    name: 'orders-to-search',
    tokenStore: { type: 'file', path: '/var/lib/app/positions.json' },
    initialSnapshot: { batchSize: 1000, filter: { total: { $gt: 0 } }, onHistoryLost: 'restart' },
  });
  stream.on('change', (event) => {
    if (event.operationType === 'snapshot') {
      const key: string = event.documentKey._id;
      copy.set(key, event.fullDocument);
      // @ts-expect-error a copied document has no resume token
      console.log(event._id);
    } else if (event.operationType === 'insert' || event.operationType === 'replace') {
      copy.set(event.documentKey._id, event.fullDocument);
    } else if (event.operationType === 'delete') {
      copy.delete(event.documentKey._id);
    }
  });
  const simple = watch(orders, { initialSnapshot: true, name: 'simple' });
  const first = await simple.next();
  if (first?.operationType === 'snapshot') console.log(first.fullDocument.total);
  const recovering = watch(orders, { name: 'cache', onHistoryLost: 'resnapshot' });
  recovering.on('change', (event: ChangeStreamWithSnapshot<Order>) => console.log(event.operationType));
  // Without a copy, the events are the driver's (no 'snapshot').
  const plain = watch(orders, { name: 'plain' });
  plain.on('change', (event) => {
    // @ts-expect-error a plain stream has no snapshot events
    if (event.operationType === 'snapshot') console.log(event);
  });
  // @ts-expect-error onHistoryLost of a snapshot is 'error' or 'restart'
  watch(orders, { initialSnapshot: { onHistoryLost: 'resumeFromNow' } });
  const explicit = new ResilientChangeStream<Order, ChangeStreamWithSnapshot<Order>>({
    uri: 'mongodb://localhost',
    db: 'shop',
    collection: 'orders',
    initialSnapshot: true,
  });
  await Promise.all([stream.close(), simple.close(), recovering.close(), plain.close(), explicit.close()]);
}
export { copyThenStream };
