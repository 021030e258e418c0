import dns from "node:dns/promises";
import http from "node:http";
import https from "node:https";
import { isIP, type LookupFunction } from "node:net";
import { badRequest, ProvisionerError } from "./errors.js";
import type { AddressPolicy } from "./netguard.js";

/**
 * Image downloads that cannot be pointed at the cog itself. Redirects are
 * followed here, one hop at a time (at most `maxRedirects`), never by the HTTP
 * client: every hop's name is resolved, EVERY address it resolves to must pass
 * the AddressPolicy, and the connection goes to the address that was checked
 * (a pinned `lookup`), so a DNS answer that changes between check and connect
 * (rebinding) cannot reach a refused address. TLS still verifies the hop's name.
 */

export interface DownloadOptions {
  policy: AddressPolicy;
  maxRedirects: number;
  /** No byte (or no response) from the server for this long ends the download. */
  idleTimeoutMs: number;
}

export interface Download { body: http.IncomingMessage; totalBytes: number | null; url: string }

const REDIRECTS = new Set([301, 302, 303, 307, 308]);

const failed = (url: string, why: string, cause?: unknown): ProvisionerError =>
  new ProvisionerError("download_failed", `download ${url}: ${why}`, 502, { cause });

/** Resolves the hop's host and returns the one address to connect to, or refuses the whole URL. */
async function checkedAddress(url: URL, policy: AddressPolicy): Promise<{ address: string; family: 4 | 6 }> {
  const host = url.hostname.replace(/^\[(.*)\]$/, "$1");
  let addrs: Array<{ address: string; family: number }>;
  if (isIP(host)) {
    addrs = [{ address: host, family: isIP(host) }];
  } else {
    try {
      addrs = await dns.lookup(host, { all: true, verbatim: true });
    } catch (e) {
      throw failed(url.href, `cannot resolve ${host}: ${(e as NodeJS.ErrnoException).code ?? (e as Error).message}`, e);
    }
  }
  for (const a of addrs) {
    const why = policy.refusal(a.address);
    if (why) {
      const where = host === a.address ? a.address : `${host} → ${a.address}`;
      throw badRequest("source_refused",
        `${url.href}: refused, ${where} is ${why}; image URLs must reach the internet ` +
        "(cog.provisioner.import_allowed_cidrs lists exceptions)");
    }
  }
  if (addrs.length === 0) throw failed(url.href, `${host} has no address`);
  return { address: addrs[0]!.address, family: addrs[0]!.family === 6 ? 6 : 4 };
}

function pinned(address: string, family: 4 | 6): LookupFunction {
  // net.connect asks for `all` when it races address families (autoSelectFamily).
  return ((_host: string, opts: { all?: boolean }, cb: (...a: unknown[]) => void) => {
    if (opts?.all) cb(null, [{ address, family }]);
    else cb(null, address, family);
  }) as unknown as LookupFunction;
}

function request(url: URL, address: string, family: 4 | 6, idleTimeoutMs: number): Promise<http.IncomingMessage> {
  return new Promise((resolve, reject) => {
    const mod = url.protocol === "https:" ? https : http;
    const req = mod.get(url, { lookup: pinned(address, family), agent: false, headers: { "user-agent": "capsul-provisioner" } }, resolve);
    req.setTimeout(idleTimeoutMs, () => req.destroy(new Error(`no answer within ${idleTimeoutMs} ms`)));
    req.once("error", reject);
  });
}

/** GETs `src`, following redirects itself; resolves with the body of the final 200. */
export async function openDownload(src: string, opts: DownloadOptions): Promise<Download> {
  let url: URL;
  try { url = new URL(src); } catch { throw badRequest("bad_source", `not a URL: ${src}`); }
  for (let hop = 0; ; hop++) {
    if (url.protocol !== "http:" && url.protocol !== "https:") {
      throw badRequest("source_refused", `${url.href}: only http and https URLs`);
    }
    const { address, family } = await checkedAddress(url, opts.policy);
    let res: http.IncomingMessage;
    try {
      res = await request(url, address, family, opts.idleTimeoutMs);
    } catch (e) {
      throw failed(url.href, (e as Error).message, e);
    }
    const status = res.statusCode ?? 0;
    if (REDIRECTS.has(status)) {
      res.destroy();
      const loc = res.headers.location;
      if (!loc) throw failed(url.href, `HTTP ${status} without a Location`);
      if (hop >= opts.maxRedirects) throw failed(src, `more than ${opts.maxRedirects} redirects`);
      try { url = new URL(loc, url); } catch { throw failed(url.href, `bad redirect Location ${JSON.stringify(loc)}`); }
      continue;
    }
    if (status !== 200) {
      res.destroy();
      throw failed(url.href, `HTTP ${status}`);
    }
    // The idle timeout keeps watching the body: a server that stops sending ends the import.
    res.setTimeout(opts.idleTimeoutMs, () => res.destroy(failed(url.href, `no data for ${opts.idleTimeoutMs} ms`)));
    const len = Number(res.headers["content-length"]);
    return { body: res, totalBytes: Number.isFinite(len) && len > 0 ? len : null, url: url.href };
  }
}
