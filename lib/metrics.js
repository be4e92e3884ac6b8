'use strict';

// Metrics: a plain synchronous snapshot (`metrics()`, no dependency) and OpenTelemetry
// instruments (`instrument()`, through `@opentelemetry/api`, an optional peer loaded only
// when no meter or meter provider is passed). Every value derives from the one owner of
// the state — the reader's health() (the engine's counters), its last oplog window, and
// (low-rate) reconnect events for the error kind — so the event path pays nothing: the
// instruments are observable ones, read when the exporter collects.
// Attributes: the stream's name and namespace; never a connection string.

/** The instruments' meter name (and version: the package's). */
const METER_NAME = 'resilient-change-stream';

/**
 * @typedef {object} MetricsSnapshot
 * @property {string | null} stream the reader's `name` (null: unnamed)
 * @property {string} namespace `db.coll`, `db` or `<cluster>`
 * @property {string} state as health().state
 * @property {number} eventsDelivered events (documents) handed to the application
 * @property {number} batches batches read from the server
 * @property {number} reconnects resumable failures
 * @property {number} outages outages begun (a first failed attempt after progress)
 * @property {number} downtimeMs time spent down in all outages, the current one included
 * @property {number | null} currentOutageMs how long the outage under way has lasted
 * @property {number} stalls times the stall watchdog fired
 * @property {number | null} lagMs wall clock minus the position's cluster time
 * @property {number | null} backoffMs the backoff being waited out now
 * @property {number} checkpointWrites positions written to the token store
 * @property {number} checkpointFailures failed writes (every try)
 * @property {number} unsavedEvents processed events whose position is not stored yet
 * @property {number | null} checkpointAgeMs since the last position was written (null: never)
 * @property {number | null} headroomMs from the last oplog window check (null: not checked / unknown)
 * @property {Date | null} headroomCheckedAt when that check was
 * @property {{ role: string, epoch: number | null, takeovers: number, holder: string | null } | null} group
 */

/**
 * The metrics of one reader now (synchronous, no dependency).
 * @param {any} reader a ResilientChangeStream or ResilientCursor
 * @returns {MetricsSnapshot}
 */
function metricsSnapshot(reader) {
  const h = reader.health();
  const now = Date.now();
  const window = reader._lastOplogWindow ?? null;
  const group = h.group ?? null;
  return {
    stream: reader._identity.name,
    namespace: reader._identity.namespace,
    state: h.state,
    eventsDelivered: h.eventsDelivered ?? h.documentsDelivered ?? 0,
    batches: h.batches,
    reconnects: h.reconnects,
    outages: h.outages,
    downtimeMs: h.downtimeMs,
    currentOutageMs: h.currentOutageMs,
    stalls: h.stalls,
    lagMs: h.lagMs ?? null,
    backoffMs: h.currentBackoffMs,
    checkpointWrites: h.checkpointsSaved,
    checkpointFailures: h.checkpointFailures,
    unsavedEvents: h.pendingCheckpoint,
    checkpointAgeMs: h.lastCheckpointAt ? Math.max(0, now - h.lastCheckpointAt.getTime()) : null,
    headroomMs: window?.headroomMs ?? null,
    headroomCheckedAt: window ? new Date(window.at) : null,
    group: group && {
      role: group.role,
      epoch: group.epoch ?? null,
      takeovers: group.takeovers ?? 0,
      holder: group.holder ?? null,
    },
  };
}

/** The attributes of a reader's data points: its name and namespace, nothing else. */
function attributesOf(reader) {
  return { stream: reader._identity.name ?? '', namespace: reader._identity.namespace };
}

const ROLES = ['holder', 'standby', 'stopped'];
const STATES = ['starting', 'streaming', 'reconnecting', 'closed', 'failed'];

/**
 * The instruments of one meter, shared by every reader instrumented on it: observable ones
 * read each reader's snapshot once per collection (one batch callback); the reconnect and
 * outage counters are added to on the reader's `reconnecting` events (they carry the error
 * kind, which no snapshot keeps).
 */
class Registry {
  constructor(meter) {
    /** @type {Set<any>} */
    this.readers = new Set();
    const counter = (name, description, unit) => meter.createObservableCounter(name, { description, unit });
    const gauge = (name, description, unit) => meter.createObservableGauge(name, { description, unit });
    const o = {
      events: counter('rcs.events', 'Events (documents) handed to the application', '{event}'),
      batches: counter('rcs.batches', 'Batches read from the server', '{batch}'),
      downtime: counter('rcs.downtime', 'Time spent down (reconnecting), all outages', 's'),
      stalls: counter('rcs.stalls', 'Times the stall watchdog fired', '{stall}'),
      checkpointWrites: counter('rcs.checkpoint.writes', 'Positions written to the token store', '{write}'),
      checkpointFailures: counter('rcs.checkpoint.failures', 'Failed position writes (every try)', '{failure}'),
      takeovers: counter('rcs.group.takeovers', 'Leases taken over from another member', '{takeover}'),
      state: gauge('rcs.state', '1 for the state the reader is in (attribute state)', '1'),
      lag: gauge('rcs.lag', 'Wall clock minus the cluster time of the position', 's'),
      backoff: gauge('rcs.backoff', 'The backoff being waited out now (0: none)', 's'),
      outage: gauge('rcs.outage.duration', 'How long the outage under way has lasted (0: none)', 's'),
      unsaved: gauge('rcs.checkpoint.unsaved', 'Processed events whose position is not stored yet', '{event}'),
      checkpointAge: gauge('rcs.checkpoint.age', 'Time since the position was last written', 's'),
      headroom: gauge('rcs.oplog.headroom', 'How far the position is from falling off the oplog (last check)', 's'),
      role: gauge('rcs.group.role', '1 for the group role the member has (attribute role)', '1'),
      epoch: gauge('rcs.group.epoch', 'The lease epoch the member knows', '{epoch}'),
    };
    this.reconnects = meter.createCounter('rcs.reconnects', {
      description: 'Resumable failures, by error kind',
      unit: '{reconnect}',
    });
    this.outages = meter.createCounter('rcs.outages', {
      description: 'Outages begun (a first failed attempt after progress), by error kind',
      unit: '{outage}',
    });
    this.observables = Object.values(o);
    this.callback = (result) => {
      for (const reader of this.readers) observe(result, o, reader);
    };
    meter.addBatchObservableCallback(this.callback, this.observables);
  }
}

/** One reader's data points. */
function observe(result, o, reader) {
  const m = metricsSnapshot(reader);
  const attrs = attributesOf(reader);
  const seconds = (ms) => ms / 1000;
  result.observe(o.events, m.eventsDelivered, attrs);
  result.observe(o.batches, m.batches, attrs);
  result.observe(o.downtime, seconds(m.downtimeMs), attrs);
  result.observe(o.stalls, m.stalls, attrs);
  result.observe(o.checkpointWrites, m.checkpointWrites, attrs);
  result.observe(o.checkpointFailures, m.checkpointFailures, attrs);
  for (const state of STATES) result.observe(o.state, state === m.state ? 1 : 0, { ...attrs, state });
  if (m.lagMs !== null) result.observe(o.lag, seconds(m.lagMs), attrs);
  result.observe(o.backoff, seconds(m.backoffMs ?? 0), attrs);
  result.observe(o.outage, seconds(m.currentOutageMs ?? 0), attrs);
  result.observe(o.unsaved, m.unsavedEvents, attrs);
  if (m.checkpointAgeMs !== null) result.observe(o.checkpointAge, seconds(m.checkpointAgeMs), attrs);
  if (m.headroomMs !== null) result.observe(o.headroom, seconds(m.headroomMs), attrs);
  if (m.group) {
    for (const role of ROLES) result.observe(o.role, role === m.group.role ? 1 : 0, { ...attrs, role });
    if (m.group.epoch !== null) result.observe(o.epoch, m.group.epoch, attrs);
    result.observe(o.takeovers, m.group.takeovers, attrs);
  }
}

/** @type {WeakMap<object, Registry>} */
const registries = new WeakMap();

/**
 * The meter: the one given, one from the provider given, else the global provider's.
 * @param {{ meter?: any, meterProvider?: any }} options
 */
function meterOf({ meter, meterProvider }) {
  if (meter) return meter;
  const version = require('../package.json').version;
  if (meterProvider) return meterProvider.getMeter(METER_NAME, version);
  let api;
  try {
    api = require('@opentelemetry/api');
  } catch (err) {
    const error = new Error(
      'resilient-change-stream: instrument() needs @opentelemetry/api (npm install @opentelemetry/api), ' +
        'or pass { meterProvider } or { meter }; metrics() needs nothing',
    );
    error.cause = err;
    throw error;
  }
  return api.metrics.getMeterProvider().getMeter(METER_NAME, version);
}

/**
 * Reports `readers` (one or an array of ResilientChangeStream / ResilientCursor) through
 * OpenTelemetry instruments until they are closed (a reader that failed stays reported, as
 * 'failed', until `remove()`). The instruments
 * are observable: nothing is computed until the exporter collects.
 * @param {any} readers
 * @param {{ meter?: any, meterProvider?: any }} [options]
 * @returns {{ remove(): void }}
 */
function instrument(readers, options = {}) {
  const list = Array.isArray(readers) ? readers : [readers];
  for (const reader of list) {
    if (typeof reader?.health !== 'function' || reader._identity === undefined) {
      throw new TypeError('instrument() takes a ResilientChangeStream, a ResilientCursor, or an array of them');
    }
  }
  const meter = meterOf(options);
  let registry = registries.get(meter);
  if (!registry) {
    registry = new Registry(meter);
    registries.set(meter, registry);
  }
  const reg = registry;
  const detach = list.map((reader) => {
    reg.readers.add(reader);
    const onReconnecting = ({ attempt, error }) => {
      const attrs = { ...attributesOf(reader), 'error.kind': error?.kind ?? 'unknown' };
      reg.reconnects.add(1, attrs);
      if (attempt === 1) reg.outages.add(1, attrs);
    };
    // A reader closed on purpose is no longer reported; one that failed stays (its state
    // 'failed' is what an alert looks for) until remove().
    const onClose = ({ reason }) => {
      reader.off('reconnecting', onReconnecting);
      if (reason !== 'error') reg.readers.delete(reader);
    };
    reader.on('reconnecting', onReconnecting);
    reader.once('close', onClose);
    return () => {
      reader.off('reconnecting', onReconnecting);
      reader.off('close', onClose);
      reg.readers.delete(reader);
    };
  });
  return {
    remove() {
      for (const d of detach) d();
    },
  };
}

module.exports = { instrument, metricsSnapshot, METER_NAME };
