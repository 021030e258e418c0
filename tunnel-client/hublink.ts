/**
 * One tunnel of a cog to one hub endpoint, kept up by its own loop with its
 * own jittered exponential backoff: a dead endpoint retries slowly while the
 * others stay connected. The TunnelClient (./client.ts) owns the links, the
 * routes they announce and the visitors they carry; a link only dials, says
 * hello, waits for the welcome and hands every later message to its owner.
 *
 * A link leaves its session without dropping its streams ("retires" it, the
 * owner keeps it until its streams end) when the hub sends GoAway (draining),
 * when a reload moves the link to another address, and when the cog drains;
 * it dials a new tunnel at once after the first two.
 */
import type { HostPort } from "../config/types.js";
import type { Logger } from "../lib/log.js";
import { formatHostPort } from "../lib/hostname.js";
import type { MuxSession, MuxStream } from "../protocol/mux.js";
import { encodeMessage, MessageReader } from "../protocol/messages.js";
import { DOMAINS_RELEASE_MAX, TUNNEL_PROTOCOL_VERSION, type HubMessage, type WireRoute } from "../protocol/control.js";
import type { CogConfig } from "../config/types.js";
import { dialHub, fetchTicket } from "./dial.js";
import type { CogIdentity } from "./identity.js";

/** Backoff jitter: each delay is scaled by a random factor in [1 - J, 1 + J]. */
export const RECONNECT_JITTER_RATIO = 0.25;
/**
 * A ticket refresh due at once (a tunnel resumed with a ticket older than
 * cog.tunnel.session_refresh) waits a random part of this share of the period: after a hub
 * restart, 1,000 cogs would otherwise all make their side full handshake in the same second,
 * the storm resumption saved the hub from.
 */
export const SESSION_REFRESH_SPREAD_RATIO = 0.1;

export type LinkState = "idle" | "connecting" | "connected" | "waiting" | "draining" | "closed";

/** Why one tunnel's life ended: refused by the hub, ended, or left on purpose (then retired, not destroyed). */
export type RunOutcome = "refused" | "ended" | "goaway" | "moved" | "draining";

/** Where a link dials: an address, and the TLS server name to send (absent: derived from the host, as before endpoints). */
export interface LinkTarget { hub: HostPort; serverName?: string }

/** What a link needs from the client that owns it. */
export interface LinkOwner {
  readonly cfg: CogConfig;
  identity(): CogIdentity;
  wireRoutes(): WireRoute[];
  onVisitor(stream: MuxStream): void;
  /** The hub welcomed this link (`m` is the welcome). */
  welcomed(link: HubLink, m: HubMessage & { type: "welcome" }, control: MuxStream): void;
  /** Any later message on the control stream. */
  message(link: HubLink, m: HubMessage): Promise<void>;
  /** A connected link lost its tunnel. */
  lost(link: HubLink): void;
  /** Keeps a session left on purpose until its visitor streams are done; `why` for the log. */
  retire(link: HubLink, session: MuxSession, control: MuxStream | null, why: "goaway" | "moved" | "draining"): void;
  /** Asked before every redial: false stops the link (its endpoint is gone). */
  keepDialing(link: HubLink): boolean;
}

export class HubLink {
  state: LinkState = "idle";
  /** The endpoint's name: from the hub's list, or learned from the welcome (null: a bootstrap link not welcomed yet, or a hub without endpoints). */
  name: string | null;
  /** Made from an endpoint list (else from the bootstrap address): dials the address the list gives. */
  fromList = false;
  /** When the hub's endpoint list stopped naming this endpoint; null while it is listed. */
  goneSince: number | null = null;
  session: MuxSession | null = null;
  control: MuxStream | null = null;
  private attempt = 0;
  private wakeup: (() => void) | null = null;
  private loopDone: Promise<void> | null = null;
  /**
   * The TLS session ticket of this link's last full handshake, offered on the next dial
   * (tunnel-client/dial.ts). Only in memory, and only for the address, server name,
   * certificate and CA it was made with: a renewed certificate, a re-enrollment or a moved
   * link does a full handshake. Dropped when the hub refuses the tunnel. `at`: when it came,
   * for cog.tunnel.session_refresh.
   */
  private resume: { where: string; ticket: Buffer; certPem: string; caPem: string; at: number } | null = null;
  /** The next ticket refresh, while a tunnel is up (scheduleRefresh). */
  private refreshTimer: NodeJS.Timeout | null = null;
  /** Ends the current tunnel's life on purpose (see RunOutcome); set while runOnce() runs. */
  private leave: ((why: "moved" | "draining") => void) | null = null;

  constructor(private readonly owner: LinkOwner, public target: LinkTarget, name: string | null, private readonly log: Logger) {
    this.name = name;
  }

  get label(): string { return formatHostPort(this.target.hub); }

  start(): void {
    if (!this.loopDone) this.loopDone = this.loop();
  }

  /** Ends the link for good: its tunnel is closed and it dials no more. */
  async stop(): Promise<void> {
    this.state = "closed";
    this.wakeup?.();
    this.leave?.("draining");
    this.session?.destroy();
    await this.loopDone;
  }

  /** Stops dialing, gently: the tunnel is retired (its streams may finish), no other is dialed. */
  drain(): void {
    if (this.state !== "closed") this.state = "draining";
    this.wakeup?.();
    this.leave?.("draining");
  }

  /** A reload moved this link to another address: its tunnel is retired and `target` is dialed at once. */
  move(target: LinkTarget): void {
    this.target = target;
    this.attempt = 0;
    this.leave?.("moved");
    this.wakeup?.();
  }

  /** Sends the current route set if this link is connected. */
  sendRoutes(routes: WireRoute[]): void {
    if (this.state === "connected" && this.control) this.control.write(encodeMessage({ type: "routes", routes }));
  }

  /** Set from each welcome: the hub takes `domains-release` (an older one would drop the tunnel). */
  releases = false;

  /** Asks the hub to release this cog's claims on `hostnames`, if connected to a hub that takes it; false if not sent. */
  sendRelease(hostnames: string[]): boolean {
    if (this.state !== "connected" || !this.control || !this.releases) return false;
    for (let i = 0; i < hostnames.length; i += DOMAINS_RELEASE_MAX) {
      this.control.write(encodeMessage({ type: "domains-release", hostnames: hostnames.slice(i, i + DOMAINS_RELEASE_MAX) }));
    }
    return true;
  }

  /**
   * While the tunnel is up, fetches a fresh session ticket (tunnel-client/dial.ts fetchTicket)
   * once the one held is older than cog.tunnel.session_refresh, then every period; a failed
   * fetch keeps the old ticket and tries again a period later.
   */
  private scheduleRefresh(): void {
    const every = this.owner.cfg.tunnel.sessionRefreshMs;
    if (every <= 0 || !this.resume || this.stopping()) return; // off, or a hub that sends no tickets
    const due = this.resume.at + every - Date.now();
    const delay = due > 0 ? due : Math.random() * every * SESSION_REFRESH_SPREAD_RATIO;
    if (this.refreshTimer) clearTimeout(this.refreshTimer);
    this.refreshTimer = setTimeout(() => { void this.refresh(); }, delay);
    this.refreshTimer.unref();
  }

  private async refresh(): Promise<void> {
    this.refreshTimer = null;
    if (this.current() !== "connected") return;
    const id = this.owner.identity();
    const target = this.target;
    const where = `${formatHostPort(target.hub)}|${target.serverName ?? ""}`;
    try {
      const ticket = await fetchTicket({
        hub: target.hub, serverName: target.serverName, tuning: this.owner.cfg.tunnel,
        caPem: id.caPem, keyPem: id.keyPem, certPem: id.certPem,
      });
      this.resume = { where, ticket, certPem: id.certPem, caPem: id.caPem, at: Date.now() };
      this.log.debug("session ticket refreshed", { hub: this.label, endpoint: this.name ?? undefined });
    } catch (err) {
      if (this.resume) this.resume.at = Date.now(); // try again a period from now
      this.log.debug("session ticket refresh failed", { hub: this.label, endpoint: this.name ?? undefined, error: (err as Error).message });
    }
    if (this.current() === "connected" && this.refreshTimer === null) this.scheduleRefresh();
  }

  private backoffMs(): number {
    const { minDelayMs, maxDelayMs } = this.owner.cfg.reconnect;
    const base = Math.min(maxDelayMs, minDelayMs * 2 ** Math.min(this.attempt, 30));
    const jitter = 1 + (Math.random() * 2 - 1) * RECONNECT_JITTER_RATIO;
    return Math.max(0, Math.round(base * jitter));
  }

  private async sleep(ms: number): Promise<void> {
    await new Promise<void>((resolve) => {
      const t = setTimeout(() => { this.wakeup = null; resolve(); }, ms);
      this.wakeup = () => { clearTimeout(t); this.wakeup = null; resolve(); };
    });
  }

  /** Read through a method so TypeScript does not narrow it across awaits. */
  private current(): LinkState { return this.state; }

  /** Draining or closed: no tunnel is dialed any more. */
  private stopping(): boolean {
    const s = this.current();
    return s === "closed" || s === "draining";
  }

  private async loop(): Promise<void> {
    while (!this.stopping()) {
      this.state = "connecting";
      let outcome: RunOutcome = "ended";
      let failure: string | undefined;
      try {
        outcome = await this.runOnce();
      } catch (err) {
        failure = (err as Error).message;
        if (!this.stopping()) this.log.warn("tunnel to hub failed", { hub: this.label, endpoint: this.name ?? undefined, error: failure });
      }
      const was = this.current();
      // One line per tunnel that was up and is no longer, with why (an error, or the outcome: ended, goaway, moved, draining).
      if (was === "connected") this.log.info("disconnected from hub", { hub: this.label, endpoint: this.name ?? undefined, reason: failure ?? outcome });
      if (this.session && (outcome === "goaway" || outcome === "moved" || outcome === "draining")) {
        this.owner.retire(this, this.session, this.control, outcome);
      } else this.session?.destroy();
      this.session = null;
      this.control = null;
      if (was === "closed") break;
      if (!this.stopping()) this.state = "waiting";
      if (was === "connected") this.owner.lost(this);
      if (this.stopping()) break;
      if (outcome === "goaway" || outcome === "moved") {
        // Dial the (next) hub now: a draining hub is on its way out, a moved link has somewhere to go.
        this.attempt = 0;
        continue;
      }
      if (outcome === "refused") this.attempt = 30; // refusals won't fix themselves quickly: retry at the slowest pace
      const delay = this.backoffMs();
      this.attempt++;
      this.log.info("reconnecting", { hub: this.label, endpoint: this.name ?? undefined, inMs: delay });
      await this.sleep(delay);
      if (!this.stopping() && !this.owner.keepDialing(this)) {
        this.log.info("hub endpoint gone: no longer dialed", { hub: this.label, endpoint: this.name ?? undefined });
        this.state = "closed";
      }
    }
  }

  /** One tunnel's life, and why it ended. */
  private async runOnce(): Promise<RunOutcome> {
    // Set before dialing: a reload or a drain may end this life at any point.
    const left = new Promise<"moved" | "draining">((resolve) => { this.leave = resolve; });
    try {
      return await this.connectAndServe(left);
    } finally {
      this.leave = null;
      if (this.refreshTimer) clearTimeout(this.refreshTimer);
      this.refreshTimer = null;
    }
  }

  private async connectAndServe(left: Promise<"moved" | "draining">): Promise<RunOutcome> {
    const id = this.owner.identity();
    const cfg = this.owner.cfg;
    const where = `${formatHostPort(this.target.hub)}|${this.target.serverName ?? ""}`;
    const r = this.resume;
    const offer = r && r.where === where && r.certPem === id.certPem && r.caPem === id.caPem ? r.ticket : undefined;
    const { socket, session } = await dialHub({
      hub: this.target.hub, serverName: this.target.serverName, tuning: cfg.tunnel,
      caPem: id.caPem, keyPem: id.keyPem, certPem: id.certPem, session: offer,
      onSession: (ticket) => { this.resume = { where, ticket, certPem: id.certPem, caPem: id.caPem, at: Date.now() }; },
    });
    if (this.stopping()) { session.destroy(); return "draining"; }
    this.session = session;
    // GoAway may come at any time, even before the welcome (a hub that began draining meanwhile).
    const goaway = new Promise<"goaway">((resolve) => session.once("goaway", () => resolve("goaway")));
    const leaving = Promise.race([left, goaway]);
    const closed = new Promise<void>((resolve) => session.once("close", () => resolve()));
    session.on("error", () => {});
    session.on("stream", (s: MuxStream) => this.owner.onVisitor(s));
    const control = session.open();
    control.on("error", () => {});
    this.control = control;
    const reader = new MessageReader<HubMessage>(control);
    control.write(encodeMessage({ type: "hello", protocol: TUNNEL_PROTOCOL_VERSION, software: "capsul/0.1.0", routes: this.owner.wireRoutes() }));
    const timer = setTimeout(() => session.destroy(new Error("the hub did not answer the hello in time")), cfg.tunnel.welcomeTimeoutMs);
    let first: HubMessage | null;
    try {
      first = await reader.next();
    } finally {
      clearTimeout(timer);
    }
    if (!first) throw new Error("the hub closed the control stream");
    if (first.type === "error") {
      this.resume = null; // the next attempt, if any, shows the hub our certificate afresh
      this.log.error(first.message, { code: first.code, hub: this.label });
      return "refused";
    }
    if (first.type !== "welcome") throw new Error(`unexpected first message from the hub: ${first.type}`);
    if (this.stopping()) return "draining";
    this.state = "connected";
    this.releases = first.domainsRelease === true;
    this.attempt = 0;
    this.log.info("connected to hub", {
      hub: this.label, endpoint: typeof first.endpoint === "string" ? first.endpoint : undefined,
      cog: first.cog, remote: socket.remoteAddress, routes: first.accepted.length, resumed: socket.isSessionReused(),
    });
    this.owner.welcomed(this, first, control);
    this.scheduleRefresh();
    for (;;) {
      const m = await Promise.race([reader.next().catch(() => null), leaving]);
      if (m === "goaway" || m === "moved" || m === "draining") return m;
      if (!m) break;
      await this.owner.message(this, m);
    }
    const end = await Promise.race([closed.then(() => "ended" as const), leaving]);
    return session.closed ? "ended" : end;
  }
}
