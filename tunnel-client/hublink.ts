/**
 * One tunnel of a cog to one hub endpoint, kept up by its own loop with its
 * own jittered exponential backoff: a dead endpoint retries slowly while the
 * others stay connected. The TunnelClient (./client.ts) owns the links, the
 * routes they announce and the visitors they carry; a link only dials, says
 * hello, waits for the welcome and hands every later message to its owner.
 */
import type { HostPort } from "../config/types.js";
import type { Logger } from "../lib/log.js";
import { formatHostPort } from "../lib/hostname.js";
import type { MuxSession, MuxStream } from "../protocol/mux.js";
import { encodeMessage, MessageReader } from "../protocol/messages.js";
import { TUNNEL_PROTOCOL_VERSION, type HubMessage, type WireRoute } from "../protocol/control.js";
import type { CogConfig } from "../config/types.js";
import { dialHub } from "./dial.js";
import type { CogIdentity } from "./identity.js";

/** Backoff jitter: each delay is scaled by a random factor in [1 - J, 1 + J]. */
export const RECONNECT_JITTER_RATIO = 0.25;

export type LinkState = "idle" | "connecting" | "connected" | "waiting" | "closed";

/** Where a link dials: an address, and the TLS server name to send (absent: derived from the host, as before endpoints). */
export interface LinkTarget { hub: HostPort; serverName?: string }

/** What a link needs from the client that owns it. */
export interface LinkOwner {
  readonly cfg: CogConfig;
  identity(): CogIdentity;
  wireRoutes(): WireRoute[];
  onVisitor(stream: MuxStream): void;
  /** The hub welcomed this link (`m` is the welcome); false: drop the link (it duplicates another). */
  welcomed(link: HubLink, m: HubMessage & { type: "welcome" }, control: MuxStream): void;
  /** Any later message on the control stream. */
  message(link: HubLink, m: HubMessage): Promise<void>;
  /** A connected link lost its tunnel. */
  lost(link: HubLink): void;
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
    this.session?.destroy();
    await this.loopDone;
  }

  /** Sends the current route set if this link is connected. */
  sendRoutes(routes: WireRoute[]): void {
    if (this.state === "connected" && this.control) this.control.write(encodeMessage({ type: "routes", routes }));
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

  private async loop(): Promise<void> {
    while (this.current() !== "closed") {
      this.state = "connecting";
      let fatal = false;
      try {
        fatal = await this.runOnce();
      } catch (err) {
        if (this.current() !== "closed") this.log.warn("tunnel to hub failed", { hub: this.label, endpoint: this.name ?? undefined, error: (err as Error).message });
      }
      this.session?.destroy();
      this.session = null;
      this.control = null;
      if (this.current() === "closed") break;
      const was = this.current();
      this.state = "waiting";
      if (was === "connected") this.owner.lost(this);
      if (fatal) this.attempt = 30; // refusals won't fix themselves quickly: retry at the slowest pace
      const delay = this.backoffMs();
      this.attempt++;
      this.log.info("reconnecting", { hub: this.label, endpoint: this.name ?? undefined, inMs: delay });
      await this.sleep(delay);
      if (this.current() !== "closed" && !this.owner.keepDialing(this)) {
        this.log.info("hub endpoint gone: no longer dialed", { hub: this.label, endpoint: this.name ?? undefined });
        this.state = "closed";
      }
    }
  }

  /** One tunnel's life. Returns true when the hub refused us (auth, version). */
  private async runOnce(): Promise<boolean> {
    const id = this.owner.identity();
    const cfg = this.owner.cfg;
    const { socket, session } = await dialHub({
      hub: this.target.hub, serverName: this.target.serverName, tuning: cfg.tunnel,
      caPem: id.caPem, keyPem: id.keyPem, certPem: id.certPem,
    });
    if (this.state === "closed") { session.destroy(); return false; }
    this.session = session;
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
      this.log.error(first.message, { code: first.code, hub: this.label });
      return true;
    }
    if (first.type !== "welcome") throw new Error(`unexpected first message from the hub: ${first.type}`);
    if (this.current() === "closed") return false;
    this.state = "connected";
    this.attempt = 0;
    this.log.info("connected to hub", {
      hub: this.label, endpoint: typeof first.endpoint === "string" ? first.endpoint : undefined,
      cog: first.cog, remote: socket.remoteAddress, routes: first.accepted.length,
    });
    this.owner.welcomed(this, first, control);
    for (;;) {
      const m = await reader.next().catch(() => null);
      if (!m) break;
      await this.owner.message(this, m);
    }
    await closed;
    return false;
  }
}
