/**
 * What happens to each public connection: peek (SNI, Host, or nothing for raw
 * TCP), route, open a stream to the cog, write the visitor header and the
 * bytes already read, then splice. Every failure ends that one visitor with
 * the answer DESIGN.md gives (TLS alert, HTTP page, close) and is counted;
 * nothing here may throw into the event loop.
 */
import net from "node:net";
import type { HubConfig } from "../config/types.js";
import type { Logger } from "../lib/log.js";
import { encodeMessage } from "../protocol/messages.js";
import type { VisitorHeader } from "../protocol/control.js";
import { splice } from "../protocol/splice.js";
import type { MuxSession } from "../protocol/mux.js";
import { parseClientHello, TLS_ALERT_UNRECOGNIZED_NAME } from "./clienthello.js";
import { httpErrorResponse, parseHttpHead } from "./httphost.js";
import { peek } from "./peek.js";
import type { RouteEntry, Router } from "./router.js";
import { NO_VISITOR_OBSERVER, type VisitorObserver } from "./observer.js";

/** ACME HTTP-01 answers the hub itself holds (token → key authorization). */
export const ACME_CHALLENGE_PREFIX = "/.well-known/acme-challenge/";

export interface VisitorStats {
  active: number;
  total: number;
  routed: number;
  noRoute: number;
  cogOffline: number;
  badHello: number;
  peekTimeout: number;
  overLimit: number;
}

export class Visitors {
  readonly stats: VisitorStats = { active: 0, total: 0, routed: 0, noRoute: 0, cogOffline: 0, badHello: 0, peekTimeout: 0, overLimit: 0 };
  /** Tokens for ACME HTTP-01 challenges the hub answers itself. */
  readonly acmeTokens = new Map<string, string>();
  /** Told of each peek's result and each forwarded visitor (gateway/metrics.ts). */
  observer: VisitorObserver = NO_VISITOR_OBSERVER;
  private readonly sockets = new Set<net.Socket>();

  constructor(
    private readonly cfg: HubConfig,
    private readonly router: Router,
    private readonly sessionFor: (cog: string) => MuxSession | null | Promise<MuxSession | null>,
    private readonly log: Logger,
  ) {}

  /** Common start for every listener: limits, bookkeeping, error safety. */
  private admit(socket: net.Socket): boolean {
    socket.on("error", () => {}); // errors are handled where the socket is used; never crash
    if (this.stats.active >= this.cfg.limits.maxVisitors) {
      this.stats.overLimit++;
      socket.destroy();
      return false;
    }
    this.stats.active++;
    this.stats.total++;
    this.sockets.add(socket);
    socket.once("close", () => { this.stats.active--; this.sockets.delete(socket); });
    socket.setNoDelay(true);
    if (this.cfg.limits.idleTimeoutMs > 0) {
      socket.setTimeout(this.cfg.limits.idleTimeoutMs, () => socket.destroy());
    }
    return true;
  }

  async onTls(socket: net.Socket): Promise<void> {
    if (!this.admit(socket)) return;
    const out = await peek(socket, (b) => parseClientHello(b, this.cfg.limits.clientHelloMaxBytes), {
      timeoutMs: this.cfg.limits.clientHelloTimeoutMs,
      maxBytes: this.cfg.limits.clientHelloMaxBytes,
    });
    this.observer.peeked("tls", out);
    if (out.kind !== "ok") {
      this.countBad(out.kind, socket, out.kind === "invalid" ? out.reason : undefined);
      socket.destroy();
      return;
    }
    const sni = out.value.sni;
    const entry = sni ? this.router.lookupHost("tls", sni) : undefined;
    if (!entry) {
      this.stats.noRoute++;
      socket.end(TLS_ALERT_UNRECOGNIZED_NAME);
      return;
    }
    await this.forward(socket, entry, sni ?? undefined, out.bytes, () => socket.end(TLS_ALERT_UNRECOGNIZED_NAME));
  }

  async onHttp(socket: net.Socket): Promise<void> {
    if (!this.admit(socket)) return;
    // The parser's own cap sits one byte above the peek's, so an oversized head is
    // reported by the peek as too-large (431), not by the parser as invalid (400).
    const out = await peek(socket, (b) => parseHttpHead(b, this.cfg.limits.httpHeaderMaxBytes + 1), {
      timeoutMs: this.cfg.limits.httpHeaderTimeoutMs,
      maxBytes: this.cfg.limits.httpHeaderMaxBytes,
    });
    this.observer.peeked("http", out);
    if (out.kind !== "ok") {
      this.countBad(out.kind, socket, out.kind === "invalid" ? out.reason : undefined);
      if (out.kind === "invalid") socket.end(httpErrorResponse(400, "Bad Request", "The request could not be read."));
      else if (out.kind === "too-large") socket.end(httpErrorResponse(431, "Request Header Fields Too Large", "The request head is too large."));
      else if (out.kind === "timeout") socket.end(httpErrorResponse(408, "Request Timeout", "The request head did not arrive in time."));
      else socket.destroy();
      return;
    }
    const { host, path } = out.value;
    if (path.startsWith(ACME_CHALLENGE_PREFIX)) {
      const answer = this.acmeTokens.get(path.slice(ACME_CHALLENGE_PREFIX.length));
      if (answer !== undefined) {
        socket.end(`HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: ${Buffer.byteLength(answer)}\r\nConnection: close\r\n\r\n${answer}`);
        return;
      }
    }
    const notFound = (): void => {
      socket.end(httpErrorResponse(404, "Not Found", `No capsul serves ${host ?? "this request"} here.`));
    };
    const entry = host ? this.router.lookupHost("http", host) : undefined;
    if (!entry) {
      this.stats.noRoute++;
      notFound();
      return;
    }
    await this.forward(socket, entry, host ?? undefined, out.bytes, () => {
      socket.end(httpErrorResponse(502, "Bad Gateway", `The home server for ${host} is offline. Try again shortly.`));
    });
  }

  async onTcp(socket: net.Socket, port: number): Promise<void> {
    if (!this.admit(socket)) return;
    socket.pause();
    const entry = this.router.lookupPort(port);
    if (!entry) {
      this.stats.noRoute++;
      socket.destroy();
      return;
    }
    await this.forward(socket, entry, undefined, Buffer.alloc(0), () => socket.destroy());
  }

  private async forward(socket: net.Socket, entry: RouteEntry, host: string | undefined, bytes: Buffer, offline: () => void): Promise<void> {
    let session = this.sessionFor(entry.cog);
    if (session instanceof Promise) session = await session;
    if (!session || session.closed || socket.destroyed) {
      this.stats.cogOffline++;
      if (!socket.destroyed) offline();
      return;
    }
    let stream;
    try {
      stream = session.open();
    } catch {
      this.stats.cogOffline++;
      offline();
      return;
    }
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
    // The peeked bytes go first and in the same write as the header, so the
    // backend sees the ClientHello / request head exactly as the visitor sent it.
    stream.write(bytes.length ? Buffer.concat([encodeMessage(header), bytes]) : encodeMessage(header));
    splice(socket, stream, undefined, this.cfg.limits.spliceQueueBytes);
    this.observer.forwarded(socket, entry, stream);
  }

  private countBad(kind: string, socket: net.Socket, reason?: string): void {
    if (kind === "timeout") this.stats.peekTimeout++;
    else if (kind !== "closed") this.stats.badHello++;
    if (kind === "invalid" || kind === "too-large") {
      this.log.debug("bad visitor hello", { remote: socket.remoteAddress, kind, reason });
    }
  }

  /** Ends every visitor connection (hub shutdown). */
  closeAll(): void {
    for (const s of this.sockets) s.destroy();
  }
}
