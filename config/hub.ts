/**
 * The hub: section of capsul.yaml: its keys, defaults and bounds (stated once), and the rules
 * between keys (grants against the port pool and each other). hub.limits is ./limits.ts's,
 * hub.tunnel ./tunnel.ts's, the store keys ./store.ts's.
 */
import { isIP } from "node:net";
import {
  COG_NAME_RE, formatHostPort, formatPortRange, normalizeHostname, parseHostPort, parsePortRange, patternsOverlap,
  rangeInside, rangesOverlap,
} from "../lib/hostname.js";
import { ConfigError } from "../lib/errors.js";
import { bool, custom, durationMs, fail, int, leaf, listOf, optionalListener, path, PORT_RANGE_JSON, section, text } from "./fields.js";
import { DEFAULT_HUB_ADMIN_LISTEN, hubAdminSchema } from "./admin.js";
import { hubAcmeSchema } from "./acme.js";
import { domainsSchema } from "./domains.js";
import { endpointSchema, resolveEndpoint } from "./endpoint.js";
import { hubLimitsSchema } from "./limits.js";
import { cogLimitsSchema, hubCogLimits, resolveLimits } from "./quotas.js";
import { buildHubStore, HUB_STORE_SHAPE } from "./store.js";
import { hubTunnelSchema, MAX_MUX_INT } from "./tunnel.js";
import { hubWorkerSchema, hubWorkersSchema } from "./workers.js";
import type { CogLimits, HubCogGrant, HubConfig, PortRange } from "./types.js";
import { hostname, hostnamePattern, string } from "./values.js";

export const DEFAULT_HUB_DATA_DIR = "/var/lib/capsul/hub";
export const DEFAULT_HUB_TLS_LISTEN = "0.0.0.0:443";
export const DEFAULT_HUB_HTTP_LISTEN = "0.0.0.0:80";
export const DEFAULT_HUB_TUNNEL_LISTEN = "0.0.0.0:7443";
export const DEFAULT_HUB_TCP_HOST = "0.0.0.0";
export const DEFAULT_HUB_DEFAULT_GRANTS = true;
export const DEFAULT_TCP_PORTS_PER_COG = 8;
export const DEFAULT_INVITE_TTL_MS = 24 * 3_600_000;
export const DEFAULT_COG_CERT_TTL_MS = 90 * 86_400_000;
/** hub.access_log: off, so that a busy hub's log holds events, not traffic. */
export const DEFAULT_ACCESS_LOG = false;
/**
 * hub.shutdown_grace and cog.shutdown_grace: 30 s lets a page load or a small download finish
 * and stays inside systemd's default TimeoutStopSec (90 s), so a drain is never SIGKILLed.
 */
export const DEFAULT_SHUTDOWN_GRACE_MS = 30_000;

/** hub.shutdown_grace and cog.shutdown_grace: one definition, two keys. */
export function shutdownGrace(what: string) {
  return durationMs(`On SIGTERM (or SIGINT) ${what} for up to this long, then cuts the rest (0 cuts at once).`,
    { def: DEFAULT_SHUTDOWN_GRACE_MS, min: 0, max: MAX_MUX_INT });
}

const portRange = leaf({ description: "An inclusive TCP port range: 20000-20099, or one port.", ...PORT_RANGE_JSON },
  (v) => parsePortRange(v));

const listenSchema = section("The hub's listeners.", {
  tls: optionalListener("TLS passthrough listener (routed by SNI), or off.", DEFAULT_HUB_TLS_LISTEN),
  http: optionalListener("Plain HTTP listener (routed by Host), or off.", DEFAULT_HUB_HTTP_LISTEN),
  tunnel: custom({
    description: `The tunnel listener cogs dial (mTLS); it cannot be turned off. Default: ${DEFAULT_HUB_TUNNEL_LISTEN}.`,
    default: DEFAULT_HUB_TUNNEL_LISTEN, type: ["string", "null"],
  }, (v) => {
    if (v === false || v === "off") throw new ConfigError("cannot be disabled: cogs reach the hub through it");
    return parseHostPort(v ?? DEFAULT_HUB_TUNNEL_LISTEN, undefined, { allowPortZero: true });
  }),
  tcp_host: text("Address the raw TCP port listeners bind to.", DEFAULT_HUB_TCP_HOST),
  tcp_ports: listOf("The pool of TCP ports the hub may open for cogs' tcp routes (default none).", portRange),
  admin: optionalListener("Admin listener: /healthz, /metrics, the JSON admin API and the status page, or off; anything but loopback requires the bearer token in <data_dir>/admin-token.",
    DEFAULT_HUB_ADMIN_LISTEN),
}, (o): HubConfig["listen"] => {
  const tcpHost = isIP(o.tcp_host) ? o.tcp_host.toLowerCase() : normalizeHostname(o.tcp_host);
  if (tcpHost === null) fail(["tcp_host"], `not an IP address or hostname: ${JSON.stringify(o.tcp_host)}`);
  o.tcp_ports.forEach((r, j) => {
    const i = o.tcp_ports.findIndex((other, k) => k < j && rangesOverlap(other, r));
    if (i >= 0) fail(["tcp_ports", j], `${formatPortRange(r)} overlaps hub.listen.tcp_ports[${i}] (${formatPortRange(o.tcp_ports[i]!)})`);
  });
  return { tls: o.tls, http: o.http, tunnel: o.tunnel, tcpHost, tcpPorts: o.tcp_ports, admin: o.admin };
});

const grantSchema = section("One cog's grant.", {
  name: custom({ description: "Cog name (the CN of its enrolled certificate): a-z first, then a-z, 0-9 or -, at most 39.", type: "string", pattern: COG_NAME_RE.source },
    (v) => string(v, "")),
  hostnames: listOf("Hostname patterns this cog may announce: exact names or *.suffix wildcards, lower-case A-labels.",
    leaf({ description: "An exact hostname or a *.suffix wildcard.", type: "string" }, (v) => hostnamePattern(v, ""))),
  tcp_ports: listOf("TCP port ranges this cog may be assigned (inside hub.listen.tcp_ports).", portRange),
  limits: cogLimitsSchema,
}, (o) => {
  if (!COG_NAME_RE.test(o.name)) fail(["name"], `not a cog name (a-z first, then a-z, 0-9 or "-", at most 39): ${JSON.stringify(o.name)}`);
  return o;
}, { requiredKeys: ["name"], nullable: false });

type GrantInput = ReturnType<(typeof grantSchema)["parse"]>;

/** The grants against the pool and each other; each error is reported at the later entry. */
function buildGrants(
  input: GrantInput[],
  hub: { domain: string; defaultGrants: boolean; pool: PortRange[]; limits: CogLimits; maxVisitors: number },
): HubCogGrant[] {
  const grants = input.map((g, j): HubCogGrant => {
    g.tcp_ports.forEach((range, k) => {
      if (!rangeInside(range, hub.pool)) fail(["cogs", j, "tcp_ports", k], `${formatPortRange(range)} is not inside the pool hub.listen.tcp_ports`);
    });
    return { name: g.name, hostnames: g.hostnames, tcpPorts: g.tcp_ports, limits: resolveLimits(g.limits, ["cogs", j, "limits"], true, hub.limits, hub.maxVisitors) };
  });
  const at = (i: number) => `hub.cogs[${i}]`;
  grants.forEach((g, j) => {
    const dup = grants.findIndex((other, i) => i < j && other.name === g.name);
    if (dup >= 0) fail(["cogs", j, "name"], `duplicate cog name ${JSON.stringify(g.name)} (also ${at(dup)})`);
  });
  grants.forEach((g, j) => {
    g.hostnames.forEach((pattern, k) => {
      grants.forEach((other, i) => {
        if (i === j) return;
        if (i < j) {
          const n = other.hostnames.findIndex((o) => patternsOverlap(o, pattern));
          if (n >= 0) fail(["cogs", j, "hostnames", k], `${JSON.stringify(pattern)} overlaps ${at(i)}.hostnames[${n}] (${JSON.stringify(other.hostnames[n])})`);
        }
        // The implicit "<cog>.<domain>" and "*.<cog>.<domain>" grants of every listed cog count too.
        if (hub.defaultGrants) {
          const implicit = [`${other.name}.${hub.domain}`, `*.${other.name}.${hub.domain}`].find((d) => patternsOverlap(d, pattern));
          if (implicit) {
            fail(["cogs", j, "hostnames", k], `${JSON.stringify(pattern)} overlaps the default grant ${JSON.stringify(implicit)} of ${at(i)} (set hub.default_grants: false to allow it)`);
          }
        }
      });
    });
    g.tcpPorts.forEach((range, k) => {
      for (let i = 0; i < j; i++) {
        const n = grants[i]!.tcpPorts.findIndex((o) => rangesOverlap(o, range));
        if (n >= 0) fail(["cogs", j, "tcp_ports", k], `${formatPortRange(range)} overlaps ${at(i)}.tcp_ports[${n}] (${formatPortRange(grants[i]!.tcpPorts[n]!)})`);
      }
    });
  });
  return grants;
}

/**
 * hub.admin.tls needs the admin listener; acme also the public listener its challenge comes in by.
 */
function checkAdminTls(o: { admin: HubConfig["admin"]; listen: HubConfig["listen"] }): void {
  const a = o.admin;
  if (a.tls === "off") return;
  if (o.listen.admin === null) fail(["admin", "tls"], `tls: ${a.tls} needs hub.listen.admin (it is off)`);
  if (a.tls !== "acme") return;
  if (a.challenge === "http-01" && o.listen.http === null) {
    fail(["admin", "challenge"], "http-01 is answered on hub.listen.http, which is off: turn it on, or use challenge: tls-alpn-01");
  }
  if (a.challenge === "tls-alpn-01" && o.listen.tls === null) {
    fail(["admin", "challenge"], "tls-alpn-01 is answered on hub.listen.tls, which is off: turn it on, or use challenge: http-01");
  }
}

export const hubSchema = section("The public hub; omit on a cog-only machine.", {
  data_dir: path("Directory for the hub's CA, certificates and SQLite state; relative paths are resolved against the file's directory.", DEFAULT_HUB_DATA_DIR),
  ...HUB_STORE_SHAPE,
  domain: leaf({ description: "Public DNS name of the hub; used in invites and as the suffix of default grants *.<cog>.<domain>.", type: "string" },
    (v) => hostname(v, "")),
  listen: listenSchema,
  public_tunnel_address: leaf({ description: "Address cogs use to reach the tunnel listener, as printed in invites (default <domain>:<tunnel port>).", type: ["string", "null"] },
    (v) => (v == null ? null : formatHostPort(parseHostPort(v)))),
  cogs: listOf("Per-cog grants. A cog enrolled but not listed here gets the default grant only.", grantSchema),
  default_grants: bool("Grant every cog <cog>.<domain> and *.<cog>.<domain>.", DEFAULT_HUB_DEFAULT_GRANTS),
  default_tcp_ports_per_cog: int("TCP ports a cog without tcp_ports grants may take from the pool.", { def: DEFAULT_TCP_PORTS_PER_COG, min: 0 }),
  invite_ttl: durationMs("Invite token lifetime.", { def: DEFAULT_INVITE_TTL_MS, min: 1 }),
  cog_cert_ttl: durationMs("Lifetime of the cog certificates the hub issues.", { def: DEFAULT_COG_CERT_TTL_MS, min: 1 }),
  domains: domainsSchema,
  limits: hubLimitsSchema,
  tunnel: hubTunnelSchema,
  admin: hubAdminSchema,
  acme: hubAcmeSchema,
  shutdown_grace: shutdownGrace("the hub stops accepting, sends GoAway to every cog and lets live visitor connections finish"),
  endpoint: endpointSchema,
  access_log: bool("One log line (info, component hub/access) per visitor connection when it ends: source, listener, route, cog, bytes both ways, duration, outcome; written once at close, never per chunk.",
    DEFAULT_ACCESS_LOG),
  workers: hubWorkersSchema,
  worker: hubWorkerSchema,
}, (o): HubConfig => {
  checkAdminTls(o);
  const publicTunnelAddress = o.public_tunnel_address ?? formatHostPort({ host: o.domain, port: o.listen.tunnel.port });
  return {
    dataDir: o.data_dir,
    store: buildHubStore(o),
    domain: o.domain,
    listen: o.listen,
    publicTunnelAddress,
    cogs: buildGrants(o.cogs, {
      domain: o.domain, defaultGrants: o.default_grants, pool: o.listen.tcpPorts, limits: hubCogLimits(o.limits), maxVisitors: o.limits.maxVisitors,
    }),
    defaultGrants: o.default_grants,
    defaultTcpPortsPerCog: o.default_tcp_ports_per_cog,
    inviteTtlMs: o.invite_ttl,
    cogCertTtlMs: o.cog_cert_ttl,
    domains: o.domains,
    limits: o.limits,
    tunnel: o.tunnel,
    admin: o.admin,
    acme: o.acme,
    shutdownGraceMs: o.shutdown_grace,
    endpoint: resolveEndpoint(o.endpoint, publicTunnelAddress, o.domain),
    accessLog: o.access_log,
    workers: o.workers,
    worker: o.worker,
  };
}, { requiredKeys: ["domain"], nullable: false });
