/**
 * Control-stream floods from an enrolled cog (issue 8, defect 8): 2000 `routes`
 * messages, a synchronous SQLite write each, once blocked the hub's event loop
 * for up to 640 ms. A route set is a full replacement, so the hub applies only
 * the newest of those waiting, under a per-tunnel token bucket
 * (hub.tunnel.control_rate / control_burst), which also paces renewals.
 * Real hub, a real second cog serving a visitor, and a raw tunnel peer the
 * test drives; counts, not clocks.
 */
import t from "tap";
import fs from "node:fs";
import http from "node:http";
import type { Hub } from "../gateway/hub.js";
import type { SqliteHubStore } from "../gateway/store/sqlite.js";
import { encodeMessage } from "../protocol/messages.js";
import { createKeyAndCsr } from "../certs/pki.js";
import type { HubMessage, WireRoute } from "../protocol/control.js";
import { enrolledCog, cogConfig, httpBackend, HUB_DOMAIN, hubConfig, startTestHub, tmpDir } from "./helpers/cluster.js";
import { cogIdentity, helloTunnel, type RawTunnel, until, within } from "./helpers/rawpeer.js";

const RATE = 2;
const BURST = 2;
/**
 * Row writes one applied route set may cost: the status row `capsul hub cogs` reads, and the
 * cog's stored route a restarted hub holds visitors for (issue 12: the old one deleted, the
 * new one inserted; each set here holds one route).
 */
const ROW_WRITES_PER_APPLIED_SET = 3;

/** Rows SQLite changed through the hub's own connection since it opened. */
function sqliteWrites(hub: Hub): number {
  return ((hub.store as SqliteHubStore).db.prepare("SELECT total_changes() AS n").get() as { n: number }).n;
}

function get(port: number, host: string): Promise<{ status: number; body: string }> {
  return new Promise((resolve, reject) => {
    http.get({ host: "127.0.0.1", port, path: "/", headers: { host }, agent: false }, (res) => {
      const chunks: Buffer[] = [];
      res.on("data", (c: Buffer) => chunks.push(c));
      res.on("end", () => resolve({ status: res.statusCode ?? 0, body: Buffer.concat(chunks).toString() }));
    }).on("error", reject);
  });
}

/** Reads hub messages until `done(m)`; returns every message read. */
async function readUntil(raw: RawTunnel, done: (m: HubMessage) => boolean): Promise<HubMessage[]> {
  const seen: HubMessage[] = [];
  for (;;) {
    const m = await raw.reader.next();
    if (!m) throw new Error(`the hub closed the control stream after ${seen.length} messages`);
    seen.push(m);
    if (done(m)) return seen;
  }
}

async function setup(t: Tap.Test) {
  const dir = tmpDir("capsul-flood-");
  t.teardown(() => fs.rmSync(dir, { recursive: true, force: true }));
  const hubCfg = hubConfig(dir, {
    tunnel: { keepalive_interval: "1s", keepalive_timeout: "3s", control_rate: RATE, control_burst: BURST },
    // No endpoint heartbeat during the test: the write count below is the route sets' alone.
    endpoint: { heartbeat_interval: "1h", timeout: "2h" },
  });
  const hub = await startTestHub(hubCfg);
  t.teardown(() => hub.close());
  return { dir, hubCfg, hub };
}

t.test("2000 route sets at once: a handful applied, the last one wins, another cog's visitor is served meanwhile", async (t) => {
  const { dir, hubCfg, hub } = await setup(t);
  const backend = await httpBackend("other");
  t.teardown(() => backend.close());
  const other = await enrolledCog(hubCfg, hub, cogConfig(dir, "other", hub.ports.tunnel, [
    { name: "web", kind: "http", hostname: `web.other.${HUB_DOMAIN}`, target: `127.0.0.1:${backend.port}` },
  ]), "other");
  t.teardown(() => other.close());

  const id = await cogIdentity(hubCfg, hub, "flood");
  const raw = await helloTunnel(t, hub.ports.tunnel, id);
  const set = (i: number): WireRoute[] => [{ name: "web", kind: "http", hostname: `r${i}.flood.${HUB_DOMAIN}` }];
  const N = 2000;
  const flood = Buffer.concat(Array.from({ length: N }, (_, i) => encodeMessage({ type: "routes", routes: set(i) })));
  const writesBefore = sqliteWrites(hub);
  const t0 = Date.now();
  raw.control.write(flood);
  const visitor = get(hub.ports.http!, `web.other.${HUB_DOMAIN}`);
  const last = `r${N - 1}.flood.${HUB_DOMAIN}`;
  const results = await within(
    readUntil(raw, (m) => m.type === "routes-result" && m.accepted[0]?.hostname === last), "the result for the last route set", 60_000,
  );
  const elapsedS = (Date.now() - t0) / 1000;
  const served = await within(visitor, "the other cog's visitor", 30_000);
  t.equal(served.status, 200);
  t.match(served.body, /^other web\.other\.hub\.test \//, "another cog's visitor is served during the flood");
  // Closed before teardown tears the tunnels down (see hub-sqlite-busy.test.ts visitorsGone: the exit hang).
  await until("the visitor's socket closed on the hub", () => hub.visitors.stats.active === 0);

  const applied = results.filter((m) => m.type === "routes-result").length;
  // The bucket's own bound: what it can hand out in the time the test took, plus the hello's token back.
  const bound = BURST + Math.ceil(elapsedS * RATE) + 1;
  t.ok(applied <= bound, `${applied} route sets applied for ${N} sent in ${elapsedS.toFixed(1)} s (bucket bound ${bound})`);
  t.ok(applied <= N / 10, `${applied} applications, not one per message`);
  const stats = hub.tunnels.links.get("flood")!.control!.stats;
  t.equal(stats.applied, applied + 1, "the hub applied exactly what it answered (and the hello's set)");
  t.equal(stats.superseded + applied, N, "every other set was superseded, none lost");
  const writes = sqliteWrites(hub) - writesBefore;
  t.ok(writes <= applied * ROW_WRITES_PER_APPLIED_SET, `${writes} SQLite row writes for ${applied} applied sets (status and stored route, per applied set at most)`);

  // The final state is the last message.
  const mine = hub.router.entriesOf("flood");
  t.same(mine.map((e) => e.pattern), [last], "the router holds exactly the last set");
  t.same((await hub.store.listCogs()).find((c) => c.name === "flood")?.routes, [`http:${last}`], "and so does the status for `capsul hub cogs`");
  t.same(await hub.store.routesOf("flood"), [{ route: "web", kind: "http", hostname: last, port: null }], "and the route stored for a restarted hub");
});

t.test("renewals are paced by the same bucket; each refusal keeps the tunnel", async (t) => {
  const { hubCfg, hub } = await setup(t);
  const id = await cogIdentity(hubCfg, hub, "eager"); // a fresh certificate: no renewal is due
  const raw = await helloTunnel(t, hub.ports.tunnel, id);
  const { csrPem } = await createKeyAndCsr("eager");
  const N = 20;
  const t0 = Date.now();
  raw.control.write(Buffer.concat(Array.from({ length: N }, () => encodeMessage({ type: "renew", csr: csrPem }))));
  // Read answers for a while: the hub may answer BURST at once, then RATE per second.
  const answers: HubMessage[] = [];
  const reading = (async () => { for (;;) { const m = await raw.reader.next(); if (!m) return; answers.push(m); } })();
  await new Promise((r) => setTimeout(r, 1500));
  const elapsedS = (Date.now() - t0) / 1000;
  const bound = BURST + Math.ceil(elapsedS * RATE);
  t.ok(answers.length >= 1, `${answers.length} answers so far`);
  t.ok(answers.length <= bound, `${answers.length} of ${N} renewals answered in ${elapsedS.toFixed(1)} s (bucket bound ${bound})`);
  for (const a of answers) {
    t.equal(a.type, "error");
    t.equal(a.type === "error" && a.code, "renew");
    t.match(a.type === "error" ? a.message : "", /renewal refused: this certificate is valid until .* less than a third of its lifetime/);
  }
  t.notOk(raw.session.closed, "the tunnel stays up");
  t.ok(hub.tunnels.links.get("eager")?.session, "and the hub keeps it");
  raw.session.destroy();
  await reading.catch(() => {});
});
