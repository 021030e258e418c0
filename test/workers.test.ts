/**
 * Hub workers on one machine (issue 12, hub.workers: 2), every part a real child
 * process of the `capsul` CLI: the primary holds the one tunnel port and routes each
 * tunnel connection by its TLS server name to a worker; the public listeners are shared
 * among the workers (cluster, SCHED_NONE). Two cogs enrolled through the one port.
 *
 * - every cog holds a tunnel to each worker (`capsul hub cogs --json` endpoints);
 * - visitors spread over both workers (their counters in <data_dir>/hub-workers.json);
 * - kill -9 of one worker while downloads run through both: only the killed worker's
 *   visitors end early, the others complete with the right SHA-256; the primary starts
 *   it again, the cogs reconnect to it, and the hub keeps answering meanwhile.
 */
import t from "tap";
import fs from "node:fs";
import net from "node:net";
import tls from "node:tls";
import path from "node:path";
import { bulkBackend, BulkReader } from "./helpers/bulk.js";
import { httpBackend, tmpDir } from "./helpers/cluster.js";
import { cogYaml, DOMAIN, enrollCog, listCogs, READY_RE, startCogProc } from "./helpers/hubproc.js";
import { curl, freePortRange, pidAlive, runCli, spawnCli, waitFor, writeYaml, type CliProc } from "./helpers/procs.js";

/** Bytes each download carries: a paused reader leaves most of it in flight when a worker dies. */
const BULK_BYTES = 16 * 1024 * 1024;
/** What a download reads before it pauses. */
const READ_BEFORE_PAUSE_BYTES = 256 * 1024;
/** Concurrent visitors of the spread check (SCHED_NONE: the kernel picks the worker). */
const SPREAD_VISITORS = 40;
/** Downloads started until each worker carries at least one. */
const MAX_DOWNLOADS = 12;

interface WorkerRow { worker: number; endpoint: string; pid: number | null; ready: boolean; restarts: number; active?: number; routed?: number; tunnels?: number }
interface WorkersFile { primary: number; tunnel: number; workers: WorkerRow[] }

/** A client socket to the primary's tunnel port, and whether (and when) the hub closed it. */
function watched<S extends net.Socket>(sock: S): { sock: S; closed: Promise<void>; isClosed(): boolean } {
  sock.on("error", () => {});
  let closed = false;
  return { sock, closed: new Promise((r) => sock.on("close", () => { closed = true; r(); })), isClosed: () => closed };
}


t.test("workers: 2 behind one tunnel port: cogs on each worker, visitors spread, a worker killed and restarted", async (t) => {
  const dir = tmpDir("capsul-workers-");
  t.teardown(() => fs.rmSync(dir, { recursive: true, force: true }));
  const pool = await freePortRange(8);
  const dataDir = path.join(dir, "hub");
  const yaml = writeYaml(path.join(dir, "hub.yaml"), {
    hub: {
      data_dir: dataDir,
      domain: DOMAIN,
      listen: { tls: "127.0.0.1:0", http: "127.0.0.1:0", tunnel: "127.0.0.1:0", admin: "127.0.0.1:0", tcp_host: "127.0.0.1", tcp_ports: [pool.spec] },
      limits: { grace: "10s", client_hello_timeout: "1s", http_header_timeout: "1s" },
      tunnel: { keepalive_interval: "1s", keepalive_timeout: "3s" },
      endpoint: { name: "hub", advertise: "127.0.0.1:0", heartbeat_interval: "500ms", timeout: "2s" },
      workers: 2,
      // A worker starts again 1 s after its death: the cogs redial it (100-500 ms) while it is
      // down, and their dials wait at the primary for it (hub.worker.handoff_wait).
      worker: { restart_min_delay: "1s", restart_max_delay: "2s", stats_interval: "100ms" },
    },
  });
  const hub = spawnCli(t, "hub", ["hub", "-c", yaml]);
  const m = await hub.waitLine(READY_RE);
  const ports = { tls: Number(m[1]), http: Number(m[2]), tunnel: Number(m[3]) };
  const stats = (): WorkersFile => JSON.parse(fs.readFileSync(path.join(dataDir, "hub-workers.json"), "utf8")) as WorkersFile;
  t.equal(stats().workers.length, 2, "two workers");
  // The primary makes the session ticket key before any worker starts: workers making it at
  // once would each seal tickets with a key of their own (the last rename wins the file).
  t.same(hub.matching(/session ticket key (created|replaced|rotated)/).map((l) => /\[(hub[^\]]*)\]/.exec(l)?.[1]), ["hub"], "one ticket key, made by the primary");

  const web = await httpBackend("wk-http");
  const bulk = await bulkBackend(BULK_BYTES, 7);
  t.teardown(async () => { await web.close(); await bulk.close(); });
  const cogs: Record<string, { proc: CliProc; host: string }> = {};
  for (const name of ["alpha", "beta"]) {
    const host = `www.${name}.${DOMAIN}`;
    const cy = cogYaml(dir, name, [
      { name: "site", kind: "http", hostname: host, target: `127.0.0.1:${web.port}` },
      { name: "bulk", kind: "tcp", target: `127.0.0.1:${bulk.port}` },
    ]);
    // Enrollment through the one tunnel port, without a server name: the bootstrap worker.
    await enrollCog(t, { yaml, ports }, name, cy);
    cogs[name] = { proc: await startCogProc(t, name, cy), host };
  }
  const endpointsOf = async (cog: string): Promise<string[]> => ((await listCogs(yaml)).find((c) => c.name === cog)?.endpoints ?? []);
  for (const name of ["alpha", "beta"]) {
    t.same(await waitFor(`${name} on both workers`, async () => {
      const eps = await endpointsOf(name);
      return eps.length === 2 ? eps : null;
    }), ["hub-w1", "hub-w2"], `${name} has a tunnel to each worker`);
    await cogs[name]!.proc.waitLine(/connected to hub .*endpoint=hub-w2/);
  }
  await waitFor("each worker counts both cogs' tunnels", () => stats().workers.every((w) => w.tunnels === 2) || null);

  // Visitors spread: concurrent requests on the one HTTP port, the kernel hands each to a worker.
  const answers = await Promise.all(Array.from({ length: SPREAD_VISITORS }, (_, i) => {
    const host = i % 2 ? cogs.alpha!.host : cogs.beta!.host;
    return curl(["--resolve", `${host}:${ports.http}:127.0.0.1`, `http://${host}:${ports.http}/`]).then((r) => r.stdout === `wk-http ${host}:${ports.http} /\n`);
  }));
  t.equal(answers.filter(Boolean).length, SPREAD_VISITORS, "every visitor was served");
  const routed = await waitFor("the workers' counters", () => {
    const ws = stats().workers;
    const sum = ws.reduce((n, w) => n + (w.routed ?? 0), 0);
    return sum >= SPREAD_VISITORS ? ws.map((w) => w.routed ?? 0) : null;
  });
  t.comment(`visitors per worker: ${routed.join(", ")}`);
  t.ok(routed.every((n) => n > 0), `visitors landed on both workers (${routed.join(" and ")})`);

  // Downloads through alpha's TCP port until each worker carries one.
  const alphaPort = Number((await listCogs(yaml)).find((c) => c.name === "alpha")!.routes.find((r) => r.startsWith("tcp:"))!.slice(4));
  const downloads: BulkReader[] = [];
  let active: number[] = [0, 0];
  while (downloads.length < MAX_DOWNLOADS && !active.every((n) => n > 0)) {
    const d = new BulkReader(alphaPort);
    downloads.push(d);
    await d.pauseAfter(READ_BEFORE_PAUSE_BYTES);
    active = await waitFor("the download counted", () => {
      const a = stats().workers.map((w) => w.active ?? 0);
      return a[0]! + a[1]! === downloads.length ? a : null;
    });
  }
  t.ok(active.every((n) => n > 0), `downloads on both workers (${active.join(" and ")})`);

  // kill -9 of worker 2: its downloads end early, worker 1's complete intact.
  const before = stats().workers;
  const victim = before[1]!;
  const mark = hub.out.stderr.length;
  const cogMarks = Object.fromEntries(Object.entries(cogs).map(([name, c]) => [name, c.proc.out.stderr.length]));
  process.kill(victim.pid!, "SIGKILL");
  await waitFor("worker 2 gone", () => !pidAlive(victim.pid!) || null);
  const during = await curl(["--resolve", `${cogs.beta!.host}:${ports.http}:127.0.0.1`, `http://${cogs.beta!.host}:${ports.http}/`]);
  t.equal(during.stdout, `wk-http ${cogs.beta!.host}:${ports.http} /\n`, "the hub answers while worker 2 is down");
  for (const d of downloads) d.resume();
  const results = await Promise.all(downloads.map((d) => d.done));
  const intact = results.filter((r) => r.bytes === BULK_BYTES && r.sha256 === bulk.sha256).length;
  const cut = results.filter((r) => r.bytes < BULK_BYTES).length;
  t.equal(intact, active[0], `worker 1's ${active[0]} downloads complete with the right SHA-256`);
  t.equal(cut, active[1], `worker 2's ${active[1]} downloads ended early`);

  await hub.waitLine(/worker died; starting it again worker=2 code=null signal=SIGKILL/, { from: mark });
  await hub.waitLine(/worker ready worker=2 /, { from: mark });
  // Its listeners are the shared ones: with port 0, node:cluster pairs a worker's listen calls
  // with the others' by their order, so a warm-up opening them in another order swapped them.
  const w2ready = await hub.waitLine(/\[hub\/w2\] worker ready tls=(\d+) http=(\d+) admin=(\d+)/, { from: mark });
  t.same([Number(w2ready[1]), Number(w2ready[2])], [ports.tls, ports.http], "the restarted worker 2 listens on the hub's TLS and HTTP ports");
  const after = stats().workers;
  t.not(after[1]!.pid, victim.pid, "worker 2 runs under a new pid");
  t.equal(after[1]!.restarts, 1, "one restart counted");
  t.equal(after[0]!.pid, before[0]!.pid, "worker 1 was never restarted");
  for (const name of ["alpha", "beta"]) {
    await waitFor(`${name} back on worker 2`, () => cogs[name]!.proc.matching(/connected to hub .*endpoint=hub-w2/).length >= 2 || null);
    // The restarted worker reads the ticket key the workers share in the data dir: the cog's
    // ticket from its first tunnel to worker 2 resumes (gateway/ticketkeys.ts).
    const w2 = cogs[name]!.proc.matching(/connected to hub .*endpoint=hub-w2/);
    t.match(w2[0], /resumed=false/, `${name}'s first tunnel to worker 2: a full handshake`);
    t.match(w2.at(-1), /resumed=true/, `${name}'s tunnel to the restarted worker 2: resumed`);
    // Its one redial while worker 2 was down waited at the primary and became this tunnel:
    // no dial was refused into the cog's backoff.
    const from = cogMarks[name]!;
    t.equal(cogs[name]!.proc.matching(/tunnel to hub failed .*endpoint=hub-w2/, "stderr", from).length, 0, `${name}: no dial to worker 2 failed while it restarted`);
    t.equal(cogs[name]!.proc.matching(/reconnecting .*endpoint=hub-w2/, "stderr", from).length, 1, `${name}: one redial of worker 2, held until it took tunnels`);
    t.same(await waitFor(`${name} on both workers again`, async () => {
      const eps = await endpointsOf(name);
      return eps.length === 2 ? eps : null;
    }), ["hub-w1", "hub-w2"], `${name} reconnected to the restarted worker`);
  }
  await waitFor("the restarted worker counts both tunnels", () => stats().workers[1]!.tunnels === 2 || null);
  const ok = await Promise.all(Array.from({ length: 10 }, () => curl(["--resolve", `${cogs.alpha!.host}:${ports.http}:127.0.0.1`, `http://${cogs.alpha!.host}:${ports.http}/`])));
  t.equal(ok.filter((r) => r.stdout.startsWith("wk-http")).length, 10, "served after the restart");

  // SIGTERM drains every worker and the primary exits 0.
  hub.child.kill("SIGTERM");
  const { code } = await hub.waitExit();
  t.equal(code, 0, "the primary exits 0 after its workers drained");
  t.match(hub.text(), /shut down: every worker exited/);
});

t.test("the primary's tunnel peek is bounded: a silent connection, an oversized hello, too many from one source", async (t) => {
  const dir = tmpDir("capsul-workers-peek-");
  t.teardown(() => fs.rmSync(dir, { recursive: true, force: true }));
  const doc = (extra: Record<string, unknown> = {}): Record<string, unknown> => ({
    hub: {
      data_dir: path.join(dir, "hub"),
      domain: DOMAIN,
      listen: { tls: "127.0.0.1:0", http: "127.0.0.1:0", tunnel: "127.0.0.1:0", admin: "127.0.0.1:0", tcp_host: "127.0.0.1", tcp_ports: [] },
      // The primary's peek reuses the visitors' bounds and the tunnel's unauthenticated caps.
      limits: { client_hello_timeout: "3s", client_hello_max_bytes: "4KiB" },
      tunnel: { max_unauthenticated_per_ip: 3 },
      endpoint: { name: "hub", advertise: "127.0.0.1:0" },
      workers: 2,
      ...extra,
    },
  });
  const yaml = writeYaml(path.join(dir, "hub.yaml"), doc());
  const hub = spawnCli(t, "hub", ["hub", "-c", yaml]);
  const port = Number((await hub.waitLine(READY_RE))[3]);
  const open = (from = "127.0.0.1"): ReturnType<typeof watched> => watched(net.connect({ host: "127.0.0.1", port, localAddress: from }));
  const connected = (s: net.Socket): Promise<void> => new Promise((r) => (s.readyState === "open" ? r() : s.once("connect", () => r())));

  // Four silent connections from one source: the cap is three, so one is closed at once
  // while the other three wait in the peek (which one depends on the order of accepts).
  // A silent connection from another source, opened first, is still waiting for its
  // deadline when the refused one closes (without the cap all five would end at the deadline).
  const sentinel = open("127.0.0.2");
  await connected(sentinel.sock);
  const four = [open(), open(), open(), open()];
  await Promise.race(four.map((c) => c.closed));
  t.equal(four.filter((c) => c.isClosed()).length, 1, "one of four connections from one source was closed while three were still peeked");
  t.notOk(sentinel.isClosed(), "it was refused before the peek deadline of an earlier connection");
  sentinel.sock.destroy();
  await hub.waitLine(/tunnel connection refused: too many unauthenticated tunnel connections from this source/);
  const silent = four.filter((c) => !c.isClosed());
  // The silent ones end at client_hello_timeout, not at the worker's handshake timeout or never.
  await Promise.all(silent.map((c) => c.closed));
  t.pass("silent tunnel connections are closed by the primary's peek deadline");

  // A hello bigger than client_hello_max_bytes: closed as soon as the cap is read, before the deadline.
  const waiting = open();
  await connected(waiting.sock);
  // Its deadline comes first by this much, so without the cap it would close before the big one.
  await new Promise((r) => setTimeout(r, 1000));
  const big = open();
  await connected(big.sock);
  // A 4 KiB handshake record that starts a ClientHello announcing 16 KiB: the cap is reached before its end.
  // (version, random, no session id, then 16,128 bytes of cipher suites: a valid prefix, so only the cap can end it).
  const start = Buffer.concat([Buffer.from([0x01, 0x00, 0x40, 0x00, 0x03, 0x03]), Buffer.alloc(32), Buffer.from([0x00, 0x3f, 0x00])]);
  const hs = Buffer.concat([start, Buffer.alloc(4096 - start.length, 0x13)]);
  big.sock.write(Buffer.concat([Buffer.from([0x16, 0x03, 0x01, 0x10, 0x00]), hs]));
  await big.closed;
  t.notOk(waiting.isClosed(), "the oversized hello was closed before the deadline that still holds an earlier silent connection");
  waiting.sock.destroy();

  // Not TLS at all: closed, and the hub still serves the next one.
  const http = open();
  http.sock.write("GET / HTTP/1.1\r\nHost: x\r\n\r\n");
  await http.closed;
  t.pass("a non-TLS tunnel connection is closed");
  const inv = await runCli(["hub", "invite", "late", "--json", "-c", yaml]);
  const invite = JSON.parse(inv.stdout) as { token: string; ca_fingerprint: string };
  const cy = cogYaml(dir, "late", []);
  const en = await runCli(["cog", "enroll", "--hub", `127.0.0.1:${port}`, "--token", invite.token, "--ca-fingerprint", invite.ca_fingerprint, "-c", cy]);
  t.equal(en.code, 0, `enrollment still works through the primary: ${en.stderr}`);

  // capsul hub reload reaches the primary (hub.pid), which reloads both workers and reports for them.
  writeYaml(yaml, doc({ shutdown_grace: "5s", workers: 3 }));
  const rl = await runCli(["hub", "reload", "--json", "-c", yaml]);
  t.equal(rl.code, 0, rl.stderr);
  const report = JSON.parse(rl.stdout) as { pid: number; changed: string[]; restart_needed: string[] };
  t.equal(report.pid, (JSON.parse(fs.readFileSync(path.join(dir, "hub", "hub-workers.json"), "utf8")) as WorkersFile).primary, "the primary answered");
  t.same([...report.changed].sort(), ["hub.shutdown_grace", "hub.workers"], "the workers' change and the primary's");
  t.same(report.restart_needed, ["hub.workers"], "the number of workers takes a restart");
  t.equal(hub.matching(/\[hub\/w\d\] configuration reloaded .*hub\.shutdown_grace/).length, 2, "each worker applied it");
});

t.test("a tunnel connection waiting for a restarting worker is bounded: the unauthenticated caps, then hub.worker.handoff_wait", async (t) => {
  const dir = tmpDir("capsul-workers-wait-");
  t.teardown(() => fs.rmSync(dir, { recursive: true, force: true }));
  const dataDir = path.join(dir, "hub");
  const yaml = writeYaml(path.join(dir, "hub.yaml"), {
    hub: {
      data_dir: dataDir,
      domain: DOMAIN,
      listen: { tls: "127.0.0.1:0", http: "127.0.0.1:0", tunnel: "127.0.0.1:0", admin: "127.0.0.1:0" },
      tunnel: { max_unauthenticated_per_ip: 3 },
      endpoint: { name: "hub", advertise: "127.0.0.1:0" },
      workers: 2,
      // Worker 2 stays down far longer than a connection may wait for it.
      worker: { restart_min_delay: "30s", restart_max_delay: "30s", handoff_wait: "1s" },
    },
  });
  const hub = spawnCli(t, "hub", ["hub", "-c", yaml]);
  const port = Number((await hub.waitLine(READY_RE))[3]);
  const w2 = (JSON.parse(fs.readFileSync(path.join(dataDir, "hub-workers.json"), "utf8")) as WorkersFile).workers[1]!;
  const mark = hub.out.stderr.length;
  process.kill(w2.pid!, "SIGKILL");
  await hub.waitLine(/worker died; starting it again worker=2 .*delayMs=30000/, { from: mark });

  // A stranger's ClientHellos naming worker 2 while it is down: the primary keeps them for it.
  const hello = (from = "127.0.0.1"): ReturnType<typeof watched> =>
    watched(tls.connect({ host: "127.0.0.1", port, localAddress: from, servername: `w2.${DOMAIN}`, rejectUnauthorized: false }));
  const sentinel = hello("127.0.0.2");
  await new Promise((r) => setTimeout(r, 200)); // its hello is in and waiting
  const four = [hello(), hello(), hello(), hello()];
  await Promise.race(four.map((c) => c.closed));
  t.equal(four.filter((c) => c.isClosed()).length, 1, "one of four from one source was closed at once: the waiting ones count against max_unauthenticated_per_ip");
  t.notOk(sentinel.isClosed(), "while an earlier waiting connection still waited");
  await Promise.all([sentinel.closed, ...four.map((c) => c.closed)]);
  t.pass("every waiting connection was closed");
  t.equal(hub.matching(/worker started worker=2/, "stderr", mark).length, 0, "at hub.worker.handoff_wait, long before worker 2 came back");
  t.ok(pidAlive(JSON.parse(fs.readFileSync(path.join(dataDir, "hub-workers.json"), "utf8")).primary as number), "the primary runs on");
});
