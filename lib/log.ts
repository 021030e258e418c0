/**
 * The logger of every capsul process, on pino: one line per event, fields as a flat
 * object, never on the per-chunk hot path (an access line is written once per visitor
 * connection, at its close).
 *
 * Two formats of the same event (README, "Logs"):
 * - json: pino's line, `{"level":"info","time":"2026-…Z","component":"hub","tls":443,…,"msg":"hub ready"}`,
 *   for journald, Loki, jq. The default when stderr is not a terminal.
 * - text: `2026-…Z INFO  [hub] hub ready tls=443 …`, the line capsul always printed
 *   (tests match it). The default on a terminal.
 *
 * Secrets: fields named in REDACTED_FIELDS print as MASKED whatever holds them (pino's
 * `redact`, applied to both formats since text is made from the JSON line), URLs in
 * URL_FIELDS lose their password, and a `Masked` value prints as MASKED anywhere.
 *
 * Writes are synchronous (pino.destination sync, like Node's own stderr to files and
 * pipes): a line is in the file or the pipe when the call returns, so the one a crashing
 * process logs before exit 70 is not lost (cli/common.ts exitOnBugs). Log volume is a
 * few lines per tunnel event and, with the access log on, one per visitor connection.
 */
import pino from "pino";

type DestinationStream = pino.DestinationStream;
type PinoLogger = pino.Logger;
import { ConfigError } from "./errors.js";

export type Level = "debug" | "info" | "warn" | "error";
export const LOG_LEVELS: readonly Level[] = ["debug", "info", "warn", "error"];
/** `auto`: json when stderr is not a terminal (a service, a pipe, a file), text when it is. */
export type LogFormat = "json" | "text" | "auto";
export const LOG_FORMATS: readonly LogFormat[] = ["json", "text", "auto"];

/** Environment variables that override capsul.yaml's log.level and log.format. */
export const LOG_LEVEL_ENV = "CAPSUL_LOG";
export const LOG_FORMAT_ENV = "CAPSUL_LOG_FORMAT";

export class Masked {
  constructor(readonly value: string) {}
  toString(): string { return "MASKED"; }
  toJSON(): string { return "MASKED"; }
  [Symbol.for("nodejs.util.inspect.custom")](): string { return "MASKED"; }
}

export type Fields = Record<string, string | number | boolean | undefined | null | Masked>;

export interface Logger {
  debug(msg: string, fields?: Fields): void;
  info(msg: string, fields?: Fields): void;
  warn(msg: string, fields?: Fields): void;
  error(msg: string, fields?: Fields): void;
  child(component: string): Logger;
}

/**
 * Field names whose value is a secret, wherever it is logged: invite and provisioner
 * tokens, bearer tokens and Authorization headers, the store password, private keys
 * (PEM), ACME account keys. A field is named for what it holds, so a new secret logged
 * under one of these names is masked without anyone remembering to wrap it.
 */
export const REDACTED_FIELDS = [
  "token", "invite", "invite_token", "inviteToken", "bearer", "authorization", "password", "store_password", "storePassword",
  "secret", "private_key", "privateKey", "key_pem", "keyPem", "account_key", "accountKey", "csr_key",
] as const;
/** Fields that hold a URL: printed with any password in it replaced by MASKED (postgres://capsul:MASKED@db/capsul). */
export const URL_FIELDS = ["url", "store", "dsn", "directory"] as const;

/** `scheme://user:password@host` → `scheme://user:MASKED@host`; anything else as it is. */
export function maskUrlPassword(value: unknown): unknown {
  if (typeof value !== "string") return value;
  return value.replace(/^([a-z][a-z0-9+.-]*:\/\/[^/@:\s]*):[^/@\s]*@/i, "$1:MASKED@");
}

function fmtValue(v: unknown): string {
  const s = String(v);
  return /[\s"=]/.test(s) ? JSON.stringify(s) : s;
}

/** Keys of pino's line that the text format puts in front rather than as k=v. */
const HEAD_KEYS = new Set(["level", "time", "component", "msg"]);

/**
 * One JSON line from pino → capsul's text line: `ISO LEVEL [component] msg k=v …`, fields
 * in the order they were given; a value with blanks, quotes or `=` is JSON-quoted.
 */
export function jsonToText(json: string): string {
  const o = JSON.parse(json) as Record<string, unknown>;
  const level = String(o.level ?? "info");
  let line = `${String(o.time)} ${level.toUpperCase().padEnd(5)} ${o.component ? `[${String(o.component)}] ` : ""}${String(o.msg ?? "")}`;
  for (const [k, v] of Object.entries(o)) if (!HEAD_KEYS.has(k)) line += ` ${k}=${fmtValue(v)}`;
  return line;
}

/** A pino destination that hands each event, as capsul's text line, to `write` (no newline). */
function textStream(write: (line: string) => void): DestinationStream {
  return {
    write(chunk: string) {
      for (const json of chunk.split("\n")) if (json) write(jsonToText(json));
    },
  };
}

/** A pino destination that hands each event, as its JSON line, to `write` (no newline). */
function jsonStream(write: (line: string) => void): DestinationStream {
  return {
    write(chunk: string) {
      for (const json of chunk.split("\n")) if (json) write(json);
    },
  };
}

/** Standard error, written synchronously (see the file comment), shared by every logger of the process. */
let stderrDest: ReturnType<typeof pino.destination> | null = null;
function stderr(): ReturnType<typeof pino.destination> {
  stderrDest ??= pino.destination({ dest: 2, sync: true });
  return stderrDest;
}

/** Writes out anything a logger still holds (a no-op with sync writes, kept for exits: cli/common.ts). */
export function flushLogs(): void {
  try {
    stderrDest?.flushSync();
  } catch { /* nothing buffered, or stderr is gone: nothing to save */ }
}

/** `auto` → json or text for this process's stderr. */
export function resolveFormat(format: LogFormat, isTty: boolean = process.stderr.isTTY === true): "json" | "text" {
  return format === "auto" ? (isTty ? "text" : "json") : format;
}

/**
 * The level and format a hub, cog or command logs with: CAPSUL_LOG and CAPSUL_LOG_FORMAT
 * override capsul.yaml's log.level and log.format. A value that is not one of the
 * allowed ones is a ConfigError naming the variable (exit 2), not a silent default.
 */
export function logSettings(file: { level: Level; format: LogFormat } | undefined, env: NodeJS.ProcessEnv = process.env): { level: Level; format: LogFormat } {
  const pick = <T extends string>(name: string, allowed: readonly T[], fallback: T): T => {
    const v = env[name];
    if (v === undefined || v === "") return fallback;
    const low = v.toLowerCase() as T;
    if (!allowed.includes(low)) throw new ConfigError(`${name}=${JSON.stringify(v)} is not one of ${allowed.join(", ")}`);
    return low;
  };
  return {
    level: pick(LOG_LEVEL_ENV, LOG_LEVELS, file?.level ?? "info"),
    format: pick(LOG_FORMAT_ENV, LOG_FORMATS, file?.format ?? "auto"),
  };
}

export interface LoggerOptions {
  /** Default: $CAPSUL_LOG, else info (cli/common.ts makeLogger applies the precedence with capsul.yaml). */
  level?: Level;
  component?: string;
  /** Where lines go (one per call, without the newline): tests collect them. Default: stderr. */
  write?: (line: string) => void;
  /** Default: text when `write` is given (tests match text lines), else $CAPSUL_LOG_FORMAT, else auto. */
  format?: LogFormat;
}

function envLevel(): Level {
  const v = process.env[LOG_LEVEL_ENV]?.toLowerCase() as Level | undefined;
  return v !== undefined && LOG_LEVELS.includes(v) ? v : "info";
}

function envFormat(): LogFormat {
  const v = process.env[LOG_FORMAT_ENV]?.toLowerCase() as LogFormat | undefined;
  return v !== undefined && LOG_FORMATS.includes(v) ? v : "auto";
}

export function createLogger(opts: LoggerOptions = {}): Logger {
  const format = resolveFormat(opts.format ?? (opts.write ? "text" : envFormat()));
  let dest: DestinationStream;
  if (opts.write) dest = format === "text" ? textStream(opts.write) : jsonStream(opts.write);
  else dest = format === "text" ? textStream((line) => stderr().write(line + "\n")) : stderr();
  const root = pino({
    level: opts.level ?? envLevel(),
    base: null, // no pid or hostname in every line: journald and the supervisor know them
    timestamp: pino.stdTimeFunctions.isoTime,
    formatters: { level: (label) => ({ level: label }) },
    redact: {
      paths: [...REDACTED_FIELDS, ...URL_FIELDS],
      censor: (value: unknown, path: string[]) => ((URL_FIELDS as readonly string[]).includes(path[path.length - 1]!) ? maskUrlPassword(value) : "MASKED"),
    },
  }, dest);
  return wrap(root, opts.component);
}

function wrap(root: PinoLogger, component: string | undefined): Logger {
  const p = component ? root.child({ component }) : root;
  // pino's (fields, msg) order. With no arguments after it, the message is not used as
  // a format string: a `%` in it prints as it is (test/logs.test.ts).
  return {
    debug: (m, f) => p.debug(f ?? {}, m),
    info: (m, f) => p.info(f ?? {}, m),
    warn: (m, f) => p.warn(f ?? {}, m),
    error: (m, f) => p.error(f ?? {}, m),
    child: (c) => wrap(root, component ? `${component}/${c}` : c),
  };
}

/** A logger that drops everything; for tests and library defaults. */
export const silentLogger: Logger = {
  debug() {}, info() {}, warn() {}, error() {}, child() { return silentLogger; },
};
