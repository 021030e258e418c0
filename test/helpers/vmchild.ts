import { spawn, type ChildProcess } from "node:child_process";
import path from "node:path";
import { fileURLToPath } from "node:url";
import type { ProvisionerConfig } from "../../config/types.js";
import { authorize } from "./vm.js";

const HERE = path.dirname(fileURLToPath(import.meta.url));
/** How long a child provisioner may take to re-adopt its VMs and listen. */
export const CHILD_START_DEADLINE_MS = 120_000;

export interface ChildProvisioner { proc: ChildProcess; url: string; stderr: () => string }

/** Starts test/helpers/vm-child.ts under the same TypeScript loader tap uses. */
export function startChild(cfg: ProvisionerConfig, routesFile: string): Promise<ChildProvisioner> {
  const loader = process.execArgv.filter((a) => a.includes("@tapjs/typescript"));
  const env = { ...process.env };
  delete env.NODE_OPTIONS;
  const proc = spawn(process.execPath, [...loader, path.join(HERE, "vm-child.ts"), JSON.stringify(cfg), routesFile], {
    stdio: ["ignore", "pipe", "pipe"], env,
  });
  let err = "";
  proc.stderr!.on("data", (d: Buffer) => { err += d.toString(); });
  return new Promise((resolve, reject) => {
    let out = "";
    const timer = setTimeout(() => { proc.kill("SIGKILL"); reject(new Error(`child did not start: ${err}`)); }, CHILD_START_DEADLINE_MS);
    proc.stdout!.on("data", (d: Buffer) => {
      out += d.toString();
      const m = /^URL (\S+)$/m.exec(out);
      if (m) {
        clearTimeout(timer);
        authorize(m[1]!, cfg.dataDir);
        resolve({ proc, url: m[1]!, stderr: () => err });
      }
    });
    proc.once("exit", (code) => { clearTimeout(timer); reject(new Error(`child exited ${code}: ${err}`)); });
  });
}

export function killHard(c: ChildProvisioner): Promise<void> {
  return new Promise((resolve) => {
    if (c.proc.exitCode !== null || c.proc.signalCode !== null) { resolve(); return; }
    c.proc.once("exit", () => resolve());
    c.proc.kill("SIGKILL");
  });
}

export function stopChild(c: ChildProvisioner): Promise<void> {
  return new Promise((resolve) => {
    if (c.proc.exitCode !== null || c.proc.signalCode !== null) { resolve(); return; }
    c.proc.once("exit", () => resolve());
    c.proc.kill("SIGTERM");
  });
}
