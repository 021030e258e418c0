/**
 * capsul.schema.json, the JSON Schema generated from the one config schema (config/jsonschema.ts):
 * the committed file is what `npm run schema` writes; a real JSON Schema validator (ajv, draft
 * 2020-12) accepts capsul.yaml.example and the valid fixtures and refuses invalid ones; and the
 * default each key documents there is the value parseConfig applies when the key is absent.
 */
import t from "tap";
import { readdirSync, readFileSync } from "node:fs";
import { dirname, join, resolve } from "node:path";
import { fileURLToPath } from "node:url";
import { Ajv2020 } from "ajv/dist/2020.js";
import { parse } from "yaml";
import { parseConfig } from "../config/config.js";
import { capsulJsonSchemaText } from "../config/jsonschema.js";
import { parseDurationMs, parseSizeBytes } from "../lib/units.js";
import { documentedDefault } from "./helpers/schemadoc.js";

const here = dirname(fileURLToPath(import.meta.url));
const root = resolve(here, "..");
const fixtures = join(here, "fixtures", "config");
const schemaFile = join(root, "capsul.schema.json");
const committed = readFileSync(schemaFile, "utf8");
const schema = JSON.parse(committed) as JsonSchema;

interface JsonSchema {
  type?: string | string[];
  properties?: Record<string, JsonSchema>;
  items?: JsonSchema;
  anyOf?: JsonSchema[];
  required?: string[];
  default?: unknown;
  description?: string;
  [key: string]: unknown;
}

function validator() {
  // strict: false because descriptions sit next to anyOf (allowed by the spec, flagged by ajv's strict mode).
  const ajv = new Ajv2020({ allErrors: true, strict: false });
  return ajv.compile(schema);
}

const yamlOf = (file: string): unknown => parse(readFileSync(file, "utf8"));

t.test("capsul.schema.json is what `npm run schema` generates", async (t) => {
  t.equal(committed, capsulJsonSchemaText(), "regenerate with `npm run schema` and commit capsul.schema.json");
  const pkg = JSON.parse(readFileSync(join(root, "package.json"), "utf8")) as { files: string[]; scripts: Record<string, string> };
  t.ok(pkg.files.includes("capsul.schema.json"), "the package ships it");
  t.match(pkg.scripts.schema, /scripts\/schema\.mjs/);
});

t.test("capsul.yaml.example names the schema for yaml-language-server", async (t) => {
  const first = readFileSync(join(root, "capsul.yaml.example"), "utf8").split("\n")[0];
  t.equal(first, "# yaml-language-server: $schema=./capsul.schema.json");
});

t.test("ajv accepts the example and every valid fixture", async (t) => {
  const validate = validator();
  const files = [join(root, "capsul.yaml.example"), ...readdirSync(join(fixtures, "valid")).filter((f) => f.endsWith(".yaml")).map((f) => join(fixtures, "valid", f))];
  t.ok(files.length >= 7, `${files.length} files`);
  for (const file of files) {
    const ok = validate(yamlOf(file));
    t.ok(ok, `${file}: ${JSON.stringify(validate.errors)}`);
  }
});

t.test("ajv refuses invalid files where the JSON Schema can tell", async (t) => {
  const validate = validator();
  // [fixture, the instance path ajv must complain about]
  const cases: [string, string][] = [
    ["unknown-key-suggest.yaml", "/hub"], // additionalProperties: hub.limts
    ["unknown-key-deep.yaml", "/cog/routes/1"],
    ["top-level-typo.yaml", ""],
    ["wrong-type-boolean.yaml", "/hub/default_grants"],
    ["wrong-type-integer.yaml", "/hub/limits/max_visitors"],
    ["route-kind.yaml", "/cog/routes/0/kind"],
    ["route-kind-missing.yaml", "/cog/routes/0"],
    ["domain-missing.yaml", "/hub"],
    ["bad-duration.yaml", "/hub/limits/grace"],
    ["bad-size.yaml", "/hub/tunnel/max_stream_window"],
    ["log-level.yaml", "/log/level"],
    ["tunnel-accept-backlog-on-hub.yaml", "/hub/tunnel"],
  ];
  for (const [name, instancePath] of cases) {
    const ok = validate(yamlOf(join(fixtures, "invalid", name)));
    t.notOk(ok, `${name} is invalid`);
    t.ok(validate.errors?.some((e) => e.instancePath === instancePath), `${name}: an error at "${instancePath}": ${JSON.stringify(validate.errors?.map((e) => e.instancePath))}`);
  }
  // cog.provisioner's keys are in the schema too (provisioner/config.ts): a typo there is flagged.
  t.notOk(validate({ cog: { provisioner: { max_vm: 3 } } }), "cog.provisioner.max_vm is unknown");
  t.ok(validate.errors?.some((e) => e.instancePath === "/cog/provisioner" && e.keyword === "additionalProperties"));
  t.ok(validate({ cog: { provisioner: { max_vms: 3, backups: { schedule: "daily" } } } }), JSON.stringify(validate.errors));
});

/** Every key with a default, as [path of keys, the default], walking into nullable sections and list items. */
function defaults(node: JsonSchema, path: (string | number)[] = []): [(string | number)[], unknown][] {
  const object = node.properties ? node : node.anyOf?.find((s) => s.properties);
  const out: [(string | number)[], unknown][] = [];
  if (object?.properties) {
    for (const [key, child] of Object.entries(object.properties)) {
      if ("default" in child) out.push([[...path, key], child.default]);
      out.push(...defaults(child, [...path, key]));
    }
  }
  if (node.items) out.push(...defaults(node.items, [...path, 0]));
  return out;
}

t.test("every default the schema documents is the one parseConfig applies", async (t) => {
  const found = defaults(schema);
  t.ok(found.length >= 60, `${found.length} keys with a default`);
  // The least config each key can sit in: list items need their required keys.
  const base = () => ({
    hub: { domain: "hub.example.net", cogs: [{ name: "home1" }] },
    cog: { routes: [{ name: "web", kind: "tls", hostname: "web.example.org", target: "127.0.0.1:443" }], provisioner: {} },
  });
  const without = parseConfig(base());
  for (const [path, value] of found) {
    const raw = base() as Record<string, unknown>;
    let node = raw as Record<string | number, unknown>;
    for (const key of path.slice(0, -1)) node = (node[key] ??= {}) as Record<string | number, unknown>;
    node[path.at(-1)!] = value;
    const label = `${path.join(".")}: ${JSON.stringify(value)}`;
    let withIt;
    try {
      withIt = parseConfig(raw);
    } catch (err) {
      t.fail(`${label}: ${(err as Error).message}`);
      continue;
    }
    t.strictSame(withIt, without, label);
  }
});

t.test("every key has a description", async (t) => {
  const missing: string[] = [];
  const walk = (node: JsonSchema, path: string) => {
    const object = node.properties ? node : node.anyOf?.find((s) => s.properties);
    for (const [key, child] of Object.entries(object?.properties ?? {})) {
      // A nullable section (hub:, cog:) carries its description on the object member of its anyOf.
      if (!(child.description ?? child.anyOf?.find((s) => s.description)?.description)) missing.push(`${path}${key}`);
      walk(child, `${path}${key}.`);
      if (child.items) walk(child.items, `${path}${key}[].`);
    }
  };
  walk(schema, "");
  t.same(missing, []);
});

t.test("the defaults capsul.yaml.example states are the ones the schema documents", async (t) => {
  const lines = readFileSync(join(root, "capsul.yaml.example"), "utf8").split("\n");
  // Read "Default: X" from the comment above a key (or on its line), and the key's path from the indentation.
  const stack: { indent: number; key: string }[] = [];
  let pending: string | undefined;
  let compared = 0;
  const mismatches: string[] = [];
  const normalize = (text: string): string => {
    const first = text.trim().split(/\s+/)[0]!.replace(/[.,;:]$/, "");
    // "null", "[]", "none" and "the machine's total memory" all say: no value of its own.
    if (["null", "[]", "none", "the"].includes(first)) return "none";
    // A bare number (bytes, ms, a count); 0.667 is how a person writes the 2/3 the schema holds.
    if (/^\d+(\.\d+)?$/.test(first)) return String(Math.round(Number(first) * 1000) / 1000);
    for (const read of [parseDurationMs, parseSizeBytes]) {
      try {
        return String(read(first));
      } catch { /* not this unit */ }
    }
    return first.toLowerCase();
  };
  for (const line of lines) {
    const comment = /^\s*#.*\bDefault: (.+)$/.exec(line);
    if (comment) {
      pending = comment[1];
      continue;
    }
    const key = /^(\s*)(- )?([a-z_]+):(.*)$/.exec(line);
    if (!key) continue;
    const indent = key[1]!.length + (key[2] ? 2 : 0);
    while (stack.length > 0 && stack.at(-1)!.indent >= indent) stack.pop();
    if (key[2]) stack.at(-1)!.key = stack.at(-1)!.key.replace(/(\[\])?$/, "[]");
    const path = [...stack.map((s) => s.key), key[3]!].join(".");
    stack.push({ indent, key: key[3]! });
    const inline = /#.*\bdefault:? ([^(]+)/i.exec(key[4]!)?.[1];
    const stated = inline ?? pending;
    pending = undefined;
    if (stated === undefined || stated.trim().startsWith("<")) continue;
    const documented = documentedDefault(path);
    if (documented === undefined) continue;
    compared++;
    if (normalize(stated) !== normalize(documented)) mismatches.push(`${path}: example says ${stated.trim()}, schema ${documented}`);
  }
  t.ok(compared >= 60, `${compared} defaults compared`);
  t.same(mismatches, []);
});
