/**
 * capsul.schema.json: the JSON Schema of capsul.yaml's input (snake_case keys, "5s",
 * "512MiB", "host:port"), generated from the one schema in ./config.ts so that editors
 * (yaml-language-server, via the modeline at the top of capsul.yaml.example) complete keys,
 * show each key's description and default, and flag typos. `npm run schema` writes it;
 * test/config-schema.test.ts fails when the committed file differs from what this returns.
 */
import { z } from "zod";
import { configSchema } from "./config.js";
import { jsonSchemaOverride } from "./fields.js";

/** The file as written: 2-space JSON with a final newline. */
export function capsulJsonSchemaText(): string {
  const schema = z.toJSONSchema(configSchema, {
    io: "input",
    target: "draft-2020-12",
    // Leaves read any input and say what is wrong themselves; their JSON Schema is set by jsonSchemaOverride.
    unrepresentable: "any",
    override: (ctx) => jsonSchemaOverride(ctx as unknown as { zodSchema: unknown; jsonSchema: Record<string, unknown> }),
  });
  const out = { ...schema, title: "capsul.yaml", $comment: "Generated from config/*.ts by `npm run schema`; do not edit." };
  return `${JSON.stringify(out, null, 2)}\n`;
}
