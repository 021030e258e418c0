/**
 * A strict parser of the Prometheus text exposition format 0.0.4
 * (prometheus/docs content/docs/instrumenting/exposition_formats.md), for tests: anything
 * a scraper might choke on or silently misread is an error, not a warning.
 *
 * Checked: metric and label names; label value escapes (\\ \" \n only); values (floats,
 * NaN, +Inf, -Inf); at most one HELP and one TYPE per family, TYPE before its samples; every
 * sample belongs to a family with a TYPE (histogram: _bucket/_sum/_count; summary:
 * quantiles/_sum/_count); a family's lines are contiguous; no series twice; no label twice
 * in one sample; counters are finite and not negative; every histogram series has
 * ascending `le` buckets with non-decreasing counts ending in +Inf, equal to its _count.
 */

export interface Sample { name: string; labels: Record<string, string>; value: number }
export interface Family { name: string; type: string; help: string | null; samples: Sample[] }

const METRIC_NAME = /^[a-zA-Z_:][a-zA-Z0-9_:]*$/;
const LABEL_NAME = /^[a-zA-Z_][a-zA-Z0-9_]*$/;
const TYPES = new Set(["counter", "gauge", "histogram", "summary", "untyped"]);

export class PromParseError extends Error {}

function fail(line: number, msg: string): never {
  throw new PromParseError(`line ${line}: ${msg}`);
}

function parseValue(s: string, line: number): number {
  if (s === "NaN") return NaN;
  if (s === "+Inf") return Infinity;
  if (s === "-Inf") return -Infinity;
  if (!/^[+-]?(?:\d+\.?\d*|\.\d+)(?:[eE][+-]?\d+)?$/.test(s)) fail(line, `not a number: ${JSON.stringify(s)}`);
  return Number(s);
}

/** Reads `{a="x",b="y"}` starting at text[i] === "{"; returns the labels and the index after "}". */
function parseLabels(text: string, i: number, line: number): { labels: Record<string, string>; end: number } {
  const labels: Record<string, string> = {};
  i++; // "{"
  for (;;) {
    if (text[i] === "}") return { labels, end: i + 1 };
    const eq = text.indexOf("=", i);
    if (eq < 0) fail(line, "label without =");
    const name = text.slice(i, eq);
    if (!LABEL_NAME.test(name)) fail(line, `bad label name ${JSON.stringify(name)}`);
    if (name.startsWith("__")) fail(line, `reserved label name ${name}`);
    if (name in labels) fail(line, `label ${name} twice`);
    if (text[eq + 1] !== '"') fail(line, `label ${name}: value not quoted`);
    let j = eq + 2;
    let value = "";
    for (;;) {
      const c = text[j];
      if (c === undefined) fail(line, `label ${name}: unterminated value`);
      if (c === '"') break;
      if (c === "\\") {
        const n = text[j + 1];
        if (n === "\\") value += "\\";
        else if (n === '"') value += '"';
        else if (n === "n") value += "\n";
        else fail(line, `label ${name}: bad escape \\${n ?? ""}`);
        j += 2;
        continue;
      }
      if (c === "\n") fail(line, `label ${name}: raw newline`);
      value += c;
      j++;
    }
    labels[name] = value;
    i = j + 1;
    if (text[i] === ",") i++;
    else if (text[i] !== "}") fail(line, `expected , or } after label ${name}`);
  }
}

function familyOf(sample: string, families: Map<string, Family>): Family | undefined {
  const direct = families.get(sample);
  if (direct && direct.type !== "histogram") return direct;
  for (const suffix of ["_bucket", "_sum", "_count"]) {
    if (!sample.endsWith(suffix)) continue;
    const f = families.get(sample.slice(0, -suffix.length));
    if (f && (f.type === "histogram" || (f.type === "summary" && suffix !== "_bucket"))) return f;
  }
  return undefined;
}

const seriesKey = (name: string, labels: Record<string, string>): string =>
  `${name}{${Object.keys(labels).sort().map((k) => `${k}=${JSON.stringify(labels[k])}`).join(",")}}`;

export function parsePromText(text: string): Map<string, Family> {
  if (text.length > 0 && !text.endsWith("\n")) throw new PromParseError("the exposition must end with a newline");
  const families = new Map<string, Family>();
  const seen = new Set<string>();
  const finished = new Set<string>();
  let current: Family | null = null;
  const enter = (f: Family, line: number): void => {
    if (current === f) return;
    if (finished.has(f.name)) fail(line, `lines of ${f.name} are not contiguous`);
    if (current) finished.add(current.name);
    current = f;
  };
  const lines = text.split("\n");
  lines.pop();
  lines.forEach((raw, idx) => {
    const line = idx + 1;
    if (raw.trim() === "") return;
    if (raw.startsWith("#")) {
      const m = /^# (HELP|TYPE) (\S+)(?: (.*))?$/.exec(raw);
      if (!m) return; // another comment
      const [, kind, name, rest] = m as unknown as [string, string, string, string | undefined];
      if (!METRIC_NAME.test(name)) fail(line, `bad metric name ${JSON.stringify(name)}`);
      let f = families.get(name);
      if (!f) {
        f = { name, type: "", help: null, samples: [] };
        families.set(name, f);
      }
      enter(f, line);
      if (kind === "HELP") {
        if (f.help !== null) fail(line, `second HELP for ${name}`);
        f.help = rest ?? "";
      } else {
        if (f.type) fail(line, `second TYPE for ${name}`);
        if (f.samples.length) fail(line, `TYPE for ${name} after its samples`);
        if (!rest || !TYPES.has(rest)) fail(line, `bad type ${JSON.stringify(rest)} for ${name}`);
        f.type = rest;
      }
      return;
    }
    const nameEnd = raw.search(/[{ ]/);
    if (nameEnd <= 0) fail(line, `not a sample: ${JSON.stringify(raw)}`);
    const name = raw.slice(0, nameEnd);
    if (!METRIC_NAME.test(name)) fail(line, `bad metric name ${JSON.stringify(name)}`);
    let labels: Record<string, string> = {};
    let i = nameEnd;
    if (raw[i] === "{") ({ labels, end: i } = parseLabels(raw, i, line));
    if (raw[i] !== " ") fail(line, "expected a space before the value");
    const parts = raw.slice(i + 1).split(" ");
    if (parts.length > 2 || parts[0] === "") fail(line, `bad value/timestamp: ${JSON.stringify(raw.slice(i + 1))}`);
    const value = parseValue(parts[0]!, line);
    if (parts[1] !== undefined && !/^-?\d+$/.test(parts[1])) fail(line, `bad timestamp ${JSON.stringify(parts[1])}`);
    const f = familyOf(name, families);
    if (!f || !f.type) fail(line, `sample ${name} has no # TYPE`);
    enter(f, line);
    const key = seriesKey(name, labels);
    if (seen.has(key)) fail(line, `series ${key} twice`);
    seen.add(key);
    if (f.type === "counter" && (!Number.isFinite(value) || value < 0)) fail(line, `counter ${key} = ${value}`);
    f.samples.push({ name, labels, value });
  });
  for (const f of families.values()) {
    if (!f.type) throw new PromParseError(`family ${f.name} has HELP but no TYPE`);
    if (f.type === "histogram") checkHistogram(f);
  }
  return families;
}

function checkHistogram(f: Family): void {
  const groups = new Map<string, { buckets: Array<[number, number]>; count?: number; sum?: number }>();
  for (const s of f.samples) {
    const { le, ...rest } = s.labels;
    const key = seriesKey("", rest);
    const g = groups.get(key) ?? { buckets: [] };
    groups.set(key, g);
    if (s.name === `${f.name}_bucket`) {
      if (le === undefined) throw new PromParseError(`${f.name}_bucket${key} without le`);
      g.buckets.push([le === "+Inf" ? Infinity : Number(le), s.value]);
    } else if (s.name === `${f.name}_count`) g.count = s.value;
    else if (s.name === `${f.name}_sum`) g.sum = s.value;
  }
  for (const [key, g] of groups) {
    const where = `${f.name}${key}`;
    if (g.count === undefined || g.sum === undefined) throw new PromParseError(`${where}: _count or _sum missing`);
    for (let i = 1; i < g.buckets.length; i++) {
      if (!(g.buckets[i]![0] > g.buckets[i - 1]![0])) throw new PromParseError(`${where}: le not ascending`);
      if (g.buckets[i]![1] < g.buckets[i - 1]![1]) throw new PromParseError(`${where}: bucket counts decrease`);
    }
    const last = g.buckets[g.buckets.length - 1];
    if (!last || last[0] !== Infinity) throw new PromParseError(`${where}: no +Inf bucket`);
    if (last[1] !== g.count) throw new PromParseError(`${where}: +Inf bucket ${last[1]} != _count ${g.count}`);
  }
}

/** Parsed metrics with lookups by name and labels. */
export class Scrape {
  readonly families: Map<string, Family>;
  constructor(readonly text: string) {
    this.families = parsePromText(text);
  }

  /** The value of the one sample named `name` whose labels equal `labels` exactly; undefined if none. */
  value(name: string, labels: Record<string, string> = {}): number | undefined {
    const key = seriesKey(name, labels);
    for (const f of this.families.values()) for (const s of f.samples) if (seriesKey(s.name, s.labels) === key) return s.value;
    return undefined;
  }

  /** Like value(), but 0 when the series is absent. */
  n(name: string, labels: Record<string, string> = {}): number {
    return this.value(name, labels) ?? 0;
  }

  /** Every series key (name{sorted labels}), for cardinality checks. */
  seriesKeys(): Set<string> {
    const out = new Set<string>();
    for (const f of this.families.values()) for (const s of f.samples) out.add(seriesKey(s.name, s.labels));
    return out;
  }

  /** Every label value in the exposition. */
  labelValues(): Set<string> {
    const out = new Set<string>();
    for (const f of this.families.values()) for (const s of f.samples) for (const v of Object.values(s.labels)) out.add(v);
    return out;
  }
}
