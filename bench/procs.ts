/**
 * Child processes of the bench: spawn with a raised fd limit, wait for a log line,
 * read RSS and CPU time from /proc, stop by pid (never by name).
 */
import { spawn, execFile, execFileSync, type ChildProcess } from "node:child_process";
import { readFileSync } from "node:fs";
import { promisify } from "node:util";

export const execFileP = promisify(execFile);

/**
 * Every bench child gets the hard fd limit (10k idle visitors cost 1-2 fds each in a
 * proxy). Containers often cap it (20000 here) and root cannot raise it without
 * CAP_SYS_RESOURCE, so we read it rather than assume.
 */
export const BENCH_NOFILE = Number(execFileSync("bash", ["-c", "ulimit -Hn"]).toString().trim()) || 1024;
/** A server that has not printed its ready line within this is a failure, not a slow start. */
export const READY_TIMEOUT_MS = 30_000;
/** SIGTERM, then SIGKILL after this (a --cpu-prof process writes its profile on the way out). */
export const STOP_GRACE_MS = 10_000;
const CLK_TCK = 100; // getconf CLK_TCK on Linux x86-64

export interface Proc {
  name: string;
  child: ChildProcess;
  pid: number;
  /** stdout+stderr so far (capped), for error messages and readiness checks. */
  output(): string;
  /** Resolves with the regexp match once a line matching `re` was printed. */
  waitFor(re: RegExp, timeoutMs?: number): Promise<RegExpMatchArray>;
  stop(): Promise<void>;
}

const OUTPUT_CAP_CHARS = 256 * 1024;

/** Runs `cmd args` under `ulimit -n BENCH_NOFILE` (bash execs, so the pid is the program's). */
export function startProc(name: string, cmd: string, args: string[], opts: { cwd?: string; env?: NodeJS.ProcessEnv } = {}): Proc {
  const child = spawn("bash", ["-c", `ulimit -n ${BENCH_NOFILE} && exec "$@"`, "bash", cmd, ...args], {
    cwd: opts.cwd,
    env: opts.env ?? process.env,
    stdio: ["ignore", "pipe", "pipe"],
  });
  let out = "";
  const waiters: { re: RegExp; resolve: (m: RegExpMatchArray) => void }[] = [];
  const onChunk = (b: Buffer): void => {
    out += b.toString();
    if (out.length > OUTPUT_CAP_CHARS) out = out.slice(-OUTPUT_CAP_CHARS);
    for (let i = waiters.length - 1; i >= 0; i--) {
      const m = out.match(waiters[i].re);
      if (m) {
        waiters[i].resolve(m);
        waiters.splice(i, 1);
      }
    }
  };
  child.stdout!.on("data", onChunk);
  child.stderr!.on("data", onChunk);
  let exited = false;
  const exitP = new Promise<void>((resolve) => child.on("exit", () => { exited = true; resolve(); }));
  if (child.pid === undefined) throw new Error(`${name}: could not spawn ${cmd}`);
  const pid = child.pid;
  return {
    name,
    child,
    pid,
    output: () => out,
    waitFor(re, timeoutMs = READY_TIMEOUT_MS) {
      const m = out.match(re);
      if (m) return Promise.resolve(m);
      return new Promise((resolve, reject) => {
        const timer = setTimeout(() => reject(new Error(`${name}: no line matching ${re} within ${timeoutMs} ms; output:\n${out.slice(-4000)}`)), timeoutMs);
        const w = { re, resolve: (mm: RegExpMatchArray) => { clearTimeout(timer); resolve(mm); } };
        waiters.push(w);
        void exitP.then(() => {
          if (waiters.includes(w)) {
            clearTimeout(timer);
            reject(new Error(`${name}: exited (code ${child.exitCode}) before printing ${re}; output:\n${out.slice(-4000)}`));
          }
        });
      });
    },
    async stop() {
      if (exited) return;
      child.kill("SIGTERM");
      const t = setTimeout(() => { if (!exited) child.kill("SIGKILL"); }, STOP_GRACE_MS);
      await exitP;
      clearTimeout(t);
    },
  };
}

export interface ChildResult {
  stdout: string;
  stderr: string;
  exitCode: number | null;
  signal: NodeJS.Signals | null;
}

/**
 * Everything a short-lived child printed, once it has exited AND its stdout/stderr are
 * closed ('close'). Never use 'exit' for this: Node emits it as soon as the process is
 * reaped, possibly before the last bytes on its pipes were read. Under load that race
 * turned complete curl downloads into "0 bytes" in the bench (see bench/RESULTS.md).
 */
export function collectChild(child: ChildProcess): Promise<ChildResult> {
  return new Promise((resolve, reject) => {
    let stdout = "";
    let stderr = "";
    child.stdout?.on("data", (b: Buffer) => { stdout += b.toString(); });
    child.stderr?.on("data", (b: Buffer) => { stderr += b.toString(); });
    child.on("error", reject);
    child.on("close", (exitCode: number | null, signal: NodeJS.Signals | null) => resolve({ stdout, stderr, exitCode, signal }));
  });
}

/** Resident set size in bytes (VmRSS). */
export function rssBytes(pid: number): number {
  const m = readFileSync(`/proc/${pid}/status`, "utf8").match(/^VmRSS:\s+(\d+) kB/m);
  if (!m) throw new Error(`no VmRSS for pid ${pid}`);
  return Number(m[1]) * 1024;
}

/** utime + stime of the process (all its threads), in seconds. */
export function cpuSeconds(pid: number): number {
  const stat = readFileSync(`/proc/${pid}/stat`, "utf8");
  // comm may contain spaces and parens: fields start after the last ')'.
  const f = stat.slice(stat.lastIndexOf(")") + 2).split(" ");
  // f[0] is field 3 (state); utime is field 14, stime field 15.
  return (Number(f[11]) + Number(f[12])) / CLK_TCK;
}

/** The live children of a process (a hub primary's workers); [] for none, or a process that is gone. */
export function childPids(pid: number): number[] {
  try {
    return readFileSync(`/proc/${pid}/task/${pid}/children`, "utf8").trim().split(/\s+/).filter(Boolean).map(Number);
  } catch {
    return []; // no children file: the process is gone
  }
}

/**
 * Whether a process still runs: a zombie (state Z, dead and waiting to be reaped, which an
 * orphan's reaper may take a second or more to do) holds no socket or file any more, so it
 * counts as gone.
 */
export function isRunning(pid: number): boolean {
  let stat: string;
  try { stat = readFileSync(`/proc/${pid}/stat`, "utf8"); } catch { return false; }
  const state = stat.slice(stat.lastIndexOf(")") + 2, stat.lastIndexOf(")") + 3);
  return state !== "Z" && state !== "X";
}

/** A process's CPU seconds plus those of its live children (a hub's workers); 0 for one that is gone. */
export function treeCpuSeconds(pid: number): number {
  let total = 0;
  try { total = cpuSeconds(pid); } catch { return 0; }
  for (const k of childPids(pid)) total += treeCpuSeconds(k);
  return total;
}

/**
 * A process's own CPU seconds (utime+stime of its threads, not its children's: a hub primary
 * apart from its workers), NaN for one that is gone, so a figure taken from a dead pid shows
 * as null in a JSON result rather than as a plausible 0.
 */
export function ownCpuSeconds(pid: number): number {
  try { return cpuSeconds(pid); } catch { return NaN; }
}

/** Samples the max VmRSS of some pids every `everyMs` until stopped. */
export function rssSampler(pids: number[], everyMs = 200): { stop(): number[] } {
  const max = pids.map((p) => rssBytes(p));
  const timer = setInterval(() => {
    pids.forEach((p, i) => { try { max[i] = Math.max(max[i], rssBytes(p)); } catch { /* exited */ } });
  }, everyMs);
  return { stop() { clearInterval(timer); pids.forEach((p, i) => { try { max[i] = Math.max(max[i], rssBytes(p)); } catch { /* exited */ } }); return max; } };
}

export function sleep(ms: number): Promise<void> {
  return new Promise((r) => setTimeout(r, ms));
}

/** Runs a program to completion and returns stdout; rejects with its stderr on failure. */
export async function run(cmd: string, args: string[], opts: { cwd?: string; timeoutMs?: number } = {}): Promise<string> {
  try {
    const { stdout } = await execFileP(cmd, args, { cwd: opts.cwd, timeout: opts.timeoutMs ?? 120_000, maxBuffer: 64 * 1024 * 1024 });
    return stdout;
  } catch (err) {
    const e = err as Error & { stderr?: string };
    throw new Error(`${cmd} ${args.join(" ")} failed: ${e.message}\n${e.stderr ?? ""}`, { cause: err });
  }
}
