import { execFile, execFileSync } from "node:child_process";
import fs from "node:fs";
import path from "node:path";
import type { ProvisionerConfig } from "../../config/types.js";
import { provisionerConfigWith } from "../../provisioner/config.js";
import { findPasta, readPastaPid } from "../../provisioner/guestnet.js";
import { findOurQemus } from "../../provisioner/qemu.js";
import { testImage } from "./testimage.js";

/** Generous: a TCG boot takes ~8 s here, but CI is a loaded 2-core machine. */
export const VM_BOOT_DEADLINE_MS = 180_000;
export const POLL_MS = 500;
/** Test VMs: the test image runs from a ~6 MB initramfs; 160 MiB leaves room. */
export const TEST_SIZE = { vcpus: 1, memoryBytes: 160 * 1024 * 1024, diskBytes: 1024 * 1024 * 1024, diskIopsPerSec: 500, diskBytesPerSec: 20 * 1024 * 1024 };

/** A short data dir (QMP socket paths must fit 108 bytes). */
export function tempDataDir(): string {
  return fs.mkdtempSync(path.join("/tmp", "cpv-"));
}

export function testConfig(dataDir: string, over: Partial<ProvisionerConfig> = {}): ProvisionerConfig {
  const base = provisionerConfigWith({ dataDir });
  return provisionerConfigWith({
    dataDir,
    listen: { host: "127.0.0.1", port: 0 },
    accel: "tcg",
    sizes: { ...base.sizes, t1: TEST_SIZE },
    bootTimeoutMs: VM_BOOT_DEADLINE_MS,
    stopTimeoutMs: 30_000,
    kvmProbeTimeoutMs: 10_000,
    ...over,
  });
}

export interface Resp { status: number; body: any; text: string }

/** API tokens by base URL: api() sends the one of the provisioner it talks to. */
const tokens = new Map<string, string>();

/** From now on api(base, …) authenticates with the token in <dataDir>/api-token. */
export function authorize(base: string, dataDir: string): void {
  tokens.set(base, fs.readFileSync(path.join(dataDir, "api-token"), "utf8").trim());
}

export function authHeader(base: string): Record<string, string> {
  const t = tokens.get(base);
  if (!t) throw new Error(`no token for ${base}: call authorize(base, dataDir) first`);
  return { authorization: `Bearer ${t}` };
}

export async function api(base: string, method: string, p: string, body?: unknown, headers: Record<string, string> = {}): Promise<Resp> {
  const init: RequestInit = { method, headers: { ...authHeader(base), ...headers } };
  if (body !== undefined) {
    init.body = typeof body === "string" ? body : JSON.stringify(body);
    (init.headers as Record<string, string>)["content-type"] ??= "application/json";
  }
  const res = await fetch(base + p, init);
  const text = await res.text();
  let parsed: unknown = undefined;
  try { parsed = JSON.parse(text); } catch { /* text */ }
  return { status: res.status, body: parsed, text };
}

export async function waitFor<T>(what: string, fn: () => Promise<T | undefined | null | false>, timeoutMs = VM_BOOT_DEADLINE_MS): Promise<T> {
  const deadline = Date.now() + timeoutMs;
  let last: unknown;
  for (;;) {
    try {
      const v = await fn();
      if (v) return v;
    } catch (e) { last = e; }
    if (Date.now() > deadline) throw new Error(`timed out waiting for ${what}${last ? `: ${(last as Error).message}` : ""}`);
    await new Promise((r) => setTimeout(r, POLL_MS));
  }
}

export async function waitForState(base: string, name: string, state: string, timeoutMs = VM_BOOT_DEADLINE_MS): Promise<any> {
  return waitFor(`${name} to be ${state}`, async () => {
    const r = await api(base, "GET", `/v1/vms/${name}`);
    if (r.status !== 200) throw new Error(`GET ${name}: ${r.status} ${r.text}`);
    if (r.body.vm.state === "error") throw Object.assign(new Error(`${name} in error: ${r.body.vm.message}`), { fatal: true });
    return r.body.vm.state === state ? r.body.vm : undefined;
  }, timeoutMs);
}

export function sshKeypair(dir: string, name = "key"): { key: string; pub: string } {
  const key = path.join(dir, name);
  execFileSync("ssh-keygen", ["-q", "-t", "ed25519", "-N", "", "-C", "capsul-test", "-f", key]);
  return { key, pub: fs.readFileSync(`${key}.pub`, "utf8").trim() };
}

export function run(file: string, args: string[], timeoutMs = 60_000): Promise<{ code: number; stdout: string; stderr: string }> {
  return new Promise((resolve) => {
    execFile(file, args, { timeout: timeoutMs }, (err, stdout, stderr) => {
      const code = err ? (typeof (err as { code?: unknown }).code === "number" ? (err as { code: number }).code : 1) : 0;
      resolve({ code, stdout: String(stdout), stderr: String(stderr) });
    });
  });
}

export function ssh(port: number, key: string, cmd: string): Promise<{ code: number; stdout: string; stderr: string }> {
  return run("ssh", [
    "-o", "StrictHostKeyChecking=no", "-o", "UserKnownHostsFile=/dev/null", "-o", "BatchMode=yes",
    "-o", "ConnectTimeout=30", "-o", "LogLevel=ERROR", "-p", String(port), "-i", key, "root@127.0.0.1", cmd,
  ]);
}

/** ssh until it works (dropbear may come up a moment after the banner probe of another attempt). */
export async function sshUntil(port: number, key: string, cmd: string): Promise<string> {
  return waitFor(`ssh ${cmd} on ${port}`, async () => {
    const r = await ssh(port, key, cmd);
    if (r.code !== 0) throw new Error(r.stderr.trim());
    return r.stdout;
  });
}

/**
 * Puts `file` into the provisioner's import dir (<dataDir>/import by default),
 * where local image sources must be; a hard link when it can, else a copy.
 */
export function intoImportDir(dataDir: string, file: string, as = path.basename(file)): string {
  const dst = path.join(dataDir, "import", as);
  fs.rmSync(dst, { force: true });
  try { fs.linkSync(file, dst); } catch { fs.copyFileSync(file, dst); }
  return dst;
}

/** Imports the test image as "tiny" through the API. */
export async function importTestImage(base: string, dataDir: string, name = "tiny"): Promise<any> {
  const img = await testImage();
  const r = await api(base, "POST", "/v1/images", {
    name, kernel: intoImportDir(dataDir, img.kernel, `${name}-kernel`), initrd: intoImportDir(dataDir, img.initrd, `${name}-initrd`), cmdline: img.cmdline,
  });
  if (r.status !== 201) throw new Error(`import: ${r.status} ${r.text}`);
  return r.body.image;
}

/** Kills every QEMU under this data dir and its pasta, and removes it: tests close everything they open. */
export function cleanupDataDir(dataDir: string): void {
  const vmsDir = path.join(dataDir, "vms");
  for (const p of findOurQemus(vmsDir)) {
    // Found by QEMU's pid too: the data dir (and pasta.pid) may be gone already.
    const pasta = findPasta(p.pid);
    if (pasta) { try { process.kill(pasta, "SIGKILL"); } catch { /* gone */ } }
    try { process.kill(p.pid, "SIGKILL"); } catch { /* gone */ }
  }
  let names: string[] = [];
  try { names = fs.readdirSync(vmsDir); } catch { /* no VMs */ }
  for (const n of names) {
    const pasta = readPastaPid(path.join(vmsDir, n, "pasta.pid"));
    if (pasta) { try { process.kill(pasta.pid, "SIGKILL"); } catch { /* gone */ } }
  }
  fs.rmSync(dataDir, { recursive: true, force: true });
}
