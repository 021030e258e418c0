/**
 * A/B of two capsul builds (or node flags) in one run, with gopeer as the yardstick:
 *
 *   node dist/bench/ab.js --a /path/to/other/checkout [--a-node-args "..."] [--b-node-args "..."]
 *
 * `a` is the baseline (another checkout's dist/cli/main.js, or this one with other node
 * flags), `b` is this checkout. All paths sit behind one nginx; each round runs every
 * path in turn, the order rotating, and the medians are printed as a markdown table for
 * bench/OPTIMISATION-LOG.md. Sizes are checked as in the full suite.
 */
import { mkdtemp, rm } from "node:fs/promises";
import os from "node:os";
import path from "node:path";
import { startBackend } from "./backend.js";
import { bulk, wrk, writeWrkScripts, WRK_CONNECTIONS } from "./load.js";
import { buildGopeer, CAPSUL_CLI, startCapsul, startGopeer, type RunningPath } from "./paths.js";
import { walkArgs } from "./options.js";
import { cpuSeconds } from "./procs.js";
import { median } from "./report.js";
import { NODE_HEAP_FLAGS } from "../cli/runtime.js";

const MIB = 1024 * 1024;
const GIB = 1024 ** 3;
const METRICS = ["keepalive", "newconn", "bulk1", "bulk16", "cpuHub", "cpuCog", "hubUsPerConn"] as const;
type Metric = (typeof METRICS)[number];
/** What --metrics can pick; the CPU figures come with the bulk runs. */
const RATE_METRICS: readonly string[] = METRICS.filter((m) => !m.startsWith("cpu") && m !== "hubUsPerConn");

const USAGE = `usage: node dist/bench/ab.js [options]
  --a DIR              baseline checkout (its dist/cli/main.js; default: this one)
  --a-node-args "..."  node flags for a's hub and cog, instead of the launcher's
                       (cli/runtime.ts NODE_HEAP_FLAGS); "" for none
  --b-node-args "..."  the same for b (this checkout)
  --b-hub KEY=VALUE    a top-level hub key for b only, e.g. access_log=true
                       (repeatable; a and b then differ in configuration only)
  --rounds N           interleaved rounds (default 3)
  --seconds N          wrk duration (default 5)
  --big-mib N          download size (default 128)
  --no-gopeer          leave gopeer out
  --metrics a,b        ${RATE_METRICS.join(",")} (default: all)`;

interface AbOptions { aCli: string; aArgs?: string[]; bArgs?: string[]; bHub: Record<string, string>; rounds: number; seconds: number; bigBytes: number; gopeer: boolean; metrics: string[] }

function parse(argv: string[]): AbOptions {
  const o: AbOptions = { aCli: CAPSUL_CLI, bHub: {}, rounds: 3, seconds: 5, bigBytes: 128 * MIB, gopeer: true, metrics: [...RATE_METRICS] };
  walkArgs(argv, USAGE, (a, { val, int }) => {
    switch (a) {
      case "--a": o.aCli = path.join(path.resolve(val()), "dist", "cli", "main.js"); break;
      case "--a-node-args": o.aArgs = val().split(/\s+/).filter(Boolean); break;
      case "--b-node-args": o.bArgs = val().split(/\s+/).filter(Boolean); break;
      case "--b-hub": {
        const kv = val();
        const eq = kv.indexOf("=");
        if (eq <= 0) throw new Error(`--b-hub: expected KEY=VALUE, got ${kv}\n${USAGE}`);
        o.bHub[kv.slice(0, eq)] = kv.slice(eq + 1);
        break;
      }
      case "--rounds": o.rounds = int(); break;
      case "--seconds": o.seconds = int(); break;
      case "--big-mib": o.bigBytes = int() * MIB; break;
      case "--no-gopeer": o.gopeer = false; break;
      case "--metrics": {
        o.metrics = val().split(",");
        for (const m of o.metrics) if (!RATE_METRICS.includes(m)) throw new Error(`--metrics: unknown metric ${m}\n${USAGE}`);
        break;
      }
      case "-h": case "--help": process.stdout.write(USAGE + "\n"); process.exit(0); break;
      default: throw new Error(`unknown option ${a}\n${USAGE}`);
    }
  });
  return o;
}

async function main(): Promise<void> {
  const o = parse(process.argv.slice(2));
  const tmp = await mkdtemp(path.join(os.tmpdir(), "capsul-ab-"));
  const names = ["a", "b", ...(o.gopeer ? ["gopeer"] : [])];
  const be = await startBackend(path.join(tmp, "nginx"), names, o.bigBytes);
  const paths: RunningPath[] = [];
  const samples = new Map<string, Map<Metric, number[]>>(names.map((n) => [n, new Map(METRICS.map((m) => [m, []]))]));
  const problems: string[] = [];
  try {
    const scripts = await writeWrkScripts(tmp);
    paths.push(await startCapsul(path.join(tmp, "a"), be.httpsPorts.a, { name: "a", cli: o.aCli, launcherFlags: o.aArgs }));
    paths.push(await startCapsul(path.join(tmp, "b"), be.httpsPorts.b, { name: "b", launcherFlags: o.bArgs, hubKeys: o.bHub }));
    if (o.gopeer) paths.push(await startGopeer(path.join(tmp, "gopeer"), await buildGopeer(), be.httpsPorts.gopeer));
    const put = (p: string, m: Metric, v: number): void => {
      samples.get(p)!.get(m)!.push(v);
      process.stderr.write(`${p.padEnd(7)} ${m.padEnd(9)} ${v.toFixed(m.startsWith("cpu") ? 2 : 0)}\n`);
    };
    for (let r = 0; r < o.rounds; r++) {
      const order = paths.map((_, i) => paths[(i + r) % paths.length]);
      for (const [metric, close] of [["keepalive", false], ["newconn", true]] as const) {
        if (!o.metrics.includes(metric)) continue;
        for (const p of order) {
          const cpu0 = cpuSeconds(p.procs[0]!.pid);
          const w = await wrk(p.port, { script: scripts.resolve, seconds: o.seconds, connections: WRK_CONNECTIONS, close });
          const cpu = cpuSeconds(p.procs[0]!.pid) - cpu0;
          if (w.errors + w.non2xx) problems.push(`${p.name} ${metric}: ${w.errors} socket errors, ${w.non2xx} non-2xx`);
          put(p.name, metric, w.reqPerSec);
          // Hub CPU per visitor connection (one request each): what a per-connection cost, like an access line, shows in.
          if (metric === "newconn") put(p.name, "hubUsPerConn", (cpu * 1e6) / w.requests);
        }
      }
      for (const n of [1, 16]) {
        const metric = n === 1 ? "bulk1" : "bulk16";
        if (!o.metrics.includes(metric)) continue;
        for (const p of order) {
          const cpu0 = p.procs.map((x) => cpuSeconds(x.pid));
          const b = await bulk(p.port, n, o.bigBytes, 600_000);
          const cpu = p.procs.map((x, i) => cpuSeconds(x.pid) - cpu0[i]);
          if (!b.complete) problems.push(`${p.name} bulk x${n}: ${b.failures.join("; ")}`);
          put(p.name, metric, b.mbPerSec);
          put(p.name, "cpuHub", cpu[0] / (b.bytes / GIB));
          put(p.name, "cpuCog", cpu[1] / (b.bytes / GIB));
        }
      }
    }
  } finally {
    for (const p of paths) await p.stop().catch(() => {});
    await be.stop();
    await rm(tmp, { recursive: true, force: true });
  }
  const shown = METRICS.filter((m) => samples.get("a")!.get(m)!.length);
  const med = (p: string, m: Metric): number => median(samples.get(p)!.get(m)!);
  const flags = (f?: string[]): string => (f ?? NODE_HEAP_FLAGS).join(" ");
  const bHub = Object.entries(o.bHub).map(([k, v]) => ` hub.${k}=${v}`).join("");
  let out = `a = node ${flags(o.aArgs)} ${o.aCli}\nb = node ${flags(o.bArgs)} ${CAPSUL_CLI}${bHub}\n${o.rounds} rounds, medians; bulk ${o.bigBytes / MIB} MiB; cpu = CPU s/GiB over both bulk runs; hubUsPerConn = hub CPU µs per new connection (newconn runs)\n\n`;
  out += `| metric | ${names.join(" | ")} | b / a |${o.gopeer ? " a / gopeer | b / gopeer |" : ""}\n| --- |${names.map(() => " ---: |").join("")} ---: |${o.gopeer ? " ---: | ---: |" : ""}\n`;
  for (const m of shown) {
    const v = names.map((n) => med(n, m));
    const fmt = (x: number): string => (m.startsWith("cpu") ? x.toFixed(2) : m === "hubUsPerConn" ? x.toFixed(1) : x.toFixed(0));
    const ratio = (x: number, y: number): string => (x / y).toFixed(2);
    out += `| ${m} | ${v.map(fmt).join(" | ")} | ${ratio(v[1], v[0])} |${o.gopeer ? ` ${ratio(v[0], v[2])} | ${ratio(v[1], v[2])} |` : ""}\n`;
  }
  if (problems.length) out += `\nproblems:\n${problems.map((p) => `- ${p}`).join("\n")}\n`;
  process.stdout.write(out);
  if (problems.length) process.exitCode = 1;
}

main().catch((err: Error) => {
  process.stderr.write(`ab: ${err.stack ?? err.message}\n`);
  process.exit(1);
});
