/**
 * Admission to the tunnel port for strangers (DESIGN "Trust boundaries"): every
 * connection counts as unauthenticated from TCP accept, through the TLS
 * handshake, until its hello was accepted with a valid certificate or its
 * enrollment was processed. Over the hub-wide or the per-source cap a
 * connection is closed at once, before any TLS work. What strangers cause is
 * logged at most once per source and interval, so a flood cannot flood the log.
 */
import { isIPv6 } from "node:net";
import type { Logger, Fields } from "../lib/log.js";

/** Default of hub.tunnel.max_unauthenticated. Each one holds a TLS context and a mux session (~150 KB). */
export const MAX_UNAUTHENTICATED = 512;
/** Default of hub.tunnel.max_unauthenticated_per_ip: a household or a small NAT with several cogs reconnecting at once. */
export const MAX_UNAUTHENTICATED_PER_IP = 16;
/**
 * A refused or misbehaving source is logged at most once per this interval, with the
 * number of events left out since. Not a config key: it limits our log, not a peer.
 */
export const STRANGER_LOG_INTERVAL_MS = 60_000;
/** Sources remembered for that purpose; past this the memory is forgotten at once (a flood from many addresses). */
export const STRANGER_LOG_SOURCES_MAX = 10_000;

/**
 * The address a cap counts against: IPv4 as is (IPv4-mapped IPv6 included), IPv6 by its
 * /64, the smallest block a site is usually given, so one attacker cannot use 2^64 addresses.
 */
export function sourceKey(address: string | undefined): string {
  if (!address) return "?";
  const a = address.replace(/%.*$/, "").toLowerCase();
  const mapped = /^::ffff:(\d+\.\d+\.\d+\.\d+)$/.exec(a);
  if (mapped) return mapped[1]!;
  if (!isIPv6(a)) return a;
  const [head, tail] = a.includes("::") ? a.split("::") as [string, string] : [a, undefined];
  const left = head ? head.split(":") : [];
  const right = tail ? tail.split(":") : [];
  const missing = 8 - left.length - right.length;
  const groups = tail === undefined ? left : [...left, ...Array<string>(missing).fill("0"), ...right];
  return groups.slice(0, 4).map((g) => parseInt(g, 16).toString(16)).join(":") + "::/64";
}

/** Logs an event at most once per source and STRANGER_LOG_INTERVAL_MS, counting what it left out. */
export class ThrottledLog {
  private readonly last = new Map<string, { at: number; skipped: number }>();

  constructor(private readonly log: Logger, private readonly clock: () => number = Date.now) {}

  /** `kind` tells events apart for throttling (default: the message itself). */
  warn(source: string, what: string, fields: Fields = {}, kind = what): void {
    const key = `${kind}\u0000${source}`;
    const now = this.clock();
    const seen = this.last.get(key);
    if (seen && now - seen.at < STRANGER_LOG_INTERVAL_MS) {
      seen.skipped++;
      return;
    }
    if (this.last.size >= STRANGER_LOG_SOURCES_MAX) this.last.clear();
    this.last.set(key, { at: now, skipped: 0 });
    this.log.warn(what, { source, ...fields, ...(seen?.skipped ? { notLogged: seen.skipped } : {}) });
  }
}

/** One admitted connection's place under the caps; release() is idempotent. */
export interface AdmissionTicket {
  readonly source: string;
  release(): void;
}

export class TunnelAdmission {
  private total = 0;
  private readonly perSource = new Map<string, number>();
  /** Connections closed at accept since start, by the cap they hit (metrics). */
  readonly refused = { total: 0, perSource: 0 };

  constructor(
    private maxTotal: number,
    private maxPerSource: number,
    private readonly log: ThrottledLog,
  ) {}

  /** New caps (a reload); connections already admitted keep their tickets. */
  setLimits(maxTotal: number, maxPerSource: number): void {
    this.maxTotal = maxTotal;
    this.maxPerSource = maxPerSource;
  }

  /** Connections admitted and not yet released. */
  get unauthenticated(): number {
    return this.total;
  }

  /** A ticket, or null (and a throttled log line) when a cap is reached. */
  admit(address: string | undefined): AdmissionTicket | null {
    const source = sourceKey(address);
    const mine = this.perSource.get(source) ?? 0;
    if (this.total >= this.maxTotal) {
      this.refused.total++;
      this.log.warn(source, "tunnel connection refused: too many unauthenticated tunnel connections (hub.tunnel.max_unauthenticated)", { limit: this.maxTotal });
      return null;
    }
    if (mine >= this.maxPerSource) {
      this.refused.perSource++;
      this.log.warn(source, "tunnel connection refused: too many unauthenticated tunnel connections from this source (hub.tunnel.max_unauthenticated_per_ip)", { limit: this.maxPerSource });
      return null;
    }
    this.total++;
    this.perSource.set(source, mine + 1);
    let held = true;
    return {
      source,
      release: () => {
        if (!held) return;
        held = false;
        this.total--;
        const n = (this.perSource.get(source) ?? 1) - 1;
        if (n <= 0) this.perSource.delete(source);
        else this.perSource.set(source, n);
      },
    };
  }
}
