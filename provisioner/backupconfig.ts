import path from "node:path";
import type { BackupConfig, BackupSchedule } from "../config/types.js";
import { ConfigError } from "../lib/errors.js";
import { parseDurationMs, parseSizeBytes } from "../lib/units.js";

/** Backups live here, inside the data dir, unless `backups.dir` says otherwise. */
export const DEFAULT_BACKUP_SUBDIR = "backups";
export const DEFAULT_KEEP_FULL = 2;
export const DEFAULT_KEEP_INCREMENTAL = 6;
/** guest-ping answers in milliseconds from a running qemu-ga; a guest without one never answers. */
export const DEFAULT_AGENT_TIMEOUT_MS = 3000;
/** guest-fsfreeze-freeze syncs every filesystem first: seconds on a busy guest with GiBs dirty. */
export const DEFAULT_FREEZE_TIMEOUT_MS = 60_000;
export const DEFAULT_STALL_TIMEOUT_MS = 10 * 60_000;
export const DEFAULT_CHECK_INTERVAL_MS = 60_000;
export const DEFAULT_RETRY_AFTER_MS = 30 * 60_000;
/** The shortest schedule interval: a backup every few seconds would only churn files. */
export const MIN_SCHEDULE_INTERVAL_MS = 60_000;
const NAMED_SCHEDULES: Record<string, number> = { hourly: 3_600_000, daily: 86_400_000, weekly: 7 * 86_400_000 };

const KEYS: Record<string, true> = {
  dir: true, schedule: true, keep_full: true, keep_incremental: true, agent_timeout: true, freeze_timeout: true,
  stall_timeout: true, check_interval: true, retry_after: true, rate_limit: true,
};

function count(v: unknown, at: string, min: number, max: number): number {
  if (typeof v !== "number" || !Number.isInteger(v) || v < min || v > max) {
    throw new ConfigError(`must be an integer from ${min} to ${max}: ${JSON.stringify(v)}`, at);
  }
  return v;
}

export function parseSchedule(v: unknown, at: string): BackupSchedule {
  if (v === "off" || v === false || v === null) return { kind: "off" };
  if (typeof v === "string" && NAMED_SCHEDULES[v] !== undefined) return { kind: "every", intervalMs: NAMED_SCHEDULES[v]! };
  let ms: number;
  try {
    ms = parseDurationMs(v, at);
  } catch {
    throw new ConfigError(`must be off, hourly, daily, weekly or a duration such as 6h: ${JSON.stringify(v)}`, at);
  }
  if (ms < MIN_SCHEDULE_INTERVAL_MS) throw new ConfigError(`at least ${MIN_SCHEDULE_INTERVAL_MS / 1000}s: ${JSON.stringify(v)}`, at);
  return { kind: "every", intervalMs: ms };
}

/** `cog.provisioner.backups` → a frozen BackupConfig; relative `dir` resolves against baseDir. */
export function parseBackupConfig(raw: unknown, at: string, baseDir: string, dataDir: string): BackupConfig {
  if (raw === null || raw === undefined) raw = {};
  if (typeof raw !== "object" || Array.isArray(raw)) throw new ConfigError("must be a mapping", at);
  const r = raw as Record<string, unknown>;
  for (const k of Object.keys(r)) if (!KEYS[k]) throw new ConfigError("unknown key", `${at}.${k}`);
  const dur = (k: string, d: number, min: number): number => {
    if (r[k] === undefined) return d;
    const ms = parseDurationMs(r[k], `${at}.${k}`);
    if (ms < min) throw new ConfigError(`at least ${min} ms: ${JSON.stringify(r[k])}`, `${at}.${k}`);
    return ms;
  };
  let dir = path.join(dataDir, DEFAULT_BACKUP_SUBDIR);
  if (r.dir !== undefined) {
    if (typeof r.dir !== "string" || r.dir.length === 0 || /[\0\n\r]/.test(r.dir)) throw new ConfigError("must be a path", `${at}.dir`);
    dir = path.resolve(baseDir, r.dir);
  }
  const cfg: BackupConfig = {
    dir,
    schedule: r.schedule === undefined ? { kind: "off" } : parseSchedule(r.schedule, `${at}.schedule`),
    keepFull: r.keep_full === undefined ? DEFAULT_KEEP_FULL : count(r.keep_full, `${at}.keep_full`, 1, 1000),
    keepIncremental: r.keep_incremental === undefined ? DEFAULT_KEEP_INCREMENTAL : count(r.keep_incremental, `${at}.keep_incremental`, 0, 1000),
    agentTimeoutMs: dur("agent_timeout", DEFAULT_AGENT_TIMEOUT_MS, 100),
    freezeTimeoutMs: dur("freeze_timeout", DEFAULT_FREEZE_TIMEOUT_MS, 1000),
    stallTimeoutMs: dur("stall_timeout", DEFAULT_STALL_TIMEOUT_MS, 1000),
    checkIntervalMs: dur("check_interval", DEFAULT_CHECK_INTERVAL_MS, 100),
    retryAfterMs: dur("retry_after", DEFAULT_RETRY_AFTER_MS, 0),
    rateLimitBytesPerSec: r.rate_limit === undefined ? 0 : parseSizeBytes(r.rate_limit, `${at}.rate_limit`),
  };
  return Object.freeze(cfg);
}
