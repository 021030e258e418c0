import { spawn } from "node:child_process";
import path from "node:path";
import { fileURLToPath } from "node:url";
import type { ProvisionerConfig } from "../../config/types.js";
import { parseBackupConfig } from "../../provisioner/backupconfig.js";
import { api, ssh, testConfig } from "./vm.js";

const CLI = path.join(path.dirname(fileURLToPath(import.meta.url)), "vm-cli.ts");

/** testConfig with `cog.provisioner.backups` keys (capsul.yaml spelling) under the data dir. */
export function backupTestConfig(dataDir: string, backups: Record<string, unknown> = {}, over: Partial<ProvisionerConfig> = {}): ProvisionerConfig {
  // A guest agent in a TCG guest on a loaded 2-core machine may take seconds to answer.
  return testConfig(dataDir, { backups: parseBackupConfig({ agent_timeout: "20s", ...backups }, "backups", dataDir, dataDir), ...over });
}

/**
 * `capsul vm …` (test/helpers/vm-cli.ts) against a provisioner; stdin is not a terminal.
 * The caller's CAPSUL_API_TOKEN never leaks in: only `extraEnv` may set one.
 */
export function capsul(args: string[], extraEnv: Record<string, string> = {}): Promise<{ code: number; stdout: string; stderr: string }> {
  const loader = process.execArgv.filter((a) => a.includes("@tapjs/typescript"));
  const env: Record<string, string | undefined> = { ...process.env, ...extraEnv };
  delete env.NODE_OPTIONS;
  delete env.CAPSUL_API_TOKEN;
  if (extraEnv.CAPSUL_API_TOKEN) env.CAPSUL_API_TOKEN = extraEnv.CAPSUL_API_TOKEN;
  const p = spawn(process.execPath, [...loader, CLI, ...args], { stdio: ["ignore", "pipe", "pipe"], env });
  let stdout = "";
  let stderr = "";
  p.stdout.on("data", (d: Buffer) => { stdout += d.toString(); });
  p.stderr.on("data", (d: Buffer) => { stderr += d.toString(); });
  return new Promise((resolve) => p.on("close", (code) => resolve({ code: code ?? 1, stdout, stderr })));
}

/** --json output of a streamed command: the progress lines and the result (the last line). */
export function jsonLines(stdout: string): { progress: any[]; result: any } {
  const lines = stdout.trim().split("\n").map((l) => JSON.parse(l) as any);
  return { progress: lines.filter((l) => l.progress).map((l) => l.progress), result: lines[lines.length - 1] };
}

/** A shell command in the guest that must succeed; its stdout. */
export async function inGuest(port: number, key: string, cmd: string): Promise<string> {
  const r = await ssh(port, key, cmd);
  if (r.code !== 0) throw new Error(`guest: ${cmd}: exit ${r.code}: ${r.stderr.trim()}`);
  return r.stdout;
}

/** Writes `kib` KiB of random data to /mnt/data/<file> in the guest; returns its SHA-256. */
export async function writeGuestFile(port: number, key: string, file: string, kib: number): Promise<string> {
  const out = await inGuest(port, key, `dd if=/dev/urandom of=/mnt/data/${file} bs=1024 count=${kib} 2>/dev/null && sha256sum /mnt/data/${file}`);
  return out.trim().split(/\s+/)[0]!;
}

/** SHA-256 of the guest's files (missing ones absent from the map). */
export async function guestSums(port: number, key: string): Promise<Record<string, string>> {
  const out = await inGuest(port, key, "cd /mnt/data && for f in *.bin; do [ -f \"$f\" ] && sha256sum \"$f\"; done; true");
  const sums: Record<string, string> = {};
  for (const l of out.trim().split("\n")) {
    const [sum, f] = l.trim().split(/\s+/);
    if (sum && f) sums[f] = sum;
  }
  return sums;
}

export async function backups(base: string, vm: string): Promise<any[]> {
  const r = await api(base, "GET", `/v1/vms/${vm}/backups`);
  if (r.status !== 200) throw new Error(`GET backups: ${r.status} ${r.text}`);
  return r.body.backups as any[];
}
