/**
 * What a long-running `capsul hub` or `capsul cog` does with signals, and how the
 * `reload` commands reach it.
 *
 * - SIGHUP: reload. The file the process started with is read and validated again, and
 *   applied as a difference (gateway/reload.ts, tunnel-client/reload.ts). A file that does
 *   not parse, or a change the process cannot take, changes nothing: the old configuration
 *   stays and the log says why, with the line `capsul hub -c FILE` would print at start.
 * - SIGTERM, SIGINT: drain (gateway/drain.ts, TunnelClient.drain), up to shutdown_grace,
 *   then close and exit 0. A second signal cuts what is still open at once.
 * - `<data_dir>/hub.pid` (or cog.pid) holds the pid while the process runs; `capsul hub
 *   reload` reads it, sends SIGHUP and waits for the outcome the process writes to
 *   `<data_dir>/hub-reload.json` (or cog-reload.json).
 */
import fs from "node:fs";
import path from "node:path";
import { setTimeout as delay } from "node:timers/promises";
import { loadConfigFile } from "../config/config.js";
import type { CapsulConfig } from "../config/types.js";
import { ConfigError, RuntimeError } from "../lib/errors.js";
import type { Logger } from "../lib/log.js";
import { sdNotify } from "../lib/sdnotify.js";
import { errorLine, exitCodeFor } from "./common.js";
import { missingHeapFlags, NODE_HEAP_FLAGS } from "./runtime.js";

export type Role = "hub" | "cog";

/** How long `capsul hub reload` waits for the running process to report the outcome. */
export const RELOAD_WAIT_TIMEOUT_MS = 30_000;
/** How often it looks for that report. */
export const RELOAD_POLL_INTERVAL_MS = 100;
/**
 * After a drain and close, the process ends by itself once nothing is left; should a
 * forgotten handle keep it alive, it exits 0 this much later anyway (systemd would
 * otherwise SIGKILL it at TimeoutStopSec and record a failure).
 */
export const EXIT_AFTER_CLOSE_MS = 5_000;

export const pidFile = (dataDir: string, role: Role): string => path.join(dataDir, `${role}.pid`);
export const reloadResultFile = (dataDir: string, role: Role): string => path.join(dataDir, `${role}-reload.json`);

/** What the running process writes after each reload: `capsul hub reload` prints it. */
export interface ReloadResult {
  pid: number;
  /** Reloads done by this process, this one included. */
  seq: number;
  at: string;
  ok: boolean;
  /** Key paths whose value changed ("nothing" when none did). */
  changed: string[];
  /** Changed keys that take effect after a restart. */
  restart: string[];
  /** Refused: the error's message, and whether it is a config (exit 2) or runtime (exit 1) error. */
  error: string | null;
  exit: number;
}

export interface Service {
  role: Role;
  /** The capsul.yaml the process started with (absolute): what a reload reads again. */
  file: string;
  dataDir: string;
  /** Applies the new file's section; throws (changing nothing) when it cannot. */
  reload(cfg: CapsulConfig): Promise<{ changed: string[]; restart: string[] }>;
  /** shutdown_grace in force now. */
  graceMs(): number;
  drain(graceMs: number, cutNow: AbortSignal): Promise<{ live: number; finished: number; cut: number }>;
  close(): Promise<void>;
  /**
   * A hub worker (gateway/workers.ts): the primary owns the pidfile and the reload result
   * file; reload, drain and cut arrive as its IPC messages too (a worker that also got the
   * signal itself drains once), and each reload outcome goes back to it.
   */
  underPrimary?: boolean;
}

/** Writes `data` to `file` so that a reader sees the old content or the new, never half. */
function writeAtomic(file: string, data: string): void {
  const tmp = `${file}.${process.pid}.tmp`;
  fs.writeFileSync(tmp, data);
  fs.renameSync(tmp, file);
}

/**
 * Runs until SIGTERM/SIGINT has drained and closed the service. Writes the pidfile
 * first and removes it (if still ours: a new process may have started while this one
 * drained) at the end.
 */
export function runService(svc: Service, startCfg: CapsulConfig, log: Logger): Promise<void> {
  const missing = missingHeapFlags();
  if (missing.length) {
    log.info(`node was started without ${missing.join(" ")}: bulk transfers will spend ~30% more CPU on garbage collection; start capsul as \`capsul\` (npm link) or \`node ${NODE_HEAP_FLAGS.join(" ")} dist/cli/main.js\``);
  }
  const pids = pidFile(svc.dataDir, svc.role);
  // A hub worker (cli/hubworkers.ts) leaves the pidfile and systemd's notifications to its primary.
  if (!svc.underPrimary) {
    writeAtomic(pids, `${process.pid}\n`);
    // Type=notify units (deploy/*.service): `systemctl start` returns now, not at exec.
    void sdNotify(["READY=1", `STATUS=${svc.role} running (pid ${process.pid})`], log);
  }
  // A worker's primary speaks to systemd for the whole hub (NotifyAccess=all would let a worker's RELOADING=1 stick).
  const notify = (lines: string[]): Promise<void> => (svc.underPrimary ? Promise.resolve() : sdNotify(lines, log));
  let seq = 0;
  let reloading: Promise<void> = Promise.resolve();
  let draining = false;

  const reloadOnce = async (): Promise<void> => {
    seq++;
    await notify(["RELOADING=1", `STATUS=reloading ${svc.file}`]);
    const result: ReloadResult = { pid: process.pid, seq, at: "", ok: false, changed: [], restart: [], error: null, exit: 0 };
    try {
      const cfg = loadConfigFile(svc.file);
      if (!cfg[svc.role]) throw new ConfigError(`${svc.file} has no ${svc.role}: section`);
      const report = await svc.reload(cfg);
      // The logger is made once at start (lib/log.ts): its level and format, like other restart keys, keep their running values.
      const logChanged = (["level", "format"] as const).filter((k) => cfg.log[k] !== startCfg.log[k]).map((k) => `log.${k}`);
      result.ok = true;
      result.changed = [...report.changed, ...logChanged];
      result.restart = [...report.restart, ...logChanged];
      log.info(result.changed.length ? "configuration reloaded" : "configuration reloaded: nothing changed", {
        file: svc.file, changed: result.changed.join(" ") || undefined,
      });
      for (const key of result.restart) log.warn(`${key} changed: it takes effect when capsul ${svc.role} restarts; the running ${svc.role} keeps the old value`);
    } catch (err) {
      result.error = (err as Error).message;
      result.exit = exitCodeFor(err);
      log.error(`reload refused, the running configuration stays: ${errorLine(err)}`);
    }
    result.at = new Date().toISOString();
    if (svc.underPrimary) {
      process.send?.({ type: "capsul-reloaded", ok: result.ok, changed: result.changed, restart: result.restart, error: result.error, exit: result.exit });
      return;
    }
    try {
      writeAtomic(reloadResultFile(svc.dataDir, svc.role), JSON.stringify(result) + "\n");
    } catch (err) {
      log.warn("could not write the reload result for capsul reload", { error: (err as Error).message });
    }
    const status = result.ok ? `reloaded at ${result.at}: ${result.changed.length ? `changed ${result.changed.join(" ")}` : "nothing changed"}`
      : `reload refused at ${result.at}, the running configuration stays: ${result.error}`;
    await sdNotify(["READY=1", `STATUS=${status}`], log);
  };

  return new Promise((resolve) => {
    const cutNow = new AbortController();
    const onHup = (): void => {
      if (draining) {
        log.warn("SIGHUP while shutting down: not reloading");
        return;
      }
      // One reload at a time; a SIGHUP during one runs after it, with the file as it is then.
      reloading = reloading.then(reloadOnce);
    };
    const stop = (signal: string): void => {
      if (draining) {
        if (!cutNow.signal.aborted) log.warn("second signal: cutting open connections now", { signal });
        cutNow.abort();
        return;
      }
      draining = true;
      const graceMs = svc.graceMs();
      log.info("shutting down: draining", { signal, grace: `${graceMs}ms` });
      void notify(["STOPPING=1", `STATUS=draining on ${signal}: open connections may finish for ${graceMs} ms`]);
      (async () => {
        await reloading;
        const r = await svc.drain(graceMs, cutNow.signal);
        log.info(`shut down: ${r.finished} of ${r.live} open connections finished, ${r.cut} cut`, { finished: r.finished, cut: r.cut });
        await svc.close();
      })().catch((err: Error) => log.error("shutdown failed", { error: err.message })).finally(() => {
        process.off("SIGHUP", onHup);
        process.off("SIGINT", onInt);
        process.off("SIGTERM", onTerm);
        process.off("message", onPrimary);
        try {
          if (!svc.underPrimary && fs.readFileSync(pids, "utf8").trim() === String(process.pid)) fs.rmSync(pids);
        } catch { /* gone already */ }
        setTimeout(() => process.exit(0), EXIT_AFTER_CLOSE_MS).unref();
        resolve();
      });
    };
    const onInt = (): void => stop("SIGINT");
    const onTerm = (): void => stop("SIGTERM");
    const onPrimary = (m: { type?: string } | null): void => {
      if (m?.type === "capsul-reload") onHup();
      else if (m?.type === "capsul-drain" && !draining) stop("drain from the primary");
      else if (m?.type === "capsul-cut" && draining) stop("cut from the primary");
    };
    if (svc.underPrimary) process.on("message", onPrimary);
    process.on("SIGHUP", onHup);
    process.on("SIGINT", onInt);
    process.on("SIGTERM", onTerm);
  });
}

function readResult(file: string): ReloadResult | null {
  try {
    return JSON.parse(fs.readFileSync(file, "utf8")) as ReloadResult;
  } catch {
    return null;
  }
}

/** The pid of the running hub or cog of this data dir; a RuntimeError saying why when there is none. */
export function runningPid(dataDir: string, role: Role): number {
  const file = pidFile(dataDir, role);
  let text: string;
  try {
    text = fs.readFileSync(file, "utf8");
  } catch {
    throw new RuntimeError(`no running capsul ${role} found: ${file} does not exist (is capsul ${role} running with ${role}.data_dir ${dataDir}?)`);
  }
  const pid = Number(text.trim());
  if (!Number.isInteger(pid) || pid <= 1) throw new RuntimeError(`${file} does not hold a pid: ${JSON.stringify(text.trim().slice(0, 40))}`);
  const stale = new RuntimeError(`no running capsul ${role} found: process ${pid} from ${file} is gone (a stale pidfile: the ${role} did not exit cleanly)`);
  try {
    process.kill(pid, 0);
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code === "ESRCH") throw stale;
  }
  // The pid may have been given to another program since: only a capsul of this role is signalled.
  try {
    const argv = fs.readFileSync(`/proc/${pid}/cmdline`, "utf8").split("\0");
    if (!argv.includes(role)) throw stale;
  } catch (err) {
    if (err instanceof RuntimeError) throw err;
    // No /proc (not Linux): the liveness check above is all there is.
  }
  return pid;
}

/** `capsul hub reload` / `capsul cog reload`: SIGHUP to the running process, then its outcome. */
export async function requestReload(dataDir: string, role: Role): Promise<{ pid: number; result: ReloadResult }> {
  const pid = runningPid(dataDir, role);
  const file = reloadResultFile(dataDir, role);
  const before = readResult(file);
  const isNew = (r: ReloadResult | null): r is ReloadResult =>
    r !== null && r.pid === pid && (before === null || before.pid !== pid || r.seq > before.seq);
  try {
    process.kill(pid, "SIGHUP");
  } catch (err) {
    const code = (err as NodeJS.ErrnoException).code;
    throw new RuntimeError(code === "EPERM" ? `not allowed to signal capsul ${role} (pid ${pid}): run this as its user or root` : `could not signal capsul ${role} (pid ${pid}): ${code}`);
  }
  const deadline = Date.now() + RELOAD_WAIT_TIMEOUT_MS;
  for (;;) {
    const r = readResult(file);
    if (isNew(r)) return { pid, result: r };
    if (Date.now() > deadline) {
      throw new RuntimeError(`sent SIGHUP to capsul ${role} (pid ${pid}) but it reported no outcome within ${RELOAD_WAIT_TIMEOUT_MS / 1000}s; see its log`);
    }
    await delay(RELOAD_POLL_INTERVAL_MS);
  }
}

/** Prints the outcome of requestReload(), or throws it as the error it was (exit 2 or 1). */
export function reportReload(role: Role, pid: number, file: string, r: ReloadResult, json: boolean): void {
  if (!r.ok) {
    const msg = `the running ${role} (pid ${pid}) refused the reload and keeps its configuration: ${r.error}`;
    throw r.exit === 2 ? new ConfigError(msg) : new RuntimeError(msg);
  }
  if (json) {
    process.stdout.write(JSON.stringify({ pid, file, changed: r.changed, restart_needed: r.restart, reloaded_at: r.at }) + "\n");
    return;
  }
  const what = r.changed.length ? `changed: ${r.changed.join(", ")}` : "nothing changed";
  let out = `capsul ${role} (pid ${pid}) reloaded ${file}: ${what}.\n`;
  for (const key of r.restart) out += `${key} takes effect when capsul ${role} restarts.\n`;
  process.stdout.write(out);
}
