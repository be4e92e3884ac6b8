// Hand-written typings for resilient-change-stream (the JS facade in index.js / lib/).
// Driver types come from `mongodb`, an optional peer dependency: `import type` only.

import { EventEmitter } from 'node:events';
import { Readable } from 'node:stream';
// @ts-ignore -- `mongodb` is an optional peer: without it these driver types are `any` and
// everything still type-checks under `strict`; with it, events have the driver's own types.
import type { ChangeStreamDocument, Collection, CollationOptions, Db, Document, Long, MongoClient, ResumeToken, Timestamp } from 'mongodb';

export type { ResumeToken };

/**
 * How the engine waits between re-open attempts after a resumable failure: exponential
 * backoff with full jitter. Attempt n waits a random delay between 0 and
 * `min(maxDelayMS, initialDelayMS × multiplier^(n-1))`, so many clients do not reconnect in
 * lockstep after a shared outage.
 */
export interface BackoffOptions {
  /** Ceiling of the first re-open delay, in milliseconds. @default 100 */
  initialDelayMS?: number;
  /** Factor applied to the ceiling after each failed attempt. @default 2 */
  multiplier?: number;
  /** Cap of the ceiling, in milliseconds. @default 30000 */
  maxDelayMS?: number;
  /**
   * Failed re-open attempts in a row after which the stream closes with a
   * {@link RetriesExhaustedError}. `null` or absent: retry forever. @default null
   */
  maxRetries?: number | null;
}

/**
 * Options of {@link watch}. Types are validated by the engine: a bad value throws an
 * {@link InvalidOptionError} naming the option, as does an unknown option.
 */
export interface WatchOptions {
  /**
   * Connection string. Default for {@link watch}: the one the target's MongoClient was built
   * with (plus user name/password given in its `auth` option). Other MongoClient options
   * (TLS files, …) are not carried over: put them in the string.
   */
  uri?: string;
  /** `$changeStream.fullDocument`: 'default' | 'updateLookup' | 'whenAvailable' | 'required'. */
  fullDocument?: 'default' | 'updateLookup' | 'whenAvailable' | 'required';
  /** `$changeStream.fullDocumentBeforeChange`: 'off' | 'whenAvailable' | 'required'. */
  fullDocumentBeforeChange?: 'off' | 'whenAvailable' | 'required';
  /** Resume after this token (e.g. a persisted {@link ResilientChangeStream.resumeToken}). */
  resumeAfter?: ResumeToken;
  /** Like `resumeAfter`, but can also continue after an `invalidate` event. */
  startAfter?: ResumeToken;
  /** Start at this cluster time. */
  startAtOperationTime?: Timestamp;
  /** Events per batch the server returns. */
  batchSize?: number;
  /** How long the server waits for new events before returning an empty batch, in ms. */
  maxAwaitTimeMS?: number;
  /** Also report DDL events (createIndexes, create, modify, …). MongoDB 6.0+. */
  showExpandedEvents?: boolean;
  collation?: CollationOptions;
  /** Attached to the `aggregate` command (visible in logs and currentOp). */
  comment?: unknown;
  /** Reconnection policy. Default: 100 ms initial delay, ×2, 30 s cap, retry forever. */
  backoff?: BackoffOptions;
  /**
   * Stall watchdog: when no server reply comes within `maxAwaitTimeMS` plus this, or — on a
   * server seen to advance idle streams (mongod does every ~10 s) — the position does not
   * advance for this long, emit `stalled` and re-open from the last position. `0` turns it
   * off. @default 30000
   */
  /**
   * Emitter mode: up to this many `change` listeners run at once, never two for the same
   * `documentKey`, and each document's events in order (an event without a documentKey runs
   * alone, after everything before it). The position (resume token, checkpoints) moves only
   * over the contiguous prefix of finished events: a crash never skips an unfinished one.
   * Iterators stay sequential. 1 to 1000. @default 1
   */
  concurrency?: number;
  stallTimeoutMS?: number;
  /**
   * Where the engine's log lines go: a pino- or console-style object; each line is
   * `logger[level]({ component, namespace, ...fields }, message)`. Connection strings and
   * credentials are redacted. Default: silent.
   */
  logger?: StreamLogger;
  /** `headroomLow` fires when the position is within this fraction of the oplog window from its oldest end. @default 0.1 */
  headroomLowFraction?: number;
  /** How often to check the oplog headroom, at most 2^31-1 ms; `0` turns the check off. @default 60000 */
  headroomCheckIntervalMS?: number;
  /**
   * Names this consumer's position. With a name, processed positions are checkpointed to
   * `tokenStore` (default: in-process memory) and a new stream with the same name continues
   * where the last one stopped. Consumers with different names keep independent positions.
   */
  name?: string;
  /**
   * Where positions are kept. An explicit `resumeAfter`/`startAfter`/`startAtOperationTime`
   * wins over a stored position. @default { type: 'memory' }
   */
  tokenStore?: TokenStoreOption;
  /** When positions are written (and always by `close()`). */
  checkpoint?: CheckpointOptions;
  /** Use a stored position even if it was written for another namespace or pipeline. @default false */
  allowPositionMismatch?: boolean;
  /**
   * Join a consumer group: every process opening this `name` with a `group` shares one
   * position, and exactly one of them (the lease holder) reads and hands out events; the
   * others wait as standbys and take over when it dies, stops renewing, or closes. Needs a
   * `tokenStore` every member shares that fences writes: `{ type: 'mongodb', … }` or a custom
   * store with `fence()`. In a group, a stored position wins over `resumeAfter`/`startAfter`/
   * `startAtOperationTime` (those apply only when nothing is stored yet). When nothing is
   * stored, the first position read is stored at once, not at the `checkpoint` pace: a
   * member killed before its first checkpoint leaves its successor that position.
   */
  group?: GroupOptions;
  /**
   * The position fell off the oplog (286): `'error'` closes the stream with a
   * {@link ChangeStreamHistoryLostError}; `'resumeFromNow'` continues from the present;
   * `'resnapshot'` (collection streams) copies the collection again — {@link SnapshotEvent}s
   * — then streams from the copy's start time.
   * Either way `historyLost` is emitted first. @default 'error'
   */
  onHistoryLost?: 'error' | 'resumeFromNow' | 'resnapshot';
  /**
   * Deliver every document that exists first (as {@link SnapshotEvent}s, `operationType:
   * 'snapshot'`, in `_id` order), then every change from the moment the copy began: no gap
   * at the seam. A document changed while the copy ran may arrive twice (its copied state,
   * then its changes), never zero times. One updated and then deleted before the copy reached
   * it is not copied, but its `update` still arrives, then its `delete`: skip an update of a
   * document you do not hold. A named stream stores the copy's progress: a
   * restart continues after the last processed document. Collection streams only; not with
   * `resumeAfter`/`startAfter`/`startAtOperationTime`. Use {@link watch} (its overloads type
   * the events) or `ResilientChangeStream<TSchema, ChangeStreamWithSnapshot<TSchema>>`.
   */
  initialSnapshot?: true | InitialSnapshotOptions;
  /**
   * After an `invalidate` (drop/rename of what is watched): `'close'` ends the stream, like
   * the driver; `'restart'` continues with `startAfter` the invalidate token, so a dropped
   * and re-created collection keeps streaming. `invalidate` is emitted either way. @default 'close'
   */
  onInvalidate?: 'close' | 'restart';
  /**
   * Open with `$changeStreamSplitLargeEvent` (MongoDB 7.0+, 6.0.9+) from the start. Without
   * it the stage is added only after the server fails the stream on an event over 16 MB
   * (BSONObjectTooLarge, 10334): the stream re-opens from its last position with the stage
   * and keeps it. Either way events split into fragments are joined (see `onLargeEvent`), and
   * no position inside a fragment group is ever stored. @default false
   */
  splitLargeEvents?: boolean;
  /**
   * An event over 16 MB (split into fragments by `$changeStreamSplitLargeEvent`): `'split'`
   * joins the fragments and hands out the event whole, as if there were no limit; `'error'`
   * closes the stream with an error (`serverCode` 10334) naming its token, documentKey and
   * size; `'skip'` emits `largeEventSkipped` instead and the position moves past it.
   * A server without the stage closes the stream with an `InvalidPipeline` error naming the
   * position and what to do. @default 'split'
   */
  onLargeEvent?: 'split' | 'error' | 'skip';
  /**
   * `'group'`: the events of one multi-document transaction (same `lsid` and `txnNumber`) are
   * handed out together, as one {@link TransactionGroup} (`operationType: 'transaction'`):
   * to `transaction` listeners if there are any (else to `change` listeners), or from
   * `next()`. Positions move only at transaction boundaries, so a consumer that stops never
   * resumes inside a transaction. A transaction is handed out once the next event (or the
   * server's position) shows it ended: at the end of the oplog that is the next write, or
   * the server's idle position advance (mongod: about every 10 s). A transaction counts as
   * one item for `checkpoint.everyEvents`/`maxUnsavedEvents`. Events outside transactions
   * flow as usual. @default 'separate'
   */
  transactions?: 'separate' | 'group';

  // How events are decoded, as the driver's BSON options (defaults: the driver's, or those of
  // the watch() target). JS-only: they never reach the engine.
  /** Return int64 as `number` when it fits. @default true */
  promoteLongs?: boolean;
  /** Return BSON numbers/strings as JS values rather than BSON wrapper classes. @default true */
  promoteValues?: boolean;
  /** Return binary data as `Buffer` rather than `Binary`. @default false */
  promoteBuffers?: boolean;
  /** Return int64 as `bigint`. @default false */
  useBigInt64?: boolean;
  /** Return regular expressions as `BSONRegExp` rather than `RegExp`. @default false */
  bsonRegExp?: boolean;
  /** Reject strings that are not valid UTF-8. @default true */
  enableUtf8Validation?: boolean;
}

/** Options of `new ResilientChangeStream(...)`: the explicit form of {@link watch}. */
export interface ResilientChangeStreamOptions extends WatchOptions {
  uri: string;
  /** Database to watch. Absent: the whole cluster. */
  db?: string;
  /** Collection to watch (requires `db`). Absent: the whole database. */
  collection?: string;
  /** Aggregation stages appended after `$changeStream`. */
  pipeline?: Document[];
}

/** Payload of the `reconnecting` event: a resumable failure; the engine retries after `delayMs`. */
export interface ReconnectingEvent {
  /** 1 for the first re-open attempt after the failure. */
  attempt: number;
  delayMs: number;
  error: ResilientChangeStreamError;
}

/** A stored position, as a custom store receives and returns it. */
export interface PositionRecord {
  version: number;
  name: string;
  token: ResumeToken;
  /** Cluster time of the last processed event, when known. */
  clusterTime: Timestamp | null;
  /** The token is an invalidate token: continue with `startAfter`. */
  startAfter: boolean;
  /** Hash of the namespace, pipeline and options that shape the events. */
  fingerprint: string;
  namespace: string;
  writtenAt: Date;
}

/** Your own store (Redis, Postgres, …); methods may be async. */
export interface CustomTokenStore {
  load(name: string): PositionRecord | null | undefined | Promise<PositionRecord | null | undefined>;
  /**
   * Stores `record` under `name`. With `epoch` (a consumer group's member writes): store it
   * only if the stored record's `epoch` is at most `epoch` (or it has none), in one atomic
   * step, and return `false` when refused.
   */
  save(name: string, record: PositionRecord, epoch?: number): void | boolean | Promise<void | boolean>;
  /**
   * Consumer groups only: atomically raise the stored record's `epoch` to `epoch` (creating
   * `{ epoch }` if there is no record), unless it already holds `epoch` or a higher one;
   * `true` when raised. After this, saves with a lower epoch must be refused.
   */
  fence?(name: string, epoch: number): boolean | Promise<boolean>;
}

/** The `group` option: see {@link WatchOptions.group}. */
export interface GroupOptions {
  /**
   * How long a holder that stops renewing keeps the lease. A dead, partitioned or blocked
   * holder is replaced after about this long; it renews every `leaseMs / 4`. At least 200.
   * @default 10000
   */
  leaseMs?: number;
  /** This process's name in the group (`health().group`, the lease document). @default `${hostname}:${pid}:${random}` */
  member?: string;
  /** The deployment holding the leases. @default the token store's `uri`, else the stream's */
  uri?: string;
  /** @default 'resilient_change_stream' */
  db?: string;
  /** One document per group (`_id`: the stream's name). @default 'leases' */
  collection?: string;
  /**
   * Split the stream's events by a stable hash of `documentKey` into this many partitions
   * (an integer 1–1024), each with its own lease and stored position (`<name>#p<i>`):
   * members share them fairly and read only theirs, one change stream each. Per-document
   * order holds across hand-overs. The hash is MongoDB's hashed-index hash of the
   * `documentKey` (`$toHashedIndexKey`). See the README's "Partitions".
   */
  partitions?: number;
  /**
   * Where a partitioned member's events are split. `'auto'`: on the server when it can
   * (`$toHashedIndexKey`, MongoDB 7.0+, detected at the first open: each member then
   * receives only its partitions' events), else in this process (each member receives every
   * event and keeps its own). `'client'`: always in this process (no per-event work on the
   * server). Only with `partitions`. @default 'auto'
   */
  split?: 'auto' | 'client';
}

/** What a group member holds while it reads ({@link ResilientChangeStream.lease}, `leaseAcquired`). */
export interface Lease {
  /** Higher for every acquisition; fences the stored position (and can fence your writes). */
  epoch: number;
  member: string;
  since: Date;
  /** A partitioned group (`group.partitions`): the partition whose lease this is. */
  partition?: number;
}

/** Payload of `leaseLost`: this member stopped reading; what it had not handed out is dropped. */
export interface LeaseLostEvent {
  epoch: number;
  /**
   * `'takenOver'`: another member holds it (this one's lapsed); `'fenced'`: the token store
   * refused a position write (a later holder fenced it); `'renewFailed'`: the lease collection
   * could not be reached before the lease ran out; `'unresponsive'`: this process's event
   * loop did not run for half a lease, so renewals stopped.
   */
  reason: 'takenOver' | 'fenced' | 'renewFailed' | 'unresponsive' | 'rebalanced';
  /** A partitioned group: the partition whose lease it was (`'rebalanced'`: handed over to
   * the member it is assigned to now, after its position was stored). */
  partition?: number;
}

/**
 * The second argument of `change` listeners in a group: the tenure the event was read under
 * (a partitioned member's: the event's partition and that partition's epoch).
 */
export interface ChangeContext {
  /** The epoch of the lease the event was read under (its partition's, in a partitioned group). */
  epoch: number;
  /** A partitioned group (`group.partitions`): the event's partition. */
  partition?: number;
}

/** A group member's part of `health()`. */
export interface GroupHealth {
  member: string;
  role: 'holder' | 'standby' | 'stopped';
  /** Who holds the lease, as last seen (null: nobody, or it was released). */
  holder: string | null;
  epoch: number | null;
  /** Since when the holder holds it. */
  since: Date | null;
  leaseMs: number;
  /** Leases this member acquired. */
  takeovers: number;
  /** A partitioned group: the partitions this member holds now (ascending). */
  partitions?: number[];
  /** A partitioned group: how many partitions it has. */
  partitionCount?: number | null;
  /** A partitioned group: how many members this one counts alive (itself included). */
  membersAlive?: number | null;
  /**
   * A partitioned group: where this member's events are split — `'server'` (the server
   * sends only its partitions' events) or `'client'`; null until its stream first opened.
   */
  split?: 'server' | 'client' | null;
}

export type TokenStoreOption =
  | { type: 'memory' }
  /** One file per consumer; written atomically (temp file, fsync, rename), mode 0600. */
  | { type: 'file'; path: string }
  /** One document per name (`_id: name`), upserted; `uri` defaults to the stream's. */
  | { type: 'mongodb'; uri?: string; db: string; collection: string }
  | CustomTokenStore;

export interface CheckpointOptions {
  /** Write after this many processed events. @default 1000 */
  everyEvents?: number;
  /** …or this long after the last write (also for quiet streams whose position advances). @default 1000 */
  everyMs?: number;
  /**
   * Stop handing out events while this many processed events are unsaved (a store that is
   * down): at no time are more than this many processed but not stored.
   * @default max(10000, 10 × everyEvents)
   */
  maxUnsavedEvents?: number;
}

/**
 * The events of one multi-document transaction, handed out together (`transactions: 'group'`).
 * With it, type the stream's items as `TChange | TransactionGroup<TChange>`.
 */
export interface TransactionGroup<TChange extends Document = ChangeStreamDocument> {
  operationType: 'transaction';
  /** The resume token after the whole transaction (its last event's `_id`). */
  _id: ResumeToken;
  /** The session and transaction number every event of it carries. */
  lsid: Document;
  txnNumber: number | bigint | Long;
  /** The cluster time of its last event. */
  clusterTime?: Timestamp;
  /** Its events, in order (with `onLargeEvent: 'skip'`, a skipped one is its notice document). */
  events: TChange[];
}

/** Payload of `largeEventSkipped` (`onLargeEvent: 'skip'`): the event over 16 MB that was not handed out. */
export interface LargeEventSkippedEvent {
  /** Its token: the stored position moves past it. */
  resumeToken: ResumeToken;
  operationType: string | null;
  ns: { db: string; coll?: string } | null;
  documentKey: Document | null;
  clusterTime: Timestamp | null;
  /** The size of the event joined from its fragments. */
  sizeBytes: number;
  fragments: number;
}

/** `initialSnapshot` as a document. */
export interface InitialSnapshotOptions {
  /** Documents per `find` batch of the copy. Default: the server's. */
  batchSize?: number;
  /**
   * Which documents the copy delivers (a `find` filter; the stream's pipeline filters change
   * events, not documents). Part of the stored position's shape. @default {}
   */
  filter?: Document;
  /**
   * The copy's start time fell off the oplog before the stream began from it (the copy
   * outlasted the oplog window): `'error'` closes the stream with a
   * {@link ChangeStreamHistoryLostError}; `'restart'` copies again from the beginning with
   * a new start time. `historyLost` is emitted either way. @default 'error'
   */
  onHistoryLost?: 'error' | 'restart';
}

/**
 * A copied document (`initialSnapshot`, or a re-copy after `onHistoryLost: 'resnapshot'`):
 * apply it as an upsert. It has no `_id` (no resume token: the copy is no position in the
 * change stream) and no `clusterTime`; `operationType: 'snapshot'` tells it from a live
 * `insert`. Every snapshot event comes before the first change of the stream that follows.
 */
export interface SnapshotEvent<TSchema extends Document = Document> {
  operationType: 'snapshot';
  ns: { db: string; coll: string };
  documentKey: { _id: TSchema extends { _id: infer I } ? I : unknown };
  fullDocument: TSchema;
}

/** The events of a stream with an initial snapshot: copied documents, then changes. */
export type ChangeStreamWithSnapshot<TSchema extends Document = Document> = SnapshotEvent<TSchema> | ChangeStreamDocument<TSchema>;

/** Payload of `historyLost`: events in (from, to] may be missing; backfill them. */
export interface HistoryLostEvent {
  from: Timestamp | null;
  to: Timestamp | null;
}

/** A pino- or console-style logger (any of the four methods may be missing). */
export interface StreamLogger {
  debug?(fields: Record<string, unknown>, message: string): void;
  info?(fields: Record<string, unknown>, message: string): void;
  warn?(fields: Record<string, unknown>, message: string): void;
  error?(fields: Record<string, unknown>, message: string): void;
}

/** What {@link ResilientChangeStream.oplogWindow} reports (times at seconds precision). */
export interface OplogWindow {
  /** false when the server cannot tell; see `reason`. */
  available: boolean;
  oldest: Date | null;
  newest: Date | null;
  /** Cluster time of the stream's position. */
  position: Date | null;
  windowMs: number | null;
  /** From the oldest entry to the position; negative once it has fallen off. */
  headroomMs: number | null;
  /** The position is older than the oldest entry: resuming from it would fail (286). */
  lost: boolean | null;
  /** Within `headroomLowFraction` of the window (or lost). */
  low: boolean | null;
  reason: string | null;
}

/** Payload of the `stalled` event: no progress for `silentMs`; a re-open follows. */
export interface StalledEvent {
  silentMs: number;
}

/**
 * The last error, as {@link ResilientChangeStream.health} and {@link ResilientCursor.health}
 * report it: plain data (JSON-safe for monitoring; an Error would lose its message in
 * `JSON.stringify`), redacted. The error that closed the reader, else the engine's last one.
 */
export interface HealthError {
  name: string;
  /** The stable kind (the error's `kind`). */
  kind: ErrorKind | (string & {});
  message: string;
  /** The server's numeric code, when the server reported the error. */
  code?: number;
  codeName?: string;
}

/**
 * The engine's counters, in every reader's `health()` (what {@link ResilientChangeStream.metrics}
 * and {@link instrument} report).
 */
export interface ReaderCounters {
  /** Batches read from the server. */
  batches: number;
  /** Outages begun (a first failed attempt after progress). */
  outages: number;
  /** Time spent down in all outages, the one under way included. */
  downtimeMs: number;
  /** How long the outage under way has lasted; null when not reconnecting. */
  currentOutageMs: number | null;
  /** Times the stall watchdog fired. */
  stalls: number;
  /** Positions written to the token store (0 without a `name`). */
  checkpointsSaved: number;
  /** Failed position writes (every try counts). */
  checkpointFailures: number;
  /** When a position was last written. */
  lastCheckpointAt: Date | null;
}

/** What `metrics()` reports: a plain, synchronous snapshot (no OpenTelemetry needed). */
export interface MetricsSnapshot {
  /** The reader's `name` (null: unnamed). */
  stream: string | null;
  /** `db.coll`, `db` or `<cluster>`; never the connection string. */
  namespace: string;
  state: 'starting' | 'streaming' | 'reconnecting' | 'closed' | 'failed';
  eventsDelivered: number;
  batches: number;
  reconnects: number;
  outages: number;
  downtimeMs: number;
  currentOutageMs: number | null;
  stalls: number;
  lagMs: number | null;
  backoffMs: number | null;
  checkpointWrites: number;
  checkpointFailures: number;
  unsavedEvents: number;
  /** Since the position was last written (null: never). */
  checkpointAgeMs: number | null;
  /** From the last oplog window check (`oplogWindow()`, the headroom watch); null: none yet. */
  headroomMs: number | null;
  headroomCheckedAt: Date | null;
  /** A consumer group member's role, epoch and takeovers; null without a group. */
  group: { role: string; epoch: number | null; takeovers: number; holder: string | null } | null;
}

/** What {@link ResilientChangeStream.health} reports. */
export interface StreamHealth extends ReaderCounters {
  /** `'standby'`: a consumer group's member waiting for the lease. */
  state: 'starting' | 'standby' | 'streaming' | 'reconnecting' | 'closed' | 'failed';
  /** When the last event was handed to the application. */
  lastEventAt: Date | null;
  /** When the position last advanced (an event, or the server's postBatchResumeToken). */
  lastTokenAt: Date | null;
  /** Wall clock minus the cluster time of the position (seconds precision); null if unknown. */
  lagMs: number | null;
  /** Resumable failures since the stream started. */
  reconnects: number;
  /** The backoff delay being waited out now, if reconnecting. */
  currentBackoffMs: number | null;
  /** The last error seen (resumable or not), redacted. */
  lastError: HealthError | null;
  /** Events handed to the application. */
  eventsDelivered: number;
  /** Events processed but whose position is not yet stored. */
  pendingCheckpoint: number;
  /** Present for a consumer group's member. */
  group?: GroupHealth;
}

/** Payload of the `resumed` event: the stream delivers again after an outage. */
export interface ResumedEvent {
  attempts: number;
  downtimeMs: number;
}

/**
 * Payload of the `close` event (emitted exactly once): closed by `close()`, ended because the
 * watched collection/database was dropped or renamed (after the `invalidate` event), or
 * closed by an error.
 */
export type CloseEvent =
  | { reason: 'closed' | 'invalidate'; error?: undefined }
  | { reason: 'error'; error: Error };

export type WatchTarget<TSchema extends Document = Document> = Collection<TSchema> | Db | MongoClient;

/**
 * A drop-in for the driver's `ChangeStream` that never loses its place: it re-opens after
 * any resumable failure (with backoff, by default forever) from the last position.
 *
 * Use it either as an iterator (`next`, `hasNext`, `tryNext`, `for await`, `stream`) or as an
 * emitter (`on('change')`); mixing the two throws a {@link ModeConflictError}.
 */
export declare class ResilientChangeStream<
  TSchema extends Document = Document,
  TChange extends Document = ChangeStreamDocument<TSchema>,
> extends EventEmitter {
  /** @throws InvalidOptionError for a bad option. */
  constructor(options: ResilientChangeStreamOptions);

  /**
   * The resume token after the last event handed out (in emitter mode: after the last event
   * whose listeners all completed). Before any event: `startAfter`/`resumeAfter`, or `null`.
   * Persist it (e.g. on `resumeTokenChanged`) and pass it as `resumeAfter` to continue later.
   */
  readonly resumeToken: ResumeToken;
  /** Same as {@link resumeToken}. */
  getResumeToken(): ResumeToken;
  /** `true` once `close()` was called or a fatal error closed the stream. */
  readonly closed: boolean;
  /** What the stream is doing, synchronously. */
  health(): StreamHealth;
  /** A consumer group's member: the lease it holds, or null (a standby, or not in a group). */
  readonly lease: Lease | null;
  /** Its metrics now, as plain data (what {@link instrument} reports through OpenTelemetry). */
  metrics(): MetricsSnapshot;
  /**
   * Iterator mode with a token store: the event last handed out is processed (otherwise that
   * is assumed when the next event is asked for, or at `close()`).
   */
  commit(): void;
  /** The oplog window and this stream's headroom in it. */
  oplogWindow(): Promise<OplogWindow>;

  /**
   * The next event, waiting as long as it takes (outages included). As the driver's, it never
   * resolves null: it rejects with the error that closed the stream, or with
   * {@link StreamClosedError} once it is closed (also when `close()` is called meanwhile).
   * @throws StreamClosedError when called on a closed stream.
   */
  next(): Promise<TChange>;
  /** Waits until an event is available (`true`) or the stream is closed meanwhile (`false`). */
  hasNext(): Promise<boolean>;
  /**
   * The next event if one is available, else `null`, after at most one server round trip (as
   * the driver's: bounded by `maxAwaitTimeMS`, default the server's 1 s); a later `next()` gets
   * what arrives after that.
   */
  tryNext(): Promise<TChange | null>;
  /** `await using stream = watch(…)` closes the stream at the end of the scope. */
  [Symbol.asyncDispose](): Promise<void>;
  /** The pipeline given (after `$changeStream`), as the driver's `ChangeStream.pipeline`. */
  readonly pipeline: Document[];
  /** The options given (without `uri`), as the driver's `ChangeStream.options`. */
  readonly options: Record<string, unknown>;
  /** What is watched: `{ db, collection }`, `{ db }`, or `{}` for the whole cluster. */
  readonly namespace: { db?: string; collection?: string };
  /** Iterates until the stream is closed; leaving the loop closes the stream. */
  [Symbol.asyncIterator](): AsyncGenerator<TChange, void, void>;
  /**
   * A Readable (object mode) of the events which, unlike the driver's, keeps resuming. It ends
   * when the stream is closed; destroying it closes the stream.
   */
  stream(options?: { transform?: (change: TChange) => unknown }): Readable;
  /** Closes the stream and its server cursor. Idempotent; no timers or sockets remain. */
  close(): Promise<void>;

  /** Listens for an event (see {@link ResilientChangeStreamEvents}); `change` switches to emitter mode. */
  on<E extends keyof ResilientChangeStreamEvents<TChange>>(
    event: E,
    listener: ResilientChangeStreamEvents<TChange>[E],
  ): this;
  once<E extends keyof ResilientChangeStreamEvents<TChange>>(
    event: E,
    listener: ResilientChangeStreamEvents<TChange>[E],
  ): this;
  addListener<E extends keyof ResilientChangeStreamEvents<TChange>>(
    event: E,
    listener: ResilientChangeStreamEvents<TChange>[E],
  ): this;
  prependListener<E extends keyof ResilientChangeStreamEvents<TChange>>(
    event: E,
    listener: ResilientChangeStreamEvents<TChange>[E],
  ): this;
  prependOnceListener<E extends keyof ResilientChangeStreamEvents<TChange>>(
    event: E,
    listener: ResilientChangeStreamEvents<TChange>[E],
  ): this;
  off<E extends keyof ResilientChangeStreamEvents<TChange>>(
    event: E,
    listener: ResilientChangeStreamEvents<TChange>[E],
  ): this;
  removeListener<E extends keyof ResilientChangeStreamEvents<TChange>>(
    event: E,
    listener: ResilientChangeStreamEvents<TChange>[E],
  ): this;
}

/** Listener types of each {@link ResilientChangeStream} event. */
export interface ResilientChangeStreamEvents<TChange extends Document = ChangeStreamDocument> {
  /**
   * Each event, in order. Switches to emitter mode and starts delivering. Async listeners are
   * awaited before the next event; a listener that throws (or rejects) closes the stream with
   * a {@link HandlerError} (`cause`: what it threw), and the resume token does not move past
   * that event. Every other event's listeners are observers except `resumeTokenChanged`: what
   * they throw is reported with `process.emitWarning` (type
   * 'ResilientChangeStreamListenerWarning') and the stream goes on.
   */
  change: (change: TChange, context?: ChangeContext) => void | Promise<void>;
  /** A consumer group's member took the lease: it reads from the stored position now. */
  leaseAcquired: (lease: Lease) => void;
  /** A consumer group's member stopped reading (it waits as a standby). */
  leaseLost: (info: LeaseLostEvent) => void;
  /** A resumable failure; the engine re-opens after `info.delayMs`. */
  reconnecting: (info: ReconnectingEvent) => void;
  /** Events flow again after an outage. */
  resumed: (info: ResumedEvent) => void;
  /** The stall watchdog fired; the stream re-opens from its last position. */
  stalled: (info: StalledEvent) => void;
  /** The position came within `headroomLowFraction` of falling off the oplog (once per episode). */
  headroomLow: (window: OplogWindow) => void;
  /** The position fell off the oplog; events in the interval may be missing. */
  historyLost: (info: HistoryLostEvent) => void;
  /** The watched collection/database was dropped or renamed (after the `change` for it). */
  invalidate: (change: TChange) => void;
  /**
   * The driver's cursor events, typed so that code written for the driver compiles. This
   * stream does not emit `init`, `more` or `response` (it has no driver cursor; see the
   * README's "Differences from the driver"); its end is the `close` event.
   */
  init: (response: Document) => void;
  more: (response: Document) => void;
  response: () => void;
  end: () => void;
  /**
   * `transactions: 'group'`: one whole transaction, its events in order. Processing, like
   * `change` (awaited; a throw closes the stream with a {@link HandlerError} and the position
   * stays before the transaction). Without a `transaction` listener they go to `change`
   * listeners. `change` listeners drive the stream: add one too.
   */
  transaction: (
    transaction: TransactionGroup<Exclude<TChange, TransactionGroup<any>>>,
    context?: ChangeContext,
  ) => void | Promise<void>;
  /** `onLargeEvent: 'skip'`: an event over 16 MB was skipped; the position moved past it. */
  largeEventSkipped: (info: LargeEventSkippedEvent) => void;
  /**
   * The resume token moved (after each event, and when the server advanced an idle stream).
   * Part of processing (persist the token here): a throw closes the stream with a
   * {@link HandlerError} and the token stays before that event.
   */
  resumeTokenChanged: (token: ResumeToken) => void;
  /**
   * What the stream cannot survive (history lost, auth, bad pipeline, retries exhausted, a
   * throwing `change`/`resumeTokenChanged` listener: {@link HandlerError}). Emitted in emitter
   * mode, and in iterator mode when listened for (the iterator gets it from `next()`); in
   * emitter mode without an `error` listener it is thrown, as by any EventEmitter.
   * Followed by `close`.
   */
  error: (error: Error) => void;
  /** The stream closed (exactly once): by `close()`, by invalidation, or by an error. */
  close: (info: CloseEvent) => void;
}

/**
 * The drop-in for `target.watch(pipeline, options)`: watches a Collection, a Db or a whole
 * cluster (MongoClient) through its connection string, and keeps resuming.
 * @throws InvalidOptionError for a bad option or an unrecognised target.
 */
/** Where {@link instrument} creates its instruments (structural: no dependency on @opentelemetry/api's types). */
export interface InstrumentOptions {
  /** A Meter (`@opentelemetry/api`'s). */
  meter?: unknown;
  /** A MeterProvider; default: the global one (`@opentelemetry/api` must be installed). */
  meterProvider?: { getMeter(name: string, version?: string): unknown };
}

/**
 * Reports readers through OpenTelemetry instruments (`rcs.*`, attributes `stream` and
 * `namespace`): observable ones read `health()` when the exporter collects; `rcs.reconnects`
 * and `rcs.outages` count `reconnecting` events by `error.kind`. A reader closed on purpose
 * stops being reported; a failed one stays until `remove()`.
 */
export declare function instrument(
  readers: ResilientChangeStream<any, any> | ResilientCursor<any> | Array<ResilientChangeStream<any, any> | ResilientCursor<any>>,
  options?: InstrumentOptions,
): { remove(): void };

export interface HealthCheckOptions {
  /** 'readiness' also counts a reader still starting as not ready. Default 'liveness'. */
  probe?: 'liveness' | 'readiness';
  /** An outage longer than this is unhealthy. Default 60000. */
  maxReconnectingMs?: number;
  /** The position not moving for this long while streaming is unhealthy. Default 0 (off). */
  maxSilentMs?: number;
  /** Oplog headroom (last check) below this is unhealthy. Default 0 (off). */
  minHeadroomMs?: number;
}

export interface HealthReport {
  healthy: boolean;
  status: 200 | 503;
  streams: Array<{ stream: string | null; namespace: string; state: string; healthy: boolean; reason: string | null }>;
}

/** A readiness / liveness check for HTTP health endpoints; the reason is in the report. */
export declare function healthCheck(
  readers: ResilientChangeStream<any, any> | ResilientCursor<any> | Array<ResilientChangeStream<any, any> | ResilientCursor<any>>,
  options?: HealthCheckOptions,
): {
  check(): HealthReport;
  handle(req: unknown, res: { writeHead(status: number, headers: Record<string, string>): unknown; end(body: string): unknown }): void;
};

/** A stream that copies the collection (`initialSnapshot`, or `onHistoryLost: 'resnapshot'`): its events include {@link SnapshotEvent}s. */
export declare function watch<TSchema extends Document = Document>(
  target: WatchTarget<TSchema>,
  pipeline: Document[] | undefined,
  options: WatchOptions & ({ initialSnapshot: true | InitialSnapshotOptions } | { onHistoryLost: 'resnapshot' }),
): ResilientChangeStream<TSchema, ChangeStreamWithSnapshot<TSchema>>;
export declare function watch<TSchema extends Document = Document>(
  target: WatchTarget<TSchema>,
  options: WatchOptions & ({ initialSnapshot: true | InitialSnapshotOptions } | { onHistoryLost: 'resnapshot' }),
): ResilientChangeStream<TSchema, ChangeStreamWithSnapshot<TSchema>>;
export declare function watch<
  TSchema extends Document = Document,
  TChange extends Document = ChangeStreamDocument<TSchema>,
>(target: WatchTarget<TSchema>, pipeline?: Document[], options?: WatchOptions): ResilientChangeStream<TSchema, TChange>;
export declare function watch<
  TSchema extends Document = Document,
  TChange extends Document = ChangeStreamDocument<TSchema>,
>(target: WatchTarget<TSchema>, options?: WatchOptions): ResilientChangeStream<TSchema, TChange>;

/**
 * Stable error kinds (the engine's, plus 'ModeConflict', 'StreamClosed', 'HandlerFailed' and
 * 'NativeAddonUnavailable'; lib/errors.js and lib/error-helpers.js hold the JS list). Kinds without a
 * class of their own ('ClientError', 'Stalled', kinds added later) arrive as the base class.
 * Before 0.2 this was `ErrorCode` and lived in `err.code`; `code` is now the server's number.
 */
export type ErrorKind =
  | 'ChangeStreamHistoryLost'
  | 'InvalidResumeToken'
  | 'ChangeStreamFatal'
  | 'Unauthorized'
  | 'InvalidPipeline'
  | 'RetriesExhausted'
  | 'ServerError'
  | 'NetworkError'
  | 'ClientError'
  | 'InvalidOption'
  | 'ModeConflict'
  | 'StreamClosed'
  | 'TokenStoreError'
  | 'PositionMismatch'
  | 'LeaseStoreError'
  | 'Stalled'
  | 'NativeAddonUnavailable'
  | 'HandlerFailed';

/** @deprecated renamed {@link ErrorKind}: the stable string moved from `err.code` to `err.kind`. */
export type ErrorCode = ErrorKind;

export interface ErrorInfo {
  kind?: string;
  code?: number;
  codeName?: string;
  errorLabels?: string[];
  cause?: unknown;
}

/**
 * Base of every error the stream raises, shaped like the driver's `MongoError`: `code` is the
 * server's numeric code (driver code such as `err.code === 286` works unchanged), `codeName`,
 * `errorLabels` and `hasErrorLabel()` as the driver has them; the package's stable kind is
 * `kind`; `name` is the class name. With the `mongodb` package installed, server errors are
 * also `instanceof MongoServerError`, network errors `instanceof MongoNetworkError`, and every
 * error `instanceof MongoError`.
 */
export declare class ResilientChangeStreamError extends Error {
  constructor(message: string, info?: ErrorInfo);
  /** Stable kind: one of {@link ErrorKind}, or a newer kind of the engine. */
  kind: ErrorKind | (string & {});
  /** The server's numeric error code, when the server reported the error. */
  code?: number;
  /** The server's error code name, e.g. 'ChangeStreamHistoryLost'. */
  codeName?: string;
  /** The server's error labels, e.g. 'ResumableChangeStreamError'. */
  errorLabels: string[];
  /** Whether the server attached `label` (as the driver's `MongoError.hasErrorLabel`). */
  hasErrorLabel(label: string): boolean;
  addErrorLabel(label: string): void;
}
/** The position fell off the oplog (server 286): events were missed. */
export declare class ChangeStreamHistoryLostError extends ResilientChangeStreamError {
  kind: 'ChangeStreamHistoryLost';
  /** The last processed position (resume token). */
  resumeToken?: ResumeToken | null;
  /** The interval whose events may be missing (also emitted as `historyLost`). */
  historyLost?: HistoryLostEvent | null;
}
/** A token store failed for longer than the stream can wait, or holds an unreadable record. */
export declare class TokenStoreError extends ResilientChangeStreamError {
  kind: 'TokenStoreError';
}
/** A consumer group's lease collection could not be read or written. */
export declare class LeaseStoreError extends ResilientChangeStreamError {
  kind: 'LeaseStoreError';
}
/** The stored position belongs to another name, namespace or pipeline (see `allowPositionMismatch`). */
export declare class PositionMismatchError extends ResilientChangeStreamError {
  kind: 'PositionMismatch';
}
/**
 * No usable native binary for this platform (thrown by the first stream or cursor
 * constructed). `packageName` is the platform package to install.
 */
export declare class NativeAddonError extends ResilientChangeStreamError {
  kind: 'NativeAddonUnavailable';
  platform?: string;
  packageName?: string;
}
/** The resume token cannot be used (server 260), e.g. resumeAfter an invalidate token. */
export declare class InvalidResumeTokenError extends ResilientChangeStreamError {
  kind: 'InvalidResumeToken';
}
/** The server cannot continue this stream (server 280). */
export declare class ChangeStreamFatalError extends ResilientChangeStreamError {
  kind: 'ChangeStreamFatal';
}
/** Authentication or authorization failed. */
export declare class AuthorizationError extends ResilientChangeStreamError {
  kind: 'Unauthorized';
}
/** The server rejected the pipeline or the combination of options. */
export declare class InvalidPipelineError extends ResilientChangeStreamError {
  kind: 'InvalidPipeline';
}
/** `backoff.maxRetries` re-open attempts failed in a row. */
export declare class RetriesExhaustedError extends ResilientChangeStreamError {
  kind: 'RetriesExhausted';
}
/** A server error without a more specific class. */
export declare class ServerError extends ResilientChangeStreamError {
  kind: 'ServerError';
}
/** A network error or server-selection failure (reported in `reconnecting`; resumable). */
export declare class NetworkError extends ResilientChangeStreamError {
  kind: 'NetworkError';
}
/** A bad option, or a watch() target that is not a Collection, Db or MongoClient. */
export declare class InvalidOptionError extends ResilientChangeStreamError {
  kind: 'InvalidOption';
}
/** Iterator and emitter modes were mixed. */
export declare class ModeConflictError extends ResilientChangeStreamError {
  kind: 'ModeConflict';
}
/** The stream is closed (`cause`: the error that closed it, if any). */
export declare class StreamClosedError extends ResilientChangeStreamError {
  kind: 'StreamClosed';
}
/**
 * An item listener (`change`, cursor `data`) or a `resumeTokenChanged` listener threw or
 * rejected: the reader closed with this error (`error` and `close` events, or from `next()`),
 * and its position stayed before that item: a restart from the stored position delivers it again.
 */
export declare class HandlerError extends ResilientChangeStreamError {
  kind: 'HandlerFailed';
  /** What the listener threw (or its promise rejected with). */
  cause: unknown;
  /** Change stream: the event being processed (null: a `resumeTokenChanged` of a quiet stream). */
  event?: unknown;
  /** Cursor: the document being processed. */
  document?: unknown;
  /** Change stream: the resume token before that event (where a restart continues from). */
  resumeToken?: ResumeToken | null;
}

// --- ResilientCursor ---------------------------------------------------------------------------

/** Options of `new ResilientCursor(target, options)`. */
export interface ResilientCursorOptions {
  /** The query filter (default `{}`). */
  filter?: Document;
  /** A projection; it must keep the key field. */
  projection?: Document;
  /** A unique, ordered field (dotted path allowed) positioning the read. Default `_id`. */
  key?: string;
  batchSize?: number;
  /** A tailable cursor on a capped collection (natural order; resumes by key). */
  tailable?: boolean;
  /** With `tailable`: getMore waits for new documents. */
  awaitData?: boolean;
  /** With `awaitData`: how long a getMore waits. */
  maxAwaitTimeMS?: number;
  /** Re-open policy after network errors, CursorNotFound (43), step-down. */
  backoff?: BackoffOptions;
  /** 136 CappedPositionLost: fail (default) or continue from the oldest document left. */
  onPositionLost?: 'error' | 'restartFromOldest';
  /** How long a tailable read waits before re-issuing a dead cursor (default 200). */
  tailRetryMS?: number;
  /**
   * Stall watchdog: no reply to a find/getMore within `maxAwaitTimeMS` plus this emits
   * `stalled` and re-opens after the last key. `0` turns it off. @default 30000
   */
  /**
   * Emitter mode: up to this many `data` listeners run at once (documents have distinct
   * keys); the position moves only over the contiguous prefix of finished documents.
   * Iterators stay sequential. 1 to 1000. @default 1
   */
  concurrency?: number;
  stallTimeoutMS?: number;
  /**
   * Names this read's position. With a name, the key of the last processed document is
   * checkpointed to `tokenStore` (default: in-process memory) and a new cursor with the same
   * name continues after it — in another process too. A `restart()` state or `lastKey` wins
   * over the stored position. A document is processed when its `data` listeners finished,
   * or (iterator mode) when the next one is asked for, `commit()` is called, or on close.
   */
  name?: string;
  /** Where positions are kept (the same stores as the change stream's). @default { type: 'memory' } */
  tokenStore?: TokenStoreOption;
  /** When positions are written (and always by `close()`); counts are in documents. */
  checkpoint?: CheckpointOptions;
  /** Use a stored position even if it was written for another filter, projection or key. @default false */
  allowPositionMismatch?: boolean;
  /** Connection string; overrides the target's (a Collection's client, or `{ uri }`). */
  uri?: string;
  logger?: StreamLogger;
  promoteLongs?: boolean;
  promoteValues?: boolean;
  promoteBuffers?: boolean;
  useBigInt64?: boolean;
  bsonRegExp?: boolean;
  enableUtf8Validation?: boolean;
}

/** `state()`: plain JSON; BSON values in canonical Extended JSON. */
export interface ResilientCursorState {
  version: 1;
  namespace: { db: string; collection: string };
  filter: Record<string, unknown>;
  projection: Record<string, unknown> | null;
  key: string;
  /** The key of the last document handed out (canonical EJSON), or null. */
  lastKey: unknown;
  batchSize: number | null;
  tailable: boolean;
  awaitData: boolean;
  maxAwaitTimeMS: number | null;
  onPositionLost: 'error' | 'restartFromOldest';
  /** How the read ended, or null while it runs. */
  ended: 'exhausted' | 'stopped' | 'closed' | 'error' | null;
  /** Documents handed out by this instance. */
  delivered: number;
}

export interface PositionLostEvent {
  /** The last key received before the loss. */
  lastKey: unknown;
  /** The server's 136 CappedPositionLost error. */
  error: ResilientChangeStreamError;
}

export interface ResilientCursorHealth extends ReaderCounters {
  state: 'starting' | 'streaming' | 'reconnecting' | 'closed' | 'failed';
  reconnects: number;
  currentBackoffMs: number | null;
  /** The last error seen (resumable or not), redacted. */
  lastError: HealthError | null;
  documentsRead: number;
  documentsDelivered: number;
  /** Processed documents whose position is not stored yet (0 without a name). */
  pendingCheckpoint: number;
}

export type CursorConnection = Collection<any> | Db | MongoClient | { uri: string } | string;

/** A long read that survives failures and can be stopped, saved and restarted anywhere. */
export declare class ResilientCursor<TSchema extends Document = Document> extends EventEmitter {
  constructor(
    target: Collection<any> | { uri: string; db: string; collection: string },
    options?: ResilientCursorOptions,
  );
  /** Continues after `state.lastKey`, in this or another process. */
  static restart<T extends Document = Document>(
    state: ResilientCursorState,
    connection: CursorConnection,
    options?: Pick<
      ResilientCursorOptions,
      | 'backoff'
      | 'tailRetryMS'
      | 'stallTimeoutMS'
      | 'logger'
      | 'uri'
      | 'name'
      | 'tokenStore'
      | 'checkpoint'
      | 'allowPositionMismatch'
    >,
  ): ResilientCursor<T>;
  readonly lastKey: unknown;
  readonly closed: boolean;
  state(): ResilientCursorState;
  health(): ResilientCursorHealth;
  /** Its metrics now, as plain data (`eventsDelivered`: documents). */
  metrics(): MetricsSnapshot;
  /** No further batches; received documents are still handed out, then the read ends. */
  stop(): void;
  /** Iterator mode with a `name`: the document last handed out is processed now. */
  commit(): void;
  next(): Promise<TSchema | null>;
  hasNext(): Promise<boolean>;
  tryNext(): Promise<TSchema | null>;
  [Symbol.asyncIterator](): AsyncGenerator<TSchema, void, void>;
  stream(options?: { transform?: (doc: TSchema) => unknown }): Readable;
  close(): Promise<void>;
  /**
   * Each document, in order (emitter mode); a promise returned is awaited. A throw or a
   * rejection closes the cursor with a {@link HandlerError} (`document`: this one) and the
   * position stays before it. Other events' listeners are observers: their throws become
   * process warnings ('ResilientChangeStreamListenerWarning').
   */
  on(event: 'data', listener: (doc: TSchema) => unknown): this;
  on(event: 'end', listener: (info: { reason: 'exhausted' | 'stopped' }) => void): this;
  on(event: 'close', listener: (info: { reason: string; error?: Error }) => void): this;
  on(event: 'reconnecting', listener: (e: ReconnectingEvent) => void): this;
  on(event: 'resumed', listener: (e: ResumedEvent) => void): this;
  on(event: 'positionLost', listener: (e: PositionLostEvent) => void): this;
  on(event: 'stalled', listener: (info: StalledEvent) => void): this;
  on(event: 'error', listener: (error: ResilientChangeStreamError) => void): this;
  on(event: string | symbol, listener: (...args: any[]) => void): this;
}
