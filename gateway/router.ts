/**
 * Maps what a visitor asked for to a cog's route. Hostnames: an exact name
 * beats any wildcard; among wildcards the longest suffix wins
 * ("*.alice.hub.example" beats "*.hub.example"). A wildcard covers one or more
 * leading labels. TCP routes are keyed by hub port. Lookups cost O(labels).
 *
 * The router only enforces that one pattern (or port) has one holder; the
 * grants that decide whether a cog may claim a pattern are checked before
 * claim() by gateway/grants.ts.
 */
import type { RouteKind } from "../config/types.js";

export interface RouteEntry {
  cog: string;
  /** The cog's name for the route (sent in the visitor header). */
  route: string;
  kind: RouteKind;
  /** Hostname pattern for tls/http, absent for tcp. */
  pattern?: string;
  /** Hub port for tcp. */
  port?: number;
}

export type ClaimResult = { ok: true } | { ok: false; holder: string };

export class Router {
  private readonly exact: Record<"tls" | "http", Map<string, RouteEntry>> = { tls: new Map(), http: new Map() };
  private readonly wild: Record<"tls" | "http", Map<string, RouteEntry>> = { tls: new Map(), http: new Map() };
  private readonly ports = new Map<number, RouteEntry>();
  /**
   * The entries each cog holds, kept in step with the maps above: entriesOf() and
   * releaseCog() cost O(that cog's routes), not a scan of every route of every cog on each
   * hello, routes message and drop (issue 12: O(N) per event at 1,000 cogs).
   */
  private readonly byCog = new Map<string, Set<RouteEntry>>();

  /** Finds the route for a hostname (already normalized: lower-case, no trailing dot). */
  lookupHost(kind: "tls" | "http", host: string): RouteEntry | undefined {
    const hit = this.exact[kind].get(host);
    if (hit) return hit;
    const wild = this.wild[kind];
    if (wild.size === 0) return undefined;
    // Walk suffixes from the longest: for a.b.c try "b.c", then "c".
    let dot = host.indexOf(".");
    while (dot !== -1) {
      const e = wild.get(host.slice(dot + 1));
      if (e) return e;
      dot = host.indexOf(".", dot + 1);
    }
    return undefined;
  }

  lookupPort(port: number): RouteEntry | undefined {
    return this.ports.get(port);
  }

  /** Claims a hostname pattern or port for a cog; refused when another cog holds it. */
  claim(entry: RouteEntry): ClaimResult {
    const { map, key } = this.slot(entry);
    const cur = map.get(key as never);
    if (cur && cur.cog !== entry.cog) return { ok: false, holder: cur.cog };
    map.set(key as never, entry);
    if (cur) this.unindex(cur);
    let mine = this.byCog.get(entry.cog);
    if (!mine) this.byCog.set(entry.cog, mine = new Set());
    mine.add(entry);
    return { ok: true };
  }

  /** Releases one entry if the given cog holds it. */
  release(entry: RouteEntry): void {
    const { map, key } = this.slot(entry);
    const cur = map.get(key as never);
    if (cur && cur.cog === entry.cog) {
      map.delete(key as never);
      this.unindex(cur);
    }
  }

  /** Every entry a cog holds (a copy: the caller may release them while walking it). */
  entriesOf(cog: string): RouteEntry[] {
    const mine = this.byCog.get(cog);
    return mine ? [...mine] : [];
  }

  private unindex(e: RouteEntry): void {
    const mine = this.byCog.get(e.cog);
    if (!mine) return;
    mine.delete(e);
    if (mine.size === 0) this.byCog.delete(e.cog);
  }

  releaseCog(cog: string): RouteEntry[] {
    const gone = this.entriesOf(cog);
    for (const e of gone) this.release(e);
    return gone;
  }

  private slot(entry: RouteEntry): { map: Map<string, RouteEntry> | Map<number, RouteEntry>; key: string | number } {
    if (entry.kind === "tcp") {
      if (entry.port === undefined) throw new Error("tcp route without port");
      return { map: this.ports, key: entry.port };
    }
    const p = entry.pattern;
    if (p === undefined) throw new Error(`${entry.kind} route without hostname`);
    return p.startsWith("*.") ? { map: this.wild[entry.kind], key: p.slice(2) } : { map: this.exact[entry.kind], key: p };
  }
}
