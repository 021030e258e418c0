/**
 * What capsul.schema.json (generated from the config schema) says a key's default is: its
 * `default`, or for a default that depends on other keys the "(default …" of its description.
 * The tests that check each DEFAULT_* constant against it use this.
 */
import { readFileSync } from "node:fs";
import { dirname, join, resolve } from "node:path";
import { fileURLToPath } from "node:url";

interface Node { properties?: Record<string, Node>; items?: Node; anyOf?: Node[]; default?: unknown; description?: string }

const root = resolve(dirname(fileURLToPath(import.meta.url)), "..", "..");
const schema = JSON.parse(readFileSync(join(root, "capsul.schema.json"), "utf8")) as Node;

/** The node of a key path such as "hub.limits.grace" or "cog.routes[].proxy_protocol"; undefined if there is none. */
export function schemaNode(path: string): Node | undefined {
  let node: Node | undefined = schema;
  for (const part of path.split(".")) {
    const list = part.endsWith("[]");
    const key = list ? part.slice(0, -2) : part;
    const object: Node | undefined = node?.properties ? node : node?.anyOf?.find((s) => s.properties);
    node = object?.properties?.[key];
    if (list) node = node?.items;
  }
  return node;
}

/** The default as the schema documents it, as text ("5s", "256KiB", "true"), or undefined. */
export function documentedDefault(path: string): string | undefined {
  const node = schemaNode(path);
  if (node === undefined) return undefined;
  if ("default" in node) return String(node.default);
  const description = node.description ?? "";
  return /\(default ([^,;)]+)/.exec(description)?.[1] ?? /Default: (.+?)\.?$/.exec(description)?.[1];
}
