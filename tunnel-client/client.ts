/**
 * The cog's tunnel client: keeps one mTLS + yamux tunnel to every hub
 * endpoint up (./hublink.ts, each with its own backoff; a dead hub is noticed
 * by the mux keepalive), announces routes (capsul.yaml's plus whatever the
 * provisioner publishes) on each, and splices every visitor stream any of
 * them opens to its local target, with a PROXY protocol header first when the
 * route asks for one. Refusals from a hub are logged with the hub's reason.
 *
 * Endpoints (issue 12): the configured hub address is the bootstrap. Its
 * welcome names the endpoint that answered and lists the live ones; the hub
 * pushes the list again when it changes. The client dials every listed
 * endpoint it has no link to, and stops dialing one the list has not named
 * for cog.reconnect.endpoint_gone_timeout. When no link is left it dials the
 * bootstrap address again. A hub without endpoints (an older one) never sends
 * a list: the bootstrap link is then the only one, as before.
 *
 * Leaving a session without dropping its streams ("retiring" it, ./hublink.ts):
 * when a hub sends GoAway (it is draining), when a reload moves the cog to
 * another hub address, and when the cog itself drains (SIGTERM). The retired
 * session keeps serving the visitor streams open on it, and those the hub
 * still opens on it, while the link dials a new tunnel at once.
 */
import { EventEmitter } from "node:events";
import type { Duplex } from "node:stream";
import type { CogConfig, CogRoute, HostPort } from "../config/types.js";
import type { Logger } from "../lib/log.js";
import type { MuxSession, MuxStream } from "../protocol/mux.js";
import { encodeMessage, MessageReader } from "../protocol/messages.js";
import { checkMoveOffer, type MoveOffer } from "../protocol/move.js";
import {
  checkVisitorHeader, checkWireDomainProofs, TUNNEL_PROTOCOL_VERSION,
  type AcceptedRoute, type HubMessage, type RefusedRoute, type VisitorHeader, type WireDomainProof, type WireRoute,
} from "../protocol/control.js";
import { certInfo, createKeyAndCsr, renewalDueAt } from "../certs/pki.js";
import { parseHostPort } from "../lib/hostname.js";
import { waitForClose } from "../lib/closewait.js";
import { checkWireEndpoints, type WireEndpoint } from "../protocol/control.js";
import { HubLink, type LinkOwner } from "./hublink.js";
import { readReleases, saveDomainReport, settleReleases } from "./domains.js";
import { saveKeyAndCert, type CogIdentity } from "./identity.js";
import type { PublishedRoute, RouteSink, RouteStatus } from "./routesink.js";
import { connectTarget, type Target, type TargetOptions } from "./target.js";
import { httpSideName } from "./terminate.js";

/** Deadline for the hub's welcome after the hello: the default of cog.tunnel.welcome_timeout. */
export const WELCOME_TIMEOUT_MS = 15_000;
/** Deadline for the visitor header on a new stream: the default of cog.tunnel.visitor_header_timeout. */
export const VISITOR_HEADER_TIMEOUT_MS = 10_000;
/** The visitor header is small; anything bigger is a protocol error. The default of cog.tunnel.visitor_header_max_bytes. */
export const VISITOR_HEADER_MAX_BYTES = 4096;
export { RECONNECT_JITTER_RATIO } from "./hublink.js";

export type ClientState = "idle" | "connecting" | "connected" | "waiting" | "draining" | "closed";

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

/**
 * Events: "connected" (welcome), "disconnected", "routes" ({accepted, refused}), and
 * "visitor" (route name, target socket) once per visitor stream spliced to its target.
 */
export class TunnelClient extends EventEmitter implements RouteSink, LinkOwner {
  /** "connected" while at least one link is; else the bootstrap link's state. */
  state: ClientState = "idle";
  /** One per hub endpoint (and a bootstrap link until its welcome names its endpoint). */
  readonly links = new Set<HubLink>();
  private readonly published = new Map<string, PublishedRoute[]>();
  private readonly statuses = new Map<string, RouteStatus>();
  private targets = new Map<string, RouteTarget>();
  private targetOpts: TargetOptions;
  /** The last state the hub reported for each custom domain, so that only changes are logged. */
  private readonly domainStates = new Map<string, string>();
  /** Sessions left on purpose that still carry visitor streams (see the top of this file). */
  private readonly retired = new Set<MuxSession>();
  private updateQueued = false;
  private started = false;
  private readonly streams = new Set<MuxStream>();
  private identityNow: CogIdentity;
  /** The link a renewal was asked on, until it is answered or that link drops: the other links do not ask too. */
  private renewing: HubLink | null = null;
  /** Takes the VM moves the hub offers (provisioner/move.ts); null: offers are refused. */
  private moveHandler: ((stream: Duplex, offer: MoveOffer, rest: Buffer) => void) | null = null;

  constructor(
    // The cog's live configuration (tunnel-client/cog.ts): routes() and each dial read it; reconfigure() after a reload.
    readonly cfg: CogConfig,
    identity: CogIdentity,
    private hub: HostPort,
    private readonly log: Logger,
    private readonly dataDir: string = cfg.dataDir,
    private readonly terminator: TerminatingHandler | null = null,
  ) {
    super();
    this.identityNow = identity;
    this.targetOpts = {
      dialTimeoutMs: cfg.targetDialTimeoutMs, spliceQueueBytes: cfg.spliceQueueBytes, log,
      onSpliced: (route, target) => this.emit("visitor", route, target),
    };
    this.rebuildTargets();
  }

  /**
   * A stream to a hub for a VM move (protocol/move.ts), on the first connected link (with
   * several endpoints every cog has a tunnel to each hub, so any of them reaches the
   * target); throws when no tunnel is up.
   */
  openMoveStream(): Duplex {
    const session = [...this.links].find((l) => l.state === "connected" && l.session && !l.session.closed)?.session;
    if (!session) throw new Error("the cog is not connected to the hub");
    const s = session.open();
    this.streams.add(s);
    s.once("close", () => this.streams.delete(s));
    return s;
  }

  setMoveHandler(h: ((stream: Duplex, offer: MoveOffer, rest: Buffer) => void) | null): void { this.moveHandler = h; }

  start(): void {
    if (this.started) return;
    this.started = true;
    this.state = "connecting";
    this.addLink({ hub: this.hub }, null);
  }

  async close(): Promise<void> {
    this.state = "closed";
    for (const s of this.streams) s.destroy();
    const stopping = [...this.links].map((l) => l.stop());
    for (const s of this.retired) s.destroy();
    await Promise.all(stopping);
    this.links.clear();
  }

  /**
   * Stops for good, gently: every tunnel is retired (GoAway: the hubs send no new visitors
   * and hold them for their grace period instead) and none is dialed; the visitor streams
   * open now may finish for up to `graceMs`, or until `cutNow` aborts. close() afterwards
   * cuts what is left.
   */
  async drain(graceMs: number, cutNow?: AbortSignal): Promise<ClientDrainReport> {
    const open = [...this.streams];
    if (this.state !== "closed") this.state = "draining";
    for (const l of this.links) l.drain();
    const left = await waitForClose(open, graceMs, cutNow);
    return { live: open.length, finished: open.length - left, cut: left };
  }

  /** The bootstrap hub address (capsul.yaml's cog.hub, or the enrollment's). */
  get hubAddress(): HostPort { return this.hub; }

  /**
   * A reload moved the cog to another hub address: the links dialed from the bootstrap
   * address retire their tunnels (their streams finish on them) and dial the new one at
   * once; links made from an endpoint list keep following the list.
   */
  setHub(hub: HostPort): void {
    this.hub = hub;
    for (const l of this.links) if (!l.fromList) l.move({ hub });
  }

  /** After a reload: announce the route set again (capsul.yaml's routes changed) and rebuild the dial settings. */
  reconfigure(routesChanged: boolean): void {
    this.targetOpts = {
      dialTimeoutMs: this.cfg.targetDialTimeoutMs, spliceQueueBytes: this.cfg.spliceQueueBytes, log: this.log,
      onSpliced: (route, target) => this.emit("visitor", route, target),
    };
    if (routesChanged) this.routesChanged();
  }

  /** Visitor streams open now, on live tunnels and on retired ones (status, tests). */
  get streamCount(): number { return this.streams.size; }

  get connected(): boolean { return this.state === "connected"; }

  /** The endpoints this cog has a live tunnel to, by name ("" for a link whose hub names none). */
  connectedEndpoints(): string[] {
    return [...this.links].filter((l) => l.state === "connected").map((l) => l.name ?? "").sort();
  }

  identity(): CogIdentity { return this.identityNow; }

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

  wireRoutes(): WireRoute[] {
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
    // Batch the publishes of one tick into one update, sent on every connected link.
    setImmediate(() => {
      this.updateQueued = false;
      if (this.state === "closed" || this.state === "draining") return;
      const routes = this.wireRoutes();
      for (const l of this.links) l.sendRoutes(routes);
      // A name given up with this withdrawal (a VM's domain removed: the provisioner forgets
      // it before it publishes the routes without it) is released after them: the hub keeps
      // a claim a route it still has needs.
      this.sendReleases();
    });
  }

  private applyResult(accepted: AcceptedRoute[], refused: RefusedRoute[]): void {
    for (const a of accepted) this.statuses.set(a.name, { state: "accepted", port: a.port });
    for (const r of refused) {
      this.statuses.set(r.name, typeof r.code === "string" ? { state: "refused", reason: r.reason, code: r.code } : { state: "refused", reason: r.reason });
      this.log.warn("hub refused route", { route: r.name, reason: r.reason });
    }
    this.emit("routes", { accepted, refused });
  }

  // ---- links ----

  private addLink(target: HubLink["target"], name: string | null): HubLink {
    const link = new HubLink(this, target, name, this.log);
    this.links.add(link);
    link.start();
    return link;
  }

  private async removeLink(link: HubLink): Promise<void> {
    this.links.delete(link);
    await link.stop();
    this.updateState();
  }

  /** Some link was connected at the last look: "disconnected" is said once when none is. */
  private anyConnected = false;

  private updateState(): void {
    const now = [...this.links].some((l) => l.state === "connected");
    const was = this.anyConnected;
    this.anyConnected = now;
    if (this.state === "closed") return;
    if (this.state !== "draining") this.state = now ? "connected" : "waiting";
    if (was && !now) this.emit("disconnected");
    // Every endpoint link stopped (all gone from the lists): start over from the configured address.
    if (this.links.size === 0 && this.state !== "draining") this.addLink({ hub: this.hub }, null);
  }

  welcomed(link: HubLink, m: HubMessage & { type: "welcome" }, control: MuxStream): void {
    if (typeof m.endpoint === "string" && m.endpoint !== "") {
      // A bootstrap address (round-robin DNS) may land on an endpoint another link already
      // holds: the hub replaced that link's tunnel with this one, so that link goes.
      for (const other of this.links) {
        if (other !== link && other.name === m.endpoint) void this.removeLink(other);
      }
      link.name = m.endpoint;
      link.goneSince = null;
    }
    if (this.state !== "draining" && this.state !== "closed") this.state = "connected";
    this.anyConnected = true;
    this.applyResult(m.accepted, m.refused);
    if (m.endpoints !== undefined) this.onEndpoints(m.endpoints);
    this.emit("connected", m);
    void this.maybeRenew(link, control);
    this.releaseDomains(); // names given up while no tunnel was up
  }

  /**
   * Sends the names marked for release (tunnel-client/domains.ts forgetDomain) to every
   * connected hub that takes them; they stay marked until a hub's report no longer lists
   * them, so a cog offline now sends them after its next welcome. Deferred a tick, and
   * sent again after each route update: the hub keeps a claim a route it still has needs,
   * so a withdrawal must reach it first. Never throws.
   */
  releaseDomains(): void {
    setImmediate(() => this.sendReleases());
  }

  private sendReleases(): void {
    if (this.state === "closed") return;
    let names: string[];
    try {
      names = readReleases(this.dataDir);
    } catch (err) {
      this.log.warn("cannot read the custom domains to release", { error: (err as Error).message });
      return;
    }
    if (names.length === 0) return;
    for (const l of this.links) l.sendRelease(names);
  }

  async message(_link: HubLink, m: HubMessage): Promise<void> {
    if (m.type === "routes-result") this.applyResult(m.accepted, m.refused);
    else if (m.type === "renewed") await this.onRenewed(m.cert);
    else if (m.type === "endpoints") this.onEndpoints(m.endpoints);
    else if (m.type === "domains") await this.onDomains(m.proofs);
    else if (m.type === "announce") this.routesChanged();
    else if (m.type === "error") {
      if (m.code === "renew") this.renewing = null;
      this.log.error(m.message, { code: m.code });
    }
  }

  retire(link: HubLink, session: MuxSession, control: MuxStream | null, why: "goaway" | "moved" | "draining"): void {
    if (session.closed) return;
    this.retired.add(session);
    session.once("close", () => this.retired.delete(session));
    control?.end();
    if (why !== "goaway") session.close();
    const message = why === "goaway" ? "the hub is going away (GoAway): dialing a new tunnel; open streams stay on the old one"
      : why === "moved" ? "hub address changed: dialing the new one; open streams stay on the old tunnel"
        : "draining: no new visitors; open streams may finish";
    this.log.info(message, { hub: link.label, endpoint: link.name ?? undefined, streams: this.streams.size });
  }

  lost(link: HubLink): void {
    if (this.renewing === link) {
      this.renewing = null;
      this.pendingKeyPem = null;
    }
    this.updateState();
  }

  keepDialing(link: HubLink): boolean {
    if (this.state === "closed" || this.state === "draining") return false;
    const gone = link.goneSince !== null && Date.now() - link.goneSince >= this.cfg.reconnect.endpointGoneTimeoutMs;
    if (gone) {
      this.links.delete(link);
      setImmediate(() => this.updateState());
    }
    return !gone;
  }

  /** The hub's list of live endpoints: dial the new ones, mark the unlisted ones gone (they stop after the timeout). */
  private onEndpoints(raw: unknown): void {
    let list: WireEndpoint[];
    try {
      list = checkWireEndpoints(raw);
    } catch (err) {
      this.log.warn("bad endpoint list from the hub", { error: (err as Error).message });
      return;
    }
    const now = Date.now();
    const listed = new Set(list.map((e) => e.name));
    for (const l of this.links) {
      if (l.name !== null && !listed.has(l.name)) l.goneSince ??= now;
    }
    for (const e of list) {
      let hub: HostPort;
      try {
        hub = parseHostPort(e.address);
      } catch {
        continue;
      }
      const target = { hub, serverName: e.serverName || undefined };
      const have = [...this.links].find((l) => l.name === e.name);
      if (have) {
        have.goneSince = null;
        // A link made from a list follows the endpoint's address (a hub restarted elsewhere) from
        // its next dial; one made from the bootstrap address keeps the address that reached it.
        if (have.fromList) have.target = target;
        continue;
      }
      this.log.info("new hub endpoint: dialing it", { endpoint: e.name, hub: e.address });
      this.addLink(target, e.name).fromList = true;
    }
  }

  private pendingKeyPem: string | null = null;

  /** Asks for a renewal on this link when one is due and no other link has asked already. */
  private async maybeRenew(link: HubLink, control: MuxStream): Promise<void> {
    if (this.renewing) return;
    try {
      const info = certInfo(this.identityNow.certPem);
      if (Date.now() < renewalDueAt(info.notBefore, info.notAfter)) return;
      this.renewing = link;
      const { keyPem, csrPem } = await createKeyAndCsr(this.identityNow.name);
      if (this.renewing !== link) return; // that link went down meanwhile
      this.pendingKeyPem = keyPem;
      control.write(encodeMessage({ type: "renew", csr: csrPem }));
      this.log.info("asking the hub to renew this cog's certificate", { notAfter: info.notAfter.toISOString() });
    } catch (err) {
      this.renewing = null;
      this.log.warn("certificate renewal failed", { error: (err as Error).message });
    }
  }

  private async onRenewed(certPem: string): Promise<void> {
    this.renewing = null;
    if (!this.pendingKeyPem) return;
    await saveKeyAndCert(this.dataDir, this.pendingKeyPem, certPem);
    // Links dialing from now on present the new certificate; the live tunnels keep theirs.
    this.identityNow = { ...this.identityNow, keyPem: this.pendingKeyPem, certPem };
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
      await settleReleases(this.dataDir, proofs);
    } catch (err) {
      this.log.warn("could not save the hub's custom-domain report", { error: (err as Error).message });
    }
    this.emit("domains", proofs);
  }

  onVisitor(stream: MuxStream): void {
    this.streams.add(stream);
    stream.once("close", () => this.streams.delete(stream));
    stream.on("error", () => {});
    const reader = new MessageReader(stream, this.cfg.tunnel.visitorHeaderMaxBytes);
    const timer = setTimeout(() => stream.destroy(), this.cfg.tunnel.visitorHeaderTimeoutMs);
    reader.next().then((msg) => {
      clearTimeout(timer);
      const rest = reader.detach();
      if (!msg) { stream.destroy(); return; }
      if (msg.type === "move-offer") {
        const offer = checkMoveOffer(msg);
        if (this.moveHandler) { this.moveHandler(stream, offer, rest); return; }
        stream.end(encodeMessage({ type: "move-refuse", reason: `cog ${this.identityNow.name} runs no provisioner` }));
        return;
      }
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
