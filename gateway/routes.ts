/**
 * Applies the route set a cog announces: checks each route against the cog's
 * grants (a hostname outside them only with a DNS proof, gateway/domains.ts), claims it in the router (refusing anything another cog holds),
 * assigns TCP ports (stable: kept in SQLite per cog and route name) and opens
 * their listeners. Everything refused comes back with a reason for the cog.
 *
 * TCP port rules (issue 8, defects 3 and 7):
 * - A cog without a TCP grant of its own holds at most
 *   hub.default_tcp_ports_per_cog assignments from the pool, live or not,
 *   requested by port number or not. Assignments outlive routes (a VM stopped
 *   and started keeps its SSH port), so they are what the limit counts.
 * - A port granted to another cog (capsul.yaml or `invite --tcp-ports`) or
 *   assigned to another cog is never given out. Only the operator frees
 *   another cog's assignment (`capsul hub ports release`); a cog at its limit
 *   or with a dry grant reuses its own longest-unused assignment instead.
 * - A route renamed with the same port takes its own assignment along.
 * - A state error on one route refuses that route; it never ends the session.
 *
 * The state calls are async, so what was atomic by being synchronous is made
 * so explicitly: one application per cog at a time (a KeyedQueue; dropCog
 * waits its turn too), and each TCP route's choice of port and its
 * assignment in one store transaction under the "ports" lock, so two cogs
 * (or two hubs) never both take the port they both saw free.
 */
import type { HubConfig, PortRange } from "../config/types.js";
import type { Logger } from "../lib/log.js";
import type { AcceptedRoute, RefusedRoute, WireRoute } from "../protocol/control.js";
import type { CarriedPort } from "../protocol/move.js";
import { normalizeHostnamePattern } from "../lib/hostname.js";
import { KeyedQueue } from "../lib/keyedqueue.js";
import { grantsFor, inRanges, patternCovers, portGrants, type CogGrants } from "./grants.js";
import type { RouteEntry, Router } from "./router.js";
import type { HubStore, PortAssignment, StoredRoute, StoreOps } from "./store/types.js";

export interface TcpPortOpener {
  /** Opens (or keeps) the public listener for a port; rejects with the bind error. */
  open(port: number): Promise<void>;
  close(port: number): void;
}

export interface ApplyResult { accepted: AcceptedRoute[]; refused: RefusedRoute[] }

/** Decides on hostnames outside a cog's grants (gateway/domains.ts: DNS proofs). */
export interface DomainGate {
  decide(cog: string, pattern: string): Promise<{ ok: true } | { reason: string; code?: string }>;
}

/** What a cog's TCP routes are checked against, read once per announce. */
interface TcpContext {
  grants: CogGrants;
  /** Port ranges granted to other cogs: never assigned to this one. */
  othersRanges: PortRange[];
  /** This announce's TCP route names: their assignments are not reused by its other routes. */
  wanted: Set<string>;
}

type TcpOutcome = { entry: RouteEntry } | { reason: string; code?: string };

/** What a cog is told when the hub's own state failed on its route; the details go to the hub's log. */
export const ROUTE_STATE_ERROR_REASON = "the hub could not record this route (hub-side error, see the hub's log); it will be retried with the next announce";

export class RouteTable {
  /** Applications and drops, one at a time per cog. */
  private readonly queue = new KeyedQueue();

  constructor(
    private readonly cfg: HubConfig,
    private readonly store: HubStore,
    readonly router: Router,
    private readonly tcp: TcpPortOpener,
    private readonly log: Logger,
    /** Without one, a hostname outside the cog's grants is simply refused. */
    private readonly domains: DomainGate | null = null,
  ) {}

  /**
   * Replaces the cog's routes with `wanted`, after any application or drop of the same
   * cog before it. A `signal` aborted by then (the tunnel that sent it is gone, perhaps
   * replaced by a newer one) applies nothing.
   */
  apply(cog: string, wanted: WireRoute[], signal?: AbortSignal): Promise<ApplyResult> {
    return this.queue.run(cog, async () => (signal?.aborted ? { accepted: [], refused: [] } : this.applyNow(cog, wanted)));
  }

  private async applyNow(cog: string, wanted: WireRoute[]): Promise<ApplyResult> {
    const accepted: AcceptedRoute[] = [];
    const refused: RefusedRoute[] = [];
    const keep: RouteEntry[] = [];
    const names = new Set<string>();
    let ctx: TcpContext | null = null;
    try {
      ctx = await this.context(cog, wanted);
    } catch (err) {
      this.log.error("could not read a cog's grants", { cog, error: (err as Error).message });
    }
    for (const r of wanted) {
      if (names.has(r.name)) { refused.push({ name: r.name, reason: `duplicate route name ${r.name}` }); continue; }
      names.add(r.name);
      if (!ctx) { refused.push({ name: r.name, reason: ROUTE_STATE_ERROR_REASON }); continue; }
      let res: TcpOutcome;
      try {
        res = r.kind === "tcp" ? await this.applyTcp(cog, r, ctx) : await this.applyHost(cog, r, ctx.grants);
      } catch (err) {
        // The store (busy, full disk, a constraint, a lost connection) failing on one route must not take the tunnel down.
        this.log.error("route could not be applied", { cog, route: r.name, error: (err as Error).message });
        res = { reason: ROUTE_STATE_ERROR_REASON };
      }
      if ("reason" in res) { refused.push(res.code ? { name: r.name, reason: res.reason, code: res.code } : { name: r.name, reason: res.reason }); continue; }
      keep.push(res.entry);
      accepted.push(res.entry.kind === "tcp"
        ? { name: r.name, kind: "tcp", port: res.entry.port }
        : { name: r.name, kind: res.entry.kind, hostname: res.entry.pattern });
    }
    // Withdraw whatever the cog held before and did not announce again.
    for (const old of this.router.entriesOf(cog)) {
      if (keep.some((k) => sameSlot(k, old))) continue;
      this.router.release(old);
      if (old.kind === "tcp" && old.port !== undefined) await this.closePort(old.port);
    }
    return { accepted, refused };
  }

  private async context(cog: string, wanted: WireRoute[]): Promise<TcpContext> {
    const grants = await grantsFor(this.cfg, this.store, cog);
    const wantedTcp = new Set(wanted.filter((r) => r.kind === "tcp").map((r) => r.name));
    // Other cogs' ranges only matter to a cog with TCP routes; skip the read for the rest.
    const othersRanges = wantedTcp.size === 0 ? [] : (await portGrants(this.cfg, this.store)).filter((g) => g.cog !== cog).map((g) => g.range);
    return { grants, othersRanges, wanted: wantedTcp };
  }

  private async applyHost(cog: string, r: WireRoute, grants: CogGrants): Promise<TcpOutcome> {
    const pattern = r.hostname === undefined ? null : normalizeHostnamePattern(r.hostname);
    if (!pattern) return { reason: `not a hostname pattern: ${JSON.stringify(r.hostname)}` };
    if (!grants.hostnames.some((g) => patternCovers(g, pattern))) {
      // Outside the grants: only a DNS proof lets it in (and says which record to create if there is none).
      const d = this.domains ? await this.domains.decide(cog, pattern) : { reason: `hostname ${pattern} is not granted to cog ${cog}` };
      if ("reason" in d) return d;
    }
    const entry: RouteEntry = { cog, route: r.name, kind: r.kind, pattern };
    const claim = this.router.claim(entry);
    if (!claim.ok) return { reason: `hostname ${pattern} (${r.kind}) is held by cog ${claim.holder}` };
    return { entry };
  }

  private async applyTcp(cog: string, r: WireRoute, ctx: TcpContext): Promise<TcpOutcome> {
    const got = await this.store.transaction(["ports"], (tx) => this.choosePort(tx, cog, r, ctx));
    if (typeof got === "string") return { reason: got };
    const port = got;
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

  /** The port a TCP route gets, assigned in `tx`; or a refusal. */
  private async choosePort(tx: StoreOps, cog: string, r: WireRoute, ctx: TcpContext): Promise<number | string> {
    let current = await tx.portFor(cog, r.name);
    if (current !== undefined && this.notUsable(cog, current, ctx)) {
      // Grants changed since it was assigned (range given to another cog, pool shrunk): the cog's own assignment goes.
      this.log.info("dropping a hub TCP port assignment its cog is no longer granted", { cog, route: r.name, port: current });
      await tx.releasePort(cog, r.name);
      current = undefined;
    }
    if (r.port !== undefined && r.port !== current) return this.assignExplicit(tx, cog, r.name, r.port, ctx);
    if (current !== undefined) return current;
    return this.assignFree(tx, cog, r.name, ctx);
  }

  /** A port this cog may not use (any more): outside its grant, or inside another cog's. */
  private notUsable(cog: string, port: number, ctx: TcpContext): string | null {
    if (!inRanges(port, ctx.grants.tcpPorts)) {
      return ctx.grants.fromPool ? `hub port ${port} is not in the hub's TCP port pool` : `hub port ${port} is not granted to cog ${cog}`;
    }
    if (inRanges(port, ctx.othersRanges)) return `hub port ${port} is granted to another cog`;
    return null;
  }

  /** The route asks for `port` by number: a new assignment, or a move of the cog's own. Returns the port or a refusal. */
  private async assignExplicit(tx: StoreOps, cog: string, route: string, port: number, ctx: TcpContext): Promise<number | string> {
    const why = this.notUsable(cog, port, ctx);
    if (why) return why;
    const owner = await tx.portOwner(port);
    if (owner && owner.cog !== cog) return `hub port ${port} is assigned to cog ${owner.cog}`;
    const live = this.router.lookupPort(port);
    if (live && live.cog !== cog) return `hub port ${port} is held by cog ${live.cog}`;
    if (owner) {
      // The cog's own port under another route name: a rename that keeps its port, unless both names are announced now.
      if (ctx.wanted.has(owner.route)) return `hub port ${port} is already used by this cog's route ${owner.route}`;
      await tx.moveAssignment(port, cog, route);
      return port;
    }
    const room = await this.makeRoom(tx, cog, route, ctx);
    if ("refuse" in room) return room.refuse;
    if ("reuse" in room) await tx.releasePort(cog, room.reuse.route);
    await tx.reassignPort(cog, route, port);
    return port;
  }

  /** The route asks for any port: a free one from its grant, else one of the cog's own unused ones. */
  private async assignFree(tx: StoreOps, cog: string, route: string, ctx: TcpContext): Promise<number | string> {
    const room = await this.makeRoom(tx, cog, route, ctx);
    if ("refuse" in room) return room.refuse;
    // At its pool limit the cog reuses the assignment makeRoom picked; otherwise a free port first.
    const port = "free" in room ? await this.freePort(tx, cog, ctx) : undefined;
    if (port !== undefined) {
      await tx.assignPort(cog, route, port);
      return port;
    }
    const own = "free" in room ? await this.ownReusable(tx, cog, ctx) : room.reuse;
    if (!own) {
      return ctx.grants.fromPool
        ? (this.cfg.listen.tcpPorts.length ? "no free hub TCP port left in the pool (hub.listen.tcp_ports)" : "this hub has no TCP ports to assign (hub.listen.tcp_ports)")
        : "no free hub TCP port left in this cog's grant";
    }
    this.log.info("reusing a cog's own unused hub TCP port", { cog, port: own.port, from: own.route, to: route });
    await tx.moveAssignment(own.port, cog, route);
    return own.port;
  }

  /**
   * Below its pool limit a cog may take a new port ("free"). At the limit it
   * must give up one of its own unused assignments (returned; the caller moves
   * or drops it), or is refused. A cog with a grant of its own has no limit
   * but the grant.
   */
  private async makeRoom(tx: StoreOps, cog: string, route: string, ctx: TcpContext): Promise<{ free: true } | { reuse: PortAssignment } | { refuse: string }> {
    if (!ctx.grants.fromPool) return { free: true };
    const limit = this.cfg.defaultTcpPortsPerCog;
    const held = (await tx.assignmentsOf(cog)).filter((a) => a.route !== route && this.notUsable(cog, a.port, ctx) === null);
    if (held.length < limit) return { free: true };
    const own = await this.ownReusable(tx, cog, ctx);
    if (own && limit > 0) return { reuse: own };
    return { refuse: `cog ${cog} already holds ${held.length} hub TCP ports, its limit (hub.default_tcp_ports_per_cog: ${limit}); withdraw a tcp route, or ask the hub operator to release one (capsul hub ports)` };
  }

  private async freePort(tx: StoreOps, cog: string, ctx: TcpContext): Promise<number | undefined> {
    for (const r of ctx.grants.tcpPorts) {
      const taken = new Set((await tx.assignmentsIn(r.from, r.to)).map((a) => a.port));
      for (let p = r.from; p <= r.to; p++) {
        if (taken.has(p) || inRanges(p, ctx.othersRanges)) continue;
        const live = this.router.lookupPort(p);
        if (live && live.cog !== cog) continue;
        return p;
      }
    }
    return undefined;
  }

  /** The cog's own longest-unused assignment that no route of this announce uses. */
  private async ownReusable(tx: StoreOps, cog: string, ctx: TcpContext): Promise<PortAssignment | undefined> {
    let best: PortAssignment | undefined;
    for (const a of await tx.assignmentsOf(cog)) {
      if (ctx.wanted.has(a.route) || this.notUsable(cog, a.port, ctx) !== null) continue;
      if (!best || a.assignedAt < best.assignedAt) best = a;
    }
    return best;
  }

  /**
   * A moved VM's TCP route `route` follows it from cog `from` to cog `to` (gateway/carry.ts):
   * the port `from` holds for it becomes `to`'s, if `to` may hold it (inside its grant or the
   * pool, not inside another cog's grant, within its pool limit counting the port instead of
   * any it got for the route meanwhile, which is released). Otherwise nothing changes and the
   * reason says why. The live routes follow in releaseCarried() and the target's re-apply.
   */
  async carryPort(from: string, to: string, route: string): Promise<CarriedPort> {
    const grants = await grantsFor(this.cfg, this.store, to);
    const othersRanges = (await portGrants(this.cfg, this.store)).filter((g) => g.cog !== to).map((g) => g.range);
    const ctx: TcpContext = { grants, othersRanges, wanted: new Set([route]) };
    return this.store.transaction(["ports"], async (tx): Promise<CarriedPort> => {
      const port = (await tx.portFor(from, route)) ?? null;
      if (port === null) return { route, port, state: "not-held" };
      const why = this.notUsable(to, port, ctx);
      if (why) return { route, port, state: "kept", reason: why };
      if (grants.fromPool) {
        const limit = this.cfg.defaultTcpPortsPerCog;
        const held = (await tx.assignmentsOf(to)).filter((a) => a.route !== route && this.notUsable(to, a.port, ctx) === null);
        if (held.length >= limit) {
          return { route, port, state: "kept", reason: `cog ${to} already holds ${held.length} hub TCP ports, its limit (hub.default_tcp_ports_per_cog: ${limit})` };
        }
      }
      const done = await tx.carryPort(from, to, route);
      if (!done) return { route, port, state: "not-held" };
      this.log.info("hub TCP port followed a moved VM", { from, to, route, port, released: done.released });
      return { route, port, state: "followed" };
    });
  }

  /**
   * After a move carried `ports` and `hostnames` to another cog: `from`'s live routes on them
   * (if any: its VM is stopped for the move, so usually none) leave the router, so that the
   * target's re-apply can claim them. A port's listener is closed and reopened by that re-apply.
   */
  releaseCarried(from: string, ports: readonly number[], hostnames: readonly string[]): Promise<void> {
    return this.queue.run(from, async () => {
      for (const e of this.router.entriesOf(from)) {
        const carried = e.kind === "tcp" ? e.port !== undefined && ports.includes(e.port) : e.pattern !== undefined && hostnames.includes(e.pattern);
        if (!carried) continue;
        this.router.release(e);
        if (e.kind === "tcp" && e.port !== undefined) await this.closePort(e.port);
      }
    });
  }

  /** Stops serving a port; its assignment stays, stamped with when it was last served. */
  private async closePort(port: number): Promise<void> {
    this.tcp.close(port);
    try {
      await this.store.touchPort(port);
    } catch (err) {
      // Only the reuse order depends on the stamp: not worth failing a withdrawal or a cog's departure for.
      this.log.warn("could not stamp a closed hub TCP port", { port, error: (err as Error).message });
    }
  }

  /**
   * Claims routes a cog held before this hub started (gateway/tunnels.ts restoreRoutes),
   * before the cog is back: hostnames still inside its grants, TCP ports still assigned
   * to it (their listeners opened). Anything else is skipped: the cog's next announce
   * decides. Returns how many were claimed.
   */
  restore(cog: string, stored: readonly StoredRoute[]): Promise<number> {
    return this.queue.run(cog, async () => {
      let n = 0;
      let grants: CogGrants;
      try {
        grants = await grantsFor(this.cfg, this.store, cog);
      } catch (err) {
        this.log.warn("could not read a cog's grants to restore its routes", { cog, error: (err as Error).message });
        return 0;
      }
      for (const r of stored) {
        try {
          if (r.kind === "tcp") {
            if (r.port === null || !inRanges(r.port, grants.tcpPorts)) continue;
            const owner = await this.store.portOwner(r.port);
            if (!owner || owner.cog !== cog || owner.route !== r.route) continue;
            const entry: RouteEntry = { cog, route: r.route, kind: "tcp", port: r.port };
            if (!this.router.claim(entry).ok) continue;
            try {
              await this.tcp.open(r.port);
            } catch (err) {
              this.router.release(entry);
              this.log.warn("could not reopen a known route's port", { cog, port: r.port, error: (err as NodeJS.ErrnoException).code ?? (err as Error).message });
              continue;
            }
          } else {
            const pattern = r.hostname === null ? null : normalizeHostnamePattern(r.hostname);
            if (!pattern || !grants.hostnames.some((g) => patternCovers(g, pattern))) continue;
            if (!this.router.claim({ cog, route: r.route, kind: r.kind, pattern }).ok) continue;
          }
          n++;
        } catch (err) {
          this.log.warn("could not restore a known route", { cog, route: r.route, error: (err as Error).message });
        }
      }
      return n;
    });
  }

  /**
   * The cog is gone for good (grace over, or revoked): free its routes and listeners, keep
   * port assignments. After any application of the cog in flight, so none of it outlives this.
   */
  dropCog(cog: string): Promise<void> {
    return this.queue.run(cog, async () => {
      for (const e of this.router.releaseCog(cog)) {
        if (e.kind === "tcp" && e.port !== undefined) await this.closePort(e.port);
      }
      this.log.debug("routes dropped", { cog });
    });
  }
}

function sameSlot(a: RouteEntry, b: RouteEntry): boolean {
  return a.kind === b.kind && a.pattern === b.pattern && a.port === b.port && a.route === b.route;
}
