/** A tiny `capsul` with only the VM commands, for tests: exit codes as cli/main.ts maps them. */
import { Command, CommanderError } from "commander";
import { registerVmCommands } from "../../cli/vm.js";
import { ConfigError } from "../../lib/errors.js";

const program = new Command().name("capsul").exitOverride();
registerVmCommands(program);
try {
  await program.parseAsync(process.argv);
} catch (err) {
  if (err instanceof CommanderError) {
    process.exitCode = err.exitCode === 0 ? 0 : 2;
  } else {
    process.stderr.write(`capsul: ${(err as Error).message.split("\n")[0]}\n`);
    process.exitCode = err instanceof ConfigError ? 2 : 1;
  }
}
