/** A tiny `capsul` with only the VM commands, for tests: same exit codes and error lines as cli/main.ts. */
import { Command } from "commander";
import { registerVmCommands } from "../../cli/vm.js";
import { runProgram } from "../../cli/common.js";

const program = new Command().name("capsul").exitOverride();
registerVmCommands(program);
await runProgram(program);
