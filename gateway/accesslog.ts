/**
 * The hub's access log (hub.access_log, default off): one line per visitor connection,
 * written when it closes, never per chunk. What a connection did is kept in one small
 * record made at accept only when the access log is on; with it off, the connection
 * carries `null` and nothing else is kept or written (bench/RESULTS.md, "Access log").
 *
 * A line: `INFO  [hub/access] visitor source=203.0.113.7 listener=tls host=blog.example.org
 * cog=home1 route=blog in_bytes=5120 out_bytes=1048576 duration_ms=812 outcome=ok`.
 * Connections refused at accept (max_visitors, per-source caps) never become visitors:
 * they have the refusal log's rate-limited lines (gateway/sources.ts RefusalLog) instead.
 */
import type net from "node:net";
import type { Logger } from "../lib/log.js";
import type { RouteEntry } from "./router.js";

/** How a visitor connection ended, as the access log names it. */
export type AccessOutcome =
  /** Spliced to its cog until either side closed. */
  | "ok"
  /** Closed by the visitor before its first bytes were read (a scanner, a health check). */
  | "closed"
  /** A ClientHello or HTTP head that does not parse, or is larger than the peek allows. */
  | "bad-hello"
  /** Its first bytes did not arrive within client_hello_timeout / http_header_timeout. */
  | "peek-timeout"
  /** No cog serves its SNI, Host or port. */
  | "no-route"
  /** The cog that serves it has no tunnel (after the grace period). */
  | "cog-offline"
  /** Over its cog's streams or its route's connections (hub.limits / hub.cogs[].limits). */
  | "busy"
  /** An ACME HTTP-01 challenge the hub answered itself. */
  | "acme"
  /** Cut after idle_timeout without a byte either way. */
  | "idle-timeout"
  /** Cut to bring the buffered bytes back within buffer_budget / cog_buffer_budget. */
  | "shed";

export interface AccessRecord {
  readonly listener: "tls" | "http" | "tcp";
  /** performance.now() at accept. */
  readonly startedAt: number;
  outcome: AccessOutcome;
  /** SNI or Host, as the visitor sent it. */
  host?: string;
  /** The hub port, for tcp. */
  port?: number;
  entry?: RouteEntry;
}

export function accessRecord(listener: AccessRecord["listener"], port?: number): AccessRecord {
  return { listener, startedAt: performance.now(), outcome: "closed", port };
}

/** The one line for a connection that closed: bytes as its socket counted them (`in`: from the visitor). */
export function logAccess(log: Logger, r: AccessRecord, source: string, socket: net.Socket): void {
  log.info("visitor", {
    source,
    listener: r.listener,
    host: r.host,
    port: r.port,
    cog: r.entry?.cog,
    route: r.entry?.route,
    in_bytes: socket.bytesRead,
    out_bytes: socket.bytesWritten,
    duration_ms: Math.round(performance.now() - r.startedAt),
    outcome: r.outcome,
  });
}
