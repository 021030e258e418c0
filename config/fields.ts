/**
 * The building blocks of capsul.yaml's one schema (./config.ts configSchema, built from the
 * section files ./hub.ts, ./cog.ts, ./limits.ts, ./quotas.ts, ./tunnel.ts, ./acme.ts, ./store.ts
 * and provisioner/config.ts, provisioner/backupconfig.ts):
 * zod schemas for the YAML input (snake_case keys, "5s", "512MiB", "host:port") whose
 * transforms produce the camelCase runtime objects of ./types.ts.
 *
 * Each leaf carries its description, default and bounds once; from them come the runtime
 * value (through the readers of ./values.ts, which word every error as capsul always has),
 * and the leaf's JSON Schema (input side) for capsul.schema.json. zod's own messages are
 * never shown: a leaf accepts any input and reports what its reader says, so an error stays
 * one line that names the key path (`hub.limits.idle_timeout: must be greater than 0`).
 */
import { resolve } from "node:path";
import { z } from "zod";
import { ConfigError } from "../lib/errors.js";
import { parseHostPort } from "../lib/hostname.js";
import type { HostPort } from "./types.js";
import {
  boolean, describe, duration, fmtBytes, fmtMs, integer, oneOf, rate, size, string, unknownKeyMessage,
} from "./values.js";

/** A position in the YAML document: keys and list indexes. */
export type KeyPath = readonly (string | number)[];

/** The JSON Schema of a schema node that zod cannot know (a leaf's accepted input, a mapping's required keys). */
const JSON_SCHEMA = new WeakMap<z.ZodType, { replace: boolean; json: Record<string, unknown> }>();

/** toJSONSchema's `override`: puts each leaf's own JSON Schema in place of zod's view of it. */
export function jsonSchemaOverride(ctx: { zodSchema: unknown; jsonSchema: Record<string, unknown> }): void {
  const entry = JSON_SCHEMA.get(ctx.zodSchema as z.ZodType);
  if (!entry) return;
  if (entry.replace) for (const key of Object.keys(ctx.jsonSchema)) delete ctx.jsonSchema[key];
  for (const [key, value] of Object.entries(entry.json)) {
    if (value === undefined) delete ctx.jsonSchema[key];
    else ctx.jsonSchema[key] = value;
  }
}

/**
 * Thrown by a section's build function (inside its transform) for a value that breaks a rule
 * between keys; `rel` is the key path relative to the section. section() turns it into an issue.
 */
export class KeyIssue extends Error {
  constructor(readonly rel: KeyPath, message: string) {
    super(message);
  }
}

/** Runs a values.ts reader for the key at `rel`; its ConfigError becomes a KeyIssue there. */
export function read<T>(rel: KeyPath, fn: () => T): T {
  try {
    return fn();
  } catch (err) {
    if (err instanceof ConfigError) throw new KeyIssue(rel, err.message);
    throw err;
  }
}

/** Fails the key at `rel` with `message`. */
export function fail(rel: KeyPath, message: string): never {
  throw new KeyIssue(rel, message);
}

type Ctx = z.core.$RefinementCtx<unknown>;

function report(ctx: Ctx, err: unknown, input: unknown): never {
  if (err instanceof KeyIssue) {
    ctx.issues.push({ code: "custom", message: err.message, path: [...err.rel], input });
    return z.NEVER as never;
  }
  if (err instanceof ConfigError) {
    // Readers are called without a path here: the message is the reason alone.
    ctx.issues.push({ code: "custom", message: err.message, input });
    return z.NEVER as never;
  }
  throw err;
}

/** The schema of one key: any input, read by `fn` (absent is undefined, an empty YAML value null). */
export function leaf<T>(json: Record<string, unknown>, fn: (value: unknown) => T) {
  const schema = z.unknown().optional().transform((value, ctx): T => {
    try {
      return fn(value);
    } catch (err) {
      return report(ctx as Ctx, err, value);
    }
  });
  JSON_SCHEMA.set(schema, { replace: true, json });
  return schema;
}

/**
 * A mapping of the keys in `shape`, then `build` over their read values: the rules between
 * keys and the runtime object. Unknown keys are refused before any value is read (a typo is
 * reported as such, with "did you mean"); absent or null is the empty mapping unless `nullable`
 * is false. `requiredKeys` only marks keys required in the JSON Schema: their leaves say "required".
 */
export function section<S extends z.ZodRawShape, O>(
  description: string,
  shape: S,
  build: (input: z.output<z.ZodObject<S>>) => O,
  opts: { requiredKeys?: readonly string[]; nullable?: boolean; notMapping?: string; jsonType?: string[] } = {},
) {
  const known = Object.keys(shape);
  const nullable = opts.nullable ?? true;
  const object = z.strictObject(shape);
  const checked = z.preprocess((value, ctx) => {
    if (value == null && nullable) return {};
    if (value === null || typeof value !== "object" || Array.isArray(value)) {
      ctx.issues.push({ code: "custom", message: opts.notMapping ?? `expected a mapping, got ${describe(value)}`, input: value });
      return value;
    }
    for (const key of Object.keys(value)) {
      if (!known.includes(key)) {
        ctx.issues.push({ code: "custom", message: unknownKeyMessage(key, known), path: [key], input: value });
        return value;
      }
    }
    return value;
  }, object);
  JSON_SCHEMA.set(object, {
    replace: false,
    // zod counts a key whose schema preprocesses (a list) as required: only requiredKeys are.
    json: { description, type: opts.jsonType ?? (nullable ? ["object", "null"] : "object"), required: opts.requiredKeys ? [...opts.requiredKeys] : undefined },
  });
  return checked.transform((input, ctx): O => {
    try {
      return build(input as z.output<z.ZodObject<S>>);
    } catch (err) {
      return report(ctx as Ctx, err, input);
    }
  });
}

/** A transform over values already read, for rules between them (list items): a KeyIssue fails its key. */
export function rules<T, O>(build: (value: T) => O) {
  return (value: T, ctx: Ctx): O => {
    try {
      return build(value);
    } catch (err) {
      return report(ctx, err, value);
    }
  };
}

/** A list of `item`; absent or null is the empty list. */
export function listOf<T extends z.ZodType>(description: string, item: T, opts: { notList?: string } = {}) {
  const array = z.array(item);
  JSON_SCHEMA.set(array, { replace: false, json: { description, type: ["array", "null"] } });
  return z.preprocess((value, ctx) => {
    if (value == null) return [];
    if (!Array.isArray(value)) ctx.issues.push({ code: "custom", message: opts.notList ?? `expected a list, got ${describe(value)}`, input: value });
    return value;
  }, array);
}

/** Adds to what zod says of `schema` in capsul.schema.json (a description, a key pattern). */
export function describeJson(schema: z.ZodType, json: Record<string, unknown>): void {
  JSON_SCHEMA.set(schema, { replace: false, json });
}

/**
 * Parses `raw` with `schema`, relative paths against `dir`; the first issue becomes capsul's
 * one-line ConfigError naming the key path under `at` (e.g. `hub.limits.grace: …`).
 * zod reports every issue it finds, in key order; the first is the one a reader of the file
 * meets first (a mapping's unknown key stops the reading of that mapping, as a typo may be
 * the cause of everything after it).
 */
export function parseSection<T>(schema: z.ZodType<T>, raw: unknown, at: string, dir: string): T {
  const result = withBaseDir(resolve(dir), () => schema.safeParse(raw));
  if (result.success) return result.data;
  const issue = result.error.issues[0]!;
  const rel = formatKeyPath(issue.path);
  const keyPath = at === "" ? rel : rel === "" ? at : rel.startsWith("[") ? `${at}${rel}` : `${at}.${rel}`;
  return failWith(issue.message, keyPath);
}

function failWith(message: string, keyPath: string): never {
  throw new ConfigError(message, keyPath || undefined);
}

// ---- leaves ----------------------------------------------------------------
// Each states its default in its JSON Schema as capsul.yaml would write it ("5s", "256KiB").
// `def: undefined` means the default depends on other keys: the leaf returns undefined when
// the key is absent and its section computes the value (its description says how).

const DURATION_PATTERN = "^\\s*\\d+(\\.\\d+)?\\s*(ms|s|m|h|d)\\s*$";
const SIZE_PATTERN = "^\\s*\\d+(\\.\\d+)?\\s*(B|KB|MB|GB|TB|KiB|MiB|GiB|TiB)\\s*$";
const NULL = { type: "null" };

/** Adds the default to the JSON Schema, and to the description an editor shows on hover. */
function withDefault(json: Record<string, unknown>, def: unknown): Record<string, unknown> {
  if (def === undefined) return json;
  return { ...json, description: `${String(json.description)} Default: ${String(def)}.`, default: def };
}

interface Bounds { min: number; max?: number }

/** A duration in ms; `min` 0 allows 0 ("off"), 1 requires more; with `max`, whole ms up to it. */
export function durationMs<D extends number | undefined>(description: string, o: { def: D; min: 0 | 1; max?: number }) {
  const number = { type: "number", minimum: o.min === 0 ? 0 : undefined, exclusiveMinimum: o.min === 1 ? 0 : undefined, maximum: o.max };
  return leaf(withDefault({ description, anyOf: [{ type: "string", pattern: DURATION_PATTERN }, number, NULL] }, o.def === undefined ? undefined : fmtMs(o.def)),
    (v) => (v == null ? o.def : duration(v, "", 0, o.min, o.max)) as D extends number ? number : number | undefined);
}

/** A size in bytes. */
export function sizeBytes<D extends number | undefined>(description: string, o: { def: D } & Bounds) {
  const number = { type: "integer", minimum: o.min, maximum: o.max };
  return leaf(withDefault({ description, anyOf: [{ type: "string", pattern: SIZE_PATTERN }, number, NULL] }, o.def === undefined ? undefined : fmtBytes(o.def)),
    (v) => (v == null ? o.def : size(v, "", 0, o.min, o.max)) as D extends number ? number : number | undefined);
}

/** Bytes per second ("2MiB/s"), 0, "off" or false for unlimited; `min` applies to a limit that is on. */
export function rateBytesPerSec<D extends number | undefined>(description: string, o: { def: D; min: number }) {
  const pattern = "^\\s*\\d+(\\.\\d+)?\\s*(B|KB|MB|GB|TB|KiB|MiB|GiB|TiB)(/s)?\\s*$";
  return leaf(withDefault({ description, anyOf: [{ type: "string", pattern }, { const: "off" }, { const: false }, { type: "integer", minimum: 0 }, NULL] },
    o.def === undefined ? undefined : o.def === 0 ? "off" : `${fmtBytes(o.def)}/s`),
  (v) => (v == null ? o.def : rate(v, "", 0, o.min)) as D extends number ? number : number | undefined);
}

/**
 * An integer. `rangeBySection`: the bounds hold for the JSON Schema but the section checks
 * them, because one of them is another key's value (the leaf only checks it is an integer).
 */
export function int<D extends number | undefined>(description: string, o: { def: D; rangeBySection?: boolean } & Bounds) {
  const [min, max] = o.rangeBySection ? [-Infinity, undefined] : [o.min, o.max];
  return leaf(withDefault({ description, anyOf: [{ type: "integer", minimum: o.min, maximum: o.max }, NULL] }, o.def),
    (v) => (v == null ? o.def : integer(v, "", undefined, min, max)) as D extends number ? number : number | undefined);
}

export function bool(description: string, def: boolean) {
  return leaf(withDefault({ description, type: ["boolean", "null"] }, def), (v) => boolean(v, "", def));
}

/** One of `choices`; without a default the key is required, unless `optional` (then absent is undefined). */
export function choice<T extends string, O extends boolean = false>(description: string, choices: readonly T[], def?: T, opts?: { optional: O }) {
  const optional = opts?.optional === true;
  return leaf(withDefault({ description, anyOf: [{ enum: [...choices] }, ...(def === undefined && !optional ? [] : [NULL])] }, def),
    (v) => (optional && v == null ? undefined : oneOf(v, "", choices, def)) as O extends true ? T | undefined : T);
}

/** A non-empty string; without a default the key is required. */
export function text(description: string, def?: string, json: Record<string, unknown> = {}) {
  return leaf(withDefault({ description, type: def === undefined ? "string" : ["string", "null"], minLength: 1, ...json }, def),
    (v) => string(v, "", def));
}

/**
 * The directory a relative path is resolved against while parseConfig runs: the config file's
 * directory. Parsing is synchronous, so one module variable is enough (set by withBaseDir).
 */
let baseDir = process.cwd();
export function withBaseDir<T>(dir: string, fn: () => T): T {
  const saved = baseDir;
  baseDir = dir;
  try {
    return fn();
  } finally {
    baseDir = saved;
  }
}
export const resolvePath = (p: string) => resolve(baseDir, p);

/** A path, resolved against the config file's directory. */
export function path<D extends string | undefined>(description: string, def: D) {
  return leaf(withDefault({ description, type: ["string", "null"], minLength: 1 }, def),
    (v) => (v == null ? (def === undefined ? null : resolvePath(def)) : resolvePath(string(v, ""))) as D extends string ? string : string | null);
}

export const HOST_PORT_JSON = { type: "string", pattern: "^(\\[[0-9A-Fa-f:.]+\\]|[^:\\s]*):[0-9]{1,5}$" };

/** "host:port", "[::1]:443" or ":443"; listeners allow port 0 (ephemeral). */
export function hostPort<D extends string | null>(description: string, o: { def: D; listener?: boolean }) {
  const opts = { allowPortZero: o.listener === true };
  return leaf(withDefault({ description, anyOf: [HOST_PORT_JSON, NULL] }, o.def ?? undefined),
    (v) => (v == null ? (o.def === null ? null : parseHostPort(o.def, undefined, opts)) : parseHostPort(v, undefined, opts)) as D extends string ? HostPort : HostPort | null);
}

/** A listener that may also be turned off with null, false or "off". */
export function optionalListener(description: string, def: string) {
  return leaf(withDefault({ description, anyOf: [HOST_PORT_JSON, { const: "off" }, { const: false }, NULL] }, def), (v): HostPort | null => {
    if (v === undefined) return parseHostPort(def, undefined, { allowPortZero: true });
    if (v === null || v === false || v === "off") return null;
    return parseHostPort(v, undefined, { allowPortZero: true });
  });
}

/** An inclusive port range "20000-20099", "20022" or 20022. */
export const PORT_RANGE_JSON = { anyOf: [{ type: "string", pattern: "^\\s*[0-9]{1,5}\\s*(-\\s*[0-9]{1,5}\\s*)?$" }, { type: "integer", minimum: 1, maximum: 65535 }] };

/** A leaf whose JSON Schema and reader are given whole (a shape the helpers above do not cover). */
export const custom = leaf;

/** Formats a zod issue path as capsul names keys: `hub.cogs[1].hostnames[0]`. */
export function formatKeyPath(p: readonly PropertyKey[]): string {
  let out = "";
  for (const part of p) {
    if (typeof part === "number") out += `[${part}]`;
    else out += out === "" ? String(part) : `.${String(part)}`;
  }
  return out;
}
