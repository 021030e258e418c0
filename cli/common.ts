import fs from "node:fs";
import { CommanderError, type Command } from "commander";
import path from "node:path";
import { loadConfigFile } from "../config/config.js";
import type { CapsulConfig } from "../config/types.js";
import { ConfigError } from "../lib/errors.js";
import { createLogger, flushLogs, logSettings, type Logger } from "../lib/log.js";
import { missingHeapFlags, NODE_HEAP_FLAGS } from "./runtime.js";

/** Where `-c` looks when it is not given. */
export const DEFAULT_CONFIG_PATHS = ["capsul.yaml", "/etc/capsul/capsul.yaml"];

export function findConfig(explicit: string | undefined): string {
  if (explicit) return explicit;
  for (const p of DEFAULT_CONFIG_PATHS) if (fs.existsSync(p)) return p;
  throw new ConfigError(`no capsul.yaml found (looked for ${DEFAULT_CONFIG_PATHS.join(", ")}); pass -c FILE (capsul.yaml.example documents every key)`);
}

export function loadConfig(explicit: string | undefined): { cfg: CapsulConfig; file: string } {
  const file = findConfig(explicit);
  return { cfg: loadConfigFile(path.resolve(file)), file };
}

export function requireHub(cfg: CapsulConfig, file: string): NonNullable<CapsulConfig["hub"]> {
  if (!cfg.hub) throw new ConfigError(`${file} has no hub: section`);
  return cfg.hub;
}

export function requireCog(cfg: CapsulConfig, file: string): NonNullable<CapsulConfig["cog"]> {
  if (!cfg.cog) throw new ConfigError(`${file} has no cog: section`);
  return cfg.cog;
}

/**
 * The logger of a command, hub or cog: capsul.yaml's log.level and log.format, each
 * overridden by CAPSUL_LOG / CAPSUL_LOG_FORMAT when set (a bad value is a ConfigError
 * naming the variable: exit 2).
 */
export function makeLogger(cfg?: CapsulConfig): Logger {
  return createLogger(logSettings(cfg?.log));
}

export function exitCodeFor(err: unknown): number {
  return err instanceof ConfigError ? 2 : 1;
}

/** The one line an error is reported with, at start (reportError) and by a refused reload (cli/service.ts). */
export function errorLine(err: unknown): string {
  const e = err instanceof Error ? err : new Error(String(err));
  const line = e instanceof ConfigError ? `capsul: config error: ${e.message}` : `capsul: ${e.message}`;
  return line.split("\n")[0]!;
}

export function reportError(err: unknown, verbose: boolean): void {
  const e = err instanceof Error ? err : new Error(String(err));
  process.stderr.write(errorLine(e) + "\n");
  if (verbose && e.stack) process.stderr.write(e.stack + "\n");
}

/**
 * Exit status of a hub, cog or demo that hit a bug: EX_SOFTWARE of sysexits.h, neither
 * 1 (runtime failure) nor 2 (usage or config error), so that the journal's
 * "status=70" says "bug" and systemd's Restart=on-failure restarts it (deploy/*.service
 * keeps exit 2 from restarting: a bad capsul.yaml stays bad).
 */
export const EXIT_INTERNAL_ERROR = 70;

/**
 * An uncaught exception or unhandled rejection in a long-running hub or cog is a bug
 * whose damage nobody can bound: it may have left a tunnel registry, a stream's flow-
 * control window or a SQLite transaction half updated, and every later visitor would
 * meet that state. So log it (one line, message and stack, at error level) and exit
 * at once, without running the graceful close over that state; the service manager
 * restarts a clean process (deploy/capsul-*.service: Restart=on-failure, RestartSec).
 * What that costs: live visitor connections drop (clients reconnect), cogs reconnect
 * by themselves with backoff, and QEMU VMs keep running (they are daemonized and,
 * under systemd, in scopes of their own: provisioner/scope.ts) and are re-adopted on
 * the next start.
 * The log line is complete before exit: lib/log.ts writes stderr synchronously (pino's
 * sync destination, like Node's own stderr on Linux for files, pipes and sockets,
 * journald's stream socket included), and flushLogs() writes out anything left anyway.
 */
export function exitOnBugs(log: Logger): void {
  const die = (kind: string, err: unknown): void => {
    const e = err instanceof Error ? err : new Error(`${kind} of a non-Error value: ${String(err)}`);
    log.error("internal error (a bug: please report it); exiting", { kind, error: e.message, stack: e.stack, exit: EXIT_INTERNAL_ERROR });
    flushLogs();
    process.exit(EXIT_INTERNAL_ERROR);
  };
  process.on("uncaughtException", (err) => die("uncaught exception", err));
  process.on("unhandledRejection", (err) => die("unhandled rejection", err));
}

/**
 * Runs until SIGINT/SIGTERM, then closes and resolves: `capsul demo`. (`capsul hub` and
 * `capsul cog` reload and drain: cli/service.ts.) A node started without capsul's heap
 * flags says so here, once.
 */
export function untilSignal(close: () => Promise<void>, log: Logger): Promise<void> {
  const missing = missingHeapFlags();
  if (missing.length) {
    log.info(`node was started without ${missing.join(" ")}: bulk transfers will spend ~30% more CPU on garbage collection; start capsul as \`capsul\` (npm link) or \`node ${NODE_HEAP_FLAGS.join(" ")} dist/cli/main.js\``);
  }
  return new Promise((resolve) => {
    let closing = false;
    const stop = (sig: string): void => {
      if (closing) return;
      closing = true;
      log.info("shutting down", { signal: sig });
      close().catch((err: Error) => log.error("shutdown failed", { error: err.message })).finally(() => {
        process.off("SIGINT", onInt);
        process.off("SIGTERM", onTerm);
        process.off("SIGHUP", onHup);
        resolve();
      });
    };
    const onInt = (): void => stop("SIGINT");
    const onTerm = (): void => stop("SIGTERM");
    // Node's default for SIGHUP is to die. `capsul hub` and `capsul cog` reload on it
    // (cli/service.ts); what comes through here (the demo) has nothing to reload.
    const onHup = (): void => log.warn("SIGHUP: the demo does not reload its configuration; nothing changed");
    process.on("SIGINT", onInt);
    process.on("SIGTERM", onTerm);
    process.on("SIGHUP", onHup);
  });
}

/**
 * Output for scripts (`--json`), one style for every command (README, "Commands"):
 * one JSON value on one line of stdout; keys in snake_case; instants as ISO-8601 UTC
 * strings under keys ending in `_at`; durations as numbers under keys ending in `_ms`;
 * absent values as null. test/cli-json.test.ts runs every command and checks this.
 */
export function printJson(value: unknown): void {
  process.stdout.write(JSON.stringify(value) + "\n");
}

/** An epoch-milliseconds instant as `printJson` wants it: ISO-8601 UTC, or null. */
export function isoTime(ms: number | null | undefined): string | null {
  return ms === null || ms === undefined ? null : new Date(ms).toISOString();
}

/** Left-aligned columns, two spaces apart. */
export function table(headers: string[], rows: string[][]): string {
  const w = headers.map((h, i) => Math.max(h.length, ...rows.map((r) => (r[i] ?? "").length)));
  const line = (cells: string[]): string => cells.map((c, i) => (i === cells.length - 1 ? c : c.padEnd(w[i]!))).join("  ").trimEnd();
  return [line(headers), ...rows.map(line)].join("\n");
}

/**
 * Parses and runs a commander program with capsul's exit codes: 0 ok, 1 runtime
 * failure, 2 usage or config error; errors as one line (+ stack with --verbose).
 */
export async function runProgram(program: Command, argv: string[] = process.argv): Promise<void> {
  try {
    await program.parseAsync(argv);
  } catch (err) {
    if (err instanceof CommanderError) {
      // commander already printed its message (or the help / version text)
      process.exitCode = err.exitCode === 0 ? 0 : 2;
    } else {
      reportError(err, argv.includes("--verbose"));
      process.exitCode = exitCodeFor(err);
    }
  }
}
