#!/usr/bin/env node
// Writes capsul.schema.json from the compiled config schema (run through `npm run schema`, which builds first).
import { writeFileSync } from "node:fs";
import { dirname, join } from "node:path";
import { fileURLToPath } from "node:url";
import { capsulJsonSchemaText } from "../dist/config/jsonschema.js";

const file = join(dirname(fileURLToPath(import.meta.url)), "..", "capsul.schema.json");
writeFileSync(file, capsulJsonSchemaText());
console.log(`wrote ${file}`);
