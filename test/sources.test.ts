/**
 * gateway/sources.ts: what counts as one source, the per-source counters, and the
 * once-per-interval refusal log (pure parts; the caps on real sockets are in
 * visitor-limits.test.ts).
 */
import t from "tap";
import { REFUSAL_LOG_MAX_SOURCES, RefusalLog, SourceLimits, sourceKey } from "../gateway/sources.js";
import type { Logger } from "../lib/log.js";

t.test("sourceKey: IPv4 as is, IPv4-mapped IPv6 as IPv4, IPv6 by its /64", async (t) => {
  t.equal(sourceKey("192.0.2.7"), "192.0.2.7");
  t.equal(sourceKey("::ffff:192.0.2.7"), "192.0.2.7");
  t.equal(sourceKey("2001:db8:1:2:aaaa:bbbb:cccc:dddd"), "2001:db8:1:2::/64");
  t.equal(sourceKey("2001:db8:1:2::1"), "2001:db8:1:2::/64", "one host's addresses in a /64 are one source");
  t.equal(sourceKey("2001:DB8:0001:0002:ffff::9"), "2001:db8:1:2::/64", "case and leading zeros do not matter");
  t.equal(sourceKey("2001:db8::1"), "2001:db8:0:0::/64", ":: inside the /64");
  t.equal(sourceKey("::1"), "0:0:0:0::/64");
  t.equal(sourceKey("fe80::1"), "fe80:0:0:0::/64");
  t.equal(sourceKey(undefined), "unknown");
});

t.test("SourceLimits counts open and un-peeked connections per source", async (t) => {
  const s = new SourceLimits(3, 2);
  t.equal(s.admit("a", true), "ok");
  t.equal(s.admit("a", true), "ok");
  t.equal(s.admit("a", true), "unpeeked", "a third un-peeked one is refused");
  t.equal(s.admit("a", false), "ok", "one that needs no peek is not");
  t.equal(s.admit("a", false), "per-source", "the fourth connection is refused whatever it is");
  t.equal(s.admit("b", true), "ok", "another source has its own counts");
  s.peeked("a");
  t.equal(s.openFrom("a"), 3);
  s.closed("a", false); // the peeked one
  t.equal(s.admit("a", true), "ok", "a slot and an un-peeked slot came back");
  t.equal(s.admit("a", true), "per-source");
  s.closed("a", true);
  s.closed("a", true);
  s.closed("a", false);
  t.equal(s.openFrom("a"), 0);
  t.equal(s.sources, 1, "a source with nothing open is forgotten");
});

t.test("RefusalLog: at most one line per source and message per interval", async (t) => {
  const lines: Array<{ msg: string; fields?: Record<string, unknown> }> = [];
  const log = { warn: (msg: string, fields?: Record<string, unknown>) => lines.push({ msg, fields }) } as unknown as Logger;
  let now = 1000;
  const r = new RefusalLog(log, 60_000, () => now);
  for (let i = 0; i < 100; i++) r.warn("192.0.2.1", "refused", { n: i });
  t.equal(lines.length, 1, "100 refusals from one source: one line");
  t.same(lines[0], { msg: "refused", fields: { source: "192.0.2.1", n: 0 } });
  r.warn("192.0.2.2", "refused", {});
  r.warn("192.0.2.1", "cut", {});
  t.equal(lines.length, 3, "another source, or another message, gets its own line");
  now += 60_000;
  r.warn("192.0.2.1", "refused", {});
  t.equal(lines.length, 4, "the same source again after the interval");

  // A flood from more sources than it remembers: bounded memory, at most one line each.
  for (let i = 0; i < REFUSAL_LOG_MAX_SOURCES + 500; i++) r.warn(`10.0.${i >> 8}.${i & 255}`, "refused", {});
  t.ok(lines.length <= 4 + REFUSAL_LOG_MAX_SOURCES, `lines bounded by the sources remembered (${lines.length})`);
  now += 60_000;
  r.warn("10.9.9.9", "refused", {});
  t.equal(lines.at(-1)!.fields!.source, "10.9.9.9", "once the interval passed, stale sources make room again");

  const every = new RefusalLog(log, 0, () => now);
  const before = lines.length;
  every.warn("x", "refused", {});
  every.warn("x", "refused", {});
  t.equal(lines.length, before + 2, "interval 0 logs every refusal");
});
