/**
 * The hub's admin listener (hub.listen.admin): /healthz, /metrics, the JSON admin API
 * under /v1 and the status page at /. The gates every request passes first (Host,
 * Origin, token off loopback, body size) are lib/adminhttp.ts's.
 *
 *   GET  /healthz                 {"status":"ok","tunnels_up":N}
 *   GET  /metrics                 Prometheus text format (the process's registry)
 *   GET  /                        the status page (HTML)
 *   GET  /v1/status               hub, visitors, tunnels and cogs in one document
 *   GET  /v1/cogs[/NAME]          cogs: state and when it changed, address, certificate expiry, routes, streams, bytes
 *   POST /v1/cogs/NAME/revoke     revoke the cog and drop its tunnel at once
 *   GET  /v1/invites              invites (never their tokens)
 *   POST /v1/invites              {"cog", "hostnames"?, "tcp_ports"?, "ttl"?} → the enroll command
 */
import type { Context } from "hono";
import type { HubConfig } from "../config/types.js";
import { loadOrCreateAdminToken } from "../certs/admintoken.js";
import { ConfigError, RuntimeError } from "../lib/errors.js";
import { COG_NAME_RE, formatHostPort, formatPortRange, isWildcardAddress, normalizeHostnamePattern, parsePortRange } from "../lib/hostname.js";
import type { Logger } from "../lib/log.js";
import { parseDurationMs } from "../lib/units.js";
import { gatedApp, isLoopbackHost, serveAdmin, type AdminServer, type KeyPair } from "../lib/adminhttp.js";
import { cogsJson, invitesJson, statusJson } from "./adminviews.js";
import type { AdminTls } from "./admintls.js";
import type { ListenerChange } from "./listeners.js";
import type { HubMetrics } from "./metrics.js";
import type { HubStore } from "./store/types.js";
import { renderStatusPage, STATUS_PAGE_HEADERS, TrafficMeter } from "./statuspage.js";
import type { Tunnels } from "./tunnels.js";
import type { Visitors } from "./visitors.js";

export type InviteFn = (name: string, opts: { ttlMs?: number; hostnames?: string[]; tcpPorts?: string[] }) =>
  Promise<{ token: string; command: string; expiresAt: Date; caFingerprint: string }>;

export interface HubAdminDeps {
  cfg: HubConfig;
  metrics: HubMetrics;
  visitors: Visitors;
  tunnels: Tunnels;
  store: HubStore;
  /** The token in <data_dir>/admin-token; asked for only when the listener is not on loopback. */
  token: string;
  invite: InviteFn;
  /** The listener's certificate (hub.admin.tls); plain HTTP when it is off. */
  tls: AdminTls;
  log: Logger;
}

class BadRequest extends Error {
  constructor(readonly status: 400 | 404 | 415, readonly code: string, message: string) { super(message); }
}

function stringList(v: unknown, key: string): string[] {
  if (v === undefined) return [];
  if (!Array.isArray(v) || !v.every((x) => typeof x === "string")) throw new BadRequest(400, "bad_request", `${key}: expected a list of strings`);
  return v;
}

/** Validates POST /v1/invites; every message names the field, like capsul.yaml errors. */
function inviteRequest(body: unknown): { cog: string; ttlMs?: number; hostnames: string[]; tcpPorts: string[] } {
  if (body === null || typeof body !== "object" || Array.isArray(body)) throw new BadRequest(400, "bad_request", "body: expected a JSON object");
  const b = body as Record<string, unknown>;
  for (const k of Object.keys(b)) if (!["cog", "hostnames", "tcp_ports", "ttl"].includes(k)) throw new BadRequest(400, "bad_request", `${k}: unknown key`);
  if (typeof b.cog !== "string" || !COG_NAME_RE.test(b.cog)) throw new BadRequest(400, "bad_request", "cog: expected a cog name (a-z first, then a-z, 0-9 or -, at most 39)");
  try {
    const hostnames = stringList(b.hostnames, "hostnames").map((h, i) => {
      const n = normalizeHostnamePattern(h);
      if (!n) throw new BadRequest(400, "bad_request", `hostnames[${i}]: not a hostname pattern: ${JSON.stringify(h)}`);
      return n;
    });
    const tcpPorts = stringList(b.tcp_ports, "tcp_ports").map((r, i) => formatPortRange(parsePortRange(r, `tcp_ports[${i}]`)));
    const ttlMs = b.ttl === undefined ? undefined : parseDurationMs(b.ttl, "ttl");
    if (ttlMs !== undefined && ttlMs <= 0) throw new BadRequest(400, "bad_request", "ttl: must be greater than 0");
    return { cog: b.cog, ttlMs, hostnames, tcpPorts };
  } catch (e) {
    if (e instanceof ConfigError) throw new BadRequest(400, "bad_request", e.message);
    throw e;
  }
}

async function jsonBody(c: Context): Promise<unknown> {
  if (!/^application\/json\b/i.test(c.req.header("content-type") ?? "")) throw new BadRequest(415, "bad_content_type", "send Content-Type: application/json");
  const text = await c.req.text();
  try {
    return JSON.parse(text) as unknown;
  } catch (e) {
    throw new BadRequest(400, "bad_json", `body is not valid JSON: ${(e as Error).message}`);
  }
}

function cogName(c: Context): string {
  const name = c.req.param("name") ?? "";
  if (!COG_NAME_RE.test(name)) throw new BadRequest(404, "no_such_cog", `no cog named ${JSON.stringify(name)}`);
  return name;
}

export function buildHubAdminApp(d: HubAdminDeps): ReturnType<typeof gatedApp> {
  const { cfg, metrics, tunnels, store, log } = d;
  const listen = cfg.listen.admin!;
  const hostNames = [cfg.domain];
  if (!isWildcardAddress(listen.host)) hostNames.push(listen.host);
  hostNames.push(...d.tls.hostNames());
  const app = gatedApp({
    hostNames,
    token: isLoopbackHost(listen.host) ? null : d.token,
    maxBodyBytes: cfg.admin.maxRequestBodyBytes,
    realm: `capsul hub ${cfg.domain}`,
    secure: d.tls.enabled,
  });
  const meter = new TrafficMeter();
  const status = () => statusJson(cfg.domain, d.visitors.stats, metrics, tunnels);

  app.onError((e, c) => {
    if (e instanceof BadRequest) return c.json({ error: { code: e.code, message: e.message } }, e.status);
    log.error("admin request failed", { method: c.req.method, path: c.req.path, error: (e as Error)?.message ?? String(e) });
    return c.json({ error: { code: "internal", message: "internal error (logged by the hub)" } }, 500);
  });

  app.get("/healthz", (c) => {
    let up = 0;
    for (const l of tunnels.links.values()) if (l.session) up++;
    return c.json({ status: "ok", tunnels_up: up });
  });
  app.get("/metrics", async (c) => {
    const m = await metrics.render();
    return c.body(m.text, 200, { "content-type": m.contentType });
  });
  app.get("/", async (c) => c.body(renderStatusPage(await status(), cfg.admin.statusRefreshMs, meter), 200, STATUS_PAGE_HEADERS));
  app.get("/v1/status", async (c) => c.json(await status()));
  app.get("/v1/cogs", async (c) => c.json({ cogs: await cogsJson(metrics, tunnels) }));
  app.get("/v1/cogs/:name", async (c) => {
    const name = cogName(c);
    const [cog] = await cogsJson(metrics, tunnels, name);
    if (!cog) throw new BadRequest(404, "no_such_cog", `no cog named ${JSON.stringify(name)}`);
    return c.json({ cog });
  });
  app.post("/v1/cogs/:name/revoke", async (c) => {
    const name = cogName(c);
    // revokeCog tells every hub (PostgreSQL: a notification; SQLite: the poll), this one
    // included, but the answer must not come before this hub's tunnel is gone: drop it here.
    if (!(await store.revokeCog(name))) throw new BadRequest(404, "no_such_cog", `no cog named ${JSON.stringify(name)}`);
    metrics.cogsChanged();
    tunnels.drop(name, "revoked through the admin API");
    log.info("cog revoked through the admin API", { cog: name });
    const [cog] = await cogsJson(metrics, tunnels, name);
    return c.json({ cog });
  });
  app.get("/v1/invites", async (c) => c.json({ invites: invitesJson(await store.listInvites()) }));
  app.post("/v1/invites", async (c) => {
    const req = inviteRequest(await jsonBody(c));
    let inv: Awaited<ReturnType<InviteFn>>;
    try {
      inv = await d.invite(req.cog, { ttlMs: req.ttlMs, hostnames: req.hostnames, tcpPorts: req.tcpPorts });
    } catch (e) {
      // createInvite refuses grants that clash with another cog's with a ConfigError: the caller's mistake.
      if (e instanceof ConfigError) throw new BadRequest(400, "bad_request", e.message);
      throw e;
    }
    metrics.cogsChanged(); // a new name is listed as invited at once
    log.info("invite created through the admin API", { cog: req.cog, expires: inv.expiresAt.toISOString() });
    return c.json({
      invite: { cog: req.cog, token: inv.token, ca_fingerprint: inv.caFingerprint, expires_at: inv.expiresAt.toISOString(), command: inv.command },
    }, 201);
  });
  return app;
}

export async function startHubAdmin(d: HubAdminDeps): Promise<AdminServer> {
  const listen = d.cfg.listen.admin!;
  const tls = d.tls.enabled ? { initial: d.tls.current() } : undefined;
  const server = await serveAdmin(buildHubAdminApp(d), listen, d.cfg.admin, d.log, tls);
  const loopback = isLoopbackHost(listen.host);
  d.log.info("admin listener ready", {
    // "auth", not "token": a field named token is a secret to the logger (lib/log.ts redaction).
    url: server.url, auth: loopback ? "not required (loopback)" : `required (${d.cfg.dataDir}/admin-token)`,
    tls: d.cfg.admin.tls === "acme" ? `acme (${d.cfg.admin.hostname}${tls?.initial ? "" : ", no certificate yet: handshakes are refused until one is issued"})` : d.cfg.admin.tls,
  });
  if (!loopback && !d.tls.enabled) {
    d.log.warn("the admin listener is off loopback without TLS: its bearer token crosses the network in clear; set hub.admin.tls to acme (with hub.admin.hostname) or files", {
      listen: formatHostPort(listen),
    });
  }
  return server;
}

/**
 * hub.listen.admin as a reload sees it (gateway/reload.ts, like gateway/listeners.ts's
 * Listener): a change of hub.listen.admin or hub.admin serves an app built from the new
 * configuration (its Host names, whether the token is asked for, its limits) on the new
 * address. prepare() binds it next to the old one; on the same port (only the limits
 * changed, or 127.0.0.1:7444 to 0.0.0.0:7444) the old one stops accepting first and is
 * bound again by undo(). The old server's requests in progress finish (each is bounded by
 * hub.admin.request_timeout); its idle keep-alive connections are closed.
 */
export class HubAdminListener {
  private server: AdminServer | null = null;
  private cfg: HubConfig | null = null;

  constructor(private readonly deps: Omit<HubAdminDeps, "cfg" | "token">) {
    // A renewed certificate goes to whichever server is current, for its next handshake.
    deps.tls.on("certificate", (pair: KeyPair) => this.server?.setCertificate(pair));
  }

  get port(): number | null { return this.server?.port ?? null; }

  private async bind(cfg: HubConfig): Promise<AdminServer> {
    const token = await loadOrCreateAdminToken(cfg.dataDir);
    return startHubAdmin({ ...this.deps, cfg, token });
  }

  private bindError(cfg: HubConfig, err: unknown): RuntimeError {
    const why = (err as NodeJS.ErrnoException).code ?? (err as Error).message;
    return new RuntimeError(`hub.listen.admin: cannot listen on ${formatHostPort(cfg.listen.admin!)}: ${why}`, { cause: err });
  }

  /** The first bind, at start (nothing when hub.listen.admin is off). */
  async open(cfg: HubConfig): Promise<void> {
    if (!cfg.listen.admin) return;
    try {
      this.server = await this.bind(cfg);
      this.cfg = cfg;
    } catch (err) {
      throw this.bindError(cfg, err);
    }
  }

  async prepare(next: HubConfig): Promise<ListenerChange> {
    const old = this.server;
    const oldCfg = this.cfg;
    if (!next.listen.admin) {
      return { commit: () => { old?.stop(); this.server = null; this.cfg = next; }, undo: async () => {} };
    }
    let fresh: AdminServer;
    let stoppedOld = false;
    try {
      fresh = await this.bind(next);
    } catch (err) {
      const samePort = old !== null && oldCfg?.listen.admin != null && next.listen.admin.port !== 0 && oldCfg.listen.admin.port === next.listen.admin.port;
      if ((err as NodeJS.ErrnoException).code !== "EADDRINUSE" || !samePort) throw this.bindError(next, err);
      old.stop();
      stoppedOld = true;
      try {
        fresh = await this.bind(next);
      } catch (err2) {
        await this.rebindOld(oldCfg);
        throw this.bindError(next, err2);
      }
    }
    return {
      commit: () => {
        if (!stoppedOld) old?.stop();
        this.server = fresh;
        this.cfg = next;
      },
      undo: async () => {
        await fresh.close();
        if (stoppedOld) await this.rebindOld(oldCfg!);
      },
    };
  }

  private async rebindOld(cfg: HubConfig): Promise<void> {
    try {
      this.server = await this.bind(cfg);
    } catch (err) {
      // Someone took the port in the moment it was free: no admin listener until a reload or restart.
      this.server = null;
      this.deps.log.error("the admin listener could not return to its old address", { error: (err as Error).message });
    }
  }

  async close(): Promise<void> {
    await this.server?.close();
    this.server = null;
  }
}
