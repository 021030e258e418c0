/**
 * The bench suite in quick mode with small sizes. Correctness only, never timing:
 * every path moved every byte (sizes checked by the suite and here), every proxied
 * path's requests reached nginx on the port only that proxy knows, the proxies did
 * work, and the report files were produced (into a temp dir, not bench/).
 */
import t from "tap";
import { execFile } from "node:child_process";
import { mkdtemp, readFile, rm } from "node:fs/promises";
import os from "node:os";
import path from "node:path";
import { promisify } from "node:util";
import { perfAvailable } from "../bench/perfprof.js";

const execFileP = promisify(execFile);
const RUN_JS = path.resolve("dist", "bench", "run.js");
const QUICK_BIG_MIB = 8;
const QUICK_IDLE = 50;
const PATHS = ["direct", "haproxy", "gopeer", "capsul"];

interface Check { nginxRequests: number; nginxBigRequests: number; nginxBytes: number; proxyCpuSec: number[]; proxyPids: number[]; sessionsTotal?: number }

t.setTimeout(200_000);

t.test("bench --quick measures every path through its own proxy and writes the report", async (t) => {
  const out = await mkdtemp(path.join(os.tmpdir(), "bench-test-"));
  t.teardown(() => rm(out, { recursive: true, force: true }));
  const { stdout } = await execFileP(process.execPath, [
    RUN_JS, "--quick", "--out", out, "--big-mib", String(QUICK_BIG_MIB), "--seconds", "2", "--idle", String(QUICK_IDLE),
  ], { timeout: 190_000, maxBuffer: 16 * 1024 * 1024 });

  const res = JSON.parse(await readFile(path.join(out, "results.json"), "utf8")) as {
    paths: Record<string, { bulkComplete: boolean; bulkBytes: number; keepAlive: number; newConn: number }[]>;
    checks: Record<string, Check>;
    idle: { path: string; count: number; heldRss: number[] }[];
    micro: { impl: string; streams: number; mbPerSec: number; error?: string }[];
    rtt: { route: string; complete: boolean }[];
    problems: string[];
  };
  t.same(res.problems, [], "no problems reported");
  const big = QUICK_BIG_MIB * 1024 * 1024;
  for (const name of PATHS) {
    const rounds = res.paths[name];
    t.equal(rounds?.length, 1, `${name}: one round in quick mode`);
    for (const r of rounds ?? []) {
      t.ok(r.bulkComplete, `${name}: every download had the full size`);
      t.equal(r.bulkBytes, 17 * big, `${name}: 1 + 16 downloads of ${QUICK_BIG_MIB} MiB`);
      t.ok(r.keepAlive > 0 && r.newConn > 0, `${name}: wrk made requests`);
    }
    const c = res.checks[name];
    // Each path has its own nginx port, known only to its proxy (or to wrk/curl for direct).
    t.ok(c.nginxRequests > 100, `${name}: nginx saw its requests on this path's port (${c.nginxRequests})`);
    t.equal(c.nginxBigRequests, 17, `${name}: nginx served /big 17 times on this path's port`);
    t.ok(c.nginxBytes >= 17 * big, `${name}: nginx sent the bulk bytes on this path's port`);
  }
  t.same(res.checks.direct.proxyPids, [], "direct: no proxy in the way");
  t.ok((res.checks.haproxy.sessionsTotal ?? 0) > 0, "haproxy: its stats count sessions to nginx");
  for (const name of ["haproxy", "gopeer", "capsul"]) {
    const c = res.checks[name];
    t.equal(c.proxyPids.length, name === "haproxy" ? 1 : 2, `${name}: proxy processes measured`);
    // 17 x 8 MiB went through each process (hub and cog both), which costs CPU.
    for (const [i, cpu] of c.proxyCpuSec.entries()) t.ok(cpu > 0, `${name}: process ${i} used CPU (${cpu} s)`);
  }
  for (const name of ["haproxy", "gopeer", "capsul"]) {
    const e = res.idle.find((x) => x.path === name);
    t.equal(e?.count, QUICK_IDLE, `${name}: idle connections held`);
  }
  for (const impl of ["raw", "capsul"]) {
    for (const streams of [1, 16]) {
      const m = res.micro.find((x) => x.impl === impl && x.streams === streams);
      t.ok(m && Number.isFinite(m.mbPerSec) && !m.error, `micro ${impl} x${streams} moved its bytes`);
    }
  }
  t.ok(res.micro.some((x) => x.impl === "libp2p"), "micro: @libp2p/yamux was tried");
  for (const route of ["plain TCP", "capsul", "gopeer"]) {
    t.ok(res.rtt.find((x) => x.route === route)?.complete, `rtt ${route}: full download over the delay relay`);
  }

  const md = await readFile(path.join(out, "RESULTS.md"), "utf8");
  t.match(md, /^# capsul dispenser benchmark results/m);
  t.match(md, /Produced by `node dist\/bench\/run\.js --quick/);
  t.match(md, /\| path \| keep-alive req\/s \| new TLS conn\/s \|/);
  for (const name of PATHS) t.match(md, new RegExp(`^\\| ${name} \\|`, "m"), `table row for ${name}`);
  t.match(md, /capsul \/ HAProxy \| capsul \/ gopeer/);
  t.match(md, /commit: [0-9a-f]{40}/);
  t.equal(stdout, md, "the table is printed too");
  const svg = await readFile(path.join(out, "results.svg"), "utf8");
  t.match(svg, /^<svg xmlns="http:\/\/www\.w3\.org\/2000\/svg"/);
  t.match(svg, /<\/svg>\n$/);
});

t.test("collectChild waits for the child's output, not just its exit (bench bulk x16 '0 bytes')", async (t) => {
  const { spawn } = await import("node:child_process");
  const { collectChild } = await import("../bench/procs.js");
  // The shell exits at once while a grandchild still holds stdout; the grandchild prints
  // the result line only when we tell it to, after 'exit' was seen: exactly the order that
  // made 'exit' see an empty output. 'close' waits for the pipe, so the line is always there.
  const child = spawn("sh", ["-c", "exec 3<&0; (read go <&3; printf '268435456 200 0 ') & exit 0"], { stdio: ["pipe", "pipe", "pipe"] });
  let stdoutAtExit: string | null = null;
  let seen = "";
  child.stdout.on("data", (b: Buffer) => { seen += b.toString(); });
  child.once("exit", () => {
    stdoutAtExit = seen;
    child.stdin.end("go\n");
  });
  const r = await collectChild(child);
  t.equal(stdoutAtExit, "", "at 'exit' nothing had been read yet (the race the old bench lost)");
  t.equal(r.stdout, "268435456 200 0 ", "collectChild has the whole result line");
  t.equal(r.exitCode, 0);
});

t.test("bench --profile-only writes PROFILE.md (cpu-prof always, the perf breakdown where perf exists) and leaves RESULTS.md alone", async (t) => {
  const out = await mkdtemp(path.join(os.tmpdir(), "bench-test-"));
  t.teardown(() => rm(out, { recursive: true, force: true }));
  await execFileP(process.execPath, [
    RUN_JS, "--quick", "--profile-only", "--only", "gopeer,capsul", "--out", out, "--big-mib", String(QUICK_BIG_MIB), "--seconds", "2",
  ], { timeout: 190_000, maxBuffer: 16 * 1024 * 1024 });
  const md = await readFile(path.join(out, "PROFILE.md"), "utf8");
  for (const role of ["hub", "cog"]) {
    for (const load of ["bulk", "keep-alive"]) t.match(md, new RegExp(`^### ${role} under ${load}`, "m"), `${role} profiled under ${load}`);
  }
  t.match(md, /^\| [\d.]+ \| \d+ \| `/m, "profile rows with self time");
  t.match(md, /^## Where the CPU goes, by kind of work/m);
  if (perfAvailable()) {
    t.match(md, /^\| category \| capsul hub \| capsul cog \| gopeer hub \| gopeer cog \|$/m, "perf breakdown for both proxies");
    t.match(md, /^\| \*\*total CPU s\/GiB\*\* \| \*\*\d+\.\d\d\*\* \| \*\*\d+\.\d\d\*\* \| \*\*\d+\.\d\d\*\* \| \*\*\d+\.\d\d\*\* \|$/m);
  } else {
    t.match(md, /perf is not installed here \(`apt-get install linux-perf`\)/, "says why the breakdown is missing");
  }
  await t.rejects(readFile(path.join(out, "RESULTS.md"), "utf8"), "no RESULTS.md written");
});
