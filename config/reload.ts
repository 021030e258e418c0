/**
 * What a reload (SIGHUP, `capsul hub reload`, `capsul cog reload`) may change in a
 * running process, and how a change is named in logs: by its capsul.yaml key path.
 *
 * Both sides of a comparison come out of parseConfig(), so "1m" and "60s" are the same
 * value and a key written out with its default equals an absent one. The tables below
 * map each field of a section to its YAML key; their types list every field, so a new
 * field that is not placed here fails to compile.
 */
import type { AcmeConfig, CogConfig, HubConfig, ProvisionerConfig } from "./types.js";

/** Deep equality of two values parseConfig() made (plain objects, arrays, scalars, null). */
export function sameValue(a: unknown, b: unknown): boolean {
  if (a === b) return true;
  if (a === null || b === null || typeof a !== "object" || typeof b !== "object") return false;
  if (Array.isArray(a) !== Array.isArray(b)) return false;
  const ka = Object.keys(a);
  const kb = Object.keys(b);
  if (ka.length !== kb.length) return false;
  return ka.every((k) => Object.prototype.hasOwnProperty.call(b, k) &&
    sameValue((a as Record<string, unknown>)[k], (b as Record<string, unknown>)[k]));
}

type KeyTable<T> = { readonly [K in keyof T]-?: string };

const HUB_KEYS: KeyTable<Omit<HubConfig, "listen">> = {
  // hub.store stands for it and its store_* companions: they are one connection, opened at start.
  dataDir: "data_dir", store: "store", domain: "domain", publicTunnelAddress: "public_tunnel_address", cogs: "cogs",
  defaultGrants: "default_grants", defaultTcpPortsPerCog: "default_tcp_ports_per_cog", inviteTtlMs: "invite_ttl",
  cogCertTtlMs: "cog_cert_ttl", domains: "domains", limits: "limits", tunnel: "tunnel", shutdownGraceMs: "shutdown_grace", endpoint: "endpoint",
  admin: "admin", acme: "acme",
  accessLog: "access_log",
  workers: "workers", worker: "worker",
};
const HUB_LISTEN_KEYS: KeyTable<HubConfig["listen"]> = { tls: "tls", http: "http", tunnel: "tunnel", tcpHost: "tcp_host", tcpPorts: "tcp_ports", admin: "admin" };
const COG_KEYS: KeyTable<CogConfig> = {
  dataDir: "data_dir", hub: "hub", routes: "routes", reconnect: "reconnect", targetDialTimeoutMs: "target_dial_timeout",
  spliceQueueBytes: "splice_queue", tunnel: "tunnel", provisioner: "provisioner", acme: "acme", terminate: "terminate",
  shutdownGraceMs: "shutdown_grace", listen: "listen", admin: "admin",
};
const ACME_KEYS: KeyTable<AcmeConfig> = {
  directoryUrl: "directory_url", caBundle: "ca_bundle", email: "email", renewAtRatio: "renew_at",
  retryMinDelayMs: "retry_min_delay", retryMaxDelayMs: "retry_max_delay", requestTimeoutMs: "request_timeout",
  orderTimeoutMs: "order_timeout", pollIntervalMs: "poll_interval",
};

/**
 * The key paths whose value differs between `a` and `b`, one level into the section
 * (`hub.limits`, `cog.routes`), two for hub.listen (`hub.listen.tls`): the granularity at
 * which the hub and the cog apply a change.
 */
export function changedHubKeys(a: HubConfig, b: HubConfig): string[] {
  const out: string[] = [];
  for (const [field, key] of Object.entries(HUB_KEYS) as [keyof typeof HUB_KEYS, string][]) {
    if (field === "cogs") continue;
    if (!sameValue(a[field], b[field])) out.push(`hub.${key}`);
  }
  // hub.cogs[]: its grants, and its limits apart. A cog's limits are resolved over
  // hub.limits, so a change of hub.limits alone changes them all: that is reported as
  // hub.limits; hub.cogs[].limits only when hub.limits stayed, so only an override moved.
  // Limits never re-check or re-apply grants (gateway/reload.ts GRANT_KEYS).
  const grantsOf = (c: HubConfig): unknown[] => c.cogs.map(({ limits: _l, ...g }) => g);
  if (!sameValue(grantsOf(a), grantsOf(b))) out.push("hub.cogs");
  if (sameValue(a.limits, b.limits) && !sameValue(a.cogs.map((g) => [g.name, g.limits]), b.cogs.map((g) => [g.name, g.limits]))) out.push("hub.cogs[].limits");
  for (const [field, key] of Object.entries(HUB_LISTEN_KEYS) as [keyof HubConfig["listen"], string][]) {
    if (!sameValue(a.listen[field], b.listen[field])) out.push(`hub.listen.${key}`);
  }
  return out;
}

export function changedCogKeys(a: CogConfig, b: CogConfig): string[] {
  const out: string[] = [];
  for (const [field, key] of Object.entries(COG_KEYS) as [keyof CogConfig, string][]) {
    if (!sameValue(a[field], b[field])) out.push(`cog.${key}`);
  }
  return out;
}

/**
 * Keys a running hub or cog cannot take: a reload that changes one is refused as a
 * whole (the old configuration stays) with a line naming the key. The data dirs hold the
 * CA, the SQLite state, the cog's key and the VMs' disks; hub.store (with its store_*
 * keys) is the hub's state, opened once; the hub's domain is in every
 * cog's default grant, in its tunnel certificate and in what enrolled cogs stored.
 */
export const HUB_FIXED_KEYS: readonly string[] = ["hub.data_dir", "hub.store", "hub.domain"];
export const COG_FIXED_KEYS: readonly string[] = ["cog.data_dir"];

/**
 * cog.acme keys the running ACME client cannot switch to (its account lives with the
 * directory and its CA trust is read once): applied after a restart of `capsul cog`.
 * The other cog.acme keys apply to the next order and the next renewal scheduled.
 */
export const ACME_RESTART_FIELDS: ReadonlySet<keyof AcmeConfig> = new Set<keyof AcmeConfig>(["directoryUrl", "caBundle", "email"]);

/** The cog.acme keys that differ, split into those applied at once and those that wait for a restart. */
export function acmeChange(a: AcmeConfig, b: AcmeConfig): { restart: string[]; applied: string[] } {
  const restart: string[] = [];
  const applied: string[] = [];
  for (const [field, key] of Object.entries(ACME_KEYS) as [keyof AcmeConfig, string][]) {
    if (sameValue(a[field], b[field])) continue;
    (ACME_RESTART_FIELDS.has(field) ? restart : applied).push(`cog.acme.${key}`);
  }
  return { restart, applied };
}

/**
 * cog.provisioner keys the running provisioner reads only at start: its API listener,
 * the request body limit built into that API, the import directory (created at start)
 * and the address policy of image downloads. Every other key is read when it is used
 * (sizes when a VM is created or started, timeouts when they run, binaries when they
 * are launched) and applies from the next use.
 */
const PROVISIONER_RESTART_FIELDS: Partial<KeyTable<ProvisionerConfig>> = {
  listen: "listen", maxRequestBodyBytes: "max_request_body", importDir: "import_dir", importAllowedCidrs: "import_allowed_cidrs",
};

/** Fields a running provisioner keeps whatever a reload says: those above, and its data dir (refused anyway). */
export const PROVISIONER_START_ONLY_FIELDS: ReadonlySet<keyof ProvisionerConfig> =
  new Set([...Object.keys(PROVISIONER_RESTART_FIELDS), "dataDir"] as (keyof ProvisionerConfig)[]);

/** The provisioner's data dir holds the VMs' disks and their SQLite state: never changed under running VMs. */
export const PROVISIONER_FIXED_KEY = "cog.provisioner.data_dir";

/**
 * How a provisioner section change splits: `fixed` (refuse the reload), `restart`
 * (keys that wait for a restart) and whether anything else changed (`applied`).
 */
export function provisionerChange(a: ProvisionerConfig | null, b: ProvisionerConfig | null): { fixed: boolean; restart: string[]; applied: boolean } {
  if (a === null || b === null) {
    // Turning the provisioner on or off starts or stops an API server and VM supervision: a restart.
    return { fixed: false, restart: a === b ? [] : ["cog.provisioner"], applied: false };
  }
  if (a.dataDir !== b.dataDir) return { fixed: true, restart: [], applied: false };
  const restart: string[] = [];
  let applied = false;
  for (const field of Object.keys(a) as (keyof ProvisionerConfig)[]) {
    if (sameValue(a[field], b[field])) continue;
    const key = PROVISIONER_RESTART_FIELDS[field];
    if (key !== undefined) restart.push(`cog.provisioner.${key}`);
    else applied = true;
  }
  return { fixed: false, restart, applied };
}

/** The line a reload refused for a key the process cannot change logs and reports. */
export function fixedKeyMessage(key: string, role: "hub" | "cog"): string {
  return `${key}: cannot change while capsul ${role} runs; the running ${role} keeps its old configuration (restart capsul ${role} to use the new value)`;
}
