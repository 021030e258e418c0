import { timingSafeEqual } from "node:crypto";
import { isIP } from "node:net";
import type { Context, MiddlewareHandler } from "hono";
import type { HostPort } from "../config/types.js";
import type { Logger } from "../lib/log.js";

/**
 * Who may drive the provisioner API (DESIGN.md "Trust boundaries"): a local
 * admin tool that holds the token, never a web page. Three checks, in this
 * order, each answered with a JSON error and one log line:
 *   1. any `Origin` header → 403: browsers send it on every cross-site POST
 *      (and POST stop/start/reboot have no body, so a plain form could send
 *      them); our own clients (the CLI, curl) never do.
 *   2. a `Host` that is not our own listen address → 421: a DNS-rebinding page
 *      reaches 127.0.0.1 under its own name; an IP literal cannot be rebound.
 *   3. no `Authorization: Bearer <data_dir>/api-token` → 401, also on loopback:
 *      every local user and every process of the cog could otherwise use it.
 */

/** Host and Origin values are quoted in logs up to this length (attacker-chosen strings). */
export const LOGGED_HEADER_MAX_CHARS = 200;

const isWildcard = (h: string): boolean => h === "0.0.0.0" || h === "::" || h === "";
const isLoopbackHost = (h: string): boolean => h === "localhost" || h === "::1" || /^127\.\d+\.\d+\.\d+$/.test(h);

/** Splits a Host header into a lower-case host (IPv6 without brackets) and a port; null if malformed. */
export function parseHostHeader(value: string): { host: string; port: number | null } | null {
  const m = /^(?:\[([0-9a-fA-F:.]+)\]|([^:[\]\s]+))(?::(\d{1,5}))?$/.exec(value.trim());
  if (!m) return null;
  const port = m[3] === undefined ? null : Number(m[3]);
  if (port !== null && port > 65535) return null;
  return { host: (m[1] ?? m[2]!).toLowerCase(), port };
}

/**
 * Does `hostHeader` name the API as it listens on `listen` (the port actually
 * bound)? Loopback listens answer to their address and `localhost`; a wildcard
 * listen answers to any IP literal (every address of the machine) and
 * `localhost`; a specific address answers only to itself. Names other than
 * `localhost` are always refused: that is what DNS rebinding would send.
 */
export function hostAllowed(hostHeader: string | undefined, listen: HostPort): boolean {
  if (!hostHeader) return false;
  const h = parseHostHeader(hostHeader);
  if (!h) return false;
  if ((h.port ?? 80) !== listen.port) return false;
  const want = listen.host.toLowerCase();
  if (h.host === "localhost") return isLoopbackHost(want) || isWildcard(want);
  if (!isIP(h.host)) return false;
  if (isWildcard(want)) return true;
  if (want === "localhost") return h.host === "::1" || /^127\.\d+\.\d+\.\d+$/.test(h.host);
  return h.host === want;
}

function quoted(v: string | undefined): string | undefined {
  return v === undefined ? undefined : v.slice(0, LOGGED_HEADER_MAX_CHARS);
}

/**
 * The middleware. `listen()` returns the address actually bound (port 0 in
 * tests becomes the kernel's choice), so it is read per request.
 */
export function apiGuard(opts: { token: string; listen: () => HostPort; log: Logger }): MiddlewareHandler {
  const want = Buffer.from(`Bearer ${opts.token}`);
  const refuse = (c: Context, status: 401 | 403 | 421, code: string, message: string): Response => {
    opts.log.warn("api request refused", {
      reason: code, method: c.req.method, path: c.req.path,
      host: quoted(c.req.header("host")), origin: quoted(c.req.header("origin")),
    });
    return c.json({ error: { code, message } }, status);
  };
  return async (c, next) => {
    if (c.req.header("origin") !== undefined) {
      return refuse(c, 403, "browser_request_refused", "requests from web pages (with an Origin header) are refused; use capsul vm/image or curl");
    }
    if (!hostAllowed(c.req.header("host"), opts.listen())) {
      return refuse(c, 421, "wrong_host", "the Host header does not name this API's listen address (DNS rebinding?)");
    }
    const got = Buffer.from(c.req.header("authorization") ?? "");
    if (got.length !== want.length || !timingSafeEqual(got, want)) {
      return refuse(c, 401, "unauthorized", "missing or wrong bearer token (Authorization: Bearer $(cat <data_dir>/api-token))");
    }
    await next();
  };
}
