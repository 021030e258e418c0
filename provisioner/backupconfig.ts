/**
 * `cog.provisioner.backups`: when and how the provisioner backs up VMs' disks. Each key's
 * default and bounds are stated here once; capsul.schema.json and BackupConfig come from them.
 */
import path from "node:path";
import type { BackupConfig, BackupSchedule } from "../config/types.js";
import { custom, parseSection, resolvePath, section, sizeBytes } from "../config/fields.js";
import { ConfigError } from "../lib/errors.js";
import { parseDurationMs } from "../lib/units.js";
import { fmtMs } from "../config/values.js";

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

function count(description: string, def: number, min: number, max: number) {
  return custom({ description: `${description} Default: ${def}.`, default: def, anyOf: [{ type: "integer", minimum: min, maximum: max }, { type: "null" }] }, (v) => {
    if (v == null) return def;
    if (typeof v !== "number" || !Number.isInteger(v) || v < min || v > max) {
      throw new ConfigError(`must be an integer from ${min} to ${max}: ${JSON.stringify(v)}`);
    }
    return v;
  });
}

/** A duration of at least `min` ms, worded as this section always has ("at least 100 ms: …"). */
function dur(description: string, def: number, min: number) {
  return custom({
    description: `${description} Default: ${fmtMs(def)}.`, default: fmtMs(def),
    anyOf: [{ type: "string" }, { type: "number", minimum: min }, { type: "null" }],
  }, (v) => {
    if (v == null) return def;
    const ms = parseDurationMs(v);
    if (ms < min) throw new ConfigError(`at least ${min} ms: ${JSON.stringify(v)}`);
    return ms;
  });
}

export const backupsSchema = section("Backups of the VMs' disks (README \"Backups\").", {
  dir: custom({ description: `Where backups live: one directory per VM name with manifest.json and qcow2 files (default <data_dir>/${DEFAULT_BACKUP_SUBDIR}, made 0700).`, type: ["string", "null"], minLength: 1 },
    (v) => {
      if (v == null) return undefined;
      if (typeof v !== "string" || v.length === 0 || /[\0\n\r]/.test(v)) throw new ConfigError("must be a path");
      return resolvePath(v);
    }),
  schedule: custom({
    description: `off, hourly, daily, weekly, or a duration of at least ${fmtMs(MIN_SCHEDULE_INTERVAL_MS)}: a running VM whose newest backup is older gets one. Default: off.`,
    default: "off", anyOf: [{ enum: ["off", "hourly", "daily", "weekly", false] }, { type: "string" }, { type: "null" }],
  }, (v): BackupSchedule => (v === undefined ? { kind: "off" } : parseSchedule(v, ""))),
  keep_full: count("Chains kept per VM, a chain being a full backup and the incrementals on top of it; older chains are deleted whole.", DEFAULT_KEEP_FULL, 1, 1000),
  keep_incremental: count("Incrementals per chain; with this many, the next backup is a full one that starts a new chain (0 = always full).", DEFAULT_KEEP_INCREMENTAL, 0, 1000),
  agent_timeout: dur("How long the guest agent may take to answer guest-ping; silence means a crash-consistent backup.", DEFAULT_AGENT_TIMEOUT_MS, 100),
  freeze_timeout: dur("How long guest-fsfreeze-freeze may take (the guest flushes its filesystems); past it, thaw and back up crash-consistent.", DEFAULT_FREEZE_TIMEOUT_MS, 1000),
  stall_timeout: dur("A backup or restore whose progress stops this long is cancelled.", DEFAULT_STALL_TIMEOUT_MS, 1000),
  check_interval: dur("How often the schedule looks for VMs that are due.", DEFAULT_CHECK_INTERVAL_MS, 100),
  retry_after: dur("After a scheduled backup of a VM failed, the next attempt waits this long.", DEFAULT_RETRY_AFTER_MS, 0),
  rate_limit: sizeBytes("Bytes per second a backup job may read from a VM's disk (QEMU's job speed; 0 = unlimited).", { def: 0, min: 0 }),
}, (o) => o, { notMapping: "must be a mapping" });

/** The section as read; its dir default needs the provisioner's data dir. */
export type BackupsInput = ReturnType<(typeof backupsSchema)["parse"]>;

export function resolveBackups(o: BackupsInput, dataDir: string): BackupConfig {
  return Object.freeze({
    dir: o.dir ?? path.join(dataDir, DEFAULT_BACKUP_SUBDIR),
    schedule: o.schedule,
    keepFull: o.keep_full,
    keepIncremental: o.keep_incremental,
    agentTimeoutMs: o.agent_timeout,
    freezeTimeoutMs: o.freeze_timeout,
    stallTimeoutMs: o.stall_timeout,
    checkIntervalMs: o.check_interval,
    retryAfterMs: o.retry_after,
    rateLimitBytesPerSec: o.rate_limit,
  });
}

/** `cog.provisioner.backups` → a frozen BackupConfig; relative `dir` resolves against baseDir. */
export function parseBackupConfig(raw: unknown, at: string, baseDir: string, dataDir: string): BackupConfig {
  return resolveBackups(parseSection(backupsSchema, raw ?? {}, at, baseDir), dataDir);
}
