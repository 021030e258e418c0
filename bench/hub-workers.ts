/**
 * A hub with workers as bench/tunnels.ts sees it: the primary's <data_dir>/hub-workers.json
 * (gateway/workers.ts: each worker's pid and ready flag), its JSON log lines, and where the
 * CPU goes, by role (the primary's own, each worker's).
 */
import fs from "node:fs";
import path from "node:path";
import { ownCpuSeconds, READY_TIMEOUT_MS, sleep, type Proc } from "./procs.js";

/** How often hub-workers.json is read while waiting for workers (the primary rewrites it on each change). */
export const WORKERS_POLL_MS = 10;

/** A row of <data_dir>/hub-workers.json (gateway/workers.ts), the fields read here. */
export interface WorkerRow { worker: number; pid: number | null; ready: boolean; restarts: number }

export function readWorkers(dataDir: string): { primary: number; workers: WorkerRow[] } | null {
  try {
    return JSON.parse(fs.readFileSync(path.join(dataDir, "hub-workers.json"), "utf8")) as { primary: number; workers: WorkerRow[] };
  } catch {
    return null; // not written yet (the primary renames it into place, so never half a file)
  }
}

/** The workers of the primary `pid` once all are ready (its file, not a previous hub's). */
export async function readyWorkers(dataDir: string, pid: number, n: number): Promise<Array<WorkerRow & { pid: number }>> {
  const end = Date.now() + READY_TIMEOUT_MS;
  for (;;) {
    const f = readWorkers(dataDir);
    if (f !== null && f.primary === pid && f.workers.length === n && f.workers.every((w) => w.ready && w.pid !== null)) {
      return f.workers as Array<WorkerRow & { pid: number }>;
    }
    if (Date.now() > end) throw new Error(`hub-workers.json did not list ${n} ready workers of primary ${pid} within ${READY_TIMEOUT_MS} ms: ${JSON.stringify(f)}`);
    await sleep(WORKERS_POLL_MS);
  }
}

/** Own CPU seconds of the primary and of each worker (w1, w2, ...): where the hub's work lands. */
export function roleCpu(primary: number, workers: ReadonlyArray<{ worker: number; pid: number }>): Record<string, number> {
  const r: Record<string, number> = { primary: ownCpuSeconds(primary) };
  for (const w of workers) r[`w${w.worker}`] = ownCpuSeconds(w.pid);
  return r;
}

/** ms of CPU per tunnel by role between two roleCpu() readings (null: a process gone in between). */
export function perTunnelMs(after: Record<string, number>, before: Record<string, number>, n: number): Record<string, number | null> {
  return Object.fromEntries(Object.keys(after).map((k) => {
    const ms = ((after[k]! - (before[k] ?? NaN)) * 1000) / Math.max(1, n);
    return [k, Number.isFinite(ms) ? Math.round(ms * 1000) / 1000 : null];
  }));
}

/** Calls `on` with each JSON log line the hub prints from now on; returns the unsubscribe. */
export function watchLog(hub: Proc, on: (line: Record<string, unknown>) => void): () => void {
  const streams = [hub.child.stdout!, hub.child.stderr!];
  const offs = streams.map((st) => {
    let rest = "";
    const f = (b: Buffer): void => {
      const lines = (rest + b.toString()).split("\n");
      rest = lines.pop()!;
      for (const l of lines) {
        if (!l.startsWith("{")) continue;
        try { on(JSON.parse(l) as Record<string, unknown>); } catch { /* not a log line */ }
      }
    };
    st.on("data", f);
    return () => st.off("data", f);
  });
  return () => offs.forEach((off) => off());
}
