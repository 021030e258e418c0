/**
 * A hub worker started again warms up before it takes visitors (hub.worker.warmup,
 * gateway/warmup.ts): real `capsul hub` with workers: 2 and two real cogs, all child
 * processes of the CLI. The cogs redial slowly (reconnect 4 s), and the hub holds no
 * visitor for a missing cog (grace 0), so a visitor handed to a worker that has no tunnel
 * to its cog yet fails at once: without the warm-up, the kernel hands the restarted worker
 * its share of the visitors while its cogs are still away.
 *
 * - kill -9 of worker 2: while it warms, every visitor is served (by worker 1), and the
 *   new worker 2 counts none; once both cogs are back it says so and takes visitors;
 * - a cog that does not come back: the warm-up ends at hub.worker.warmup, with a warning;
 * - the last serving worker dies while another warms: the warming one serves at once;
 * - in process: a held hub (holdPublic) opens no listener, and the routes it restored from
 *   the store hold their visitors for the grace counted from openPublic(), not from its start.
 */
import t from "tap";
import fs from "node:fs";
import path from "node:path";
import { cogConfig, enrolledCog, hubConfig, HUB_DOMAIN, httpBackend, startConnectedCog, startTestHub, testLogger, tmpDir } from "./helpers/cluster.js";
import { startHub } from "../gateway/hub.js";
import { cogYaml, DOMAIN, enrollCog, READY_RE, startCogProc } from "./helpers/hubproc.js";
import { curl, freePortRange, pidAlive, spawnCli, waitFor, writeYaml, type CliProc } from "./helpers/procs.js";

/** A cog's redial delay after a drop (min = max): the window in which worker 2 warms. */
const COG_REDIAL = "4s";
/** hub.worker.warmup here: long enough that the cogs' return, not the clock, ends the first warm-up. */
const WARMUP = "12s";
/** Visitors sent while worker 2 warms: rounds of concurrent ones (the kernel spreads them), while it still warms after each. */
const MAX_ROUNDS = 4;
const PER_ROUND = 12;
/** Visitors after the warm-up, until worker 2 has taken some. */
const AFTER_VISITORS = 40;

interface WorkerRow { worker: number; pid: number | null; ready: boolean; warming?: boolean; restarts: number; routed?: number; total?: number; tunnels?: number }
interface WorkersFile { workers: WorkerRow[] }

t.test("a restarted worker takes no visitor until its cogs are back", async (t) => {
  const dir = tmpDir("capsul-warmup-");
  t.teardown(() => fs.rmSync(dir, { recursive: true, force: true }));
  const dataDir = path.join(dir, "hub");
  // Fixed public ports: when both workers are dead at once (part 3) the primary binds them again.
  const fixed = await freePortRange(2);
  const yaml = writeYaml(path.join(dir, "hub.yaml"), {
    hub: {
      data_dir: dataDir,
      domain: DOMAIN,
      listen: { tls: `127.0.0.1:${fixed.from}`, http: `127.0.0.1:${fixed.to}`, tunnel: "127.0.0.1:0", admin: "127.0.0.1:0" },
      limits: { grace: "0s", client_hello_timeout: "1s", http_header_timeout: "1s" },
      tunnel: { keepalive_interval: "1s", keepalive_timeout: "3s" },
      endpoint: { name: "hub", advertise: "127.0.0.1:0", heartbeat_interval: "500ms", timeout: "2s" },
      workers: 2,
      worker: { restart_min_delay: "100ms", restart_max_delay: "200ms", stats_interval: "100ms", warmup: WARMUP },
    },
  });
  const hub = spawnCli(t, "hub", ["hub", "-c", yaml]);
  const m = await hub.waitLine(READY_RE);
  const ports = { http: Number(m[2]), tunnel: Number(m[3]) };
  const stats = (): WorkersFile => JSON.parse(fs.readFileSync(path.join(dataDir, "hub-workers.json"), "utf8")) as WorkersFile;

  const web = await httpBackend("warm-http");
  t.teardown(() => web.close());
  const cogs: Record<string, { proc: CliProc; host: string }> = {};
  for (const name of ["alpha", "beta"]) {
    const host = `www.${name}.${DOMAIN}`;
    const cy = cogYaml(dir, name, [{ name: "site", kind: "http", hostname: host, target: `127.0.0.1:${web.port}` }],
      { reconnect: { min_delay: COG_REDIAL, max_delay: COG_REDIAL } });
    await enrollCog(t, { yaml, ports }, name, cy);
    cogs[name] = { proc: await startCogProc(t, name, cy), host };
  }
  await waitFor("both cogs on both workers", () => stats().workers.every((w) => w.tunnels === 2) || null);

  const visit = async (host: string): Promise<boolean> => {
    const r = await curl(["--resolve", `${host}:${ports.http}:127.0.0.1`, `http://${host}:${ports.http}/`]);
    return r.stdout === `warm-http ${host}:${ports.http} /\n`;
  };
  const visitors = async (n: number): Promise<number> =>
    (await Promise.all(Array.from({ length: n }, (_, i) => visit(i % 2 ? cogs.alpha!.host : cogs.beta!.host)))).filter(Boolean).length;
  const row = (i: number): WorkerRow => stats().workers[i - 1]!;

  // 1. kill -9 of worker 2: it starts again and warms while the cogs wait out their redial.
  let mark = hub.out.stderr.length;
  const victim = row(2).pid!;
  process.kill(victim, "SIGKILL");
  const fresh = await waitFor("worker 2 started again, warming", () => {
    const r = row(2);
    return r.pid !== null && r.pid !== victim && r.warming === true && pidAlive(r.pid) ? r : null;
  });
  await hub.waitLine(/\[hub\/w2\] warming up: visitors stay with the other workers until this one's cogs are back cogs=2/, { from: mark });
  // Only rounds that ended with worker 2 still warming count (on a loaded machine the cogs'
  // redial may end the warm-up within a round; its visitors are served either way).
  const counted: number[] = [];
  let during = row(2);
  for (let round = 0; round < MAX_ROUNDS; round++) {
    const ok = await visitors(PER_ROUND);
    const now = row(2);
    if (!now.warming) break;
    counted.push(ok);
    during = now;
  }
  t.ok(counted.length > 0, `${counted.length} rounds of ${PER_ROUND} visitors while worker 2 warmed (its cogs redial after ${COG_REDIAL})`);
  t.equal(during.pid, fresh.pid, "the same worker 2 throughout");
  t.equal(counted.reduce((a, b) => a + b, 0), counted.length * PER_ROUND, "every visitor during the warm-up was served");
  t.equal(during.total ?? 0, 0, "the warming worker took no visitor");
  t.equal(row(1).pid !== null && pidAlive(row(1).pid!), true, "worker 1 served them");

  await hub.waitLine(/\[hub\/w2\] warm-up over: taking visitors reason="cogs back" cogs=2 of=2/, { from: mark });
  await hub.waitLine(/worker ready worker=2 /, { from: mark });
  t.equal((await waitFor("the stats file", () => (row(2).ready ? row(2) : null))).warming, false, "warm: the stats file says so");
  const routedSum = (): number => stats().workers.reduce((n, w) => n + (w.routed ?? 0), 0);
  let taken = 0;
  for (let round = 0; round < 5 && taken === 0; round++) {
    const before = routedSum();
    t.equal(await visitors(AFTER_VISITORS), AFTER_VISITORS, "every visitor after the warm-up is served");
    await waitFor("the workers' counters", () => routedSum() >= before + AFTER_VISITORS || null);
    taken = row(2).routed ?? 0;
  }
  t.ok(taken > 0, `the warm worker 2 takes visitors now (${taken})`);

  // 2. A cog that does not come back (stopped): the warm-up ends at hub.worker.warmup.
  // Worker 1 still counts beta's tunnel (keepalive_timeout 3 s) when worker 2 starts again.
  const beta = cogs.beta!.proc.child.pid!;
  process.kill(beta, "SIGSTOP");
  t.teardown(() => { try { process.kill(beta, "SIGCONT"); } catch { /* gone */ } });
  mark = hub.out.stderr.length;
  process.kill(row(2).pid!, "SIGKILL");
  await hub.waitLine(/\[hub\/w2\] warming up: .* cogs=2/, { from: mark });
  const over = await hub.waitLine(/\[hub\/w2\] warm-up over before all cogs were back: taking visitors cogs=(\d) of=2 ms=(\d+)/, { from: mark, timeoutMs: 30_000 });
  t.equal(over[1], "1", "alpha came back, beta did not");
  // A timer may fire a millisecond before Date.now() says its time is up.
  t.ok(Number(over[2]) >= 11_990, `it waited hub.worker.warmup (${over[2]} ms)`);
  await hub.waitLine(/worker ready worker=2 /, { from: mark });
  t.ok(await visit(cogs.alpha!.host), "alpha is served after that warm-up");
  process.kill(beta, "SIGCONT");
  await waitFor("beta on both workers again", () => stats().workers.every((w) => w.tunnels === 2) || null);

  // 3. The serving worker dies while the other warms: the warming one serves at once.
  mark = hub.out.stderr.length;
  process.kill(row(2).pid!, "SIGKILL");
  await hub.waitLine(/\[hub\/w2\] warming up: .* cogs=2/, { from: mark });
  process.kill(row(1).pid!, "SIGKILL");
  await hub.waitLine(/\[hub\/w2\] warm-up over: taking visitors reason="no other worker serves"/, { from: mark });
  await hub.waitLine(/worker ready worker=2 /, { from: mark });
  t.ok(await waitFor("a visitor served after both deaths", () => visit(cogs.alpha!.host).then((ok) => ok || null)), "the hub serves again");

  hub.child.kill("SIGTERM");
  const { code } = await hub.waitExit();
  t.equal(code, 0, "the primary exits 0 after its workers drained");
});

/** hub.limits.grace of the in-process test below, and how long its hub stays held (longer). */
const HELD_GRACE_MS = 3_000;
const HELD_FOR_MS = 4_000;

t.test("a held hub's restored routes wait for their cogs from when it takes visitors, not from its start", async (t) => {
  const dir = tmpDir("capsul-warmgrace-");
  t.teardown(() => fs.rmSync(dir, { recursive: true, force: true }));
  const web = await httpBackend("held");
  t.teardown(() => web.close());
  const tunnelPort = (await freePortRange(1)).from;
  const hubCfg = hubConfig(dir, { limits: { grace: `${HELD_GRACE_MS}ms` }, listen: { tunnel: `127.0.0.1:${tunnelPort}` } });
  const host = `www.alpha.${HUB_DOMAIN}`;
  const cogCfg = cogConfig(dir, "alpha", tunnelPort, [{ name: "site", kind: "http", hostname: host, target: `127.0.0.1:${web.port}` }]);

  // A first hub learns alpha's route (the store keeps it), then both go away.
  const first = await startTestHub(hubCfg);
  const cog = await enrolledCog(hubCfg, first, cogCfg, "alpha");
  await cog.close();
  await first.close();

  // The next hub starts held, as a warming worker does: tunnels and store, no public listener.
  const hub = await startHub(hubCfg, testLogger("hub"), { holdPublic: true });
  t.teardown(() => hub.close());
  t.equal(hub.ports.http, null, "held: no HTTP listener");
  t.equal(hub.ports.admin, null, "held: no admin listener");
  await new Promise((r) => setTimeout(r, HELD_FOR_MS)); // longer than the grace
  await hub.openPublic();
  t.type(hub.ports.http, "number", "open after openPublic()");

  // alpha is not back: its visitor is held for the grace, counted from now, and served once it is.
  const visit = curl(["-s", "--resolve", `${host}:${hub.ports.http}:127.0.0.1`, `http://${host}:${hub.ports.http}/`]);
  await new Promise((r) => setTimeout(r, 200));
  const back = await startConnectedCog(cogCfg, "alpha");
  t.teardown(() => back.close());
  const r = await visit;
  t.equal(r.stdout, `held ${host}:${hub.ports.http} /\n`, `the visitor waited for alpha and was served (${r.stderr.trim() || "ok"})`);
});
