/**
 * What gateway/visitors.ts tells an observer (gateway/metrics.ts) about each visitor:
 * two calls per connection, none per byte. The observer keeps its own counts and reads
 * socket byte counters only when the connection closes or a scrape asks.
 */
import type { Socket } from "node:net";
import type { Duplex } from "node:stream";
import type { PeekOutcome } from "./peek.js";
import type { RouteEntry } from "./router.js";

/** What a peek of the TLS listener (SNI) or the HTTP listener (Host) found. */
export type PeekedName = { sni: string | null } | { host: string | null };

export interface VisitorObserver {
  /** The ClientHello (tls) or request head (http) peek of one visitor ended, with this outcome. */
  peeked(listener: "tls" | "http", out: PeekOutcome<PeekedName>): void;
  /** A visitor is spliced to `stream` for `entry`; called once, after splice() is wired. */
  forwarded(socket: Socket, entry: RouteEntry, stream: Duplex): void;
}

export const NO_VISITOR_OBSERVER: VisitorObserver = { peeked() {}, forwarded() {} };
