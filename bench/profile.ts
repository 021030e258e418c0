/**
 * `--profile`: runs capsul's hub and cog under `node --cpu-prof`, once under bulk load
 * and once under keep-alive load, and sums each .cpuprofile by function (self time).
 * Also usable alone: node dist/bench/profile.js FILE.cpuprofile [TOP]
 */
import { readdir, readFile } from "node:fs/promises";
import path from "node:path";
import { fileURLToPath } from "node:url";
import type { Backend } from "./backend.js";
import { bulk, wrk, WRK_CONNECTIONS } from "./load.js";
import type { Options } from "./options.js";
import type { RunningPath } from "./paths.js";

export const PROFILE_TOP_FUNCTIONS = 15;

interface CpuProfile {
  nodes: { id: number; callFrame: { functionName: string; url: string; lineNumber: number } }[];
  samples: number[];
  timeDeltas: number[];
}

export interface SelfTime { name: string; ms: number; share: number }

/** Self time per function (name + file:line), busiest first; (idle) excluded from the shares. */
export function summarize(p: CpuProfile): { totalMs: number; top: SelfTime[] } {
  const byId = new Map(p.nodes.map((n) => [n.id, n]));
  const self = new Map<string, number>();
  for (let i = 0; i < p.samples.length; i++) {
    const n = byId.get(p.samples[i]);
    if (!n) continue;
    const cf = n.callFrame;
    const file = cf.url ? `${cf.url.replace(/^file:\/\/.*?\/(dist|node_modules)\//, "$1/")}:${cf.lineNumber + 1}` : "";
    const key = `${cf.functionName || "(anonymous)"}${file ? " " + file : ""}`;
    self.set(key, (self.get(key) ?? 0) + (p.timeDeltas[i] ?? 0) / 1000);
  }
  self.delete("(idle)");
  const totalMs = [...self.values()].reduce((a, b) => a + b, 0);
  const top = [...self.entries()].sort((a, b) => b[1] - a[1]).map(([name, ms]) => ({ name, ms, share: ms / totalMs }));
  return { totalMs, top };
}

export function renderSummary(title: string, s: { totalMs: number; top: SelfTime[] }, n = PROFILE_TOP_FUNCTIONS): string {
  const lines = [`### ${title}`, "", `busy ${(s.totalMs / 1000).toFixed(2)} s (idle excluded)`, "", "| self % | self ms | function |", "| ---: | ---: | --- |"];
  for (const t of s.top.slice(0, n)) lines.push(`| ${(t.share * 100).toFixed(1)} | ${t.ms.toFixed(0)} | \`${t.name}\` |`);
  return lines.join("\n") + "\n";
}

export async function profileCapsul(
  o: Options, tmp: string, be: Backend, resolveScript: string, start: (nodeArgs: string[]) => Promise<RunningPath>,
): Promise<string> {
  const out: string[] = ["# capsul hub and cog CPU profiles", "", `Made by \`${o.command}\`: \`node --cpu-prof\` on the hub and cog processes, self time summed by function (bench/profile.ts).`, ""];
  const loads: [string, (port: number) => Promise<unknown>][] = [
    ["bulk: 16 concurrent downloads of /big", (port) => bulk(port, 16, o.bigBytes, 600_000)],
    [`keep-alive: wrk ${WRK_CONNECTIONS} connections, ${o.seconds} s, /small`, (port) => wrk(port, { script: resolveScript, seconds: o.seconds, connections: WRK_CONNECTIONS })],
  ];
  for (const [i, [label, load]] of loads.entries()) {
    const dir = path.join(tmp, `prof-${i}`);
    const p = await start(["--cpu-prof", "--cpu-prof-dir", dir]);
    const pids = p.procs.map((x) => x.pid);
    try {
      await load(p.port);
    } finally {
      await p.stop();
    }
    const files = await readdir(dir);
    for (const [j, role] of ["hub", "cog"].entries()) {
      const f = files.find((x) => x.includes(`.${pids[j]}.`));
      if (!f) { out.push(`### ${role} under ${label}`, "", "no profile written (did the process exit cleanly?)", ""); continue; }
      const prof = JSON.parse(await readFile(path.join(dir, f), "utf8")) as CpuProfile;
      out.push(renderSummary(`${role} under ${label}`, summarize(prof)));
    }
  }
  return out.join("\n");
}

if (process.argv[1] === fileURLToPath(import.meta.url)) {
  const file = process.argv[2];
  readFile(file, "utf8").then((t) => {
    process.stdout.write(renderSummary(path.basename(file), summarize(JSON.parse(t) as CpuProfile), Number(process.argv[3] ?? PROFILE_TOP_FUNCTIONS)));
  }, (err: Error) => { process.stderr.write(`${err.message}\n`); process.exit(1); });
}
