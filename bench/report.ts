/**
 * Turns measurements into RESULTS.md (medians, ratios, targets, raw rounds) and a
 * hand-written SVG bar chart. Pure functions of `Results`, except machineInfo().
 */
import { readFileSync } from "node:fs";
import os from "node:os";
import path from "node:path";
import { fileURLToPath } from "node:url";
import { execFileP } from "./procs.js";
import { GOPEER_WINDOW_BYTES } from "./paths.js";
import { NODE_HEAP_FLAGS } from "../cli/runtime.js";
import { LATENCY_CONNECTIONS, LATENCY_THINK_MS, WRK_CONNECTIONS } from "./load.js";
import type { Options } from "./options.js";
import { MUXBENCH_WINDOW_BYTES, type MicroResult } from "./micro.js";

/** dist/bench/report.js -> bench/OPTIMISATION-LOG.md in the source tree. */
export const OPTIMISATION_LOG_FILE = path.resolve(path.dirname(fileURLToPath(import.meta.url)), "..", "..", "bench", "OPTIMISATION-LOG.md");
/** bench/WORKERS.md: hub.workers 1 vs 2 vs gopeer (bench/workers.ts), hand-copied from its output, kept across runs. */
export const WORKERS_RESULTS_FILE = path.resolve(path.dirname(OPTIMISATION_LOG_FILE), "WORKERS.md");

export interface PathRound {
  round: number;
  keepAlive: number; keepAliveErrors: number;
  newConn: number; newConnErrors: number;
  latRate: number; p50Ms: number; p99Ms: number;
  bulk1: number; bulk16: number; bulkComplete: boolean; bulkBytes: number;
  /** Per proxy process (hub first, then cog), over both bulk phases. */
  cpuSec: number[]; peakRss: number[]; cpuSecPerGiB: number[];
}
export interface IdleEntry { path: string; count: number; seconds: number; baseRss: number[]; heldRss: number[]; perConnBytes: number[] }
export interface Results {
  machine: Record<string, string>;
  options: Options;
  paths: Record<string, PathRound[]>;
  idle: IdleEntry[];
  micro: (MicroResult & { round: number })[];
  rtt: { route: string; round: number; mbPerSec: number; complete: boolean }[];
  problems: string[];
  checks: Record<string, Record<string, unknown>>;
  profile?: string;
  finishedAt?: string;
}

export async function machineInfo(): Promise<Record<string, string>> {
  const out = async (cmd: string, args: string[]): Promise<string> => {
    try {
      const r = await execFileP(cmd, args);
      return (r.stdout + r.stderr).trim().split("\n")[0];
    } catch (err) {
      // wrk --version exits 1 after printing its version.
      const e = err as { stdout?: string; stderr?: string };
      return ((e.stdout ?? "") + (e.stderr ?? "")).trim().split("\n")[0] || "unknown";
    }
  };
  const model = readFileSync("/proc/cpuinfo", "utf8").match(/^model name\s*:\s*(.*)$/m)?.[1] ?? "unknown";
  const dirty = await out("git", ["-C", process.cwd(), "status", "--porcelain", "--untracked-files=no"]);
  return {
    date: new Date().toISOString(),
    nproc: await out("nproc", []),
    cpu: model,
    memory: `${(os.totalmem() / 1024 ** 3).toFixed(1)} GiB`,
    loadAtStart: os.loadavg().map((l) => l.toFixed(2)).join(" "),
    commit: (await out("git", ["rev-parse", "HEAD"])) + (dirty && dirty !== "unknown" ? " (working tree has uncommitted changes)" : ""),
    node: process.version,
    nginx: await out("nginx", ["-v"]),
    haproxy: await out("haproxy", ["-v"]),
    wrk: await out("wrk", ["--version"]),
    go: await out("go", ["version"]),
  };
}

export function median(xs: number[]): number {
  const s = xs.filter((x) => Number.isFinite(x)).sort((a, b) => a - b);
  if (s.length === 0) return NaN;
  const m = s.length >> 1;
  return s.length % 2 ? s[m] : (s[m - 1] + s[m]) / 2;
}

const fmt = (x: number, digits = 0): string => (Number.isFinite(x) ? x.toLocaleString("en-US", { maximumFractionDigits: digits, minimumFractionDigits: digits }) : "–");
const kb = (b: number): string => fmt(b / 1000, 1);
const mb = (b: number): string => fmt(b / 1e6, 1);

type MetricKey = "keepAlive" | "newConn" | "bulk1" | "bulk16" | "p50Ms" | "p99Ms" | "latRate";
export function pathMedian(res: Results, name: string, key: MetricKey): number {
  return median((res.paths[name] ?? []).map((r) => r[key]));
}
function perProcMedian(rounds: PathRound[], key: "cpuSecPerGiB" | "peakRss", i: number): number {
  return median(rounds.map((r) => r[key]?.[i] ?? NaN));
}

export const CHART_METRICS: { key: MetricKey; label: string; unit: string }[] = [
  { key: "keepAlive", label: "keep-alive req/s", unit: "req/s" },
  { key: "newConn", label: "new TLS conn/s", unit: "conn/s" },
  { key: "bulk1", label: "bulk 1x MB/s", unit: "MB/s" },
  { key: "bulk16", label: "bulk 16x MB/s", unit: "MB/s" },
];

export function renderMarkdown(res: Results): string {
  const o = res.options;
  const m = res.machine;
  const names = Object.keys(res.paths);
  const L: string[] = [];
  L.push("# capsul dispenser benchmark results", "");
  L.push(`Produced by \`${o.command}\` (run from the repository root; \`npm run bench\` builds first).`, "");
  L.push(`- date: ${m.date} (finished ${res.finishedAt ?? "?"})`);
  L.push(`- machine: ${m.nproc} CPUs, ${m.cpu}, ${m.memory}; load average at start ${m.loadAtStart}, at end ${m.loadAtEnd ?? "?"} (other work on the machine competes for the 2 cores)`);
  L.push(`- commit: ${m.commit}`);
  L.push(`- software: node ${m.node}; ${m.nginx}; ${m.haproxy}; ${m.wrk}; ${m.go}`);
  L.push(`- rounds: ${o.rounds}, interleaved (each metric runs every path in turn, the order rotating each round); figures are medians of the rounds`);
  L.push("");
  if (res.problems.length) {
    L.push("## Problems", "", ...res.problems.map((p) => `- ${p}`), "");
  }
  if (names.length) {
    L.push("## Paths: visitor (TLS, SNI) -> proxy -> nginx HTTPS", "");
    L.push("| path | keep-alive req/s | new TLS conn/s | latency run req/s | p50 ms | p99 ms | bulk 1x MB/s | bulk 16x MB/s | CPU s/GiB hub / cog | peak RSS MB hub / cog |");
    L.push("| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |");
    for (const n of names) {
      const rs = res.paths[n];
      const nproc = rs[0]?.cpuSec?.length ?? 0;
      const cpu = Array.from({ length: nproc }, (_, i) => fmt(perProcMedian(rs, "cpuSecPerGiB", i), 2)).join(" / ") || "–";
      const rss = Array.from({ length: nproc }, (_, i) => mb(perProcMedian(rs, "peakRss", i))).join(" / ") || "–";
      L.push(`| ${n} | ${fmt(pathMedian(res, n, "keepAlive"))} | ${fmt(pathMedian(res, n, "newConn"))} | ${fmt(pathMedian(res, n, "latRate"))} | ${fmt(pathMedian(res, n, "p50Ms"), 2)} | ${fmt(pathMedian(res, n, "p99Ms"), 2)} | ${fmt(pathMedian(res, n, "bulk1"))} | ${fmt(pathMedian(res, n, "bulk16"))} | ${cpu} | ${rss} |`);
    }
    L.push("");
    if (res.paths.capsul) {
      L.push("### capsul relative to the others (ratio of medians)", "");
      L.push("| metric | capsul / HAProxy | capsul / gopeer | capsul / direct |");
      L.push("| --- | ---: | ---: | ---: |");
      for (const c of [...CHART_METRICS, { key: "p99Ms" as MetricKey, label: "p99 latency (lower is better)", unit: "ms" }]) {
        const v = pathMedian(res, "capsul", c.key);
        const r = (other: string): string => fmt(v / pathMedian(res, other, c.key), 2);
        L.push(`| ${c.label} | ${r("haproxy")} | ${r("gopeer")} | ${r("direct")} |`);
      }
      L.push("");
    }
  }
  L.push(...targetsSection(res));
  if (res.idle.length) {
    L.push("## Memory per held idle proxied connection", "");
    L.push("Fresh proxy processes; each visitor connection did one keep-alive GET /small and is then held open. Per connection = (VmRSS held - VmRSS before) / count.", "");
    L.push("| path | connections | RSS before MB (hub / cog) | RSS held MB (hub / cog) | KB per connection (hub / cog) | seconds to open |");
    L.push("| --- | ---: | ---: | ---: | ---: | ---: |");
    for (const e of res.idle) {
      L.push(`| ${e.path} | ${e.count} | ${e.baseRss.map(mb).join(" / ")} | ${e.heldRss.map(mb).join(" / ")} | ${e.perConnBytes.map(kb).join(" / ")} | ${fmt(e.seconds)} |`);
    }
    L.push("");
  }
  if (res.micro.length) {
    L.push("## Mux microbenchmark (one process sends, another receives, loopback TLS 1.3)", "");
    L.push(`\`raw\` is N separate TLS connections (no mux), \`capsul\` is protocol/mux.ts MuxSession, \`libp2p\` is @libp2p/yamux 8 through a small Node-socket adapter (bench/mux-peer.ts), both with an ${MUXBENCH_WINDOW_BYTES / 1024 / 1024} MiB max stream window over one TLS connection. ${mb(o.microBytes)} MB per run; CPU is sender + receiver user+system time.`, "");
    L.push("| impl | streams | MB/s | CPU s/GiB | vs raw TLS (MB/s) |");
    L.push("| --- | ---: | ---: | ---: | ---: |");
    const key = (x: { impl: string; streams: number }): string => `${x.impl}/${x.streams}`;
    const groups = new Map<string, (MicroResult & { round: number })[]>();
    for (const x of res.micro) groups.set(key(x), [...(groups.get(key(x)) ?? []), x]);
    for (const [k, xs] of groups) {
      const [impl, streams] = k.split("/");
      const mbs = median(xs.map((x) => x.mbPerSec));
      const raw = median((groups.get(`raw/${streams}`) ?? []).map((x) => x.mbPerSec));
      const err = xs.find((x) => x.error)?.error;
      L.push(`| ${impl} | ${streams} | ${fmt(mbs)} | ${fmt(median(xs.map((x) => x.cpuSecPerGiB)), 2)} | ${fmt(mbs / raw, 2)}${err ? ` (error: ${err.replace(/\|/g, "/")})` : ""} |`);
    }
    L.push("");
  }
  if (res.rtt.length) {
    L.push(`## Long RTT: ${2 * o.rttDelayMs} ms round trip (bench/delay-relay.ts, ${o.rttDelayMs} ms per direction, no bandwidth limit)`, "");
    L.push("`plain TCP`: curl -> relay -> nginx (the visitor's own TLS over one delayed TCP connection). `capsul` / `gopeer`: curl -> hub, and the cog's tunnel to the hub goes through the relay.", "");
    L.push("Caveat: the relay holds data in user space, so the kernel's TCP on each side sees a ~0 ms loopback RTT; plain TCP is then limited by nothing but the relay's 64 MiB cap, while the muxes are bounded by their stream window per RTT (capsul starts at 8 MiB and auto-tunes a stream whose reader keeps up to at most 32 MiB: 670 MB/s per 50 ms; gopeer's fixed 6 MiB / 50 ms = 126 MB/s). A real 50 ms path would also bound plain TCP by its socket buffers (tcp_rmem/tcp_wmem). The relay runs with the same node heap flags as capsul. A netem qdisc would be more faithful, but this kernel has neither netem nor tbf (`tc qdisc add dev lo root netem delay 25ms` says \"Specified qdisc kind is unknown\", even inside a network namespace of our own).", "");
    L.push(`| route | single download MB/s (${mb(o.bigBytes)} MB) | vs plain TCP |`);
    L.push("| --- | ---: | ---: |");
    const plain = median(res.rtt.filter((x) => x.route === "plain TCP").map((x) => x.mbPerSec));
    for (const route of [...new Set(res.rtt.map((x) => x.route))]) {
      const v = median(res.rtt.filter((x) => x.route === route).map((x) => x.mbPerSec));
      L.push(`| ${route} | ${fmt(v, 1)} | ${fmt(v / plain, 2)} |`);
    }
    L.push("");
  }
  L.push("## How it was measured", "");
  L.push(`- Backend: nginx-light, 1 worker, HTTPS (self-signed P-256 certificate for the test hostname), /small = 100 bytes, /big = ${mb(o.bigBytes)} MB (sparse file); one listen port per path so its access log shows which proxy each request came through.`);
  L.push(`- HAProxy: \`mode tcp\`, \`tcp-request inspect-delay\`, \`req_ssl_sni\` (SNI passthrough). gopeer (bench/peers/gopeer, built by scripts/build-go-peer.sh): hub and cog with \`-window ${GOPEER_WINDOW_BYTES}\`. capsul: \`capsul hub\`, \`hub invite --json\`, \`cog enroll\`, \`capsul cog\` as separate processes, started as capsul's launcher starts them (\`node ${NODE_HEAP_FLAGS.join(" ")}\`, cli/runtime.ts), route kind tls, default 8 MiB stream window (auto-tuned up to 32 MiB when a reader drains it within 4 RTTs).`);
  L.push(`- Keep-alive: wrk, 1 thread, ${WRK_CONNECTIONS} connections, ${o.seconds} s, GET /small. New connections: same with \`Connection: close\` (a full TLS handshake per request). wrk connects to 127.0.0.1 via a Lua \`wrk.resolve\` override, so SNI and Host are the test hostname without touching /etc/hosts.`);
  L.push(`- Latency: wrk's own latency distribution, ${LATENCY_CONNECTIONS} keep-alive connections, each waiting ${LATENCY_THINK_MS} ms (Lua \`delay()\`) before every request: a moderate, roughly fixed offered rate (closed loop with think time, not wrk2's open loop); the achieved rate is in the table.`);
  L.push("- Bulk: curl downloads of /big, 1 and 16 at once; MB/s = all bytes received / wall time; every size is checked. CPU s/GiB = (utime+stime of the proxy process from /proc/PID/stat over both bulk phases) / GiB downloaded; peak RSS = max VmRSS sampled every 200 ms during bulk.");
  L.push("- Everything shares the same cores: wrk/curl, nginx and the proxies compete, so a proxy's CPU cost also slows the load generator. Compare paths within one run.");
  L.push("");
  L.push("## Raw rounds", "", "| path | round | keep-alive | new conn | latency rate | p50 | p99 | bulk 1x | bulk 16x | sizes ok |", "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | --- |");
  for (const n of names) for (const r of res.paths[n]) {
    L.push(`| ${n} | ${r.round} | ${fmt(r.keepAlive)} | ${fmt(r.newConn)} | ${fmt(r.latRate)} | ${fmt(r.p50Ms, 2)} | ${fmt(r.p99Ms, 2)} | ${fmt(r.bulk1)} | ${fmt(r.bulk16)} | ${r.bulkComplete ? "yes" : "NO"} |`);
  }
  L.push("");
  let workers = "";
  try { workers = readFileSync(WORKERS_RESULTS_FILE, "utf8").trim(); } catch { /* not measured */ }
  if (workers) L.push("## Hub workers: workers 1 and 2 against gopeer (issue 12)", "", workers, "");
  // Hand-written: what each hot-path change measured (bench/OPTIMISATION-LOG.md), kept across runs.
  let log = "";
  try { log = readFileSync(OPTIMISATION_LOG_FILE, "utf8").trim(); } catch { /* no log yet */ }
  if (log) L.push("## Optimisation log", "", log, "");
  return L.join("\n");
}

function targetsSection(res: Results): string[] {
  const rows: [string, number, number][] = [];
  const c = (k: MetricKey): number => pathMedian(res, "capsul", k);
  if (res.paths.capsul && res.paths.gopeer) {
    rows.push(["keep-alive req/s >= 1.2x gopeer", c("keepAlive") / pathMedian(res, "gopeer", "keepAlive"), 1.2]);
    rows.push(["new TLS conn/s >= 1.2x gopeer", c("newConn") / pathMedian(res, "gopeer", "newConn"), 1.2]);
    rows.push(["bulk 1x MB/s >= 1.2x gopeer", c("bulk1") / pathMedian(res, "gopeer", "bulk1"), 1.2]);
    rows.push(["bulk 16x MB/s >= 1.2x gopeer", c("bulk16") / pathMedian(res, "gopeer", "bulk16"), 1.2]);
    rows.push(["p99 latency <= gopeer's (capsul / gopeer)", c("p99Ms") / pathMedian(res, "gopeer", "p99Ms"), -1]);
  }
  if (res.paths.capsul && res.paths.haproxy) {
    rows.push(["bulk 1x MB/s >= 0.5x HAProxy", c("bulk1") / pathMedian(res, "haproxy", "bulk1"), 0.5]);
    rows.push(["bulk 16x MB/s >= 0.5x HAProxy", c("bulk16") / pathMedian(res, "haproxy", "bulk16"), 0.5]);
  }
  const idle = res.idle.filter((e) => e.path === "capsul").sort((a, b) => b.count - a.count)[0];
  if (idle) {
    rows.push([`hub RSS per idle connection <= 20 KB (KB, at ${idle.count})`, idle.perConnBytes[0] / 1000, -20]);
    rows.push([`cog RSS per idle connection <= 20 KB (KB, at ${idle.count})`, idle.perConnBytes[1] / 1000, -20]);
  }
  const micro = (impl: string): number => median(res.micro.filter((x) => x.impl === impl && x.streams === 1).map((x) => x.mbPerSec));
  if (res.micro.length) rows.push(["mux single stream >= 0.85x raw TLS", micro("capsul") / micro("raw"), 0.85]);
  const rtt = (route: string): number => median(res.rtt.filter((x) => x.route === route).map((x) => x.mbPerSec));
  if (res.rtt.some((x) => x.route === "capsul")) rows.push([`${2 * res.options.rttDelayMs} ms RTT single stream >= 0.8x plain TCP`, rtt("capsul") / rtt("plain TCP"), 0.8]);
  if (!rows.length) return [];
  // A negative goal means "at most |goal|".
  const ok = (v: number, goal: number): boolean => (goal < 0 ? v <= -goal : v >= goal);
  return ["## Targets for capsul", "", "| target | measured | met |", "| --- | ---: | --- |",
    ...rows.map(([t, v, g]) => `| ${t} | ${fmt(v, 2)} | ${Number.isFinite(v) ? (ok(v, g) ? "yes" : "**no**") : "–"} |`), ""];
}

const COLORS: Record<string, string> = { direct: "#7f8c8d", haproxy: "#2e86de", gopeer: "#10ac84", capsul: "#ee5253" };

/** Grouped bars, one group per metric; bar height relative to the best path in that group. */
export function renderSvg(res: Results): string {
  const names = Object.keys(res.paths);
  const W = 900, H = 420, top = 60, bottom = 70, left = 40, groupW = (W - left - 20) / CHART_METRICS.length;
  const barW = Math.min(40, (groupW - 30) / Math.max(1, names.length));
  const plotH = H - top - bottom;
  const esc = (s: string): string => s.replace(/&/g, "&amp;").replace(/</g, "&lt;");
  const out: string[] = [];
  out.push(`<svg xmlns="http://www.w3.org/2000/svg" width="${W}" height="${H}" viewBox="0 0 ${W} ${H}" font-family="sans-serif" font-size="11">`);
  out.push(`<rect width="${W}" height="${H}" fill="#fff"/>`);
  out.push(`<text x="${W / 2}" y="22" text-anchor="middle" font-size="15">capsul bench: medians of ${res.options.rounds} interleaved round(s), ${esc(res.machine.date ?? "")}</text>`);
  out.push(`<text x="${W / 2}" y="40" text-anchor="middle" fill="#555">bar height relative to the best path per metric; labels are absolute values</text>`);
  out.push(`<line x1="${left}" y1="${top + plotH}" x2="${W - 10}" y2="${top + plotH}" stroke="#333"/>`);
  CHART_METRICS.forEach((mt, g) => {
    const vals = names.map((n) => pathMedian(res, n, mt.key));
    const max = Math.max(...vals.filter(Number.isFinite), 1e-9);
    const gx = left + g * groupW + (groupW - barW * names.length) / 2;
    names.forEach((n, i) => {
      const v = vals[i];
      const h = Number.isFinite(v) ? (v / max) * plotH : 0;
      const x = gx + i * barW;
      out.push(`<rect x="${x.toFixed(1)}" y="${(top + plotH - h).toFixed(1)}" width="${(barW - 4).toFixed(1)}" height="${h.toFixed(1)}" fill="${COLORS[n] ?? "#999"}"><title>${esc(n)}: ${fmt(v)} ${mt.unit}</title></rect>`);
      out.push(`<text x="${(x + (barW - 4) / 2).toFixed(1)}" y="${(top + plotH - h - 4).toFixed(1)}" text-anchor="middle" font-size="9">${fmt(v)}</text>`);
    });
    out.push(`<text x="${(left + g * groupW + groupW / 2).toFixed(1)}" y="${top + plotH + 18}" text-anchor="middle" font-size="12">${esc(mt.label)}</text>`);
  });
  names.forEach((n, i) => {
    const x = left + i * 120;
    out.push(`<rect x="${x}" y="${H - 28}" width="12" height="12" fill="${COLORS[n] ?? "#999"}"/><text x="${x + 16}" y="${H - 18}">${esc(n)}</text>`);
  });
  out.push("</svg>");
  return out.join("\n") + "\n";
}

/**
 * `node dist/bench/report.js [DIR]`: renders DIR/RESULTS.md and DIR/results.svg again
 * from DIR/results.json (default bench/), e.g. after OPTIMISATION-LOG.md changed. The
 * figures are the stored run's; only the text around them is today's.
 */
if (process.argv[1] === fileURLToPath(import.meta.url)) {
  const dir = path.resolve(process.argv[2] ?? path.join(path.dirname(OPTIMISATION_LOG_FILE)));
  const { writeFileSync } = await import("node:fs");
  const res = JSON.parse(readFileSync(path.join(dir, "results.json"), "utf8")) as Results;
  writeFileSync(path.join(dir, "RESULTS.md"), renderMarkdown(res));
  writeFileSync(path.join(dir, "results.svg"), renderSvg(res));
  process.stdout.write(`rendered ${path.join(dir, "RESULTS.md")} and results.svg from results.json\n`);
}
