import { execFile } from "node:child_process";
import { ProvisionerError } from "./errors.js";

/** Most bytes of a tool's stdout/stderr kept; qemu-img info JSON of a big backing chain is well under 1 MiB. */
export const TOOL_MAX_OUTPUT_BYTES = 1024 * 1024;

export interface ToolResult { stdout: string; stderr: string }

/**
 * Runs a program with an argv array: never a shell, so no word splitting, globbing
 * or quoting games. Fails with a ProvisionerError carrying the tool's last stderr line.
 */
export function runTool(code: string, file: string, args: string[], timeoutMs: number, label = file, env?: NodeJS.ProcessEnv): Promise<ToolResult> {
  return new Promise((resolve, reject) => {
    execFile(file, args, { timeout: timeoutMs, maxBuffer: TOOL_MAX_OUTPUT_BYTES, killSignal: "SIGKILL", env }, (err, stdout, stderr) => {
      if (!err) { resolve({ stdout, stderr }); return; }
      const e = err as NodeJS.ErrnoException & { killed?: boolean; code?: unknown };
      const lastLine = String(stderr).trim().split("\n").pop()?.trim();
      let why: string;
      if (e.code === "ENOENT") why = `${file} not found (install it or set its path in cog.provisioner)`;
      else if (e.killed) why = `${label} did not finish within ${timeoutMs} ms`;
      else why = `${label} failed${lastLine ? `: ${lastLine}` : ` (exit ${String(e.code)})`}`;
      reject(new ProvisionerError(code, why, 500, { cause: err }));
    });
  });
}
