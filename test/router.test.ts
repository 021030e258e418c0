/**
 * gateway/router.ts keeps, beside its lookup maps, an index of the entries each cog holds
 * (entriesOf/releaseCog in O(that cog's routes)). These check that the index never drifts
 * from the maps: on claim, on a cog re-claiming its own slot with another route name
 * (replace), on a refused claim, on release by the holder and by another cog, and on drop;
 * then a seeded random run compares every step against a brute-force model.
 */
import t from "tap";
import { Router, type RouteEntry } from "../gateway/router.js";
import { prng } from "./helpers/prng.js";

const http = (cog: string, route: string, pattern: string): RouteEntry => ({ cog, route, kind: "http", pattern });
const tls = (cog: string, route: string, pattern: string): RouteEntry => ({ cog, route, kind: "tls", pattern });
const tcp = (cog: string, route: string, port: number): RouteEntry => ({ cog, route, kind: "tcp", port });
const names = (es: RouteEntry[]): string[] => es.map((e) => `${e.kind}:${e.route}:${e.pattern ?? e.port}`).sort();

t.test("claim, replace, refuse, release, drop keep entriesOf and lookups in step", async (t) => {
  const r = new Router();
  t.same(r.entriesOf("a"), [], "an unknown cog holds nothing");
  t.same(r.claim(http("a", "web", "a.hub.test")), { ok: true });
  t.same(r.claim(tls("a", "tls", "*.a.hub.test")), { ok: true });
  t.same(r.claim(tcp("a", "ssh", 2222)), { ok: true });
  t.same(r.claim(http("b", "web", "b.hub.test")), { ok: true });
  t.same(names(r.entriesOf("a")), ["http:web:a.hub.test", "tcp:ssh:2222", "tls:tls:*.a.hub.test"]);
  t.same(names(r.entriesOf("b")), ["http:web:b.hub.test"]);

  // The same slot claimed again by its holder under another route name: replaced, not doubled.
  t.same(r.claim(http("a", "site", "a.hub.test")), { ok: true });
  t.same(names(r.entriesOf("a")), ["http:site:a.hub.test", "tcp:ssh:2222", "tls:tls:*.a.hub.test"]);
  t.equal(r.lookupHost("http", "a.hub.test")?.route, "site");

  // Another cog's claim on a held slot is refused and changes neither cog's entries.
  t.same(r.claim(http("b", "steal", "a.hub.test")), { ok: false, holder: "a" });
  t.same(r.claim(tcp("b", "steal", 2222)), { ok: false, holder: "a" });
  t.same(names(r.entriesOf("b")), ["http:web:b.hub.test"]);
  t.equal(r.entriesOf("a").length, 3);

  // Release by a cog that does not hold the slot: nothing happens.
  r.release(tcp("b", "ssh", 2222));
  t.equal(r.lookupPort(2222)?.cog, "a");
  t.equal(r.entriesOf("a").length, 3);

  r.release(tcp("a", "ssh", 2222));
  t.equal(r.lookupPort(2222), undefined);
  t.same(names(r.entriesOf("a")), ["http:site:a.hub.test", "tls:tls:*.a.hub.test"]);

  // A freed slot can go to another cog, and the index follows it there.
  t.same(r.claim(tcp("b", "ssh", 2222)), { ok: true });
  t.same(names(r.entriesOf("b")), ["http:web:b.hub.test", "tcp:ssh:2222"]);

  const gone = r.releaseCog("a");
  t.same(names(gone), ["http:site:a.hub.test", "tls:tls:*.a.hub.test"]);
  t.same(r.entriesOf("a"), []);
  t.equal(r.lookupHost("http", "a.hub.test"), undefined);
  t.equal(r.lookupHost("tls", "x.a.hub.test"), undefined);
  t.equal(r.lookupHost("http", "b.hub.test")?.cog, "b", "the other cog keeps routing");
  t.equal(r.lookupPort(2222)?.cog, "b");
  t.same(r.releaseCog("a"), [], "dropping twice is a no-op");
});

t.test("entriesOf returns a copy: releasing while walking it releases every entry", async (t) => {
  const r = new Router();
  for (let i = 0; i < 5; i++) r.claim(http("a", `r${i}`, `h${i}.a.hub.test`));
  for (const e of r.entriesOf("a")) r.release(e);
  t.same(r.entriesOf("a"), []);
  for (let i = 0; i < 5; i++) t.equal(r.lookupHost("http", `h${i}.a.hub.test`), undefined);
});

t.test("random claims, releases and drops match a brute-force model (seeded)", async (t) => {
  const seed = 12;
  const rnd = prng(seed);
  const pick = <T>(xs: readonly T[]): T => xs[Math.floor(rnd() * xs.length)]!;
  const cogs = ["a", "b", "c", "d"];
  const hosts = ["x.hub.test", "y.hub.test", "*.z.hub.test", "*.hub.test", "w.z.hub.test"];
  const ports = [2000, 2001, 2002];
  const r = new Router();
  /** The model: slot key -> entry, as the router's maps should hold it. */
  const model = new Map<string, RouteEntry>();
  const slot = (e: RouteEntry): string => (e.kind === "tcp" ? `tcp:${e.port}` : `${e.kind}:${e.pattern}`);
  let mismatches = 0;
  for (let step = 0; step < 3000; step++) {
    const cog = pick(cogs);
    const op = rnd();
    const e = rnd() < 0.3 ? tcp(cog, pick(["p", "q"]), pick(ports)) : (rnd() < 0.5 ? http : tls)(cog, pick(["w", "v"]), pick(hosts));
    if (op < 0.55) {
      const cur = model.get(slot(e));
      const res = r.claim(e);
      if (cur && cur.cog !== cog) {
        if (res.ok || res.holder !== cur.cog) mismatches++;
      } else {
        if (!res.ok) mismatches++;
        model.set(slot(e), e);
      }
    } else if (op < 0.9) {
      r.release(e);
      const cur = model.get(slot(e));
      if (cur && cur.cog === cog) model.delete(slot(e));
    } else {
      r.releaseCog(cog);
      for (const [k, v] of model) if (v.cog === cog) model.delete(k);
    }
    for (const c of cogs) {
      const want = names([...model.values()].filter((v) => v.cog === c));
      if (JSON.stringify(names(r.entriesOf(c))) !== JSON.stringify(want)) mismatches++;
    }
  }
  t.equal(mismatches, 0, `entriesOf and claim results match the model at every step (seed ${seed})`);
  // And the lookups agree with the index at the end.
  for (const c of cogs) {
    for (const e of r.entriesOf(c)) {
      const got = e.kind === "tcp" ? r.lookupPort(e.port!) : r.lookupHost(e.kind as "tls" | "http", e.pattern!.replace(/^\*\./, "q."));
      t.equal(got?.cog, c, `${slot(e)} routes to ${c}`);
    }
  }
});
