/**
 * A hub with workers as bench/tunnels.ts sees it: the primary's <data_dir>/hub-workers.json
 * (gateway/workers.ts: each worker's pid and ready flag), its JSON log lines, and where the
 * CPU goes, by role (the primary's own, each worker's); and the kill of one worker, watched
 * until the primary's new one takes tunnels and serves again.
 */
import fs from "node:fs";
import path from "node:path";
import { childPids, ownCpuSeconds, READY_TIMEOUT_MS, sleep, type Proc } from "./procs.js";

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

async function waitFor(what: string, cond: () => boolean, hub: Proc, timeoutMs = READY_TIMEOUT_MS): Promise<void> {
  const end = Date.now() + timeoutMs;
  while (!cond()) {
    if (Date.now() > end) throw new Error(`timed out waiting for ${what}; hub output:\n${hub.output().slice(-3000)}`);
    await sleep(WORKERS_POLL_MS);
  }
}

/**
 * `kill -9` of worker `victim` (pid `oldPid`); resolves once the primary's new one takes tunnels
 * again ("ready", k0 and readyAt in epoch ms). Moments watched: the primary's "worker started";
 * the new worker's own "warming up" line (it takes tunnels while its public listeners wait,
 * gateway/warmup.ts); serving: the primary's "worker ready" line, or its file's ready flag with
 * a new pid, whichever is seen first. A worker that does not warm up takes tunnels when it
 * serves. finish() (once all cogs are back) waits for it to serve, stops watching, and adds
 * servingAfterKillS to info.
 */
export async function killWorker(hub: Proc, dataDir: string, victim: number, oldPid: number): Promise<{
  k0: number; readyAt: number; newPid: number; info: Record<string, unknown>; finish: () => Promise<void>;
}> {
  const t = { started: 0, warming: 0, readyLog: 0, readyFile: 0 };
  let newPid = 0;
  const unwatch = watchLog(hub, (l) => {
    if (l.component === `hub/w${victim}` && typeof l.msg === "string" && l.msg.startsWith("warming up") && !t.warming) t.warming = Date.now();
    if (l.worker !== victim || l.pid === oldPid) return;
    if (l.msg === "worker started" && !t.started) { t.started = Date.now(); newPid = Number(l.pid); }
    if (l.msg === "worker ready" && !t.readyLog) { t.readyLog = Date.now(); newPid = Number(l.pid); }
  });
  const row = (): WorkerRow | undefined => readWorkers(dataDir)?.workers.find((w) => w.worker === victim);
  const poll = setInterval(() => {
    const r = row();
    if (r?.ready && r.pid !== null && r.pid !== oldPid && !t.readyFile) { t.readyFile = Date.now(); newPid = r.pid; }
  }, WORKERS_POLL_MS);
  const serving = (): number => Math.min(t.readyLog || Infinity, t.readyFile || Infinity);
  const others = childPids(hub.pid).filter((p) => p !== oldPid);
  const k0 = Date.now();
  process.kill(oldPid, "SIGKILL");
  await waitFor(`worker ${victim} to take tunnels again`, () => t.warming > 0 || serving() < Infinity, hub);
  const readyAt = Math.min(t.warming || Infinity, serving());
  // Log lines are written asynchronously: if "worker started" is not in yet, the pid is the file's or the primary's new child.
  if (!newPid) { const r = row(); newPid = r?.pid && r.pid !== oldPid ? r.pid : childPids(hub.pid).find((p) => !others.includes(p)) ?? 0; }
  const info: Record<string, unknown> = {
    worker: victim, oldPid, newPid,
    startedAfterKillS: t.started ? (t.started - k0) / 1000 : null,
    tunnelsAfterKillS: (readyAt - k0) / 1000, warmedUp: t.warming > 0,
    bootCpuS: ownCpuSeconds(newPid),
  };
  const finish = async (): Promise<void> => {
    await waitFor(`worker ${victim} to serve`, () => serving() < Infinity, hub).catch(() => { /* not serving in time: null below */ });
    unwatch();
    clearInterval(poll);
    const at = serving();
    info.servingAfterKillS = at < Infinity ? (at - k0) / 1000 : null;
    info.servingSeenIn = at === Infinity ? null : t.readyLog === at ? "log" : "file";
  };
  return { k0, readyAt, newPid, info, finish };
}
