/**
 * The registry of live tunnels and the tunnel server: one mTLS connection per
 * cog, yamux on top, the first stream the cog opens is the control stream.
 * Unauthenticated connections may only enroll, under the caps of admission.ts
 * and a deadline for their first control message. A reconnecting cog replaces
 * its own stale session; while a cog is away its routes are held for the
 * grace period so visitors can wait for it instead of being refused.
 */
import { EventEmitter } from "node:events";
import net from "node:net";
import tls from "node:tls";
import type { HostPort, HubConfig } from "../config/types.js";
import { MoveCarrier } from "./carry.js";
import type { DomainProofs } from "./domains.js";
import { MoveRelay } from "./moves.js";
import type { Logger } from "../lib/log.js";
import { ProtocolError } from "../lib/errors.js";
import { MUX_INITIAL_WINDOW_BYTES, MuxSession, type MuxStream } from "../protocol/mux.js";
import { encodeMessage, MESSAGE_MAX_BYTES, MessageReader } from "../protocol/messages.js";
import {
  checkWireRoutes, TUNNEL_PROTOCOL_VERSION, versionMismatchMessage,
  type CogMessage, type ErrorCode, type HubMessage,
} from "../protocol/control.js";
import type { HubPki } from "../certs/pki.js";
import { Listener, type ListenerChange } from "./listeners.js";
import { peerAuthResult } from "../certs/pki.js";
import { KeyedQueue } from "../lib/keyedqueue.js";
import type { HubStore, RevocationWatch } from "./store/types.js";
import type { RouteTable } from "./routes.js";
import { ThrottledLog, TunnelAdmission, sourceKey, type AdmissionTicket } from "./admission.js";
import { ControlChannel, newControlStats, type ControlContext, type ControlStats } from "./control.js";
import { Issuance, normSerial, type PresentedCert } from "./issuance.js";
import { EndpointRegistry } from "./endpoints.js";
import { TicketKeys, tunnelSessionIdContext } from "./ticketkeys.js";
import type { StoredRoute } from "./store/types.js";

/**
 * How long an unauthenticated or silent connection may take to send its first
 * complete control message: the default of hub.tunnel.control_hello_timeout.
 */
export const CONTROL_HELLO_TIMEOUT_MS = 10_000;
/**
 * How often the hub checks SQLite for revocations written by `capsul hub
 * revoke` (on PostgreSQL: retries a lost notification connection): the
 * default of hub.tunnel.revocation_poll_interval.
 */
export const REVOCATION_POLL_MS = 500;
/**
 * The hub takes the control stream straight from the session's "stream" event, and, once
 * the hello is accepted, every later stream as a VM move (moves.ts: a header within
 * hub.tunnel.move_answer_timeout, at most hub.tunnel.max_moves per cog); a stream that
 * found no taker would only wait in the backlog,
 * holding up to max_stream_window of our memory. 0: every such stream is refused (RST) at
 * once. Not a config key on purpose: any other value only lets a peer park memory.
 */
export const HUB_ACCEPT_BACKLOG = 0;
/**
 * Default listen backlog of the tunnel port (hub.tunnel.listen_backlog): hundreds of cogs
 * redial together after a hub restart, and Node's default of 511 drops SYNs past it.
 */
export const TUNNEL_LISTEN_BACKLOG = 1024;
/**
 * A connection without a valid client certificate may only enroll: a token and a CSR, ~750
 * bytes. Its first message is capped at this instead of MESSAGE_MAX_BYTES (1 MiB), and its
 * streams get the spec's 256 KiB window instead of max_stream_window (8 MiB), so a stranger
 * can make the hub buffer ~272 KiB at most. Not config keys: they bound strangers only.
 */
export const ENROLL_MESSAGE_MAX_BYTES = 16 * 1024;
/** The cog's `software` string is logged up to this many characters (it is the peer's to choose, up to 1 MiB). */
export const SOFTWARE_LOG_MAX_CHARS = 64;
/** After a refusal the hub ends the control stream, then destroys the tunnel this much later, so the reason reaches the cog. */
export const REFUSAL_LINGER_MS = 1_000;

export interface CogLink {
  cog: string;
  session: MuxSession | null;
  /** Visitors waiting for the cog to come back during the grace period. */
  waiters: Array<(s: MuxSession | null) => void>;
  graceTimer: NodeJS.Timeout | null;
  remote: string;
  connectedAt: number;
  /** The live tunnel's control channel (route applications, renewals), for status and tests. */
  control: ControlChannel | null;
}

/** One live TCP connection on the tunnel port, by its 4-tuple: our side is fixed, so the peer's address and port. */
function connKey(s: net.Socket): string {
  return `${s.remoteAddress}|${s.remotePort}`;
}

/** Hub-wide counts since start (gateway/metrics.ts): tunnels refused, by the error code sent; what control streams did. */
export interface TunnelCounts {
  refused: Record<ErrorCode, number>;
  control: ControlStats;
  /** Completed TLS handshakes on the tunnel port: full, or resumed from a session ticket (gateway/ticketkeys.ts). */
  handshakes: { full: number; resumed: number };
}

/** Events: "attached" (cog: string, session: MuxSession) when a cog's tunnel is authenticated and in use. */
export class Tunnels extends EventEmitter {
  readonly links = new Map<string, CogLink>();
  /** VM moves between cogs (moves.ts). */
  private readonly moves: MoveRelay;
  readonly counts: TunnelCounts = {
    refused: { "version": 0, "auth": 0, "revoked": 0, "bad-request": 0, "enroll": 0, "renew": 0 },
    control: newControlStats(),
    handshakes: { full: 0, resumed: 0 },
  };
  private readonly listener: Listener;
  private tlsServer: tls.Server;
  /** The session ticket key shared through the data dir (null until listen() loaded it: Node's own random key meanwhile). */
  private readonly tickets: TicketKeys;
  private ticketKey: Buffer | null = null;
  private watch: RevocationWatch | null = null;
  /** The poll interval the revocation watch runs at (hub.tunnel.revocation_poll_interval when it started). */
  private watchIntervalMs = 0;
  /** Status writes for `capsul hub cogs`, in order per cog: an old "online" must not land after "offline". */
  private readonly statusWrites = new KeyedQueue();
  private closing = false;
  /**
   * A warming worker's restored links (gateway/warmup.ts): their grace starts when visitors
   * can reach it (startRestoredGrace()), not at its start, or a warm-up longer than the grace
   * would leave a cog that is late answered "no route" rather than held.
   */
  private restoredWaiting: CogLink[] | null = null;
  /** Draining (stopAccepting): a tunnel that completes its hello now is told GoAway at once, like the others. */
  private draining = false;
  private readonly strangers: ThrottledLog;
  readonly admission: TunnelAdmission;
  readonly issuance: Issuance;
  /** This process as a hub endpoint in the store, and the live list cogs are given. */
  readonly endpoints: EndpointRegistry;
  /** Admitted TCP connections whose TLS handshake has not finished, by connKey. */
  private readonly handshaking = new Map<string, AdmissionTicket>();
  /** Every TCP connection on the tunnel port, so close() can end the unauthenticated ones too. */
  private readonly sockets = new Set<net.Socket>();
  /**
   * Sessions a cog told to go away (GoAway: it is leaving, or moving to another hub) that
   * still carry visitor streams; they end when those do, or with drop() or close().
   */
  private readonly retired = new Map<MuxSession, string>();

  constructor(
    private readonly cfg: HubConfig,
    private readonly store: HubStore,
    private pki: HubPki,
    private readonly routes: RouteTable,
    private readonly log: Logger,
    /** Custom-domain claims, reported to each cog over its control stream, carried with moved VMs (null: none). */
    private readonly domains: DomainProofs | null = null,
  ) {
    super();
    this.strangers = new ThrottledLog(log);
    this.admission = new TunnelAdmission(cfg.tunnel.maxUnauthenticated, cfg.tunnel.maxUnauthenticatedPerIp, this.strangers);
    this.issuance = new Issuance(cfg, store, pki);
    this.endpoints = new EndpointRegistry(() => this.cfg.endpoint, store, log);
    this.endpoints.on("change", () => this.pushEndpoints());
    const carrier = new MoveCarrier(cfg, store, routes, domains, (c) => this.links.get(c)?.control ?? null, log.child("move"));
    this.moves = new MoveRelay(cfg, (c) => this.links.get(c)?.session ?? null, log.child("move"), carrier);
    this.tickets = new TicketKeys(cfg.dataDir, () => this.cfg.tunnel.sessionTicketRotationMs, log, (key) => {
      this.ticketKey = key;
      this.tlsServer.setTicketKeys(key);
    });
    this.tlsServer = this.makeTlsServer();
    this.listener = new Listener("hub.listen.tunnel", () => net.createServer((raw) => this.onTcp(raw)), log, () => this.cfg.tunnel.listenBacklog);
  }

  /**
   * TLS runs on connections the TCP listener admitted; this server never listens itself.
   * Made again by reconfigure(): handshakes under way finish on the one they started on.
   */
  private makeTlsServer(): tls.Server {
    const server = tls.createServer({
      key: this.pki.hubKeyPem,
      cert: this.pki.hubCertPem + "\n" + this.pki.caCertPem,
      ca: this.pki.caCertPem,
      requestCert: true,
      rejectUnauthorized: false,
      minVersion: "TLSv1.3",
      handshakeTimeout: this.cfg.tunnel.handshakeTimeoutMs,
      // Session resumption (gateway/ticketkeys.ts): the shared key, tickets bound to this CA.
      ...(this.ticketKey ? { ticketKeys: this.ticketKey } : {}),
      sessionTimeout: Math.ceil(this.cfg.tunnel.sessionTicketLifetimeMs / 1000),
      sessionIdContext: tunnelSessionIdContext(this.pki.caCertPem),
    });
    server.on("secureConnection", (sock: tls.TLSSocket) => this.onConnection(sock));
    server.on("tlsClientError", (err, sock) => {
      this.strangers.warn(sourceKey(sock.remoteAddress), "tunnel TLS handshake failed", { remote: `${sock.remoteAddress}:${sock.remotePort}`, error: err.message });
    });
    return server;
  }

  /**
   * A hub worker (gateway/workers.ts) has no tunnel listener: the primary holds the one
   * public tunnel port and hands each connection over (adopt()). Then this is that port.
   */
  private handedPort: number | null = null;

  /** Opens the tunnel listener, or with `handedPort` (a worker) takes connections from adopt() only. */
  async listen(handedPort: number | null = null): Promise<number> {
    this.handedPort = handedPort;
    // Before the first handshake: tickets a previous run (or another worker) sealed open with it.
    this.ticketKey = await this.tickets.load();
    this.tlsServer.setTicketKeys(this.ticketKey);
    if (handedPort === null) await this.listener.open(this.cfg.listen.tunnel);
    try {
      await this.store.markAllOffline();
      this.watchIntervalMs = this.cfg.tunnel.revocationPollIntervalMs;
      this.watch = await this.store.watchRevocations((cogs) => this.onRevoked(cogs), this.watchIntervalMs);
      await this.restoreRoutes();
      await this.endpoints.start(this.boundPort);
    } catch (err) {
      this.listener.stop();
      this.tickets.close();
      throw err;
    }
    return this.boundPort;
  }

  /** The port cogs reach this process on: the listener's, or the primary's for a worker. */
  private get boundPort(): number {
    return this.handedPort ?? this.listener.port!;
  }

  /**
   * A tunnel connection the primary accepted and peeked (gateway/workers.ts): the bytes it
   * read go back in front of the socket's stream, where the TLS server reads them first
   * (Node's TLSSocket takes over what a wrapped socket has buffered), then it is served
   * like one from our own listener, under the same admission caps.
   */
  adopt(raw: net.Socket, head: Buffer): void {
    if (head.length) raw.unshift(head);
    this.onTcp(raw);
  }

  /**
   * A reload changed hub.tunnel.revocation_poll_interval: the new watch starts before the
   * old one stops, so no revocation falls between them (one seen twice drops nothing more).
   * A store that cannot start it now keeps the old watch, and says so.
   */
  private async rewatch(): Promise<void> {
    const interval = this.cfg.tunnel.revocationPollIntervalMs;
    if (interval === this.watchIntervalMs || this.closing || this.watch === null) return;
    try {
      const next = await this.store.watchRevocations((cogs) => this.onRevoked(cogs), interval);
      const old = this.watch;
      this.watch = next;
      this.watchIntervalMs = interval;
      await old.close();
    } catch (err) {
      this.log.warn("revocation watch kept at its old interval", { error: (err as Error).message });
    }
  }

  /** The tunnel port (the kernel's choice for port 0); the last one bound, also once draining. */
  get port(): number | null { return this.handedPort ?? this.listener.port; }

  /** Binds the tunnel listener's new address (a reload), to commit or undo. */
  prepareListen(hp: HostPort): Promise<ListenerChange> {
    return this.listener.prepare(hp);
  }

  /**
   * After a reload changed the (shared, live) configuration: caps of unauthenticated
   * connections and the revocation poll apply now; handshake timeout, certificate (`pki`,
   * when the hub's names changed) and mux tuning apply to tunnels that connect from now on.
   */
  async reconfigure(pki: HubPki): Promise<void> {
    this.pki = pki;
    this.admission.setLimits(this.cfg.tunnel.maxUnauthenticated, this.cfg.tunnel.maxUnauthenticatedPerIp);
    this.tlsServer = this.makeTlsServer();
    this.tickets.reschedule();
    await this.rewatch();
    // The endpoint's address follows public_tunnel_address and the tunnel port; under a new
    // name the live tunnels are recorded again (the old name's rows went with its row).
    const { renamed } = await this.endpoints.reconfigure(this.boundPort);
    if (renamed) {
      for (const link of this.links.values()) {
        if (link.session) this.recordStatus(link.cog, () => this.store.recordTunnel(link.cog, this.endpoints.name, link.remote));
      }
    }
  }

  /**
   * Re-applies every connected cog's current route set (a reload changed grants): what is
   * outside the cog's grants now is withdrawn and the cog is told so, like any announce.
   */
  async reapplyRoutes(): Promise<void> {
    for (const link of [...this.links.values()]) await link.control?.reapply();
  }

  /**
   * Drain: the tunnel port stops accepting and every cog is told GoAway (it dials a new
   * tunnel at once, and keeps its streams on this one); visitor streams already open, and
   * those of visitors still being peeked, go on through the sessions as before.
   */
  stopAccepting(): void {
    this.draining = true;
    this.listener.stop();
    let told = 0;
    for (const link of this.links.values()) {
      if (!link.session) continue;
      link.session.goAway();
      told++;
    }
    this.log.info("draining: tunnel listener closed, GoAway sent", { cogs: told });
  }

  /**
   * The routes cogs held before this hub (re)started, from the store: each such cog gets
   * a link without a session in its grace period, so a visitor arriving before the cog is
   * back waits for it instead of getting "no route" (issue 12: after a restart ~9 s of
   * refusals at 1,000 cogs). A cog that is not back when the grace ends is dropped as usual.
   */
  private async restoreRoutes(): Promise<void> {
    const revoked = await this.store.revokedCogs();
    const byCog = new Map<string, StoredRoute[]>();
    for (const r of await this.store.allRoutes()) {
      if (revoked.has(r.cog)) continue;
      const list = byCog.get(r.cog);
      if (list) list.push(r);
      else byCog.set(r.cog, [r]);
    }
    if (this.cfg.limits.graceMs <= 0) return; // no grace: nothing would hold a visitor
    let held = 0;
    // All at once (each cog's restore queues behind nothing but its own hello): at 1,000 cogs
    // one after the other would cost a store round trip each before the hub is ready.
    const restoring: Promise<void>[] = [];
    for (const [cog, stored] of byCog) {
      if (this.links.has(cog)) continue; // back already: its hello decides
      const link: CogLink = { cog, session: null, waiters: [], graceTimer: null, remote: "", connectedAt: 0, control: null };
      this.links.set(cog, link);
      restoring.push(this.routes.restore(cog, stored).then((n) => {
        held += n;
        if (link.session || this.links.get(cog) !== link) return;
        if (this.restoredWaiting) this.restoredWaiting.push(link);
        else this.startGrace(link);
      }));
    }
    await Promise.all(restoring);
    if (byCog.size) this.log.info("known routes held for their cogs", { cogs: byCog.size, routes: held, graceMs: this.cfg.limits.graceMs });
  }

  /** Before listen(): the restored links' grace waits for startRestoredGrace() (a warming worker). */
  deferRestoredGrace(): void {
    this.restoredWaiting ??= [];
  }

  /** Visitors can reach this hub now: the grace of restored links whose cog is not back begins. */
  startRestoredGrace(): void {
    const links = this.restoredWaiting ?? [];
    this.restoredWaiting = null;
    for (const link of links) if (!link.session && this.links.get(link.cog) === link && !link.graceTimer) this.startGrace(link);
  }

  /** The live endpoints changed: every connected cog hears it on its control stream. */
  private pushEndpoints(): void {
    for (const link of this.links.values()) link.control?.pushEndpoints(this.endpoints.list);
  }

  /** A live session for the cog, waiting out its grace period if it is reconnecting. */
  sessionFor(cog: string): MuxSession | null | Promise<MuxSession | null> {
    const link = this.links.get(cog);
    if (!link) return null;
    if (link.session) return link.session;
    if (!link.graceTimer) return null;
    return new Promise((resolve) => link.waiters.push(resolve));
  }

  /** A TCP connection: admitted under the caps (else closed before any TLS work), then handed to TLS. */
  private onTcp(raw: net.Socket): void {
    if (this.closing) { raw.destroy(); return; }
    const ticket = this.admission.admit(raw.remoteAddress);
    if (!ticket) { raw.destroy(); return; }
    const key = connKey(raw);
    this.handshaking.set(key, ticket);
    this.sockets.add(raw);
    raw.on("error", () => {}); // the TLS socket on top reports what matters
    raw.once("close", () => {
      ticket.release();
      if (this.handshaking.get(key) === ticket) this.handshaking.delete(key);
      this.sockets.delete(raw);
    });
    this.tlsServer.emit("connection", raw);
  }

  private onConnection(sock: tls.TLSSocket): void {
    const remote = `${sock.remoteAddress}:${sock.remotePort}`;
    const key = connKey(sock);
    const ticket = this.handshaking.get(key);
    this.handshaking.delete(key);
    if (!ticket) { sock.destroy(); return; } // not from our listener (cannot happen), or already closed
    if (sock.isSessionReused()) this.counts.handshakes.resumed++;
    else this.counts.handshakes.full++;
    sock.setNoDelay(true);
    const tuning = this.cfg.tunnel;
    // Only a peer whose certificate chains to our CA will ever get visitor streams; a stranger's
    // one stream (the enrollment) gets the spec's initial window, so it cannot park 8 MiB here.
    const window = sock.authorized ? tuning.maxStreamWindowBytes : MUX_INITIAL_WINDOW_BYTES;
    const session = new MuxSession(sock, {
      role: "server",
      maxStreamWindowBytes: window,
      maxAutoWindowBytes: sock.authorized ? tuning.maxAutoWindowBytes : window,
      keepaliveIntervalMs: tuning.keepaliveIntervalMs,
      keepaliveTimeoutMs: tuning.keepaliveTimeoutMs,
      acceptBacklog: HUB_ACCEPT_BACKLOG,
      maxFramePayloadBytes: tuning.maxFramePayloadBytes,
      writeBatchMaxBytes: tuning.writeBatchMaxBytes,
      closeLingerMs: tuning.closeLingerMs,
      maxQueuedControlFrames: tuning.maxQueuedControlFrames,
    });
    session.on("error", () => {});
    // The deadline runs until the first complete control message, not until the stream
    // opens: a peer that opens it and then trickles (or says nothing) is closed all the same.
    const timer = setTimeout(() => {
      this.strangers.warn(sourceKey(sock.remoteAddress), "tunnel closed: no control message in time", { remote });
      session.destroy();
    }, tuning.controlHelloTimeoutMs);
    const source = ticket.source;
    session.once("close", (err?: Error) => {
      clearTimeout(timer);
      // Before authentication nobody else will say why a tunnel ended (a flood of pings, bad frames).
      if (err && !this.closing && !this.sessionCogs.has(session)) {
        this.strangers.warn(source, "unauthenticated tunnel closed", { remote, error: err.message }, `closed: ${(err as NodeJS.ErrnoException).code}`);
      }
    });
    session.once("stream", (control: MuxStream) => {
      this.onControl(sock, session, control, remote, ticket, () => clearTimeout(timer)).catch((err: Error) => {
        // A tunnel that simply went away ends its control stream with an error too; that is not news.
        if (!session.closed && !this.closing) {
          const level = err instanceof ProtocolError ? "warn" : "error";
          this.log[level]("tunnel control failed", { remote, error: err.message });
        }
        session.destroy();
      });
    });
  }

  /** Sessions whose hello was accepted, and their cog. */
  private readonly sessionCogs = new WeakMap<MuxSession, string>();

  private async onControl(
    sock: tls.TLSSocket, session: MuxSession, control: MuxStream, remote: string,
    ticket: AdmissionTicket, firstMessageIn: () => void,
  ): Promise<void> {
    control.on("error", () => {}); // the session's close says what happened
    const send = (m: HubMessage): void => { control.write(encodeMessage(m)); };
    const refuse = (m: HubMessage & { type: "error" }): void => {
      this.counts.refused[m.code]++;
      this.strangers.warn(ticket.source, "tunnel refused", { remote, reason: m.message, resumed: sock.isSessionReused() }, `tunnel refused: ${m.code}`);
      control.end(encodeMessage(m));
      setTimeout(() => session.destroy(), REFUSAL_LINGER_MS).unref();
    };
    // Identity comes from the certificate alone: on a resumed session, the one the full
    // handshake verified, which the ticket carries; expiry and revocation are checked below
    // all the same (OpenSSL does not check a resumed session's certificate again).
    const auth = peerAuthResult(sock);
    const resumed = sock.isSessionReused();
    if (!auth.ok && auth.code !== undefined) {
      // A certificate that failed verification: nothing this peer can say changes that.
      firstMessageIn();
      refuse({ type: "error", code: "auth", message: `hub refused the tunnel: ${auth.reason}; enroll this cog again with capsul cog enroll` });
      return;
    }
    const reader = new MessageReader<CogMessage>(control, auth.ok ? MESSAGE_MAX_BYTES : ENROLL_MESSAGE_MAX_BYTES);
    const first = await reader.next();
    firstMessageIn();
    if (!first) { session.destroy(); return; }
    if (first.type === "enroll") {
      if (first.protocol !== TUNNEL_PROTOCOL_VERSION) {
        refuse({ type: "error", code: "version", message: versionMismatchMessage(TUNNEL_PROTOCOL_VERSION, first.protocol) });
        return;
      }
      const out = await this.issuance.enroll(first.token, first.csr);
      ticket.release(); // processed: this connection ends now either way
      if (!out.ok) {
        refuse({ type: "error", code: "enroll", message: out.message });
        return;
      }
      send({ type: "enrolled", cog: out.cog, cert: out.certPem, ca: this.pki.caCertPem, domain: this.cfg.domain });
      this.log.info("cog enrolled", { cog: out.cog, remote, notAfter: out.notAfter.toISOString() });
      control.end();
      return;
    }
    if (first.type !== "hello") throw new ProtocolError(`expected hello, got ${JSON.stringify(first.type)}`);
    if (first.protocol !== TUNNEL_PROTOCOL_VERSION) {
      refuse({ type: "error", code: "version", message: versionMismatchMessage(TUNNEL_PROTOCOL_VERSION, first.protocol) });
      return;
    }
    if (!auth.ok) {
      refuse({ type: "error", code: "auth", message: `hub refused the tunnel: ${auth.reason}; enroll this cog again with capsul cog enroll` });
      return;
    }
    const cog = auth.cogName;
    const presented: PresentedCert = { cog, serial: normSerial(auth.serial), notBefore: auth.notBefore, notAfter: auth.notAfter };
    const problem = await this.store.certProblem(cog, presented.serial);
    if (problem) {
      refuse({ type: "error", code: "revoked", message: `hub refused the tunnel: ${problem}` });
      return;
    }
    const wanted = checkWireRoutes(first.routes);
    ticket.release(); // authenticated: no longer a stranger
    this.sessionCogs.set(session, cog);
    const closed = new AbortController();
    session.once("close", () => closed.abort());
    const channel = new ControlChannel({
      cfg: this.cfg, cog, presented, routes: this.routes, issuance: this.issuance, log: this.log, signal: closed.signal,
      recordStatus: (routes, accepted) => this.recordStatus(cog, async () => {
        await this.store.markOnline(cog, remote, routes);
        await this.store.saveRoutes(cog, accepted.map((a): StoredRoute => ({ route: a.name, kind: a.kind, hostname: a.hostname ?? null, port: a.port ?? null })));
      }),
      totals: this.counts.control,
      revoked: (message) => this.drop(cog, "revoked by the operator", () => {
        this.counts.refused.revoked++;
        control.end(encodeMessage({ type: "error", code: "revoked", message }));
        setTimeout(() => session.destroy(), REFUSAL_LINGER_MS).unref();
      }),
      domains: this.domains,
    }, reader, control);
    this.attach(cog, session, remote, channel);
    // Every later stream this cog opens is a VM move (moves.ts); before the hello was accepted there was no listener (backlog 0: reset).
    session.on("stream", (s: MuxStream) => this.moves.onStream(cog, s));
    const result = await channel.hello(wanted);
    if (session.closed) return;
    send({
      type: "welcome", protocol: TUNNEL_PROTOCOL_VERSION, cog, domain: this.cfg.domain, accepted: result.accepted, refused: result.refused,
      endpoint: this.endpoints.name, endpoints: this.endpoints.list, domainsRelease: true,
    });
    channel.welcomeSent();
    this.log.info("cog connected", { cog, remote, resumed, routes: result.accepted.length, refused: result.refused.length, software: String(first.software).slice(0, SOFTWARE_LOG_MAX_CHARS) });
    for (const r of result.refused) this.log.warn("route refused", { cog, route: r.name, reason: r.reason });
    await channel.run();
    // The cog ended its side (it is leaving, after a GoAway): end ours, so that the
    // stream is finished both ways and a graceful session close can complete.
    if (!session.closed) control.end();
  }

  /**
   * Status writes for `capsul hub cogs` are a report, not a decision: one that fails
   * (SQLITE_BUSY while `capsul hub invite` holds the write lock past busy_timeout, a lost
   * PostgreSQL connection) is logged and the hub carries on; it must never end a tunnel
   * or skip a grace period. Never awaited: nothing waits for a report.
   */
  private recordStatus(cog: string, write: () => Promise<void>): void {
    void this.statusWrites.run(cog, write).catch((err: Error) => {
      this.log.warn("could not record the cog's status", { cog, error: err.message });
    });
  }

  private attach(cog: string, session: MuxSession, remote: string, control: ControlChannel): void {
    let link = this.links.get(cog);
    if (link?.session && link.session !== session) {
      this.log.info("cog reconnected: replacing its previous tunnel", { cog, remote });
      const old = link.session;
      link.session = null;
      old.destroy();
    }
    if (!link) {
      link = { cog, session: null, waiters: [], graceTimer: null, remote, connectedAt: Date.now(), control: null };
      this.links.set(cog, link);
    }
    if (link.graceTimer) clearTimeout(link.graceTimer);
    link.graceTimer = null;
    link.session = session;
    link.control = control;
    link.remote = remote;
    link.connectedAt = Date.now();
    this.emit("attached", cog, session);
    for (const w of link.waiters.splice(0)) w(session);
    this.recordStatus(cog, () => this.store.recordTunnel(cog, this.endpoints.name, remote));
    const l = link;
    session.once("goaway", () => this.retire(l, session));
    if (this.draining) session.goAway();
    session.once("close", (err?: Error) => {
      if (l.session !== session || this.closing) return; // replaced by a newer tunnel, or hub shutdown
      l.session = null;
      l.control = null;
      // The grace period first: a failed status write below must not cost the visitors their wait.
      this.startGrace(l);
      this.log.info("cog disconnected", {
        cog, remote, reason: err?.message ?? "tunnel closed", connected_ms: Date.now() - l.connectedAt,
      });
      this.recordStatus(cog, async () => {
        await this.store.clearTunnel(cog, this.endpoints.name);
        await this.store.markOffline(cog);
      });
    });
  }

  /**
   * The cog sent GoAway: it opens no stream on this session and refuses ours, so new
   * visitors wait for its next tunnel (the grace period) while the streams already open
   * here finish. The cog closes the session once they have.
   */
  private retire(link: CogLink, session: MuxSession): void {
    if (link.session !== session || this.closing) return;
    link.session = null;
    link.control = null;
    this.retired.set(session, link.cog);
    session.once("close", () => this.retired.delete(session));
    this.startGrace(link);
    this.log.info("cog is going away (GoAway): holding new visitors for its next tunnel", { cog: link.cog, streams: session.streamCount });
    this.recordStatus(link.cog, () => this.store.markOffline(link.cog));
  }

  private startGrace(link: CogLink): void {
    const end = (): void => {
      link.graceTimer = null;
      for (const w of link.waiters.splice(0)) w(null);
      if (!link.session) {
        this.links.delete(link.cog);
        this.dropRoutes(link.cog);
      }
    };
    if (this.cfg.limits.graceMs <= 0) { end(); return; }
    link.graceTimer = setTimeout(end, this.cfg.limits.graceMs);
    link.graceTimer.unref();
  }

  /**
   * Drops a cog at once: no grace, routes withdrawn. `farewell` replaces the immediate
   * destroy of its session (to send the reason first and destroy it a little later).
   */
  drop(cog: string, why: string, farewell?: () => void): void {
    const link = this.links.get(cog);
    if (!link) return;
    this.log.warn("dropping cog tunnel", { cog, reason: why });
    if (link.graceTimer) clearTimeout(link.graceTimer);
    link.graceTimer = null;
    const s = link.session;
    link.session = null;
    link.control = null;
    this.links.delete(cog);
    for (const w of link.waiters.splice(0)) w(null);
    this.dropRoutes(cog);
    this.recordStatus(cog, async () => {
      await this.store.clearTunnel(cog, this.endpoints.name);
      await this.store.markOffline(cog);
    });
    for (const [old, owner] of this.retired) if (owner === cog) old.destroy();
    if (farewell) farewell();
    else s?.destroy();
  }

  /** Withdraws the cog's routes once its route applications in flight are done (never rejects). */
  private dropRoutes(cog: string): void {
    this.routes.dropCog(cog).catch((err: Error) => this.log.error("could not drop a cog's routes", { cog, error: err.message }));
  }

  /**
   * Cogs revoked by any process (`capsul hub revoke`, another hub): their tunnels here end
   * at once. Revoking lifts nothing, so a cog re-invited since is dropped all the same:
   * the certificate its tunnel presented stays revoked.
   */
  private onRevoked(cogs: string[]): void {
    for (const cog of cogs) if (this.links.has(cog)) this.drop(cog, "revoked by the operator");
  }

  async close(): Promise<void> {
    this.closing = true;
    this.tickets.close();
    await this.endpoints.close();
    await this.watch?.close();
    for (const cog of [...this.links.keys()]) {
      const link = this.links.get(cog)!;
      if (link.graceTimer) clearTimeout(link.graceTimer);
      for (const w of link.waiters.splice(0)) w(null);
      link.session?.destroy();
    }
    this.links.clear();
    for (const old of [...this.retired.keys()]) old.destroy();
    // Connections still in their TLS handshake or before their hello: nobody else ends them.
    for (const raw of this.sockets) raw.destroy();
    this.sockets.clear();
    this.listener.stop();
  }
}
