/**
 * What gateway/visitors.ts tells an observer (gateway/metrics.ts) about each visitor:
 * two calls per connection, none per byte. The observer keeps its own counts and reads
 * socket byte counters only when the connection closes or a scrape asks.
 */
import type { Socket } from "node:net";
import type { Duplex } from "node:stream";
import type { PeekOutcome } from "./peek.js";
import type { RouteEntry } from "./router.js";

/** How a peek ended: the peek's own outcome, or "no-name" for a good hello/head without SNI/Host. */
export type PeekResult = PeekOutcome<unknown>["kind"] | "no-name";

export interface VisitorObserver {
  /** The ClientHello (tls) or request head (http) peek of one visitor ended. */
  peeked(listener: "tls" | "http", result: PeekResult): void;
  /** A visitor is spliced to `stream` for `entry`; called once, after splice() is wired. */
  forwarded(socket: Socket, entry: RouteEntry, stream: Duplex): void;
}

export const NO_VISITOR_OBSERVER: VisitorObserver = { peeked() {}, forwarded() {} };
