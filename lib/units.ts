import { ConfigError } from "./errors.js";

const DURATION_UNITS_MS: Record<string, number> = { ms: 1, s: 1000, m: 60_000, h: 3_600_000, d: 86_400_000 };
const SIZE_UNITS: Record<string, number> = {
  B: 1, KB: 1000, MB: 1000 ** 2, GB: 1000 ** 3, TB: 1000 ** 4,
  KiB: 1024, MiB: 1024 ** 2, GiB: 1024 ** 3, TiB: 1024 ** 4,
};

/** Parses "250ms", "5s", "2m", "1h", "30d" (or a bare number of milliseconds) into milliseconds. */
export function parseDurationMs(value: unknown, path?: string): number {
  if (typeof value === "number" && Number.isFinite(value) && value >= 0) return value;
  if (typeof value === "string") {
    const m = /^(\d+(?:\.\d+)?)\s*(ms|s|m|h|d)$/.exec(value.trim());
    if (m) return Math.round(Number(m[1]) * DURATION_UNITS_MS[m[2]!]!);
  }
  throw new ConfigError(`not a duration (use e.g. 500ms, 5s, 2m, 1h): ${JSON.stringify(value)}`, path);
}

/** Parses "16MiB", "512KiB", "1GB" (or a bare number of bytes) into bytes. */
export function parseSizeBytes(value: unknown, path?: string): number {
  if (typeof value === "number" && Number.isInteger(value) && value >= 0) return value;
  if (typeof value === "string") {
    const m = /^(\d+(?:\.\d+)?)\s*(B|KB|MB|GB|TB|KiB|MiB|GiB|TiB)$/.exec(value.trim());
    if (m) return Math.round(Number(m[1]) * SIZE_UNITS[m[2]!]!);
  }
  throw new ConfigError(`not a size (use e.g. 512KiB, 16MiB, 1GiB): ${JSON.stringify(value)}`, path);
}

export function formatBytes(n: number): string {
  const units = ["B", "KiB", "MiB", "GiB", "TiB"];
  let i = 0;
  let v = n;
  while (v >= 1024 && i < units.length - 1) { v /= 1024; i++; }
  return `${i === 0 ? v : v.toFixed(1)} ${units[i]}`;
}
