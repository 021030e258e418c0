/**
 * The admin listener both roles share (hub.listen.admin, cog.listen.admin): a hono app
 * behind four gates, checked in this order, each refusal one line of JSON:
 *
 * 1. Host (403). An IP literal, `localhost`, or one of the names the caller allows (the
 *    hub's domain, the listen host). A DNS-rebinding page (evil.example re-resolved to
 *    127.0.0.1) sends its own name as Host and is refused: on loopback, where no token is
 *    asked, that is what keeps a web page in the operator's browser out. An IP literal
 *    cannot be a rebinding: a page served from that IP is that IP's own origin.
 * 2. Origin (403). Browsers send it on every cross-origin request and on every POST. The
 *    API is for curl, scripts and Prometheus, so a state-changing request (anything but
 *    GET/HEAD) that carries one is refused, whatever its value; so is a GET whose Origin
 *    is not this listener's own. The status page needs no script and no form, so it never
 *    sends one (DESIGN.md "Trust boundaries", the provisioner API's rule).
 * 3. Token (401), when the listener is not on loopback: `Authorization: Bearer TOKEN`, or
 *    basic auth with TOKEN as the password (any user name) so a browser can open the status
 *    page; compared in constant time.
 * 4. Body (413): at most maxBodyBytes, by Content-Length and while a chunked body streams.
 */
import { createHash, timingSafeEqual } from "node:crypto";
import { isIP, type AddressInfo } from "node:net";
import type { Server } from "node:http";
import https from "node:https";
import { serve } from "@hono/node-server";
import { Hono, type Context } from "hono";
import { bodyLimit } from "hono/body-limit";
import type { Logger } from "./log.js";

/** Default deadline for one admin request, headers and body (hub.admin/cog.admin.request_timeout). */
export const ADMIN_REQUEST_TIMEOUT_MS = 10_000;
/** Default cap on concurrent admin connections (hub.admin/cog.admin.max_connections). */
export const ADMIN_MAX_CONNECTIONS = 64;
/** Default largest admin request body (hub.admin.max_request_body); the API's bodies are under 1 KiB. */
export const ADMIN_MAX_REQUEST_BODY_BYTES = 16 * 1024;
/**
 * Node checks request and header deadlines on a timer (30 s by default), so a 10 s deadline
 * could hold a slow client for 40 s; check at a quarter of the deadline, at most once a second.
 */
const TIMEOUT_CHECKS_PER_DEADLINE = 4;
const MAX_TIMEOUT_CHECK_INTERVAL_MS = 1_000;

export function isLoopbackHost(host: string): boolean {
  return host === "localhost" || host === "::1" || /^127\.\d{1,3}\.\d{1,3}\.\d{1,3}$/.test(host);
}

/** The host part of a Host header, lower-case, brackets and trailing dot dropped; null if malformed. */
export function hostOfHeader(header: string): string | null {
  const m = /^(?:\[([0-9a-f:.]+)\]|([a-z0-9.-]+))(?::\d{1,5})?$/i.exec(header.trim());
  if (!m) return null;
  const host = (m[1] ?? m[2]!).toLowerCase().replace(/\.$/, "");
  if (m[1] !== undefined && isIP(host) !== 6) return null;
  return host;
}

export interface GateOptions {
  /** Host names accepted besides IP literals and localhost (lower-case). */
  hostNames: readonly string[];
  /** Required bearer token, or null on loopback. */
  token: string | null;
  maxBodyBytes: number;
  /** Shown by the browser's password prompt. */
  realm: string;
  /** Served over TLS: a browser's same-origin Origin is https://. */
  secure?: boolean;
}

const digest = (s: string): Buffer => createHash("sha256").update(s).digest();

function refuse(c: Context, status: 401 | 403 | 413, code: string, message: string): Response {
  return c.json({ error: { code, message } }, status);
}

/** What the Authorization header carries as the secret: the bearer token, or basic auth's password. */
function presentedSecret(header: string | undefined): string | null {
  if (!header) return null;
  const bearer = /^Bearer +(\S+)$/i.exec(header);
  if (bearer) return bearer[1]!;
  const basic = /^Basic +([A-Za-z0-9+/=]+)$/i.exec(header);
  if (!basic) return null;
  const text = Buffer.from(basic[1]!, "base64").toString("utf8");
  const colon = text.indexOf(":");
  return colon < 0 ? null : text.slice(colon + 1);
}

/** A hono app with the four gates in place; the caller adds its routes. */
export function gatedApp(opts: GateOptions): Hono {
  const app = new Hono();
  const names = new Set(["localhost", ...opts.hostNames.map((n) => n.toLowerCase().replace(/\.$/, ""))]);
  const want = opts.token === null ? null : digest(opts.token);

  app.notFound((c) => c.json({ error: { code: "not_found", message: `no route ${c.req.method} ${c.req.path}` } }, 404));
  app.use("*", async (c, next) => {
    const hostHeader = c.req.header("host") ?? "";
    const host = hostOfHeader(hostHeader);
    if (host === null || !(isIP(host) || names.has(host))) {
      return refuse(c, 403, "bad_host", `this admin listener does not answer for Host ${JSON.stringify(hostHeader)}`);
    }
    const origin = c.req.header("origin");
    if (origin !== undefined) {
      const safe = c.req.method === "GET" || c.req.method === "HEAD";
      if (!safe || origin !== `${opts.secure ? "https" : "http"}://${hostHeader}`) {
        return refuse(c, 403, "browser_request", "requests from web pages (with an Origin header) are refused; use curl or the capsul CLI");
      }
    }
    if (want) {
      const got = presentedSecret(c.req.header("authorization"));
      if (got === null || !timingSafeEqual(digest(got), want)) {
        c.header("WWW-Authenticate", `Basic realm="${opts.realm}", charset="UTF-8"`);
        return refuse(c, 401, "unauthorized", "missing or wrong token: send Authorization: Bearer <the admin-token file in the data dir>");
      }
    }
    await next();
  });
  app.use("*", bodyLimit({
    maxSize: opts.maxBodyBytes,
    onError: (c) => refuse(c, 413, "body_too_large", `request body over ${opts.maxBodyBytes} bytes`),
  }));
  return app;
}

/** A certificate chain and its key, PEM. */
export interface KeyPair { keyPem: string; chainPem: string }

export interface AdminServer {
  readonly port: number;
  /** http://HOST:PORT (https:// with TLS) as bound, for logs and the demo's instructions. */
  readonly url: string;
  /**
   * With TLS: the certificate for the next handshake (connections already open keep theirs).
   * Before the first one, every handshake is refused with an alert and nothing else is read.
   */
  setCertificate(pair: KeyPair): void;
  /** Stops accepting (a reload moved the listener): requests in progress finish, idle keep-alive connections close. */
  stop(): void;
  close(): Promise<void>;
}

/**
 * Serves `app` on `listen` with the request deadline and the connection cap of `limits`;
 * over TLS when `tls` is given (its certificate, or null: none yet, see setCertificate).
 */
export async function serveAdmin(
  app: Hono,
  listen: { host: string; port: number },
  limits: { requestTimeoutMs: number; maxConnections: number },
  log: Logger,
  tls?: { initial: KeyPair | null },
): Promise<AdminServer> {
  const checkMs = Math.max(1, Math.min(MAX_TIMEOUT_CHECK_INTERVAL_MS, Math.floor(limits.requestTimeoutMs / TIMEOUT_CHECKS_PER_DEADLINE)));
  const serverOptions = {
    requestTimeout: limits.requestTimeoutMs,
    headersTimeout: limits.requestTimeoutMs,
    connectionsCheckingInterval: checkMs,
    // The TLS handshake has the same deadline as a request (Node's default is 120 s).
    ...(tls ? { handshakeTimeout: limits.requestTimeoutMs, ...(tls.initial ? { key: tls.initial.keyPem, cert: tls.initial.chainPem } : {}) } : {}),
  };
  const server = await new Promise<Server>((resolve, reject) => {
    const s = serve({
      fetch: app.fetch,
      hostname: listen.host,
      port: listen.port,
      ...(tls ? { createServer: https.createServer } : {}),
      serverOptions,
    } as Parameters<typeof serve>[0], () => resolve(s as Server));
    s.once("error", reject);
  });
  if (tls) {
    // A handshake failing (no certificate yet, a scanner, a client that does not trust it) is the client's business.
    server.on("tlsClientError", (err: Error) => log.debug("admin TLS handshake failed", { error: err.message }));
  }
  server.maxConnections = limits.maxConnections;
  server.on("error", (err) => log.error("admin listener error", { error: err.message }));
  const addr = server.address() as AddressInfo;
  const host = addr.family === "IPv6" ? `[${addr.address}]` : addr.address;
  let closing: Promise<void> | undefined;
  return {
    port: addr.port,
    url: `${tls ? "https" : "http"}://${host}:${addr.port}`,
    setCertificate: (pair) => {
      if (!tls) return;
      // Replaces the context of the next handshakes only: open connections keep the one they made.
      (server as unknown as https.Server).setSecureContext({ key: pair.keyPem, cert: pair.chainPem });
    },
    stop: () => {
      server.close();
      server.closeIdleConnections();
    },
    close: () => {
      closing ??= new Promise<void>((resolve) => {
        server.close(() => resolve());
        // Keep-alive connections (a browser on the status page) would hold close() open.
        server.closeAllConnections();
      });
      return closing;
    },
  };
}
