/**
 * The hub: public listeners (TLS passthrough, HTTP, raw TCP ports), the
 * tunnel listener, and the state that ties them together. `startHub()` is
 * what `capsul hub` and `capsul demo` run; reload (./reload.ts) and drain
 * (./drain.ts) act on the parts it assembles.
 */
import net from "node:net";
import type { Registry } from "prom-client";
import type { HubConfig } from "../config/types.js";
import { silentLogger, type Logger } from "../lib/log.js";
import { loadOrCreateHubPki, type HubPki } from "../certs/pki.js";
import { newInviteToken } from "../certs/tokens.js";
import { ConfigError } from "../lib/errors.js";
import { formatPortRange, normalizeHostnamePattern, parsePortRange } from "../lib/hostname.js";
import { HubAdminListener } from "./admin.js";
import { AdminTls, type AdminTlsRole } from "./admintls.js";
import { DomainProofs } from "./domains.js";
import { checkGrantsConsistent, checkNewGrants } from "./grants.js";
import { HubMetrics } from "./metrics.js";
import { osLimitWarnings } from "./oslimits.js";
import { Router } from "./router.js";
import { drainHub, type DrainReport } from "./drain.js";
import { Listener, TcpListeners } from "./listeners.js";
import { reloadHub, type HubParts, type HubReloadReport } from "./reload.js";
import { RouteTable } from "./routes.js";
import { openHubStore } from "./store/index.js";
import type { HubStore } from "./store/types.js";
import { Tunnels } from "./tunnels.js";
import { Visitors } from "./visitors.js";

export interface Hub {
  /** The CA and the tunnel certificate (made again by a reload that changes the hub's names). */
  readonly pki: HubPki;
  /** The state store (SQLite or PostgreSQL), shared with `capsul hub …` commands and other hubs. */
  readonly store: HubStore;
  readonly router: Router;
  readonly tunnels: Tunnels;
  readonly visitors: Visitors;
  readonly metrics: HubMetrics;
  /** Custom domains by DNS proof. */
  readonly domains: DomainProofs;
  /** The admin listener's certificate (hub.admin.tls): files, or ACME for hub.admin.hostname. */
  readonly adminTls: AdminTls;
  /** Bound ports (useful when the config asked for port 0); they follow reloads (null: listener off). */
  readonly ports: { readonly tls: number | null; readonly http: number | null; readonly tunnel: number; readonly admin: number | null };
  /** The configuration in force: what the hub started with, as later reloads changed it. */
  readonly config: HubConfig;
  /** Applies a new configuration as a difference (gateway/reload.ts); throws, changing nothing, when it cannot. */
  reload(next: HubConfig): Promise<HubReloadReport>;
  /** Stops accepting and waits for live visitors up to `graceMs` (gateway/drain.ts); close() afterwards cuts the rest. */
  drain(graceMs: number, cutNow?: AbortSignal): Promise<DrainReport>;
  /**
   * Started with `holdPublic`: opens the public listeners (TLS, HTTP, the TCP ports routes
   * asked for meanwhile). Does nothing otherwise, or once draining or closed.
   */
  openPublic(): Promise<void>;
  close(): Promise<void>;
}

export interface HubOptions {
  /** Where the hub's metrics go: the process's registry (cli/); without it, a registry of the hub's own. */
  registry?: Registry;
  /**
   * A hub worker (gateway/workers.ts): the primary holds the tunnel port (this one) and
   * hands connections over through hub.tunnels.adopt(); no tunnel listener is bound here.
   */
  handedTunnelPort?: number;
  /** A hub worker: its part in the admin listener's ACME certificate (gateway/admintls.ts). */
  adminTlsRole?: AdminTlsRole;
  /**
   * A hub worker started again while another serves (gateway/warmup.ts): tunnels and store
   * as usual, but no public listener (nor the admin listener, shared like them) until openPublic().
   */
  holdPublic?: boolean;
}

/** The names the hub's tunnel certificate carries. */
export function hubNames(cfg: HubConfig): string[] {
  const names = [cfg.domain];
  const pubHost = cfg.publicTunnelAddress.replace(/:\d+$/, "").replace(/^\[(.*)\]$/, "$1");
  if (pubHost && !names.includes(pubHost)) names.push(pubHost);
  const lh = cfg.listen.tunnel.host;
  if (lh && lh !== "0.0.0.0" && lh !== "::" && !names.includes(lh)) names.push(lh);
  // What cogs dial and send as SNI when this hub is one endpoint of several (hub.endpoint).
  for (const n of [cfg.endpoint.serverName, cfg.endpoint.advertise.host]) if (n && !names.includes(n)) names.push(n);
  return names;
}

/** Raw TCP listeners: gateway/listeners.ts (re-exported for tests that build a RouteTable of their own). */
export { TcpListeners } from "./listeners.js";

export async function startHub(cfg: HubConfig, log: Logger, opts: HubOptions = {}): Promise<Hub> {
  let pki = await loadOrCreateHubPki(cfg.dataDir, hubNames(cfg));
  const store = await openHubStore(cfg, log.child("store"));
  try {
    // Before any listener: a hub whose grants overlap would let the router's precedence pick a cog.
    for (const w of await checkGrantsConsistent(cfg, store)) log.warn(w.message, w.fields);
  } catch (err) {
    await store.close();
    throw err;
  }
  // The live configuration: one mutable top-level copy of the frozen config that every
  // part below holds and reads when it needs a value. A reload replaces its sections
  // (each of them still frozen); what parts built from it at start, they rebuild in
  // their reconfigure().
  const live: HubConfig = { ...cfg };
  const router = new Router();
  let tunnels: Tunnels | null = null;
  const visitors = new Visitors(live, router, (cog) => tunnels!.sessionFor(cog), log.child("visitor"), log.child("access"));
  const tcp = new TcpListeners(live.listen.tcpHost, (s, port) => void visitors.onTcp(s, port), log.child("tcp"), () => live.limits.listenBacklog);
  // Custom domains by DNS proof: the hooks reach the tunnels, made just below.
  const domains = new DomainProofs(live, store, pki.caFingerprint, log.child("domains"), {
    liveCogs: () => [...tunnels!.links.values()].filter((l) => l.control).map((l) => l.cog),
    changed: (cog) => void tunnels!.links.get(cog)?.control?.refresh(),
    checked: (cog) => void tunnels!.links.get(cog)?.control?.sendDomains(),
  });
  const routes = new RouteTable(live, store, router, tcp, log.child("routes"), domains);
  tunnels = new Tunnels(live, store, pki, routes, log.child("tunnel"), domains);
  const metrics = new HubMetrics({ visitors, tunnels, router, store, get pki() { return pki; } }, opts.registry, () => live.admin.cogsCacheMs);
  visitors.observer = metrics;
  const publicListener = (key: string, onConn: (sock: net.Socket) => void): Listener =>
    new Listener(key, () => net.createServer({ allowHalfOpen: true, pauseOnConnect: true }, onConn), log, () => live.limits.listenBacklog);
  const tls = publicListener("hub.listen.tls", (sock) => void visitors.onTls(sock));
  const http = publicListener("hub.listen.http", (sock) => void visitors.onHttp(sock));
  // The admin API's invites read the live configuration (invite_ttl) and the PKI in force.
  const invite = (name: string, o: InviteOptions): Promise<InviteResult> => inviteIn(live, store, pki, name, o);
  // Its configuration is the start's (a reload that changes it is refused: gateway/reload.ts).
  const adminTls = new AdminTls(cfg, log.child("acme"), opts.adminTlsRole ?? null);
  visitors.acmeChallenges = adminTls.challenges;
  const unregisterExpiry = cfg.admin.tls === "acme" ? metrics.certificates.register("acme", cfg.admin.hostname!, () => adminTls.notAfterMs()) : () => {};
  const admin = new HubAdminListener({ metrics, visitors, tunnels, store, invite, tls: adminTls, log: log.child("admin") });
  const parts: HubParts = {
    live, store, tunnels, visitors, tls, http, tcp, admin, log, domains,
    get pki() { return pki; },
    set pki(p: HubPki) { pki = p; },
  };

  let closed: Promise<void> | null = null;
  let held = opts.holdPublic === true;
  /** Draining or closed: no public listener opens any more (openPublic() in flight undoes its own). */
  let ending = false;
  if (held) { tcp.hold(); tunnels.deferRestoredGrace(); }
  const cleanup = (): Promise<void> => {
    ending = true;
    closed ??= (async () => {
      await admin.close();
      await adminTls.close();
      unregisterExpiry();
      metrics.close();
      await domains.close();
      visitors.closeAll();
      await tunnels!.close();
      tcp.stopAll();
      tls.stop();
      http.stop();
      await store.close();
    })();
    return closed;
  };
  try {
    const tunnelPort = await tunnels.listen(opts.handedTunnelPort ?? null);
    if (!held) {
      await tls.open(live.listen.tls);
      await http.open(live.listen.http);
    }
    await adminTls.start();
    // A worker's "ready" is the primary's to announce, once every worker is (cli/hubworkers.ts).
    if (!held) await admin.open(live);
    log.info(opts.handedTunnelPort === undefined ? "hub ready" : held ? "worker up, public listeners held" : "worker ready", {
      tls: tls.port ?? "off", http: http.port ?? "off", tunnel: tunnelPort, admin: admin.port ?? "off", ca: pki.caFingerprint, store: store.location,
    });
    for (const w of osLimitWarnings(live)) log.warn(w.msg, w.fields);
    domains.start();
    // The public listeners are open: the CA's validator can reach this hub now.
    adminTls.begin();
    const t = tunnels;
    return {
      get pki() { return pki; },
      store, router, tunnels: t, visitors, metrics, domains, adminTls,
      ports: {
        get tls() { return tls.port; },
        get http() { return http.port; },
        // The tunnel port stays readable through a drain: cogs and tests dial the same address again.
        get tunnel() { return t.port ?? tunnelPort; },
        get admin() { return admin.port; },
      },
      config: live,
      reload: (next) => reloadHub(parts, next),
      drain: (graceMs, cutNow) => { ending = true; return drainHub(parts, graceMs, cutNow); },
      openPublic: async () => {
        if (!held || ending) return;
        held = false;
        // A listener that cannot bind now fails the worker as it would have at start: the
        // primary starts it again (with the others serving meanwhile). The admin listener
        // waits too, and they open in the start's order: node:cluster matches a worker's
        // listen on port 0 to the others' by the order of its calls for that address.
        // (A reload during the warm-up that moved a listener has opened that one already.)
        if (!tls.accepting) await tls.open(live.listen.tls);
        if (!http.accepting) await http.open(live.listen.http);
        if (admin.port === null) await admin.open(live);
        await tcp.release();
        tunnels.startRestoredGrace();
        if (ending) { tls.stop(); http.stop(); tcp.stopAll(); await admin.close(); return; }
        log.info("worker ready", { tls: tls.port ?? "off", http: http.port ?? "off", admin: admin.port ?? "off", tcp_ports: tcp.ports.length });
      },
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
