#!/usr/bin/env -S node --initial-old-space-size=64
/**
 * The capsul command line. Exit codes: 0 ok, 1 runtime failure, 2 usage or
 * config error. Errors print as one line; --verbose adds the stack.
 */
import { Command, Option } from "commander";
import { registerHubCommands } from "./hub.js";
import { registerCogCommands } from "./cog.js";
import { registerDemoCommand } from "./demo.js";
import { registerVmCommands } from "./vm.js";
import { registerConfigCommands } from "./config.js";
import { runProgram } from "./common.js";

const program = new Command();
program
  .name("capsul")
  .description("capsul dispenser: reach VMs on home servers (cogs) through one public hub.\n" +
    "TLS by SNI, HTTP by Host, and raw TCP ports, over a multiplexed mTLS tunnel the cog dials out.")
  .version("0.1.0")
  .addOption(new Option("--verbose", "print stack traces with errors"))
  // Usage errors are one line too: commander's message (and its "Did you mean" hint) plus where to look.
  .configureOutput({ outputError: (str, write) => write(`${str.trim().replace(/\s*\n\s*/g, " ")} (run with --help for usage)\n`) })
  .exitOverride();

registerDemoCommand(program);
registerHubCommands(program);
registerCogCommands(program);
registerVmCommands(program);
registerConfigCommands(program);

await runProgram(program);
