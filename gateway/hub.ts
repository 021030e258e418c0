/**
 * The hub: public listeners (TLS passthrough, HTTP, raw TCP ports), the
 * tunnel listener, and the state that ties them together. `startHub()` is
 * what `capsul hub` and `capsul demo` run.
 */
import net from "node:net";
import type { Registry } from "prom-client";
import type { HubConfig } from "../config/types.js";
import { silentLogger, type Logger } from "../lib/log.js";
import { loadOrCreateHubPki, type HubPki } from "../certs/pki.js";
import { newInviteToken } from "../certs/tokens.js";
import { loadOrCreateAdminToken } from "../certs/admintoken.js";
import type { AdminServer } from "../lib/adminhttp.js";
import { ConfigError } from "../lib/errors.js";
import { formatPortRange, normalizeHostnamePattern, parsePortRange } from "../lib/hostname.js";
import { startHubAdmin } from "./admin.js";
import { checkGrantsConsistent, checkNewGrants } from "./grants.js";
import { HubMetrics } from "./metrics.js";
import { Router } from "./router.js";
import { RouteTable, type TcpPortOpener } from "./routes.js";
import { openHubStore } from "./store/index.js";
import type { HubStore } from "./store/types.js";
import { Tunnels } from "./tunnels.js";
import { Visitors } from "./visitors.js";

export interface Hub {
  readonly pki: HubPki;
  /** The state store (SQLite or PostgreSQL), shared with `capsul hub …` commands and other hubs. */
  readonly store: HubStore;
  readonly router: Router;
  readonly tunnels: Tunnels;
  readonly visitors: Visitors;
  readonly metrics: HubMetrics;
  /** Bound ports (useful when the config asked for port 0). */
  readonly ports: { tls: number | null; http: number | null; tunnel: number; admin: number | null };
  close(): Promise<void>;
}

export interface HubOptions {
  /** Where the hub's metrics go: the process's registry (cli/); without it, a registry of the hub's own. */
  registry?: Registry;
}

function listen(server: net.Server, host: string, port: number): Promise<number> {
  return new Promise((resolve, reject) => {
    const onErr = (err: Error): void => reject(err);
    server.once("error", onErr);
    server.listen({ host, port, backlog: 1024 }, () => {
      server.off("error", onErr);
      resolve((server.address() as net.AddressInfo).port);
    });
  });
}

function closeServer(server: net.Server): Promise<void> {
  return new Promise((resolve) => server.close(() => resolve()));
}

/** The names the hub's tunnel certificate carries. */
export function hubNames(cfg: HubConfig): string[] {
  const names = [cfg.domain];
  const pubHost = cfg.publicTunnelAddress.replace(/:\d+$/, "").replace(/^\[(.*)\]$/, "$1");
  if (pubHost && !names.includes(pubHost)) names.push(pubHost);
  const lh = cfg.listen.tunnel.host;
  if (lh && lh !== "0.0.0.0" && lh !== "::" && !names.includes(lh)) names.push(lh);
  return names;
}

/** Raw TCP listeners opened on demand as cogs are assigned ports. */
export class TcpListeners implements TcpPortOpener {
  readonly servers = new Map<number, net.Server>();
  constructor(private readonly host: string, private readonly onConn: (s: net.Socket, port: number) => void, private readonly log: Logger) {}
  async open(port: number): Promise<void> {
    if (this.servers.has(port)) return;
    const server = net.createServer({ allowHalfOpen: true, pauseOnConnect: true }, (s) => this.onConn(s, port));
    await listen(server, this.host, port);
    server.on("error", (err) => this.log.error("tcp listener error", { port, error: err.message }));
    this.servers.set(port, server);
    this.log.info("tcp port open", { port });
  }
  close(port: number): void {
    const s = this.servers.get(port);
    if (!s) return;
    this.servers.delete(port);
    s.close();
    this.log.info("tcp port closed", { port });
  }
  async closeAll(): Promise<void> {
    const all = [...this.servers.values()];
    this.servers.clear();
    await Promise.all(all.map(closeServer));
  }
}

export async function startHub(cfg: HubConfig, log: Logger, opts: HubOptions = {}): Promise<Hub> {
  const pki = await loadOrCreateHubPki(cfg.dataDir, hubNames(cfg));
  const store = await openHubStore(cfg, log.child("store"));
  try {
    // Before any listener: a hub whose grants overlap would let the router's precedence pick a cog.
    for (const w of await checkGrantsConsistent(cfg, store)) log.warn(w.message, w.fields);
  } catch (err) {
    await store.close();
    throw err;
  }
  const router = new Router();
  let tunnels: Tunnels | null = null;
  const visitors = new Visitors(cfg, router, (cog) => tunnels!.sessionFor(cog), log.child("visitor"));
  const tcp = new TcpListeners(cfg.listen.tcpHost, (s, port) => void visitors.onTcp(s, port), log.child("tcp"));
  const routes = new RouteTable(cfg, store, router, tcp, log.child("routes"));
  tunnels = new Tunnels(cfg, store, pki, routes, log.child("tunnel"));
  const metrics = new HubMetrics({ visitors, tunnels, router, store, pki }, opts.registry, cfg.admin.cogsCacheMs);
  visitors.observer = metrics;

  const servers: net.Server[] = [];
  let admin: AdminServer | null = null;
  const cleanup = async (): Promise<void> => {
    await admin?.close();
    metrics.close();
    visitors.closeAll();
    await tunnels!.close();
    await tcp.closeAll();
    await Promise.all(servers.map(closeServer));
    await store.close();
  };
  try {
    const tunnelPort = await tunnels.listen();
    let tlsPort: number | null = null;
    let httpPort: number | null = null;
    if (cfg.listen.tls) {
      const s = net.createServer({ allowHalfOpen: true, pauseOnConnect: true }, (sock) => void visitors.onTls(sock));
      tlsPort = await listen(s, cfg.listen.tls.host, cfg.listen.tls.port);
      servers.push(s);
    }
    if (cfg.listen.http) {
      const s = net.createServer({ allowHalfOpen: true, pauseOnConnect: true }, (sock) => void visitors.onHttp(sock));
      httpPort = await listen(s, cfg.listen.http.host, cfg.listen.http.port);
      servers.push(s);
    }
    for (const s of servers) s.on("error", (err) => log.error("listener error", { error: err.message }));
    if (cfg.listen.admin) {
      const token = await loadOrCreateAdminToken(cfg.dataDir);
      const invite = (name: string, o: InviteOptions) => inviteIn(cfg, store, pki, name, o);
      admin = await startHubAdmin({ cfg, metrics, visitors, tunnels, store, token, invite, log: log.child("admin") });
    }
    log.info("hub ready", {
      tls: tlsPort ?? "off", http: httpPort ?? "off", tunnel: tunnelPort, admin: admin?.port ?? "off", ca: pki.caFingerprint, store: store.location,
    });
    return {
      pki, store, router, tunnels, visitors, metrics,
      ports: { tls: tlsPort, http: httpPort, tunnel: tunnelPort, admin: admin?.port ?? null },
      close: cleanup,
    };
  } catch (err) {
    await cleanup().catch(() => {});
    throw err;
  }
}

export type InviteOptions = { ttlMs?: number; hostnames?: string[]; tcpPorts?: string[]; hubAddress?: string };
export type InviteResult = { token: string; command: string; expiresAt: Date; caFingerprint: string };

/**
 * Creates a one-time invite for a cog and returns the exact enroll command.
 * Works against the hub's data dir whether or not the hub is running.
 * Grants that overlap another cog's (or its default grant), and TCP ranges
 * outside the pool or holding the hub's own ports, are refused with a
 * ConfigError and nothing is stored.
 */
export async function createInvite(cfg: HubConfig, name: string, opts: InviteOptions = {}): Promise<InviteResult> {
  const pki = await loadOrCreateHubPki(cfg.dataDir, hubNames(cfg));
  const store = await openHubStore(cfg, silentLogger);
  try {
    return await inviteIn(cfg, store, pki, name, opts);
  } finally {
    await store.close();
  }
}

/** createInvite on a store and PKI already open (the running hub's admin API: no second connection pool per invite). */
export async function inviteIn(cfg: HubConfig, store: HubStore, pki: HubPki, name: string, opts: InviteOptions = {}): Promise<InviteResult> {
  const { token, hash } = newInviteToken();
  const expiresAt = new Date(Date.now() + (opts.ttlMs ?? cfg.inviteTtlMs));
  const hostnames = (opts.hostnames ?? []).map((h) => {
    const n = normalizeHostnamePattern(h);
    if (n === null) throw new ConfigError(`not a hostname pattern: ${JSON.stringify(h)}`, "--hostname");
    return n;
  });
  const tcpPorts = (opts.tcpPorts ?? []).map((p) => parsePortRange(p, "--tcp-ports"));
  // The grants lock is taken before the checks read, so two invites racing cannot both pass them.
  await store.transaction(["grants"], async (tx) => {
    await checkNewGrants(cfg, tx, name, { hostnames, tcpPorts });
    await tx.addInvite(name, hash, expiresAt.getTime());
    for (const h of hostnames) await tx.addGrant(name, "hostname", h);
    for (const r of tcpPorts) await tx.addGrant(name, "tcp", formatPortRange(r));
  });
  const addr = opts.hubAddress ?? cfg.publicTunnelAddress;
  const command = `capsul cog enroll --hub ${addr} --token ${token} --ca-fingerprint ${pki.caFingerprint}`;
  return { token, command, expiresAt, caFingerprint: pki.caFingerprint };
}
