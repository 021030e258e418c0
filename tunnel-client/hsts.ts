/**
 * HTTPS with HSTS for a `tls: terminate` route whose target speaks plain HTTP:
 * a small HTTP/1.1 reverse proxy (Node's http server on the decrypted socket,
 * Node's http client to the target) that adds `Strict-Transport-Security` to
 * every response (RFC 6797 §6.1; only over TLS: §7.2 forbids it on plain HTTP).
 *
 * Why a proxy and not a splice: the header must go into every response head of
 * a kept-alive connection, and finding response boundaries (Content-Length,
 * chunked, HEAD, 1xx/204/304) is exactly what llhttp already does. Routes without
 * `hsts` are spliced byte for byte instead (tunnel-client/terminate.ts).
 *
 * Each visitor connection gets its own upstream connection (an agent with one
 * socket), so a PROXY header from the route still describes exactly one
 * visitor. Upgrades (WebSocket) are spliced raw after the request head.
 */
import http from "node:http";
import net from "node:net";
import type { Duplex } from "node:stream";
import type { Logger } from "../lib/log.js";
import type { VisitorHeader } from "../protocol/control.js";
import { splice } from "../protocol/splice.js";
import { proxyHeader, type Target } from "./target.js";

/** RFC 9110 §7.6.1 connection-specific fields, never forwarded; plus the HSTS field we set ourselves. */
const HOP_BY_HOP = new Set(["connection", "keep-alive", "proxy-connection", "transfer-encoding", "te", "trailer", "upgrade"]);

export interface HstsOptions {
  /** cog.target_dial_timeout */
  dialTimeoutMs: number;
  /** cog.splice_queue, for upgraded connections */
  spliceQueueBytes: number;
  /** cog.terminate.http_keepalive_timeout */
  keepAliveTimeoutMs: number;
  /** cog.terminate.handshake_timeout: also the deadline for each request head */
  headersTimeoutMs: number;
  log: Logger;
}

interface Conn { route: Target; h: VisitorHeader; maxAgeSec: number; agent: http.Agent }

/** The raw header list without hop-by-hop fields (and without those the Connection field names). */
function forwardable(raw: string[], drop: readonly string[] = []): string[] {
  const named = new Set(drop);
  for (let i = 0; i < raw.length; i += 2) {
    if (raw[i]!.toLowerCase() === "connection") for (const t of raw[i + 1]!.split(",")) named.add(t.trim().toLowerCase());
  }
  const out: string[] = [];
  for (let i = 0; i < raw.length; i += 2) {
    const k = raw[i]!.toLowerCase();
    if (HOP_BY_HOP.has(k) || named.has(k)) continue;
    out.push(raw[i]!, raw[i + 1]!);
  }
  return out;
}

export class HstsProxy {
  private readonly server: http.Server;
  private readonly conns = new WeakMap<Duplex, Conn>();

  constructor(private opts: HstsOptions) {
    this.server = http.createServer({ keepAliveTimeout: opts.keepAliveTimeoutMs, headersTimeout: opts.headersTimeoutMs, requestTimeout: 0 });
    this.server.keepAliveTimeout = opts.keepAliveTimeoutMs;
    this.server.on("request", (req, res) => this.onRequest(req, res));
    this.server.on("upgrade", (req: http.IncomingMessage, socket: Duplex, head: Buffer) => this.onUpgrade(req, socket, head));
    this.server.on("clientError", (_err, socket: Duplex) => socket.destroy());
  }

  /** Serves HTTP on `sock` (the decrypted side of a terminated connection) for `route`. */
  accept(sock: Duplex, route: Target, h: VisitorHeader, maxAgeSec: number): void {
    const agent = new http.Agent({ keepAlive: true, maxSockets: 1 });
    agent.createConnection = () => this.dial(route, h);
    this.conns.set(sock, { route, h, maxAgeSec, agent });
    sock.once("close", () => agent.destroy());
    this.server.emit("connection", sock);
  }

  /** A connection to the target with the route's PROXY header queued first. */
  private dial(route: Target, h: VisitorHeader): net.Socket {
    const s = net.connect({ host: route.target.host, port: route.target.port });
    s.setNoDelay(true);
    const timer = setTimeout(() => s.destroy(new Error("dial timeout")), this.opts.dialTimeoutMs);
    s.once("connect", () => clearTimeout(timer));
    s.once("close", () => clearTimeout(timer));
    const ph = proxyHeader(route, h);
    if (ph) s.write(ph);
    return s;
  }

  private onRequest(req: http.IncomingMessage, res: http.ServerResponse): void {
    const c = this.conns.get(req.socket);
    if (!c) { res.destroy(); return; }
    const up = http.request({
      agent: c.agent, method: req.method, path: req.url, setHost: false,
      headers: forwardable(req.rawHeaders) as unknown as http.OutgoingHttpHeaders,
    }, (ures) => {
      const headers = forwardable(ures.rawHeaders, ["strict-transport-security"]);
      headers.push("Strict-Transport-Security", `max-age=${c.maxAgeSec}`);
      res.writeHead(ures.statusCode ?? 502, ures.statusMessage, headers);
      ures.pipe(res);
      ures.on("error", () => res.destroy());
    });
    up.on("error", (err) => {
      this.opts.log.warn("target unreachable", { route: c.h.route, target: `${c.route.target.host}:${c.route.target.port}`, error: err.message });
      if (res.headersSent) { res.destroy(); return; }
      const body = "The site behind this address is not answering.\n";
      res.writeHead(502, { "Content-Type": "text/plain", "Content-Length": Buffer.byteLength(body), "Strict-Transport-Security": `max-age=${c.maxAgeSec}` });
      res.end(body);
    });
    res.on("close", () => { if (!res.writableFinished) up.destroy(); });
    req.pipe(up);
  }

  private onUpgrade(req: http.IncomingMessage, socket: Duplex, head: Buffer): void {
    const c = this.conns.get(socket);
    if (!c) { socket.destroy(); return; }
    const target = this.dial(c.route, c.h);
    target.once("error", () => socket.destroy());
    const lines = [`${req.method} ${req.url} HTTP/${req.httpVersion}`];
    for (let i = 0; i < req.rawHeaders.length; i += 2) lines.push(`${req.rawHeaders[i]}: ${req.rawHeaders[i + 1]}`);
    target.write(Buffer.concat([Buffer.from(lines.join("\r\n") + "\r\n\r\n", "latin1"), head]));
    splice(socket, target, undefined, this.opts.spliceQueueBytes);
  }

  /** New options (a reload of capsul.yaml): connections from now on, and the next request of kept-alive ones. */
  setOptions(opts: HstsOptions): void {
    this.opts = opts;
    this.server.keepAliveTimeout = opts.keepAliveTimeoutMs;
    this.server.headersTimeout = opts.headersTimeoutMs;
  }

  close(): void {
    this.server.close();
  }
}
