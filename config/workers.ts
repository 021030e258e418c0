/**
 * hub.workers and hub.worker: several hub processes on one machine (issue 12).
 * `workers: N` (or `auto`, the machine's cores) starts a primary process that
 * holds the listeners and N workers that serve; gateway/workers.ts.
 * Each key's default and bounds are stated here once.
 */
import os from "node:os";
import { ConfigError } from "../lib/errors.js";
import { durationMs, fail, leaf, section } from "./fields.js";
import type { HubWorkerConfig } from "./types.js";
import { fmtMs } from "./values.js";

/** Default of hub.workers: one process, as before workers existed. */
export const DEFAULT_HUB_WORKERS = 1;
/** Most workers one hub may ask for: each is a full Node process (~60 MB RSS at rest). */
export const MAX_HUB_WORKERS = 256;
/** Default of hub.worker.restart_min_delay: the first wait before a dead worker starts again. */
export const DEFAULT_WORKER_RESTART_MIN_DELAY_MS = 200;
/** Default of hub.worker.restart_max_delay: the longest (a worker crashing at start backs off to it). */
export const DEFAULT_WORKER_RESTART_MAX_DELAY_MS = 10_000;
/** Default of hub.worker.stats_interval: how often a worker reports its visitor counters. */
export const DEFAULT_WORKER_STATS_INTERVAL_MS = 1_000;
/**
 * Default of hub.worker.warmup: the longest a worker started again keeps visitors with the
 * others while its cogs redial it. 1,000 cogs resumed in 3–7 s in bench/tunnels.ts, and a
 * cog's backoff puts its attempts near 0.5, 1.5, 3.5 and 7.5 s after the drop: 10 s covers
 * the fourth; longer only delays the worker's share of visitors if some cog never returns.
 */
export const DEFAULT_WORKER_WARMUP_MS = 10_000;
/**
 * Default of hub.worker.handoff_wait: how long the primary keeps a tunnel connection for a
 * worker that is starting (restart_min_delay 200 ms plus ~1 s to boot here). Under the cog's
 * own tunnel.handshake_timeout (10 s), so a wait that ends in a hand-off is still one the cog
 * waits for.
 */
export const DEFAULT_WORKER_HANDOFF_WAIT_MS = 5_000;

/** hub.workers: a whole number 1..MAX_HUB_WORKERS, or `auto` (os.availableParallelism()). */
export function parseHubWorkers(value: unknown, cores: number = os.availableParallelism()): number {
  if (value == null) return DEFAULT_HUB_WORKERS;
  if (value === "auto") return Math.min(Math.max(1, cores), MAX_HUB_WORKERS);
  if (typeof value !== "number" || !Number.isInteger(value) || value < 1 || value > MAX_HUB_WORKERS) {
    throw new ConfigError(`must be a whole number from 1 to ${MAX_HUB_WORKERS}, or auto (one per core), got ${JSON.stringify(value)}`);
  }
  return value;
}

export const hubWorkersSchema = leaf({
  description: `Hub worker processes on this machine: a number, or auto (one per core). Above 1 a primary process starts that many workers, each a full hub and its own endpoint; the primary hands each tunnel to its worker by TLS server name. Default: ${DEFAULT_HUB_WORKERS}.`,
  default: DEFAULT_HUB_WORKERS,
  anyOf: [{ type: "integer", minimum: 1, maximum: MAX_HUB_WORKERS }, { const: "auto" }, { type: "null" }],
}, (v) => parseHubWorkers(v));

export const hubWorkerSchema = section("How the primary process looks after its workers (unused with workers: 1).", {
  restart_min_delay: durationMs("A worker that dies is started again after this long, doubling per death in a row.",
    { def: DEFAULT_WORKER_RESTART_MIN_DELAY_MS, min: 1 }),
  restart_max_delay: durationMs("The longest such wait; a worker up this long starts from the short one again (at least restart_min_delay).",
    { def: DEFAULT_WORKER_RESTART_MAX_DELAY_MS, min: 1 }),
  stats_interval: durationMs("How often each worker reports its counters, which the primary writes to <data_dir>/hub-workers.json.",
    { def: DEFAULT_WORKER_STATS_INTERVAL_MS, min: 1 }),
  warmup: durationMs("A worker started again while others serve takes no visitor until as many cogs are back on it as the busiest other worker holds, or this long at most (0: takes visitors at once, each held in the grace period until its cog is back).",
    { def: DEFAULT_WORKER_WARMUP_MS, min: 0 }),
  handoff_wait: durationMs("A tunnel connection for a worker that is starting (again) waits this long at the primary for it, under hub.tunnel.max_unauthenticated, instead of being closed into the cog's backoff (0: closed at once).",
    { def: DEFAULT_WORKER_HANDOFF_WAIT_MS, min: 0 }),
}, (o): HubWorkerConfig => {
  if (o.restart_max_delay < o.restart_min_delay) {
    fail(["restart_max_delay"], `must be at least restart_min_delay (${fmtMs(o.restart_min_delay)}), got ${fmtMs(o.restart_max_delay)}`);
  }
  return { restartMinDelayMs: o.restart_min_delay, restartMaxDelayMs: o.restart_max_delay, statsIntervalMs: o.stats_interval, warmupMs: o.warmup, handoffWaitMs: o.handoff_wait };
});
