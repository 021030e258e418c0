/**
 * `npm run bench`: starts nginx, HAProxy, gopeer and capsul (hub + cog) on loopback,
 * measures them interleaved in the same run, writes RESULTS.md, results.svg and
 * results.json, and stops everything it started. See bench/options.ts for flags.
 */
import { mkdtemp, mkdir, rm, writeFile } from "node:fs/promises";
import os from "node:os";
import path from "node:path";
import { fileURLToPath } from "node:url";
import { startBackend, makeCert, type Backend } from "./backend.js";
import { bulk, wrk, writeWrkScripts, WRK_CONNECTIONS, LATENCY_CONNECTIONS } from "./load.js";
import { ensureLibp2p, microOnce, MICRO_IMPLS, MICRO_STREAMS } from "./micro.js";
import { parseOptions, type Options } from "./options.js";
import { cpuSeconds, rssBytes, rssSampler, run, sleep, startProc, type Proc } from "./procs.js";
import { direct, haproxyMaxConn, LOOPBACK_IDLE_LIMITS, startCapsul, startGopeer, startHaproxy, buildGopeer, REPO_ROOT, type PathName, type RunningPath } from "./paths.js";
import { profileCapsul } from "./profile.js";
import { perfAvailable, perfPath, renderBreakdown, PERF_FREQ_HZ } from "./perfprof.js";
import { NODE_HEAP_FLAGS } from "../cli/runtime.js";
import { machineInfo, renderMarkdown, renderSvg, type Results, type PathRound } from "./report.js";

const HERE = path.dirname(fileURLToPath(import.meta.url));
const GIB = 1024 ** 3;
/** A bulk download slower than 2 MB/s is a failure, not a measurement. */
const BULK_MIN_MB_PER_SEC = 2;
/** Single downloads through a fresh proxy before perf records it (JIT warm-up). */
const PERF_WARMUP_DOWNLOADS = 2;

async function prereqs(): Promise<void> {
  await run("bash", [path.join(REPO_ROOT, "bench", "prereqs.sh")], { timeoutMs: 900_000 });
}

function rotate<T>(xs: readonly T[], k: number): T[] {
  return xs.map((_, i) => xs[(i + k) % xs.length]);
}

async function startPath(name: PathName, tmp: string, be: Backend, gopeerBin: string | null, nodeArgs?: string[]): Promise<RunningPath> {
  const port = be.httpsPorts[name];
  switch (name) {
    case "direct": return direct(port);
    case "haproxy": {
      const { freePort } = await import("./backend.js");
      return startHaproxy(path.join(tmp, "haproxy"), await freePort(), port);
    }
    case "gopeer": return startGopeer(path.join(tmp, "gopeer"), gopeerBin!, port);
    case "capsul": return startCapsul(path.join(tmp, `capsul-${Date.now()}`), port, { nodeArgs, hubLimits: LOOPBACK_IDLE_LIMITS });
  }
}

function cpuOf(procs: Proc[]): number[] {
  return procs.map((p) => cpuSeconds(p.pid));
}

async function measurePaths(o: Options, paths: RunningPath[], be: Backend, scripts: { resolve: string; latency: string }, res: Results): Promise<void> {
  const bulkTimeout = 60_000 + (16 * o.bigBytes) / (BULK_MIN_MB_PER_SEC * 1e6) * 1000 / 16;
  for (let r = 0; r < o.rounds; r++) {
    const order = rotate(paths, r);
    const rounds = new Map<string, PathRound>(order.map((p) => [p.name, { round: r + 1 } as PathRound]));
    const log = (p: string, what: string, v: string): void => void process.stderr.write(`round ${r + 1} ${p.padEnd(8)} ${what.padEnd(10)} ${v}\n`);
    for (const p of order) {
      const w = await wrk(p.port, { script: scripts.resolve, seconds: o.seconds, connections: WRK_CONNECTIONS });
      Object.assign(rounds.get(p.name)!, { keepAlive: w.reqPerSec, keepAliveErrors: w.errors + w.non2xx });
      log(p.name, "keepalive", `${w.reqPerSec.toFixed(0)} req/s`);
    }
    for (const p of order) {
      const w = await wrk(p.port, { script: scripts.resolve, seconds: o.seconds, connections: WRK_CONNECTIONS, close: true });
      Object.assign(rounds.get(p.name)!, { newConn: w.reqPerSec, newConnErrors: w.errors + w.non2xx });
      log(p.name, "newconn", `${w.reqPerSec.toFixed(0)} conn/s`);
    }
    for (const p of order) {
      const w = await wrk(p.port, { script: scripts.latency, seconds: o.seconds, connections: LATENCY_CONNECTIONS });
      Object.assign(rounds.get(p.name)!, { latRate: w.reqPerSec, p50Ms: w.p50Ms, p99Ms: w.p99Ms });
      log(p.name, "latency", `${w.reqPerSec.toFixed(0)} req/s p50 ${w.p50Ms} ms p99 ${w.p99Ms} ms`);
    }
    for (const n of [1, 16]) {
      for (const p of order) {
        const cpu0 = cpuOf(p.procs);
        const sampler = rssSampler(p.procs.map((x) => x.pid));
        const b = await bulk(p.port, n, o.bigBytes, bulkTimeout);
        const rss = sampler.stop();
        const cpu1 = cpuOf(p.procs);
        const pr = rounds.get(p.name)!;
        const key = n === 1 ? "bulk1" : "bulk16";
        pr[key] = b.mbPerSec;
        pr.bulkComplete = (pr.bulkComplete ?? true) && b.complete;
        pr.bulkBytes = (pr.bulkBytes ?? 0) + b.bytes;
        pr.cpuSec = (pr.cpuSec ?? p.procs.map(() => 0)).map((c, i) => c + cpu1[i] - cpu0[i]);
        pr.peakRss = (pr.peakRss ?? p.procs.map(() => 0)).map((m, i) => Math.max(m, rss[i]));
        if (!b.complete) {
          const warns = p.procs.flatMap((x) => x.output().split("\n").filter((l) => /WARN|ERROR|panic/i.test(l)).slice(-5).map((l) => `${x.name}: ${l}`));
          res.problems.push(`${p.name}: bulk x${n} round ${r + 1} received ${b.sizes.join(",")} bytes, expected ${o.bigBytes} each; ${b.failures.join("; ")}${warns.length ? "; proxy log: " + warns.join(" / ") : ""}`);
        }
        log(p.name, `bulk x${n}`, `${b.mbPerSec.toFixed(0)} MB/s ${b.complete ? "sizes ok" : "INCOMPLETE"}`);
      }
    }
    for (const p of order) {
      const pr = rounds.get(p.name)!;
      pr.cpuSecPerGiB = (pr.cpuSec ?? []).map((c) => c / (pr.bulkBytes! / GIB));
      (res.paths[p.name] ??= []).push(pr);
    }
  }
}

/** RSS per held idle connection, on freshly started proxies (gopeer's kit did the same). */
async function measureIdle(o: Options, tmp: string, be: Backend, gopeerBin: string | null, res: Results): Promise<void> {
  for (const name of o.only.filter((n) => n !== "direct")) {
    for (const wanted of o.idleCounts) {
      // HAProxy needs 2 fds per connection: above the fd limit it cannot hold them all.
      const count = name === "haproxy" ? Math.min(wanted, haproxyMaxConn()) : wanted;
      const p = await startPath(name, tmp, be, gopeerBin);
      try {
        await sleep(1000);
        const base = p.procs.map((x) => rssBytes(x.pid));
        const t0 = Date.now();
        const holder = startProc("idle-holder", process.execPath, [path.join(HERE, "idle-holder.js"), String(p.port), String(count)]);
        try {
          await holder.waitFor(/ready (\d+)/, 600_000);
          await sleep(1000);
          const held = p.procs.map((x) => rssBytes(x.pid));
          const entry = { path: name, count, seconds: (Date.now() - t0) / 1000, baseRss: base, heldRss: held, perConnBytes: held.map((h, i) => (h - base[i]) / count) };
          res.idle.push(entry);
          process.stderr.write(`idle ${name} ${count}: ${entry.perConnBytes.map((b) => (b / 1000).toFixed(1) + " KB").join(" / ")} per conn (${entry.seconds.toFixed(0)} s to open)\n`);
        } catch (err) {
          res.problems.push(`idle ${name} ${count}: ${(err as Error).message.split("\n")[0]}`);
        } finally {
          await holder.stop();
        }
      } finally {
        await p.stop();
      }
    }
  }
}

async function measureMicro(o: Options, tmp: string, res: Results): Promise<void> {
  const { cert, key } = await makeCert(tmp, "micro", "micro.test");
  const libp2pError = await ensureLibp2p();
  if (libp2pError) res.problems.push(`micro: @libp2p/yamux not measured: ${libp2pError}`);
  for (let r = 0; r < o.rounds; r++) {
    for (const streams of MICRO_STREAMS) {
      for (const impl of rotate(MICRO_IMPLS, r).filter((i) => i !== "libp2p" || !libp2pError)) {
        const m = await microOnce(impl, streams, o.microBytes, cert, key);
        res.micro.push({ ...m, round: r + 1 });
        process.stderr.write(`micro round ${r + 1} ${impl} x${streams}: ${m.error ? "ERROR " + m.error : `${m.mbPerSec.toFixed(0)} MB/s, ${m.cpuSecPerGiB.toFixed(2)} CPU s/GiB`}\n`);
      }
    }
  }
}

/** Single download with 2 x rttDelayMs of RTT between cog and hub (or client and nginx). */
async function measureRtt(o: Options, tmp: string, be: Backend, gopeerBin: string | null, res: Results): Promise<void> {
  const relays: Proc[] = [];
  const relay = async (targetPort: number): Promise<number> => {
    // The relay is the link for every route: it runs with capsul's heap flags too, so that
    // its own GC (it moves the same bytes) slows neither route.
    const p = startProc("delay-relay", process.execPath, [...NODE_HEAP_FLAGS, path.join(HERE, "delay-relay.js"), `127.0.0.1:${targetPort}`, String(o.rttDelayMs)]);
    relays.push(p);
    return Number((await p.waitFor(/relay (\d+)/))[1]);
  };
  const started: RunningPath[] = [];
  try {
    const routes: { name: string; port: number }[] = [{ name: "plain TCP", port: await relay(be.httpsPorts["rtt-plain"]) }];
    if (o.only.includes("capsul")) {
      const c = await startCapsul(path.join(tmp, "capsul-rtt"), be.httpsPorts["rtt-capsul"], { name: "capsul", hubAddrForCog: async (t) => `127.0.0.1:${await relay(t)}`, hubLimits: LOOPBACK_IDLE_LIMITS });
      started.push(c);
      routes.push({ name: "capsul", port: c.port });
    }
    if (o.only.includes("gopeer") && gopeerBin) {
      const g = await startGopeer(path.join(tmp, "gopeer-rtt"), gopeerBin, be.httpsPorts["rtt-gopeer"], { name: "gopeer", hubAddrForCog: async (t) => `127.0.0.1:${await relay(t)}` });
      started.push(g);
      routes.push({ name: "gopeer", port: g.port });
    }
    for (let r = 0; r < o.rounds; r++) {
      for (const rt of rotate(routes, r)) {
        const b = await bulk(rt.port, 1, o.bigBytes, 60_000 + o.bigBytes / (BULK_MIN_MB_PER_SEC * 1e6) * 1000);
        res.rtt.push({ route: rt.name, round: r + 1, mbPerSec: b.mbPerSec, complete: b.complete });
        if (!b.complete) res.problems.push(`rtt ${rt.name} round ${r + 1}: received ${b.sizes.join(",")} bytes`);
        process.stderr.write(`rtt round ${r + 1} ${rt.name}: ${b.mbPerSec.toFixed(1)} MB/s\n`);
      }
    }
  } finally {
    for (const s of started) await s.stop();
    for (const p of relays) await p.stop();
  }
}

/** PROFILE.md's second half: capsul's and gopeer's CPU by kind of work (bench/perfprof.ts). */
async function perfProfiles(o: Options, tmp: string, be: Backend, gopeerBin: string | null, res: Results): Promise<string> {
  const head = `## Where the CPU goes, by kind of work (Linux perf, all threads, kernel included)\n\n`;
  if (!perfAvailable()) return `${head}perf is not installed here (\`apt-get install linux-perf\`), so this part was not measured.\n`;
  const out = [head, `Each proxy freshly started, warmed up with ${PERF_WARMUP_DOWNLOADS} single downloads, then \`perf record -F ${PERF_FREQ_HZ}\` on its processes during 16 concurrent downloads of /big.\n`];
  const names: PathName[] = ["capsul", ...(gopeerBin && o.only.includes("gopeer") ? ["gopeer" as const] : [])];
  const all = [];
  for (const name of names) {
    const p = await startPath(name, tmp, be, gopeerBin);
    try {
      for (let i = 0; i < PERF_WARMUP_DOWNLOADS; i++) await bulk(p.port, 1, o.bigBytes, 600_000);
      all.push(...await perfPath(p, path.join(tmp, `${name}.perf.data`), [`${name} hub`, `${name} cog`], async () => {
        const b = await bulk(p.port, 16, o.bigBytes, 600_000);
        if (!b.complete) res.problems.push(`perf ${name}: bulk x16 incomplete: ${b.failures.join("; ")}`);
        return b.bytes;
      }));
    } catch (err) {
      res.problems.push(`perf ${name}: ${(err as Error).message}`);
    } finally {
      await p.stop();
    }
  }
  if (all.length) out.push(renderBreakdown("bulk: 16 concurrent downloads of /big", all));
  return out.join("\n");
}

async function main(): Promise<void> {
  const o = parseOptions(process.argv.slice(2));
  await prereqs();
  const tmp = await mkdtemp(path.join(os.tmpdir(), "capsul-bench-"));
  const res: Results = {
    machine: await machineInfo(), options: o, paths: {}, idle: [], micro: [], rtt: [], problems: [], checks: {},
  };
  // The big file must exist for RTT too; rtt-* ports keep those requests apart in the log.
  const portNames = [...o.only, "rtt-plain", "rtt-capsul", "rtt-gopeer"];
  const be = await startBackend(path.join(tmp, "nginx"), portNames, o.bigBytes);
  const paths: RunningPath[] = [];
  try {
    const needGo = o.only.includes("gopeer");
    const gopeerBin = needGo ? await buildGopeer() : null;
    const scripts = await writeWrkScripts(tmp);
    if (o.sections.includes("paths")) {
      for (const n of o.only) paths.push(await startPath(n, tmp, be, gopeerBin));
      await measurePaths(o, paths, be, scripts, res);
      // Evidence that each path really went through its proxy.
      const counts = await be.accessCounts();
      for (const p of paths) {
        const c = counts.get(be.httpsPorts[p.name]) ?? { requests: 0, bytes: 0, big: 0 };
        res.checks[p.name] = {
          nginxPort: be.httpsPorts[p.name], nginxRequests: c.requests, nginxBigRequests: c.big, nginxBytes: c.bytes,
          proxyCpuSec: p.procs.map((x) => cpuSeconds(x.pid)),
          proxyPids: p.procs.map((x) => x.pid),
          ...(p.proxyCounters ? await p.proxyCounters() : {}),
        };
      }
      for (const p of paths.splice(0)) await p.stop();
    }
    if (o.sections.includes("idle")) await measureIdle(o, tmp, be, gopeerBin, res);
    if (o.sections.includes("micro")) await measureMicro(o, tmp, res);
    if (o.sections.includes("rtt")) await measureRtt(o, tmp, be, gopeerBin, res);
    if (o.profile && o.only.includes("capsul")) {
      res.profile = await profileCapsul(o, tmp, be, scripts.resolve, (nodeArgs) => startPath("capsul", tmp, be, null, nodeArgs));
      res.profile += "\n" + await perfProfiles(o, tmp, be, gopeerBin, res);
    }
  } finally {
    for (const p of paths) await p.stop().catch(() => {});
    await be.stop();
  }
  if (o.profileOnly) {
    await mkdir(o.outDir, { recursive: true });
    if (res.profile) await writeFile(path.join(o.outDir, "PROFILE.md"), res.profile);
    process.stdout.write(res.profile ?? "");
    await rm(tmp, { recursive: true, force: true });
    if (res.problems.length) {
      process.stderr.write(`bench: problems:\n${res.problems.map((p) => `- ${p}`).join("\n")}\n`);
      process.exitCode = 1;
    }
    return;
  }
  res.finishedAt = new Date().toISOString();
  res.machine.loadAtEnd = os.loadavg().map((l) => l.toFixed(2)).join(" ");
  await mkdir(o.outDir, { recursive: true });
  const md = renderMarkdown(res);
  await writeFile(path.join(o.outDir, "RESULTS.md"), md);
  await writeFile(path.join(o.outDir, "results.svg"), renderSvg(res));
  await writeFile(path.join(o.outDir, "results.json"), JSON.stringify(res, null, 2) + "\n");
  if (res.profile) await writeFile(path.join(o.outDir, "PROFILE.md"), res.profile);
  process.stdout.write(md);
  await rm(tmp, { recursive: true, force: true });
  if (res.problems.length) process.exitCode = 1;
}

main().catch((err: Error) => {
  process.stderr.write(`bench: ${err.stack ?? err.message}\n`);
  process.exit(1);
});
