/**
 * What happens to each public connection: peek (SNI, Host, or nothing for raw
 * TCP), route, open a stream to the cog, write the visitor header and the
 * bytes already read, then splice. Every failure ends that one visitor with
 * the answer DESIGN.md gives (TLS alert, HTTP page, close) and is counted;
 * nothing here may throw into the event loop.
 *
 * What a visitor may cost is bounded per connection, never per chunk: hub-wide
 * (max_visitors) and per source (max_visitors_per_ip, max_unpeeked_per_ip; sources.ts)
 * connection caps at accept, an idle timeout, and the buffer budget (budget.ts) that
 * sizes each visitor stream's window and cuts visitors that pin memory without draining.
 * What one cog's visitors may take together (streams, connections per route, bandwidth)
 * is quotas.ts's; a throttled cog's visitors take protocol/throttle.ts's splice.
 */
import net from "node:net";
import tls from "node:tls";
import type { HubConfig } from "../config/types.js";
import type { Logger } from "../lib/log.js";
import { encodeMessage } from "../protocol/messages.js";
import type { VisitorHeader } from "../protocol/control.js";
import { splice } from "../protocol/splice.js";
import { spliceThrottled } from "../protocol/throttle.js";
import type { MuxSession, MuxStream } from "../protocol/mux.js";
import { accessRecord, logAccess, type AccessOutcome, type AccessRecord } from "./accesslog.js";
import { BufferBudget, type Pool, type Visit } from "./budget.js";
import { ACME_HTTP_CHALLENGE_PREFIX, ACME_TLS_ALPN_PROTOCOL, type ChallengeStore } from "../certs/challenges.js";
import { parseClientHello, TLS_ALERT_UNRECOGNIZED_NAME } from "./clienthello.js";
import { httpErrorResponse, httpHeadPeekParser } from "./httphost.js";
import { peek } from "./peek.js";
import { Quotas } from "./quotas.js";
import type { RouteEntry, Router } from "./router.js";
import { NO_VISITOR_OBSERVER, type VisitorObserver } from "./observer.js";
import { RefusalLog, SourceLimits, sourceKey } from "./sources.js";

export interface VisitorStats {
  active: number;
  total: number;
  routed: number;
  noRoute: number;
  cogOffline: number;
  badHello: number;
  peekTimeout: number;
  /** Refused: max_visitors connections were open. */
  overLimit: number;
  /** Refused: max_visitors_per_ip connections from the same source were open. */
  overSourceLimit: number;
  /** Refused: max_unpeeked_per_ip connections from the same source were still being peeked. */
  overUnpeekedLimit: number;
  /** Cut to bring the hub's or a cog's buffered bytes back within buffer_budget / cog_buffer_budget. */
  shed: number;
  /** Closed after idle_timeout without a byte either way. */
  idleTimeout: number;
  /** Refused: the cog's tunnel carried max_streams_per_cog (or its hub.cogs[].limits.max_streams) visitor streams. */
  overCogStreams: number;
  /** Refused: the route had max_connections_per_route visitor connections open. */
  overRouteConnections: number;
  /** A cog's bandwidth bucket ran dry and its visitors waited for it (once per wait, not per chunk). */
  throttled: number;
}

/**
 * The idle timeout is checked this many times per idle_timeout, by one timer for all
 * connections: a silent one is cut between 1 and 1 1/8 idle_timeouts after its last byte.
 * Not Node's socket.setTimeout(): that re-arms a timer on every read and every write of
 * every visitor (per chunk, on the hot path); a sweep reads two byte counters per
 * connection every 75 s with the default 10m (20,000 connections: a few ms).
 */
export const IDLE_CHECKS_PER_TIMEOUT = 8;

/** One accepted connection's bookkeeping: per-source caps and idleness. */
interface Conn {
  readonly socket: net.Socket;
  readonly source: string;
  peeking: boolean;
  /** bytesRead + bytesWritten at the last idle check that saw them change, and when (performance.now). */
  moved: number;
  quietSince: number;
  /** What the access log writes at close; null when hub.access_log was off at accept (nothing kept). */
  access: AccessRecord | null;
}

/** Sets how a connection ended, for the access log (a no-op with it off). */
function ended(conn: Conn, outcome: AccessOutcome): void {
  if (conn.access !== null) conn.access.outcome = outcome;
}

export class Visitors {
  readonly stats: VisitorStats = {
    active: 0, total: 0, routed: 0, noRoute: 0, cogOffline: 0, badHello: 0, peekTimeout: 0,
    overLimit: 0, overSourceLimit: 0, overUnpeekedLimit: 0, shed: 0, idleTimeout: 0,
    overCogStreams: 0, overRouteConnections: 0, throttled: 0,
  };
  /**
   * The ACME challenges the hub answers itself (its admin listener's certificate,
   * gateway/admintls.ts), by hostname: an HTTP-01 token only on a request whose Host is
   * that name, TLS-ALPN-01 only for a ClientHello with that SNI and ALPN acme-tls/1.
   * Anything else, a capsul's own challenge included, is routed. Null: none.
   */
  acmeChallenges: ChallengeStore | null = null;
  /** Told of each peek's result and each forwarded visitor (gateway/metrics.ts). */
  observer: VisitorObserver = NO_VISITOR_OBSERVER;
  /** Windows and buffered bytes of the visitor streams (budget.ts). */
  readonly budget: BufferBudget;
  readonly sources: SourceLimits;
  /** Per-cog streams, per-route connections and bandwidth buckets. */
  readonly quotas: Quotas;
  private readonly conns = new Map<net.Socket, Conn>();
  private idleTimer: NodeJS.Timeout | null = null;
  private readonly refusals: RefusalLog;

  constructor(
    // The hub's live configuration (gateway/hub.ts): a reload replaces its sections, and
    // what is read from it per connection applies to the next connection; reconfigure()
    // passes the rest on.
    private readonly cfg: HubConfig,
    private readonly router: Router,
    private readonly sessionFor: (cog: string) => MuxSession | null | Promise<MuxSession | null>,
    private readonly log: Logger,
    /** Where hub.access_log lines go (component hub/access). */
    private readonly accessLog: Logger = log.child("access"),
  ) {
    const l = cfg.limits;
    this.sources = new SourceLimits(l.maxVisitorsPerIp, l.maxUnpeekedPerIp);
    this.refusals = new RefusalLog(log, l.refusalLogIntervalMs);
    this.budget = new BufferBudget({
      budgetBytes: l.bufferBudgetBytes,
      cogBudgetBytes: l.cogBufferBudgetBytes,
      spliceQueueBytes: l.spliceQueueBytes,
      checkIntervalMs: l.bufferCheckIntervalMs,
      onShed: (v, pool) => this.onShed(v, pool),
    });
    this.quotas = new Quotas(cfg, (cog) => {
      this.stats.throttled++;
      const l = this.quotas.of(cog).limits;
      this.refusals.warnFor(cog, "visitors held back: their cog is at its bandwidth limit", {
        cog, bytesPerSec: l.bandwidthBytesPerSec, burstBytes: l.bandwidthBurstBytes,
      }, "info");
    });
  }

  /**
   * Common start for every listener: limits, bookkeeping, error safety. `peeking`: the
   * connection starts with a peek (TLS, HTTP) and counts as un-peeked until peeked().
   */
  private admit(socket: net.Socket, peeking: boolean, listener: AccessRecord["listener"], port?: number): Conn | null {
    socket.on("error", () => {}); // errors are handled where the socket is used; never crash
    if (this.stats.active >= this.cfg.limits.maxVisitors) {
      this.stats.overLimit++;
      const source = sourceKey(socket.remoteAddress);
      this.refusals.warn(source, "visitor refused: the hub has as many connections open as it may", {
        limit: this.cfg.limits.maxVisitors, key: "hub.limits.max_visitors",
      });
      socket.destroy();
      return null;
    }
    const source = sourceKey(socket.remoteAddress);
    const verdict = this.sources.admit(source, peeking);
    if (verdict !== "ok") {
      const perSource = verdict === "per-source";
      if (perSource) this.stats.overSourceLimit++;
      else this.stats.overUnpeekedLimit++;
      this.refusals.warn(source, perSource ? "visitor refused: too many connections from its source"
        : "visitor refused: too many connections from its source still sending their first bytes", {
        limit: perSource ? this.cfg.limits.maxVisitorsPerIp : this.cfg.limits.maxUnpeekedPerIp,
        key: perSource ? "hub.limits.max_visitors_per_ip" : "hub.limits.max_unpeeked_per_ip",
      });
      socket.destroy();
      return null;
    }
    const conn: Conn = {
      socket, source, peeking, moved: 0, quietSince: performance.now(),
      access: this.cfg.accessLog ? accessRecord(listener, port) : null,
    };
    this.stats.active++;
    this.stats.total++;
    this.conns.set(socket, conn);
    socket.once("close", () => {
      this.stats.active--;
      this.conns.delete(socket);
      this.sources.closed(conn.source, conn.peeking);
      if (conn.access !== null) logAccess(this.accessLog, conn.access, conn.source, socket);
      if (this.conns.size === 0 && this.idleTimer !== null) {
        clearInterval(this.idleTimer);
        this.idleTimer = null;
      }
    });
    socket.setNoDelay(true);
    const idleMs = this.cfg.limits.idleTimeoutMs;
    if (idleMs > 0 && this.idleTimer === null) {
      this.idleTimer = setInterval(this.checkIdle, Math.max(1, Math.floor(idleMs / IDLE_CHECKS_PER_TIMEOUT)));
      this.idleTimer.unref();
    }
    return conn;
  }

  /**
   * Cuts the connections that moved no byte either way for idle_timeout (see
   * IDLE_CHECKS_PER_TIMEOUT). `now`: the monotonic clock (performance.now), moved by tests.
   */
  readonly checkIdle = (now = performance.now()): void => {
    const idleMs = this.cfg.limits.idleTimeoutMs;
    if (idleMs <= 0) return;
    for (const c of this.conns.values()) {
      const moved = c.socket.bytesRead + c.socket.bytesWritten;
      if (moved !== c.moved) {
        c.moved = moved;
        c.quietSince = now;
      } else if (now - c.quietSince >= idleMs && !c.socket.destroyed) {
        this.stats.idleTimeout++;
        ended(c, "idle-timeout");
        c.socket.destroy();
      }
    }
  };

  /** How often the idle timeout is checked while connections are open (0: no idle timeout). */
  get idleCheckIntervalMs(): number {
    const idleMs = this.cfg.limits.idleTimeoutMs;
    return idleMs > 0 ? Math.max(1, Math.floor(idleMs / IDLE_CHECKS_PER_TIMEOUT)) : 0;
  }

  /** The hub's end of every admitted visitor connection (status, tests). */
  get connections(): Iterable<net.Socket> {
    return this.conns.keys();
  }

  /** The connection's peek is over, whatever its outcome: it no longer counts as un-peeked. */
  private peeked(conn: Conn): void {
    if (!conn.peeking) return;
    conn.peeking = false;
    this.sources.peeked(conn.source);
  }

  async onTls(socket: net.Socket): Promise<void> {
    const conn = this.admit(socket, true, "tls");
    if (conn === null) return;
    const out = await peek(socket, (b) => parseClientHello(b, this.cfg.limits.clientHelloMaxBytes), {
      timeoutMs: this.cfg.limits.clientHelloTimeoutMs,
      maxBytes: this.cfg.limits.clientHelloMaxBytes,
    });
    this.peeked(conn);
    this.observer.peeked("tls", out);
    if (out.kind !== "ok") {
      this.countBad(out.kind, conn, out.kind === "invalid" ? out.reason : undefined);
      socket.destroy();
      return;
    }
    const sni = out.value.sni;
    if (conn.access !== null) conn.access.host = sni ?? undefined;
    if (sni !== null && this.acmeChallenges !== null && out.value.alpn.includes(ACME_TLS_ALPN_PROTOCOL)) {
      const context = this.acmeChallenges.alpnContext(sni);
      if (context !== undefined) return this.answerAlpn(socket, conn, context, out.bytes);
    }
    const entry = sni ? this.router.lookupHost("tls", sni) : undefined;
    if (!entry) {
      this.noRoute(conn, "tls", sni ?? undefined);
      socket.end(TLS_ALERT_UNRECOGNIZED_NAME);
      return;
    }
    await this.forward(socket, conn, entry, sni ?? undefined, out.bytes, () => socket.end(TLS_ALERT_UNRECOGNIZED_NAME));
  }

  async onHttp(socket: net.Socket): Promise<void> {
    const conn = this.admit(socket, true, "http");
    if (conn === null) return;
    // The parser's own cap sits one byte above the peek's, so an oversized head is
    // reported by the peek as too-large (431), not by the parser as invalid (400).
    const out = await peek(socket, httpHeadPeekParser(this.cfg.limits.httpHeaderMaxBytes + 1), {
      timeoutMs: this.cfg.limits.httpHeaderTimeoutMs,
      maxBytes: this.cfg.limits.httpHeaderMaxBytes,
    });
    this.peeked(conn);
    this.observer.peeked("http", out);
    if (out.kind !== "ok") {
      this.countBad(out.kind, conn, out.kind === "invalid" ? out.reason : undefined);
      if (out.kind === "invalid") socket.end(httpErrorResponse(400, "Bad Request", "The request could not be read."));
      else if (out.kind === "too-large") socket.end(httpErrorResponse(431, "Request Header Fields Too Large", "The request head is too large."));
      else if (out.kind === "timeout") socket.end(httpErrorResponse(408, "Request Timeout", "The request head did not arrive in time."));
      else socket.destroy();
      return;
    }
    const { host, path } = out.value;
    if (conn.access !== null) conn.access.host = host ?? undefined;
    if (host !== null && this.acmeChallenges !== null && path.startsWith(ACME_HTTP_CHALLENGE_PREFIX)) {
      const answer = this.acmeChallenges.httpAnswer(host, path.slice(ACME_HTTP_CHALLENGE_PREFIX.length));
      if (answer !== undefined) {
        ended(conn, "acme");
        socket.end(`HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: ${Buffer.byteLength(answer)}\r\nConnection: close\r\n\r\n${answer}`);
        return;
      }
    }
    const notFound = (): void => {
      socket.end(httpErrorResponse(404, "Not Found", `No capsul serves ${host ?? "this request"} here.`));
    };
    const entry = host ? this.router.lookupHost("http", host) : undefined;
    if (!entry) {
      this.noRoute(conn, "http", host ?? undefined);
      notFound();
      return;
    }
    await this.forward(socket, conn, entry, host ?? undefined, out.bytes, (busy) => {
      socket.end(busy ? httpErrorResponse(503, "Service Unavailable", `The home server for ${host} is busy. Try again shortly.`)
        : httpErrorResponse(502, "Bad Gateway", `The home server for ${host} is offline. Try again shortly.`));
    });
  }

  /**
   * RFC 8737: the hub's own TLS-ALPN-01 challenge. The handshake negotiates acme-tls/1
   * with the challenge certificate (the validator checks it during the handshake), then the
   * connection ends; no application data is read. Bounded by client_hello_timeout.
   */
  private answerAlpn(socket: net.Socket, conn: Conn, context: tls.SecureContext, hello: Buffer): void {
    ended(conn, "acme");
    socket.unshift(hello);
    const sock = new tls.TLSSocket(socket, { isServer: true, secureContext: context, ALPNProtocols: [ACME_TLS_ALPN_PROTOCOL] });
    const timer = setTimeout(() => socket.destroy(), this.cfg.limits.clientHelloTimeoutMs);
    sock.on("error", () => socket.destroy());
    sock.once("secure", () => sock.end());
    sock.once("close", () => { clearTimeout(timer); socket.destroy(); });
  }

  async onTcp(socket: net.Socket, port: number): Promise<void> {
    const conn = this.admit(socket, false, "tcp", port);
    if (conn === null) return;
    socket.pause();
    const entry = this.router.lookupPort(port);
    if (!entry) {
      this.noRoute(conn, "tcp", undefined, port);
      socket.destroy();
      return;
    }
    await this.forward(socket, conn, entry, undefined, Buffer.alloc(0), () => socket.destroy());
  }

  /** `refuse(busy)`: the answer for "cog offline", or with busy for "over its cog's or route's quota". */
  private async forward(
    socket: net.Socket, conn: Conn, entry: RouteEntry, host: string | undefined, bytes: Buffer, refuse: (busy?: boolean) => void,
  ): Promise<void> {
    if (!socket.destroyed) {
      if (!this.quotas.enterRoute(entry)) return this.overQuota(conn, entry, false, refuse);
      socket.once("close", () => this.quotas.leaveRoute(entry));
    }
    if (conn.access !== null) conn.access.entry = entry;
    let session = this.sessionFor(entry.cog);
    if (session instanceof Promise) session = await session;
    if (!session || session.closed || socket.destroyed) {
      this.stats.cogOffline++;
      ended(conn, "cog-offline");
      this.refusals.warn(conn.source, "visitor refused: its cog is offline", { cog: entry.cog, route: entry.route });
      if (!socket.destroyed) refuse();
      return;
    }
    const slots = this.quotas.openStream(entry.cog);
    if (slots === null) return this.overQuota(conn, entry, true, refuse);
    const throttle = slots.throttle;
    // The stream's window is a reservation against the buffer budget (budget.ts), given
    // back when the stream closes; no await between reserving and opening.
    const maxWindow = throttle === null ? session.maxStreamWindowBytes : Math.min(session.maxStreamWindowBytes, throttle.windowMaxBytes);
    const visit = this.budget.begin(entry.cog, socket, conn.source, maxWindow);
    let stream: MuxStream;
    try {
      stream = session.open({ windowBytes: visit.windowBytes, budget: visit });
    } catch {
      this.budget.end(visit);
      this.quotas.closeStream(slots);
      this.stats.cogOffline++;
      ended(conn, "cog-offline");
      refuse();
      return;
    }
    visit.stream = stream;
    stream.once("close", () => {
      this.budget.end(visit);
      this.quotas.closeStream(slots);
    });
    const header: VisitorHeader = {
      type: "visitor",
      kind: entry.kind,
      route: entry.route,
      host,
      srcAddr: socket.remoteAddress ?? "",
      srcPort: socket.remotePort ?? 0,
      dstAddr: socket.localAddress ?? "",
      dstPort: socket.localPort ?? 0,
    };
    this.stats.routed++;
    ended(conn, "ok");
    // The peeked bytes go first and in the same write as the header, so the
    // backend sees the ClientHello / request head exactly as the visitor sent it.
    stream.write(bytes.length ? Buffer.concat([encodeMessage(header), bytes]) : encodeMessage(header));
    const q = this.cfg.limits.spliceQueueBytes;
    if (throttle === null) splice(socket, stream, undefined, q);
    else spliceThrottled(socket, stream, throttle.fromVisitors, throttle.toVisitors, undefined, q);
    this.observer.forwarded(socket, entry, stream);
  }

  /** Over its cog's streams (`cogWide`) or its route's connections: refused as busy, counted, logged once per interval. */
  private overQuota(conn: Conn, entry: RouteEntry, cogWide: boolean, refuse: (busy: boolean) => void): void {
    const c = this.quotas.of(entry.cog);
    ended(conn, "busy");
    if (cogWide) this.stats.overCogStreams++;
    else this.stats.overRouteConnections++;
    this.refusals.warnFor(cogWide ? entry.cog : `${entry.cog}/${entry.kind}/${entry.route}`, cogWide
      ? "visitor refused: its cog carries as many visitor streams as it may"
      : "visitor refused: its route has as many connections open as it may", {
      cog: entry.cog, route: entry.route, source: conn.source,
      limit: cogWide ? c.limits.maxStreams : c.limits.maxConnectionsPerRoute,
      key: `${c.configPath}.${cogWide ? c.streamsKey : "max_connections_per_route"}`,
    });
    refuse(true);
  }

  /**
   * No cog serves what the visitor asked for: counted, and logged at info once per source
   * per refusal_log_interval (strangers scanning the hub's addresses are routine).
   */
  private noRoute(conn: Conn, listener: AccessRecord["listener"], host?: string, port?: number): void {
    this.stats.noRoute++;
    ended(conn, "no-route");
    this.refusals.warnFor(conn.source, "visitor refused: no route", { source: conn.source, listener, host, port }, "info");
  }

  private countBad(kind: string, conn: Conn, reason?: string): void {
    if (kind === "timeout") this.stats.peekTimeout++;
    else if (kind !== "closed") this.stats.badHello++;
    ended(conn, kind === "timeout" ? "peek-timeout" : kind === "closed" ? "closed" : "bad-hello");
    if (kind === "invalid" || kind === "too-large") {
      this.log.debug("bad visitor hello", { remote: conn.socket.remoteAddress, kind, reason });
    }
  }

  /** A visit the budget let go to bring `pool` back within its budget: cut both ends. */
  private onShed(v: Visit, pool: Pool): void {
    this.stats.shed++;
    const conn = this.conns.get(v.socket);
    if (conn !== undefined) ended(conn, "shed");
    const global = pool === this.budget.global;
    this.refusals.warn(v.source, "visitor cut: it holds buffered bytes without draining and the buffer budget is exceeded", {
      cog: v.cog.name,
      heldBytes: v.measured,
      budget: global ? "hub.limits.buffer_budget" : "hub.limits.cog_buffer_budget",
      limitBytes: pool.limitBytes,
    });
    v.stream?.destroy();
    if (typeof v.socket.resetAndDestroy === "function") v.socket.resetAndDestroy();
    else v.socket.destroy();
  }

  /** After a reload: the limits built into objects at start take their new values; new connections get them. */
  reconfigure(): void {
    const l = this.cfg.limits;
    this.sources.setLimits(l.maxVisitorsPerIp, l.maxUnpeekedPerIp);
    this.refusals.setInterval(l.refusalLogIntervalMs);
    // Per-cog stream, route and bandwidth limits (hub.limits and hub.cogs[].limits): the next visitors get them.
    this.quotas.reconfigure();
    this.budget.setLimits({
      budgetBytes: l.bufferBudgetBytes, cogBudgetBytes: l.cogBufferBudgetBytes,
      spliceQueueBytes: l.spliceQueueBytes, checkIntervalMs: l.bufferCheckIntervalMs,
    });
    // The idle sweep runs at a period derived from idle_timeout: start it again at the new one.
    if (this.idleTimer !== null) {
      clearInterval(this.idleTimer);
      this.idleTimer = null;
    }
    if (this.idleCheckIntervalMs > 0 && this.conns.size > 0) {
      this.idleTimer = setInterval(this.checkIdle, this.idleCheckIntervalMs);
      this.idleTimer.unref();
    }
  }

  /** Ends every visitor connection (hub shutdown). */
  closeAll(): void {
    this.budget.close();
    if (this.idleTimer !== null) clearInterval(this.idleTimer);
    this.idleTimer = null;
    for (const s of this.conns.keys()) s.destroy();
  }
}
