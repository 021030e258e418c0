/**
 * hub.endpoint: how this hub process announces itself to cogs through the
 * shared state store (issue 12). An endpoint is (name, the address cogs dial,
 * the TLS server name they send): several hubs on one PostgreSQL are several
 * endpoints, and a later step can put several endpoints (hub workers) behind
 * one address, told apart by the server name alone. Each default is stated once, in the
 * schema section below.
 */
import os from "node:os";
import { ConfigError } from "../lib/errors.js";
import { normalizeHostname, parseHostPort } from "../lib/hostname.js";
import type { HubEndpointConfig, HostPort } from "./types.js";
import { durationMs, fail, leaf, read, section } from "./fields.js";
import { fmtMs, string } from "./values.js";

/** Default of hub.endpoint.heartbeat_interval: how often a hub stamps its endpoint row. */
export const DEFAULT_ENDPOINT_HEARTBEAT_INTERVAL_MS = 2_000;
/** Default of hub.endpoint.timeout: an endpoint whose stamp is older is gone (5 missed heartbeats). */
export const DEFAULT_ENDPOINT_TIMEOUT_MS = 10_000;
/** An endpoint name: what `capsul hub cogs` shows and cogs key their tunnels by. */
export const ENDPOINT_NAME_RE = /^[a-z0-9][a-z0-9.-]{0,62}$/;

/** The machine's hostname as an endpoint name: lower case, anything else than a-z 0-9 . - becomes "-". */
export function defaultEndpointName(host: string = os.hostname()): string {
  const n = host.toLowerCase().replace(/[^a-z0-9.-]/g, "-").replace(/^[.-]+/, "").slice(0, 63);
  return ENDPOINT_NAME_RE.test(n) ? n : "hub";
}

function isIpLiteral(host: string): boolean {
  return /^[\d.]+$/.test(host) || host.includes(":");
}

/** hub.endpoint as read; the advertised address and server name default to the hub's (resolveEndpoint). */
export const endpointSchema = section("How this hub process announces itself to cogs through the shared store: several hubs on one PostgreSQL are several endpoints.", {
  name: leaf({
    description: "Unique among the hubs sharing the store: what `capsul hub cogs` shows and cogs key their tunnels by (default this machine's hostname, lower-cased).",
    type: ["string", "null"], pattern: ENDPOINT_NAME_RE.source,
  }, (v) => (v == null ? defaultEndpointName() : string(v, ""))),
  advertise: leaf({
    description: "The tunnel address cogs dial, host:port (default public_tunnel_address); port 0 stands for the tunnel listener's bound port.",
    type: ["string", "null"],
  }, (v) => (v == null ? undefined : parseHostPort(v, undefined, { allowPortZero: true }))),
  server_name: leaf({
    description: "TLS server name (SNI) cogs send to this endpoint (default the advertised host, or domain when that is an IP address).",
    type: ["string", "null"],
  }, (v) => {
    if (v == null) return undefined;
    const s = string(v, "");
    const n = normalizeHostname(s);
    if (n === null || isIpLiteral(n)) throw new ConfigError(`not a DNS name: ${JSON.stringify(s)}`);
    return n;
  }),
  heartbeat_interval: durationMs("How often the hub stamps its endpoint row.", { def: DEFAULT_ENDPOINT_HEARTBEAT_INTERVAL_MS, min: 1 }),
  timeout: durationMs("An endpoint not stamped for this long is gone: cogs are told, its tunnel rows are cleaned (at least twice heartbeat_interval).",
    { def: DEFAULT_ENDPOINT_TIMEOUT_MS, min: 1 }),
}, (o) => {
  if (!ENDPOINT_NAME_RE.test(o.name)) {
    fail(["name"], `not an endpoint name (a-z or 0-9 first, then a-z, 0-9, "." or "-", at most 63): ${JSON.stringify(o.name)}`);
  }
  // One late heartbeat (a GC pause, a slow store) must not make a live hub look gone.
  if (o.timeout < 2 * o.heartbeat_interval) {
    fail(["timeout"], `must be at least twice heartbeat_interval (${fmtMs(2 * o.heartbeat_interval)}), got ${fmtMs(o.timeout)}`);
  }
  return o;
});

/**
 * hub.endpoint over the hub's own keys: `publicTunnelAddress` is hub.public_tunnel_address
 * (already defaulted), `domain` the hub's, the server name cogs send when the advertised host
 * is an IP literal. Errors name keys relative to the hub section.
 */
export function resolveEndpoint(e: ReturnType<(typeof endpointSchema)["parse"]>, publicTunnelAddress: string, domain: string): HubEndpointConfig {
  // Port 0 (a test hub on an ephemeral tunnel port) stands for the port the listener got.
  const advertise: HostPort = e.advertise ?? read(["endpoint", "advertise"], () => parseHostPort(publicTunnelAddress, undefined, { allowPortZero: true }));
  if (advertise.host === "0.0.0.0") fail(["endpoint", "advertise"], "must name a host cogs can dial, not 0.0.0.0");
  const serverName = e.server_name ?? (isIpLiteral(advertise.host) ? domain : advertise.host);
  return { name: e.name, advertise, serverName, heartbeatIntervalMs: e.heartbeat_interval, timeoutMs: e.timeout };
}
