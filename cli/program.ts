/**
 * The whole `capsul` command tree, built without running it: cli/main.ts parses
 * argv with it, and test/cli-json.test.ts walks it to find every command (so a new
 * command cannot skip the --json convention unnoticed).
 */
import fs from "node:fs";
import path from "node:path";
import { fileURLToPath } from "node:url";
import { Command, Option } from "commander";
import { registerHubCommands } from "./hub.js";
import { registerCogCommands } from "./cog.js";
import { registerDemoCommand } from "./demo.js";
import { registerVmCommands } from "./vm.js";
import { registerConfigCommands } from "./config.js";

/** Where package.json is looked for, walking up from this file: cli/ in a checkout run by tap, dist/cli/ when built or installed. */
const PACKAGE_JSON_MAX_LEVELS = 3;

/**
 * The version in capsul's own package.json, the one npm installed next to this
 * file (`<prefix>/lib/node_modules/capsul-dispenser/package.json`), so that
 * `capsul --version` never disagrees with `npm ls -g`.
 */
export function packageVersion(from: string = path.dirname(fileURLToPath(import.meta.url))): string {
  let dir = from;
  for (let i = 0; i <= PACKAGE_JSON_MAX_LEVELS; i++) {
    const file = path.join(dir, "package.json");
    if (fs.existsSync(file)) {
      const pkg = JSON.parse(fs.readFileSync(file, "utf8")) as { name?: string; version?: string };
      if (pkg.name === "capsul-dispenser" && typeof pkg.version === "string") return pkg.version;
    }
    dir = path.dirname(dir);
  }
  throw new Error(`capsul's package.json not found within ${PACKAGE_JSON_MAX_LEVELS} levels above ${from}`);
}

export function buildProgram(): Command {
  const program = new Command();
  program
    .name("capsul")
    .description("capsul dispenser: reach VMs on home servers (cogs) through one public hub.\n" +
      "TLS by SNI, HTTP by Host, and raw TCP ports, over a multiplexed mTLS tunnel the cog dials out.")
    .version(packageVersion())
    .addOption(new Option("--verbose", "print stack traces with errors"))
    // Usage errors are one line too: commander's message (and its "Did you mean" hint) plus where to look.
    .configureOutput({ outputError: (str, write) => write(`${str.trim().replace(/\s*\n\s*/g, " ")} (run with --help for usage)\n`) })
    .exitOverride();

  registerDemoCommand(program);
  registerHubCommands(program);
  registerCogCommands(program);
  registerVmCommands(program);
  registerConfigCommands(program);
  return program;
}
