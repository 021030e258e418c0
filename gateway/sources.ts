/**
 * Per-source limits on the public listeners: concurrent connections per source
 * (hub.limits.max_visitors_per_ip) and, of those, connections still being peeked,
 * i.e. that have not yet sent a whole ClientHello or HTTP request head
 * (hub.limits.max_unpeeked_per_ip). Plus the throttle that logs a refusal at most once
 * per source per hub.limits.refusal_log_interval.
 *
 * A source is an IPv4 address, or an IPv6 /64: one IPv6 host usually holds a whole /64
 * (SLAAC, privacy addresses), so per-address counting would not limit it at all.
 * Counting is per connection (admit, peek done, close), never per chunk.
 */
import net from "node:net";
import type { Fields, Logger } from "../lib/log.js";

/** The source a visitor counts against: "192.0.2.7", or "2001:db8:1:2::/64". */
export function sourceKey(addr: string | undefined): string {
  if (addr === undefined || addr === "") return "unknown";
  if (addr.startsWith("::ffff:") && net.isIPv4(addr.slice(7))) return addr.slice(7);
  if (!addr.includes(":")) return addr;
  // Expand "a:b::c" to its 8 groups; keep the first 4 (the /64).
  const [head, tail] = addr.split("::", 2) as [string, string | undefined];
  const h = head === "" ? [] : head.split(":");
  const t = tail === undefined || tail === "" ? [] : tail.split(":");
  const groups = tail === undefined ? h : [...h, ...Array<string>(Math.max(0, 8 - h.length - t.length)).fill("0"), ...t];
  return `${groups.slice(0, 4).map((g) => (parseInt(g, 16) || 0).toString(16)).join(":")}::/64`;
}

interface Counts {
  open: number;
  unpeeked: number;
}

export type SourceVerdict = "ok" | "per-source" | "unpeeked";

export class SourceLimits {
  private readonly counts = new Map<string, Counts>();

  constructor(private maxPerSource: number, private maxUnpeekedPerSource: number) {}

  /** New caps (a reload): they decide the next admissions; open connections stay. */
  setLimits(maxPerSource: number, maxUnpeekedPerSource: number): void {
    this.maxPerSource = maxPerSource;
    this.maxUnpeekedPerSource = maxUnpeekedPerSource;
  }

  /** A new connection from `key`; `peeking` if it starts un-peeked (TLS, HTTP). Counted only when "ok". */
  admit(key: string, peeking: boolean): SourceVerdict {
    let c = this.counts.get(key);
    if (c !== undefined) {
      if (c.open >= this.maxPerSource) return "per-source";
      if (peeking && c.unpeeked >= this.maxUnpeekedPerSource) return "unpeeked";
    } else {
      c = { open: 0, unpeeked: 0 };
      this.counts.set(key, c);
    }
    c.open++;
    if (peeking) c.unpeeked++;
    return "ok";
  }

  /** The connection's peek finished (whatever its outcome). */
  peeked(key: string): void {
    const c = this.counts.get(key);
    if (c !== undefined && c.unpeeked > 0) c.unpeeked--;
  }

  /** The connection closed; `stillPeeking` if its peek had not finished. */
  closed(key: string, stillPeeking: boolean): void {
    const c = this.counts.get(key);
    if (c === undefined) return;
    c.open--;
    if (stillPeeking && c.unpeeked > 0) c.unpeeked--;
    if (c.open <= 0) this.counts.delete(key);
  }

  /** Open connections from `key` (tests, metrics). */
  openFrom(key: string): number {
    return this.counts.get(key)?.open ?? 0;
  }

  /** Sources with at least one open connection. */
  get sources(): number {
    return this.counts.size;
  }
}

/**
 * Sources remembered by the refusal-log throttle. Each entry is ~100 bytes; past this many,
 * entries older than the interval are dropped, and if all are younger the line is not
 * logged (the refusal is still counted in VisitorStats): a flood from 10,000 sources logs
 * at most 10,000 lines per interval, not one per connection.
 */
export const REFUSAL_LOG_MAX_SOURCES = 10_000;

/** Logs a refusal at most once per source (or per cog or route: warnFor) per interval. */
export class RefusalLog {
  private readonly last = new Map<string, number>();

  constructor(private readonly log: Logger, private intervalMs: number, private readonly now: () => number = Date.now) {}

  /** A new interval (a reload), for the next line of each source. */
  setInterval(intervalMs: number): void {
    this.intervalMs = intervalMs;
  }

  warn(source: string, msg: string, fields: Record<string, unknown>): void {
    this.warnFor(source, msg, { source, ...fields });
  }

  /** At most once per `key` (a source, a cog, a route) and message per interval; `fields` as given. */
  warnFor(key: string, msg: string, fields: Record<string, unknown>, level: "warn" | "info" = "warn"): void {
    const now = this.now();
    const k = `${msg}\u0000${key}`;
    const seen = this.last.get(k);
    if (seen !== undefined && now - seen < this.intervalMs) return;
    if (seen === undefined && this.last.size >= REFUSAL_LOG_MAX_SOURCES) {
      for (const [old, t] of this.last) if (now - t >= this.intervalMs) this.last.delete(old);
      if (this.last.size >= REFUSAL_LOG_MAX_SOURCES) return;
    }
    this.last.delete(k); // re-insert: the map stays in last-logged order
    this.last.set(k, now);
    this.log[level](msg, fields as Fields);
  }
}
