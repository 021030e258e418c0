/**
 * hub.workers and hub.worker: several hub processes on one machine (issue 12).
 * `workers: N` (or `auto`, the machine's cores) starts a primary process that
 * holds the listeners and N workers that serve; gateway/workers.ts.
 */
import os from "node:os";
import { ConfigError } from "../lib/errors.js";
import type { HubWorkerConfig } from "./types.js";
import { at, duration, fmtMs, mapping } from "./values.js";

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

export const HUB_WORKER_KEYS = ["restart_min_delay", "restart_max_delay", "stats_interval"] as const;

/** hub.workers: a whole number 1..MAX_HUB_WORKERS, or `auto` (os.availableParallelism()). */
export function parseHubWorkers(value: unknown, path: string, cores: number = os.availableParallelism()): number {
  if (value == null) return DEFAULT_HUB_WORKERS;
  if (value === "auto") return Math.min(Math.max(1, cores), MAX_HUB_WORKERS);
  if (typeof value !== "number" || !Number.isInteger(value) || value < 1 || value > MAX_HUB_WORKERS) {
    throw new ConfigError(`must be a whole number from 1 to ${MAX_HUB_WORKERS}, or auto (one per core), got ${JSON.stringify(value)}`, path);
  }
  return value;
}

export function parseHubWorker(value: unknown, path: string): HubWorkerConfig {
  const m = value == null ? {} : mapping(value, path, HUB_WORKER_KEYS);
  const restartMinDelayMs = duration(m.restart_min_delay, at(path, "restart_min_delay"), DEFAULT_WORKER_RESTART_MIN_DELAY_MS, 1);
  const restartMaxDelayMs = duration(m.restart_max_delay, at(path, "restart_max_delay"), DEFAULT_WORKER_RESTART_MAX_DELAY_MS, 1);
  if (restartMaxDelayMs < restartMinDelayMs) {
    throw new ConfigError(`must be at least restart_min_delay (${fmtMs(restartMinDelayMs)}), got ${fmtMs(restartMaxDelayMs)}`, at(path, "restart_max_delay"));
  }
  const statsIntervalMs = duration(m.stats_interval, at(path, "stats_interval"), DEFAULT_WORKER_STATS_INTERVAL_MS, 1);
  return { restartMinDelayMs, restartMaxDelayMs, statsIntervalMs };
}
