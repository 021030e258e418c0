/**
 * The capsul.yaml keys of per-cog visitor limits (gateway/quotas.ts enforces them):
 * hub.limits.max_streams_per_cog, max_connections_per_route, cog_bandwidth and
 * cog_bandwidth_burst for every cog, and hub.cogs[].limits (max_streams,
 * max_connections_per_route, bandwidth, bandwidth_burst) for one. Called from ./config.ts;
 * the same rules as there: unknown keys refused, every error names the key path.
 */
import { ConfigError } from "../lib/errors.js";
import type { CogLimits, HubLimits } from "./types.js";
import { at, fmtBytes, integer, mapping, rate, size, type Obj } from "./values.js";

// Defaults. Each one is stated in the doc comment of its field in ./types.ts
// (test/config.test.ts checks that they agree).
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

export const HUB_QUOTA_KEYS = ["max_streams_per_cog", "max_connections_per_route", "cog_bandwidth", "cog_bandwidth_burst"] as const;
export const COG_LIMIT_KEYS = ["max_streams", "max_connections_per_route", "bandwidth", "bandwidth_burst"] as const;

/** Keys that differ between hub.limits and hub.cogs[].limits, for error messages. */
interface KeyNames { maxStreams: string; perRoute: string; bandwidth: string; burst: string }
const HUB_NAMES: KeyNames = { maxStreams: "max_streams_per_cog", perRoute: "max_connections_per_route", bandwidth: "cog_bandwidth", burst: "cog_bandwidth_burst" };
const COG_NAMES: KeyNames = { maxStreams: "max_streams", perRoute: "max_connections_per_route", bandwidth: "bandwidth", burst: "bandwidth_burst" };

/** The burst a bandwidth gets when none is given: one second of it, at least one read. */
export function defaultBurstBytes(bytesPerSec: number): number {
  return bytesPerSec === 0 ? 0 : Math.max(MIN_BANDWIDTH_BURST_BYTES, Math.round((bytesPerSec * DEFAULT_COG_BANDWIDTH_BURST_MS) / 1000));
}

/** Reads the four keys from `m` (hub.limits, or one hub.cogs[].limits) over `base`. */
function readLimits(m: Obj, path: string, names: KeyNames, base: CogLimits, maxVisitors: number): CogLimits {
  const key = (k: keyof KeyNames): unknown => m[names[k]];
  const maxStreams = integer(key("maxStreams"), at(path, names.maxStreams), Math.min(base.maxStreams, maxVisitors), 1, maxVisitors);
  const perRoutePath = at(path, names.perRoute);
  // An explicit per-route cap above the cog's streams could never apply: refused. The default follows.
  const maxConnectionsPerRoute = integer(key("perRoute"), perRoutePath, Math.min(base.maxConnectionsPerRoute, maxStreams), 1, maxStreams);
  const bandwidthSet = key("bandwidth") != null;
  const bandwidthBytesPerSec = rate(key("bandwidth"), at(path, names.bandwidth), base.bandwidthBytesPerSec, MIN_BANDWIDTH_BYTES_PER_SEC);
  const burstPath = at(path, names.burst);
  if (key("burst") != null && bandwidthBytesPerSec === 0) {
    throw new ConfigError(`has no effect without ${names.bandwidth} (bandwidth is unlimited)`, burstPath);
  }
  // A new bandwidth brings its own default burst; an inherited one keeps the inherited burst.
  const defBurst = bandwidthSet ? defaultBurstBytes(bandwidthBytesPerSec) : base.bandwidthBurstBytes;
  const bandwidthBurstBytes = bandwidthBytesPerSec === 0 ? 0 : size(key("burst"), burstPath, defBurst, 0);
  if (bandwidthBytesPerSec > 0 && bandwidthBurstBytes < MIN_BANDWIDTH_BURST_BYTES) {
    throw new ConfigError(`must be at least ${fmtBytes(MIN_BANDWIDTH_BURST_BYTES)} (one socket read is paid for at once), got ${fmtBytes(bandwidthBurstBytes)}`, burstPath);
  }
  return { maxStreams, maxConnectionsPerRoute, bandwidthBytesPerSec, bandwidthBurstBytes };
}

const BUILT_IN: CogLimits = {
  maxStreams: DEFAULT_MAX_STREAMS_PER_COG,
  maxConnectionsPerRoute: DEFAULT_MAX_CONNECTIONS_PER_ROUTE,
  bandwidthBytesPerSec: DEFAULT_COG_BANDWIDTH_BYTES_PER_SEC,
  bandwidthBurstBytes: defaultBurstBytes(DEFAULT_COG_BANDWIDTH_BYTES_PER_SEC),
};

/** hub.limits' four per-cog keys (`m` was checked against hub.limits' own key list). */
export function parseHubQuotas(m: Obj, path: string, maxVisitors: number): CogLimits {
  return readLimits(m, path, HUB_NAMES, BUILT_IN, maxVisitors);
}

/** hub.cogs[i].limits: absent keys take hub.limits' values (`hub`). */
export function parseCogLimits(value: unknown, path: string, hub: CogLimits, maxVisitors: number): CogLimits {
  if (value == null) return hub;
  return readLimits(mapping(value, path, COG_LIMIT_KEYS), path, COG_NAMES, hub, maxVisitors);
}

/** hub.limits' per-cog limits as one cog's: what a cog not in hub.cogs gets. */
export function hubCogLimits(l: HubLimits): CogLimits {
  return {
    maxStreams: l.maxStreamsPerCog,
    maxConnectionsPerRoute: l.maxConnectionsPerRoute,
    bandwidthBytesPerSec: l.cogBandwidthBytesPerSec,
    bandwidthBurstBytes: l.cogBandwidthBurstBytes,
  };
}
