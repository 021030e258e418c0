/**
 * The one JSON style of `capsul … --json` (README "Commands", cli/common.ts printJson):
 * snake_case keys; instants as ISO-8601 UTC strings under keys ending in `_at`; no
 * instant hidden under another name or as epoch milliseconds. Returns what is wrong,
 * one entry per problem with its JSON path, so a failing test says where.
 */

const SNAKE_CASE_RE = /^[a-z][a-z0-9]*(?:_[a-z0-9]+)*$/;
/** What printJson's isoTime writes: `Date.toISOString()`, always UTC with milliseconds. */
export const ISO_INSTANT_RE = /^\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}\.\d{3}Z$/;
/** Key words that name an instant; such a key must end in `_at` (`last_seen` → `last_seen_at`). */
const INSTANT_WORD_RE = /(?:^|_)(?:time|timestamp|date|since|seen|expires?|expiry|created|updated|revoked|until|not_after|not_before)$/;
/** Epoch milliseconds from 2001-09-09 to 2286-11-20: a number in this range is taken for a leaked instant. */
const EPOCH_MS_MIN = 1e12;
const EPOCH_MS_MAX = 1e13;
/** Keys whose numbers are sizes or durations by name, so big values are fine there. */
const QUANTITY_KEY_RE = /(?:^|_)(?:bytes|ms|count|total)$/;

export interface StyleReport { problems: string[]; instants: number }

export function jsonStyle(value: unknown): StyleReport {
  const report: StyleReport = { problems: [], instants: 0 };
  walk(value, "$", null, report);
  return report;
}

function walk(value: unknown, at: string, key: string | null, r: StyleReport): void {
  if (Array.isArray(value)) {
    value.forEach((v, i) => walk(v, `${at}[${i}]`, key, r));
    return;
  }
  if (value !== null && typeof value === "object") {
    for (const [k, v] of Object.entries(value as Record<string, unknown>)) {
      const p = `${at}.${k}`;
      if (!SNAKE_CASE_RE.test(k)) r.problems.push(`${p}: key is not snake_case`);
      if (!k.endsWith("_at") && INSTANT_WORD_RE.test(k)) r.problems.push(`${p}: names an instant, so its key must end in _at`);
      walk(v, p, k, r);
    }
    return;
  }
  if (key !== null && key.endsWith("_at")) {
    if (value === null) return;
    if (typeof value !== "string" || !ISO_INSTANT_RE.test(value) || Number.isNaN(Date.parse(value))) {
      r.problems.push(`${at}: ${JSON.stringify(value)} is not an ISO-8601 UTC instant (2026-01-31T12:00:00.000Z) or null`);
      return;
    }
    r.instants++;
    return;
  }
  if (typeof value === "number" && value >= EPOCH_MS_MIN && value < EPOCH_MS_MAX && !(key && QUANTITY_KEY_RE.test(key))) {
    r.problems.push(`${at}: ${value} looks like epoch milliseconds; write instants as ISO-8601 under a key ending in _at`);
  }
  if (typeof value === "string" && ISO_INSTANT_RE.test(value)) {
    r.problems.push(`${at}: an ISO-8601 instant under a key that does not end in _at`);
  }
}
