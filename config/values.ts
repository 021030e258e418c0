/**
 * The value readers of capsul.yaml, used by the section parsers in ./config.ts.
 * Each takes the raw YAML value and its key path, and returns a typed value or
 * the default, or throws a one-line ConfigError that names the path.
 */
import { resolve } from "node:path";
import { ConfigError } from "../lib/errors.js";
import { normalizeHostname, normalizeHostnamePattern, suggestALabel } from "../lib/hostname.js";
import { parseDurationMs, parseSizeBytes } from "../lib/units.js";

export type Obj = Record<string, unknown>;

function describe(v: unknown): string {
  if (v === null || v === undefined) return "nothing";
  if (Array.isArray(v)) return "a list";
  if (typeof v === "object") return "a mapping";
  return `${typeof v === "number" ? "the number" : `a ${typeof v}`} ${JSON.stringify(v)}`;
}

export const at = (path: string, key: string) => (path ? `${path}.${key}` : key);

/** Levenshtein distance, for "did you mean" hints; keys are short, so O(n·m) is fine. */
function editDistance(a: string, b: string): number {
  let prev = Array.from({ length: b.length + 1 }, (_, j) => j);
  for (let i = 1; i <= a.length; i++) {
    const cur = [i];
    for (let j = 1; j <= b.length; j++) {
      cur[j] = Math.min(prev[j]! + 1, cur[j - 1]! + 1, prev[j - 1]! + (a[i - 1] === b[j - 1] ? 0 : 1));
    }
    prev = cur;
  }
  return prev[b.length]!;
}

function unknownKey(key: string, path: string, known: readonly string[]): ConfigError {
  // "dataDir" and "data-dir" are data_dir spelled another way: always suggest it.
  const squash = (s: string) => s.toLowerCase().replace(/[-_]/g, "");
  let best: string | undefined;
  let bestDistance = Infinity;
  for (const k of known) {
    const d = squash(k) === squash(key) ? 0 : editDistance(key, k);
    if (d < bestDistance) { best = k; bestDistance = d; }
  }
  const close = best !== undefined && bestDistance <= Math.min(2, Math.floor(best.length / 3));
  return new ConfigError(close ? `unknown key (did you mean "${best}"?)` : "unknown key", at(path, key));
}

/** A mapping whose keys are all in `known`; checked before any value, so a typo is reported as such. */
export function mapping(value: unknown, path: string, known: readonly string[]): Obj {
  if (value === null || typeof value !== "object" || Array.isArray(value)) {
    throw new ConfigError(`expected a mapping, got ${describe(value)}`, path || undefined);
  }
  for (const key of Object.keys(value)) if (!known.includes(key)) throw unknownKey(key, path, known);
  return value as Obj;
}

/** A list; absent or null is the empty list. */
export function list(value: unknown, path: string): unknown[] {
  if (value === undefined || value === null) return [];
  if (!Array.isArray(value)) throw new ConfigError(`expected a list, got ${describe(value)}`, path);
  return value;
}

// In every reader below, absent and null mean "use the default" (an empty YAML
// value is usually a section whose keys are all commented out); a required key
// has no default.

export function required(path: string): never {
  throw new ConfigError("required", path);
}

export function string(value: unknown, path: string, def?: string): string {
  if (value === undefined || value === null) return def ?? required(path);
  if (typeof value !== "string" || value === "") throw new ConfigError(`expected a non-empty string, got ${describe(value)}`, path);
  return value;
}

export function boolean(value: unknown, path: string, def: boolean): boolean {
  if (value === undefined || value === null) return def;
  if (typeof value !== "boolean") throw new ConfigError(`expected true or false, got ${describe(value)}`, path);
  return value;
}

export function integer(value: unknown, path: string, def: number | undefined, min: number, max = Number.MAX_SAFE_INTEGER): number {
  if (value === undefined || value === null) return def ?? required(path);
  if (typeof value !== "number" || !Number.isInteger(value)) throw new ConfigError(`expected an integer, got ${describe(value)}`, path);
  if (value < min || value > max) {
    throw new ConfigError(max === Number.MAX_SAFE_INTEGER ? `must be at least ${min}, got ${value}` : `out of range (${min}-${max}): ${value}`, path);
  }
  return value;
}

export function oneOf<T extends string>(value: unknown, path: string, choices: readonly T[], def?: T): T {
  if (value === undefined || value === null) return def ?? required(path);
  if (!choices.includes(value as T)) throw new ConfigError(`expected one of ${choices.join(", ")}, got ${describe(value)}`, path);
  return value as T;
}

/**
 * A duration; `min` 0 allows "off", 1 requires a positive duration. With `max`
 * (for values a consumer range-checks as integers, e.g. MuxOptions) it must also
 * be a whole number of milliseconds no greater than `max`.
 */
export function duration(value: unknown, path: string, def: number, min: 0 | 1, max?: number): number {
  if (value === undefined || value === null) return def;
  const ms = parseDurationMs(value, path);
  if (ms < min) throw new ConfigError("must be greater than 0", path);
  if (max !== undefined) {
    // Strings are rounded to whole ms by parseDurationMs; only a bare number can carry a fraction.
    if (!Number.isInteger(ms)) throw new ConfigError(`must be a whole number of milliseconds, got ${ms}`, path);
    if (ms > max) throw new ConfigError(`must be at most ${fmtMs(max)}, got ${fmtMs(ms)}`, path);
  }
  return ms;
}

export function size(value: unknown, path: string, def: number, min: number, max = Number.MAX_SAFE_INTEGER): number {
  if (value === undefined || value === null) return def;
  const bytes = parseSizeBytes(value, path);
  if (bytes < min) throw new ConfigError(`must be at least ${min} bytes, got ${bytes}`, path);
  if (bytes > max) throw new ConfigError(`must be at most ${max} bytes, got ${bytes}`, path);
  return bytes;
}

/**
 * Bytes per second: a size with an optional "/s" ("2MiB/s", "500KB/s", a bare number of
 * bytes), or 0, "off" or false for unlimited (0). `min` applies to a limit that is on.
 */
export function rate(value: unknown, path: string, def: number, min: number): number {
  if (value === undefined || value === null) return def;
  if (value === false || value === "off" || value === 0) return 0;
  const text = typeof value === "string" ? value.trim().replace(/\/s$/, "") : value;
  let bytes: number;
  try {
    bytes = parseSizeBytes(text, path);
  } catch {
    throw new ConfigError(`not a rate (use e.g. 2MiB/s, 500KiB/s, or off): ${JSON.stringify(value)}`, path);
  }
  if (bytes === 0) return 0;
  if (bytes < min) throw new ConfigError(`must be at least ${fmtBytes(min)}/s (or off), got ${bytes} bytes/s`, path);
  return bytes;
}

export function directory(value: unknown, path: string, def: string, baseDir: string): string {
  return resolve(baseDir, string(value, path, def));
}

export function hostname(value: unknown, path: string): string {
  const s = string(value, path);
  const name = normalizeHostname(s);
  if (name === null) throw new ConfigError(`not a hostname: ${JSON.stringify(s)}${aLabelHint(s)}`, path);
  return name;
}

export function hostnamePattern(value: unknown, path: string): string {
  if (typeof value !== "string") throw new ConfigError(`expected a hostname pattern, got ${describe(value)}`, path);
  const pattern = normalizeHostnamePattern(value);
  if (pattern === null) throw new ConfigError(`not a hostname pattern: ${JSON.stringify(value)}${aLabelHint(value)}`, path);
  return pattern;
}

function aLabelHint(s: string): string {
  const ascii = suggestALabel(s);
  return ascii ? ` (write internationalized names as A-labels: "${ascii}")` : "";
}

/** Bytes as capsul.yaml would write them: the largest binary unit that divides them ("8MiB"), else "1023B". */
export function fmtBytes(bytes: number): string {
  for (const [unit, unitBytes] of [["TiB", 1024 ** 4], ["GiB", 1024 ** 3], ["MiB", 1024 ** 2], ["KiB", 1024]] as const) {
    if (bytes >= unitBytes && bytes % unitBytes === 0) return `${bytes / unitBytes}${unit}`;
  }
  return `${bytes}B`;
}

export function fmtMs(ms: number): string {
  for (const [unit, unitMs] of [["d", 86_400_000], ["h", 3_600_000], ["m", 60_000], ["s", 1000]] as const) {
    if (ms >= unitMs && ms % unitMs === 0) return `${ms / unitMs}${unit}`;
  }
  return `${ms}ms`;
}
