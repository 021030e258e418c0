/**
 * hub.endpoint: how this hub process announces itself to cogs through the
 * shared state store (issue 12). An endpoint is (name, the address cogs dial,
 * the TLS server name they send): several hubs on one PostgreSQL are several
 * endpoints, and a later step can put several endpoints (hub workers) behind
 * one address, told apart by the server name alone.
 */
import os from "node:os";
import { ConfigError } from "../lib/errors.js";
import { normalizeHostname, parseHostPort } from "../lib/hostname.js";
import type { HubEndpointConfig, HostPort } from "./types.js";
import { at, duration, fmtMs, mapping, string } from "./values.js";

/** Default of hub.endpoint.heartbeat_interval: how often a hub stamps its endpoint row. */
export const DEFAULT_ENDPOINT_HEARTBEAT_INTERVAL_MS = 2_000;
/** Default of hub.endpoint.timeout: an endpoint whose stamp is older is gone (5 missed heartbeats). */
export const DEFAULT_ENDPOINT_TIMEOUT_MS = 10_000;
/** An endpoint name: what `capsul hub cogs` shows and cogs key their tunnels by. */
export const ENDPOINT_NAME_RE = /^[a-z0-9][a-z0-9.-]{0,62}$/;

export const HUB_ENDPOINT_KEYS = ["name", "advertise", "server_name", "heartbeat_interval", "timeout"] as const;

/** The machine's hostname as an endpoint name: lower case, anything else than a-z 0-9 . - becomes "-". */
export function defaultEndpointName(host: string = os.hostname()): string {
  const n = host.toLowerCase().replace(/[^a-z0-9.-]/g, "-").replace(/^[.-]+/, "").slice(0, 63);
  return ENDPOINT_NAME_RE.test(n) ? n : "hub";
}

function isIpLiteral(host: string): boolean {
  return /^[\d.]+$/.test(host) || host.includes(":");
}

/**
 * `publicTunnelAddress` is hub.public_tunnel_address (already defaulted); `domain` the
 * hub's, the server name cogs send when the advertised host is an IP literal.
 */
export function parseHubEndpoint(value: unknown, path: string, publicTunnelAddress: string, domain: string): HubEndpointConfig {
  const m = value == null ? {} : mapping(value, path, HUB_ENDPOINT_KEYS);
  const namePath = at(path, "name");
  const name = m.name == null ? defaultEndpointName() : string(m.name, namePath);
  if (!ENDPOINT_NAME_RE.test(name)) {
    throw new ConfigError(`not an endpoint name (a-z or 0-9 first, then a-z, 0-9, "." or "-", at most 63): ${JSON.stringify(name)}`, namePath);
  }
  // Port 0 (a test hub on an ephemeral tunnel port) stands for the port the listener got.
  const advertise: HostPort = parseHostPort(m.advertise ?? publicTunnelAddress, at(path, "advertise"), { allowPortZero: true });
  if (advertise.host === "0.0.0.0") throw new ConfigError("must name a host cogs can dial, not 0.0.0.0", at(path, "advertise"));
  const snPath = at(path, "server_name");
  let serverName: string;
  if (m.server_name == null) serverName = isIpLiteral(advertise.host) ? domain : advertise.host;
  else {
    const s = string(m.server_name, snPath);
    const n = normalizeHostname(s);
    if (n === null || isIpLiteral(n)) throw new ConfigError(`not a DNS name: ${JSON.stringify(s)}`, snPath);
    serverName = n;
  }
  const heartbeatIntervalMs = duration(m.heartbeat_interval, at(path, "heartbeat_interval"), DEFAULT_ENDPOINT_HEARTBEAT_INTERVAL_MS, 1);
  const timeoutMs = duration(m.timeout, at(path, "timeout"), DEFAULT_ENDPOINT_TIMEOUT_MS, 1);
  // One late heartbeat (a GC pause, a slow store) must not make a live hub look gone.
  if (timeoutMs < 2 * heartbeatIntervalMs) {
    throw new ConfigError(`must be at least twice heartbeat_interval (${fmtMs(2 * heartbeatIntervalMs)}), got ${fmtMs(timeoutMs)}`, at(path, "timeout"));
  }
  return { name, advertise, serverName, heartbeatIntervalMs, timeoutMs };
}
