/**
 * hub.admin, cog.admin and the admin listeners (hub.listen.admin, cog.listen.admin): the
 * limits of the listener that serves /healthz, /metrics, the JSON admin API and the status
 * page (gateway/admin.ts, lib/adminhttp.ts). Each key's default and bounds are stated here once.
 */
import { parseHostPort } from "../lib/hostname.js";
import { durationMs, fail, HOST_PORT_JSON, int, leaf, section, sizeBytes } from "./fields.js";
import { MAX_MUX_INT } from "./tunnel.js";
import type { AdminLimits, HostPort, HubAdmin } from "./types.js";
import { fmtMs } from "./values.js";

export const DEFAULT_HUB_ADMIN_LISTEN = "127.0.0.1:7444";
export const DEFAULT_COG_ADMIN_LISTEN = "127.0.0.1:7445";
// hub.admin and cog.admin. lib/adminhttp.ts and gateway/statuspage.ts export the same values as
// ADMIN_REQUEST_TIMEOUT_MS, ADMIN_MAX_CONNECTIONS, ADMIN_MAX_REQUEST_BODY_BYTES and
// STATUS_REFRESH_MS (test/admin.test.ts checks that they agree).
export const DEFAULT_ADMIN_REQUEST_TIMEOUT_MS = 10_000;
export const DEFAULT_ADMIN_MAX_CONNECTIONS = 64;
export const DEFAULT_ADMIN_MAX_REQUEST_BODY_BYTES = 16 * 1024;
export const DEFAULT_STATUS_REFRESH_MS = 5_000;
export const DEFAULT_ADMIN_COGS_CACHE_MS = 2_000;
/** The status page reloads with <meta http-equiv="refresh" content="SECONDS">: whole seconds, at least one. */
export const MIN_STATUS_REFRESH_MS = 1_000;

const ADMIN_LIMITS_SHAPE = {
  request_timeout: durationMs("Deadline for one admin request, headers and body; past it the connection is closed.",
    { def: DEFAULT_ADMIN_REQUEST_TIMEOUT_MS, min: 1, max: MAX_MUX_INT }),
  max_connections: int("Connections the admin listener holds at once; more are closed as they arrive.", { def: DEFAULT_ADMIN_MAX_CONNECTIONS, min: 1 }),
};

export const hubAdminSchema = section("Limits of the hub's admin listener (hub.listen.admin).", {
  ...ADMIN_LIMITS_SHAPE,
  max_request_body: sizeBytes("Largest admin API request body; a bigger one is answered 413.", { def: DEFAULT_ADMIN_MAX_REQUEST_BODY_BYTES, min: 1 }),
  status_refresh: durationMs("How often the status page reloads itself, in whole seconds (at least 1s).",
    { def: DEFAULT_STATUS_REFRESH_MS, min: 1, max: MAX_MUX_INT }),
  cogs_cache: durationMs("How long the list of cogs read from the state store is reused by /metrics, the JSON API and the status page (live state is never cached); 0 reads it for every request.",
    { def: DEFAULT_ADMIN_COGS_CACHE_MS, min: 0, max: MAX_MUX_INT }),
}, (o): HubAdmin => {
  if (o.status_refresh < MIN_STATUS_REFRESH_MS || o.status_refresh % 1000 !== 0) {
    fail(["status_refresh"], `must be whole seconds, at least 1s (the page reloads with <meta http-equiv="refresh">), got ${fmtMs(o.status_refresh)}`);
  }
  return {
    requestTimeoutMs: o.request_timeout,
    maxConnections: o.max_connections,
    maxRequestBodyBytes: o.max_request_body,
    statusRefreshMs: o.status_refresh,
    cogsCacheMs: o.cogs_cache,
  };
});

export const cogAdminSchema = section("Limits of the cog's admin listener (cog.listen.admin).", ADMIN_LIMITS_SHAPE,
  (o): AdminLimits => ({ requestTimeoutMs: o.request_timeout, maxConnections: o.max_connections }));

/**
 * cog.listen.admin: absent is undefined, for the cog section to choose its default (off when a
 * provisioner runs: its API listener serves /healthz and /metrics then); null, false or "off" is off.
 */
export const cogAdminListen = leaf({
  description: `The cog's /healthz and /metrics, or off; anything but loopback requires the bearer token in <data_dir>/admin-token (default ${DEFAULT_COG_ADMIN_LISTEN}, or off when cog.provisioner is configured: its API listener serves them then).`,
  anyOf: [HOST_PORT_JSON, { const: "off" }, { const: false }, { type: "null" }],
}, (v): HostPort | null | undefined => {
  if (v === undefined) return undefined;
  if (v === null || v === false || v === "off") return null;
  return parseHostPort(v, undefined, { allowPortZero: true });
});
