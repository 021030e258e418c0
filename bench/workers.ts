/**
 * Hub workers (issue 12): capsul with hub.workers 1 and 2, and gopeer (which uses every
 * core), behind one nginx in one run, the order rotating per round:
 *
 *   node dist/bench/workers.js [--rounds N] [--seconds N] [--big-mib N] [--no-gopeer]
 *
 * Per path: keep-alive req/s, new TLS conn/s, bulk 16× MB/s, and the CPU each process
 * spent: per GiB over the bulk runs, per 1,000 requests over the rate runs. With workers
 * the hub's cost is the workers' sum; the primary is reported apart (it should be ~0: it
 * accepts no visitor). Then, from the measured per-core costs, what a 16-core hub would
 * carry next to gopeer on the same 16 cores (bench/RESULTS.md says how it is computed).
 */
import { mkdtemp, rm } from "node:fs/promises";
import os from "node:os";
import path from "node:path";
import { startBackend } from "./backend.js";
import { bulk, wrk, writeWrkScripts, WRK_CONNECTIONS } from "./load.js";
import { buildGopeer, startCapsul, startGopeer, type RunningPath } from "./paths.js";
import { walkArgs } from "./options.js";
import { cpuSeconds } from "./procs.js";
import { median } from "./report.js";

const MIB = 1024 * 1024;
const GIB = 1024 ** 3;
/** The machine the prediction is made for. */
const PREDICT_CORES = 16;
/** bulk: the download timeout, generous for a loaded 2-core machine. */
const BULK_TIMEOUT_MS = 600_000;

const USAGE = `usage: node dist/bench/workers.js [options]
  --rounds N     interleaved rounds (default 3)
  --seconds N    wrk duration (default 5)
  --big-mib N    download size (default 64)
  --no-gopeer    leave gopeer out`;

interface Options { rounds: number; seconds: number; bigBytes: number; gopeer: boolean }

function parse(argv: string[]): Options {
  const o: Options = { rounds: 3, seconds: 5, bigBytes: 64 * MIB, gopeer: true };
  walkArgs(argv, USAGE, (a, { val: _val, int }) => {
    switch (a) {
      case "--rounds": o.rounds = int(); break;
      case "--seconds": o.seconds = int(); break;
      case "--big-mib": o.bigBytes = int() * MIB; break;
      case "--no-gopeer": o.gopeer = false; break;
      case "-h": case "--help": process.stdout.write(USAGE + "\n"); process.exit(0); break;
      default: throw new Error(`unknown option ${a}\n${USAGE}`);
    }
  });
  return o;
}

/** The processes whose CPU is counted, by role: "hub" (or "w1", "w2" and "primary"), "cog". */
function roles(p: RunningPath): { role: string; pid: number }[] {
  const [hub, cog] = p.procs;
  if (p.workers?.length) return [{ role: "primary", pid: hub!.pid }, ...p.workers.map((w) => ({ role: w.name, pid: w.pid })), { role: "cog", pid: cog!.pid }];
  return [{ role: "hub", pid: hub!.pid }, { role: "cog", pid: cog!.pid }];
}

type Sample = Map<string, number[]>;

async function main(): Promise<void> {
  const o = parse(process.argv.slice(2));
  const tmp = await mkdtemp(path.join(os.tmpdir(), "capsul-workers-bench-"));
  const names = ["workers1", "workers2", ...(o.gopeer ? ["gopeer"] : [])];
  const be = await startBackend(path.join(tmp, "nginx"), names, o.bigBytes);
  const paths: RunningPath[] = [];
  const samples = new Map<string, Sample>(names.map((n) => [n, new Map()]));
  const put = (p: string, key: string, v: number): void => {
    const s = samples.get(p)!;
    if (!s.has(key)) s.set(key, []);
    s.get(key)!.push(v);
    process.stderr.write(`${p.padEnd(9)} ${key.padEnd(22)} ${v.toFixed(key.includes("cpu") ? 3 : 0)}\n`);
  };
  const problems: string[] = [];
  try {
    const scripts = await writeWrkScripts(tmp);
    paths.push(await startCapsul(path.join(tmp, "w1"), be.httpsPorts.workers1!, { name: "workers1" }));
    paths.push(await startCapsul(path.join(tmp, "w2"), be.httpsPorts.workers2!, { name: "workers2", workers: 2 }));
    if (o.gopeer) paths.push(await startGopeer(path.join(tmp, "gopeer"), await buildGopeer(), be.httpsPorts.gopeer!));
    const measure = async <T>(p: RunningPath, fn: () => Promise<T>): Promise<{ r: T; cpu: Map<string, number> }> => {
      const rs = roles(p);
      const c0 = rs.map((x) => cpuSeconds(x.pid));
      const r = await fn();
      return { r, cpu: new Map(rs.map((x, i) => [x.role, cpuSeconds(x.pid) - c0[i]!])) };
    };
    for (let round = 0; round < o.rounds; round++) {
      const order = paths.map((_, i) => paths[(i + round) % paths.length]!);
      for (const [metric, close] of [["keepalive", false], ["newconn", true]] as const) {
        for (const p of order) {
          const { r: w, cpu } = await measure(p, () => wrk(p.port, { script: scripts.resolve, seconds: o.seconds, connections: WRK_CONNECTIONS, close }));
          if (w.errors + w.non2xx) problems.push(`${p.name} ${metric}: ${w.errors} socket errors, ${w.non2xx} non-2xx`);
          put(p.name, metric, w.reqPerSec);
          const requests = w.reqPerSec * o.seconds;
          for (const [role, s] of cpu) put(p.name, `${metric} cpu ms/1k ${role}`, (s * 1000) / (requests / 1000));
        }
      }
      for (const p of order) {
        const { r: b, cpu } = await measure(p, () => bulk(p.port, 16, o.bigBytes, BULK_TIMEOUT_MS));
        if (!b.complete) problems.push(`${p.name} bulk x16: ${b.failures.join("; ")}`);
        put(p.name, "bulk16", b.mbPerSec);
        for (const [role, s] of cpu) put(p.name, `bulk16 cpu s/GiB ${role}`, s / (b.bytes / GIB));
      }
    }
  } finally {
    for (const p of paths) await p.stop().catch(() => {});
    await be.stop();
    await rm(tmp, { recursive: true, force: true });
  }
  const med = (p: string, k: string): number => median(samples.get(p)!.get(k) ?? [NaN]);
  const keys = [...new Set(names.flatMap((n) => [...samples.get(n)!.keys()]))];
  let out = `${o.rounds} rounds, medians; ${o.seconds} s wrk runs (${WRK_CONNECTIONS} connections); bulk 16 × ${o.bigBytes / MIB} MiB\n\n`;
  out += `| metric | ${names.join(" | ")} |\n| --- |${names.map(() => " ---: |").join("")}\n`;
  for (const k of keys) {
    out += `| ${k} | ${names.map((n) => (samples.get(n)!.has(k) ? med(n, k).toFixed(k.includes("cpu") ? 3 : 0) : "")).join(" | ")} |\n`;
  }
  // The hub's per-core cost: a worker's (their sum over the workers: each visitor costs one of
  // them, the primary none); gopeer's hub is one process on every core, so its cost per core is
  // its CPU. A 16-core hub then carries 16 / cost per unit, for both (linear: no shared lock in
  // either hub's data path; the kernel's loopback and the cogs are not the hub's cores).
  const hubCost = (n: string, prefix: string): number => {
    if (n === "gopeer" || n === "workers1") return med(n, `${prefix} hub`);
    return ["w1", "w2"].reduce((a, w) => a + med(n, `${prefix} ${w}`), 0);
  };
  out += `\nPrediction for a ${PREDICT_CORES}-core hub (hub CPU only; cogs, nginx and load elsewhere):\n\n`;
  out += `| | ${names.join(" | ")} |\n| --- |${names.map(() => " ---: |").join("")}\n`;
  const row = (label: string, f: (n: string) => number, digits: number): string => `| ${label} | ${names.map((n) => f(n).toFixed(digits)).join(" | ")} |\n`;
  out += row("hub CPU s/GiB (bulk 16×)", (n) => hubCost(n, "bulk16 cpu s/GiB"), 3);
  out += row(`GiB/s on ${PREDICT_CORES} cores`, (n) => PREDICT_CORES / hubCost(n, "bulk16 cpu s/GiB"), 1);
  out += row("hub CPU ms per 1k new TLS conns", (n) => hubCost(n, "newconn cpu ms/1k"), 1);
  out += row(`new TLS conn/s on ${PREDICT_CORES} cores`, (n) => (PREDICT_CORES * 1000 * 1000) / hubCost(n, "newconn cpu ms/1k"), 0);
  out += row("hub CPU ms per 1k keep-alive requests", (n) => hubCost(n, "keepalive cpu ms/1k"), 1);
  out += row(`keep-alive req/s on ${PREDICT_CORES} cores`, (n) => (PREDICT_CORES * 1000 * 1000) / hubCost(n, "keepalive cpu ms/1k"), 0);
  if (samples.get("workers2")!.has("bulk16 cpu s/GiB primary")) {
    out += `\nworkers2 primary: ${med("workers2", "bulk16 cpu s/GiB primary").toFixed(4)} CPU s/GiB, ${med("workers2", "newconn cpu ms/1k primary").toFixed(2)} ms per 1k new conns, ${med("workers2", "keepalive cpu ms/1k primary").toFixed(2)} ms per 1k keep-alive requests\n`;
  }
  if (problems.length) out += `\nproblems:\n${problems.map((p) => `- ${p}`).join("\n")}\n`;
  process.stdout.write(out);
  if (problems.length) process.exitCode = 1;
}

main().catch((err: Error) => {
  process.stderr.write(`workers bench: ${err.stack ?? err.message}\n`);
  process.exit(1);
});
