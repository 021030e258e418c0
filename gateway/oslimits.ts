/**
 * What the operating system must allow for the hub's limits to mean anything, checked
 * once at start and logged as warnings (never fatal: a small test hub runs fine below them):
 * - open files: every visitor and every tunnel connection is a file descriptor. Short of
 *   them, accept() fails with EMFILE and libuv then accepts and closes every connection
 *   waiting in the queue (its reserve-descriptor trick), whatever its source: the per-source
 *   caps cannot help. Node raises its soft RLIMIT_NOFILE to the hard limit at start, so the
 *   hard limit (systemd LimitNOFILE=) is what counts.
 * - net.core.somaxconn caps hub.limits.listen_backlog.
 * Linux only (/proc); elsewhere nothing is checked.
 */
import { readFileSync } from "node:fs";
import type { HubConfig } from "../config/types.js";

/**
 * Descriptors the hub needs besides visitors and unauthenticated tunnels: the cogs' tunnels,
 * the listeners, SQLite, logs and node's own (~20), with room for a few hundred cogs.
 */
export const HUB_FD_MARGIN = 1_024;

export interface OsLimitWarning {
  msg: string;
  fields: Record<string, number | string>;
}

/** Reads a /proc file, or null (not Linux, not readable). */
export type ProcReader = (path: string) => string | null;

const readProc: ProcReader = (path) => {
  try {
    return readFileSync(path, "utf8");
  } catch {
    return null;
  }
};

/** The soft limit on open files from /proc/self/limits ("unlimited": Infinity), or null. */
export function openFileLimit(read: ProcReader = readProc): number | null {
  const line = read("/proc/self/limits")?.split("\n").find((l) => l.startsWith("Max open files"));
  const soft = line?.trim().split(/\s{2,}/)[1];
  if (soft === undefined) return null;
  return soft === "unlimited" ? Infinity : Number(soft);
}

/** Descriptors the configured limits can take at once. */
export function hubFdsNeeded(cfg: HubConfig): number {
  return cfg.limits.maxVisitors + cfg.tunnel.maxUnauthenticated + HUB_FD_MARGIN;
}

export function osLimitWarnings(cfg: HubConfig, read: ProcReader = readProc): OsLimitWarning[] {
  const out: OsLimitWarning[] = [];
  const files = openFileLimit(read);
  const need = hubFdsNeeded(cfg);
  if (files !== null && files < need) {
    out.push({
      msg: "the open-file limit is below what hub.limits.max_visitors and hub.tunnel.max_unauthenticated allow: past it every source's new connections are dropped; raise LimitNOFILE= (systemd) or ulimit -n",
      fields: { openFiles: files, needed: need },
    });
  }
  const somaxconn = Number(read("/proc/sys/net/core/somaxconn")?.trim() ?? NaN);
  if (Number.isInteger(somaxconn) && somaxconn < cfg.limits.listenBacklog) {
    out.push({
      msg: "the kernel caps hub.limits.listen_backlog at net.core.somaxconn: raise it with sysctl",
      fields: { somaxconn, listenBacklog: cfg.limits.listenBacklog },
    });
  }
  return out;
}
