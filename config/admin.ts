/**
 * hub.admin, cog.admin and the admin listeners (hub.listen.admin, cog.listen.admin): the
 * limits of the listener that serves /healthz, /metrics, the JSON admin API and the status
 * page (gateway/admin.ts, lib/adminhttp.ts). Each key's default and bounds are stated here once.
 */
import { parseHostPort } from "../lib/hostname.js";
import { choice, durationMs, fail, HOST_PORT_JSON, int, leaf, path, section, sizeBytes } from "./fields.js";
import { MAX_MUX_INT } from "./tunnel.js";
import type { AcmeChallengeType, AdminLimits, AdminTlsMode, HostPort, HubAdmin } from "./types.js";
import { fmtMs, hostname } from "./values.js";

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
/** hub.admin.tls: plain HTTP unless asked (on loopback nothing crosses a network). */
export const DEFAULT_ADMIN_TLS: AdminTlsMode = "off";
/** hub.admin.challenge: port 80 is what a hub opens anyway, and HTTP-01 needs nothing of port 443. */
export const DEFAULT_ADMIN_CHALLENGE: AcmeChallengeType = "http-01";
const ADMIN_TLS_MODES: readonly AdminTlsMode[] = ["off", "acme", "files"];
const ADMIN_CHALLENGES: readonly AcmeChallengeType[] = ["http-01", "tls-alpn-01"];

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
  tls: choice("TLS on the admin listener: off (plain HTTP), acme (a certificate for hub.admin.hostname from hub.acme, its challenge answered on the hub's own public port 80 or 443), or files (cert_file and key_file). Default: off.",
    ADMIN_TLS_MODES, DEFAULT_ADMIN_TLS),
  hostname: leaf({ description: "The name the admin listener's certificate is for (tls: acme); its DNS must point at the hub's public address. Also accepted as Host (with tls: files, the certificate's names are, when this is not set). Default: none.", type: ["string", "null"] },
    (v) => (v == null ? null : hostname(v, ""))),
  challenge: choice(`How the hub proves hub.admin.hostname to the CA (tls: acme): http-01 on its public HTTP listener (hub.listen.http), tls-alpn-01 on its public TLS listener (hub.listen.tls). Default: ${DEFAULT_ADMIN_CHALLENGE}.`,
    ADMIN_CHALLENGES, DEFAULT_ADMIN_CHALLENGE),
  cert_file: path("PEM certificate chain of the admin listener (tls: files), read at start. Default: none.", undefined),
  key_file: path("PEM private key of cert_file (tls: files). Default: none.", undefined),
}, (o): HubAdmin => {
  if (o.tls === "acme" && o.hostname === null) fail(["hostname"], "required with tls: acme (the name the certificate is for; its DNS points at the hub)");
  if (o.tls === "files") {
    if (o.cert_file === null) fail(["cert_file"], "required with tls: files");
    if (o.key_file === null) fail(["key_file"], "required with tls: files");
  } else {
    for (const key of ["cert_file", "key_file"] as const) if (o[key] !== null) fail([key], "only allowed with tls: files");
  }
  if (o.status_refresh < MIN_STATUS_REFRESH_MS || o.status_refresh % 1000 !== 0) {
    fail(["status_refresh"], `must be whole seconds, at least 1s (the page reloads with <meta http-equiv="refresh">), got ${fmtMs(o.status_refresh)}`);
  }
  return {
    requestTimeoutMs: o.request_timeout,
    maxConnections: o.max_connections,
    maxRequestBodyBytes: o.max_request_body,
    statusRefreshMs: o.status_refresh,
    cogsCacheMs: o.cogs_cache,
    tls: o.tls,
    hostname: o.hostname,
    challenge: o.challenge,
    certFile: o.cert_file,
    keyFile: o.key_file,
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
