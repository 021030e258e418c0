/**
 * Line-oriented logger: one line per event, `key=value` fields, never on the
 * per-chunk hot path. Secrets are wrapped in `Masked` so they print as MASKED.
 */
export type Level = "debug" | "info" | "warn" | "error";
const LEVELS: Record<Level, number> = { debug: 10, info: 20, warn: 30, error: 40 };

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

function fmtValue(v: unknown): string {
  const s = String(v);
  return /[\s"=]/.test(s) ? JSON.stringify(s) : s;
}

export function createLogger(opts: { level?: Level; component?: string; write?: (line: string) => void } = {}): Logger {
  const min = LEVELS[opts.level ?? ((process.env.CAPSUL_LOG as Level | undefined) ?? "info")] ?? LEVELS.info;
  const write = opts.write ?? ((line: string) => process.stderr.write(line + "\n"));
  const component = opts.component;
  const emit = (level: Level, msg: string, fields?: Fields): void => {
    if (LEVELS[level] < min) return;
    let line = `${new Date().toISOString()} ${level.toUpperCase().padEnd(5)} ${component ? `[${component}] ` : ""}${msg}`;
    if (fields) for (const [k, v] of Object.entries(fields)) if (v !== undefined) line += ` ${k}=${fmtValue(v)}`;
    write(line);
  };
  return {
    debug: (m, f) => emit("debug", m, f),
    info: (m, f) => emit("info", m, f),
    warn: (m, f) => emit("warn", m, f),
    error: (m, f) => emit("error", m, f),
    child: (c) => createLogger({ ...opts, component: component ? `${component}/${c}` : c }),
  };
}

/** A logger that drops everything; for tests and library defaults. */
export const silentLogger: Logger = {
  debug() {}, info() {}, warn() {}, error() {}, child() { return silentLogger; },
};
