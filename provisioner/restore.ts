import { spawn } from "node:child_process";
import fs from "node:fs";
import fsp from "node:fs/promises";
import path from "node:path";
import type { ProvisionerConfig } from "../config/types.js";
import type { Logger } from "../lib/log.js";
import { type BackupRecord, type BackupStore, backupView, chainOf, chainRoots, missingFiles, sha256File } from "./backupstore.js";
import { NAME_RE } from "./config.js";
import type { Store } from "./db.js";
import { badRequest, conflict, ProvisionerError } from "./errors.js";
import { ProgressMeter, type ProgressFn, type ProgressPhase } from "./progress.js";
import { runFiles } from "./qemu.js";
import type { VmManager } from "./vms.js";

/**
 * Restore (README "Backups"): every file of the chain is checked against the
 * manifest's SHA-256 first, then the chain is flattened with `qemu-img convert`
 * into a new standalone qcow2 under <dataDir>/restore/, while the VM (if any)
 * still runs. Only then is anything changed: an existing VM is stopped (when
 * the caller consented), its disk replaced by a rename and the VM started again
 * if it ran; a VM that no longer exists, or a new name, is created with the
 * backup's image, size and SSH keys and boots from the restored disk. A failure
 * before that point leaves every VM and backup as it was.
 *
 * A VM recreated under its own name keeps its uuid (cloud-init sees the same
 * instance, so the guest keeps its SSH host keys); a copy under a new name gets
 * a new one, as any new VM.
 */

export const RESTORE_SUBDIR = "restore";
/** qemu-img convert -p prints "(12.34/100%)" with a carriage return; a line longer than this is not progress. */
const PROGRESS_LINE_MAX_CHARS = 200;

export interface RestoreRequest { from: string; as?: string; stop?: boolean }

export interface RestoreDeps {
  cfg: ProvisionerConfig; db: Store; vms: VmManager; store: BackupStore; log: Logger; signal: AbortSignal;
}

export function validateRestoreRequest(raw: unknown): RestoreRequest {
  if (typeof raw !== "object" || raw === null || Array.isArray(raw)) throw badRequest("bad_request", "body must be a JSON object");
  const b = raw as Record<string, unknown>;
  for (const k of Object.keys(b)) if (!["from", "as", "stop"].includes(k)) throw badRequest("bad_request", `unknown field ${JSON.stringify(k)}`);
  if (typeof b.from !== "string" || b.from.length === 0) throw badRequest("bad_request", "from: the backup id to restore (capsul vm backups NAME)");
  if (b.as !== undefined && (typeof b.as !== "string" || !NAME_RE.test(b.as))) throw badRequest("bad_name", "as: must match ^[a-z][a-z0-9-]{0,38}$");
  if (b.stop !== undefined && typeof b.stop !== "boolean") throw badRequest("bad_request", "stop: true or false");
  return { from: b.from, as: b.as as string | undefined, stop: b.stop as boolean | undefined };
}

/** Checks every file of the chain against its recorded SHA-256. */
async function verifyChain(d: RestoreDeps, vm: string, chain: BackupRecord[], onProgress?: ProgressFn): Promise<void> {
  const total = chain.reduce((s, b) => s + b.bytes, 0);
  const meter = new ProgressMeter("verify", onProgress);
  let before = 0;
  for (const b of chain) {
    const sum = await sha256File(d.store.filePath(vm, b.file), (n) => meter.update(before + n, total));
    if (sum !== b.sha256) {
      throw conflict("backup_corrupt", `backup ${b.id} of ${vm} (${b.file}) does not match its SHA-256 in the manifest; nothing was changed`);
    }
    before += b.bytes;
  }
  meter.update(total, total, true);
}

/** `qemu-img convert` of the chain's top into `out`, with progress; killed when it stalls or the provisioner closes. */
function convert(d: RestoreDeps, top: string, out: string, virtualBytes: number, onProgress?: ProgressFn): Promise<void> {
  return flattenQcow2(d.cfg, d.signal, top, out, virtualBytes, "restore", onProgress);
}

/**
 * `qemu-img convert` of a qcow2 and its backing chain into one standalone qcow2
 * at `out` (restores, exports), with progress; killed when it stalls for
 * backups.stall_timeout or `signal` aborts (the provisioner closes).
 */
export function flattenQcow2(
  cfg: ProvisionerConfig, signal: AbortSignal, top: string, out: string, virtualBytes: number, phase: ProgressPhase, onProgress?: ProgressFn,
): Promise<void> {
  const d = { cfg, signal };
  const meter = new ProgressMeter(phase, onProgress);
  return new Promise((resolve, reject) => {
    const child = spawn(d.cfg.qemuImgBinary, ["convert", "-p", "-f", "qcow2", "-O", "qcow2", top, out], { stdio: ["ignore", "pipe", "pipe"] });
    let stderr = "";
    let line = "";
    let lastMove = Date.now();
    let why: string | null = null;
    child.stdout!.setEncoding("utf8").on("data", (s: string) => {
      for (const ch of s) {
        if (ch !== "\r" && ch !== "\n") { if (line.length < PROGRESS_LINE_MAX_CHARS) line += ch; continue; }
        const m = /\((\d+(?:\.\d+)?)\/100%\)/.exec(line);
        line = "";
        if (!m) continue;
        lastMove = Date.now();
        meter.update(Math.round((Number(m[1]) / 100) * virtualBytes), virtualBytes);
      }
    });
    child.stderr!.setEncoding("utf8").on("data", (s: string) => { stderr = (stderr + s).slice(-2000); });
    const watch = setInterval(() => {
      if (d.signal.aborted) why = "the provisioner is shutting down";
      else if (Date.now() - lastMove > d.cfg.backups.stallTimeoutMs) why = `no progress for ${d.cfg.backups.stallTimeoutMs} ms (stall_timeout)`;
      if (why) child.kill("SIGKILL");
    }, 1000);
    child.once("error", (e) => { clearInterval(watch); reject(new ProvisionerError("restore_failed", `${d.cfg.qemuImgBinary}: ${e.message}`, 500)); });
    child.once("exit", (code) => {
      clearInterval(watch);
      if (code === 0) { meter.update(virtualBytes, virtualBytes, true); resolve(); return; }
      const last = stderr.trim().split("\n").pop();
      reject(new ProvisionerError("restore_failed", `qemu-img convert failed: ${why ?? last ?? `exit ${code}`}`, 500));
    });
  });
}

export async function restoreBackup(d: RestoreDeps, name: string, req: RestoreRequest, onProgress?: ProgressFn): Promise<Record<string, unknown>> {
  const target = req.as ?? name;
  const m = await d.store.load(name);
  const chain = chainOf(m, req.from);
  const rec = chain[chain.length - 1]!;
  const missing = missingFiles(d.store, m, chain);
  if (missing) throw conflict("backup_corrupt", `cannot restore backup ${rec.id} of ${name}: ${missing}; nothing was changed`);
  const existing = d.db.getVm(target);
  if (existing && req.as !== undefined && req.as !== name) {
    throw conflict("vm_exists", `a VM named ${target} already exists: pick another --as, or restore ${target} from its own backups`);
  }
  if (existing && existing.state === "deleting") throw conflict("vm_busy", `VM ${target} is being deleted`);
  const wasRunning = !!existing && (existing.desired === "running" || !!d.vms.liveVm(target));
  if (wasRunning && !req.stop) {
    throw conflict("vm_running", `VM ${target} is running: stop it first, or consent to the restore stopping it (--stop)`);
  }
  if (!existing) {
    if (!d.db.getImage(rec.vm.image)) throw conflict("image_not_found", `backup ${rec.id} was taken from a VM of image ${rec.vm.image}, which this cog no longer has: import it again under that name`);
    if (!d.cfg.sizes[rec.vm.size]) throw conflict("size_not_found", `backup ${rec.id} was taken from a VM of size ${rec.vm.size}, which this cog no longer offers`);
  }

  await verifyChain(d, name, chain, onProgress);
  const dir = path.join(d.cfg.dataDir, RESTORE_SUBDIR);
  await fsp.mkdir(dir, { recursive: true, mode: 0o700 });
  const tmp = path.join(dir, `${target}.qcow2.part`);
  await fsp.rm(tmp, { force: true });
  try {
    await convert(d, d.store.filePath(name, rec.file), tmp, rec.virtualBytes, onProgress);
    const when = new Date().toISOString();
    if (existing) {
      if (wasRunning) {
        d.log.info("restore: stopping the VM", { vm: target });
        await d.vms.stop(target);
      }
      await d.vms.exclusive(target, async () => {
        if (d.vms.liveVm(target)) throw conflict("vm_running", `VM ${target} was started during the restore; nothing was changed`);
        await fsp.rename(tmp, runFiles(d.vms.runDir(target)).disk);
      });
      m.resetReason = `the disk was restored from backup ${rec.id} at ${when}`;
      await d.store.save(m);
      d.log.info("vm restored", { vm: target, backup: rec.id, from: name });
      if (wasRunning) await d.vms.start(target);
    } else {
      // Its own uuid, unless another VM has it meanwhile (a restore of a copy, then of the original).
      const uuid = target === name && !d.db.listVms().some((v) => v.uuid === rec.vm.uuid) ? rec.vm.uuid : undefined;
      // Its domains too, those no other VM here has now (a copy beside the original gets none).
      const domains = d.vms.freeDomains(target, rec.vm.domains ?? []);
      for (const x of domains.dropped) d.log.info("restore: custom domain not taken", { vm: target, domain: x.domain, why: x.why });
      await d.vms.create({ name: target, image: rec.vm.image, size: rec.vm.size, sshKeys: rec.vm.sshKeys, https: rec.vm.https ?? "passthrough", domains: domains.kept }, { disk: tmp, uuid });
      if (target === name) {
        m.resetReason = `the disk was restored from backup ${rec.id} at ${when}`;
        await d.store.save(m);
      }
      d.log.info("vm restored as a new VM", { vm: target, backup: rec.id, from: name, same_uuid: uuid !== undefined });
    }
    return { vm: d.vms.get(target), backup: backupView(rec, chainRoots(m)) };
  } finally {
    if (fs.existsSync(tmp)) await fsp.rm(tmp, { force: true });
  }
}
