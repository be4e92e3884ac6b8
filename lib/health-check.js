'use strict';

// A readiness / liveness check for HTTP health endpoints (Kubernetes style), from the
// readers' own health() and last oplog window: healthy while streaming or briefly
// reconnecting; unhealthy when failed or closed, reconnecting (or silent) past a bound, or
// with the oplog headroom below a bound. The reason is in the body. No connection strings.

const { metricsSnapshot } = require('./metrics');

const DEFAULTS = {
  /** An outage longer than this is unhealthy (a brief reconnect is not). */
  maxReconnectingMs: 60000,
  /** The position not moving for this long is unhealthy (0: not checked; quiet streams on
   * servers that do not advance idle streams never move). */
  maxSilentMs: 0,
  /** Oplog headroom below this (at the last check) is unhealthy (0: not checked). */
  minHeadroomMs: 0,
};

/**
 * @param {number | undefined} value
 * @param {string} name
 * @param {number} fallback
 */
function bound(value, name, fallback) {
  if (value === undefined) return fallback;
  if (!Number.isFinite(value) || value < 0) {
    throw new TypeError(`healthCheck(): option "${name}" must be a number ≥ 0, got ${String(value)}`);
  }
  return value;
}

/**
 * One reader's verdict.
 * @param {any} reader
 * @param {{ readiness: boolean, maxReconnectingMs: number, maxSilentMs: number, minHeadroomMs: number }} o
 */
function verdict(reader, o) {
  const m = metricsSnapshot(reader);
  const h = reader.health();
  const out = { stream: m.stream, namespace: m.namespace, state: m.state, healthy: true, reason: null };
  const unhealthy = (reason) => Object.assign(out, { healthy: false, reason });
  if (m.state === 'failed') return unhealthy(`failed: ${h.lastError?.message ?? 'unknown error'}`);
  if (m.state === 'closed') return unhealthy('closed');
  if (m.state === 'starting' && o.readiness) return unhealthy('starting: not streaming yet');
  if (m.state === 'reconnecting' && (m.currentOutageMs ?? 0) > o.maxReconnectingMs) {
    const last = h.lastError ? ` (last error: ${h.lastError.kind}: ${h.lastError.message})` : '';
    return unhealthy(`reconnecting for ${Math.round(m.currentOutageMs ?? 0)} ms, more than ${o.maxReconnectingMs}${last}`);
  }
  // A group's standby does not read: it is not silent.
  const reading = m.group === null || m.group.role === 'holder';
  if (o.maxSilentMs > 0 && reading && m.state === 'streaming' && h.lastTokenAt instanceof Date) {
    const silent = Date.now() - h.lastTokenAt.getTime();
    if (silent > o.maxSilentMs) return unhealthy(`stalled: the position has not moved for ${silent} ms, more than ${o.maxSilentMs}`);
  }
  if (o.minHeadroomMs > 0 && m.headroomMs !== null && m.headroomMs < o.minHeadroomMs) {
    return unhealthy(`oplog headroom ${m.headroomMs} ms, less than ${o.minHeadroomMs}: the position is about to fall off the oplog`);
  }
  return out;
}

/**
 * A health check over `readers` (one or an array). `check()` answers `{ healthy, status
 * (200 | 503), streams: [{ stream, namespace, state, healthy, reason }] }`; `handle(req, res)`
 * answers an HTTP request with that as JSON. `probe: 'readiness'` also counts a reader that is
 * still starting as not ready; 'liveness' (the default) does not.
 * @param {any} readers
 * @param {{ probe?: 'liveness' | 'readiness', maxReconnectingMs?: number, maxSilentMs?: number, minHeadroomMs?: number }} [options]
 */
function healthCheck(readers, options = {}) {
  const list = Array.isArray(readers) ? readers : [readers];
  for (const reader of list) {
    if (typeof reader?.health !== 'function' || reader._identity === undefined) {
      throw new TypeError('healthCheck() takes a ResilientChangeStream, a ResilientCursor, or an array of them');
    }
  }
  const probe = options.probe ?? 'liveness';
  if (probe !== 'liveness' && probe !== 'readiness') {
    throw new TypeError(`healthCheck(): option "probe" must be 'liveness' or 'readiness', got ${String(probe)}`);
  }
  const o = {
    readiness: probe === 'readiness',
    maxReconnectingMs: bound(options.maxReconnectingMs, 'maxReconnectingMs', DEFAULTS.maxReconnectingMs),
    maxSilentMs: bound(options.maxSilentMs, 'maxSilentMs', DEFAULTS.maxSilentMs),
    minHeadroomMs: bound(options.minHeadroomMs, 'minHeadroomMs', DEFAULTS.minHeadroomMs),
  };
  const check = () => {
    const streams = list.map((reader) => verdict(reader, o));
    const healthy = streams.every((s) => s.healthy);
    return { healthy, status: healthy ? 200 : 503, streams };
  };
  /**
   * @param {any} _req
   * @param {{ writeHead(status: number, headers: object): any, end(body: string): any }} res
   */
  const handle = (_req, res) => {
    const report = check();
    res.writeHead(report.status, { 'content-type': 'application/json', 'cache-control': 'no-store' });
    res.end(`${JSON.stringify(report)}\n`);
  };
  return { check, handle };
}

module.exports = { healthCheck };
