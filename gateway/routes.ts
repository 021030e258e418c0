/**
 * Applies the route set a cog announces: checks each route against the cog's
 * grants, claims it in the router (refusing anything another cog holds),
 * assigns TCP ports (stable: kept in SQLite per cog and route name) and opens
 * their listeners. Everything refused comes back with a reason for the cog.
 */
import type { HubConfig } from "../config/types.js";
import type { Logger } from "../lib/log.js";
import type { AcceptedRoute, RefusedRoute, WireRoute } from "../protocol/control.js";
import { normalizeHostnamePattern } from "../lib/hostname.js";
import { grantsFor, inRanges, patternCovers } from "./grants.js";
import type { RouteEntry, Router } from "./router.js";
import type { HubState } from "./state.js";

export interface TcpPortOpener {
  /** Opens (or keeps) the public listener for a port; rejects with the bind error. */
  open(port: number): Promise<void>;
  close(port: number): void;
}

export interface ApplyResult { accepted: AcceptedRoute[]; refused: RefusedRoute[] }

export class RouteTable {
  constructor(
    private readonly cfg: HubConfig,
    private readonly state: HubState,
    readonly router: Router,
    private readonly tcp: TcpPortOpener,
    private readonly log: Logger,
  ) {}

  /** Replaces the cog's routes with `wanted`. */
  async apply(cog: string, wanted: WireRoute[]): Promise<ApplyResult> {
    const grants = grantsFor(this.cfg, this.state, cog);
    const accepted: AcceptedRoute[] = [];
    const refused: RefusedRoute[] = [];
    const keep: RouteEntry[] = [];
    const names = new Set<string>();
    for (const r of wanted) {
      if (names.has(r.name)) { refused.push({ name: r.name, reason: `duplicate route name ${r.name}` }); continue; }
      names.add(r.name);
      if (r.kind === "tcp") {
        const res = await this.applyTcp(cog, r, grants);
        if ("reason" in res) refused.push({ name: r.name, reason: res.reason });
        else { keep.push(res.entry); accepted.push({ name: r.name, kind: "tcp", port: res.entry.port }); }
        continue;
      }
      const pattern = r.hostname === undefined ? null : normalizeHostnamePattern(r.hostname);
      if (!pattern) { refused.push({ name: r.name, reason: `not a hostname pattern: ${JSON.stringify(r.hostname)}` }); continue; }
      if (!grants.hostnames.some((g) => patternCovers(g, pattern))) {
        refused.push({ name: r.name, reason: `hostname ${pattern} is not granted to cog ${cog}` });
        continue;
      }
      const entry: RouteEntry = { cog, route: r.name, kind: r.kind, pattern };
      const claim = this.router.claim(entry);
      if (!claim.ok) { refused.push({ name: r.name, reason: `hostname ${pattern} (${r.kind}) is held by cog ${claim.holder}` }); continue; }
      keep.push(entry);
      accepted.push({ name: r.name, kind: r.kind, hostname: pattern });
    }
    // Withdraw whatever the cog held before and did not announce again.
    for (const old of this.router.entriesOf(cog)) {
      if (keep.some((k) => sameSlot(k, old))) continue;
      this.router.release(old);
      if (old.kind === "tcp" && old.port !== undefined) this.closePort(old.port);
    }
    // Port assignments outlive the routes (a VM stopped and started keeps its SSH
    // port); they are reclaimed only when a pool runs dry (see reclaimablePort).
    return { accepted, refused };
  }

  private async applyTcp(cog: string, r: WireRoute, grants: ReturnType<typeof grantsFor>): Promise<{ entry: RouteEntry } | { reason: string }> {
    const current = this.state.portFor(cog, r.name);
    let port = current;
    if (r.port !== undefined && r.port !== current) {
      const why = this.portProblem(cog, r.port, grants.tcpPorts);
      if (why) return { reason: why };
      if (current !== undefined) this.state.releasePort(cog, r.name);
      this.state.assignPort(cog, r.name, r.port);
      port = r.port;
    }
    if (port === undefined) {
      const live = this.router.entriesOf(cog).filter((e) => e.kind === "tcp" && e.route !== r.name).length;
      if (grants.fromPool && live >= this.cfg.defaultTcpPortsPerCog) {
        return { reason: `cog ${cog} already holds ${this.cfg.defaultTcpPortsPerCog} hub TCP ports (hub.default_tcp_ports_per_cog)` };
      }
      port = this.freePort(cog, grants.tcpPorts);
      if (port === undefined) {
        const stale = this.reclaimablePort(cog, grants.tcpPorts);
        if (stale) {
          this.log.info("reclaiming an unused hub TCP port", { port: stale.port, from: `${stale.cog}/${stale.route}`, to: `${cog}/${r.name}` });
          this.state.releasePort(stale.cog, stale.route);
          port = stale.port;
        }
      }
      if (port === undefined) return { reason: grants.tcpPorts.length ? "no free hub TCP port left in this cog's grant" : "this hub has no TCP ports to assign (hub.listen.tcp_ports)" };
      this.state.assignPort(cog, r.name, port);
    }
    const entry: RouteEntry = { cog, route: r.name, kind: "tcp", port };
    const claim = this.router.claim(entry);
    if (!claim.ok) return { reason: `hub port ${port} is held by cog ${claim.holder}` };
    try {
      await this.tcp.open(port);
    } catch (err) {
      this.router.release(entry);
      return { reason: `hub port ${port} could not be opened: ${(err as NodeJS.ErrnoException).code ?? (err as Error).message}` };
    }
    return { entry };
  }

  private portProblem(cog: string, port: number, ranges: readonly { from: number; to: number }[]): string | null {
    if (!inRanges(port, ranges)) return `hub port ${port} is not granted to cog ${cog}`;
    const owner = this.state.portOwner(port);
    if (owner && owner.cog !== cog) return `hub port ${port} is assigned to cog ${owner.cog}`;
    if (this.reservedForOther(cog, port)) return `hub port ${port} is granted to another cog`;
    return null;
  }

  private reservedForOther(cog: string, port: number): boolean {
    return this.cfg.cogs.some((c) => c.name !== cog && inRanges(port, c.tcpPorts));
  }

  private freePort(cog: string, ranges: readonly { from: number; to: number }[]): number | undefined {
    for (const r of ranges) {
      for (let p = r.from; p <= r.to; p++) {
        if (this.state.portOwner(p)) continue;
        if (this.reservedForOther(cog, p)) continue;
        return p;
      }
    }
    return undefined;
  }

  /** Stops serving a port; its assignment stays, stamped with when it was last served. */
  private closePort(port: number): void {
    this.tcp.close(port);
    this.state.touchPort(port);
  }

  /**
   * When no port is free: the longest-unused assignment in the ranges that no
   * route currently serves and that is not inside another cog's explicit grant.
   */
  private reclaimablePort(cog: string, ranges: readonly { from: number; to: number }[]): { port: number; cog: string; route: string } | undefined {
    let best: { port: number; cog: string; route: string; assignedAt: number } | undefined;
    for (const r of ranges) {
      for (const a of this.state.assignmentsIn(r.from, r.to)) {
        if (this.router.lookupPort(a.port) || this.reservedForOther(cog, a.port)) continue;
        if (!best || a.assignedAt < best.assignedAt) best = a;
      }
    }
    return best;
  }

  /** The cog is gone for good (grace over, or revoked): free its routes and listeners, keep port assignments. */
  dropCog(cog: string): void {
    for (const e of this.router.releaseCog(cog)) {
      if (e.kind === "tcp" && e.port !== undefined) this.closePort(e.port);
    }
    this.log.debug("routes dropped", { cog });
  }
}

function sameSlot(a: RouteEntry, b: RouteEntry): boolean {
  return a.kind === b.kind && a.pattern === b.pattern && a.port === b.port && a.route === b.route;
}
