#!/usr/bin/env -S node --initial-old-space-size=64
/**
 * The capsul command line. Exit codes: 0 ok, 1 runtime failure, 2 usage or
 * config error, 70 internal error (a bug; see exitOnBugs in cli/common.ts).
 * Errors print as one line; --verbose adds the stack.
 */
import { buildProgram } from "./program.js";
import { runProgram } from "./common.js";

await runProgram(buildProgram());
