/**
 * What each cog may announce: hostname patterns and TCP port ranges, from
 * capsul.yaml (hub.cogs), the default grant "<cog>.<domain>" + "*.<cog>.<domain>",
 * and grants stored with `capsul hub invite --hostname/--tcp-ports`.
 * A cog's identity is its certificate's CN, so nothing here trusts the wire.
 *
 * The rule that keeps cogs apart: no grant of one cog may overlap a grant of
 * another. Overlap is what the router's precedence would otherwise settle
 * (an exact name beats a wildcard): a cog granted "*.hub.example" and
 * "shop.alice.hub.example" would take part of alice's default namespace.
 * capsul.yaml is checked against itself when it is parsed (config/config.ts),
 * everything against everything when the hub starts (checkGrantsConsistent),
 * and each invite before it is stored (checkNewGrants). A cog may hold
 * overlapping patterns of its own.
 */
import type { HubConfig, PortRange } from "../config/types.js";
import { ConfigError } from "../lib/errors.js";
import {
  clipRange, formatPortRange, isWildcardAddress, normalizedPatternsOverlap, normalizeHostnamePattern,
  parsePortRange, rangeInside, rangesOverlap,
} from "../lib/hostname.js";
import type { StoreOps } from "./store/types.js";

export interface CogGrants { hostnames: string[]; tcpPorts: PortRange[]; fromPool: boolean }

/** Where a grant comes from, said the way the operator would go and change it. */
export type GrantOrigin = { kind: "config"; path: string } | { kind: "invite" } | { kind: "default" };
export interface HostnameGrant { cog: string; pattern: string; origin: GrantOrigin }
export interface PortGrant { cog: string; range: PortRange; origin: GrantOrigin }

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

/** "<cog>.<domain>" and "*.<cog>.<domain>", or nothing with hub.default_grants: false. */
export function defaultGrantsOf(cfg: HubConfig, cog: string): string[] {
  return cfg.defaultGrants ? [`${cog}.${cfg.domain}`, `*.${cog}.${cfg.domain}`] : [];
}

/** A stored TCP grant as ranges inside the pool: a pool shrunk since the invite leaves less (or nothing). */
function storedRanges(value: string, pool: readonly PortRange[]): PortRange[] {
  try {
    return clipRange(parsePortRange(value), pool);
  } catch {
    return []; // written by `capsul hub invite`, which parses with the same function; never trusted blindly
  }
}

export async function grantsFor(cfg: HubConfig, store: StoreOps, cog: string): Promise<CogGrants> {
  const fromConfig = cfg.cogs.find((c) => c.name === cog);
  const stored = await store.grants(cog);
  const hostnames = [...(fromConfig?.hostnames ?? [])];
  for (const h of stored.hostnames) {
    const n = normalizeHostnamePattern(h);
    if (n !== null) hostnames.push(n);
  }
  hostnames.push(...defaultGrantsOf(cfg, cog));
  const tcpPorts = [...(fromConfig?.tcpPorts ?? [])];
  for (const s of stored.tcp) tcpPorts.push(...storedRanges(s, cfg.listen.tcpPorts));
  // A cog with no explicit TCP grant draws a few ports (hub.default_tcp_ports_per_cog) from the pool.
  const fromPool = tcpPorts.length === 0;
  return { hostnames: [...new Set(hostnames)], tcpPorts: fromPool ? [...cfg.listen.tcpPorts] : tcpPorts, fromPool };
}

/** Every TCP port grant of every cog (capsul.yaml and invites). */
export async function portGrants(cfg: HubConfig, store: StoreOps): Promise<PortGrant[]> {
  const ports: PortGrant[] = [];
  cfg.cogs.forEach((c, i) => {
    c.tcpPorts.forEach((range, k) => ports.push({ cog: c.name, range, origin: { kind: "config", path: `hub.cogs[${i}].tcp_ports[${k}]` } }));
  });
  for (const g of await store.allGrants("tcp")) {
    // Unclipped: a grant outside today's pool still must not overlap another cog's, or it would when the pool grows back.
    try { ports.push({ cog: g.cog, range: parsePortRange(g.value), origin: { kind: "invite" } }); } catch { /* unusable, see storedRanges */ }
  }
  return ports;
}

/** Every grant of every cog the hub knows (listed in capsul.yaml or ever invited), default grants included. */
export async function knownGrants(cfg: HubConfig, store: StoreOps): Promise<{ hostnames: HostnameGrant[]; ports: PortGrant[] }> {
  const hostnames: HostnameGrant[] = [];
  cfg.cogs.forEach((c, i) => {
    c.hostnames.forEach((pattern, k) => hostnames.push({ cog: c.name, pattern, origin: { kind: "config", path: `hub.cogs[${i}].hostnames[${k}]` } }));
  });
  for (const g of await store.allGrants("hostname")) {
    const pattern = normalizeHostnamePattern(g.value);
    if (pattern !== null) hostnames.push({ cog: g.cog, pattern, origin: { kind: "invite" } });
  }
  const cogs = new Set([...cfg.cogs.map((c) => c.name), ...(await store.cogNames())]);
  for (const cog of cogs) for (const pattern of defaultGrantsOf(cfg, cog)) hostnames.push({ cog, pattern, origin: { kind: "default" } });
  return { hostnames, ports: await portGrants(cfg, store) };
}

function valueOf(g: HostnameGrant | PortGrant): string {
  return "pattern" in g ? g.pattern : formatPortRange(g.range);
}

/** `"shop.alice.hub.example" of cog alice (granted by capsul hub invite)` */
export function describeGrant(g: HostnameGrant | PortGrant): string {
  const where = g.origin.kind === "config" ? `${g.origin.path} in capsul.yaml`
    : g.origin.kind === "invite" ? "granted by capsul hub invite" : "its default grant";
  return `${JSON.stringify(valueOf(g))} of cog ${g.cog} (${where})`;
}

/** How the operator undoes a grant. */
function undoHint(g: HostnameGrant | PortGrant): string {
  if (g.origin.kind === "config") return `change ${g.origin.path} in capsul.yaml`;
  if (g.origin.kind === "invite") return `remove it with: capsul hub ungrant ${g.cog} ${valueOf(g)}`;
  return "every cog holds its default grant while hub.default_grants is on";
}

/**
 * The known hostname grants arranged for clash checks: explicit ones in a
 * list, default ones by cog name. Checking a pattern against every cog's
 * default grant one by one cost ~1.3 s at start-up with 5,000 cogs and 500
 * invite grants; the default grants a pattern can overlap follow from its
 * labels instead (below).
 */
interface HostnameIndex { explicit: HostnameGrant[]; defaultCogs: Set<string>; domain: string }

function indexHostnames(cfg: HubConfig, all: readonly HostnameGrant[]): HostnameIndex {
  const explicit = all.filter((g) => g.origin.kind !== "default");
  const defaultCogs = new Set(all.filter((g) => g.origin.kind === "default").map((g) => g.cog));
  return { explicit, defaultCogs, domain: cfg.domain };
}

/**
 * A default grant ("<c>.<domain>", "*.<c>.<domain>") of a cog other than `cog`
 * that `pattern` overlaps. Only two kinds of pattern can: one inside some
 * cog's namespace ("x.c.<domain>", "*.c.<domain>", "c.<domain>": only cog c's),
 * and a wildcard over the whole domain ("*.<domain>", "*.<parent>": every cog's).
 */
function defaultClash(cog: string, pattern: string, idx: HostnameIndex): HostnameGrant | undefined {
  const wild = pattern.startsWith("*.");
  const name = wild ? pattern.slice(2) : pattern;
  const check = (c: string): HostnameGrant | undefined => {
    if (c === cog || !idx.defaultCogs.has(c)) return undefined;
    const hit = [`${c}.${idx.domain}`, `*.${c}.${idx.domain}`].find((d) => normalizedPatternsOverlap(d, pattern));
    return hit === undefined ? undefined : { cog: c, pattern: hit, origin: { kind: "default" } };
  };
  if (name.endsWith(`.${idx.domain}`)) {
    const labels = name.slice(0, -idx.domain.length - 1).split(".");
    return check(labels[labels.length - 1]!);
  }
  if (wild && (name === idx.domain || idx.domain.endsWith(`.${name}`))) {
    for (const c of [...idx.defaultCogs].sort()) {
      const hit = check(c);
      if (hit) return hit;
    }
  }
  return undefined;
}

function hostnameClash(cog: string, pattern: string, idx: HostnameIndex): HostnameGrant | undefined {
  return idx.explicit.find((g) => g.cog !== cog && normalizedPatternsOverlap(g.pattern, pattern)) ?? defaultClash(cog, pattern, idx);
}

function portClash(cog: string, range: PortRange, all: readonly PortGrant[]): PortGrant | undefined {
  return all.find((g) => g.cog !== cog && rangesOverlap(g.range, range));
}

function clashError(g: HostnameGrant | PortGrant, other: HostnameGrant | PortGrant): ConfigError {
  // Point at the side the operator can change: capsul.yaml first, then a stored grant.
  const [mine, theirs] = other.origin.kind === "config" && g.origin.kind !== "config" ? [other, g] : [g, other];
  const fix = [...new Set([undoHint(mine), undoHint(theirs)])].join(", or ");
  const path = mine.origin.kind === "config" ? mine.origin.path : undefined;
  const subject = path ? JSON.stringify(valueOf(mine)) : `grant ${describeGrant(mine)}`;
  return new ConfigError(`${subject} overlaps ${describeGrant(theirs)}: two cogs may not be granted overlapping ${"pattern" in mine ? "hostnames" : "ports"}; ${fix}`, path);
}

/**
 * Warnings about grants that do not break the rule but leave a cog less than
 * the operator wrote (shown in the hub's log at start).
 */
export interface GrantWarning { message: string; fields: Record<string, string | number> }

/**
 * The hub's start-up check: throws a ConfigError naming both grants when two
 * cogs' grants overlap (capsul.yaml against stored invites and the default
 * grants of every known cog). The hub refuses to start rather than let the
 * router's precedence decide who gets a visitor.
 */
export async function checkGrantsConsistent(cfg: HubConfig, store: StoreOps): Promise<GrantWarning[]> {
  const known = await knownGrants(cfg, store);
  // Default grants of two cogs never overlap (a cog name is one label), so every
  // pair worth checking has a configured or invited grant on one side.
  const idx = indexHostnames(cfg, known.hostnames);
  for (const g of idx.explicit) {
    const other = hostnameClash(g.cog, g.pattern, idx);
    if (other) throw clashError(g, other);
  }
  for (const g of known.ports) {
    const other = portClash(g.cog, g.range, known.ports);
    if (other) throw clashError(g, other);
  }
  const warnings: GrantWarning[] = [];
  for (const g of known.ports) {
    if (g.origin.kind === "invite" && !rangeInside(g.range, cfg.listen.tcpPorts)) {
      warnings.push({ message: "a stored TCP grant lies (partly) outside hub.listen.tcp_ports; only its part inside is usable", fields: { cog: g.cog, grant: formatPortRange(g.range) } });
    }
    for (const a of await store.assignmentsIn(g.range.from, g.range.to)) {
      if (a.cog === g.cog) continue;
      warnings.push({
        message: `a hub TCP port granted to one cog is assigned to another; it moves when that cog next announces its routes, or release it with: capsul hub ports release ${a.port}`,
        fields: { port: a.port, grantedTo: g.cog, assignedTo: `${a.cog}/${a.route}` },
      });
    }
  }
  return warnings;
}

/** The hub's own listening ports, which no cog may be granted. Port 0 (ephemeral, tests) is never a clash. */
function listenerPorts(cfg: HubConfig): Array<{ path: string; port: number; host: string }> {
  const out: Array<{ path: string; port: number; host: string }> = [];
  if (cfg.listen.tls) out.push({ path: "hub.listen.tls", ...cfg.listen.tls });
  if (cfg.listen.http) out.push({ path: "hub.listen.http", ...cfg.listen.http });
  out.push({ path: "hub.listen.tunnel", ...cfg.listen.tunnel });
  if (cfg.listen.admin) out.push({ path: "hub.listen.admin", ...cfg.listen.admin });
  return out.filter((l) => l.port !== 0);
}

/**
 * Checks what `capsul hub invite` is about to store for `cog` (new hostname
 * patterns and port ranges, and the cog's default grants) against every other
 * cog's grants and the hub's ports. Throws a one-line ConfigError (exit 2).
 * Run it inside the transaction that stores the invite, holding the "grants"
 * lock, so two invites racing (two processes, two hubs) cannot both pass.
 */
export async function checkNewGrants(cfg: HubConfig, tx: StoreOps, cog: string, add: { hostnames: string[]; tcpPorts: PortRange[] }): Promise<void> {
  const known = await knownGrants(cfg, tx);
  const idx = indexHostnames(cfg, known.hostnames);
  for (const pattern of add.hostnames) {
    const other = hostnameClash(cog, pattern, idx);
    if (other) throw new ConfigError(`${JSON.stringify(pattern)} overlaps ${describeGrant(other)}: two cogs may not be granted overlapping hostnames; ${undoHint(other)}`, "--hostname");
  }
  // A name another cog has proven by DNS (gateway/domains.ts) is that cog's while the proof
  // stands: the operator takes it away explicitly (capsul hub domains remove), not by a grant.
  const proven = add.hostnames.length ? (await tx.allDomainProofs()).filter((p) => p.cog !== cog && p.state === "verified") : [];
  for (const pattern of add.hostnames) {
    const p = proven.find((c) => normalizedPatternsOverlap(c.hostname, pattern) || normalizedPatternsOverlap(`*.${c.hostname}`, pattern));
    if (p) {
      throw new ConfigError(`${JSON.stringify(pattern)} overlaps ${p.hostname}, proven by DNS by cog ${p.cog}; remove that claim first with: capsul hub domains remove ${p.hostname} --cog ${p.cog}`, "--hostname");
    }
  }
  for (const pattern of defaultGrantsOf(cfg, cog)) {
    const other = hostnameClash(cog, pattern, idx);
    if (other) {
      throw new ConfigError(`the default grant ${JSON.stringify(pattern)} of cog ${cog} overlaps ${describeGrant(other)}: ` +
        `two cogs may not be granted overlapping hostnames; ${undoHint(other)}, or pick another cog name`);
    }
  }
  for (const range of add.tcpPorts) {
    const text = formatPortRange(range);
    const sameHost = (h: string): boolean => h === cfg.listen.tcpHost || isWildcardAddress(h) || isWildcardAddress(cfg.listen.tcpHost);
    const listener = listenerPorts(cfg).find((l) => l.port >= range.from && l.port <= range.to && sameHost(l.host));
    if (listener) throw new ConfigError(`${text} includes port ${listener.port}, the hub's own ${listener.path} listener`, "--tcp-ports");
    if (!rangeInside(range, cfg.listen.tcpPorts)) {
      const pool = cfg.listen.tcpPorts.map(formatPortRange).join(", ") || "empty";
      throw new ConfigError(`${text} is not inside the hub's TCP port pool hub.listen.tcp_ports (${pool})`, "--tcp-ports");
    }
    const other = portClash(cog, range, known.ports);
    if (other) throw new ConfigError(`${text} overlaps ${describeGrant(other)}: two cogs may not be granted overlapping ports; ${undoHint(other)}`, "--tcp-ports");
    const held = (await tx.assignmentsIn(range.from, range.to)).find((a) => a.cog !== cog);
    if (held) {
      throw new ConfigError(`${text} includes hub port ${held.port}, assigned to cog ${held.cog} (route ${held.route}); release it first with: capsul hub ports release ${held.port}`, "--tcp-ports");
    }
  }
}

/**
 * A grant of another cog (capsul.yaml, invite, or a default grant) that `pattern` overlaps,
 * for a name `cog` wants by DNS proof (gateway/domains.ts): a proof never takes a name out
 * of another cog's grants, whatever DNS says.
 */
export async function otherCogsGrantOver(cfg: HubConfig, store: StoreOps, cog: string, pattern: string): Promise<HostnameGrant | undefined> {
  const known = await knownGrants(cfg, store);
  return hostnameClash(cog, pattern, indexHostnames(cfg, known.hostnames));
}
