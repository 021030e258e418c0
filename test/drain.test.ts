/**
 * Drain on SIGTERM / SIGINT, with hub and cog as real `capsul` processes: live
 * transfers (held in flight, checked by SHA-256) finish within shutdown_grace while
 * new visitors are refused; past the deadline, or on a second signal, the rest are cut;
 * either way the process exits 0. A cog told GoAway by a draining hub keeps its streams
 * on the old tunnel and reaches the restarted hub by itself.
 */
import t, { type Test } from "tap";
import fs from "node:fs";
import path from "node:path";
import { bulkBackend, BulkReader } from "./helpers/bulk.js";
import { httpBackend, tmpDir } from "./helpers/cluster.js";
import {
  cogDoc, CONNECTED_RE, DOMAIN, enrollCog, hubDoc, httpGet, startCogProc, startHubProc, writeDoc, type HubPorts,
} from "./helpers/opsprocs.js";
import { freePort, freePortRange, probePort } from "./helpers/procs.js";

const MiB = 1024 * 1024;
const TOTAL = 64 * MiB;
const DRAINING_RE = /draining: no longer accepting; waiting for open visitor connections connections=(\d+)/;
const SHUT_RE = /shut down: (\d+) of (\d+) open connections finished, (\d+) cut/;
const SITE = `www.home1.${DOMAIN}`;

/** A hub, a cog "home1" serving `bulk` (tcp, on the pool's first port) and `site` (http), and their backends. */
async function setup(t: Test, opts: { hub?: Record<string, unknown>; cog?: Record<string, unknown>; ports?: HubPorts } = {}) {
  const dir = tmpDir("capsul-drain-");
  t.teardown(() => fs.rmSync(dir, { recursive: true, force: true }));
  const pool = await freePortRange(2);
  const bulk = await bulkBackend(TOTAL, 7);
  const site = await httpBackend("SITE");
  t.teardown(async () => { await bulk.close(); await site.close(); });
  const hubYaml = writeDoc(path.join(dir, "hub.yaml"), hubDoc(dir, { pool: pool.spec, ports: opts.ports, hub: opts.hub }));
  const hub = await startHubProc(t, hubYaml);
  const cogYaml = writeDoc(path.join(dir, "cog.yaml"), cogDoc(dir, "home1", [
    { name: "bulk", kind: "tcp", port: pool.from, target: `127.0.0.1:${bulk.port}` },
    { name: "site", kind: "http", hostname: SITE, target: `127.0.0.1:${site.port}` },
  ], opts.cog));
  await enrollCog(t, hub, "home1", cogYaml);
  const cog = await startCogProc(t, "home1", cogYaml);
  t.match((await httpGet(hub.ports.http, SITE)).body, /^SITE /, "the site answers through the hub");
  return { dir, pool, bulk, hub, hubYaml, cog, cogYaml };
}

/** A visitor reading the bulk route, held in flight after 8 MiB. */
async function heldTransfer(t: Test, port: number): Promise<BulkReader> {
  const r = new BulkReader(port);
  t.teardown(() => r.destroy());
  await r.pauseAfter(8 * MiB);
  return r;
}

t.test("SIGTERM: the hub stops accepting, the transfer in flight finishes within the grace period, exit 0", async (t) => {
  const { pool, bulk, hub, cog } = await setup(t, { hub: { shutdown_grace: "60s" } });
  const reader = await heldTransfer(t, pool.from);

  hub.proc.kill("SIGTERM");
  t.equal((await hub.proc.waitLine(DRAINING_RE))[1], "1", "one visitor connection open when the drain began");
  await cog.waitLine(/the hub is going away \(GoAway\): dialing a new tunnel; open streams stay on the old one .*streams=1/);
  for (const [what, port] of [["tcp route", pool.from], ["http", hub.ports.http], ["tls", hub.ports.tls], ["tunnel", hub.ports.tunnel]] as const) {
    t.equal(await probePort(port), "ECONNREFUSED", `a new visitor on the ${what} port is refused`);
  }
  t.ok(hub.proc.alive, "the hub waits for the transfer");

  reader.resume();
  const res = await reader.done;
  t.equal(res.error, null);
  t.equal(res.bytes, TOTAL, "every byte arrived");
  t.equal(res.sha256, bulk.sha256, "SHA-256 matches");
  const ex = await hub.proc.waitExit();
  t.same(ex, { code: 0, signal: null }, "the hub exits 0 once the transfer is done");
  const shut = hub.proc.matching(SHUT_RE);
  t.equal(shut.length, 1);
  t.match(shut[0], /shut down: 1 of 1 open connections finished, 0 cut/);
});

t.test("past shutdown_grace the rest are cut and the hub exits 0; a second signal cuts at once", async (t) => {
  t.test("deadline", async (t) => {
    const { pool, bulk, hub } = await setup(t, { hub: { shutdown_grace: "1s" } });
    const reader = await heldTransfer(t, pool.from);
    hub.proc.kill("SIGTERM");
    const ex = await hub.proc.waitExit();
    t.same(ex, { code: 0, signal: null }, "exit 0 after cutting");
    t.match(hub.proc.text(), /shut down: 0 of 1 open connections finished, 1 cut/);
    reader.resume();
    const res = await reader.done;
    t.ok(res.bytes < TOTAL, `the held transfer was cut (${res.bytes} of ${TOTAL} bytes)`);
    t.not(res.sha256, bulk.sha256);
  });

  t.test("SIGINT twice (Ctrl-C in a terminal)", async (t) => {
    const { pool, hub } = await setup(t, { hub: { shutdown_grace: "10m" } });
    const reader = await heldTransfer(t, pool.from);
    hub.proc.kill("SIGINT");
    await hub.proc.waitLine(DRAINING_RE);
    hub.proc.kill("SIGINT");
    const ex = await hub.proc.waitExit();
    t.same(ex, { code: 0, signal: null });
    t.match(hub.proc.text(), /second signal: cutting open connections now/);
    t.match(hub.proc.text(), /shut down: 0 of 1 open connections finished, 1 cut/);
    reader.resume();
    t.ok((await reader.done).bytes < TOTAL, "the held transfer was cut");
  });
});

t.test("a cog told GoAway keeps both its streams on the old tunnel and reaches the restarted hub by itself", async (t) => {
  const ports: HubPorts = { tls: await freePort(), http: await freePort(), tunnel: await freePort() };
  const { pool, bulk, hub, hubYaml, cog } = await setup(t, { hub: { shutdown_grace: "60s" }, ports });
  const first = await heldTransfer(t, pool.from);
  const second = await heldTransfer(t, pool.from);
  t.equal(bulk.connections, 2, "two streams of the cog in flight");

  const from = cog.out.stderr.length;
  hub.proc.kill("SIGTERM");
  await cog.waitLine(/the hub is going away \(GoAway\): dialing a new tunnel; open streams stay on the old one .*streams=2/, { from });
  await hub.proc.waitLine(DRAINING_RE);

  // The new hub process starts on the same ports while the old one drains.
  const next = await startHubProc(t, hubYaml, "hub-2");
  t.same(next.ports, ports, "the same addresses");
  await cog.waitLine(CONNECTED_RE, { from });
  t.match((await httpGet(ports.http, SITE)).body, /^SITE /, "a new visitor is served through the new hub and the new tunnel");
  t.ok(hub.proc.alive, "the old hub still drains");

  first.resume();
  second.resume();
  for (const [name, r] of [["first", first], ["second", second]] as const) {
    const res = await r.done;
    t.equal(res.error, null, `${name}: no error`);
    t.equal(res.bytes, TOTAL, `${name}: every byte`);
    t.equal(res.sha256, bulk.sha256, `${name}: SHA-256 matches`);
  }
  t.same(await hub.proc.waitExit(), { code: 0, signal: null }, "the old hub exits 0");
  t.match(hub.proc.text(), /shut down: 2 of 2 open connections finished, 0 cut/);
  t.ok(cog.alive && next.proc.alive, "cog and new hub run on");
  t.match((await httpGet(ports.http, SITE)).body, /^SITE /, "and serve");
});

t.test("the cog's own SIGTERM: no new visitors, its open stream finishes, exit 0", async (t) => {
  const { pool, bulk, hub, cog } = await setup(t, { cog: { shutdown_grace: "60s" } });
  const reader = await heldTransfer(t, pool.from);

  cog.kill("SIGTERM");
  await cog.waitLine(/draining: no new visitors; open streams may finish .*streams=1/);
  await hub.proc.waitLine(/cog is going away \(GoAway\): holding new visitors for its next tunnel cog=home1/);
  // A visitor arriving now waits out the hub's grace period (1s here) for a tunnel that does not come.
  const late = new BulkReader(pool.from);
  const lateRes = await late.done;
  t.equal(lateRes.bytes, 0, "a new visitor gets nothing");
  t.equal(bulk.connections, 1, "and never reached the backend");
  t.ok(cog.alive, "the cog waits for its open stream");

  reader.resume();
  const res = await reader.done;
  t.equal(res.bytes, TOTAL);
  t.equal(res.sha256, bulk.sha256, "SHA-256 matches");
  t.same(await cog.waitExit(), { code: 0, signal: null }, "the cog exits 0");
  t.match(cog.text(), /shut down: 1 of 1 open connections finished, 0 cut/);
  t.ok(hub.proc.alive);
});
