/**
 * TLS termination on the cog, for routes that say `tls: terminate`. Such a route
 * is announced to the hub twice: as itself (kind tls, by SNI) and as its plain-
 * HTTP side `<name>.http` (kind http, same hostname), so that both ACME
 * challenges reach the cog through the hub's ordinary routing and the hub needs
 * nothing new:
 *
 * - TLS side: read the ClientHello (already in the first bytes, usually). If it
 *   offers ALPN `acme-tls/1` and a TLS-ALPN-01 challenge for the name is open,
 *   answer with the challenge certificate (RFC 8737 §3). Otherwise serve the
 *   name's certificate from memory (swapped on renewal; a handshake uses the
 *   context current when it starts) and send the plaintext to the target:
 *   spliced as is, or through ./hsts.ts when the route wants HSTS.
 * - HTTP side: `/.well-known/acme-challenge/<token>` with an open HTTP-01
 *   token for this name gets the key authorization; anything else gets a 308 to
 *   https:// (redirect_http) or goes to the target as plain HTTP. Only the first
 *   request of a connection is looked at: the redirect and the challenge answer
 *   close the connection, and validators open a fresh connection per request.
 *
 * The certificate's private key is used here and nowhere else; the hub only
 * ever sees the encrypted bytes.
 */
import type net from "node:net";
import type { Duplex } from "node:stream";
import tls from "node:tls";
import type { AcmeManager } from "../certs/acme.js";
import { ACME_HTTP_CHALLENGE_PREFIX, ACME_TLS_ALPN_PROTOCOL } from "../certs/challenges.js";
import type { CogConfig, CogRoute } from "../config/types.js";
import { parseClientHello, TLS_ALERT_INTERNAL_ERROR } from "../gateway/clienthello.js";
import { httpErrorResponse, parseHttpHead } from "../gateway/httphost.js";
import { peek } from "../gateway/peek.js";
import type { Logger } from "../lib/log.js";
import type { VisitorHeader } from "../protocol/control.js";
import { HstsProxy, type HstsOptions } from "./hsts.js";
import { connectTarget, type TargetOptions } from "./target.js";

/** The plain-HTTP side of terminated route NAME is announced as NAME + this; a dot never occurs in a configured route name. */
export const HTTP_SIDE_SUFFIX = ".http";
export const httpSideName = (route: string): string => `${route}${HTTP_SIDE_SUFFIX}`;

export class Terminator {
  private readonly hsts: HstsProxy;
  private targetOpts: TargetOptions;

  /**
   * `cfg`: the cog's live configuration (tunnel-client/cog.ts); reconfigure() after a reload changed it.
   * `onSpliced`: told of each plaintext connection spliced to its target (the cog's metrics; not the hsts proxy's).
   */
  constructor(
    private readonly acme: AcmeManager, private readonly cfg: CogConfig, private readonly log: Logger,
    private readonly onSpliced?: TargetOptions["onSpliced"],
  ) {
    this.targetOpts = { dialTimeoutMs: cfg.targetDialTimeoutMs, spliceQueueBytes: cfg.spliceQueueBytes, log, onSpliced };
    this.hsts = new HstsProxy(this.hstsOptions());
  }

  private hstsOptions(): HstsOptions {
    const cfg = this.cfg;
    return {
      dialTimeoutMs: cfg.targetDialTimeoutMs, spliceQueueBytes: cfg.spliceQueueBytes,
      keepAliveTimeoutMs: cfg.terminate.httpKeepAliveTimeoutMs, headersTimeoutMs: cfg.terminate.handshakeTimeoutMs, log: this.log,
    };
  }

  /** After a reload: the dial and proxy settings built from the configuration, for connections from now on. */
  reconfigure(): void {
    this.targetOpts = { dialTimeoutMs: this.cfg.targetDialTimeoutMs, spliceQueueBytes: this.cfg.spliceQueueBytes, log: this.log, onSpliced: this.onSpliced };
    this.hsts.setOptions(this.hstsOptions());
  }

  /**
   * The stream for peek(), with `first` (what the header reader took past the
   * header) put back in front. peek() only needs a readable with pause/resume.
   */
  private rewound(stream: Duplex, first: Buffer): net.Socket {
    if (first.length) stream.unshift(first);
    return stream as net.Socket;
  }

  /** A visitor on the TLS side of `route`. */
  tls(stream: Duplex, h: VisitorHeader, first: Buffer, route: CogRoute): void {
    this.serveTls(stream, h, first, route).catch((err: Error) => this.failed(stream, route, err));
  }

  /** A visitor on the plain-HTTP side of `route`. */
  http(stream: Duplex, h: VisitorHeader, first: Buffer, route: CogRoute): void {
    this.serveHttp(stream, h, first, route).catch((err: Error) => this.failed(stream, route, err));
  }

  private failed(stream: Duplex, route: CogRoute, err: Error): void {
    this.log.warn("terminated route failed a visitor", { route: route.name, error: err.message });
    stream.destroy();
  }

  private async serveTls(stream: Duplex, h: VisitorHeader, first: Buffer, route: CogRoute): Promise<void> {
    const name = route.hostname!;
    const max = this.cfg.terminate.clientHelloMaxBytes;
    const out = await peek(this.rewound(stream, first), (b) => parseClientHello(b, max), { timeoutMs: this.cfg.terminate.handshakeTimeoutMs, maxBytes: max });
    if (out.kind !== "ok") {
      this.log.debug("bad ClientHello on a terminated route", { route: route.name, kind: out.kind });
      stream.destroy();
      return;
    }
    const challenge = out.value.alpn.includes(ACME_TLS_ALPN_PROTOCOL) ? this.acme.challenges.alpnContext(name) : undefined;
    const context = challenge ?? this.acme.secureContext(name);
    if (!context) {
      this.log.debug("no certificate yet for a terminated route", { route: route.name, name });
      stream.end(TLS_ALERT_INTERNAL_ERROR);
      return;
    }
    stream.unshift(out.bytes);
    const sock = new tls.TLSSocket(stream, {
      isServer: true,
      secureContext: context,
      // RFC 8737 §3: the challenge handshake must negotiate acme-tls/1; ordinary ones negotiate no ALPN (plain HTTP/1.1 or any TCP).
      ALPNProtocols: challenge ? [ACME_TLS_ALPN_PROTOCOL] : undefined,
    });
    // protocol/splice.ts aborts a net.Socket with resetAndDestroy(), which throws on a
    // TLS socket (its handle is no TCP handle); there is no TCP RST to send from here
    // anyway: destroying the TLS socket resets the mux stream under it.
    sock.resetAndDestroy = function (this: tls.TLSSocket) { return this.destroy(); };
    sock.on("error", (err) => {
      this.log.debug("terminated TLS connection failed", { route: route.name, error: err.message });
    });
    sock.once("close", () => stream.destroy());
    const timer = setTimeout(() => sock.destroy(), this.cfg.terminate.handshakeTimeoutMs);
    sock.once("close", () => clearTimeout(timer));
    sock.once("secure", () => {
      clearTimeout(timer);
      if (challenge) {
        // The validator has what it came for: the certificate it checked during the handshake.
        this.log.debug("answered a TLS-ALPN-01 challenge", { name });
        sock.end();
        return;
      }
      const t = route.terminate!;
      if (t.hstsMaxAgeSec > 0) this.hsts.accept(sock, route, h, t.hstsMaxAgeSec);
      else connectTarget(sock, route, h, Buffer.alloc(0), this.targetOpts);
    });
  }

  private async serveHttp(stream: Duplex, h: VisitorHeader, first: Buffer, route: CogRoute): Promise<void> {
    const name = route.hostname!;
    const max = this.cfg.terminate.httpHeaderMaxBytes;
    // The parser's cap sits one byte above the peek's, as on the hub: an oversized head is too-large, not invalid.
    const out = await peek(this.rewound(stream, first), (b) => parseHttpHead(b, max + 1), { timeoutMs: this.cfg.terminate.handshakeTimeoutMs, maxBytes: max });
    if (out.kind !== "ok") {
      if (out.kind === "invalid") stream.end(httpErrorResponse(400, "Bad Request", "The request could not be read."));
      else if (out.kind === "too-large") stream.end(httpErrorResponse(431, "Request Header Fields Too Large", "The request head is too large."));
      else if (out.kind === "timeout") stream.end(httpErrorResponse(408, "Request Timeout", "The request head did not arrive in time."));
      else stream.destroy();
      return;
    }
    const path = out.value.path;
    if (path.startsWith(ACME_HTTP_CHALLENGE_PREFIX)) {
      const token = path.slice(ACME_HTTP_CHALLENGE_PREFIX.length).split("?")[0]!;
      const answer = this.acme.challenges.httpAnswer(name, token);
      if (answer !== undefined) {
        this.log.debug("answered an HTTP-01 challenge", { name });
        stream.end(`HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: ${Buffer.byteLength(answer)}\r\nCache-Control: no-store\r\nConnection: close\r\n\r\n${answer}`);
        return;
      }
    }
    if (route.terminate!.redirectHttp) {
      // The parser admits no control characters or spaces in the target; check anyway, it goes into a header.
      const location = `https://${name}${path.startsWith("/") && !/[\x00-\x20\x7f]/.test(path) ? path : "/"}`;
      const body = `Moved to ${location}\n`;
      // 308 (RFC 9110 §15.4.9), not 301: the method and body are kept, so a POST stays a POST.
      stream.end(`HTTP/1.1 308 Permanent Redirect\r\nLocation: ${location}\r\nContent-Type: text/plain\r\nContent-Length: ${Buffer.byteLength(body)}\r\nConnection: close\r\n\r\n${body}`);
      return;
    }
    connectTarget(stream, route, h, out.bytes, this.targetOpts);
  }

  close(): void {
    this.hsts.close();
  }
}
