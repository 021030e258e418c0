/**
 * How the cog's ACME traffic goes out: through acme-client's own axios instance,
 * with two hooks installed once, so that each order runs in a context of its own
 * (AsyncLocalStorage) that decides the CA trust, the request timeout and the
 * abort signal, and records what the CA answered.
 *
 * Why: acme-client 5.4 turns every non-2xx answer into a bare `Error(detail)`:
 * the HTTP status and Retry-After are lost, and a refused connection surfaces as
 * a TypeError from its retry interceptor. The scheduler needs all three to tell
 * "rate limited, wait an hour" from "CA down, back off" from "challenge failed".
 * acme-client's own retries are switched off (retryMaxAttempts 0): they sleep
 * inside a request for up to Retry-After (an hour, on a rate limit), where no
 * deadline reaches; ./acme.ts schedules every retry itself.
 */
import acme from "acme-client";
import { AsyncLocalStorage } from "node:async_hooks";
import https from "node:https";
import type { Duplex } from "node:stream";
import { parseRetryAfterMs } from "./acme-schedule.js";

/**
 * Connections one order may hold to the CA. acme-client sends its requests one at
 * a time (each needs the nonce of the one before), so one would do; the second
 * covers a HEAD for a fresh nonce racing a keep-alive socket being closed.
 */
export const ACME_MAX_SOCKETS_PER_ORDER = 2;

/** What the CA answered to the last request that failed with an HTTP status (RFC 8555 §6.7 problem document). */
export interface CaAnswer {
  status: number;
  problemType: string | null;
  detail: string | null;
  retryAfterMs: number | null;
}

/** One order's window on the wire. Closed (its agent's sockets destroyed) when the order ends. */
export class AcmeCallContext {
  readonly abort = new AbortController();
  readonly agent: https.Agent;
  /** URL of the request in flight, or of the last one. */
  url: string | null = null;
  /** Whether that request got an HTTP answer at all. */
  answered = false;
  /** The last error answer (status >= 400) of that request, if any. */
  lastError: CaAnswer | null = null;
  /** The last socket-level error (refused, reset, DNS, certificate verification). */
  networkError: string | null = null;

  constructor(ca: string[] | undefined, readonly timeoutMs: number) {
    const ctx = this;
    // Its own agent per order: the CA bundle is per cog, and a socket error is
    // recorded against the order that opened the socket.
    this.agent = new (class extends https.Agent {
      override createConnection(...args: Parameters<https.Agent["createConnection"]>): Duplex | null | undefined {
        // http.Agent calls back itself with the socket returned here.
        const s = super.createConnection(...args);
        s?.once("error", (err: Error) => { ctx.networkError = err.message; });
        return s;
      }
    })({ ca, keepAlive: true, maxSockets: ACME_MAX_SOCKETS_PER_ORDER });
  }

  close(): void {
    this.agent.destroy();
  }
}

const contexts = new AsyncLocalStorage<AcmeCallContext>();
let installed = false;

function problem(data: unknown): { type: string | null; detail: string | null } {
  let v = data;
  if (typeof v === "string") {
    const text = v;
    try { v = JSON.parse(text); } catch { return { type: null, detail: text.slice(0, 200) || null }; }
  }
  if (typeof v !== "object" || v === null) return { type: null, detail: null };
  const o = v as { type?: unknown; detail?: unknown };
  return { type: typeof o.type === "string" ? o.type : null, detail: typeof o.detail === "string" ? o.detail : null };
}

/** Installs the two axios hooks on acme-client's instance (once per process). */
export function installAcmeHooks(): void {
  if (installed) return;
  installed = true;
  const settings = (acme.axios.defaults as unknown as { acmeSettings: { retryMaxAttempts: number } }).acmeSettings;
  settings.retryMaxAttempts = 0;
  acme.axios.interceptors.request.use((config) => {
    const ctx = contexts.getStore();
    if (!ctx) return config;
    config.httpsAgent = ctx.agent;
    config.timeout = ctx.timeoutMs;
    config.signal = ctx.abort.signal;
    ctx.url = config.url ?? null;
    ctx.answered = false;
    ctx.lastError = null;
    ctx.networkError = null;
    return config;
  });
  acme.axios.interceptors.response.use((resp) => {
    const ctx = contexts.getStore();
    if (!ctx) return resp;
    ctx.answered = true;
    if (resp.status >= 400) {
      const p = problem(resp.data);
      ctx.lastError = { status: resp.status, problemType: p.type, detail: p.detail, retryAfterMs: parseRetryAfterMs(resp.headers["retry-after"] as string | undefined, Date.now()) };
    }
    return resp;
  });
}

/** Runs `fn` (a sequence of acme-client calls) with every request it makes bound to `ctx`. */
export function withAcmeContext<T>(ctx: AcmeCallContext, fn: () => Promise<T>): Promise<T> {
  installAcmeHooks();
  return contexts.run(ctx, fn);
}
