import fs from "node:fs";
import fsp from "node:fs/promises";
import path from "node:path";
import type { ProvisionerConfig } from "../config/types.js";
import type { Logger } from "../lib/log.js";
import { reapHelpers, startHelper } from "./backuphelper.js";
import { cleanupStale, diskInfo, dropBitmapsBelow, planIncremental, runBackupJob, type DiskInfo } from "./backupjob.js";
import {
  BackupStore, backupView, chainOf, chainRoots, deleteBackups, type BackupRecord, type Manifest, missingFiles, pruneList, sha256File,
} from "./backupstore.js";
import type { Store, VmRecord } from "./db.js";
import { conflict, notFound, ProvisionerError } from "./errors.js";
import { GuestAgent } from "./guestagent.js";
import { ProgressMeter, type ProgressFn } from "./progress.js";
import { runFiles } from "./qemu.js";
import type { QmpClient } from "./qmp.js";
import { restoreBackup, type RestoreRequest } from "./restore.js";
import { runTool } from "./tools.js";
import type { VmManager } from "./vms.js";

/**
 * Backups of VM disks (README "Backups"): full and incremental, of running VMs
 * through their QEMU (backupjob.ts) and of stopped VMs through a QEMU of their
 * own (backuphelper.ts), into the backup directory (backupstore.ts), with a
 * filesystem freeze by the guest agent when the guest has one, a schedule and
 * retention. One backup or restore per VM at a time; scheduled ones run one
 * after the other.
 */

/** While the guest agent has the guest's filesystems frozen, this file exists in the run dir: a provisioner killed meanwhile thaws them at its next start. */
export const FREEZE_MARKER = "fsfreeze";

export interface BackupOptions { full?: boolean; scheduled?: boolean }

const fileName = (seq: number, full: boolean): string => `${String(seq).padStart(4, "0")}-${full ? "full" : "inc"}.qcow2`;

interface Decision { full: boolean; parent: BackupRecord | null; merge: string[] | null; reason: string; broken: boolean }

export class BackupManager {
  readonly store: BackupStore;
  /** VMs with a backup or restore running, and which. */
  private readonly busy = new Map<string, string>();
  private readonly abort = new AbortController();
  private timer: NodeJS.Timeout | null = null;
  private scheduling: Promise<void> | null = null;
  private readonly failedAt = new Map<string, number>();
  private readonly running = new Set<Promise<unknown>>();

  constructor(
    private readonly cfg: ProvisionerConfig,
    private readonly db: Store,
    private readonly vms: VmManager,
    private readonly log: Logger,
  ) {
    this.store = new BackupStore(cfg.backups.dir);
  }

  /** After VmManager.reconcile(): quits helpers and thaws guests a killed provisioner left behind, starts the schedule. */
  async start(): Promise<void> {
    await fsp.mkdir(this.cfg.backups.dir, { recursive: true, mode: 0o700 });
    await reapHelpers(this.cfg.dataDir, this.vms.vmsDir, this.cfg.qmpTimeoutMs, this.cfg.quitTimeoutMs, this.log);
    for (const v of this.db.listVms()) {
      const marker = path.join(this.vms.runDir(v.name), FREEZE_MARKER);
      if (!fs.existsSync(marker)) continue;
      const ga = await GuestAgent.open(runFiles(this.vms.runDir(v.name)).qga, this.cfg.backups.agentTimeoutMs);
      const thawed = ga && (await ga.ping(this.cfg.backups.agentTimeoutMs)) ? await ga.thaw(this.cfg.backups.freezeTimeoutMs).catch(() => null) : null;
      ga?.close();
      this.log.warn("thawed a guest's filesystems frozen by a provisioner that died during a backup", { vm: v.name, filesystems: thawed ?? "unknown" });
      await fsp.rm(marker, { force: true });
    }
    const sched = this.cfg.backups.schedule;
    if (sched.kind === "every") {
      this.timer = setInterval(() => { this.scheduling ??= this.runSchedule().finally(() => { this.scheduling = null; }); }, this.cfg.backups.checkIntervalMs);
      this.timer.unref();
      this.log.info("backup schedule", { every_ms: sched.intervalMs, keep_full: this.cfg.backups.keepFull, keep_incremental: this.cfg.backups.keepIncremental, dir: this.cfg.backups.dir });
    }
  }

  async close(): Promise<void> {
    if (this.timer) clearInterval(this.timer);
    this.abort.abort();
    await this.scheduling;
    await Promise.allSettled([...this.running]);
  }

  /** Marks `names` busy for the duration of `fn`; a second operation on one of them is refused. */
  private async exclusiveOp<T>(names: string[], what: string, fn: () => Promise<T>): Promise<T> {
    if (this.abort.signal.aborted) throw new ProvisionerError("shutting_down", "the provisioner is shutting down", 503);
    for (const n of names) {
      const other = this.busy.get(n);
      if (other) throw conflict("backup_busy", `a ${other} of ${n} is running; try again when it is done`);
    }
    for (const n of names) this.busy.set(n, what);
    const p = fn();
    this.running.add(p);
    try {
      return await p;
    } finally {
      this.running.delete(p);
      for (const n of names) this.busy.delete(n);
    }
  }

  // ------------------------------------------------------------------ list

  async list(name: string): Promise<Record<string, unknown>> {
    const vm = this.db.getVm(name);
    const m = await this.store.load(name);
    if (!vm && m.backups.length === 0) throw notFound("vm_not_found", `no VM and no backups named ${JSON.stringify(name)}`);
    const roots = chainRoots(m);
    return {
      vm: name, exists: !!vm, uuid: vm?.uuid ?? null, dir: this.store.vmDir(name),
      backups: m.backups.map((b) => backupView(b, roots)),
    };
  }

  // ---------------------------------------------------------------- backup

  backup(name: string, opts: BackupOptions = {}, onProgress?: ProgressFn): Promise<Record<string, unknown>> {
    const v = this.db.getVm(name);
    if (!v) throw notFound("vm_not_found", `no VM named ${JSON.stringify(name)}`);
    if (v.state === "deleting" || v.state === "creating") throw conflict("vm_busy", `VM ${name} is ${v.state}`);
    return this.exclusiveOp([name], "backup", async () => {
      // A manifest that cannot be read stops everything before QEMU or a file is touched.
      const removed = await this.store.removeUnfinished(await this.store.load(name));
      if (removed.length) this.log.warn("removed unfinished backup files", { vm: name, files: removed.join(",") });
      const live = this.vms.liveVm(name);
      if (live) return this.backupWith(live.qmp, v, true, opts, onProgress);
      // Stopped: the disk is ours while the lock is held; it may have started meanwhile.
      return this.vms.exclusive(name, async () => {
        const now = this.vms.liveVm(name);
        if (now) return this.backupWith(now.qmp, v, true, opts, onProgress);
        const helper = await startHelper({
          qemuBinary: this.cfg.qemuBinary, dataDir: this.cfg.dataDir, runDir: this.vms.runDir(name), vm: name,
          disk: runFiles(this.vms.runDir(name)).disk, launchTimeoutMs: this.cfg.launchTimeoutMs, qmpTimeoutMs: this.cfg.qmpTimeoutMs,
          quitTimeoutMs: this.cfg.quitTimeoutMs,
        });
        try {
          return await this.backupWith(helper.qmp, v, false, opts, onProgress);
        } finally {
          await helper.quit();
        }
      });
    });
  }

  /** Full or incremental: incremental when the last backup's chain and the disk's bitmaps are intact. */
  private decide(m: Manifest, v: VmRecord, disk: DiskInfo, forceFull: boolean): Decision {
    const full = (reason: string, broken: boolean): Decision => ({ full: true, parent: null, merge: null, reason, broken });
    if (forceFull) return full("a full backup was asked for", false);
    const mine = m.backups.filter((b) => b.vm.uuid === v.uuid);
    const last = mine[mine.length - 1];
    if (!last) return full("first backup of this VM", false);
    if (m.resetReason) return full(m.resetReason, true);
    const chain = chainOf(m, last.id);
    const missing = missingFiles(this.store, m, chain);
    if (missing) return full(missing, true);
    if (chain.length - 1 >= this.cfg.backups.keepIncremental) {
      return full(`the chain of backup ${chain[0]!.id} has ${chain.length - 1} incrementals (keep_incremental)`, false);
    }
    if (last.virtualBytes !== disk.virtualBytes) return full(`the disk's size changed since backup ${last.id}`, true);
    const plan = planIncremental(disk.bitmaps, last.seq);
    if (!plan.ok) return full(plan.reason, true);
    return { full: false, parent: last, merge: plan.merge, reason: `changes since backup ${last.id}`, broken: false };
  }

  private async backupWith(qmp: QmpClient, v: VmRecord, online: boolean, opts: BackupOptions, onProgress?: ProgressFn): Promise<Record<string, unknown>> {
    const name = v.name;
    let disk = await diskInfo(qmp);
    const cleaned = await cleanupStale(qmp, disk, this.cfg.qmpTimeoutMs);
    if (cleaned.length) {
      this.log.warn("cleaned what an interrupted backup left in QEMU", { vm: name, items: cleaned.join(",") });
      disk = await diskInfo(qmp);
    }
    const m = await this.store.load(name);
    const d = this.decide(m, v, disk, opts.full === true);
    if (d.broken) this.log.warn("backup chain broken; taking a full backup", { vm: name, reason: d.reason });
    // The sequence number is saved before QEMU gets a bitmap named after it: never reused.
    const seq = m.nextSeq;
    m.nextSeq++;
    await this.store.save(m);
    const file = fileName(seq, d.full);
    const target = this.store.filePath(name, file);
    const part = `${target}.part`;
    const args = ["create", "-q", "-f", "qcow2"];
    // Relative backing name: resolved against the file's own directory.
    if (d.parent) args.push("-F", "qcow2", "-b", d.parent.file);
    args.push(part, String(disk.virtualBytes));
    const begun = Date.now();
    let consistency: BackupRecord["consistency"] = online ? "crash" : "stopped";
    let ga: GuestAgent | null = null;
    let rec: BackupRecord;
    try {
      await runTool("backup_failed", this.cfg.qemuImgBinary, args, this.cfg.toolTimeoutMs);
      ga = online ? await this.agent(name) : null;
      const job = await runBackupJob(qmp, {
        disk, seq, targetFile: part, merge: d.merge, rateLimitBytesPerSec: this.cfg.backups.rateLimitBytesPerSec,
        stallTimeoutMs: this.cfg.backups.stallTimeoutMs, cancelTimeoutMs: this.cfg.qmpTimeoutMs, meter: new ProgressMeter("backup", onProgress), signal: this.abort.signal,
        around: ga ? this.freezer(name, ga, () => { consistency = "filesystem"; }) : undefined,
      });
      const fh = await fsp.open(part, "r");
      try { await fh.sync(); } finally { await fh.close(); }
      await fsp.rename(part, target);
      const bytes = (await fsp.stat(target)).size;
      const meter = new ProgressMeter("checksum", onProgress);
      const sha256 = await sha256File(target, (n) => meter.update(n, bytes));
      meter.update(bytes, bytes, true);
      rec = {
        id: String(seq), seq, kind: d.full ? "full" : "incremental", parent: d.parent?.id ?? null, file,
        createdAt: new Date(job.startedAt).toISOString(), durationMs: Date.now() - begun, bytes, dataBytes: job.bytes,
        virtualBytes: disk.virtualBytes, sha256, consistency, online, vm: { uuid: v.uuid, image: v.image, size: v.size, sshKeys: v.sshKeys, https: v.https, domains: v.domains },
      };
      m.backups.push(rec);
      m.resetReason = null;
      await this.store.save(m);
    } catch (e) {
      // Not recorded: its files go (a rename may have happened), its bitmap stays and is merged into the next one.
      await fsp.rm(part, { force: true });
      await fsp.rm(target, { force: true });
      this.log.error("backup failed", { vm: name, seq, err: (e as Error).message });
      if (e instanceof ProvisionerError) throw e;
      throw new ProvisionerError("backup_failed", `backup of ${name} failed: ${(e as Error).message}`, 500, { cause: e });
    } finally {
      ga?.close();
    }
    this.log.info("backup done", {
      vm: name, id: rec.id, kind: rec.kind, parent: rec.parent, bytes: rec.bytes, data_bytes: rec.dataBytes, duration_ms: rec.durationMs,
      consistency, online, why: d.reason, scheduled: opts.scheduled === true,
    });
    // Recorded: from here on nothing may fail the backup; what goes wrong is logged and retried next time.
    await dropBitmapsBelow(qmp, await diskInfo(qmp), seq).catch((e: Error) => this.log.warn("could not remove old bitmaps", { vm: name, err: e.message }));
    const gone = pruneList(m, this.cfg.backups.keepFull);
    if (gone.length) {
      await deleteBackups(this.store, m, gone).then(
        () => this.log.info("backups pruned", { vm: name, ids: gone.map((b) => b.id).join(","), keep_full: this.cfg.backups.keepFull }),
        (e: Error) => this.log.error("pruning backups failed", { vm: name, err: e.message }),
      );
    }
    return { backup: backupView(rec, chainRoots(m)), reason: d.reason };
  }

  /** fsfreeze right before the transaction, thaw right after, with a marker in the run dir meanwhile (start() thaws a guest left frozen). */
  private freezer(name: string, ga: GuestAgent, frozen: () => void): { before(): Promise<void>; after(): Promise<void> } {
    const marker = path.join(this.vms.runDir(name), FREEZE_MARKER);
    return {
      before: async () => {
        await fsp.writeFile(marker, "");
        try {
          const n = await ga.freeze(this.cfg.backups.freezeTimeoutMs);
          frozen();
          this.log.info("guest filesystems frozen", { vm: name, filesystems: n });
        } catch (e) {
          this.log.warn("guest agent could not freeze; the backup is crash-consistent", { vm: name, err: (e as Error).message });
        }
      },
      after: async () => {
        // Thawed even when the freeze seemed to fail: it may have frozen some.
        await ga.thaw(this.cfg.backups.freezeTimeoutMs).catch((e: Error) => this.log.error("guest agent could not thaw", { vm: name, err: e.message }));
        await fsp.rm(marker, { force: true });
      },
    };
  }

  /** The guest's agent when one answers guest-ping within agent_timeout; else null (crash-consistent). */
  private async agent(name: string): Promise<GuestAgent | null> {
    const t = this.cfg.backups.agentTimeoutMs;
    const ga = await GuestAgent.open(runFiles(this.vms.runDir(name)).qga, t);
    if (ga && (await ga.ping(t))) return ga;
    ga?.close();
    this.log.info("no guest agent answered; the backup is crash-consistent", { vm: name, agent_timeout_ms: t });
    return null;
  }

  // --------------------------------------------------------------- restore

  restore(name: string, req: RestoreRequest, onProgress?: ProgressFn): Promise<Record<string, unknown>> {
    const target = req.as ?? name;
    return this.exclusiveOp([...new Set([name, target])], "restore", () => restoreBackup({
      cfg: this.cfg, db: this.db, vms: this.vms, store: this.store, log: this.log, signal: this.abort.signal,
    }, name, req, onProgress));
  }

  // -------------------------------------------------------------- schedule

  /** Every running VM whose newest backup is older than the schedule's interval gets one, one VM after the other. */
  private async runSchedule(): Promise<void> {
    const sched = this.cfg.backups.schedule;
    if (sched.kind !== "every") return;
    for (const v of this.db.listVms()) {
      if (this.abort.signal.aborted) return;
      if (v.desired !== "running" || !this.vms.liveVm(v.name) || this.busy.has(v.name)) continue;
      const failed = this.failedAt.get(v.name);
      if (failed !== undefined && Date.now() - failed < this.cfg.backups.retryAfterMs) continue;
      try {
        const m = await this.store.load(v.name);
        const mine = m.backups.filter((b) => b.vm.uuid === v.uuid);
        const newest = mine[mine.length - 1];
        if (newest && Date.now() - Date.parse(newest.createdAt) < sched.intervalMs) continue;
        await this.backup(v.name, { scheduled: true });
        this.failedAt.delete(v.name);
      } catch (e) {
        this.failedAt.set(v.name, Date.now());
        this.log.error("scheduled backup failed; retrying later", { vm: v.name, err: (e as Error).message, retry_after_ms: this.cfg.backups.retryAfterMs });
      }
    }
  }
}

