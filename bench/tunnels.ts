/**
 * Many cogs on one hub (issue 12, "Measured today at 1,000 tunnels"): a real `capsul hub`
 * child process and N real TunnelClients (bench/tunnel-holder.ts, HOLDERS processes), all on
 * loopback. Measures, in one run:
 * - hub CPU per tunnel setup: /proc/PID/stat utime+stime of the hub over "all N dial once"
 *   (TLS handshake, certificate check, store reads and status writes, route claims, logs);
 * - after `kill -9` of the hub and a restart on the same ports and data: seconds until all N
 *   are back (from the kill, and from the new hub's ready line), and the new hub's CPU per tunnel;
 * - hub RSS per tunnel after GC (bench/gc-hook.ts, SIGUSR2), RSS after all but KEEP drop,
 *   and the hub's idle CPU with N tunnels up (keepalives only);
 * - routing: SAMPLE visitors (HTTP, Host: <cog>.<domain>) must each get their own cog's name;
 * - what visitors see during the storm (bench/visitor-probe.ts), see "probe" below.
 *
 *   node dist/bench/tunnels.js [--cogs 1000] [--holders 2] [--cli dist/cli/main.js] [--keep 10]
 *        [--idle-s 20] [--sample 50] [--back-timeout-s 120] [--cache DIR] [--json FILE] [--cpu-prof-dir DIR]
 *        [--workers N [--need K]] [--kill hub|worker:I]
 *        [--probe-conc 8] [--probe-timeout-ms 5000] [--probe-gap-ms 50]
 *
 * `--workers N` runs the hub with `hub.workers: N`: every cog keeps a tunnel to each worker and
 * counts as connected (and back) only with all N (or K of them: `--need 1` is "reachable"); hub CPU
 * (hubCpuMsPerSetup*) is the primary's and its workers' together, and cpuMsPerTunnel{First,Storm}ByRole
 * splits it: the primary's own CPU (not its children's: it peeks each tunnel's ClientHello and
 * hands the socket over) and each worker's (w1, w2, ...), in ms per tunnel, over the first connect
 * and over "ready -> all back"; memory figures are the primary's alone, and the handshake counts
 * (one worker's /metrics) are not read.
 *
 * `--kill hub` (the default): `kill -9` of the whole hub (the primary and its workers at once),
 * then a new hub on the same ports and data; "ready" is its `hub ready` line.
 * `--kill worker:I` (workers >= 2, every worker needed): `kill -9` of worker I alone (its pid from
 * <data_dir>/hub-workers.json); the primary starts it again by itself and the other workers keep
 * their tunnels. A cog counts as back once it has a tunnel to every worker again (the holders
 * count a cog that lost one endpoint as down, so backAfterRestart reaching N says all N lost
 * theirs to worker I and got it back). "ready" is when the new worker takes tunnels again: its
 * own "warming up" line (gateway/warmup.ts: its public listeners wait until its cogs are back),
 * or, when it does not warm up, the primary's `worker ready` line for it with a new pid (or
 * the file's ready flag, whichever is seen first). killedWorker: the timeline from the kill
 * (startedAfterKillS: the primary's `worker started`; tunnelsAfterKillS: "ready" above;
 * servingAfterKillS: `worker ready`, its public listeners open, after the warm-up), bootCpuS
 * (the new worker's CPU until ready), totalCpuMsPerTunnel (its whole CPU until all back, per
 * tunnel), primaryCpuMsPerTunnelFromKill (the primary's own, kill -> all back: it peeks the
 * dead worker's cogs' redials and keeps them until the new one takes tunnels, hub.worker.handoff_wait,
 * then hands them over), othersCpuSKillToReady (CPU
 * seconds of the primary and the surviving workers from the kill to "ready") and
 * holdersCpuSKillToReady (the holders', i.e. the cogs' side, over the same time). The hub is not restarted: memory
 * figures go on with the same primary.
 *
 * probe (`--probe-conc 0`: none): from PROBE_LEAD_MS before the kill until all cogs are back
 * (and a killed worker serves again) + PROBE_TAIL_MS, C loops GET / with Host: <random cog>.<domain>
 * on the hub's HTTP port, a new connection each, each within --probe-timeout-ms, pausing --probe-gap-ms after an ok one (50 ms:
 * ~100-160 visits/s, a few % of a core in the hub; 0 is a tight loop, ~500/s at 100 cogs, whose
 * visitors then weigh on the storm's CPU figures, which include serving them either way).
 * ok: 200 with the cog's name as body; failures counted by kind (connection error code,
 * `timeout`, `status N`, `wrong body`) with up to 5 examples; latencyMs of the ok ones (a visit
 * held by the hub's grace hold until its cog is back is ok, and slow); troubleS: from the kill
 * to the end of the last failed visit ("visitors saw trouble for X s").
 *
 * cogWarnings: the holders' cog warnings after the storm, counted by message (why cogs were slow
 * to come back: refused dials, handshake errors; the first connect's are in it too).
 *
 * `--cpu-prof-dir`: the restarted hub (reconnect storm, drop) writes a V8 CPU profile there;
 * with `--kill worker:I` the first hub's processes do (the killed worker's is lost, its successor writes one).
 *
 * `--cli` runs another checkout's hub (A/B: the holders always run this tree's cog code).
 * Enrollment of N cogs (keys, certificates signed by a bench CA, rows in hub.db) is done once
 * and cached in `--cache` (default $TMPDIR/capsul-bench-tunnels-N); every run copies it.
 * The fd limit is the hard limit (bench/procs.ts): N cogs need ~2N fds in the holders and
 * ~N in the hub, so N=1000 fits the default of most shells only after `ulimit -n 4096`.
 */
import { spawn, type ChildProcess } from "node:child_process";
import fs from "node:fs";
import http from "node:http";
import net from "node:net";
import os from "node:os";
import path from "node:path";
import readline from "node:readline";
import { parseArgs } from "node:util";
import { NODE_HEAP_FLAGS } from "../cli/runtime.js";
import { createKeyAndCsr, loadOrCreateHubPki, signCogCsr } from "../certs/pki.js";
import { normSerial } from "../gateway/issuance.js";
import { SqliteHubStore } from "../gateway/store/sqlite.js";
import { silentLogger } from "../lib/log.js";
import { BENCH_NOFILE, childPids, isRunning, ownCpuSeconds, READY_TIMEOUT_MS, sleep, startProc, treeCpuSeconds as cpuSeconds, type Proc } from "./procs.js";
import type { BenchState } from "./tunnel-holder.js";
import { VisitorProbe, type ProbeResult } from "./visitor-probe.js";
import { killWorker, perTunnelMs, readyWorkers, roleCpu } from "./hub-workers.js";

const HERE = path.dirname(new URL(import.meta.url).pathname);
const DEFAULT_CLI = path.resolve(HERE, "..", "cli", "main.js");
const DOMAIN = "tunnels.bench";
/** Enrolled certificates are valid this long: a cache older than a few weeks is rebuilt anyway. */
const BENCH_CERT_VALIDITY_MS = 90 * 86_400_000;
/** All N connected within this, or the run fails (the issue's baseline: 9.6 s after a kill). */
const ALL_BACK_TIMEOUT_MS = 180_000;
/** After the drop: the hub's grace period (1s here) and its status writes must be over. */
const AFTER_DROP_SETTLE_MS = 4_000;
/** Quiet time before the RSS-after-connect sample (the status writes of the storm settle). */
const SETTLE_MS = 2_000;
const GC_HOOK_TIMEOUT_MS = 30_000;
/** The probe starts this long before the kill (its visits then all succeed: the baseline), and the holders' epoch as well. */
const PROBE_LEAD_MS = 500;
/** The probe goes on this long after all cogs are back: trouble that outlasts the storm shows. */
const PROBE_TAIL_MS = 1_000;

/** What the storm starts with: `kill -9` of the whole hub (and a restart), or of one worker (the primary restarts it). */
type Kill = { kind: "hub" } | { kind: "worker"; index: number };

interface Args {
  cogs: number; holders: number; cli: string; keep: number; idleS: number; sample: number; backTimeoutS: number; cpuProf?: string; cache: string; json?: string; workers: number; need: number;
  kill: Kill; probeConc: number; probeTimeoutMs: number; probeGapMs: number;
}

function parseKill(v: string, workers: number, need: number): Kill {
  if (v === "hub") return { kind: "hub" };
  const m = /^worker:(\d+)$/.exec(v);
  if (!m) throw new Error(`--kill: hub or worker:I, got ${JSON.stringify(v)}`);
  const index = Number(m[1]);
  if (workers < 2) throw new Error("--kill worker:I needs --workers 2 or more (with one worker, kill the hub)");
  if (index < 1 || index > workers) throw new Error(`--kill worker:${index}: the workers are 1..${workers}`);
  // With fewer, a cog keeps counting as connected through the other workers and never comes "back".
  if (need !== workers) throw new Error(`--kill worker:I counts a cog back once it has a tunnel to every worker again: leave --need out (it is ${need}, workers ${workers})`);
  return { kind: "worker", index };
}

function args(): Args {
  const { values: v } = parseArgs({
    options: {
      cogs: { type: "string", default: "1000" }, holders: { type: "string", default: "2" },
      cli: { type: "string", default: DEFAULT_CLI }, keep: { type: "string", default: "10" },
      "idle-s": { type: "string", default: "20" }, sample: { type: "string", default: "50" },
      "back-timeout-s": { type: "string", default: "120" }, cache: { type: "string" }, json: { type: "string" }, "cpu-prof-dir": { type: "string" },
      workers: { type: "string", default: "1" }, need: { type: "string" },
      kill: { type: "string", default: "hub" }, "probe-conc": { type: "string", default: "8" },
      "probe-timeout-ms": { type: "string", default: "5000" }, "probe-gap-ms": { type: "string", default: "50" },
    },
  });
  const cogs = Number(v.cogs);
  const workers = Number(v.workers);
  const need = Number(v.need ?? v.workers);
  const count = (k: "probe-conc" | "probe-timeout-ms" | "probe-gap-ms", min: number): number => {
    const n = Number(v[k]);
    if (!Number.isInteger(n) || n < min) throw new Error(`--${k}: a whole number from ${min}, got ${JSON.stringify(v[k])}`);
    return n;
  };
  return {
    cogs, holders: Number(v.holders), cli: path.resolve(v.cli!), keep: Number(v.keep), idleS: Number(v["idle-s"]),
    sample: Number(v.sample), backTimeoutS: Number(v["back-timeout-s"]), cpuProf: v["cpu-prof-dir"], cache: v.cache ?? path.join(os.tmpdir(), `capsul-bench-tunnels-${cogs}`), json: v.json,
    workers, need, kill: parseKill(v.kill!, workers, need),
    probeConc: count("probe-conc", 0), probeTimeoutMs: count("probe-timeout-ms", 1), probeGapMs: count("probe-gap-ms", 0),
  };
}

/** N enrolled cogs: the hub's data dir (pki/, hub.db) and the cogs' keys and certificates. */
async function enrolled(cache: string, n: number): Promise<BenchState> {
  const stateFile = path.join(cache, "state-v2.json"); // v2: serials recorded as issuance.ts does
  if (fs.existsSync(stateFile)) return JSON.parse(fs.readFileSync(stateFile, "utf8")) as BenchState;
  const data = path.join(cache, "hub");
  fs.rmSync(cache, { recursive: true, force: true });
  fs.mkdirSync(data, { recursive: true });
  const pki = await loadOrCreateHubPki(data, ["127.0.0.1"]);
  const store = await SqliteHubStore.open(data, { busyTimeoutMs: 5_000 }, silentLogger);
  const cogs: BenchState["cogs"] = [];
  for (let i = 0; i < n; i++) {
    const name = `cog${i}`;
    const { keyPem, csrPem } = await createKeyAndCsr(name);
    const { certPem, serial, notAfter } = await signCogCsr(pki, csrPem, name, { validityMs: BENCH_CERT_VALIDITY_MS });
    await store.ensureCog(name);
    await store.recordCert(name, normSerial(serial), notAfter.getTime()); // as gateway/issuance.ts records it
    cogs.push({ name, keyPem, certPem });
  }
  await store.close();
  const state: BenchState = { domain: DOMAIN, caPem: pki.caCertPem, caFingerprint: pki.caFingerprint, cogs };
  fs.writeFileSync(stateFile, JSON.stringify(state));
  return state;
}

async function freePort(): Promise<number> {
  const s = net.createServer();
  await new Promise<void>((resolve) => s.listen(0, "127.0.0.1", resolve));
  const port = (s.address() as net.AddressInfo).port;
  await new Promise<void>((resolve) => s.close(() => resolve()));
  return port;
}

function startHub(cli: string, dir: string, profDir?: string): Proc {
  const gcHook = path.join(HERE, "gc-hook.js");
  const prof = profDir ? ["--cpu-prof", "--cpu-prof-dir", profDir] : [];
  return startProc("capsul-hub", process.execPath,
    [...NODE_HEAP_FLAGS, ...prof, "--expose-gc", "--import", gcHook, cli, "hub", "-c", "capsul.yaml"], { cwd: dir });
}

/**
 * The restarted hub's TLS handshakes on the tunnel port, resumed from a session ticket or full
 * (capsul_hub_tunnel_handshakes_total on its admin listener); null from a hub without the metric.
 */
async function restartHandshakes(adminPort: number): Promise<{ resumed: number; full: number } | null> {
  const text = await new Promise<string>((resolve) => {
    http.get({ host: "127.0.0.1", port: adminPort, path: "/metrics" }, (res) => {
      let body = "";
      res.setEncoding("utf8");
      res.on("data", (d: string) => { body += d; });
      res.on("end", () => resolve(body));
    }).on("error", () => resolve(""));
  });
  const count = (v: string): number | null => {
    const m = new RegExp(`^capsul_hub_tunnel_handshakes_total\\{resumed="${v}"\\} (\\d+)`, "m").exec(text);
    return m ? Number(m[1]) : null;
  };
  const resumed = count("true");
  const full = count("false");
  return resumed === null || full === null ? null : { resumed, full };
}

interface Mem { rss: number; heapUsed: number; external: number; arrayBuffers: number }

/** Two full GCs in the hub, then its memory (bench/gc-hook.ts). */
async function gcMem(hub: Proc, nth: number): Promise<Mem> {
  process.kill(hub.pid, "SIGUSR2");
  const m = await hub.waitFor(new RegExp(`gc-hook #${nth} (\\{.*\\})`), GC_HOOK_TIMEOUT_MS);
  return JSON.parse(m[1]!) as Mem;
}

const mb = (m: Mem): Record<string, number> => Object.fromEntries(Object.entries(m).filter(([, v]) => typeof v === "number").map(([k, v]) => [k, Math.round((v as number) / 1e5) / 10]));

interface Holder { child: ChildProcess; connected: number; since: number; send(cmd: string): void; next(key: string): Promise<Record<string, number>> }

function startHolder(stateFile: string, from: number, to: number, hubPort: number, endpoints: number): Holder {
  const script = path.join(HERE, "tunnel-holder.js");
  const child = spawn("bash", ["-c", `ulimit -n ${BENCH_NOFILE} && exec "$@"`, "bash", process.execPath, script, stateFile, String(from), String(to), String(hubPort), String(endpoints)],
    { stdio: ["pipe", "pipe", "inherit"] });
  const waiting: Array<{ key: string; resolve: (m: Record<string, number>) => void }> = [];
  const h: Holder = {
    child, connected: 0, since: 0,
    send: (cmd) => { child.stdin!.write(cmd + "\n"); },
    next: (key) => new Promise((resolve) => waiting.push({ key, resolve })),
  };
  readline.createInterface({ input: child.stdout! }).on("line", (line) => {
    const m = JSON.parse(line) as Record<string, number>;
    if ("connected" in m) { h.connected = m.connected!; h.since = m.since!; }
    const i = waiting.findIndex((w) => w.key in m);
    if (i >= 0) waiting.splice(i, 1)[0]!.resolve(m);
  });
  return h;
}

async function until(what: string, cond: () => boolean, why: () => Promise<string>, timeoutMs = ALL_BACK_TIMEOUT_MS): Promise<void> {
  const end = Date.now() + timeoutMs;
  while (!cond()) {
    if (Date.now() > end) throw new Error(`timed out waiting for ${what}: ${await why()}`);
    await sleep(10);
  }
}

/** GET / with Host: <cog>.<domain> on the hub's HTTP port; resolves to the body. */
function visit(port: number, cog: string): Promise<string> {
  return new Promise((resolve, reject) => {
    const req = http.get({ host: "127.0.0.1", port, path: "/", headers: { host: `${cog}.${DOMAIN}` }, agent: false }, (res) => {
      let body = "";
      res.setEncoding("utf8");
      res.on("data", (d: string) => { body += d; });
      res.on("end", () => resolve(`${res.statusCode} ${body}`));
    });
    req.on("error", reject);
  });
}

async function routingCheck(port: number, names: string[], sample: number): Promise<{ ok: number; wrong: string[] }> {
  const step = Math.max(1, Math.floor(names.length / sample));
  const wrong: string[] = [];
  let ok = 0;
  for (let i = 0; i < names.length && ok + wrong.length < sample; i += step) {
    const got = await visit(port, names[i]!).catch((e: Error) => `error ${e.message}`);
    if (got === `200 ${names[i]}`) ok++;
    else wrong.push(`${names[i]} -> ${got.slice(0, 80)}`);
  }
  return { ok, wrong };
}

async function main(): Promise<void> {
  const a = args();
  const t0 = Date.now();
  const state = await enrolled(a.cache, a.cogs);
  if (state.cogs.length < a.cogs) throw new Error(`${a.cache} holds ${state.cogs.length} cogs, fewer than ${a.cogs}: remove it`);
  process.stderr.write(`enrolled ${a.cogs} cogs (${a.cache}) in ${((Date.now() - t0) / 1000).toFixed(1)} s\n`);

  const run = fs.mkdtempSync(path.join(os.tmpdir(), "capsul-tunnels-run-"));
  fs.cpSync(path.join(a.cache, "hub"), path.join(run, "data"), { recursive: true });
  const [httpPort, tunnelPort, adminPort] = [await freePort(), await freePort(), await freePort()];
  // Every cog dials from 127.0.0.1: the per-source cap on handshakes would turn this into a
  // test of that cap; real cogs come from as many addresses as there are homes.
  fs.writeFileSync(path.join(run, "capsul.yaml"), `hub:
  data_dir: ./data
  domain: ${DOMAIN}
  # What the welcome tells cogs to dial (every worker's endpoint, with workers): loopback, not the bench domain.
  public_tunnel_address: 127.0.0.1:${tunnelPort}
  listen:
    tls: off
    http: 127.0.0.1:${httpPort}
    tunnel: 127.0.0.1:${tunnelPort}
    admin: 127.0.0.1:${adminPort}
  limits:
    grace: 1s
  tunnel:
    max_unauthenticated: ${Math.max(512, a.cogs + 16)}
    max_unauthenticated_per_ip: ${Math.max(512, a.cogs + 16)}
${a.workers > 1 ? `  workers: ${a.workers}\n` : ""}`);
  const stateFile = path.join(run, "state.json");
  fs.writeFileSync(stateFile, JSON.stringify({ ...state, cogs: state.cogs.slice(0, a.cogs) }));
  const names = state.cogs.slice(0, a.cogs).map((c) => c.name);

  const dataDir = path.join(run, "data");
  const victim = a.kill.kind === "worker" ? a.kill.index : 0;
  // Killing one worker, the hub is not restarted: the profile is of the first one's processes (a restarted worker writes its own).
  let hub = startHub(a.cli, run, victim ? a.cpuProf : undefined);
  const holders: Holder[] = [];
  // On any way out (a timeout, an error, a signal): no hub, worker, holder or run directory is left behind.
  process.once("exit", () => {
    for (const h of holders) h.child.kill("SIGTERM"); // the holder removes its data dir on the way out
    for (const pid of [...childPids(hub.pid), hub.pid]) { try { process.kill(pid, "SIGKILL"); } catch { /* already gone */ } }
    fs.rmSync(run, { recursive: true, force: true });
  });
  for (const [sig, n] of [["SIGINT", 2], ["SIGTERM", 15], ["SIGHUP", 1]] as const) process.once(sig, () => process.exit(128 + n));
  await hub.waitFor(/hub ready/);
  let workerRows = a.workers > 1 ? await readyWorkers(dataDir, hub.pid, a.workers) : [];
  let gcN = 0;
  await sleep(SETTLE_MS);
  const memEmpty = await gcMem(hub, ++gcN);
  const rssEmpty = memEmpty.rss;

  const per = Math.ceil(a.cogs / a.holders);
  for (let i = 0; i < a.holders; i++) holders.push(startHolder(stateFile, i * per, Math.min(a.cogs, (i + 1) * per), tunnelPort, a.need));
  await Promise.all(holders.map((h) => h.next("ready")));
  const connected = (): number => holders.reduce((s, h) => s + h.connected, 0);
  const since = (): number => holders.reduce((s, h) => s + h.since, 0);
  const why = async (): Promise<string> => {
    const w = await Promise.all(holders.map((h) => { h.send("warnings"); return h.next("warnings"); }));
    return `connected ${connected()}, since epoch ${since()}; cog warnings ${JSON.stringify(w)}; hub output:\n${hub.output().slice(-3000)}`;
  };

  // 1. First connect: all N dial at once.
  const cpu0 = cpuSeconds(hub.pid);
  const role0 = roleCpu(hub.pid, workerRows);
  const c0 = Date.now();
  for (const h of holders) h.send("start");
  await until("all cogs connected", () => connected() >= a.cogs, why);
  const firstS = (Date.now() - c0) / 1000;
  const cpuFirst = cpuSeconds(hub.pid) - cpu0;
  const cpuFirstByRole = a.workers > 1 ? perTunnelMs(roleCpu(hub.pid, workerRows), role0, a.cogs) : null;
  process.stderr.write(`first connect: ${a.cogs} in ${firstS.toFixed(1)} s, hub CPU ${((cpuFirst * 1000) / a.cogs).toFixed(2)} ms per tunnel${cpuFirstByRole ? ` ${JSON.stringify(cpuFirstByRole)}` : ""}\n`);
  await sleep(SETTLE_MS);
  const memUp = await gcMem(hub, ++gcN);
  const rssUp = memUp.rss;
  const routing1 = await routingCheck(httpPort, names, a.sample);

  // 2. Idle: keepalives only.
  const i0 = cpuSeconds(hub.pid);
  await sleep(a.idleS * 1000);
  const idlePct = ((cpuSeconds(hub.pid) - i0) / a.idleS) * 100;

  // 3. The storm: kill -9 of the hub (restarted on the same ports and data) or of one worker
  // (the primary starts it again), with visitors probing from just before the kill.
  const probe = a.probeConc > 0
    ? new VisitorProbe({ port: httpPort, domain: DOMAIN, names, conc: a.probeConc, timeoutMs: a.probeTimeoutMs, gapMs: a.probeGapMs })
    : null;
  for (const h of holders) h.send("epoch");
  await sleep(PROBE_LEAD_MS); // the epoch reaches the holders before the first reconnect; the probe's baseline
  let killed: Record<string, unknown> | null = null;
  /** Once all are back, with --kill worker:I: waits for the worker to serve, stops watching it. */
  let stormEnd: (() => Promise<void>) | null = null;
  let k0: number;
  let readyAt: number;
  const kRole = roleCpu(hub.pid, workerRows.filter((w) => w.worker !== victim));
  const holdersCpu = (): number => holders.reduce((sum, h) => sum + ownCpuSeconds(h.child.pid!), 0);
  const kHolders = holdersCpu();
  if (!victim) {
    // The whole hub: the primary and its workers at once (they would follow it out anyway, on their IPC channel's close).
    const pids = [...childPids(hub.pid), hub.pid];
    k0 = Date.now();
    for (const pid of pids) { try { process.kill(pid, "SIGKILL"); } catch { /* gone */ } }
    await hub.stop();
    // Gone, not reaped: orphaned workers are reaped by whatever adopted them, here 1.5 s later.
    await until("the killed hub's workers to be gone", () => !pids.some(isRunning), async () => pids.join(" "), READY_TIMEOUT_MS);
    hub = startHub(a.cli, run, a.cpuProf);
    gcN = 0;
    await hub.waitFor(/hub ready/);
    readyAt = Date.now();
    if (a.workers > 1) workerRows = await readyWorkers(dataDir, hub.pid, a.workers);
  } else {
    const old = workerRows.find((w) => w.worker === victim)!;
    const k = await killWorker(hub, dataDir, victim, old.pid);
    ({ k0, readyAt } = k);
    workerRows = workerRows.map((w) => (w.worker === victim ? { ...w, pid: k.newPid } : w));
    killed = k.info;
    stormEnd = k.finish;
  }
  const cpuR0 = cpuSeconds(hub.pid);
  const rRole = roleCpu(hub.pid, workerRows);
  const rHolders = holdersCpu();
  // Not all back in time is a result, not a failure: say how many were, and why not the rest.
  let notBack = "";
  await until("all cogs back", () => since() >= a.cogs && connected() >= a.cogs, why, a.backTimeoutS * 1000)
    .catch((err: Error) => { notBack = err.message.slice(0, 2000); });
  const backAt = Date.now();
  const backCount = since();
  const cpuBack = cpuSeconds(hub.pid) - cpuR0;
  const bRole = roleCpu(hub.pid, workerRows);
  const cpuStormByRole = a.workers > 1 ? perTunnelMs(bRole, rRole, backCount) : null;
  if (killed) {
    // From the kill: the primary kept the dead worker's cogs' redials until it was ready, then handed their tunnels over.
    killed.primaryCpuMsPerTunnelFromKill = perTunnelMs(bRole, kRole, backCount).primary;
    // While the new worker started: what the primary and the surviving workers did meanwhile (seconds).
    killed.othersCpuSKillToReady = Object.fromEntries(Object.keys(kRole).map((k) => [k, Math.round((rRole[k]! - kRole[k]!) * 1000) / 1000]));
    // The cogs' side meanwhile (all holders together): their redials, waiting at the primary until then.
    killed.holdersCpuSKillToReady = Math.round((rHolders - kHolders) * 1000) / 1000;
    // Its whole life so far, its start included (bootCpuS): all it cost to bring its cogs back.
    killed.totalCpuMsPerTunnel = Math.round(((bRole[`w${victim}`]! * 1000) / Math.max(1, backCount)) * 1000) / 1000;
  }
  const handshakes = a.workers > 1 ? null : await restartHandshakes(adminPort);
  if (stormEnd) await stormEnd();
  // Why cogs were slow to come back, counted by message (since the holders started: the first connect's too).
  const cogWarnings: Record<string, number> = {};
  for (const w of await Promise.all(holders.map((h) => { h.send("warnings"); return h.next("warnings"); }))) {
    for (const [msg, n] of Object.entries((w as unknown as { warnings: Record<string, number> }).warnings)) cogWarnings[msg] = (cogWarnings[msg] ?? 0) + n;
  }
  let probed: ProbeResult | null = null;
  if (probe) {
    await sleep(PROBE_TAIL_MS);
    probed = await probe.stop(k0);
  }
  process.stderr.write(`storm (kill ${victim ? `worker ${victim}` : "hub"}): ${backCount} back ${((backAt - k0) / 1000).toFixed(1)} s after the kill, ${((backAt - readyAt) / 1000).toFixed(1)} s after ready${probed ? `; visitors ${probed.ok}/${probed.total} ok, trouble for ${probed.troubleS ?? 0} s` : ""}\n`);
  await sleep(SETTLE_MS);
  const routing2 = await routingCheck(httpPort, names, a.sample);
  const memBack = await gcMem(hub, ++gcN);
  const rssBack = memBack.rss;

  // 4. All but KEEP drop.
  let left = a.keep;
  await Promise.all(holders.map((h) => {
    const k = Math.min(left, per);
    left -= k;
    h.send(`keep ${k}`);
    return h.next("kept");
  }));
  await sleep(AFTER_DROP_SETTLE_MS);
  const memDropped = await gcMem(hub, ++gcN);
  const rssDropped = memDropped.rss;

  for (const h of holders) h.send("exit");
  await Promise.all(holders.map((h) => new Promise((resolve) => h.child.once("exit", resolve))));
  await hub.stop();
  fs.rmSync(run, { recursive: true, force: true });

  const MB = 1e6;
  const result = {
    cogs: a.cogs, holders: a.holders, workers: a.workers, need: a.need, cli: a.cli, load: os.loadavg().map((l) => l.toFixed(2)).join(" "),
    firstConnectS: firstS, hubCpuMsPerSetupFirst: (cpuFirst * 1000) / a.cogs,
    killToAllBackS: (backAt - k0) / 1000, readyToAllBackS: (backAt - readyAt) / 1000,
    hubCpuMsPerSetupRestart: (cpuBack * 1000) / Math.max(1, backCount), backAfterRestart: backCount, notBack,
    kill: victim ? `worker:${victim}` : "hub", killedWorker: killed,
    cpuMsPerTunnelFirstByRole: cpuFirstByRole, cpuMsPerTunnelStormByRole: cpuStormByRole,
    probe: probed, cogWarnings,
    restartHandshakes: handshakes,
    rssEmptyMB: rssEmpty / MB, rssUpMB: rssUp / MB, rssPerTunnelKB: (rssUp - rssEmpty) / a.cogs / 1000,
    rssAfterRestartMB: rssBack / MB, rssAfterDropMB: rssDropped / MB, kept: a.keep,
    idleCpuPct: idlePct, idleS: a.idleS,
    memoryMB: { empty: mb(memEmpty), up: mb(memUp), afterRestart: mb(memBack), afterDrop: mb(memDropped) },
    routing: { beforeKill: routing1, afterRestart: routing2 },
  };
  process.stdout.write(JSON.stringify(result, null, 2) + "\n");
  if (a.json) fs.writeFileSync(a.json, JSON.stringify(result, null, 2) + "\n");
  if (routing1.wrong.length + routing2.wrong.length > 0) process.exitCode = 1;
}

main().catch((err: Error) => {
  process.stderr.write(`bench/tunnels: ${err.stack ?? err.message}\n`);
  process.exit(1);
});
