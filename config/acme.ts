/**
 * The capsul.yaml keys of HTTPS on the cog: `cog.acme` (the ACME client),
 * `cog.terminate` (limits of the TLS the cog serves itself), and the route keys
 * `tls`, `challenge`, `redirect_http` and `hsts`: their schema, each default stated once.
 */
import type { z } from "zod";
import { ConfigError } from "../lib/errors.js";
import { choice, custom, durationMs, fail, path, section, sizeBytes } from "./fields.js";
import type { AcmeChallengeType, AcmeConfig, CogRoute, RouteTermination, TerminateConfig } from "./types.js";
import { boolean, duration, fmtMs, string } from "./values.js";

/** acme-client's (and Let's Encrypt's) directory URLs behind the shorthands. */
export const LETSENCRYPT_DIRECTORY_URL = "https://acme-v02.api.letsencrypt.org/directory";
export const LETSENCRYPT_STAGING_DIRECTORY_URL = "https://acme-staging-v02.api.letsencrypt.org/directory";
const DIRECTORY_SHORTHANDS: Record<string, string> = {
  "letsencrypt": LETSENCRYPT_DIRECTORY_URL,
  "letsencrypt-staging": LETSENCRYPT_STAGING_DIRECTORY_URL,
};

// Defaults, stated once: capsul.schema.json's descriptions and the runtime values use them.
export const DEFAULT_ACME_DIRECTORY = "letsencrypt";
/** Two thirds, as Let's Encrypt advises (30 days before the end of a 90-day certificate). */
export const DEFAULT_ACME_RENEW_AT_RATIO = 2 / 3;
/**
 * Let's Encrypt allows 5 failed validations per hostname per hour: 5m, 10m, 20m, 40m
 * puts 4 retries in the first 75 minutes, under that limit.
 */
export const DEFAULT_ACME_RETRY_MIN_DELAY_MS = 5 * 60_000;
/** Twice a day at worst, as certbot's timer. */
export const DEFAULT_ACME_RETRY_MAX_DELAY_MS = 12 * 3_600_000;
export const DEFAULT_ACME_REQUEST_TIMEOUT_MS = 30_000;
export const DEFAULT_ACME_ORDER_TIMEOUT_MS = 5 * 60_000;
export const DEFAULT_ACME_POLL_INTERVAL_MS = 1_000;
export const DEFAULT_TERMINATE_HANDSHAKE_TIMEOUT_MS = 10_000;
/** As hub.limits.client_hello_max_bytes: 16 KiB of handshake message + 5 record headers. */
export const DEFAULT_TERMINATE_CLIENT_HELLO_MAX_BYTES = 16 * 1024 + 5 * 5;
export const DEFAULT_TERMINATE_HTTP_HEADER_MAX_BYTES = 16 * 1024;
export const DEFAULT_TERMINATE_HTTP_KEEPALIVE_TIMEOUT_MS = 5_000;
export const DEFAULT_ROUTE_CHALLENGE: AcmeChallengeType = "http-01";
/** `hsts: true`: one year, the max-age HSTS preload lists ask for. */
export const DEFAULT_HSTS_MAX_AGE_SEC = 365 * 86_400;

/** Below this, a "renewal" would start before the certificate is of any use; above, too close to expiry. */
const RENEW_AT_RATIO_MIN = 0.01;
const RENEW_AT_RATIO_MAX = 0.95;

const CHALLENGES: readonly AcmeChallengeType[] = ["http-01", "tls-alpn-01"];
const TLS_MODES = ["passthrough", "terminate"] as const;

function directoryUrl(text: string): string {
  const url = DIRECTORY_SHORTHANDS[text] ?? text;
  let parsed: URL;
  try {
    parsed = new URL(url);
  } catch {
    throw new ConfigError(`not a URL (or letsencrypt, letsencrypt-staging): ${JSON.stringify(text)}`);
  }
  // RFC 8555 §6.1: ACME is HTTPS only; a plain-HTTP directory would hand the account key's signatures to anyone on the path.
  if (parsed.protocol !== "https:") throw new ConfigError(`must be an https:// URL, got ${JSON.stringify(text)}`);
  return url;
}

function email(value: unknown): string | null {
  if (value === undefined || value === null) return null;
  const text = string(value, "");
  if (!/^[^@\s:]+@[^@\s:]+\.[^@\s:]+$/.test(text)) throw new ConfigError(`not an email address: ${JSON.stringify(text)}`);
  return text;
}

function ratio(value: unknown, def: number, min: number, max: number): number {
  if (value === undefined || value === null) return def;
  if (typeof value !== "number" || !Number.isFinite(value)) throw new ConfigError(`expected a number, got ${JSON.stringify(value)}`);
  if (value < min || value > max) throw new ConfigError(`out of range (${min}-${max}): ${value}`);
  return value;
}

/** The keys of an ACME client section: cog.acme and hub.acme share them (one definition, two sections). */
const ACME_SHAPE = {
  directory_url: custom({
    description: `ACME directory URL (https); the shorthands letsencrypt and letsencrypt-staging name Let's Encrypt's. Default: ${DEFAULT_ACME_DIRECTORY}.`,
    default: DEFAULT_ACME_DIRECTORY, anyOf: [{ enum: Object.keys(DIRECTORY_SHORTHANDS) }, { type: "string", pattern: "^https://" }, { type: "null" }],
  }, (v) => directoryUrl(string(v, "", DEFAULT_ACME_DIRECTORY))),
  ca_bundle: path("PEM file of CA certificates trusted for the directory besides the system's, e.g. a test CA (default none).", undefined),
  email: custom({ description: "Contact address registered with the account, for the CA's expiry notices (default none).", type: ["string", "null"] }, email),
  renew_at: custom({
    description: "Renew once this fraction of a certificate's lifetime has passed, less a random jitter of up to 5% of it. Default: 0.667 (two thirds).",
    default: DEFAULT_ACME_RENEW_AT_RATIO, type: ["number", "null"], minimum: RENEW_AT_RATIO_MIN, maximum: RENEW_AT_RATIO_MAX,
  }, (v) => ratio(v, DEFAULT_ACME_RENEW_AT_RATIO, RENEW_AT_RATIO_MIN, RENEW_AT_RATIO_MAX)),
  retry_min_delay: durationMs("First delay after a failed order; doubled per failure, with jitter. A longer Retry-After from the CA wins.",
    { def: DEFAULT_ACME_RETRY_MIN_DELAY_MS, min: 1 }),
  retry_max_delay: durationMs("Cap of that backoff.", { def: DEFAULT_ACME_RETRY_MAX_DELAY_MS, min: 1 }),
  request_timeout: durationMs("Deadline for one HTTP request to the CA.", { def: DEFAULT_ACME_REQUEST_TIMEOUT_MS, min: 1 }),
  order_timeout: durationMs("Deadline for one whole order: account, challenge, finalize, download.", { def: DEFAULT_ACME_ORDER_TIMEOUT_MS, min: 1 }),
  poll_interval: durationMs("First delay between polls of a pending challenge or order; doubled up to 8 times this.", { def: DEFAULT_ACME_POLL_INTERVAL_MS, min: 1 }),
};

function buildAcme(o: z.output<z.ZodObject<typeof ACME_SHAPE>>): AcmeConfig {
  if (o.retry_min_delay > o.retry_max_delay) fail(["retry_min_delay"], `must not exceed retry_max_delay (${fmtMs(o.retry_max_delay)})`);
  return {
    directoryUrl: o.directory_url,
    caBundle: o.ca_bundle,
    email: o.email,
    renewAtRatio: o.renew_at,
    retryMinDelayMs: o.retry_min_delay,
    retryMaxDelayMs: o.retry_max_delay,
    requestTimeoutMs: o.request_timeout,
    orderTimeoutMs: o.order_timeout,
    pollIntervalMs: o.poll_interval,
  };
}

export const acmeSchema = section("The ACME client that gets certificates for `tls: terminate` routes (idle while no route terminates).", ACME_SHAPE, buildAcme);

/** hub.acme: the same client, for the hub's own admin listener (hub.admin.tls: acme; idle otherwise). */
export const hubAcmeSchema = section("The ACME client that gets the certificate of the hub's admin listener when hub.admin.tls is acme (idle otherwise).", ACME_SHAPE, buildAcme);

export const terminateSchema = section("Limits of the TLS the cog terminates itself (`tls: terminate` routes).", {
  handshake_timeout: durationMs("Deadline for a visitor's ClientHello (or HTTP request head on the port-80 side) and TLS handshake.",
    { def: DEFAULT_TERMINATE_HANDSHAKE_TIMEOUT_MS, min: 1 }),
  client_hello_max_bytes: sizeBytes("Cap on a buffered ClientHello, record headers included; as hub.limits.client_hello_max_bytes (16KiB + 5*5 headers).",
    { def: DEFAULT_TERMINATE_CLIENT_HELLO_MAX_BYTES, min: 1 }),
  http_header_max_bytes: sizeBytes("Cap on a buffered HTTP request head on the port-80 side.", { def: DEFAULT_TERMINATE_HTTP_HEADER_MAX_BYTES, min: 1 }),
  http_keepalive_timeout: durationMs("With HSTS on, an idle kept-alive HTTPS connection is closed after this.",
    { def: DEFAULT_TERMINATE_HTTP_KEEPALIVE_TIMEOUT_MS, min: 1 }),
}, (o): TerminateConfig => ({
  handshakeTimeoutMs: o.handshake_timeout,
  clientHelloMaxBytes: o.client_hello_max_bytes,
  httpHeaderMaxBytes: o.http_header_max_bytes,
  httpKeepAliveTimeoutMs: o.http_keepalive_timeout,
}));

/** `hsts`: false/absent (off), true (DEFAULT_HSTS_MAX_AGE_SEC), or a duration (its whole seconds). */
function hsts(value: unknown): number | undefined {
  if (value === undefined || value === null) return undefined;
  if (value === false) return 0;
  if (value === true) return DEFAULT_HSTS_MAX_AGE_SEC;
  const sec = Math.floor(duration(value, "", 0, 1) / 1000);
  if (sec < 1) throw new ConfigError("must be at least 1s (or false to turn HSTS off)");
  return sec;
}

/** The route keys of TLS termination; the route section puts them in its shape. Absent is undefined. */
export const ROUTE_TLS_SHAPE = {
  tls: choice("tls routes: passthrough (the target holds its own certificate and key) or terminate (the cog obtains a certificate by ACME, serves TLS itself and sends plaintext to target). Default: passthrough.",
    TLS_MODES, undefined, { optional: true }),
  challenge: choice(`How the cog proves the hostname to the CA: http-01 through the hub's port 80, tls-alpn-01 through its SNI routing (tls: terminate only). Default: ${DEFAULT_ROUTE_CHALLENGE}.`,
    CHALLENGES, undefined, { optional: true }),
  redirect_http: custom({ description: "Answer plain-HTTP requests for the hostname with a 308 redirect to https:// instead of passing them to the target (tls: terminate only). Default: false.", type: ["boolean", "null"] },
    (v) => (v == null ? undefined : boolean(v, "", false))),
  hsts: custom({
    description: "Strict-Transport-Security max-age added to every HTTPS response: false (none), true (365d), or a duration of at least 1s (tls: terminate only). Default: false.",
    anyOf: [{ type: "boolean" }, { type: "string" }, { type: "number" }, { type: "null" }],
  }, hsts),
};

interface RouteTlsInput { tls?: "passthrough" | "terminate"; challenge?: AcmeChallengeType; redirect_http?: boolean; hsts?: number }

/**
 * Reads a route's TLS keys into `route.terminate` (left absent for passthrough); `route` has
 * its kind and hostname. Errors name keys relative to the route.
 */
export function buildRouteTermination(o: RouteTlsInput, route: CogRoute): void {
  if (o.tls !== undefined && route.kind !== "tls") {
    fail(["tls"], `only tls routes have this key (${route.kind} routes carry no TLS of their own)`);
  }
  if (o.tls !== "terminate") {
    for (const key of ["challenge", "redirect_http", "hsts"] as const) {
      if (o[key] !== undefined) fail([key], "only allowed with tls: terminate");
    }
    return;
  }
  if (route.hostname?.startsWith("*.")) {
    // RFC 8555 §7.1.3 / Let's Encrypt: wildcard names need DNS-01, which the hub cannot answer for a cog.
    fail(["hostname"], `tls: terminate needs an exact hostname (a wildcard certificate needs a DNS-01 challenge): ${JSON.stringify(route.hostname)}`);
  }
  const t: RouteTermination = {
    challenge: o.challenge ?? DEFAULT_ROUTE_CHALLENGE,
    redirectHttp: o.redirect_http ?? false,
    hstsMaxAgeSec: o.hsts ?? 0,
  };
  route.terminate = t;
}

/**
 * A `tls: terminate` route answers plain HTTP for its hostname itself (ACME
 * challenges, the redirect, or its target), so a separate http route for the
 * same name would be ambiguous. Errors name keys relative to the routes list.
 */
export function checkTerminatedHostnames(routes: readonly CogRoute[]): void {
  routes.forEach((r, j) => {
    if (r.kind !== "http") return;
    const i = routes.findIndex((o) => o.terminate !== undefined && o.hostname === r.hostname);
    if (i >= 0) {
      fail([j, "hostname"], `${JSON.stringify(r.hostname)} is served on plain HTTP by cog.routes[${i}] (tls: terminate answers ACME challenges there and passes the rest to its target, or redirects with redirect_http): remove this route`);
    }
  });
}
