/**
 * The cog's metrics (prom-client): its tunnel to the hub, the routes the hub accepted,
 * visitor streams and bytes per route, and its certificate's expiry. Read from the
 * TunnelClient's events and the target sockets' byte counters: one 'close' listener per
 * visitor stream, nothing per byte. Route labels are this cog's own route names, and only
 * routes it knows (a visitor header naming another route is refused before any count).
 */
import { X509Certificate } from "node:crypto";
import fs from "node:fs";
import type { Socket } from "node:net";
import path from "node:path";
import { Registry } from "prom-client";
import type { AcmeManager } from "../certs/acme.js";
import { CertificateExpiry, MetricFamilies, perScrape, SocketTally } from "../lib/metrics.js";
import type { AcceptedRoute, RefusedRoute } from "../protocol/control.js";
import type { TunnelClient } from "./client.js";
import { CERT_FILE } from "./identity.js";

export interface CogRouteTraffic { route: string; active: number; streams: number; toTarget: number; fromTarget: number }

/** What watchAcme() needs of the ACME manager: its rows and their "change" event. */
export type AcmeCertSource = Pick<AcmeManager, "list" | "on" | "off">;

/** A certificate the ACME manager holds, as registered: its expiry is updated on every "change". */
interface AcmeCert { notAfterMs: number | null; unregister: () => void }

export class CogMetrics {
  readonly registry: Registry;
  /** Certificate expiry; register() is the hook for certificates the cog obtains itself (ACME, tls: terminate). */
  readonly certificates = new CertificateExpiry();
  readonly tunnelEvents = { connects: 0, disconnects: 0, reconnects: 0 };
  private readonly families: MetricFamilies;
  /** Per route, its target sockets: written to them is to_target, read from them from_target. */
  private readonly series = new Map<string, SocketTally>();
  private routesNow: { accepted: AcceptedRoute[]; refused: RefusedRoute[] } = { accepted: [], refused: [] };
  private readonly scrapeRoutes = perScrape(() => this.routes(true));
  private readonly onConnected = (): void => {
    if (this.tunnelEvents.connects > 0) this.tunnelEvents.reconnects++;
    this.tunnelEvents.connects++;
  };
  private readonly onDisconnected = (): void => { this.tunnelEvents.disconnects++; };
  private readonly onRoutes = (r: { accepted: AcceptedRoute[]; refused: RefusedRoute[] }): void => { this.routesNow = r; };
  private readonly onVisitor = (route: string, target: Socket): void => {
    let s = this.series.get(route);
    if (!s) {
      s = new SocketTally();
      this.series.set(route, s);
    }
    s.add(target);
  };
  private acme: AcmeCertSource | null = null;
  private readonly acmeCerts = new Map<string, AcmeCert>();
  private readonly onAcmeChange = (): void => this.syncAcme();

  constructor(private readonly client: TunnelClient, cogName: string, dataDir: string, registry: Registry = new Registry()) {
    this.registry = registry;
    const f = this.families = new MetricFamilies(registry);
    f.gauge("capsul_cog_tunnel_up", "1 while the tunnel to the hub is connected (welcome received), else 0.", [], (emit) => emit({}, client.connected ? 1 : 0));
    f.counter("capsul_cog_tunnel_connects_total", "Tunnels to the hub that were welcomed.", [], (emit) => emit({}, this.tunnelEvents.connects));
    f.counter("capsul_cog_tunnel_disconnects_total", "Welcomed tunnels that went down.", [], (emit) => emit({}, this.tunnelEvents.disconnects));
    f.counter("capsul_cog_tunnel_reconnects_total", "Tunnels welcomed after the first since the cog started.", [], (emit) => emit({}, this.tunnelEvents.reconnects));
    f.gauge("capsul_cog_routes", "Routes the hub accepted or refused in its last answer.", ["state"], (emit) => {
      emit({ state: "accepted" }, this.routesNow.accepted.length);
      emit({ state: "refused" }, this.routesNow.refused.length);
    });
    f.counter("capsul_cog_streams_total", "Visitor streams spliced to a route's target.", ["route"], (emit) => {
      for (const r of this.scrapeRoutes()) emit({ route: r.route }, r.streams);
    });
    f.gauge("capsul_cog_streams_active", "Visitor streams of a route open now.", ["route"], (emit) => {
      for (const r of this.scrapeRoutes()) emit({ route: r.route }, r.active);
    });
    f.counter("capsul_cog_bytes_total", "Bytes between the cog and a route's target: to_target (from visitors), from_target (to them).", ["route", "direction"], (emit) => {
      for (const r of this.scrapeRoutes()) {
        emit({ route: r.route, direction: "to_target" }, r.toTarget);
        emit({ route: r.route, direction: "from_target" }, r.fromTarget);
      }
    });
    const certFile = path.join(dataDir, CERT_FILE);
    // Read at scrape time: a renewal over the tunnel rewrites the file.
    this.certificates.register("tunnel", cogName, () => Date.parse(new X509Certificate(fs.readFileSync(certFile)).validTo));
    this.certificates.export(f, "capsul_cog", "When a certificate expires (Unix seconds): the cog's tunnel client certificate, and any registered (ACME).");

    client.on("connected", this.onConnected);
    client.on("disconnected", this.onDisconnected);
    client.on("routes", this.onRoutes);
    client.on("visitor", this.onVisitor);
  }

  /**
   * Exports the expiry of every certificate `acme` holds (kind "acme", name = the route's
   * hostname) through certificates.register(), following its "change" events: a renewal
   * moves the timestamp, a name without a certificate yet has no series, a name the
   * manager forgets is unregistered. Undone by close().
   */
  watchAcme(acme: AcmeCertSource): void {
    this.acme = acme;
    acme.on("change", this.onAcmeChange);
    this.syncAcme();
  }

  private syncAcme(): void {
    const seen = new Set<string>();
    for (const row of this.acme?.list() ?? []) {
      seen.add(row.name);
      const notAfterMs = row.notAfter === null ? null : Date.parse(row.notAfter);
      const known = this.acmeCerts.get(row.name);
      if (known) {
        known.notAfterMs = notAfterMs;
        continue;
      }
      const cert: AcmeCert = { notAfterMs, unregister: () => {} };
      cert.unregister = this.certificates.register("acme", row.name, () => cert.notAfterMs);
      this.acmeCerts.set(row.name, cert);
    }
    for (const [name, cert] of this.acmeCerts) {
      if (seen.has(name)) continue;
      cert.unregister();
      this.acmeCerts.delete(name);
    }
  }

  /** Routes the hub accepted (with zeros before any visitor), then others that still have counts. */
  routes(prune = false): CogRouteTraffic[] {
    const out: CogRouteTraffic[] = [];
    const accepted = new Set(this.routesNow.accepted.map((r) => r.name));
    const view = (route: string, s: SocketTally | undefined): CogRouteTraffic => {
      const b = s?.bytes() ?? { read: 0, written: 0 };
      return { route, active: s?.live.size ?? 0, streams: s?.count ?? 0, toTarget: b.written, fromTarget: b.read };
    };
    for (const name of accepted) {
      const s = this.series.get(name);
      if (s) s.gone = false;
      out.push(view(name, s));
    }
    for (const [name, s] of this.series) {
      if (accepted.has(name)) continue;
      // A withdrawn route is reported once more after its last stream closed, then forgotten.
      if (prune && s.live.size === 0) {
        if (s.gone) { this.series.delete(name); continue; }
        s.gone = true;
      }
      out.push(view(name, s));
    }
    return out;
  }

  close(): void {
    this.client.off("connected", this.onConnected);
    this.client.off("disconnected", this.onDisconnected);
    this.client.off("routes", this.onRoutes);
    this.client.off("visitor", this.onVisitor);
    this.acme?.off("change", this.onAcmeChange);
    this.acme = null;
    for (const cert of this.acmeCerts.values()) cert.unregister();
    this.acmeCerts.clear();
    this.families.close();
  }
}
