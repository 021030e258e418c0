/**
 * Hub TCP port assignments under attack (issue 8, defects 3 and 7): a real hub,
 * real enrolled cogs announcing over the tunnel, visitors on real sockets.
 * - explicit `port` requests count toward hub.default_tcp_ports_per_cog;
 * - cycling route names never takes more than the limit, nor another cog's
 *   stable port while that cog is offline; only `capsul hub ports release` frees it;
 * - ports granted with `capsul hub invite --tcp-ports` are never given to another cog;
 * - renaming a route that keeps its port moves the assignment, never ends the session;
 * - a state error on one route refuses that route only.
 */
import t, { type Test } from "tap";
import net from "node:net";
import path from "node:path";
import Database from "better-sqlite3";
import { createInvite, type Hub } from "../gateway/hub.js";
import { ROUTE_STATE_ERROR_REASON } from "../gateway/routes.js";
import type { Cog } from "../tunnel-client/cog.js";
import type { PublishedRoute } from "../tunnel-client/routesink.js";
import { enroll } from "../tunnel-client/enroll.js";
import type { HubConfig } from "../config/types.js";
import {
  closeServer, cogConfig, enrolledCog, hubConfig, listen, startConnectedCog, startTestHub, tmpDir,
} from "./helpers/cluster.js";
import { freePortRange, lines, probePort, runCli, waitFor, writeYaml } from "./helpers/procs.js";

/** Deadline for one hub answer to a route announce; a hub that dropped the session never answers. */
const ANSWER_WAIT_MS = 15_000;

/** A TCP backend that greets every connection with its tag. */
async function tagBackend(tag: string): Promise<{ port: number; close(): Promise<void> }> {
  const server = net.createServer((s) => { s.on("error", () => {}); s.end(`${tag}\n`); });
  const port = await listen(server);
  return { port, close: () => closeServer(server) };
}

/** What a visitor on hub port `port` reads. */
function visit(port: number): Promise<string> {
  return new Promise((resolve, reject) => {
    const s = net.connect({ port, host: "127.0.0.1" });
    let text = "";
    s.setEncoding("utf8");
    s.on("data", (d) => { text += d; });
    s.on("end", () => { s.destroy(); resolve(text); });
    s.on("error", reject);
  });
}

/** The cog's next answer from the hub (welcome or routes-result), or a failure after ANSWER_WAIT_MS. */
function nextAnswer(cog: Cog, what: string): Promise<void> {
  return new Promise((resolve, reject) => {
    const timer = setTimeout(() => { cog.client.off("routes", done); reject(new Error(`no answer from the hub to ${what} within ${ANSWER_WAIT_MS} ms`)); }, ANSWER_WAIT_MS);
    const done = (): void => { clearTimeout(timer); resolve(); };
    cog.client.once("routes", done);
  });
}

async function announce(cog: Cog, owner: string, routes: PublishedRoute[], what: string): Promise<void> {
  const answered = nextAnswer(cog, what);
  cog.client.publish(owner, routes);
  await answered;
}

function tcpRoute(name: string, target: number, port?: number): PublishedRoute {
  return { name, kind: "tcp", ...(port === undefined ? {} : { port }), target: { host: "127.0.0.1", port: target }, proxyProtocol: "none" };
}

function portOf(cog: Cog, route: string): number | undefined {
  const st = cog.client.status(route);
  return st.state === "accepted" ? st.port : undefined;
}

function reasonOf(cog: Cog, route: string): string {
  const st = cog.client.status(route);
  return st.state === "refused" ? st.reason : `(${st.state})`;
}

async function startHubWithPool(t: Test, size: number, extra: Record<string, unknown> = {}): Promise<{ dir: string; hubCfg: HubConfig; hub: Hub; from: number }> {
  const dir = tmpDir();
  const pool = await freePortRange(size);
  const hubCfg = hubConfig(dir, { ...extra, listen: { tcp_ports: [pool.spec] } });
  const hub = await startTestHub(hubCfg);
  t.teardown(() => hub.close());
  return { dir, hubCfg, hub, from: pool.from };
}

t.test("explicit port requests count toward hub.default_tcp_ports_per_cog", async (t) => {
  const { dir, hubCfg, hub, from } = await startHubWithPool(t, 8, { default_tcp_ports_per_cog: 2 });
  const back = await tagBackend("greedy");
  t.teardown(() => back.close());
  // One hello asking for six pool ports by number.
  const routes = [0, 1, 2, 3, 4, 5].map((i) => ({ name: `p${i}`, kind: "tcp", port: from + i, target: `127.0.0.1:${back.port}` }));
  const greedy = await enrolledCog(hubCfg, hub, cogConfig(dir, "greedy", hub.ports.tunnel, routes), "greedy");
  t.teardown(() => greedy.close());

  const accepted = routes.filter((r) => portOf(greedy, r.name) !== undefined).map((r) => r.name);
  t.same(accepted, ["p0", "p1"], "two ports, the limit, in announce order");
  for (const r of routes.slice(2)) t.match(reasonOf(greedy, r.name), /already holds 2 hub TCP ports, its limit \(hub\.default_tcp_ports_per_cog: 2\)/, `${r.name} refused`);
  t.equal((await hub.store.assignmentsOf("greedy")).length, 2, "two assignments in the hub's state");
  t.equal(await visit(from), "greedy\n", "an accepted port serves");
  for (const i of [2, 3, 4, 5]) t.equal(await probePort(from + i), "ECONNREFUSED", `hub port ${from + i} was never opened`);
});

t.test("cycling route names stays within the limit and never takes an offline cog's port", async (t) => {
  const { dir, hubCfg, hub, from } = await startHubWithPool(t, 4, { default_tcp_ports_per_cog: 2, limits: { grace: "0s" } });
  const victimBack = await tagBackend("victim");
  t.teardown(() => victimBack.close());
  const greedyBack = await tagBackend("greedy");
  t.teardown(() => greedyBack.close());

  const victimCfg = cogConfig(dir, "victim", hub.ports.tunnel, [{ name: "ssh", kind: "tcp", target: `127.0.0.1:${victimBack.port}` }]);
  const victim = await enrolledCog(hubCfg, hub, victimCfg, "victim");
  const victimPort = portOf(victim, "ssh");
  t.equal(victimPort, from, "the victim's SSH route got the first pool port");
  await victim.close();
  await waitFor("the hub to drop the offline victim", () => !hub.tunnels.links.has("victim") && hub.router.lookupPort(from) === undefined);

  const greedy = await enrolledCog(hubCfg, hub, cogConfig(dir, "greedy", hub.ports.tunnel, []), "greedy");
  t.teardown(() => greedy.close());
  const seen = new Set<number>();
  for (let i = 0; i < 8; i++) {
    // Each announce replaces the last one's route by a new name: the old assignment goes unused.
    await announce(greedy, "vm", [tcpRoute(`r${i}`, greedyBack.port)], `route r${i}`);
    const p = portOf(greedy, `r${i}`);
    t.not(p, undefined, `r${i} accepted (${reasonOf(greedy, `r${i}`)})`);
    if (p !== undefined) seen.add(p);
    t.ok((await hub.store.assignmentsOf("greedy")).length <= 2, `after r${i} the cog holds at most 2 assignments`);
    t.same(await hub.store.portOwner(from), { cog: "victim", route: "ssh" }, `after r${i} the victim's port is still the victim's`);
  }
  t.same([...seen].sort(), [from + 1, from + 2], "the cog cycled through its own two ports only");
  // Two routes at once at the limit: the second is refused, the victim's port is not taken.
  await announce(greedy, "vm", [tcpRoute("x1", greedyBack.port), tcpRoute("x2", greedyBack.port), tcpRoute("x3", greedyBack.port)], "three routes");
  t.equal([portOf(greedy, "x1"), portOf(greedy, "x2")].filter((p) => p !== undefined).length, 2);
  t.match(reasonOf(greedy, "x3"), /its limit/);
  t.same(await hub.store.portOwner(from), { cog: "victim", route: "ssh" });

  // The victim comes back to the same port, and visitors reach it there.
  const back = await startConnectedCog(victimCfg, "victim");
  t.teardown(() => back.close());
  t.equal(portOf(back, "ssh"), from, "same port after reconnecting");
  t.equal(await visit(from), "victim\n");
});

t.test("a port granted with invite --tcp-ports is never given to another cog", async (t) => {
  const { dir, hubCfg, hub, from } = await startHubWithPool(t, 5);
  // "owner" is invited with three ports and never connects.
  await createInvite(hubCfg, "owner", { tcpPorts: [`${from}-${from + 2}`] });
  const back = await tagBackend("grabber");
  t.teardown(() => back.close());
  const grabber = await enrolledCog(hubCfg, hub, cogConfig(dir, "grabber", hub.ports.tunnel, [
    { name: "grab", kind: "tcp", port: from + 1, target: `127.0.0.1:${back.port}` },
    { name: "a", kind: "tcp", target: `127.0.0.1:${back.port}` },
    { name: "b", kind: "tcp", target: `127.0.0.1:${back.port}` },
    { name: "c", kind: "tcp", target: `127.0.0.1:${back.port}` },
  ]), "grabber");
  t.teardown(() => grabber.close());
  t.match(reasonOf(grabber, "grab"), new RegExp(`hub port ${from + 1} is granted to another cog`));
  t.equal(portOf(grabber, "a"), from + 3, "the pool minus the other cog's grant");
  t.equal(portOf(grabber, "b"), from + 4);
  t.match(reasonOf(grabber, "c"), /no free hub TCP port left in the pool/);
  for (const p of [from, from + 1, from + 2]) t.equal(await hub.store.portOwner(p), undefined, `port ${p} stays free for its grantee`);
});

t.test("renaming a tcp route that keeps its port moves the assignment; the session survives", async (t) => {
  const { dir, hubCfg, hub, from } = await startHubWithPool(t, 4);
  const back = await tagBackend("renamed");
  t.teardown(() => back.close());
  const cog = await enrolledCog(hubCfg, hub, cogConfig(dir, "ren", hub.ports.tunnel, []), "ren");
  t.teardown(() => cog.close());
  const session = hub.tunnels.links.get("ren")?.session;
  t.ok(session, "connected");
  let reconnects = 0;
  cog.client.on("connected", () => reconnects++);

  await announce(cog, "vm", [tcpRoute("ssh", back.port, from + 1)], "ssh on its port");
  t.equal(portOf(cog, "ssh"), from + 1);
  await announce(cog, "vm", [tcpRoute("ssh-renamed", back.port, from + 1)], "the renamed route");
  t.equal(portOf(cog, "ssh-renamed"), from + 1, "the new name has the port");
  t.same(await hub.store.portOwner(from + 1), { cog: "ren", route: "ssh-renamed" });
  t.equal(await visit(from + 1), "renamed\n", "and serves on it");

  // Two names wanting one port in one announce: one is refused, nothing else happens.
  await announce(cog, "vm", [tcpRoute("ssh-renamed", back.port, from + 1), tcpRoute("twin", back.port, from + 1)], "two routes, one port");
  t.equal(portOf(cog, "ssh-renamed"), from + 1);
  t.match(reasonOf(cog, "twin"), new RegExp(`hub port ${from + 1} is already used by this cog's route ssh-renamed`));

  t.equal(hub.tunnels.links.get("ren")?.session, session, "still the first tunnel session");
  t.equal(reconnects, 0, "the cog never had to reconnect");
});

t.test("a state error on one route refuses that route only", async (t) => {
  const { dir, hubCfg, hub, from } = await startHubWithPool(t, 4);
  const back = await tagBackend("ok");
  t.teardown(() => back.close());
  const cog = await enrolledCog(hubCfg, hub, cogConfig(dir, "faulty", hub.ports.tunnel, []), "faulty");
  t.teardown(() => cog.close());
  const session = hub.tunnels.links.get("faulty")?.session;
  // A real SQLite failure on the hub's own database file: a trigger that aborts one route's assignment.
  const db = new Database(path.join(hubCfg.dataDir, "hub.db"));
  db.exec("CREATE TRIGGER boom BEFORE INSERT ON tcp_ports WHEN NEW.route = 'boom' BEGIN SELECT RAISE(ABORT, 'injected failure'); END;");
  db.close();

  await announce(cog, "vm", [tcpRoute("boom", back.port), tcpRoute("fine", back.port), { name: "web", kind: "http", hostname: `web.faulty.${hubCfg.domain}`, target: { host: "127.0.0.1", port: back.port }, proxyProtocol: "none" }], "a failing route");
  t.equal(reasonOf(cog, "boom"), ROUTE_STATE_ERROR_REASON, "the failing route is refused with a reason");
  t.equal(portOf(cog, "fine"), from, "the next tcp route is accepted");
  t.equal(cog.client.status("web").state, "accepted", "so is the http route");
  t.equal(await visit(from), "ok\n");
  t.equal(hub.tunnels.links.get("faulty")?.session, session, "the tunnel session survived");
});

t.test("capsul hub ports lists assignments; release frees an offline cog's port for others", async (t) => {
  const { dir, hubCfg, hub, from } = await startHubWithPool(t, 2, { default_tcp_ports_per_cog: 2, limits: { grace: "0s" } });
  const yaml = writeYaml(path.join(dir, "hub.yaml"), { hub: { data_dir: hubCfg.dataDir, domain: hubCfg.domain, listen: { tunnel: "127.0.0.1:0", tls: "off", http: "off", tcp_ports: [`${from}-${from + 1}`], admin: "127.0.0.1:0" } } });
  const back = await tagBackend("x");
  t.teardown(() => back.close());
  const away = await enrolledCog(hubCfg, hub, cogConfig(dir, "away", hub.ports.tunnel, [{ name: "ssh", kind: "tcp", target: `127.0.0.1:${back.port}` }]), "away");
  const taker = await enrolledCog(hubCfg, hub, cogConfig(dir, "taker", hub.ports.tunnel, [
    { name: "one", kind: "tcp", target: `127.0.0.1:${back.port}` },
  ]), "taker");
  t.teardown(() => taker.close());
  t.equal(portOf(away, "ssh"), from);
  t.equal(portOf(taker, "one"), from + 1);

  const busy = await runCli(["hub", "ports", "release", String(from), "-c", yaml]);
  t.equal(busy.code, 1, "a port serving right now is not released");
  t.equal(lines(busy.stderr).length, 1);
  t.match(busy.stderr, new RegExp(`hub port ${from} is serving route ssh of cog away right now`));

  await away.close();
  await waitFor("the hub to drop the offline cog", () => !hub.tunnels.links.has("away") && hub.router.lookupPort(from) === undefined);
  await announce(taker, "vm", [tcpRoute("two", back.port)], "a second route with the pool dry");
  t.match(reasonOf(taker, "two"), /no free hub TCP port left in the pool/, "the offline cog's port is not taken");

  const list = await runCli(["hub", "ports", "--json", "-c", yaml]);
  t.equal(list.code, 0, list.stderr);
  const rows = JSON.parse(list.stdout) as Array<{ port: number; cog: string; route: string; live: boolean }>;
  t.same(rows.map((r) => [r.port, r.cog, r.route, r.live]), [[from, "away", "ssh", false], [from + 1, "taker", "one", true]]);
  const text = await runCli(["hub", "ports", "-c", yaml]);
  t.match(text.stdout, /^PORT\s+COG\s+ROUTE\s+STATE/);
  t.match(text.stdout, new RegExp(`^${from}\\s+away\\s+ssh\\s+unused`, "m"));

  const rel = await runCli(["hub", "ports", "release", String(from), "--json", "-c", yaml]);
  t.equal(rel.code, 0, rel.stderr);
  t.same(JSON.parse(rel.stdout), { released: from, cog: "away", route: "ssh" });
  const again = await runCli(["hub", "ports", "release", String(from), "-c", yaml]);
  t.equal(again.code, 2);
  t.match(again.stderr, new RegExp(`hub port ${from} is not assigned to any cog`));

  await announce(taker, "vm", [tcpRoute("two", back.port)], "the route again after the release");
  t.equal(portOf(taker, "two"), from, "the released port went to the cog that asked");
  t.equal(await visit(from), "x\n");
});

t.test("enrolling keeps working for a cog invited with a valid --tcp-ports grant", async (t) => {
  const { dir, hubCfg, hub, from } = await startHubWithPool(t, 3);
  const inv = await createInvite(hubCfg, "granted", { tcpPorts: [`${from + 1}-${from + 2}`] });
  const cfg = cogConfig(dir, "granted", hub.ports.tunnel, [{ name: "ssh", kind: "tcp", target: "127.0.0.1:9" }]);
  await enroll({ hub: { host: "127.0.0.1", port: hub.ports.tunnel }, token: inv.token, caFingerprint: inv.caFingerprint, dataDir: cfg.dataDir, tuning: cfg.tunnel });
  const cog = await startConnectedCog(cfg, "granted");
  t.teardown(() => cog.close());
  t.equal(portOf(cog, "ssh"), from + 1, "the first port of its own grant, not the pool's first");
});

t.test("grants changed while a cog was away: its port now granted to another cog moves; a stored grant outside a shrunk pool is clipped", async (t) => {
  const dir = tmpDir();
  const pool = await freePortRange(6);
  const from = pool.from;
  const back = await tagBackend("moved");
  t.teardown(() => back.close());
  const before = hubConfig(dir, { listen: { tcp_ports: [pool.spec] } });
  const hub1 = await startTestHub(before);
  const xRoutes = [{ name: "ssh", kind: "tcp", target: `127.0.0.1:${back.port}` }];
  const x1 = await enrolledCog(before, hub1, cogConfig(dir, "x", hub1.ports.tunnel, xRoutes), "x");
  t.equal(portOf(x1, "ssh"), from);
  await createInvite(before, "y", { tcpPorts: [`${from + 4}-${from + 5}`] });
  await x1.close();
  await hub1.close();

  // The operator gives x's port to z in capsul.yaml and shrinks the pool below y's stored grant.
  const after = hubConfig(dir, { listen: { tcp_ports: [`${from}-${from + 4}`] }, cogs: [{ name: "z", tcp_ports: [String(from)] }] });
  const hub2 = await startTestHub(after);
  t.teardown(() => hub2.close());
  const x2 = await startConnectedCog(cogConfig(dir, "x", hub2.ports.tunnel, xRoutes), "x");
  t.teardown(() => x2.close());
  t.equal(portOf(x2, "ssh"), from + 1, "x moved off the port now granted to z");
  const z = await enrolledCog(after, hub2, cogConfig(dir, "z", hub2.ports.tunnel, [{ name: "ssh", kind: "tcp", target: `127.0.0.1:${back.port}` }]), "z");
  t.teardown(() => z.close());
  t.equal(portOf(z, "ssh"), from, "z got its granted port");

  const yInvite = await createInvite(after, "y");
  const yCfg = cogConfig(dir, "y", hub2.ports.tunnel, [
    { name: "outside", kind: "tcp", port: from + 5, target: `127.0.0.1:${back.port}` },
    { name: "inside", kind: "tcp", target: `127.0.0.1:${back.port}` },
  ]);
  await enroll({ hub: { host: "127.0.0.1", port: hub2.ports.tunnel }, token: yInvite.token, caFingerprint: yInvite.caFingerprint, dataDir: yCfg.dataDir, tuning: yCfg.tunnel });
  const y = await startConnectedCog(yCfg, "y");
  t.teardown(() => y.close());
  t.match(reasonOf(y, "outside"), new RegExp(`hub port ${from + 5} is not granted to cog y`), "the part of y's grant outside the pool is gone");
  t.equal(portOf(y, "inside"), from + 4, "the part inside is y's");
});
