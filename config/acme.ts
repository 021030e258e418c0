/**
 * The capsul.yaml keys of HTTPS on the cog: `cog.acme` (the ACME client),
 * `cog.terminate` (limits of the TLS the cog serves itself), and the route keys
 * `tls`, `challenge`, `redirect_http` and `hsts`. Called from ./config.ts; the
 * same rules as there: unknown keys refused, every error names the key path.
 */
import { resolve } from "node:path";
import { ConfigError } from "../lib/errors.js";
import type { AcmeChallengeType, AcmeConfig, CogRoute, RouteTermination, TerminateConfig } from "./types.js";
import { at, boolean, duration, fmtMs, mapping, oneOf, size, string, type Obj } from "./values.js";

/** acme-client's (and Let's Encrypt's) directory URLs behind the shorthands. */
export const LETSENCRYPT_DIRECTORY_URL = "https://acme-v02.api.letsencrypt.org/directory";
export const LETSENCRYPT_STAGING_DIRECTORY_URL = "https://acme-staging-v02.api.letsencrypt.org/directory";
const DIRECTORY_SHORTHANDS: Record<string, string> = {
  "letsencrypt": LETSENCRYPT_DIRECTORY_URL,
  "letsencrypt-staging": LETSENCRYPT_STAGING_DIRECTORY_URL,
};

// Defaults. Each one is stated in the doc comment of its field in ./types.ts
// (test/config.test.ts checks that they agree).
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

export const ACME_KEYS = ["directory_url", "ca_bundle", "email", "renew_at", "retry_min_delay", "retry_max_delay",
  "request_timeout", "order_timeout", "poll_interval"] as const;
export const TERMINATE_KEYS = ["handshake_timeout", "client_hello_max_bytes", "http_header_max_bytes", "http_keepalive_timeout"] as const;
/** The route keys this file reads; ./config.ts accepts them on every route and leaves them to parseRouteTermination. */
export const ROUTE_TLS_KEYS = ["tls", "challenge", "redirect_http", "hsts"] as const;

const CHALLENGES: readonly AcmeChallengeType[] = ["http-01", "tls-alpn-01"];
const TLS_MODES = ["passthrough", "terminate"] as const;

function directoryUrl(value: unknown, path: string): string {
  const text = string(value, path, DEFAULT_ACME_DIRECTORY);
  const url = DIRECTORY_SHORTHANDS[text] ?? text;
  let parsed: URL;
  try {
    parsed = new URL(url);
  } catch {
    throw new ConfigError(`not a URL (or letsencrypt, letsencrypt-staging): ${JSON.stringify(text)}`, path);
  }
  // RFC 8555 §6.1: ACME is HTTPS only; a plain-HTTP directory would hand the account key's signatures to anyone on the path.
  if (parsed.protocol !== "https:") throw new ConfigError(`must be an https:// URL, got ${JSON.stringify(text)}`, path);
  return url;
}

function email(value: unknown, path: string): string | null {
  if (value === undefined || value === null) return null;
  const text = string(value, path);
  if (!/^[^@\s:]+@[^@\s:]+\.[^@\s:]+$/.test(text)) throw new ConfigError(`not an email address: ${JSON.stringify(text)}`, path);
  return text;
}

function ratio(value: unknown, path: string, def: number, min: number, max: number): number {
  if (value === undefined || value === null) return def;
  if (typeof value !== "number" || !Number.isFinite(value)) throw new ConfigError(`expected a number, got ${JSON.stringify(value)}`, path);
  if (value < min || value > max) throw new ConfigError(`out of range (${min}-${max}): ${value}`, path);
  return value;
}

export function parseAcme(value: unknown, path: string, baseDir: string): AcmeConfig {
  const m: Obj = value == null ? {} : mapping(value, path, ACME_KEYS);
  const retryMinDelayMs = duration(m.retry_min_delay, at(path, "retry_min_delay"), DEFAULT_ACME_RETRY_MIN_DELAY_MS, 1);
  const retryMaxDelayMs = duration(m.retry_max_delay, at(path, "retry_max_delay"), DEFAULT_ACME_RETRY_MAX_DELAY_MS, 1);
  if (retryMinDelayMs > retryMaxDelayMs) {
    throw new ConfigError(`must not exceed retry_max_delay (${fmtMs(retryMaxDelayMs)})`, at(path, "retry_min_delay"));
  }
  const bundlePath = at(path, "ca_bundle");
  return {
    directoryUrl: directoryUrl(m.directory_url, at(path, "directory_url")),
    caBundle: m.ca_bundle == null ? null : resolve(baseDir, string(m.ca_bundle, bundlePath)),
    email: email(m.email, at(path, "email")),
    renewAtRatio: ratio(m.renew_at, at(path, "renew_at"), DEFAULT_ACME_RENEW_AT_RATIO, RENEW_AT_RATIO_MIN, RENEW_AT_RATIO_MAX),
    retryMinDelayMs,
    retryMaxDelayMs,
    requestTimeoutMs: duration(m.request_timeout, at(path, "request_timeout"), DEFAULT_ACME_REQUEST_TIMEOUT_MS, 1),
    orderTimeoutMs: duration(m.order_timeout, at(path, "order_timeout"), DEFAULT_ACME_ORDER_TIMEOUT_MS, 1),
    pollIntervalMs: duration(m.poll_interval, at(path, "poll_interval"), DEFAULT_ACME_POLL_INTERVAL_MS, 1),
  };
}

export function parseTerminate(value: unknown, path: string): TerminateConfig {
  const m: Obj = value == null ? {} : mapping(value, path, TERMINATE_KEYS);
  return {
    handshakeTimeoutMs: duration(m.handshake_timeout, at(path, "handshake_timeout"), DEFAULT_TERMINATE_HANDSHAKE_TIMEOUT_MS, 1),
    clientHelloMaxBytes: size(m.client_hello_max_bytes, at(path, "client_hello_max_bytes"), DEFAULT_TERMINATE_CLIENT_HELLO_MAX_BYTES, 1),
    httpHeaderMaxBytes: size(m.http_header_max_bytes, at(path, "http_header_max_bytes"), DEFAULT_TERMINATE_HTTP_HEADER_MAX_BYTES, 1),
    httpKeepAliveTimeoutMs: duration(m.http_keepalive_timeout, at(path, "http_keepalive_timeout"), DEFAULT_TERMINATE_HTTP_KEEPALIVE_TIMEOUT_MS, 1),
  };
}

/** `hsts`: false/absent (off), true (DEFAULT_HSTS_MAX_AGE_SEC), or a duration (its whole seconds). */
function hsts(value: unknown, path: string): number {
  if (value === undefined || value === null || value === false) return 0;
  if (value === true) return DEFAULT_HSTS_MAX_AGE_SEC;
  const sec = Math.floor(duration(value, path, 0, 1) / 1000);
  if (sec < 1) throw new ConfigError("must be at least 1s (or false to turn HSTS off)", path);
  return sec;
}

/**
 * Reads a route's TLS keys into `route.terminate` (left absent for passthrough).
 * `m` is the route's mapping, already checked for unknown keys; `route` has its
 * kind and hostname.
 */
export function parseRouteTermination(m: Obj, p: string, route: CogRoute): void {
  const mode = oneOf(m.tls, at(p, "tls"), TLS_MODES, "passthrough");
  if (m.tls != null && route.kind !== "tls") {
    throw new ConfigError(`only tls routes have this key (${route.kind} routes carry no TLS of their own)`, at(p, "tls"));
  }
  if (mode !== "terminate") {
    for (const key of ["challenge", "redirect_http", "hsts"] as const) {
      if (m[key] != null) throw new ConfigError("only allowed with tls: terminate", at(p, key));
    }
    return;
  }
  if (route.hostname?.startsWith("*.")) {
    // RFC 8555 §7.1.3 / Let's Encrypt: wildcard names need DNS-01, which the hub cannot answer for a cog.
    throw new ConfigError(`tls: terminate needs an exact hostname (a wildcard certificate needs a DNS-01 challenge): ${JSON.stringify(route.hostname)}`, at(p, "hostname"));
  }
  const t: RouteTermination = {
    challenge: oneOf(m.challenge, at(p, "challenge"), CHALLENGES, DEFAULT_ROUTE_CHALLENGE),
    redirectHttp: boolean(m.redirect_http, at(p, "redirect_http"), false),
    hstsMaxAgeSec: hsts(m.hsts, at(p, "hsts")),
  };
  route.terminate = t;
}

/**
 * A `tls: terminate` route answers plain HTTP for its hostname itself (ACME
 * challenges, the redirect, or its target), so a separate http route for the
 * same name would be ambiguous.
 */
export function checkTerminatedHostnames(routes: readonly CogRoute[], path: string): void {
  routes.forEach((r, j) => {
    if (r.kind !== "http") return;
    const i = routes.findIndex((o) => o.terminate !== undefined && o.hostname === r.hostname);
    if (i >= 0) {
      throw new ConfigError(`${JSON.stringify(r.hostname)} is served on plain HTTP by ${path}[${i}] (tls: terminate answers ACME challenges there and passes the rest to its target, or redirects with redirect_http): remove this route`, `${path}[${j}].hostname`);
    }
  });
}
