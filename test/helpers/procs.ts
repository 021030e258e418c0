/**
 * Child-process helpers for tests that drive the real `capsul` CLI
 * (`node dist/cli/main.js`): spawn it, wait for lines it prints (with a
 * deadline, never a fixed sleep), run one-shot commands, pick free ports,
 * write capsul.yaml files, and kill everything on teardown.
 */
import { spawn, execFile, type ChildProcess } from "node:child_process";
import fs from "node:fs";
import net from "node:net";
import path from "node:path";
import { fileURLToPath } from "node:url";
import { stringify } from "yaml";

export const REPO = path.resolve(path.dirname(fileURLToPath(import.meta.url)), "..", "..");
export const CLI = path.join(REPO, "dist", "cli", "main.js");

/** Default deadline for waiting on a process or a condition. */
export const WAIT_MS = 30_000;

/** Anything with tap's `teardown`, so helpers can register cleanups. */
export interface Teardown { teardown(fn: () => unknown): void }

/**
 * The environment for CLI children: ours, minus tap's coverage hooks
 * (NODE_OPTIONS --import of @tapjs/processinfo), which double the start-up
 * time of every short `capsul` run on this small machine. Logs in the text format
 * (their stderr is a pipe, where the default is JSON): the tests match text lines;
 * `extra` may ask for JSON (test/logs.test.ts).
 */
export function childEnv(extra: NodeJS.ProcessEnv = {}): NodeJS.ProcessEnv {
  const env: NodeJS.ProcessEnv = { ...process.env, CAPSUL_LOG_FORMAT: "text", ...extra };
  delete env.NODE_OPTIONS;
  delete env.NODE_V8_COVERAGE;
  return env;
}

export interface RunResult { code: number | null; signal: NodeJS.Signals | null; stdout: string; stderr: string }

/** Splits a stream's text into lines, dropping the final empty piece of a trailing newline. */
export function lines(text: string): string[] {
  const out = text.split("\n");
  if (out.length && out[out.length - 1] === "") out.pop();
  return out;
}

/** Runs the CLI to completion (bounded by `timeoutMs`, then SIGKILL). Never throws on a non-zero exit. */
export function runCli(args: string[], opts: { cwd?: string; env?: NodeJS.ProcessEnv; timeoutMs?: number } = {}): Promise<RunResult> {
  return new Promise((resolve, reject) => {
    const child = execFile(process.execPath, [CLI, ...args], {
      cwd: opts.cwd, env: opts.env ?? childEnv(), timeout: opts.timeoutMs ?? 60_000, killSignal: "SIGKILL", maxBuffer: 16 * 1024 * 1024,
    }, (err, stdout, stderr) => {
      if (err && child.exitCode === null && child.signalCode === null) { reject(err); return; }
      resolve({ code: child.exitCode, signal: child.signalCode, stdout: String(stdout), stderr: String(stderr) });
    });
  });
}

/** Runs any program (curl, openssl) to completion; never throws on a non-zero exit. */
export function runProgram(file: string, args: string[], timeoutMs = 60_000): Promise<RunResult> {
  return new Promise((resolve, reject) => {
    const child = execFile(file, args, { timeout: timeoutMs, killSignal: "SIGKILL", maxBuffer: 16 * 1024 * 1024 }, (err, stdout, stderr) => {
      if (err && child.exitCode === null && child.signalCode === null) { reject(err); return; }
      resolve({ code: child.exitCode, signal: child.signalCode, stdout: String(stdout), stderr: String(stderr) });
    });
  });
}

/** curl with a bounded run time; `-sS` so errors land on stderr. */
export function curl(args: string[]): Promise<RunResult> {
  return runProgram("curl", ["-sS", "--max-time", "20", ...args]);
}

type StreamName = "stdout" | "stderr";

export interface CliProcOptions { cwd?: string; env?: NodeJS.ProcessEnv; launcher?: boolean; bin?: string }

/** A long-running CLI child process whose output is collected line by line. */
export class CliProc {
  readonly child: ChildProcess;
  readonly out: Record<StreamName, string[]> = { stdout: [], stderr: [] };
  private readonly partial: Record<StreamName, string> = { stdout: "", stderr: "" };
  private readonly watchers = new Set<() => void>();
  readonly exited: Promise<{ code: number | null; signal: NodeJS.Signals | null }>;
  exit: { code: number | null; signal: NodeJS.Signals | null } | null = null;

  /**
   * `launcher`: run dist/cli/main.js itself (its shebang picks node and its flags) instead of `node main.js`.
   * `bin`: run this executable instead, e.g. the `capsul` an `npm i -g` installed.
   */
  constructor(readonly name: string, args: string[], opts: CliProcOptions = {}) {
    const [file, argv] = opts.bin ? [opts.bin, args] : opts.launcher ? [CLI, args] : [process.execPath, [CLI, ...args]];
    this.child = spawn(file, argv, { cwd: opts.cwd, env: opts.env ?? childEnv(), stdio: ["ignore", "pipe", "pipe"] });
    for (const s of ["stdout", "stderr"] as const) {
      const stream = this.child[s]!;
      stream.setEncoding("utf8");
      stream.on("data", (chunk: string) => this.onChunk(s, chunk));
    }
    this.exited = new Promise((resolve) => {
      this.child.once("exit", (code, signal) => {
        this.exit = { code, signal };
        resolve(this.exit);
        this.notify();
      });
      this.child.once("error", () => {
        this.exit ??= { code: null, signal: null };
        resolve(this.exit);
        this.notify();
      });
    });
  }

  private onChunk(s: StreamName, chunk: string): void {
    const text = this.partial[s] + chunk;
    const parts = text.split("\n");
    this.partial[s] = parts.pop()!;
    if (process.env.CAPSUL_TEST_LOG) for (const l of parts) process.stderr.write(`[${this.name} ${s}] ${l}\n`);
    this.out[s].push(...parts);
    this.notify();
  }

  private notify(): void {
    for (const w of [...this.watchers]) w();
  }

  get pid(): number { return this.child.pid!; }
  get alive(): boolean { return this.exit === null; }
  text(s: StreamName = "stderr"): string { return this.out[s].join("\n"); }

  /** Lines of `s` (from index `from` on) matching `re`. */
  matching(re: RegExp, s: StreamName = "stderr", from = 0): string[] {
    return this.out[s].slice(from).filter((l) => re.test(l));
  }

  /**
   * Waits for a line of `s` (at index `from` or later) matching `re`; returns
   * the regex match. Fails if the process exits first or the deadline passes.
   */
  waitLine(re: RegExp, opts: { stream?: StreamName; from?: number; timeoutMs?: number } = {}): Promise<RegExpExecArray> {
    const s = opts.stream ?? "stderr";
    const from = opts.from ?? 0;
    const timeoutMs = opts.timeoutMs ?? WAIT_MS;
    return new Promise((resolve, reject) => {
      let timer: NodeJS.Timeout | undefined = undefined;
      const check = (): void => {
        const list = this.out[s];
        for (let i = from; i < list.length; i++) {
          const m = re.exec(list[i]!);
          if (m) { finish(); resolve(m); return; }
        }
        if (this.exit) {
          finish();
          reject(new Error(`${this.name} exited (${this.exit.code ?? this.exit.signal}) before printing ${re} on ${s}; stderr:\n${this.text("stderr")}\nstdout:\n${this.text("stdout")}`));
        }
      };
      const finish = (): void => { this.watchers.delete(check); clearTimeout(timer); };
      timer = setTimeout(() => {
        finish();
        reject(new Error(`${this.name}: no line matching ${re} on ${s} within ${timeoutMs} ms; it printed:\n${this.text(s)}`));
      }, timeoutMs);
      this.watchers.add(check);
      check();
    });
  }

  /** Waits for the process to exit, or fails after the deadline. */
  async waitExit(timeoutMs = WAIT_MS): Promise<{ code: number | null; signal: NodeJS.Signals | null }> {
    let timer: NodeJS.Timeout | undefined;
    const deadline = new Promise<never>((_, reject) => {
      timer = setTimeout(() => reject(new Error(`${this.name} did not exit within ${timeoutMs} ms; stderr:\n${this.text("stderr")}`)), timeoutMs);
    });
    try {
      return await Promise.race([this.exited, deadline]);
    } finally {
      clearTimeout(timer);
    }
  }

  kill(signal: NodeJS.Signals = "SIGTERM"): void {
    if (this.alive) this.child.kill(signal);
  }

  /** SIGTERM, then SIGKILL if it is still running after `graceMs`; resolves once it has exited. */
  async stop(graceMs = 10_000): Promise<void> {
    if (!this.alive) return;
    this.kill("SIGTERM");
    const timer = setTimeout(() => this.kill("SIGKILL"), graceMs);
    await this.exited;
    clearTimeout(timer);
  }
}

/** Spawns the CLI and registers a teardown that kills it (SIGKILL) if it is still running. */
export function spawnCli(t: Teardown, name: string, args: string[], opts: CliProcOptions = {}): CliProc {
  const p = new CliProc(name, args, opts);
  t.teardown(async () => {
    if (p.alive) {
      p.kill("SIGKILL");
      await p.exited;
    }
  });
  return p;
}

/** Polls `fn` until it returns a truthy value, or fails after `timeoutMs`. */
export async function waitFor<T>(what: string, fn: () => T | Promise<T>, opts: { timeoutMs?: number; intervalMs?: number } = {}): Promise<NonNullable<T>> {
  const deadline = Date.now() + (opts.timeoutMs ?? WAIT_MS);
  let last: unknown;
  for (;;) {
    try {
      const v = await fn();
      if (v) return v as NonNullable<T>;
      last = v;
    } catch (err) {
      last = err;
    }
    if (Date.now() > deadline) throw new Error(`timed out waiting for ${what}; last: ${last instanceof Error ? last.message : JSON.stringify(last)}`);
    await new Promise((r) => setTimeout(r, opts.intervalMs ?? 200));
  }
}

/** A port on 127.0.0.1 that was free a moment ago. */
export function freePort(): Promise<number> {
  return new Promise((resolve, reject) => {
    const s = net.createServer();
    s.once("error", reject);
    s.listen(0, "127.0.0.1", () => {
      const port = (s.address() as net.AddressInfo).port;
      s.close(() => resolve(port));
    });
  });
}

function portFree(port: number): Promise<boolean> {
  return new Promise((resolve) => {
    const s = net.createServer();
    s.once("error", () => resolve(false));
    s.listen(port, "127.0.0.1", () => s.close(() => resolve(true)));
  });
}

/**
 * A range of `size` consecutive free ports below the kernel's ephemeral range,
 * starting at a random place in [lo, hi) so parallel test files rarely meet.
 */
export async function freePortRange(size: number, lo = 23000, hi = 32000): Promise<{ from: number; to: number; spec: string }> {
  const slots = Math.floor((hi - lo) / size);
  const first = Math.floor(Math.random() * slots);
  for (let i = 0; i < slots; i++) {
    const from = lo + ((first + i) % slots) * size;
    let ok = true;
    for (let p = from; p < from + size && ok; p++) ok = await portFree(p);
    if (ok) return { from, to: from + size - 1, spec: `${from}-${from + size - 1}` };
  }
  throw new Error(`no ${size} free consecutive ports in ${lo}-${hi}`);
}

/** Writes `doc` as YAML to `file` (creating its directory) and returns the path. */
export function writeYaml(file: string, doc: unknown): string {
  fs.mkdirSync(path.dirname(file), { recursive: true });
  fs.writeFileSync(file, stringify(doc));
  return file;
}

/** Connects to 127.0.0.1:port; resolves "connected" or the error code (e.g. ECONNREFUSED). */
export function probePort(port: number): Promise<string> {
  return new Promise((resolve) => {
    const s = net.connect({ port, host: "127.0.0.1" });
    s.once("connect", () => { s.destroy(); resolve("connected"); });
    s.once("error", (err: NodeJS.ErrnoException) => resolve(err.code ?? err.message));
  });
}

/** True while a process with this pid exists. */
export function pidAlive(pid: number): boolean {
  try {
    process.kill(pid, 0);
    return true;
  } catch {
    return false;
  }
}

/** Maps `items` through `fn` with at most `limit` running at once; results keep their order. */
export async function mapLimit<T, R>(items: readonly T[], limit: number, fn: (item: T, i: number) => Promise<R>): Promise<R[]> {
  const out = new Array<R>(items.length);
  let next = 0;
  const worker = async (): Promise<void> => {
    while (next < items.length) {
      const i = next++;
      out[i] = await fn(items[i]!, i);
    }
  };
  await Promise.all(Array.from({ length: Math.min(limit, items.length) }, worker));
  return out;
}
