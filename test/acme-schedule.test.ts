/**
 * The renewal and retry arithmetic (certs/acme-schedule.ts), with the random
 * number given: renewal at the configured fraction of the lifetime less at most
 * 5% jitter, retries doubling with bounded jitter up to the cap and never before
 * Retry-After, Retry-After in both of its RFC 9110 forms.
 */
import t from "tap";
import {
  fmtDuration, parseRetryAfterMs, RENEW_JITTER_LIFETIME_RATIO, renewAtMs, RETRY_JITTER_RATIO, retryDelayMs,
} from "../certs/acme-schedule.js";
import { DEFAULT_ACME_RENEW_AT_RATIO } from "../config/acme.js";

const DAY = 86_400_000;

t.test("renewal at two thirds of the lifetime, moved earlier by at most 5% of it", async (t) => {
  const nb = Date.UTC(2026, 0, 1);
  const na = nb + 90 * DAY;
  t.equal(renewAtMs(nb, na, DEFAULT_ACME_RENEW_AT_RATIO, 0), nb + 60 * DAY, "random 0: exactly 60 of 90 days");
  const earliest = renewAtMs(nb, na, DEFAULT_ACME_RENEW_AT_RATIO, 0.999999);
  t.ok(earliest >= nb + 60 * DAY - 90 * DAY * RENEW_JITTER_LIFETIME_RATIO, "jitter takes at most 4.5 days off");
  t.ok(earliest < nb + 56 * DAY, "and does take days off at the top of its range");
  for (const r of [0, 0.25, 0.5, 0.75, 0.99]) {
    const at = renewAtMs(nb, na, DEFAULT_ACME_RENEW_AT_RATIO, r);
    t.ok(at > nb && at < na, `inside the lifetime for random ${r}`);
  }
  t.equal(renewAtMs(nb, nb + 20_000, 2 / 3, 0), nb + 13_333, "a 20-second certificate renews after 13.3 s");
  t.equal(renewAtMs(nb, nb, 2 / 3, 0.5), nb, "a zero lifetime (clock trouble) renews at once, not in the past's past");
});

t.test("retries double from the minimum up to the cap, jittered, never shorter than Retry-After", async (t) => {
  const min = 300_000;
  const max = 12 * 3_600_000;
  t.same([1, 2, 3, 4].map((f) => retryDelayMs(f, min, max, 0.5)), [300_000, 600_000, 1_200_000, 2_400_000], "5m, 10m, 20m, 40m at zero jitter");
  t.equal(retryDelayMs(50, min, max, 0.5), max, "capped");
  t.equal(retryDelayMs(10_000, min, max, 0.5), max, "no overflow for huge failure counts");
  // The worst case of jitter still grows: the largest n-th wait is below the smallest (n+1)-th.
  for (let f = 1; f < 6; f++) {
    t.ok(retryDelayMs(f, min, max, 0.999999) < retryDelayMs(f + 1, min, max, 0), `wait ${f} < wait ${f + 1} whatever the jitter`);
  }
  t.equal(retryDelayMs(1, min, max, 0), Math.round(min * (1 - RETRY_JITTER_RATIO)), "jitter can shorten by 20%");
  t.equal(retryDelayMs(1, min, max, 0.5, 3_600_000), 3_600_000, "Retry-After longer than the backoff wins");
  t.equal(retryDelayMs(1, min, max, 0.5, 1_000), min, "a shorter Retry-After does not hurry the backoff");
  t.equal(retryDelayMs(1, min, max, 0.5, 7 * 86_400_000), 7 * 86_400_000, "even beyond the cap: the CA decides");
});

t.test("Retry-After: delay-seconds or an HTTP-date (RFC 9110 §10.2.3)", async (t) => {
  const now = Date.parse("Sun, 06 Nov 1994 08:49:37 GMT");
  t.equal(parseRetryAfterMs("120", now), 120_000);
  t.equal(parseRetryAfterMs(" 3600 ", now), 3_600_000);
  t.equal(parseRetryAfterMs("Sun, 06 Nov 1994 09:49:37 GMT", now), 3_600_000);
  t.equal(parseRetryAfterMs("Sun, 06 Nov 1994 07:49:37 GMT", now), 0, "a date in the past means now");
  t.equal(parseRetryAfterMs(["60", "999"], now), 60_000, "the first of repeated fields");
  for (const bad of [undefined, null, "", "soon", "-5", "1.5"]) t.equal(parseRetryAfterMs(bad as string | undefined, now), null, `unreadable: ${JSON.stringify(bad)}`);
});

t.test("durations for humans", async (t) => {
  t.equal(fmtDuration(850), "850ms");
  t.equal(fmtDuration(42_000), "42s");
  t.equal(fmtDuration(277_000), "4m 37s");
  t.equal(fmtDuration(3_600_000), "1h");
  t.equal(fmtDuration(11_100_000), "3h 5m");
  t.equal(fmtDuration(60 * DAY + 3 * 3_600_000), "60d 3h");
  t.equal(fmtDuration(-5), "0ms");
});
