'use strict';
// Small helpers shared by scripts/bench.js (the orchestrator) and scripts/bench/worker.js.

const { performance } = require('node:perf_hooks');

/**
 * Milliseconds on CLOCK_MONOTONIC (process.hrtime), which on Linux is one clock for every
 * process on the machine: the writer's stamp and the consumer's receipt time compare.
 */
function hrMs() {
  return Number(process.hrtime.bigint()) / 1e6;
}

/** Starts measuring this process: wall time, CPU (all threads: user+sys), main-thread ELU. */
function meter() {
  const start = { wall: hrMs(), cpu: process.cpuUsage(), elu: performance.eventLoopUtilization() };
  return {
    /** @returns {{ wallMs: number, cpuMs: number, userMs: number, sysMs: number, elu: number }} */
    stop() {
      const cpu = process.cpuUsage(start.cpu);
      const elu = performance.eventLoopUtilization(start.elu);
      return {
        wallMs: hrMs() - start.wall,
        cpuMs: (cpu.user + cpu.system) / 1000,
        userMs: cpu.user / 1000,
        sysMs: cpu.system / 1000,
        elu: elu.utilization,
      };
    },
  };
}

/** A measured run of `count` events: the meter's readings plus events/s and CPU ms per 1k. */
function throughput(count, r) {
  return { events: count, ...r, eventsPerSec: count / (r.wallMs / 1000), cpuMsPer1k: (r.cpuMs / count) * 1000 };
}

/** Nearest-rank percentile of an unsorted array of numbers (null when empty). */
function percentile(values, p) {
  if (values.length === 0) return null;
  const sorted = Float64Array.from(values).sort();
  const rank = Math.min(sorted.length - 1, Math.max(0, Math.ceil((p / 100) * sorted.length) - 1));
  return sorted[rank];
}

function median(values) {
  const xs = values.filter((v) => typeof v === 'number' && Number.isFinite(v));
  if (xs.length === 0) return null;
  const sorted = xs.sort((a, b) => a - b);
  const mid = sorted.length >> 1;
  return sorted.length % 2 ? sorted[mid] : (sorted[mid - 1] + sorted[mid]) / 2;
}

/** Summary of a latency sample in ms. */
function latencyStats(values) {
  if (values.length === 0) return { n: 0, p50: null, p90: null, p99: null, max: null, mean: null };
  let sum = 0;
  let max = -Infinity;
  for (const v of values) {
    sum += v;
    if (v > max) max = v;
  }
  return {
    n: values.length,
    p50: percentile(values, 50),
    p90: percentile(values, 90),
    p99: percentile(values, 99),
    max,
    mean: sum / values.length,
  };
}

/** Samples RSS every `everyMs`; `peak` also uses the kernel's high-water mark. */
function rssSampler(everyMs = 50) {
  let peak = process.memoryUsage.rss();
  const timer = setInterval(() => {
    const rss = process.memoryUsage.rss();
    if (rss > peak) peak = rss;
  }, everyMs);
  return {
    stop() {
      clearInterval(timer);
      const rss = process.memoryUsage.rss();
      if (rss > peak) peak = rss;
      return { peakSampledBytes: peak, maxRssBytes: process.resourceUsage().maxRSS * 1024 };
    },
  };
}

module.exports = { hrMs, meter, throughput, percentile, median, latencyStats, rssSampler };
