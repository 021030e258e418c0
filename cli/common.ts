import fs from "node:fs";
import { CommanderError, type Command } from "commander";
import path from "node:path";
import { loadConfigFile } from "../config/config.js";
import type { CapsulConfig } from "../config/types.js";
import { ConfigError } from "../lib/errors.js";
import { createLogger, type Logger } from "../lib/log.js";
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

export function makeLogger(cfg?: CapsulConfig): Logger {
  return createLogger({ level: cfg?.log.level ?? "info" });
}

export function exitCodeFor(err: unknown): number {
  return err instanceof ConfigError ? 2 : 1;
}

export function reportError(err: unknown, verbose: boolean): void {
  const e = err instanceof Error ? err : new Error(String(err));
  const line = e instanceof ConfigError ? `capsul: config error: ${e.message}` : `capsul: ${e.message}`;
  process.stderr.write(line.split("\n")[0] + "\n");
  if (verbose && e.stack) process.stderr.write(e.stack + "\n");
}

/**
 * A long-running hub or cog serves many people at once: one visitor tripping a
 * bug must not take everybody's connections down. Log it loudly and go on.
 */
export function surviveBugs(log: Logger): void {
  process.on("uncaughtException", (err) => {
    log.error("internal error (a bug: please report it)", { error: err.message, stack: err.stack?.split("\n")[1]?.trim() });
  });
  process.on("unhandledRejection", (err) => {
    log.error("internal error (a bug: please report it)", { error: err instanceof Error ? err.message : String(err) });
  });
}

/**
 * Runs until SIGINT/SIGTERM, then closes and resolves. Every long-running command
 * (hub, cog, demo) comes through here, so this is also where a node started without
 * capsul's heap flags says so, once.
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
        resolve();
      });
    };
    const onInt = (): void => stop("SIGINT");
    const onTerm = (): void => stop("SIGTERM");
    process.on("SIGINT", onInt);
    process.on("SIGTERM", onTerm);
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
