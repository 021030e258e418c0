/**
 * The cog's tunnel client: keeps one mTLS + yamux tunnel to the hub up,
 * announces routes (capsul.yaml's plus whatever the provisioner publishes),
 * and splices every visitor stream the hub opens to its local target, with a
 * PROXY protocol header first when the route asks for one.
 *
 * Reconnects with jittered exponential backoff; a dead hub is noticed by the
 * mux keepalive. Refusals from the hub are logged with the hub's reason.
 *
 * Leaving a session without dropping its streams ("retiring" it): when the hub
 * sends GoAway (it is draining), when a reload moves the cog to another hub
 * address, and when the cog itself drains (SIGTERM). The retired session keeps
 * serving the visitor streams open on it, and those the hub still opens on it,
 * while the client dials a new tunnel at once (not after draining).
 */
import { EventEmitter } from "node:events";
import type { Duplex } from "node:stream";
import type { CogConfig, CogRoute, HostPort } from "../config/types.js";
import type { Logger } from "../lib/log.js";
import type { MuxSession, MuxStream } from "../protocol/mux.js";
import { encodeMessage, MessageReader } from "../protocol/messages.js";
import {
  checkVisitorHeader, checkWireDomainProofs, TUNNEL_PROTOCOL_VERSION,
  type AcceptedRoute, type HubMessage, type RefusedRoute, type VisitorHeader, type WireDomainProof, type WireRoute,
} from "../protocol/control.js";
import { certInfo, createKeyAndCsr, renewalDueAt } from "../certs/pki.js";
import { waitForClose } from "../lib/closewait.js";
import { dialHub } from "./dial.js";
import { saveKeyAndCert, type CogIdentity } from "./identity.js";
import type { PublishedRoute, RouteSink, RouteStatus } from "./routesink.js";
import { connectTarget, type Target, type TargetOptions } from "./target.js";
import { httpSideName } from "./terminate.js";
import { saveDomainReport } from "./domains.js";

/** Deadline for the hub's welcome after the hello: the default of cog.tunnel.welcome_timeout. */
export const WELCOME_TIMEOUT_MS = 15_000;
/** Deadline for the visitor header on a new stream: the default of cog.tunnel.visitor_header_timeout. */
export const VISITOR_HEADER_TIMEOUT_MS = 10_000;
/** The visitor header is small; anything bigger is a protocol error. The default of cog.tunnel.visitor_header_max_bytes. */
export const VISITOR_HEADER_MAX_BYTES = 4096;
/** Backoff jitter: each delay is scaled by a random factor in [1 - J, 1 + J]. */
export const RECONNECT_JITTER_RATIO = 0.25;

export type ClientState = "idle" | "connecting" | "connected" | "waiting" | "draining" | "closed";

/** Why one tunnel's life ended: refused by the hub, ended, or left on purpose (then retired, not destroyed). */
type RunOutcome = "refused" | "ended" | "goaway" | "moved" | "draining";

export interface ClientDrainReport {
  /** Visitor streams open when the drain began. */
  live: number;
  /** Of those, how many ended by themselves within the grace period. */
  finished: number;
  /** How many were still open at its end (close() cuts them). */
  cut: number;
}

/** Serves the routes that say `tls: terminate` (tunnel-client/terminate.ts): their TLS side and their plain-HTTP side. */
export interface TerminatingHandler {
  tls(stream: Duplex, h: VisitorHeader, first: Buffer, route: CogRoute): void;
  http(stream: Duplex, h: VisitorHeader, first: Buffer, route: CogRoute): void;
}

/** Where a route's visitors go; `terminated` routes go to the TerminatingHandler instead of straight to the target. */
interface RouteTarget extends Target { terminated?: { side: "tls" | "http"; route: CogRoute } }

export class TunnelClient extends EventEmitter implements RouteSink {
  state: ClientState = "idle";
  private session: MuxSession | null = null;
  private control: MuxStream | null = null;
  private readonly published = new Map<string, PublishedRoute[]>();
  private readonly statuses = new Map<string, RouteStatus>();
  private targets = new Map<string, RouteTarget>();
  private targetOpts: TargetOptions;
  private attempt = 0;
  private wakeup: (() => void) | null = null;
  private updateQueued = false;
  private loopDone: Promise<void> | null = null;
  private readonly streams = new Set<MuxStream>();
  private identity: CogIdentity;
  /** The last state the hub reported for each custom domain, so that only changes are logged. */
  private readonly domainStates = new Map<string, string>();
  /** Ends the current tunnel's life on purpose (see RunOutcome); set while runOnce() runs. */
  private leave: ((why: "moved" | "draining") => void) | null = null;
  /** Sessions left on purpose that still carry visitor streams (see the top of this file). */
  private readonly retired = new Set<MuxSession>();

  constructor(
    // The cog's live configuration (tunnel-client/cog.ts): routes() and each dial read it; reconfigure() after a reload.
    private readonly cfg: CogConfig,
    identity: CogIdentity,
    private hub: HostPort,
    private readonly log: Logger,
    private readonly dataDir: string = cfg.dataDir,
    private readonly terminator: TerminatingHandler | null = null,
  ) {
    super();
    this.identity = identity;
    this.targetOpts = { dialTimeoutMs: cfg.targetDialTimeoutMs, spliceQueueBytes: cfg.spliceQueueBytes, log };
    this.rebuildTargets();
  }

  start(): void {
    if (this.loopDone) return;
    this.loopDone = this.loop();
  }

  async close(): Promise<void> {
    this.state = "closed";
    this.wakeup?.();
    this.leave?.("draining");
    for (const s of this.streams) s.destroy();
    this.session?.destroy();
    for (const s of this.retired) s.destroy();
    await this.loopDone;
  }

  /**
   * Stops for good, gently: the tunnel is retired (GoAway: the hub sends no new visitors
   * and holds them for its grace period instead) and no other is dialed; the visitor
   * streams open now may finish for up to `graceMs`, or until `cutNow` aborts. close()
   * afterwards cuts what is left.
   */
  async drain(graceMs: number, cutNow?: AbortSignal): Promise<ClientDrainReport> {
    const open = [...this.streams];
    if (this.state !== "closed") this.state = "draining";
    this.wakeup?.();
    this.leave?.("draining");
    const left = await waitForClose(open, graceMs, cutNow);
    return { live: open.length, finished: open.length - left, cut: left };
  }

  /** The hub address dialed (capsul.yaml's cog.hub, or the enrollment's). */
  get hubAddress(): HostPort { return this.hub; }

  /**
   * A reload moved the cog to another hub address: the current tunnel is retired (its
   * streams finish on it) and the new address is dialed at once.
   */
  setHub(hub: HostPort): void {
    this.hub = hub;
    this.attempt = 0;
    this.leave?.("moved");
    this.wakeup?.();
  }

  /** After a reload: announce the route set again (capsul.yaml's routes changed) and rebuild the dial settings. */
  reconfigure(routesChanged: boolean): void {
    this.targetOpts = { dialTimeoutMs: this.cfg.targetDialTimeoutMs, spliceQueueBytes: this.cfg.spliceQueueBytes, log: this.log };
    if (routesChanged) this.routesChanged();
  }

  /** Visitor streams open now, on the current tunnel and on retired ones (status, tests). */
  get streamCount(): number { return this.streams.size; }

  /** The current session, for tests and status. */
  get connected(): boolean { return this.state === "connected"; }

  // ---- RouteSink ----

  publish(owner: string, routes: PublishedRoute[]): void {
    this.published.set(owner, routes);
    for (const r of routes) if (!this.statuses.has(r.name)) this.statuses.set(r.name, { state: "pending" });
    this.routesChanged();
  }

  withdraw(owner: string): void {
    const had = this.published.get(owner);
    if (!had) return;
    this.published.delete(owner);
    for (const r of had) this.statuses.delete(r.name);
    this.routesChanged();
  }

  status(routeName: string): RouteStatus {
    return this.statuses.get(routeName) ?? { state: "pending" };
  }

  // ---- internals ----

  /**
   * Every route this cog serves: capsul.yaml's, then the published ones. An http
   * route for a hostname that a `tls: terminate` route holds is left out: that
   * route's own plain-HTTP side serves the name (capsul.yaml refuses such a pair;
   * a publisher may not know).
   */
  routes(): PublishedRoute[] {
    const out: PublishedRoute[] = this.cfg.routes.map((r) => ({ ...r }));
    for (const list of this.published.values()) out.push(...list);
    const terminated = new Set(out.filter((r) => r.terminate).map((r) => r.hostname));
    return terminated.size ? out.filter((r) => r.kind !== "http" || !terminated.has(r.hostname)) : out;
  }

  private wireRoutes(): WireRoute[] {
    const out: WireRoute[] = [];
    for (const r of this.routes()) {
      const w: WireRoute = { name: r.name, kind: r.kind };
      if (r.hostname !== undefined) w.hostname = r.hostname;
      if (r.port !== undefined) w.port = r.port;
      out.push(w);
      if (r.terminate) out.push({ name: httpSideName(r.name), kind: "http", hostname: r.hostname });
    }
    return out;
  }

  private rebuildTargets(): void {
    const m = new Map<string, RouteTarget>();
    for (const r of this.routes()) {
      if (r.terminate) {
        m.set(r.name, { target: r.target, proxyProtocol: r.proxyProtocol, terminated: { side: "tls", route: r } });
        m.set(httpSideName(r.name), { target: r.target, proxyProtocol: r.proxyProtocol, terminated: { side: "http", route: r } });
      } else {
        m.set(r.name, { target: r.target, proxyProtocol: r.proxyProtocol });
      }
    }
    this.targets = m;
  }

  private routesChanged(): void {
    this.rebuildTargets();
    if (this.updateQueued) return;
    this.updateQueued = true;
    // Batch the publishes of one tick into one update.
    setImmediate(() => {
      this.updateQueued = false;
      if (this.state === "connected" && this.control) {
        this.control.write(encodeMessage({ type: "routes", routes: this.wireRoutes() }));
      }
    });
  }

  private applyResult(accepted: AcceptedRoute[], refused: RefusedRoute[]): void {
    for (const a of accepted) this.statuses.set(a.name, { state: "accepted", port: a.port });
    for (const r of refused) {
      this.statuses.set(r.name, { state: "refused", reason: r.reason });
      this.log.warn("hub refused route", { route: r.name, reason: r.reason });
    }
    this.emit("routes", { accepted, refused });
  }

  private backoffMs(): number {
    const { minDelayMs, maxDelayMs } = this.cfg.reconnect;
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
  private current(): ClientState { return this.state; }

  /** Draining or closed: no tunnel is dialed any more. */
  private stopping(): boolean {
    const s = this.current();
    return s === "closed" || s === "draining";
  }

  private async loop(): Promise<void> {
    while (!this.stopping()) {
      this.state = "connecting";
      let outcome: RunOutcome = "ended";
      try {
        outcome = await this.runOnce();
      } catch (err) {
        if (!this.stopping()) this.log.warn("tunnel to hub failed", { hub: `${this.hub.host}:${this.hub.port}`, error: (err as Error).message });
      }
      const wasConnected = this.current() === "connected";
      if (this.session && (outcome === "goaway" || outcome === "moved" || outcome === "draining")) this.retire(this.session, outcome);
      else this.session?.destroy();
      this.session = null;
      this.control = null;
      if (this.current() === "closed") break;
      if (wasConnected) this.emit("disconnected");
      if (this.stopping()) break;
      if (outcome === "goaway" || outcome === "moved") {
        // Dial the (next) hub now: a draining hub is on its way out, a moved cog has somewhere to go.
        this.attempt = 0;
        continue;
      }
      this.state = "waiting";
      if (outcome === "refused") this.attempt = 30; // refusals won't fix themselves quickly: retry at the slowest pace
      const delay = this.backoffMs();
      this.attempt++;
      this.log.info("reconnecting", { inMs: delay });
      await this.sleep(delay);
    }
  }

  /**
   * Leaves a session without cutting its visitor streams. Our end of its control stream
   * ends (the hub ends its own in turn). Told GoAway by a draining hub, the session keeps
   * taking the streams that hub still opens for visitors it accepted before draining; it
   * ends when the hub closes it. Left by us (moved, draining), it is closed: GoAway to the
   * hub, no new streams, and it ends once the open ones have.
   */
  private retire(session: MuxSession, why: "goaway" | "moved" | "draining"): void {
    if (session.closed) return;
    this.retired.add(session);
    session.once("close", () => this.retired.delete(session));
    this.control?.end();
    if (why !== "goaway") session.close();
    const message = why === "goaway" ? "the hub is going away (GoAway): dialing a new tunnel; open streams stay on the old one"
      : why === "moved" ? "hub address changed: dialing the new one; open streams stay on the old tunnel"
        : "draining: no new visitors; open streams may finish";
    this.log.info(message, { hub: `${this.hub.host}:${this.hub.port}`, streams: this.streams.size });
  }

  /** One tunnel's life, and why it ended. */
  private async runOnce(): Promise<RunOutcome> {
    // Set before dialing: a reload or a drain may end this life at any point.
    const left = new Promise<"moved" | "draining" | "goaway">((resolve) => { this.leave = resolve; });
    try {
      return await this.connectAndServe(left);
    } finally {
      this.leave = null;
    }
  }

  private async connectAndServe(left: Promise<"moved" | "draining" | "goaway">): Promise<RunOutcome> {
    const { socket, session } = await dialHub({
      hub: this.hub, tuning: this.cfg.tunnel,
      caPem: this.identity.caPem, keyPem: this.identity.keyPem, certPem: this.identity.certPem,
    });
    if (this.stopping()) { session.destroy(); return "draining"; }
    this.session = session;
    // GoAway may come at any time, even before the welcome (a hub that began draining meanwhile).
    const goaway = new Promise<"goaway">((resolve) => session.once("goaway", () => resolve("goaway")));
    const leaving = Promise.race([left, goaway]);
    const closed = new Promise<void>((resolve) => session.once("close", () => resolve()));
    session.on("error", () => {});
    session.on("stream", (s: MuxStream) => this.onVisitor(s));
    const control = session.open();
    control.on("error", () => {});
    this.control = control;
    const reader = new MessageReader<HubMessage>(control);
    control.write(encodeMessage({ type: "hello", protocol: TUNNEL_PROTOCOL_VERSION, software: "capsul/0.1.0", routes: this.wireRoutes() }));
    const timer = setTimeout(() => session.destroy(new Error("the hub did not answer the hello in time")), this.cfg.tunnel.welcomeTimeoutMs);
    let first: HubMessage | null;
    try {
      first = await reader.next();
    } finally {
      clearTimeout(timer);
    }
    if (!first) throw new Error("the hub closed the control stream");
    if (first.type === "error") {
      this.log.error(first.message, { code: first.code });
      return "refused";
    }
    if (first.type !== "welcome") throw new Error(`unexpected first message from the hub: ${first.type}`);
    if (this.stopping()) return "draining";
    this.state = "connected";
    this.attempt = 0;
    this.log.info("connected to hub", { hub: `${this.hub.host}:${this.hub.port}`, cog: first.cog, remote: socket.remoteAddress, routes: first.accepted.length });
    this.applyResult(first.accepted, first.refused);
    this.emit("connected", first);
    void this.maybeRenew(control);
    for (;;) {
      const m = await Promise.race([reader.next().catch(() => null), leaving]);
      if (m === "goaway" || m === "moved" || m === "draining") return m;
      if (!m) break;
      if (m.type === "routes-result") this.applyResult(m.accepted, m.refused);
      else if (m.type === "renewed") await this.onRenewed(m.cert);
      else if (m.type === "domains") await this.onDomains(m.proofs);
      else if (m.type === "error") this.log.error(m.message, { code: m.code });
    }
    const end = await Promise.race([closed.then(() => "ended" as const), leaving]);
    return session.closed ? "ended" : end;
  }

  private pendingKeyPem: string | null = null;

  private async maybeRenew(control: MuxStream): Promise<void> {
    try {
      const info = certInfo(this.identity.certPem);
      if (Date.now() < renewalDueAt(info.notBefore, info.notAfter)) return;
      const { keyPem, csrPem } = await createKeyAndCsr(this.identity.name);
      this.pendingKeyPem = keyPem;
      control.write(encodeMessage({ type: "renew", csr: csrPem }));
      this.log.info("asking the hub to renew this cog's certificate", { notAfter: info.notAfter.toISOString() });
    } catch (err) {
      this.log.warn("certificate renewal failed", { error: (err as Error).message });
    }
  }

  private async onRenewed(certPem: string): Promise<void> {
    if (!this.pendingKeyPem) return;
    await saveKeyAndCert(this.dataDir, this.pendingKeyPem, certPem);
    this.identity = { ...this.identity, keyPem: this.pendingKeyPem, certPem };
    this.pendingKeyPem = null;
    this.log.info("certificate renewed", { notAfter: certInfo(certPem).notAfter.toISOString() });
  }

  /** The hub's report on this cog's custom-domain claims: kept for `capsul cog domains`, logged when it changes. */
  private async onDomains(raw: unknown): Promise<void> {
    let proofs: WireDomainProof[];
    try {
      proofs = checkWireDomainProofs(raw);
    } catch (err) {
      // Only a report: a malformed one (a hub of another release) is not worth the tunnel.
      this.log.warn("ignoring a malformed custom-domain report from the hub", { error: (err as Error).message });
      return;
    }
    for (const p of proofs) {
      const was = this.domainStates.get(p.hostname);
      if (was === p.state) continue;
      this.domainStates.set(p.hostname, p.state);
      if (p.state === "verified") this.log.info("custom domain proven by DNS", { hostname: p.hostname });
      else this.log.warn(`custom domain ${p.hostname} is ${p.state === "lost" ? "no longer" : "not yet"} proven: create the DNS record ${p.record}. TXT "${p.value}"`, { hostname: p.hostname });
    }
    try {
      await saveDomainReport(this.dataDir, proofs);
    } catch (err) {
      this.log.warn("could not save the hub's custom-domain report", { error: (err as Error).message });
    }
    this.emit("domains", proofs);
  }

  private onVisitor(stream: MuxStream): void {
    this.streams.add(stream);
    stream.once("close", () => this.streams.delete(stream));
    stream.on("error", () => {});
    const reader = new MessageReader(stream, this.cfg.tunnel.visitorHeaderMaxBytes);
    const timer = setTimeout(() => stream.destroy(), this.cfg.tunnel.visitorHeaderTimeoutMs);
    reader.next().then((msg) => {
      clearTimeout(timer);
      const rest = reader.detach();
      if (!msg) { stream.destroy(); return; }
      const h = checkVisitorHeader(msg);
      const t = this.targets.get(h.route);
      if (!t) {
        this.log.warn("visitor for an unknown route", { route: h.route });
        stream.destroy();
        return;
      }
      if (t.terminated) {
        if (!this.terminator) { stream.destroy(); return; }
        if (t.terminated.side === "tls") this.terminator.tls(stream, h, rest, t.terminated.route);
        else this.terminator.http(stream, h, rest, t.terminated.route);
        return;
      }
      connectTarget(stream, t, h, rest, this.targetOpts);
    }).catch((err: Error) => {
      clearTimeout(timer);
      this.log.warn("bad visitor stream", { error: err.message });
      stream.destroy();
    });
  }
}
