/**
 * The reference hashicorp/yamux as an interop peer: test/interop/yamuxpeer (our own Go
 * program), built by scripts/build-go-peer.sh into ${TMPDIR:-/tmp}/capsul-go-peers/, keyed by
 * a hash of its sources, and reused. A failed build fails the test with the exact command
 * that fixes it; it never skips silently.
 */
import { execFile, spawn, type ChildProcess } from "node:child_process";
import path from "node:path";
import { fileURLToPath } from "node:url";
import { promisify } from "node:util";

const execFileP = promisify(execFile);

export const REPO_ROOT = path.resolve(path.dirname(fileURLToPath(import.meta.url)), "../..");
export const YAMUXPEER_DIR = path.join(REPO_ROOT, "test", "interop", "yamuxpeer");
export const BUILD_GO_PEER = path.join(REPO_ROOT, "scripts", "build-go-peer.sh");
export const YAMUXREF_APT_COMMAND = "apt-get update && apt-get install -y golang-go golang-github-hashicorp-yamux-dev";
/** Go build plus, the first time, apt-get: minutes on a cold machine (test/prereqs.sh builds it ahead). */
export const YAMUXREF_BUILD_TIMEOUT_MS = 10 * 60_000;

let built: Promise<string> | null = null;

/** The peer's binary path; builds it if its sources changed since the last build. */
export function buildYamuxref(): Promise<string> {
  built ??= (async () => {
    try {
      const { stdout } = await execFileP("bash", [BUILD_GO_PEER, YAMUXPEER_DIR], {
        timeout: YAMUXREF_BUILD_TIMEOUT_MS,
        maxBuffer: 64 * 1024 * 1024,
      });
      return stdout.trim().split("\n").pop()!;
    } catch (err) {
      const e = err as { stderr?: string; message: string };
      throw new Error(
        `could not build the yamux reference peer from ${YAMUXPEER_DIR}.\n` +
          `Install its build dependencies (as root) and re-run:\n    ${YAMUXREF_APT_COMMAND}\n` +
          `build error: ${(e.stderr ?? "").trim().split("\n").slice(-10).join("\n") || e.message}`,
        { cause: err },
      );
    }
  })();
  return built;
}

export interface RefProcess {
  child: ChildProcess;
  /** All stdout+stderr lines so far. */
  lines: string[];
  /** Resolves with the first line (past or future) matching `re`; rejects if the process exits first. */
  waitLine(re: RegExp): Promise<RegExpMatchArray>;
  exited: Promise<{ code: number | null; signal: NodeJS.Signals | null }>;
  kill(): Promise<void>;
}

export async function runYamuxref(args: string[]): Promise<RefProcess> {
  const bin = await buildYamuxref();
  const child = spawn(bin, args, { stdio: ["ignore", "pipe", "pipe"] });
  const lines: string[] = [];
  const waiters: Array<{ re: RegExp; resolve: (m: RegExpMatchArray) => void; reject: (e: Error) => void }> = [];
  let done = false;
  const exited = new Promise<{ code: number | null; signal: NodeJS.Signals | null }>((resolve) => {
    child.once("exit", (code, signal) => {
      done = true;
      for (const w of waiters.splice(0)) {
        w.reject(new Error(`yamuxpeer ${args.join(" ")} exited (${code ?? signal}) before printing ${w.re}:\n${lines.join("\n")}`));
      }
      resolve({ code, signal });
    });
  });
  const onText = (tail: { s: string }) => (chunk: Buffer) => {
    tail.s += chunk.toString();
    const parts = tail.s.split("\n");
    tail.s = parts.pop()!;
    for (const line of parts) {
      lines.push(line);
      for (let i = waiters.length - 1; i >= 0; i--) {
        const m = line.match(waiters[i]!.re);
        if (m) waiters.splice(i, 1)[0]!.resolve(m);
      }
    }
  };
  child.stdout!.on("data", onText({ s: "" }));
  child.stderr!.on("data", onText({ s: "" }));
  return {
    child,
    lines,
    exited,
    waitLine(re) {
      for (const line of lines) {
        const m = line.match(re);
        if (m) return Promise.resolve(m);
      }
      if (done) return Promise.reject(new Error(`yamuxpeer exited without printing ${re}:\n${lines.join("\n")}`));
      return new Promise((resolve, reject) => waiters.push({ re, resolve, reject }));
    },
    async kill() {
      if (!done) {
        child.kill("SIGTERM");
        await exited;
      }
    },
  };
}
