/**
 * What each cog may announce: hostname patterns and TCP port ranges, from
 * capsul.yaml (hub.cogs), the default grant "<cog>.<domain>" + "*.<cog>.<domain>",
 * and grants stored with `capsul hub invite --hostname/--tcp-ports`.
 * A cog's identity is its certificate's CN, so nothing here trusts the wire.
 */
import type { HubConfig, PortRange } from "../config/types.js";
import type { HubState } from "./state.js";

export interface CogGrants { hostnames: string[]; tcpPorts: PortRange[]; fromPool: boolean }

/** True if every hostname `route` can match is also matched by `grant`. */
export function patternCovers(grant: string, route: string): boolean {
  if (!grant.startsWith("*.")) return grant === route;
  const suffix = grant.slice(2);
  const tail = route.startsWith("*.") ? route.slice(2) : route;
  return route.startsWith("*.") ? tail === suffix || tail.endsWith("." + suffix) : tail.endsWith("." + suffix);
}

export function parseRange(s: string): PortRange | null {
  const m = /^(\d{1,5})(?:-(\d{1,5}))?$/.exec(s.trim());
  if (!m) return null;
  const from = Number(m[1]);
  const to = m[2] === undefined ? from : Number(m[2]);
  if (from < 1 || to > 65535 || from > to) return null;
  return { from, to };
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
  for (const s of stored.tcp) {
    const r = parseRange(s);
    if (r) tcpPorts.push(r);
  }
  // A cog with no explicit TCP grant draws a few ports from the hub's pool.
  const fromPool = tcpPorts.length === 0;
  return { hostnames: [...new Set(hostnames)], tcpPorts: fromPool ? [...cfg.listen.tcpPorts] : tcpPorts, fromPool };
}
