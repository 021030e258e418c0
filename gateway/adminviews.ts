/**
 * What the admin API answers and the status page shows, built from the hub's live
 * parts and its state store (one listCogs query) at the moment of the request. JSON style: snake_case keys,
 * ISO-8601 times (UTC), byte counts as integers.
 */
import type { CogListRow, InviteListRow } from "./store/types.js";
import type { HubMetrics, RouteTraffic } from "./metrics.js";
import type { Tunnels } from "./tunnels.js";
import type { VisitorStats } from "./visitors.js";

export type CogState = "online" | "reconnecting" | "offline" | "invited" | "revoked";

export interface RouteJson {
  name: string;
  kind: string;
  hostname?: string;
  port?: number;
  /** False for a route its cog withdrew while visitors were still on it. */
  held: boolean;
  connections_active: number;
  connections_total: number;
  bytes: { received: number; sent: number };
}

export interface CogJson {
  name: string;
  state: CogState;
  online: boolean;
  /** When the cog entered `state` (online: connected; offline: last seen; revoked: revoked; invited: invited). */
  state_changed_at: string | null;
  /** The tunnel's remote address: now when online, last known otherwise. */
  address: string | null;
  /** Its newest certificate's expiry (the name `capsul hub cogs --json` uses). */
  cert_expires_at: string | null;
  revoked_at: string | null;
  /** Visitor streams open on its tunnel now. */
  streams: number;
  connections_total: number;
  bytes: { received: number; sent: number };
  routes: RouteJson[];
}

export interface InviteJson {
  cog: string;
  state: "pending" | "used" | "expired";
  created_at: string;
  expires_at: string;
  used_at: string | null;
}

export interface StatusJson {
  hub: { domain: string; started_at: string; uptime_seconds: number; generated_at: string };
  visitors: {
    active: number;
    total: number;
    routed: number;
    refused: {
      no_route: number; cog_offline: number; over_limit: number; over_source_limit: number; over_unpeeked_limit: number;
      over_cog_streams: number; over_route_connections: number;
    };
    /** Closed by the hub itself: over the buffer budget without draining, or idle past idle_timeout. */
    cut: { buffer_budget: number; idle_timeout: number };
    peeks: Record<string, Record<string, number>>;
  };
  tunnels: { up: number; connects: number; disconnects: number; reconnects: number };
  cogs: CogJson[];
}

const iso = (ms: number | null | undefined): string | null => (ms === null || ms === undefined ? null : new Date(ms).toISOString());

function routeJson(r: RouteTraffic): RouteJson {
  const j: RouteJson = {
    name: r.route, kind: r.kind, held: r.held,
    connections_active: r.active, connections_total: r.connections, bytes: { received: r.received, sent: r.sent },
  };
  if (r.pattern !== undefined) j.hostname = r.pattern;
  if (r.port !== undefined) j.port = r.port;
  return j;
}

function cogJson(c: CogListRow, tunnels: Tunnels, routes: RouteTraffic[]): CogJson {
  const link = tunnels.links.get(c.name);
  const state: CogState = c.revokedAt !== null ? "revoked"
    : link?.session ? "online"
    : link ? "reconnecting"
    : c.certNotAfter === null ? "invited" : "offline";
  const since = state === "revoked" ? c.revokedAt
    : state === "online" ? link!.connectedAt
    : state === "invited" ? c.createdAt
    : c.lastSeen;
  let streams = 0;
  let connections = 0;
  let received = 0;
  let sent = 0;
  for (const r of routes) { streams += r.active; connections += r.connections; received += r.received; sent += r.sent; }
  return {
    name: c.name,
    state,
    online: state === "online",
    state_changed_at: iso(since),
    address: state === "online" ? link!.remote : c.remote,
    cert_expires_at: iso(c.certNotAfter),
    revoked_at: iso(c.revokedAt),
    streams,
    connections_total: connections,
    bytes: { received, sent },
    routes: routes.map(routeJson),
  };
}

/** The cogs with their routes and traffic; `only` picks one by name. */
export async function cogsJson(metrics: HubMetrics, tunnels: Tunnels, only?: string): Promise<CogJson[]> {
  // The store first: the routes and the links below are then read in the same tick as each other.
  const rows = await metrics.cogs();
  const byCog = new Map<string, RouteTraffic[]>();
  for (const r of metrics.routes()) {
    const list = byCog.get(r.cog);
    if (list) list.push(r);
    else byCog.set(r.cog, [r]);
  }
  return rows
    .filter((c) => only === undefined || c.name === only)
    .map((c) => cogJson(c, tunnels, byCog.get(c.name) ?? []));
}

export function invitesJson(rows: InviteListRow[], now = Date.now()): InviteJson[] {
  return rows.map((r) => ({
    cog: r.cog,
    state: r.usedAt !== null ? "used" : r.expiresAt <= now ? "expired" : "pending",
    created_at: iso(r.createdAt)!,
    expires_at: iso(r.expiresAt)!,
    used_at: iso(r.usedAt),
  }));
}

export async function statusJson(domain: string, stats: VisitorStats, metrics: HubMetrics, tunnels: Tunnels): Promise<StatusJson> {
  const cogs = await cogsJson(metrics, tunnels);
  const now = Date.now();
  const peeks: Record<string, Record<string, number>> = {};
  for (const [k, v] of metrics.peekCounts()) {
    const [listener, outcome] = k.split(" ") as [string, string];
    (peeks[listener] ??= {})[outcome] = v;
  }
  let up = 0;
  for (const l of tunnels.links.values()) if (l.session) up++;
  return {
    hub: { domain, started_at: iso(metrics.startedAt)!, uptime_seconds: Math.floor((now - metrics.startedAt) / 1000), generated_at: iso(now)! },
    visitors: {
      active: stats.active,
      total: stats.total,
      routed: stats.routed,
      refused: {
        no_route: stats.noRoute, cog_offline: stats.cogOffline, over_limit: stats.overLimit,
        over_source_limit: stats.overSourceLimit, over_unpeeked_limit: stats.overUnpeekedLimit,
        over_cog_streams: stats.overCogStreams, over_route_connections: stats.overRouteConnections,
      },
      cut: { buffer_budget: stats.shed, idle_timeout: stats.idleTimeout },
      peeks,
    },
    tunnels: { up, ...metrics.tunnelEvents },
    cogs,
  };
}
