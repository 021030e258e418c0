/**
 * Races the synchronous SQLite code never had: with an async store every
 * state call is a point where another route application, a drop, or another
 * hub can run. A real RouteTable (real router, real TCP listeners on
 * loopback) over each store; on PostgreSQL every await is a real round trip,
 * so interleavings happen as they would between two hubs.
 */
import t, { type Test } from "tap";
import type { HubConfig } from "../config/types.js";
import { createInvite, TcpListeners } from "../gateway/hub.js";
import { Router } from "../gateway/router.js";
import { RouteTable } from "../gateway/routes.js";
import { openHubStore } from "../gateway/store/index.js";
import type { WireRoute } from "../protocol/control.js";
import { HUB_DOMAIN, testLogger } from "./helpers/cluster.js";
import { startPostgres } from "./helpers/pgcluster.js";
import { freePortRange, probePort } from "./helpers/procs.js";
import { storeBackends } from "./helpers/stores.js";

const pgc = await startPostgres(t);

interface Hub { router: Router; routes: RouteTable; tcp: TcpListeners }

/** One hub's route table on the store `cfg` names: its own store connection(s), router and listeners. */
async function hub(t: Test, cfg: HubConfig): Promise<Hub> {
  const log = testLogger("routes");
  const store = await openHubStore(cfg, log);
  const router = new Router();
  const tcp = new TcpListeners("127.0.0.1", (s) => s.destroy(), log);
  t.teardown(async () => {
    tcp.stopAll();
    await store.close();
  });
  return { router, routes: new RouteTable(cfg, store, router, tcp, log), tcp };
}

const tcp = (name: string): WireRoute => ({ name, kind: "tcp" });
const web = (name: string, cog: string): WireRoute => ({ name, kind: "http", hostname: `${name}.${cog}.${HUB_DOMAIN}` });

function held(h: Hub, cog: string): string[] {
  return h.router.entriesOf(cog).map((e) => `${e.kind}:${e.route}`).sort();
}

for (const b of storeBackends(pgc)) {
  t.test(b.name, async (t) => {
    const pool = await freePortRange(12);
    const fresh = async (t: Test): Promise<HubConfig> =>
      (await b.fresh(t, { listen: { tls: "127.0.0.1:0", http: "127.0.0.1:0", tunnel: "127.0.0.1:0", tcp_host: "127.0.0.1", tcp_ports: [pool.spec] } })).cfg;
    // Three TCP routes take three port transactions: this set takes longer than `later` to apply.
    const slow = [tcp("a1"), tcp("a2"), tcp("a3"), web("aweb", "c")];
    const later = [web("bweb", "c")];

    t.test("two route sets of one cog at once: the later one is what the cog holds, whole", async (t) => {
      const h = await hub(t, await fresh(t));
      const [first, second] = await Promise.all([h.routes.apply("c", slow), h.routes.apply("c", later)]);
      t.equal(first.accepted.length, 4, `the first set was accepted: ${JSON.stringify(first.refused)}`);
      t.equal(second.accepted.length, 1);
      t.same(held(h, "c"), ["http:bweb"], "only the later set");
      t.equal(h.tcp.ports.length, 0, "the first set's ports are closed again");
    });

    t.test("a drop while a route set is being applied leaves nothing of the cog behind", async (t) => {
      const h = await hub(t, await fresh(t));
      const applying = h.routes.apply("c", slow);
      const dropping = h.routes.dropCog("c");
      await Promise.all([applying, dropping]);
      t.same(held(h, "c"), [], "no route of a dropped cog");
      t.equal(h.tcp.ports.length, 0, "no listener either");
      for (let p = pool.from; p <= pool.to; p++) t.equal(await probePort(p), "ECONNREFUSED", `hub port ${p} closed`);
    });

    t.test("a route set whose tunnel is gone by its turn applies nothing", async (t) => {
      const h = await hub(t, await fresh(t));
      const gone = new AbortController();
      const first = h.routes.apply("c", slow);
      const stale = h.routes.apply("c", later, gone.signal);
      gone.abort(); // the tunnel that sent `later` closed while `slow` was being applied
      await Promise.all([first, stale]);
      t.same(held(h, "c"), ["http:aweb", "tcp:a1", "tcp:a2", "tcp:a3"], "the set of the live tunnel stays");
    });

    t.test("cogs on two hubs take ports from one pool at the same time: all accepted, all different", async (t) => {
      const cfg = await fresh(t);
      const one = await hub(t, cfg);
      const two = await hub(t, cfg); // its own store connection(s), as a second hub process has
      const cogs = ["c0", "c1", "c2", "c3", "c4", "c5"];
      const results = await Promise.all(cogs.map((c, i) => (i % 2 ? two : one).routes.apply(c, [tcp("ssh"), tcp("web")])));
      const ports = results.flatMap((r) => r.accepted.map((a) => (a.kind === "tcp" ? (a.port ?? -1) : -1)));
      t.same(results.flatMap((r) => r.refused), [], "nothing refused");
      t.equal(new Set(ports).size, 12, `twelve routes, twelve ports: ${ports.join(" ")}`);
      t.ok(ports.every((p) => p >= pool.from && p <= pool.to), "all from the pool");
    });

    t.test("invites granting overlapping names at once (two operators, two hubs): exactly one is stored", async (t) => {
      const cfg = await fresh(t);
      await createInvite(cfg, "first"); // the CA exists before the race, as on a running hub
      const names = ["shop", "blog", "wiki", "mail"];
      const results = await Promise.allSettled(names.map((n) => createInvite(cfg, n, { hostnames: ["*.contested.example"] })));
      t.equal(results.filter((r) => r.status === "fulfilled").length, 1, "one invite won");
      for (const r of results) {
        if (r.status === "rejected") t.match((r.reason as Error).message, /"\*\.contested\.example" overlaps "\*\.contested\.example" of cog \w+ \(granted by capsul hub invite\)/);
      }
      const store = await openHubStore(cfg, testLogger("store"));
      t.teardown(() => store.close());
      t.equal((await store.allGrants("hostname")).length, 1, "one grant stored");
    });
  });
}
