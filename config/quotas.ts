/**
 * The capsul.yaml keys of per-cog visitor limits (gateway/quotas.ts enforces them):
 * hub.limits.max_streams_per_cog, max_connections_per_route, cog_bandwidth and
 * cog_bandwidth_burst for every cog, and hub.cogs[].limits (max_streams,
 * max_connections_per_route, bandwidth, bandwidth_burst) for one: their leaves, and the rules
 * between them (the hub.limits and hub sections resolve them, see ./limits.ts and ./hub.ts).
 */
import { fail, int, rateBytesPerSec, section, sizeBytes, type KeyPath } from "./fields.js";
import type { CogLimits, HubLimits } from "./types.js";
import { fmtBytes } from "./values.js";

// Defaults, stated once: the descriptions in capsul.schema.json and the runtime values use them.
/**
 * A quarter of the default max_visitors (20000), as cog_buffer_budget is a quarter of
 * buffer_budget: it takes four cogs at their limit to fill the hub.
 */
export const DEFAULT_MAX_STREAMS_PER_COG = 5_000;
/**
 * 40% of a cog's streams: a flood at one capsul leaves the cog's other capsuls 3,000; a
 * browser opens ~6 connections per site, so 2,000 is ~330 visitors at the same moment.
 */
export const DEFAULT_MAX_CONNECTIONS_PER_ROUTE = 2_000;
/** Off: a cog's visitors move bytes as fast as the tunnel and the hub allow. */
export const DEFAULT_COG_BANDWIDTH_BYTES_PER_SEC = 0;
/** The bucket holds one second of the rate unless cog_bandwidth_burst says otherwise. */
export const DEFAULT_COG_BANDWIDTH_BURST_MS = 1_000;

/** Below 1 KiB/s a limit is surely a slip ("2" meant as 2 MiB/s is 2 bytes/s). */
export const MIN_BANDWIDTH_BYTES_PER_SEC = 1024;
/**
 * A bucket pays for whole reads (up to 64 KiB from a socket, protocol/splice.ts
 * SOCKET_READ_MAX_BYTES); a smaller burst could not be honoured, every read would overdraw it.
 */
export const MIN_BANDWIDTH_BURST_BYTES = 64 * 1024;

/** The four values as read from one mapping (absent: undefined), under that mapping's key names. */
export interface GivenLimits { maxStreams?: number; perRoute?: number; bandwidth?: number; burst?: number }
/** Keys that differ between hub.limits and hub.cogs[].limits, for error messages. */
interface KeyNames { maxStreams: string; perRoute: string; bandwidth: string; burst: string }
export const HUB_NAMES: KeyNames = { maxStreams: "max_streams_per_cog", perRoute: "max_connections_per_route", bandwidth: "cog_bandwidth", burst: "cog_bandwidth_burst" };
const COG_NAMES: KeyNames = { maxStreams: "max_streams", perRoute: "max_connections_per_route", bandwidth: "bandwidth", burst: "bandwidth_burst" };

/** The burst a bandwidth gets when none is given: one second of it, at least one read. */
export function defaultBurstBytes(bytesPerSec: number): number {
  return bytesPerSec === 0 ? 0 : Math.max(MIN_BANDWIDTH_BURST_BYTES, Math.round((bytesPerSec * DEFAULT_COG_BANDWIDTH_BURST_MS) / 1000));
}

/**
 * The four keys' leaves; the caps' bounds depend on max_visitors and max_streams, so
 * resolveLimits checks them. `defaults` is what the descriptions say of each default.
 */
function leaves(n: KeyNames, who: string, defaults: KeyNames) {
  return {
    maxStreams: int(`Visitor streams ${who} tunnel carries at once; past it its visitors are refused as if the cog were offline (HTTP: 503), so one busy or attacked cog cannot take every slot (default ${defaults.maxStreams}; at most hub.limits.max_visitors).`,
      { def: undefined, min: 1, rangeBySection: true }),
    perRoute: int(`Visitor connections open at once to one route of ${who} (one hostname's tls or http route, one tcp port), refused the same way: one capsul's flood leaves the cog's others room (default ${defaults.perRoute}; at most ${n.maxStreams}).`,
      { def: undefined, min: 1, rangeBySection: true }),
    bandwidth: rateBytesPerSec(`Bytes per second ${who} visitors may move, each direction on its own, all of them together: a token bucket (default ${defaults.bandwidth}; off = unlimited; at least 1KiB/s).`,
      { def: undefined, min: MIN_BANDWIDTH_BYTES_PER_SEC }),
    burst: sizeBytes(`That bucket's size: bytes that pass at full speed before the rate applies (default ${defaults.burst}; at least 64KiB; only with ${n.bandwidth}).`,
      { def: undefined, min: 0 }),
  };
}

const HUB = leaves(HUB_NAMES, "each cog's", {
  maxStreams: `${DEFAULT_MAX_STREAMS_PER_COG}, or max_visitors if smaller`,
  perRoute: `${DEFAULT_MAX_CONNECTIONS_PER_ROUTE}, or max_streams_per_cog if smaller`,
  bandwidth: DEFAULT_COG_BANDWIDTH_BYTES_PER_SEC === 0 ? "off" : `${fmtBytes(DEFAULT_COG_BANDWIDTH_BYTES_PER_SEC)}/s`,
  burst: `${DEFAULT_COG_BANDWIDTH_BURST_MS / 1000}s of cog_bandwidth`,
});
/** hub.limits' four per-cog keys, read by the hub.limits section. */
export const HUB_QUOTA_SHAPE = {
  max_streams_per_cog: HUB.maxStreams, max_connections_per_route: HUB.perRoute, cog_bandwidth: HUB.bandwidth, cog_bandwidth_burst: HUB.burst,
};
const COG = leaves(COG_NAMES, "this cog's", {
  maxStreams: "hub.limits.max_streams_per_cog", perRoute: "hub.limits.max_connections_per_route, or max_streams if smaller",
  bandwidth: "hub.limits.cog_bandwidth", burst: "1s of bandwidth when bandwidth is set here, else hub.limits.cog_bandwidth_burst",
});

/** hub.cogs[].limits: the values given; hub.limits' apply to the rest (resolved by the hub section). */
export const cogLimitsSchema = section("This cog's visitor limits, over the hub-wide ones of hub.limits.", {
  max_streams: COG.maxStreams, max_connections_per_route: COG.perRoute, bandwidth: COG.bandwidth, bandwidth_burst: COG.burst,
}, (o): GivenLimits => ({ maxStreams: o.max_streams, perRoute: o.max_connections_per_route, bandwidth: o.bandwidth, burst: o.bandwidth_burst }));

/**
 * The four values given in one mapping over `base` (the built-in defaults for hub.limits,
 * hub.limits' values for one cog). `at` is the mapping's key path relative to the section
 * whose build calls this; errors name the mapping's own keys.
 */
export function resolveLimits(given: GivenLimits, at: KeyPath, cog: boolean, base: CogLimits, maxVisitors: number): CogLimits {
  const names = cog ? COG_NAMES : HUB_NAMES;
  const maxStreams = given.maxStreams ?? Math.min(base.maxStreams, maxVisitors);
  if (maxStreams < 1 || maxStreams > maxVisitors) fail([...at, names.maxStreams], `out of range (1-${maxVisitors}): ${maxStreams}`);
  // An explicit per-route cap above the cog's streams could never apply: refused. The default follows.
  const maxConnectionsPerRoute = given.perRoute ?? Math.min(base.maxConnectionsPerRoute, maxStreams);
  if (maxConnectionsPerRoute < 1 || maxConnectionsPerRoute > maxStreams) {
    fail([...at, names.perRoute], `out of range (1-${maxStreams}): ${maxConnectionsPerRoute}`);
  }
  const bandwidthBytesPerSec = given.bandwidth ?? base.bandwidthBytesPerSec;
  if (given.burst !== undefined && bandwidthBytesPerSec === 0) {
    fail([...at, names.burst], `has no effect without ${names.bandwidth} (bandwidth is unlimited)`);
  }
  // A new bandwidth brings its own default burst; an inherited one keeps the inherited burst.
  const defBurst = given.bandwidth !== undefined ? defaultBurstBytes(bandwidthBytesPerSec) : base.bandwidthBurstBytes;
  const bandwidthBurstBytes = bandwidthBytesPerSec === 0 ? 0 : given.burst ?? defBurst;
  if (bandwidthBytesPerSec > 0 && bandwidthBurstBytes < MIN_BANDWIDTH_BURST_BYTES) {
    fail([...at, names.burst], `must be at least ${fmtBytes(MIN_BANDWIDTH_BURST_BYTES)} (one socket read is paid for at once), got ${fmtBytes(bandwidthBurstBytes)}`);
  }
  return { maxStreams, maxConnectionsPerRoute, bandwidthBytesPerSec, bandwidthBurstBytes };
}

/** What hub.limits starts from: the built-in defaults above. */
export const BUILT_IN_LIMITS: CogLimits = {
  maxStreams: DEFAULT_MAX_STREAMS_PER_COG,
  maxConnectionsPerRoute: DEFAULT_MAX_CONNECTIONS_PER_ROUTE,
  bandwidthBytesPerSec: DEFAULT_COG_BANDWIDTH_BYTES_PER_SEC,
  bandwidthBurstBytes: defaultBurstBytes(DEFAULT_COG_BANDWIDTH_BYTES_PER_SEC),
};

/** hub.limits' per-cog limits as one cog's: what a cog not in hub.cogs gets. */
export function hubCogLimits(l: HubLimits): CogLimits {
  return {
    maxStreams: l.maxStreamsPerCog,
    maxConnectionsPerRoute: l.maxConnectionsPerRoute,
    bandwidthBytesPerSec: l.cogBandwidthBytesPerSec,
    bandwidthBurstBytes: l.cogBandwidthBurstBytes,
  };
}
