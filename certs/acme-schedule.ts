/**
 * When to renew and when to retry: pure functions of times and a random number
 * in [0, 1), so the scheduler in ./acme.ts has no arithmetic of its own and the
 * rules are tested without clocks.
 */

/**
 * Renewal is moved earlier by up to this fraction of the lifetime, at random,
 * so that certificates issued together (a cog's first start) do not all renew in
 * the same second: 5% of 90 days is 4.5 days of spread.
 */
export const RENEW_JITTER_LIFETIME_RATIO = 0.05;
/** Each retry delay is scaled by a random factor in [1 - J, 1 + J]; below 1/3, doubling still always grows the delay. */
export const RETRY_JITTER_RATIO = 0.2;
/** setTimeout fires at most 2^31-1 ms ahead (~24.8 days); a longer wait is re-armed in steps of this. */
export const MAX_TIMER_MS = 2 ** 31 - 1;

/** When a certificate valid from `notBeforeMs` to `notAfterMs` should be renewed. */
export function renewAtMs(notBeforeMs: number, notAfterMs: number, ratio: number, random: number): number {
  const life = Math.max(0, notAfterMs - notBeforeMs);
  return Math.round(notBeforeMs + life * ratio - random * life * RENEW_JITTER_LIFETIME_RATIO);
}

/**
 * The wait before the next order after `failures` (>= 1) failed ones in a row:
 * minMs doubled per failure up to maxMs, with jitter, and never shorter than the
 * CA's Retry-After (RFC 8555 §6.6: a client "SHOULD" honour it on rateLimited).
 */
export function retryDelayMs(failures: number, minMs: number, maxMs: number, random: number, retryAfterMs: number | null = null): number {
  const base = Math.min(maxMs, minMs * 2 ** Math.min(Math.max(0, failures - 1), 52));
  const jittered = Math.round(Math.min(maxMs, base * (1 + (random * 2 - 1) * RETRY_JITTER_RATIO)));
  return Math.max(jittered, retryAfterMs ?? 0);
}

/**
 * RFC 9110 §10.2.3 Retry-After: delay-seconds or an HTTP-date. Returns the wait
 * in milliseconds from `nowMs`, or null when absent or unreadable.
 */
export function parseRetryAfterMs(value: string | string[] | undefined | null, nowMs: number): number | null {
  const v = Array.isArray(value) ? value[0] : value;
  if (typeof v !== "string" || v.trim() === "") return null;
  const text = v.trim();
  if (/^\d+$/.test(text)) return Number(text) * 1000;
  // An HTTP-date starts with the day name in all three of its forms (IMF-fixdate, RFC 850, asctime);
  // without that check V8's lenient Date.parse reads "-5" or "1.5" as dates.
  if (!/^(Mon|Tue|Wed|Thu|Fri|Sat|Sun)[a-z]*,? /.test(text)) return null;
  const at = Date.parse(text);
  if (Number.isNaN(at)) return null;
  return Math.max(0, at - nowMs);
}

/** A duration for log lines and `capsul cog certs`: "850ms", "42s", "4m 37s", "3h 5m", "12d 3h". */
export function fmtDuration(ms: number): string {
  if (ms < 1000) return `${Math.max(0, Math.round(ms))}ms`;
  const s = Math.round(ms / 1000);
  const units: [string, number][] = [["d", 86_400], ["h", 3_600], ["m", 60], ["s", 1]];
  const i = units.findIndex(([, n]) => s >= n);
  const [u1, n1] = units[i]!;
  const first = Math.floor(s / n1);
  const next = units[i + 1];
  const rest = next ? Math.floor((s - first * n1) / next[1]) : 0;
  return next && rest > 0 ? `${first}${u1} ${rest}${next[0]}` : `${first}${u1}`;
}
