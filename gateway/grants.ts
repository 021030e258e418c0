/**
 * What each cog may announce: hostname patterns and TCP port ranges, from
 * capsul.yaml (hub.cogs), the default grant "<cog>.<domain>" + "*.<cog>.<domain>",
 * and grants stored with `capsul hub invite --hostname/--tcp-ports`.
 * A cog's identity is its certificate's CN, so nothing here trusts the wire.
 */
import type { HubConfig, PortRange } from "../config/types.js";
import { parsePortRange } from "../lib/hostname.js";
import type { HubState } from "./state.js";

export interface CogGrants { hostnames: string[]; tcpPorts: PortRange[]; fromPool: boolean }

/** True if every hostname `route` can match is also matched by `grant`. */
export function patternCovers(grant: string, route: string): boolean {
  if (!grant.startsWith("*.")) return grant === route;
  const suffix = grant.slice(2);
  const tail = route.startsWith("*.") ? route.slice(2) : route;
  return route.startsWith("*.") ? tail === suffix || tail.endsWith("." + suffix) : tail.endsWith("." + suffix);
}

export function inRanges(port: number, ranges: readonly PortRange[]): boolean {
  return ranges.some((r) => port >= r.from && port <= r.to);
}

export function grantsFor(cfg: HubConfig, state: HubState, cog: string): CogGrants {
  const fromConfig = cfg.cogs.find((c) => c.name === cog);
  const stored = state.grants(cog);
  const hostnames = [...(fromConfig?.hostnames ?? []), ...stored.hostnames];
  if (cfg.defaultGrants) hostnames.push(`${cog}.${cfg.domain}`, `*.${cog}.${cfg.domain}`);
  const tcpPorts = [...(fromConfig?.tcpPorts ?? [])];
  // Stored by `capsul hub invite --tcp-ports`, which validated them with the same parser.
  for (const s of stored.tcp) tcpPorts.push(parsePortRange(s, `grant of cog ${cog}`));
  // A cog with no explicit TCP grant draws a few ports from the hub's pool.
  const fromPool = tcpPorts.length === 0;
  return { hostnames: [...new Set(hostnames)], tcpPorts: fromPool ? [...cfg.listen.tcpPorts] : tcpPorts, fromPool };
}
