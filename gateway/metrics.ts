/**
 * The hub's metrics (prom-client): visitors, peeks, routing outcomes and refusals (the
 * hub-wide and per-source caps), visitors the hub cut (buffer budget, idle timeout),
 * connections and bytes per route and cog, tunnels, the tunnel port's strangers and
 * refusals, control messages, first-byte latency, certificate expiry.
 *
 * Cost: per visitor, two observer calls (gateway/observer.ts), one 'close' listener and
 * one 'data' listener that fires once; per byte, nothing. Bytes are socket.bytesRead and
 * bytesWritten, added up when a visitor's socket closes and summed over the live ones
 * when someone scrapes.
 *
 * Cardinality: labels are cog names (enrolled cogs), route names (what cogs announced
 * and the hub accepted), route kinds, and fixed outcome words. Nothing a visitor sends
 * (an SNI, a Host, an address) ever becomes a label: a visitor for a name nobody routes
 * only moves capsul_hub_routing_total{outcome="no_route"}. A route that is withdrawn is
 * reported once more after its last connection closed, then forgotten.
 */
import type { Socket } from "node:net";
import type { Duplex } from "node:stream";
import { Histogram, Registry } from "prom-client";
import type { RouteKind } from "../config/types.js";
import { certInfo, type HubPki } from "../certs/pki.js";
import { CachedRead, CertificateExpiry, MetricFamilies, perScrape, SocketTally } from "../lib/metrics.js";
import type { ErrorCode } from "../protocol/control.js";
import type { MuxSession } from "../protocol/mux.js";
import type { PeekedName, VisitorObserver } from "./observer.js";
import type { PeekOutcome } from "./peek.js";
import type { RouteEntry, Router } from "./router.js";
import type { CogListRow, HubStore } from "./store/types.js";
import type { Tunnels } from "./tunnels.js";
import type { Visitors } from "./visitors.js";

/**
 * Buckets of capsul_hub_first_byte_seconds: a loopback round trip is under 5 ms, a home
 * line 20-100 ms, a cold backend or a cog dialing a stopped VM seconds.
 */
export const FIRST_BYTE_BUCKETS_SECONDS = [0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10];

/** The outcome label of each peek result; "no-name" is a good hello/head without SNI/Host. */
type PeekResult = PeekOutcome<unknown>["kind"] | "no-name";
const PEEK_OUTCOMES: Record<"tls" | "http", Record<PeekResult, string>> = {
  tls: { "ok": "ok", "no-name": "no_sni", "invalid": "malformed", "too-large": "too_large", "timeout": "timeout", "closed": "closed" },
  http: { "ok": "ok", "no-name": "no_host", "invalid": "malformed", "too-large": "too_large", "timeout": "timeout", "closed": "closed" },
};
/**
 * The parsers refuse an oversized hello or head themselves, before the peek's byte cap
 * says too-large: parseClientHello as soon as the handshake header declares the length
 * ("ClientHello exceeds N bytes"), parseHttpHead when more than its cap arrived in one
 * read ("request head exceeds N bytes"). Those are too large, not malformed
 * (test/metrics.test.ts sends both).
 */
const OVERSIZED_RE = /^(?:ClientHello|request head) exceeds \d+ bytes/;

/** A route's visitor sockets: read from them is received, written to them is sent. */
interface RouteSeries { cog: string; route: string; kind: RouteKind; tally: SocketTally }

/** One route's traffic, as the JSON API and the status page show it. */
export interface RouteTraffic {
  cog: string;
  route: string;
  kind: RouteKind;
  /** Hostname pattern (tls, http) or hub port (tcp); absent for a route its cog no longer holds. */
  pattern?: string;
  port?: number;
  held: boolean;
  active: number;
  connections: number;
  /** Bytes the route's visitors sent to the hub, and the hub sent back to them. */
  received: number;
  sent: number;
}

export interface HubParts {
  visitors: Visitors;
  tunnels: Tunnels;
  router: Router;
  store: HubStore;
  pki: HubPki;
}

/** Error codes that end a tunnel (not "renew": a refused renewal leaves it up and counts as a control message). */
const TUNNEL_REFUSAL_CODES: readonly ErrorCode[] = ["version", "auth", "revoked", "enroll", "bad-request"];

const seriesKey = (cog: string, route: string, kind: string): string => `${cog}\u0000${route}\u0000${kind}`;

export class HubMetrics implements VisitorObserver {
  readonly registry: Registry;
  /** Certificate expiry; register() is the hook for certificates the hub obtains itself (ACME). */
  readonly certificates = new CertificateExpiry();
  readonly startedAt = Date.now();
  readonly tunnelEvents = { connects: 0, disconnects: 0, reconnects: 0 };
  private readonly families: MetricFamilies;
  private readonly series = new Map<string, RouteSeries>();
  private readonly peeks = new Map<string, number>();
  private readonly seenCogs = new Set<string>();
  private readonly firstByte: Histogram<"kind">;
  /**
   * The store's cog list, shared by every family that lists cogs (never one query per cog),
   * the JSON API and the status page, and reused for hub.admin.cogs_cache: listCogs blocks
   * SQLite's thread for about 10 ms at 1,000 cogs (3 certificates each, on a loaded 2-core
   * box), and every open status page and every scraper would otherwise pay it per request.
   */
  private readonly cogRows: CachedRead<CogListRow[]>;
  private readonly scrapeRoutes = perScrape(() => this.routes(true));
  private readonly onAttached = (cog: string, session: MuxSession): void => {
    this.tunnelEvents.connects++;
    if (this.seenCogs.has(cog)) this.tunnelEvents.reconnects++;
    else this.seenCogs.add(cog);
    session.once("close", () => { this.tunnelEvents.disconnects++; });
  };

  /** `cogsCacheMs`: hub.admin.cogs_cache, or where to read it (the hub's live configuration). */
  constructor(private readonly parts: HubParts, registry: Registry = new Registry(), cogsCacheMs: number | (() => number) = 0) {
    this.registry = registry;
    this.cogRows = new CachedRead(() => parts.store.listCogs(), cogsCacheMs);
    const f = this.families = new MetricFamilies(registry);
    const stats = parts.visitors.stats;
    for (const [listener, outcomes] of Object.entries(PEEK_OUTCOMES)) {
      for (const o of new Set(Object.values(outcomes))) this.peeks.set(`${listener} ${o}`, 0);
    }

    f.gauge("capsul_hub_visitors_active", "Visitor connections open now, on every public listener.", [], (emit) => emit({}, stats.active));
    f.counter("capsul_hub_visitors_total", "Visitor connections accepted.", [], (emit) => emit({}, stats.total));
    f.counter("capsul_hub_peeks_total", "How reading a visitor's TLS ClientHello or HTTP request head ended.", ["listener", "outcome"], (emit) => {
      for (const [k, v] of this.peeks) {
        const [listener, outcome] = k.split(" ") as [string, string];
        emit({ listener, outcome }, v);
      }
    });
    f.counter("capsul_hub_routing_total", "What became of visitors: routed to a cog, or refused (no route, cog offline, over hub.limits.max_visitors, "
      + "max_visitors_per_ip, max_unpeeked_per_ip, the cog's max_streams_per_cog or the route's max_connections_per_route).", ["outcome"], (emit) => {
      emit({ outcome: "routed" }, stats.routed);
      emit({ outcome: "no_route" }, stats.noRoute);
      emit({ outcome: "cog_offline" }, stats.cogOffline);
      emit({ outcome: "over_limit" }, stats.overLimit);
      emit({ outcome: "over_source_limit" }, stats.overSourceLimit);
      emit({ outcome: "over_unpeeked_limit" }, stats.overUnpeekedLimit);
      emit({ outcome: "over_cog_streams" }, stats.overCogStreams);
      emit({ outcome: "over_route_connections" }, stats.overRouteConnections);
    });
    f.counter("capsul_hub_bandwidth_waits_total", "Times a cog's bandwidth bucket (hub.limits.cog_bandwidth) ran dry and its visitors waited for it.",
      [], (emit) => emit({}, stats.throttled));
    f.counter("capsul_hub_visitors_cut_total", "Visitor connections the hub closed itself: to bring buffered bytes back within hub.limits.buffer_budget "
      + "or cog_buffer_budget, or after idle_timeout without a byte.", ["reason"], (emit) => {
      emit({ reason: "buffer_budget" }, stats.shed);
      emit({ reason: "idle_timeout" }, stats.idleTimeout);
    });
    const routeLabels = ["cog", "route", "kind"];
    f.counter("capsul_hub_connections_total", "Visitor connections forwarded to a route.", routeLabels, (emit) => {
      for (const r of this.scrapeRoutes()) emit({ cog: r.cog, route: r.route, kind: r.kind }, r.connections);
    });
    f.gauge("capsul_hub_connections_active", "Visitor connections of a route open now.", routeLabels, (emit) => {
      for (const r of this.scrapeRoutes()) emit({ cog: r.cog, route: r.route, kind: r.kind }, r.active);
    });
    f.counter("capsul_hub_bytes_total", "Bytes between visitors and the hub, per route: received from visitors, sent to them.", [...routeLabels, "direction"], (emit) => {
      for (const r of this.scrapeRoutes()) {
        emit({ cog: r.cog, route: r.route, kind: r.kind, direction: "received" }, r.received);
        emit({ cog: r.cog, route: r.route, kind: r.kind, direction: "sent" }, r.sent);
      }
    });
    f.own("capsul_hub_first_byte_seconds");
    this.firstByte = new Histogram({
      name: "capsul_hub_first_byte_seconds",
      help: "From forwarding a visitor's first bytes (ClientHello, request head) to the first byte back from the cog: tunnel round trip, the cog's dial and the backend's answer.",
      labelNames: ["kind"],
      buckets: FIRST_BYTE_BUCKETS_SECONDS,
      registers: [registry],
    });
    f.gauge("capsul_hub_tunnels", "Cog tunnels connected now.", [], (emit) => {
      let n = 0;
      for (const l of parts.tunnels.links.values()) if (l.session) n++;
      emit({}, n);
    });
    f.gauge("capsul_hub_cog_up", "1 when the enrolled cog's tunnel is connected, 0 when not.", ["cog"], async (emit) => {
      for (const c of await this.cogRows.get()) {
        if (c.revokedAt === null && c.certNotAfter !== null) emit({ cog: c.name }, parts.tunnels.links.get(c.name)?.session ? 1 : 0);
      }
    });
    f.counter("capsul_hub_tunnel_connects_total", "Cog tunnels that authenticated and took their routes.", [], (emit) => emit({}, this.tunnelEvents.connects));
    f.counter("capsul_hub_tunnel_disconnects_total", "Cog tunnels that closed.", [], (emit) => emit({}, this.tunnelEvents.disconnects));
    f.counter("capsul_hub_tunnel_reconnects_total", "Tunnels from a cog that had one before since the hub started.", [], (emit) => emit({}, this.tunnelEvents.reconnects));
    const admission = parts.tunnels.admission;
    const counts = parts.tunnels.counts;
    f.gauge("capsul_hub_tunnels_unauthenticated", "Tunnel connections not yet authenticated (handshake, hello or enrollment pending).", [], (emit) => {
      emit({}, admission.unauthenticated);
    });
    f.counter("capsul_hub_tunnel_refusals_total", "Tunnel connections refused: at accept over hub.tunnel.max_unauthenticated(_per_ip), "
      + "or after the handshake with an error of this code.", ["reason"], (emit) => {
      emit({ reason: "max_unauthenticated" }, admission.refused.total);
      emit({ reason: "max_unauthenticated_per_ip" }, admission.refused.perSource);
      for (const code of TUNNEL_REFUSAL_CODES) emit({ reason: code.replace("-", "_") }, counts.refused[code]);
    });
    f.counter("capsul_hub_tunnel_handshakes_total", "TLS handshakes completed on the tunnel port: resumed from a session ticket (no certificate signature or chain check), or full.",
      ["resumed"], (emit) => {
        emit({ resumed: "true" }, counts.handshakes.resumed);
        emit({ resumed: "false" }, counts.handshakes.full);
      });
    f.counter("capsul_hub_control_messages_total", "Control messages from cogs: route sets applied or superseded by a newer one, certificate renewals done or refused.", ["outcome"], (emit) => {
      const c = counts.control;
      emit({ outcome: "routes_applied" }, c.applied);
      emit({ outcome: "routes_superseded" }, c.superseded);
      emit({ outcome: "renewed" }, c.renewals);
      emit({ outcome: "renewal_refused" }, c.renewalsRefused);
    });

    // Read from the PKI in force at each scrape: a reload that changes the hub's names makes a new tunnel certificate.
    const expiry = (pem: string): number => certInfo(pem).notAfter.getTime();
    this.certificates.register("ca", "hub-ca", () => expiry(parts.pki.caCertPem));
    this.certificates.register("tunnel", "hub-tunnel", () => expiry(parts.pki.hubCertPem));
    this.certificates.export(f, "capsul_hub", "When a certificate expires (Unix seconds): the hub's CA and tunnel certificate, each cog's newest, and any registered (ACME).", async (emit) => {
      for (const c of await this.cogRows.get()) {
        if (c.revokedAt === null && c.certNotAfter !== null) emit({ kind: "cog", name: c.name }, Math.floor(c.certNotAfter / 1000));
      }
    });
    parts.tunnels.on("attached", this.onAttached);
  }

  // ---- VisitorObserver: once per visitor ----

  peeked(listener: "tls" | "http", out: PeekOutcome<PeekedName>): void {
    let result: PeekResult = out.kind;
    if (out.kind === "ok" && !("sni" in out.value ? out.value.sni : out.value.host)) result = "no-name";
    else if (out.kind === "invalid" && OVERSIZED_RE.test(out.reason)) result = "too-large";
    const k = `${listener} ${PEEK_OUTCOMES[listener][result]}`;
    this.peeks.set(k, (this.peeks.get(k) ?? 0) + 1);
  }

  forwarded(socket: Socket, entry: RouteEntry, stream: Duplex): void {
    const key = seriesKey(entry.cog, entry.route, entry.kind);
    let s = this.series.get(key);
    if (!s) {
      s = { cog: entry.cog, route: entry.route, kind: entry.kind, tally: new SocketTally() };
      this.series.set(key, s);
    }
    s.tally.add(socket);
    const start = performance.now();
    stream.once("data", () => this.firstByte.observe({ kind: entry.kind }, (performance.now() - start) / 1000));
  }

  // ---- reading ----

  /**
   * Every route a cog holds now (with zeros if it had no visitor yet), then routes withdrawn
   * while visitors were still on them. `prune` (scrapes only) forgets a withdrawn route the
   * second time it is found idle, so it was reported once after its last connection.
   */
  routes(prune = false): RouteTraffic[] {
    const out: RouteTraffic[] = [];
    const held = new Set<string>();
    for (const cog of this.parts.tunnels.links.keys()) {
      for (const e of this.parts.router.entriesOf(cog)) {
        const key = seriesKey(e.cog, e.route, e.kind);
        held.add(key);
        const s = this.series.get(key);
        if (s) s.tally.gone = false;
        out.push(this.view(e.cog, e.route, e.kind, s, e));
      }
    }
    for (const [key, s] of this.series) {
      if (held.has(key)) continue;
      if (prune && s.tally.live.size === 0) {
        if (s.tally.gone) { this.series.delete(key); continue; }
        s.tally.gone = true;
      }
      out.push(this.view(s.cog, s.route, s.kind, s, undefined));
    }
    return out;
  }

  private view(cog: string, route: string, kind: RouteKind, s: RouteSeries | undefined, e: RouteEntry | undefined): RouteTraffic {
    const b = s?.tally.bytes() ?? { read: 0, written: 0 };
    const r: RouteTraffic = {
      cog, route, kind, held: e !== undefined, active: s?.tally.live.size ?? 0, connections: s?.tally.count ?? 0, received: b.read, sent: b.written,
    };
    if (e?.pattern !== undefined) r.pattern = e.pattern;
    if (e?.port !== undefined) r.port = e.port;
    return r;
  }

  /** The cogs the state store knows, for the JSON API and the status page (at most hub.admin.cogs_cache old). */
  cogs(): Promise<CogListRow[]> {
    return this.cogRows.get();
  }

  /** This process changed a cog in the store (the admin API's revoke or invite): the next read shows it. */
  cogsChanged(): void {
    this.cogRows.invalidate();
  }

  peekCounts(): ReadonlyMap<string, number> {
    return this.peeks;
  }

  /** The Prometheus text exposition of the whole registry. */
  async render(): Promise<{ contentType: string; text: string }> {
    return { contentType: this.registry.contentType, text: await this.registry.metrics() };
  }

  close(): void {
    this.parts.tunnels.off("attached", this.onAttached);
    this.families.close();
  }
}
