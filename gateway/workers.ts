/**
 * Hub workers on one machine (issue 12, hub.workers: N | auto). The primary process
 * starts N workers with node:cluster; each is a full hub (gateway/hub.ts) registered
 * as its own endpoint `<endpoint>-w<i>`, with the TLS server name `w<i>.<server_name>`.
 *
 * Public listeners (TLS, HTTP, raw TCP ports): the workers open them as a single hub
 * would, and cluster shares one listening socket per address among them. The policy is
 * SCHED_NONE: the primary binds the socket once and hands the listening handle to each
 * worker, which accepts on it itself, so a visitor costs the primary nothing. The other
 * policy, round-robin (Node's default on Linux), accepts every connection in the primary
 * and sends its handle to a worker over IPC: a syscall pair and an IPC message per
 * visitor in the primary, whose one core would then cap every worker together. The price
 * of SCHED_NONE is balance: the kernel wakes whichever worker waits; a busy worker is not
 * waiting, so load spreads toward idle ones, but an idle hub may land a burst on one.
 *
 * The tunnel port stays one port, held by the primary: a cog names the worker it wants in
 * the TLS server name, so the primary peeks each tunnel connection's ClientHello (the
 * visitors' parser and peek, bounded by hub.limits.client_hello_timeout and
 * client_hello_max_bytes, under hub.tunnel.max_unauthenticated[_per_ip] while it peeks; its
 * backlog is hub.tunnel.listen_backlog),
 * and sends the raw socket with the bytes it read to that worker (Tunnels.adopt()), which
 * puts them back in front before its TLS server reads. No server name, or one naming no
 * worker (enrollment, a cog dialing the configured address, an older cog): worker 1, the
 * bootstrap worker, whose welcome lists every worker's endpoint. A tunnel is one
 * connection per cog and worker, so this is per cog, never per visitor.
 *
 * A worker that dies is started again under the same index (same endpoint name) after
 * hub.worker.restart_min_delay, doubling per death in a row up to restart_max_delay; its
 * cogs redial it with their own backoff, and their dials meanwhile wait at the primary for
 * it (hub.worker.handoff_wait) rather than being closed. While another worker serves, the
 * new one warms up (gateway/warmup.ts): it takes tunnels at once but opens its public
 * listeners only once its cogs are back (hub.worker.warmup at most), so the visitors
 * meanwhile go to workers that hold their cogs' tunnels, and a worker's death is noticed
 * by its own visitors only.
 *
 * SIGHUP, SIGTERM and SIGINT reach the workers as IPC messages (reload, drain, cut), so a
 * worker that also got the signal itself (a process-group Ctrl-C) drains once.
 */
import cluster, { type Worker } from "node:cluster";
import fs from "node:fs";
import net from "node:net";
import path from "node:path";
import type { HubConfig } from "../config/types.js";
import type { AdminAcmeShare } from "./admintls.js";
import type { Logger } from "../lib/log.js";
import { loadOrCreateHubPki } from "../certs/pki.js";
import { ENDPOINT_NAME_RE } from "../config/endpoint.js";
import { parseClientHello } from "./clienthello.js";
import { peek } from "./peek.js";
import { ThrottledLog, TunnelAdmission, type AdmissionTicket } from "./admission.js";
import { listenOn } from "./listeners.js";
import { TicketKeys } from "./ticketkeys.js";
import { openHubStore } from "./store/index.js";
import { hubNames } from "./hub.js";

/** The environment variable that tells a forked process it is worker i (1-based). */
export const WORKER_INDEX_ENV = "CAPSUL_HUB_WORKER";
/** The primary's bound tunnel port, for a worker's endpoint address when the config says port 0. */
export const WORKER_TUNNEL_PORT_ENV = "CAPSUL_HUB_TUNNEL_PORT";
/** Where the primary writes each worker's pid, endpoint, restarts and visitor counters. */
export const WORKERS_FILE = "hub-workers.json";
/**
 * Set for a worker started again while another serves: how many cogs to wait for before it
 * opens its public listeners (gateway/warmup.ts); absent or 0: it opens them at once.
 */
export const WORKER_WARMUP_COGS_ENV = "CAPSUL_HUB_WORKER_WARMUP_COGS";

/** Messages between the primary and a worker (process.send). */
export type ToWorker =
  | { type: "capsul-tunnel"; head: string }
  | { type: "capsul-reload" }
  | { type: "capsul-drain" }
  | { type: "capsul-cut" }
  /** To a warming worker: no other worker serves visitors now; open the public listeners. */
  | { type: "capsul-serve" }
  /** To a follower: the admin certificate's challenge answer or certificate (seq -1: a replay at its start, no ack wanted). */
  | { type: "capsul-acme"; seq: number; share: AdminAcmeShare }
  /** To worker 1: every ready follower holds share `seq` (or did not confirm within hub.acme.request_timeout). */
  | { type: "capsul-acme-ack"; seq: number };
export type FromWorker =
  /** From worker 1 (the admin certificate's owner): pass this to every other worker. */
  | { type: "capsul-acme"; seq: number; share: AdminAcmeShare }
  /** From a follower: it holds share `seq`. */
  | { type: "capsul-acme-ack"; seq: number }
  /** A warming worker takes tunnels now; its public listeners wait (gateway/warmup.ts). */
  | { type: "capsul-tunnels" }
  | { type: "capsul-ready"; tls: number | null; http: number | null }
  | { type: "capsul-stats"; active: number; total: number; routed: number; tunnels: number }
  | { type: "capsul-reloaded"; ok: boolean; changed: string[]; restart: string[]; error: string | null; exit: number };

/** Worker i's endpoint name: the hub's with `-w<i>`, the base cut so the whole stays a valid name. */
export function workerEndpointName(base: string, i: number): string {
  const suffix = `-w${i}`;
  const name = base.slice(0, 63 - suffix.length).replace(/[.-]+$/, "") + suffix;
  return ENDPOINT_NAME_RE.test(name) ? name : `hub${suffix}`;
}

/** Worker i's TLS server name: a label under the hub's (so the hub certificate can name it). */
export function workerServerName(serverName: string, i: number): string {
  return `w${i}.${serverName}`;
}

/**
 * Worker i's configuration: its own endpoint (name, server name; port 0 advertised as the
 * primary's bound tunnel port) and the tunnel listener as the primary started it, which a
 * worker never binds, so a reload moving it is the primary's (it needs a restart).
 */
export function workerHubConfig(cfg: HubConfig, i: number, tunnelPort: number, startTunnel = cfg.listen.tunnel): HubConfig {
  const ep = cfg.endpoint;
  return {
    ...cfg,
    listen: { ...cfg.listen, tunnel: startTunnel },
    endpoint: {
      ...ep,
      name: workerEndpointName(ep.name, i),
      serverName: workerServerName(ep.serverName, i),
      advertise: ep.advertise.port === 0 ? { host: ep.advertise.host, port: tunnelPort } : ep.advertise,
    },
  };
}

/** A tunnel connection peeked for a worker that is starting: it waits for it (hub.worker.handoff_wait). */
interface Waiting {
  raw: net.Socket;
  head: Buffer;
  ticket: AdmissionTicket;
  timer: NodeJS.Timeout;
}

interface Slot {
  index: number;
  /** Tunnel connections waiting for this worker to take tunnels. */
  waiting: Set<Waiting>;
  worker: Worker | null;
  /** Serving: its public listeners are open. */
  ready: boolean;
  /** Takes tunnel connections: ready, or warming up (gateway/warmup.ts). */
  tunnels: boolean;
  warming: boolean;
  restarts: number;
  /** Deaths in a row without a long enough life: the backoff exponent. */
  streak: number;
  readyAt: number;
  stats: Omit<Extract<FromWorker, { type: "capsul-stats" }>, "type"> | null;
  timer: NodeJS.Timeout | null;
}

export interface PrimaryHandle {
  /** The one public tunnel port. */
  readonly tunnelPort: number;
  /** Resolves once every worker has been ready once, with the public ports worker 1 bound. */
  readonly ready: Promise<{ tls: number | null; http: number | null }>;
  /** Sends a message to every live worker; returns how many got it. */
  broadcast(msg: ToWorker): number;
  /** Live workers, for collecting replies. */
  live(): Worker[];
  /** Stops the tunnel listener and restarts; resolves when every worker has exited. */
  stop(): Promise<void>;
}

/**
 * The primary: binds the tunnel port, starts the workers, keeps them running, routes tunnel
 * connections to them. Must run in the primary process (cluster.isPrimary).
 */
export async function startPrimary(cfg: HubConfig, log: Logger, argv: string[]): Promise<PrimaryHandle> {
  const n = cfg.workers;
  // Every worker's server name in the one certificate, issued here before any worker reads it
  // (a worker only re-issues when a name it needs is missing, so N workers never race to write).
  const names = [...hubNames(cfg)];
  for (let i = 1; i <= n; i++) names.push(workerServerName(cfg.endpoint.serverName, i));
  await loadOrCreateHubPki(cfg.dataDir, names);
  // Likewise the tunnel's session ticket key: N workers creating it at once would each seal
  // tickets with their own key until the last rename won, and a worker started again later
  // (reading the file) could not open the tickets its predecessor sealed.
  const tickets = new TicketKeys(cfg.dataDir, () => cfg.tunnel.sessionTicketRotationMs, log, () => {});
  await tickets.load();
  tickets.close();
  // And the store: its migrations and SQLite's switch to WAL, which N workers opening a fresh
  // data dir at once would race for (a worker died at its first start with "database is locked").
  const store = await openHubStore(cfg, log.child("store"));
  await store.close();

  const bySni = new Map<string, number>();
  for (let i = 1; i <= n; i++) bySni.set(workerServerName(cfg.endpoint.serverName, i), i);
  const slots: Slot[] = [];
  for (let i = 1; i <= n; i++) slots.push({ index: i, waiting: new Set(), worker: null, ready: false, tunnels: false, warming: false, restarts: 0, streak: 0, readyAt: 0, stats: null, timer: null });

  const strangers = new ThrottledLog(log);
  const admission = new TunnelAdmission(cfg.tunnel.maxUnauthenticated, cfg.tunnel.maxUnauthenticatedPerIp, strangers);
  let stopping = false;

  const pass = (slot: Slot, raw: net.Socket, head: Buffer): void => {
    const msg: ToWorker = { type: "capsul-tunnel", head: head.toString("base64") };
    // keepOpen false: once sent, the primary's copy of the socket is closed; the worker owns it.
    slot.worker!.send(msg, raw, (err) => { if (err) raw.destroy(); });
  };
  const unwait = (slot: Slot, w: Waiting): boolean => {
    if (!slot.waiting.delete(w)) return false;
    clearTimeout(w.timer);
    w.ticket.release();
    return true;
  };
  /** The worker takes tunnels now: what waited for it goes to it, oldest first. */
  const flush = (slot: Slot): void => {
    for (const w of [...slot.waiting]) if (unwait(slot, w)) pass(slot, w.raw, w.head);
  };
  const handOver = async (raw: net.Socket): Promise<void> => {
    raw.on("error", () => {});
    const ticket = admission.admit(raw.remoteAddress);
    if (!ticket) { raw.destroy(); return; }
    let kept = false;
    try {
      const maxBytes = cfg.limits.clientHelloMaxBytes;
      const out = await peek(raw, (b) => parseClientHello(b, maxBytes), { timeoutMs: cfg.limits.clientHelloTimeoutMs, maxBytes });
      if (out.kind !== "ok") { raw.destroy(); return; }
      const i = (out.value.sni !== null ? bySni.get(out.value.sni) : undefined) ?? 1;
      const slot = slots[i - 1]!;
      if (stopping) { raw.destroy(); return; }
      // What the stream buffered after the peek paused it goes along too. (A TLS client sends
      // nothing after its ClientHello until the server answers, and the hub takes no 0-RTT
      // data, so this is empty in practice; the handle leaves with the send below.)
      let head = out.bytes;
      for (let more = raw.read() as Buffer | null; more !== null; more = raw.read() as Buffer | null) head = Buffer.concat([head, more]);
      if (slot.tunnels && slot.worker) { pass(slot, raw, head); return; }
      // Its worker is starting (again, after a death): the connection waits for it, up to
      // hub.worker.handoff_wait and still under the unauthenticated caps, rather than being
      // closed into the cog's backoff (0.5, 1.5, 3.5 s...): the cogs that redialed while it
      // booted (~1 s) are served the moment it takes tunnels. The tunnel port stays open through
      // a worker's death, so nothing of the dial is lost.
      if (cfg.worker.handoffWaitMs <= 0) { raw.destroy(); return; }
      const w: Waiting = { raw, head, ticket, timer: setTimeout(() => { if (unwait(slot, w)) raw.destroy(); }, cfg.worker.handoffWaitMs) };
      slot.waiting.add(w);
      kept = true;
    } finally {
      if (!kept) ticket.release();
    }
  };
  const server = net.createServer({ pauseOnConnect: true }, (raw) => void handOver(raw));
  server.on("error", (err) => log.error("tunnel listener error", { error: err.message }));
  const tunnelPort = await listenOn(server, cfg.listen.tunnel, cfg.tunnel.listenBacklog);

  // The primary binds each shared public socket once and lends it to every worker (see above).
  cluster.schedulingPolicy = cluster.SCHED_NONE;
  cluster.setupPrimary({ exec: argv[1], args: argv.slice(2), execArgv: process.execArgv });

  const statsFile = path.join(cfg.dataDir, WORKERS_FILE);
  const writeStats = (): void => {
    const rows = slots.map((s) => ({
      worker: s.index, endpoint: workerEndpointName(cfg.endpoint.name, s.index), server_name: workerServerName(cfg.endpoint.serverName, s.index),
      pid: s.worker?.process.pid ?? null, ready: s.ready, warming: s.warming, restarts: s.restarts, ...(s.stats ?? {}),
    }));
    const tmp = `${statsFile}.${process.pid}.tmp`;
    try {
      fs.writeFileSync(tmp, JSON.stringify({ primary: process.pid, tunnel: tunnelPort, workers: rows }) + "\n");
      fs.renameSync(tmp, statsFile);
    } catch (err) {
      log.warn("could not write the worker stats file", { file: statsFile, error: (err as Error).message });
    }
  };

  let allReady: (ports: { tls: number | null; http: number | null }) => void;
  const ready = new Promise<{ tls: number | null; http: number | null }>((r) => { allReady = r; });
  let firstPorts: { tls: number | null; http: number | null } | null = null;
  let exited: () => void = () => {};

  const acme = new AcmeRelay(slots, cfg.acme.requestTimeoutMs, log);
  /** No worker serves visitors: the warming ones serve now rather than nobody (gateway/warmup.ts). */
  const serveIfNoneReady = (): void => {
    if (slots.some((s) => s.ready)) return;
    for (const s of slots) if (s.warming && s.worker?.isConnected()) s.worker.send({ type: "capsul-serve" } satisfies ToWorker);
  };
  const fork = (slot: Slot): void => {
    slot.timer = null;
    if (stopping) return;
    // Started again while others serve: it warms up until it holds as many cogs as the
    // busiest of them did at their last report (gateway/warmup.ts).
    const serving = slots.filter((s) => s !== slot && s.ready);
    const warmupCogs = cfg.worker.warmupMs > 0 ? Math.max(0, ...serving.map((s) => s.stats?.tunnels ?? 0)) : 0;
    const w = cluster.fork({
      [WORKER_INDEX_ENV]: String(slot.index), [WORKER_TUNNEL_PORT_ENV]: String(tunnelPort), [WORKER_WARMUP_COGS_ENV]: String(warmupCogs),
    });
    slot.worker = w;
    slot.ready = false;
    slot.tunnels = false;
    slot.warming = warmupCogs > 0;
    slot.stats = null;
    log.info("worker started", { worker: slot.index, pid: w.process.pid, ...(warmupCogs > 0 ? { warmup_cogs: warmupCogs } : {}) });
    w.on("message", (m: FromWorker) => {
      // Started while the hub began to shut down: the drain it was sent came before it listened.
      if ((m?.type === "capsul-tunnels" || m?.type === "capsul-ready") && stopping) w.send({ type: "capsul-drain" } satisfies ToWorker);
      if (m?.type === "capsul-tunnels") {
        slot.tunnels = true;
        flush(slot);
        // The serving ones may have died before this worker listened for the primary.
        serveIfNoneReady();
        writeStats();
      } else if (m?.type === "capsul-ready") {
        slot.ready = true;
        slot.tunnels = true;
        slot.warming = false;
        flush(slot);
        slot.readyAt = Date.now();
        log.info("worker ready", { worker: slot.index, pid: w.process.pid, endpoint: workerEndpointName(cfg.endpoint.name, slot.index) });
        if (slot.index === 1 && firstPorts === null) firstPorts = { tls: m.tls, http: m.http };
        if (firstPorts && slots.every((s) => s.ready)) allReady(firstPorts);
        acme.replay(slot);
        writeStats();
      } else if (m?.type === "capsul-acme") {
        if (slot.index === 1) acme.relay(slot, m.seq, m.share);
      } else if (m?.type === "capsul-acme-ack") {
        acme.acked(slot, m.seq);
      } else if (m?.type === "capsul-stats") {
        const { type: _t, ...stats } = m;
        slot.stats = stats;
        writeStats();
      }
    });
    w.on("exit", (code, signal) => {
      if (slot.worker !== w) return;
      slot.worker = null;
      slot.ready = false;
      slot.tunnels = false;
      slot.warming = false;
      acme.gone(slot);
      serveIfNoneReady();
      if (stopping) {
        log.info("worker exited", { worker: slot.index, code, signal: signal ?? undefined });
        if (slots.every((s) => s.worker === null)) exited();
        return;
      }
      // A worker that had run a while died of something new: start from the short delay again.
      if (slot.readyAt && Date.now() - slot.readyAt >= cfg.worker.restartMaxDelayMs) slot.streak = 0;
      const delayMs = Math.min(cfg.worker.restartMaxDelayMs, cfg.worker.restartMinDelayMs * 2 ** Math.min(slot.streak, 30));
      slot.streak++;
      slot.restarts++;
      log.error("worker died; starting it again", { worker: slot.index, code, signal: signal ?? undefined, delayMs, restarts: slot.restarts });
      writeStats();
      slot.timer = setTimeout(() => fork(slot), delayMs);
    });
  };
  for (const s of slots) fork(s);

  const live = (): Worker[] => slots.flatMap((s) => (s.worker && s.worker.isConnected() ? [s.worker] : []));
  return {
    tunnelPort,
    ready,
    live,
    broadcast(msg) {
      const ws = live();
      for (const w of ws) w.send(msg);
      return ws.length;
    },
    stop() {
      stopping = true;
      server.close();
      for (const s of slots) for (const w of [...s.waiting]) if (unwait(s, w)) w.raw.destroy();
      for (const s of slots) if (s.timer) { clearTimeout(s.timer); s.timer = null; }
      if (slots.every((s) => s.worker === null)) return Promise.resolve();
      return new Promise<void>((resolve) => { exited = resolve; });
    },
  };
}

/**
 * The admin certificate across workers (hub.admin.tls: acme, gateway/admintls.ts): worker 1
 * sends each challenge answer and each new certificate here; the primary passes it to every
 * other ready worker and tells worker 1 once all of them confirmed (or after
 * hub.acme.request_timeout, logged), so the CA is told to validate only when any worker
 * the validator reaches can answer. It keeps the open answers and the newest certificate
 * and replays them to a worker that becomes ready (a restart mid-order).
 */
class AcmeRelay {
  private readonly state = new Map<string, AdminAcmeShare>();
  private readonly waits = new Map<number, { owner: Slot; ownerSeq: number; waiting: Set<number>; timer: NodeJS.Timeout }>();
  private nextId = 1;

  constructor(private readonly slots: readonly Slot[], private readonly timeoutMs: number, private readonly log: Logger) {}

  relay(owner: Slot, ownerSeq: number, share: AdminAcmeShare): void {
    const key = share.op === "http-add" || share.op === "http-remove" ? `http ${share.name} ${share.token}` : `${share.op.slice(0, 4)} ${share.name}`;
    if (share.op.endsWith("-remove")) this.state.delete(key);
    else this.state.set(key, share);
    const id = this.nextId++;
    const targets = this.slots.filter((s) => s !== owner && s.ready && s.worker?.isConnected());
    const timer = setTimeout(() => {
      this.log.warn("workers did not confirm the admin certificate's ACME share in time; going on", { op: share.op, workers: [...(this.waits.get(id)?.waiting ?? [])].join(",") });
      this.done(id);
    }, this.timeoutMs);
    this.waits.set(id, { owner, ownerSeq, waiting: new Set(targets.map((s) => s.index)), timer });
    for (const s of targets) s.worker!.send({ type: "capsul-acme", seq: id, share } satisfies ToWorker);
    if (targets.length === 0) this.done(id);
  }

  acked(from: Slot, id: number): void {
    const w = this.waits.get(id);
    if (!w) return;
    w.waiting.delete(from.index);
    if (w.waiting.size === 0) this.done(id);
  }

  /**
   * A worker exited: nobody waits for it. Worker 1's orders died with it (its next start
   * orders again): the challenges it had open are withdrawn from the others.
   */
  gone(slot: Slot): void {
    for (const [id, w] of this.waits) {
      if (w.owner === slot) { clearTimeout(w.timer); this.waits.delete(id); continue; }
      w.waiting.delete(slot.index);
      if (w.waiting.size === 0) this.done(id);
    }
    if (slot.index !== 1) return;
    for (const [key, share] of this.state) {
      let undo: AdminAcmeShare;
      if (share.op === "http-add") undo = { op: "http-remove", name: share.name, token: share.token };
      else if (share.op === "alpn-add") undo = { op: "alpn-remove", name: share.name };
      else continue;
      this.state.delete(key);
      for (const s of this.slots) if (s.ready && s.worker?.isConnected()) s.worker.send({ type: "capsul-acme", seq: -1, share: undo } satisfies ToWorker);
    }
  }

  replay(slot: Slot): void {
    if (slot.index === 1 || !slot.worker) return;
    for (const share of this.state.values()) slot.worker.send({ type: "capsul-acme", seq: -1, share } satisfies ToWorker);
  }

  private done(id: number): void {
    const w = this.waits.get(id);
    if (!w) return;
    clearTimeout(w.timer);
    this.waits.delete(id);
    if (w.owner.worker?.isConnected()) w.owner.worker.send({ type: "capsul-acme-ack", seq: w.ownerSeq } satisfies ToWorker);
  }
}
