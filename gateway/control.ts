/**
 * The hub's side of an authenticated control stream, after the welcome: route
 * updates and certificate renewals, under a per-tunnel token bucket.
 *
 * A `routes` message replaces the cog's whole route set, so when several are
 * waiting only the newest is applied: 2000 of them sent at once (a synchronous
 * SQLite write each, back then) once blocked the hub's event loop for up to 640 ms; now they
 * cost one application per token. Every message the hub acts on (a route set
 * applied, a renewal) takes a token; when none is left the hub stops reading
 * the stream until one is due, and the stream's window holds the cog back.
 * Nothing is dropped but superseded route sets.
 */
import { once } from "node:events";
import { setTimeout as delay } from "node:timers/promises";
import type { HubConfig } from "../config/types.js";
import type { Logger } from "../lib/log.js";
import { ProtocolError } from "../lib/errors.js";
import { TokenBucket } from "../lib/tokenbucket.js";
import type { MuxStream } from "../protocol/mux.js";
import { encodeMessage, type MessageReader } from "../protocol/messages.js";
import {
  checkDomainsRelease, checkWireRoutes, type AcceptedRoute, type CogMessage, type HubMessage, type WireDomainProof, type WireEndpoint, type WireRoute,
} from "../protocol/control.js";
import type { Issuance, PresentedCert } from "./issuance.js";
import type { RouteTable } from "./routes.js";

/** Default of hub.tunnel.control_rate: control messages acted on per tunnel and second. */
export const CONTROL_RATE_PER_SEC = 20;
/** Default of hub.tunnel.control_burst: a cog starting dozens of VMs at once stays under it. */
export const CONTROL_BURST = 100;

/** Route summary for `capsul hub cogs`: "tls:web.example", "tcp:20001". */
export function describeRoutes(routes: AcceptedRoute[]): string[] {
  return routes.map((r) => (r.kind === "tcp" ? `tcp:${r.port}` : `${r.kind}:${r.hostname}`));
}

export interface ControlContext {
  cfg: HubConfig;
  cog: string;
  presented: PresentedCert;
  routes: RouteTable;
  issuance: Issuance;
  log: Logger;
  /** Aborted when the tunnel closes. */
  signal: AbortSignal;
  /**
   * Writes the cog's live status for `capsul hub cogs` and keeps its accepted routes in
   * the store, for a restarted hub to hold visitors for (never throws).
   */
  recordStatus(routes: string[], accepted: AcceptedRoute[]): void;
  /** The cog or its certificate was revoked: tell it why and drop it at once. */
  revoked(message: string): void;
  /** Hub-wide counts every channel adds to as well (Tunnels.counts.control, for gateway/metrics.ts). */
  totals?: ControlStats;
  /** The cog's custom-domain claims (gateway/domains.ts), or null when hub.domains is off. */
  domains: {
    readonly enabled: boolean;
    reportOf(cog: string): Promise<WireDomainProof[]>;
    /** Deletes `cog`'s own claims on `hostnames` that no route in `wanted` still needs; returns the names released. */
    release(cog: string, hostnames: readonly string[], wanted: readonly WireRoute[]): Promise<string[]>;
  } | null;
}

/** Counts for tests, logs and metrics: what the loop did with what it read. */
export interface ControlStats { applied: number; superseded: number; renewals: number; renewalsRefused: number }

export const newControlStats = (): ControlStats => ({ applied: 0, superseded: 0, renewals: 0, renewalsRefused: 0 });

export class ControlChannel {
  readonly stats: ControlStats = newControlStats();
  private readonly bucket: TokenBucket;
  private lastStatus = "";
  private lastRefused = "";
  /** The last `domains` message sent, so an unchanged report is not sent again. */
  private lastDomains = "";
  /** Set once the welcome went out: before it the cog may be sent nothing else. */
  private welcomed = false;
  /** The route set the cog announced last: a reload that changes grants applies it again. */
  private wanted: WireRoute[] = [];
  /** Route applications run one at a time: the announce loop's and a reload's reapply(). */
  private applying: Promise<unknown> = Promise.resolve();

  constructor(
    private readonly ctx: ControlContext,
    private readonly reader: MessageReader<CogMessage>,
    private readonly control: MuxStream,
  ) {
    this.bucket = new TokenBucket(ctx.cfg.tunnel.controlRatePerSec, ctx.cfg.tunnel.controlBurst);
  }

  /** One per control message acted on or skipped, never per byte. */
  private count(k: keyof ControlStats): void {
    this.stats[k]++;
    if (this.ctx.totals) this.ctx.totals[k]++;
  }

  private send(m: HubMessage): void {
    this.control.write(encodeMessage(m));
  }

  /** Tells the cog the live hub endpoints changed (gateway/endpoints.ts). */
  pushEndpoints(endpoints: WireEndpoint[]): void {
    if (this.ctx.signal.aborted) return;
    this.send({ type: "endpoints", endpoints });
  }

  /** Applies the hello's route set (it takes a token like any other) and returns what was accepted. */
  async hello(wanted: WireRoute[]): Promise<{ accepted: AcceptedRoute[]; refused: { name: string; reason: string }[] }> {
    this.bucket.tryTake();
    this.wanted = wanted;
    const res = await this.serially(() => this.ctx.routes.apply(this.ctx.cog, wanted, this.ctx.signal));
    this.count("applied");
    this.lastRefused = JSON.stringify(res.refused);
    this.status(res.accepted);
    return res;
  }

  /** Serves the stream until it ends; rejects on a protocol error. */
  async run(): Promise<void> {
    let carry: CogMessage | undefined;
    for (;;) {
      const m = carry ?? (await this.reader.next());
      carry = undefined;
      if (!m || this.ctx.signal.aborted) return;
      if (m.type === "routes") {
        let wanted = checkWireRoutes(m.routes);
        // Every route set already here replaces this one (a set is the whole truth), up to
        // the first message of another type, which is handled next, in order.
        const absorb = (): void => {
          while (carry === undefined) {
            const n = this.reader.poll();
            if (n === undefined) return;
            if (n.type !== "routes") carry = n;
            else {
              wanted = checkWireRoutes(n.routes);
              this.count("superseded");
            }
          }
        };
        absorb();
        if (!(await this.ready())) return;
        absorb(); // what arrived while we waited for a token
        this.bucket.tryTake();
        await this.applyRoutes(wanted);
      } else if (m.type === "domains-release") {
        const hostnames = checkDomainsRelease(m.hostnames);
        if (!(await this.ready())) return;
        this.bucket.tryTake();
        await this.release(hostnames);
      } else if (m.type === "renew") {
        if (!(await this.ready())) return;
        this.bucket.tryTake();
        if (!(await this.renew(m.csr))) return;
      } else {
        throw new ProtocolError(`unexpected control message ${JSON.stringify(m.type)}`);
      }
    }
  }

  /**
   * Waits until a token is due and the cog has read our earlier answers (a cog that never
   * reads must not make us queue answers); false once the tunnel is gone.
   */
  private async ready(): Promise<boolean> {
    const signal = this.ctx.signal;
    try {
      for (;;) {
        if (signal.aborted) return false;
        if (this.control.writableNeedDrain) {
          await once(this.control, "drain", { signal });
          continue;
        }
        const wait = this.bucket.waitMs();
        if (wait === 0) return true;
        await delay(wait, undefined, { signal });
      }
    } catch {
      return false; // aborted: the tunnel closed
    }
  }

  /** Runs `fn` after every route application started before it. */
  private serially<T>(fn: () => Promise<T>): Promise<T> {
    const run = this.applying.then(fn, fn);
    this.applying = run.catch(() => {});
    return run;
  }

  /**
   * Applies the cog's last announced route set again, under the grants as they are now
   * (a reload changed them), and tells the cog the outcome like any other routes-result.
   * No token is taken: the hub, not the cog, asked for it.
   */
  async reapply(): Promise<void> {
    if (this.ctx.signal.aborted) return;
    await this.applyRoutes(this.wanted);
  }

  /**
   * A VM moved away (gateway/carry.ts) and its port or names went with it: they leave the
   * route set this cog announced last, so that a re-apply before the cog's own next announce
   * (a reload, a DNS proof's change) does not give the cog a new port for a VM it no longer has.
   */
  forget(routes: readonly string[], hostnames: readonly string[]): void {
    this.wanted = this.wanted.filter((r) => !routes.includes(r.name) && !(r.hostname !== undefined && hostnames.includes(r.hostname.toLowerCase())));
  }

  /** Asks the cog to announce its routes again on every endpoint (a moved VM's port or names are its own now). */
  askAnnounce(): void {
    if (!this.welcomed || this.ctx.signal.aborted) return;
    this.send({ type: "announce" });
  }

  private async applyRoutes(wanted: WireRoute[]): Promise<void> {
    const { cog, log } = this.ctx;
    this.wanted = wanted;
    const res = await this.serially(() => this.ctx.routes.apply(cog, wanted, this.ctx.signal));
    this.count("applied");
    if (this.ctx.signal.aborted) return;
    this.send({ type: "routes-result", accepted: res.accepted, refused: res.refused });
    this.status(res.accepted);
    // The same refusals again are not news (a cog may resend its set many times).
    const refused = JSON.stringify(res.refused);
    if (refused !== this.lastRefused) {
      for (const r of res.refused) log.warn("route refused", { cog, route: r.name, reason: r.reason });
    }
    this.lastRefused = refused;
    await this.sendDomains();
  }

  /**
   * The cog gave names up (a `domains-release`): its own claims on them go, as
   * `capsul hub domains remove` does, and its routes are applied again at once (a
   * route refused for a claim over the limit may be accepted now) and it is told.
   */
  private async release(hostnames: string[]): Promise<void> {
    const domains = this.ctx.domains;
    if (!domains) return; // hub.domains off: there is nothing to release here
    const released = await domains.release(this.ctx.cog, hostnames, this.wanted);
    if (released.length === 0 || this.ctx.signal.aborted) {
      await this.sendDomains();
      return;
    }
    this.ctx.log.info("custom-domain claims released by the cog", { cog: this.ctx.cog, hostnames: released.join(",") });
    await this.refresh();
  }

  /** After the welcome went out: from now on the cog may be sent other messages. */
  welcomeSent(): void {
    this.welcomed = true;
    void this.sendDomains();
  }

  /**
   * One of the cog's DNS proofs changed state (gateway/domains.ts): a route refused may be
   * accepted now, or one accepted must go, so its last route set is applied again, as a
   * reload does (reapply). Never rejects.
   */
  async refresh(): Promise<void> {
    if (!this.welcomed || this.ctx.signal.aborted) return;
    try {
      await this.reapply();
    } catch (err) {
      this.ctx.log.error("could not re-apply a cog's routes", { cog: this.ctx.cog, error: (err as Error).message });
    }
  }

  /** Tells the cog where its custom-domain claims stand, if that changed. Never rejects. */
  async sendDomains(): Promise<void> {
    const domains = this.ctx.domains;
    if (!domains?.enabled || !this.welcomed || this.ctx.signal.aborted) return;
    try {
      const proofs = await domains.reportOf(this.ctx.cog);
      const text = JSON.stringify(proofs);
      if (text === this.lastDomains || this.ctx.signal.aborted) return;
      this.lastDomains = text;
      this.send({ type: "domains", proofs });
    } catch (err) {
      this.ctx.log.warn("could not read a cog's custom-domain claims", { cog: this.ctx.cog, error: (err as Error).message });
    }
  }

  /** Coalesced status writes: only when what `capsul hub cogs` would show changed. */
  private status(accepted: AcceptedRoute[]): void {
    const routes = describeRoutes(accepted);
    const key = JSON.stringify(routes);
    if (key === this.lastStatus) return;
    this.lastStatus = key;
    this.ctx.recordStatus(routes, accepted);
  }

  /** False when the cog was revoked (the tunnel is being dropped). */
  private async renew(csr: unknown): Promise<boolean> {
    const { cog, log } = this.ctx;
    const out = await this.ctx.issuance.renew(this.ctx.presented, csr);
    if (this.ctx.signal.aborted) return false;
    if (out.ok) {
      this.count("renewals");
      this.send({ type: "renewed", cert: out.certPem });
      log.info("cog certificate renewed", { cog, notAfter: out.notAfter.toISOString() });
      return true;
    }
    log.warn(out.message, { cog });
    if (out.code === "revoked") {
      this.ctx.revoked(out.message);
      return false;
    }
    // Not fatal: the tunnel stays up and the cog logs the reason.
    this.count("renewalsRefused");
    this.send({ type: "error", code: "renew", message: out.message });
    return true;
  }
}
