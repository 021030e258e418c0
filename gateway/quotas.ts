/**
 * What one cog's visitors may take, whoever they are (config/quotas.ts has the keys):
 * - streams: visitor streams its tunnel carries at once (max_streams_per_cog);
 * - connections per route: visitors of one route open at once (max_connections_per_route),
 *   counted from the route lookup, so visitors waiting out a reconnect's grace period count;
 * - bandwidth: one token bucket per direction, shared by all its visitors (cog_bandwidth);
 *   a cog without a limit has none, and its visitors take the plain splice
 *   (protocol/splice.ts), not the throttled one (protocol/throttle.ts).
 * gateway/visitors.ts asks before it opens a stream and answers a refusal as "cog offline"
 * (HTTP 503). Counting is per connection and per stream (open, close), never per chunk.
 *
 * A cog's state (its stream count and buckets) lives as long as the hub: a bucket dropped
 * with its last visitor would come back full, and a cog making short connections one
 * after another would get a whole burst each time. One entry per cog that ever had a
 * visitor; cogs are enrolled by the operator, so this is bounded.
 */
import type { CogLimits, HubConfig } from "../config/types.js";
import { hubCogLimits } from "../config/quotas.js";
import { MUX_INITIAL_WINDOW_BYTES } from "../protocol/mux.js";
import { TokenBucket } from "../protocol/throttle.js";
import type { RouteEntry } from "./router.js";

/**
 * A throttled cog's visitor streams get a receive window of at most this many milliseconds of
 * its bandwidth (never below the spec's 256 KiB): a window needs only rate x round trip to keep
 * the rate, and whatever sits in it beyond that waits in the hub's memory for the bucket.
 */
export const THROTTLED_WINDOW_MS = 1_000;

/** The buckets of one throttled cog: toward its visitors (downloads) and from them (uploads). */
export interface CogThrottle {
  readonly toVisitors: TokenBucket;
  readonly fromVisitors: TokenBucket;
  /** Largest receive window for its visitor streams (THROTTLED_WINDOW_MS of its bandwidth). */
  readonly windowMaxBytes: number;
}

/** One cog's live counts and buckets. */
export class CogSlots {
  streams = 0;
  limits!: CogLimits;
  /** Where its limits are set, for log lines: "hub.limits", or "hub.cogs[2].limits". */
  configPath!: string;
  throttle: CogThrottle | null = null;

  constructor(readonly cog: string, limits: CogLimits, configPath: string, private readonly onDry: () => void) {
    this.set(limits, configPath);
  }

  /**
   * New limits (at start, or after a reload): the counts stay, new buckets apply to visitors
   * that come after (a splice keeps the buckets it started with until it ends).
   */
  set(limits: CogLimits, configPath: string): void {
    const old = this.limits;
    this.limits = limits;
    this.configPath = configPath;
    if (old !== undefined && old.bandwidthBytesPerSec === limits.bandwidthBytesPerSec && old.bandwidthBurstBytes === limits.bandwidthBurstBytes) return;
    const rate = limits.bandwidthBytesPerSec;
    this.throttle = rate === 0 ? null : {
      toVisitors: new TokenBucket(rate, limits.bandwidthBurstBytes, this.onDry),
      fromVisitors: new TokenBucket(rate, limits.bandwidthBurstBytes, this.onDry),
      windowMaxBytes: Math.max(MUX_INITIAL_WINDOW_BYTES, Math.floor((rate * THROTTLED_WINDOW_MS) / 1000)),
    };
  }

  /** The key of its stream limit under configPath. */
  get streamsKey(): string {
    return this.configPath === "hub.limits" ? "max_streams_per_cog" : "max_streams";
  }
}

export class Quotas {
  private readonly cogs = new Map<string, CogSlots>();
  /** Open connections per route, by routeKey(); an entry goes with its last connection. */
  private readonly routes = new Map<string, number>();

  /** `onDry(cog)`: a bucket of the cog ran dry, its visitors wait (counted and logged by the caller). */
  constructor(private readonly cfg: HubConfig, private readonly onDry: (cog: string) => void) {}

  /** The cog's slots and buckets, made on its first visitor with its limits from the config. */
  of(cog: string): CogSlots {
    let c = this.cogs.get(cog);
    if (c === undefined) {
      const { limits, path } = this.limitsOf(cog);
      c = new CogSlots(cog, limits, path, () => this.onDry(cog));
      this.cogs.set(cog, c);
    }
    return c;
  }

  private limitsOf(cog: string): { limits: CogLimits; path: string } {
    const i = this.cfg.cogs.findIndex((g) => g.name === cog);
    return i >= 0 ? { limits: this.cfg.cogs[i]!.limits, path: `hub.cogs[${i}].limits` } : { limits: hubCogLimits(this.cfg.limits), path: "hub.limits" };
  }

  /**
   * The config's limits changed (a reload replaced its sections): every cog takes its new
   * ones for the visitors that come next; visitors already in keep their slots.
   */
  reconfigure(): void {
    for (const c of this.cogs.values()) {
      const { limits, path } = this.limitsOf(c.cog);
      c.set(limits, path);
    }
  }

  /**
   * Takes a connection slot of `entry`'s route until release() is called (once, when the
   * visitor's socket closes). False: the route is full; nothing was taken.
   */
  enterRoute(entry: RouteEntry): boolean {
    const key = routeKey(entry);
    const n = this.routes.get(key) ?? 0;
    if (n >= this.of(entry.cog).limits.maxConnectionsPerRoute) return false;
    this.routes.set(key, n + 1);
    return true;
  }

  leaveRoute(entry: RouteEntry): void {
    const key = routeKey(entry);
    const n = (this.routes.get(key) ?? 1) - 1;
    if (n <= 0) this.routes.delete(key);
    else this.routes.set(key, n);
  }

  /** Open connections of a route (tests, status). */
  routeConnections(entry: RouteEntry): number {
    return this.routes.get(routeKey(entry)) ?? 0;
  }

  /** Takes a stream slot of the cog until closeStream(); null: the cog carries max_streams already. */
  openStream(cog: string): CogSlots | null {
    const c = this.of(cog);
    if (c.streams >= c.limits.maxStreams) return null;
    c.streams++;
    return c;
  }

  closeStream(c: CogSlots): void {
    if (c.streams > 0) c.streams--;
  }
}

/** A route entry's key: its cog, kind and name (a cog's route names are unique, kinds kept apart anyway). */
function routeKey(e: RouteEntry): string {
  return `${e.cog}\u0000${e.kind}\u0000${e.route}`;
}
