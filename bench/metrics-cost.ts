/**
 * What the admin listener and its metrics cost the hub (issue 9, "Done means"), in one run:
 *
 *   node dist/bench/metrics-cost.js --a DIR [--rounds 3] [--big-mib 128] [--idle 10000] [--scrape-ms 1000]
 *
 * `a` is a checkout without metrics (its dist/cli/main.js, e.g. the commit before them),
 * `b` this checkout with hub.listen.admin on. Both are hub + cog child processes behind one
 * nginx (bench/paths.ts startCapsul, as the README runs them).
 *
 * 1. CPU per GiB: interleaved rounds of 1 and 16 concurrent downloads of /big through each;
 *    hub CPU seconds (utime+stime from /proc) per GiB received: what metrics cost per byte.
 *    With --scrape-ms N, b's /metrics is also scraped every N ms while it downloads (a
 *    cost per second, not per byte: its share per GiB grows as a busy machine slows the
 *    downloads, so it is measured on its own as well, in 3).
 * 2. Idle visitors: on fresh processes, --idle TLS visitors (bench/idle-holder.ts: each one
 *    handshaken, its SNI peeked, one GET /small through the tunnel to nginx, then held
 *    silent) and the hub's RSS before and while they are held.
 * 3. What a scrape costs b's hub: its CPU over SCRAPES_MEASURED scrapes in a row, idle and
 *    while the idle visitors are held (and that /metrics counts them).
 *
 * Loopback only. Every visitor comes from 127.0.0.1, so the per-source caps are lifted
 * (LOOPBACK_SOURCE_LIMITS; for b also the per-cog limits, LOOPBACK_IDLE_LIMITS). 10,000 visitors take about 10,000 descriptors in each of the
 * holder, the hub and the cog, so the hard limit must allow it: run as root, or
 * `ulimit -Hn 65536` first (bench/procs.ts raises each child's soft limit to the hard one).
 */
import { readdirSync } from "node:fs";
import { mkdtemp, rm } from "node:fs/promises";
import http from "node:http";
import os from "node:os";
import path from "node:path";
import { fileURLToPath } from "node:url";
import { startBackend } from "./backend.js";
import { bulk } from "./load.js";
import { walkArgs } from "./options.js";
import { CAPSUL_CLI, LOOPBACK_IDLE_LIMITS, LOOPBACK_SOURCE_LIMITS, startCapsul, type RunningPath } from "./paths.js";
import { BENCH_NOFILE, cpuSeconds, rssBytes, sleep, startProc } from "./procs.js";
import { median } from "./report.js";

const HERE = path.dirname(fileURLToPath(import.meta.url));
const MIB = 1024 * 1024;
const GIB = 1024 ** 3;
/** A bulk round may not take longer than this (128 MiB x 16 on a loaded 2-core box: minutes). */
const BULK_TIMEOUT_MS = 600_000;
/** Opening 10,000 visitors through a loaded machine. */
const IDLE_OPEN_TIMEOUT_MS = 600_000;
/** After the visitors are held (or the processes start), let RSS settle before reading it. */
const SETTLE_MS = 2_000;
/** One scrape of /metrics; past this it is a failure, not a figure. */
const SCRAPE_TIMEOUT_MS = 30_000;
/** Scrapes in a row whose hub CPU is averaged (section 3). */
const SCRAPES_MEASURED = 50;
/** Descriptors per idle visitor across holder, hub and cog are one each; leave room for the rest. */
const FD_HEADROOM = 1_000;

const USAGE = `usage: node dist/bench/metrics-cost.js --a DIR [options]
  --a DIR          baseline checkout without metrics (its dist/cli/main.js)
  --rounds N       interleaved bulk rounds (default 3)
  --no-bulk        skip the bulk rounds (idle and scrape sections only)
  --big-mib N      download size (default 128)
  --idle N         idle visitors held on each hub (default 10000)
  --no-idle        skip the idle section
  --scrape-ms N    also scrape b's /metrics every N ms during its bulk runs (default 0: no)`;

interface Opts { aCli: string | null; rounds: number; bigBytes: number; idle: number; scrapeMs: number }

function parse(argv: string[]): Opts {
  const o: Opts = { aCli: null, rounds: 3, bigBytes: 128 * MIB, idle: 10_000, scrapeMs: 0 };
  walkArgs(argv, USAGE, (a, { val, int }) => {
    switch (a) {
      case "--a": o.aCli = path.join(path.resolve(val()), "dist", "cli", "main.js"); break;
      case "--rounds": o.rounds = int(); break;
      case "--big-mib": o.bigBytes = int() * MIB; break;
      case "--idle": o.idle = int(); break;
      case "--no-idle": o.idle = 0; break;
      case "--no-bulk": o.rounds = 0; break;
      case "--scrape-ms": o.scrapeMs = int(); break;
      case "-h": case "--help": process.stdout.write(USAGE + "\n"); process.exit(0); break;
      default: throw new Error(`unknown option ${a}\n${USAGE}`);
    }
  });
  if (!o.aCli) throw new Error(`--a is required\n${USAGE}`);
  return o;
}

/** b's admin port, from its "hub ready … admin=PORT" line. */
async function adminPort(p: RunningPath): Promise<number> {
  const m = await p.procs[0]!.waitFor(/hub ready .*admin=(\d+)/);
  return Number(m[1]);
}

function scrape(port: number): Promise<{ ms: number; bytes: number; text: string }> {
  const t0 = process.hrtime.bigint();
  return new Promise((resolve, reject) => {
    const req = http.get({ host: "127.0.0.1", port, path: "/metrics", timeout: SCRAPE_TIMEOUT_MS }, (res) => {
      const chunks: Buffer[] = [];
      res.on("data", (c: Buffer) => chunks.push(c));
      res.on("end", () => {
        const text = Buffer.concat(chunks).toString("utf8");
        if (res.statusCode !== 200) reject(new Error(`/metrics: HTTP ${res.statusCode}`));
        else resolve({ ms: Number(process.hrtime.bigint() - t0) / 1e6, bytes: text.length, text });
      });
    });
    req.on("timeout", () => req.destroy(new Error(`/metrics: no answer within ${SCRAPE_TIMEOUT_MS} ms`)));
    req.on("error", reject);
  });
}

/** Scrapes every `everyMs` until stopped; one at a time, as Prometheus does. */
function scraper(port: number, everyMs: number): { stop(): Promise<{ count: number; ms: number[] }> } {
  let running = true;
  const ms: number[] = [];
  const loop = (async () => {
    while (running) {
      ms.push((await scrape(port)).ms);
      await sleep(everyMs);
    }
  })();
  return { async stop() { running = false; await loop; return { count: ms.length, ms }; } };
}

/** b's hub CPU per scrape over SCRAPES_MEASURED scrapes in a row, with the wall time and size of one. */
async function scrapeCpu(p: RunningPath, port: number): Promise<string> {
  const c0 = cpuSeconds(p.procs[0]!.pid);
  const wall: number[] = [];
  let bytes = 0;
  for (let i = 0; i < SCRAPES_MEASURED; i++) {
    const s = await scrape(port);
    wall.push(s.ms);
    bytes = s.bytes;
  }
  const ms = ((cpuSeconds(p.procs[0]!.pid) - c0) * 1000) / SCRAPES_MEASURED;
  return `${ms.toFixed(1)} ms CPU, ${median(wall).toFixed(1)} ms wall, ${(bytes / 1024).toFixed(1)} KiB`;
}

/** Open descriptors of a process: the held visitors must still be there when RSS is read. */
const fdCount = (pid: number): number => readdirSync(`/proc/${pid}/fd`).length;

const fmtMiB = (b: number): string => (b / MIB).toFixed(1);

async function main(): Promise<void> {
  const o = parse(process.argv.slice(2));
  if (o.idle > 0 && BENCH_NOFILE < o.idle + FD_HEADROOM) {
    throw new Error(`--idle ${o.idle} needs a hard descriptor limit of at least ${o.idle + FD_HEADROOM} (now ${BENCH_NOFILE}): ulimit -Hn 65536, or run as root`);
  }
  const tmp = await mkdtemp(path.join(os.tmpdir(), "capsul-metrics-cost-"));
  const be = await startBackend(path.join(tmp, "nginx"), ["a", "b", "idle-a", "idle-b"], o.bigBytes);
  const start = (name: "a" | "b", port: number): Promise<RunningPath> =>
    // a may predate the per-cog limits (and refuse their keys); b has them, at defaults that would refuse 10,000 visitors of one route.
    startCapsul(path.join(tmp, `${name}-${Date.now()}`), port, { name, cli: name === "a" ? o.aCli! : CAPSUL_CLI, hubLimits: name === "a" ? LOOPBACK_SOURCE_LIMITS : LOOPBACK_IDLE_LIMITS });
  const cpu: Record<string, number[]> = { a1: [], b1: [], a16: [], b16: [] };
  const scrapes: number[] = [];
  const idle: string[] = [];
  const scrapeCost: string[] = [];
  const problems: string[] = [];
  try {
    const paths = [await start("a", be.httpsPorts.a!), await start("b", be.httpsPorts.b!)];
    const bAdmin = await adminPort(paths[1]!);
    try {
      for (let r = 0; r < o.rounds; r++) {
        for (const n of [1, 16]) {
          for (const p of r % 2 ? [...paths].reverse() : paths) {
            const s = p.name === "b" && o.scrapeMs > 0 ? scraper(bAdmin, o.scrapeMs) : null;
            const c0 = cpuSeconds(p.procs[0]!.pid);
            const res = await bulk(p.port, n, o.bigBytes, BULK_TIMEOUT_MS);
            const hubCpu = cpuSeconds(p.procs[0]!.pid) - c0;
            if (s) scrapes.push(...(await s.stop()).ms);
            if (!res.complete) problems.push(`${p.name} bulk x${n}: ${res.failures.join("; ")}`);
            const perGiB = hubCpu / (res.bytes / GIB);
            cpu[`${p.name}${n}`]!.push(perGiB);
            process.stderr.write(`round ${r + 1} ${p.name} bulk x${n}: ${res.mbPerSec.toFixed(0)} MB/s, hub ${perGiB.toFixed(2)} CPU s/GiB\n`);
          }
        }
      }
      scrapeCost.push(`| idle hub (1 route, no visitors) | ${await scrapeCpu(paths[1]!, bAdmin)} |`);
    } finally {
      for (const p of paths) await p.stop().catch(() => {});
    }

    for (const name of o.idle > 0 ? (["a", "b"] as const) : []) {
      const p = await start(name, be.httpsPorts[`idle-${name}`]!);
      try {
        await sleep(SETTLE_MS);
        const base = rssBytes(p.procs[0]!.pid);
        const t0 = Date.now();
        const holder = startProc("idle-holder", process.execPath, [path.join(HERE, "idle-holder.js"), String(p.port), String(o.idle)]);
        try {
          await holder.waitFor(/ready (\d+)/, IDLE_OPEN_TIMEOUT_MS);
          const openS = (Date.now() - t0) / 1000;
          await sleep(SETTLE_MS);
          const held = rssBytes(p.procs[0]!.pid);
          const fds = fdCount(p.procs[0]!.pid);
          if (fds < o.idle) problems.push(`idle ${name}: the hub holds ${fds} descriptors, fewer than the ${o.idle} visitors held`);
          let line = `| ${name} | ${o.idle} | ${fds} | ${fmtMiB(base)} | ${fmtMiB(held)} | ${((held - base) / o.idle / 1000).toFixed(2)} | ${openS.toFixed(0)} |`;
          if (name === "b") {
            const port = await adminPort(p);
            const s = await scrape(port);
            const active = /^capsul_hub_visitors_active (\d+)/m.exec(s.text)?.[1];
            if (Number(active) !== o.idle) problems.push(`idle b: /metrics says ${active} visitors active, ${o.idle} were held`);
            scrapeCost.push(`| ${o.idle} idle visitors held (visitors_active ${active}) | ${await scrapeCpu(p, port)} |`);
            line += ` ${fmtMiB(rssBytes(p.procs[0]!.pid))} |`;
          } else line += " — |";
          idle.push(line);
          process.stderr.write(`${line}\n`);
        } catch (err) {
          problems.push(`idle ${name}: ${(err as Error).message.split("\n").slice(0, 3).join(" ")}`);
        } finally {
          await holder.stop();
        }
      } finally {
        await p.stop();
      }
    }
  } finally {
    await be.stop();
    await rm(tmp, { recursive: true, force: true });
  }

  const med = (k: string): number => median(cpu[k]!);
  let out = `a = ${o.aCli}\nb = ${CAPSUL_CLI} (hub.listen.admin on${o.scrapeMs > 0 ? `, /metrics scraped every ${o.scrapeMs} ms during bulk` : ", not scraped during bulk"})\n`;
  out += `${o.rounds} rounds, medians; bulk ${o.bigBytes / MIB} MiB; hub CPU s/GiB\n\n`;
  if (o.rounds > 0) out += "| downloads | a (no metrics) | b (metrics) | b - a | b / a |\n| --- | ---: | ---: | ---: | ---: |\n";
  for (const n of o.rounds > 0 ? [1, 16] : []) {
    const a = med(`a${n}`), b = med(`b${n}`);
    out += `| ${n} | ${a.toFixed(2)} | ${b.toFixed(2)} | ${(b - a).toFixed(2)} | ${(b / a).toFixed(3)} |\n`;
  }
  if (o.rounds > 0) out += `\nall rounds: ${Object.entries(cpu).map(([k, v]) => `${k} ${v.map((x) => x.toFixed(2)).join("/")}`).join(", ")}\n`;
  if (scrapes.length) out += `b's scrapes during bulk: ${scrapes.length}, median ${median(scrapes).toFixed(1)} ms, max ${Math.max(...scrapes).toFixed(1)} ms\n`;
  if (idle.length) {
    out += "\n| hub | idle visitors | hub fds | RSS before MiB | RSS held MiB | KB per visitor | s to open | RSS after the scrapes MiB |\n";
    out += "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |\n" + idle.join("\n") + "\n";
  }
  out += `\n| b's hub, ${SCRAPES_MEASURED} scrapes in a row | hub CPU ms per scrape, wall ms (median), body |\n| --- | --- |\n${scrapeCost.join("\n")}\n`;
  if (problems.length) out += `\nproblems:\n${problems.map((p) => `- ${p}`).join("\n")}\n`;
  process.stdout.write(out);
  if (problems.length) process.exitCode = 1;
}

main().catch((err: Error) => {
  process.stderr.write(`metrics-cost: ${err.stack ?? err.message}\n`);
  process.exit(1);
});
