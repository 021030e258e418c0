/**
 * `capsul hub` with hub.workers above 1: the primary process (signals, pidfile, reload
 * outcome, the workers' care: gateway/workers.ts) and what each forked worker runs.
 */
import cluster from "node:cluster";
import fs from "node:fs";
import type { CapsulConfig, HubConfig } from "../config/types.js";
import { loadConfigFile } from "../config/config.js";
import { sameValue } from "../config/reload.js";
import type { Logger } from "../lib/log.js";
import { startHub, type Hub } from "../gateway/hub.js";
import type { AdminTlsRole } from "../gateway/admintls.js";
import type { MuxSession } from "../protocol/mux.js";
import {
  startPrimary, workerHubConfig, WORKER_INDEX_ENV, WORKER_TUNNEL_PORT_ENV, WORKER_WARMUP_COGS_ENV,
  type FromWorker, type ToWorker,
} from "../gateway/workers.js";
import { warmUp, type Warmup } from "../gateway/warmup.js";
import { sdNotify } from "../lib/sdnotify.js";
import { pidFile, reloadResultFile, RELOAD_WAIT_TIMEOUT_MS, runService, type ReloadResult } from "./service.js";

/** This process is hub worker i under a primary, or null. */
export function hubWorkerIndex(): number | null {
  if (!cluster.isWorker) return null;
  const i = Number(process.env[WORKER_INDEX_ENV]);
  return Number.isInteger(i) && i >= 1 ? i : null;
}

/** hub.workers and hub.worker: how many processes run and how they are cared for, fixed at start. */
export function workerRestartKeys(a: HubConfig, b: HubConfig): string[] {
  const out: string[] = [];
  if (a.workers !== b.workers) out.push("hub.workers");
  if (!sameValue(a.worker, b.worker)) out.push("hub.worker");
  return out;
}

/** The keys only the primary applies (it holds the tunnel port and the workers): a restart. */
function primaryRestartKeys(a: HubConfig, b: HubConfig): string[] {
  const out = workerRestartKeys(a, b);
  if (!sameValue(a.listen.tunnel, b.listen.tunnel)) out.unshift("hub.listen.tunnel");
  return out;
}

function writeAtomic(file: string, data: string): void {
  const tmp = `${file}.${process.pid}.tmp`;
  fs.writeFileSync(tmp, data);
  fs.renameSync(tmp, file);
}

/**
 * Worker i: a full hub whose tunnel connections come from the primary; it reports ready,
 * its ports and its visitor counters, and serves until the primary says drain.
 */
export async function runHubWorker(i: number, cfg: CapsulConfig, hubCfg: HubConfig, file: string, log: Logger): Promise<void> {
  const tunnelPort = Number(process.env[WORKER_TUNNEL_PORT_ENV]);
  const start = hubCfg.listen.tunnel;
  const send = (m: FromWorker): void => { process.send?.(m); };
  // The admin certificate (hub.admin.tls: acme): worker 1 orders and shares, the others follow (gateway/admintls.ts).
  let shareSeq = 0;
  const acked = new Map<number, () => void>();
  const adminTlsRole: AdminTlsRole = i !== 1 ? { role: "follower" } : {
    role: "owner",
    send: (share) => new Promise<void>((resolve) => {
      const seq = ++shareSeq;
      acked.set(seq, resolve);
      send({ type: "capsul-acme", seq, share });
    }),
  };
  let h: Hub | null = null;
  // Started again while others serve: warm up first (gateway/warmup.ts).
  const warmupCogs = hubCfg.worker.warmupMs > 0 ? Number(process.env[WORKER_WARMUP_COGS_ENV] ?? 0) || 0 : 0;
  let warmup: Warmup | null = null;
  let serveNow = false;
  // Before startHub: worker 1 starts ordering inside it and waits for the primary's acks.
  process.on("message", (m: ToWorker, handle: unknown) => {
    if (m?.type === "capsul-acme-ack") {
      acked.get(m.seq)?.();
      acked.delete(m.seq);
    } else if (m?.type === "capsul-acme") {
      h?.adminTls.apply(m.share);
      if (m.seq >= 0) send({ type: "capsul-acme-ack", seq: m.seq });
    } else if (m?.type === "capsul-tunnel" && handle && h) {
      h.tunnels.adopt(handle as import("node:net").Socket, Buffer.from(m.head, "base64"));
    } else if (m?.type === "capsul-serve") {
      serveNow = true;
      warmup?.serveNow();
    }
  });
  h = await startHub(workerHubConfig(hubCfg, i, tunnelPort), log, { handedTunnelPort: tunnelPort, adminTlsRole, holdPublic: warmupCogs > 0 });
  const stats = setInterval(() => {
    const v = h.visitors.stats;
    let tunnels = 0;
    for (const l of h.tunnels.links.values()) if ((l.session as MuxSession | null) !== null) tunnels++;
    send({ type: "capsul-stats", active: v.active, total: v.total, routed: v.routed, tunnels });
  }, hubCfg.worker.statsIntervalMs);
  stats.unref();
  let draining = false;
  const ready = (): void => send({ type: "capsul-ready", tls: h.ports.tls, http: h.ports.http });
  if (warmupCogs > 0) {
    // Not awaited: the service below answers the primary's drain and reload meanwhile.
    const w = warmUp(h.tunnels, warmupCogs, hubCfg.worker.warmupMs, log);
    warmup = w;
    if (serveNow) w.serveNow();
    send({ type: "capsul-tunnels" });
    void w.done.then(() => h.openPublic()).then(() => { if (!draining) ready(); }, (err: Error) => {
      // As a listener failing at start would: the primary starts this worker again.
      log.error("worker could not open its public listeners after the warm-up", { error: err.message });
      process.exit(1);
    });
  } else {
    ready();
  }
  await runService({
    role: "hub", file, dataDir: hubCfg.dataDir, underPrimary: true,
    reload: async (next) => {
      const nextHub = next.hub!;
      const report = await h.reload(workerHubConfig(nextHub, i, tunnelPort, start));
      return { ...report, restart: [] };
    },
    graceMs: () => h.config.shutdownGraceMs,
    drain: (graceMs, cutNow) => { draining = true; return h.drain(graceMs, cutNow); },
    close: async () => { clearInterval(stats); await h.close(); },
  }, cfg, log);
  process.exit(0);
}

/**
 * The primary: starts the workers (gateway/workers.ts), prints "hub ready" once all are,
 * owns hub.pid, turns SIGHUP into a reload of every worker (the outcome file combines
 * theirs) and SIGTERM/SIGINT into a drain of every worker (a second one: cut), then exits.
 */
export async function runHubPrimary(hubCfg: HubConfig, file: string, log: Logger): Promise<void> {
  const primary = await startPrimary(hubCfg, log, process.argv);
  const ports = await primary.ready;
  log.info("hub ready", { tls: ports.tls ?? "off", http: ports.http ?? "off", tunnel: primary.tunnelPort, workers: hubCfg.workers, pid: process.pid });
  const pids = pidFile(hubCfg.dataDir, "hub");
  writeAtomic(pids, `${process.pid}\n`);
  // Type=notify (deploy/capsul-hub.service): the primary speaks for the hub; its workers stay silent (cli/service.ts).
  void sdNotify(["READY=1", `STATUS=hub running (pid ${process.pid}, ${hubCfg.workers} workers)`], log);

  let seq = 0;
  let reloading: Promise<void> = Promise.resolve();
  const reloadOnce = async (): Promise<void> => {
    seq++;
    await sdNotify(["RELOADING=1", `STATUS=reloading ${file}`], log);
    const result: ReloadResult = { pid: process.pid, seq, at: "", ok: true, changed: [], restart: [], error: null, exit: 0 };
    const workers = primary.live();
    const replies = await Promise.all(workers.map((w) => new Promise<Extract<FromWorker, { type: "capsul-reloaded" }> | null>((resolve) => {
      const timer = setTimeout(() => { w.off("message", on); resolve(null); }, RELOAD_WAIT_TIMEOUT_MS);
      const on = (m: FromWorker): void => {
        if (m?.type !== "capsul-reloaded") return;
        clearTimeout(timer);
        w.off("message", on);
        resolve(m);
      };
      w.on("message", on);
      w.send({ type: "capsul-reload" } satisfies ToWorker);
    })));
    const changed = new Set<string>();
    const restart = new Set<string>();
    for (const r of replies) {
      if (r === null) { result.ok = false; result.error ??= "a worker did not report its reload in time"; result.exit = 1; continue; }
      r.changed.forEach((k) => changed.add(k));
      r.restart.forEach((k) => restart.add(k));
      if (!r.ok) { result.ok = false; result.error ??= r.error; result.exit = r.exit; }
    }
    try {
      const next = loadConfigFile(file).hub;
      if (next) for (const k of primaryRestartKeys(hubCfg, next)) { changed.add(k); restart.add(k); }
    } catch { /* the workers said why */ }
    result.changed = [...changed];
    result.restart = [...restart];
    result.at = new Date().toISOString();
    for (const key of result.restart) log.warn(`${key} changed: it takes effect when capsul hub restarts; the running hub keeps the old value`);
    try {
      writeAtomic(reloadResultFile(hubCfg.dataDir, "hub"), JSON.stringify(result) + "\n");
    } catch (err) {
      log.warn("could not write the reload result for capsul reload", { error: (err as Error).message });
    }
    await sdNotify(["READY=1", `STATUS=${result.ok ? `reloaded at ${result.at}` : `reload refused at ${result.at}: ${result.error}`}`], log);
  };

  await new Promise<void>((resolve) => {
    let stopping = false;
    const onHup = (): void => {
      if (stopping) { log.warn("SIGHUP while shutting down: not reloading"); return; }
      reloading = reloading.then(reloadOnce);
    };
    const stop = (signal: string): void => {
      if (stopping) {
        log.warn("second signal: the workers cut open connections now", { signal });
        primary.broadcast({ type: "capsul-cut" });
        return;
      }
      stopping = true;
      void sdNotify(["STOPPING=1", `STATUS=draining the workers on ${signal}`], log);
      log.info("shutting down: draining the workers", { signal, workers: primary.broadcast({ type: "capsul-drain" }) });
      void primary.stop().then(() => {
        process.off("SIGHUP", onHup);
        process.off("SIGINT", onInt);
        process.off("SIGTERM", onTerm);
        try {
          if (fs.readFileSync(pids, "utf8").trim() === String(process.pid)) fs.rmSync(pids);
        } catch { /* gone already */ }
        log.info("shut down: every worker exited");
        resolve();
      });
    };
    const onInt = (): void => stop("SIGINT");
    const onTerm = (): void => stop("SIGTERM");
    process.on("SIGHUP", onHup);
    process.on("SIGINT", onInt);
    process.on("SIGTERM", onTerm);
  });
  process.exit(0);
}
