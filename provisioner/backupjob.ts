import { ProvisionerError } from "./errors.js";
import type { ProgressMeter } from "./progress.js";
import { DISK_DRIVE_ID, DISK_NODE_NAME } from "./qemu.js";
import type { QmpClient } from "./qmp.js";

/**
 * Backups through QMP (QEMU docs/interop/bitmaps.rst, "checkpoints" the way
 * libvirt keeps them): every backup N adds a persistent dirty bitmap
 * `capsul-bk-N` on the disk's qcow2 node, in one transaction with the job that
 * copies the disk, and stops the bitmaps before it (block-dirty-bitmap-disable).
 * So bitmap N holds exactly the writes since backup N, and jobs never clear a
 * bitmap: a backup that fails, or completes while nobody records it (kill -9 of
 * the provisioner), loses nothing. The next incremental since backup L merges
 * capsul-bk-L and every later one into a temporary bitmap, inside the same
 * transaction that starts the job (sync=bitmap, bitmap-mode=never), and copies
 * what it marks. Bitmaps older than the newest recorded backup are removed.
 *
 * Persistent bitmaps live in the qcow2 file: QEMU stores them at a clean exit
 * (quit, guest power-off) and loads them at the next start; one that QEMU had
 * loaded when it was killed comes back "inconsistent" (qcow2's in-use flag),
 * and one created since the last clean exit does not come back at all. Both
 * break the chain and make the next backup a full one (planIncremental).
 */

export const BITMAP_PREFIX = "capsul-bk-";
const BITMAP_RE = /^capsul-bk-(\d+)$/;
/** The merge of the bitmaps an incremental copies; not persistent, removed after the job. */
export const MERGE_BITMAP = "capsul-bk-merge";
export const TARGET_NODE_PREFIX = "capsul-bk-target-";
export const JOB_PREFIX = "capsul-bk-job-";
/** query-jobs polls while a job runs; progress reports are throttled separately (progress.ts). */
export const JOB_POLL_INTERVAL_MS = 250;

export const bitmapName = (seq: number): string => `${BITMAP_PREFIX}${seq}`;

export interface BitmapInfo {
  name: string; recording: boolean; persistent: boolean; busy: boolean; inconsistent: boolean; count: number;
}

export interface DiskInfo {
  /** The qcow2 node the bitmaps live on (DISK_NODE_NAME, or QEMU's own name for VMs started before it). */
  node: string;
  virtualBytes: number;
  bitmaps: BitmapInfo[];
}

interface NamedNode { "node-name": string; image: { "virtual-size": number }; "dirty-bitmaps"?: Array<Partial<BitmapInfo>> }

/**
 * The VM's disk as QEMU sees it now: the qcow2 node behind the -drive
 * DISK_DRIVE_ID (query-block), or the node DISK_NODE_NAME of a helper QEMU,
 * which has no drive; its size and bitmaps from query-named-block-nodes.
 */
export async function diskInfo(qmp: QmpClient): Promise<DiskInfo> {
  const blocks = await qmp.execute<Array<{ device: string; inserted?: { "node-name": string } }>>("query-block");
  const name = blocks.find((x) => x.device === DISK_DRIVE_ID)?.inserted?.["node-name"] ?? DISK_NODE_NAME;
  const nodes = await qmp.execute<NamedNode[]>("query-named-block-nodes", { flat: true });
  const b = nodes.find((n) => n["node-name"] === name);
  if (!b) throw new ProvisionerError("backup_no_disk", `QEMU has no disk node ${name}`, 500);
  return {
    node: name,
    virtualBytes: b.image["virtual-size"],
    bitmaps: (b["dirty-bitmaps"] ?? []).map((x) => ({
      name: String(x.name), recording: x.recording === true, persistent: x.persistent === true, busy: x.busy === true,
      inconsistent: x.inconsistent === true, count: Number(x.count ?? 0),
    })),
  };
}

/** Our bitmaps with their sequence numbers, oldest first. */
export function ourBitmaps(bitmaps: BitmapInfo[]): Array<BitmapInfo & { seq: number }> {
  const out: Array<BitmapInfo & { seq: number }> = [];
  for (const b of bitmaps) {
    const m = BITMAP_RE.exec(b.name);
    if (m) out.push({ ...b, seq: Number(m[1]) });
  }
  return out.sort((a, b) => a.seq - b.seq);
}

export type IncrementalPlan = { ok: true; merge: string[] } | { ok: false; reason: string };

/** Which bitmaps hold every write since backup `sinceSeq`, or why none can be trusted. */
export function planIncremental(bitmaps: BitmapInfo[], sinceSeq: number): IncrementalPlan {
  const needed = ourBitmaps(bitmaps).filter((b) => b.seq >= sinceSeq);
  if (needed[0]?.seq !== sinceSeq) {
    return { ok: false, reason: `the disk has no bitmap ${bitmapName(sinceSeq)} (QEMU stopped without a clean shutdown since backup ${sinceSeq}, or the disk was replaced)` };
  }
  const bad = needed.find((b) => b.inconsistent);
  if (bad) return { ok: false, reason: `bitmap ${bad.name} is inconsistent: QEMU stopped without a clean shutdown (killed, crashed, power loss)` };
  const busy = needed.find((b) => b.busy);
  if (busy) return { ok: false, reason: `bitmap ${busy.name} is in use by another job` };
  const newest = needed[needed.length - 1]!;
  if (!newest.recording) return { ok: false, reason: `bitmap ${newest.name} no longer records writes` };
  return { ok: true, merge: needed.map((b) => b.name) };
}

interface JobInfo { id: string; type: string; status: string; "current-progress": number; "total-progress": number; error?: string }

async function ourJobs(qmp: QmpClient): Promise<JobInfo[]> {
  return (await qmp.execute<JobInfo[]>("query-jobs")).filter((j) => j.id.startsWith(JOB_PREFIX));
}

async function waitConcluded(qmp: QmpClient, id: string, timeoutMs: number): Promise<JobInfo | null> {
  const deadline = Date.now() + timeoutMs;
  for (;;) {
    const j = (await qmp.execute<JobInfo[]>("query-jobs")).find((x) => x.id === id);
    if (!j || j.status === "concluded" || j.status === "null") return j ?? null;
    if (Date.now() > deadline) return j;
    await new Promise((r) => setTimeout(r, JOB_POLL_INTERVAL_MS));
  }
}

/**
 * What a backup interrupted by a kill -9 of the provisioner left in QEMU: its
 * job (cancelled, dismissed), its target node, the merge bitmap. Returns what
 * it cleaned, for the log. Inconsistent bitmaps of ours are removed too: they
 * can never be used again.
 */
export async function cleanupStale(qmp: QmpClient, disk: DiskInfo, cancelTimeoutMs: number): Promise<string[]> {
  const done: string[] = [];
  for (const j of await ourJobs(qmp)) {
    if (j.status !== "concluded" && j.status !== "null") {
      await qmp.execute("job-cancel", { id: j.id }).catch(() => undefined);
      await waitConcluded(qmp, j.id, cancelTimeoutMs);
    }
    await qmp.execute("job-dismiss", { id: j.id }).catch(() => undefined);
    done.push(`job ${j.id}`);
  }
  const nodes = await qmp.execute<Array<{ "node-name": string }>>("query-named-block-nodes", { flat: true });
  for (const n of nodes) {
    if (!n["node-name"].startsWith(TARGET_NODE_PREFIX)) continue;
    await qmp.execute("blockdev-del", { "node-name": n["node-name"] }).catch(() => undefined);
    done.push(`node ${n["node-name"]}`);
  }
  for (const b of disk.bitmaps) {
    if (b.name === MERGE_BITMAP || (BITMAP_RE.test(b.name) && b.inconsistent)) {
      await qmp.execute("block-dirty-bitmap-remove", { node: disk.node, name: b.name }).catch(() => undefined);
      done.push(`bitmap ${b.name}`);
    }
  }
  return done;
}

/** Removes our bitmaps below `seq`: after backup `seq` is recorded, nothing builds on them. */
export async function dropBitmapsBelow(qmp: QmpClient, disk: DiskInfo, seq: number): Promise<void> {
  for (const b of ourBitmaps(disk.bitmaps)) {
    if (b.seq < seq) await qmp.execute("block-dirty-bitmap-remove", { node: disk.node, name: b.name });
  }
}

export interface JobSpec {
  disk: DiskInfo;
  seq: number;
  /** The target qcow2 (already created with the disk's virtual size; an incremental's with its backing file). */
  targetFile: string;
  /** Bitmaps to merge for an incremental (planIncremental); null for a full backup. */
  merge: string[] | null;
  rateLimitBytesPerSec: number;
  stallTimeoutMs: number;
  /** How long a cancelled job may take to conclude (it stops at its next cluster: milliseconds; qmp_timeout). */
  cancelTimeoutMs: number;
  meter: ProgressMeter;
  signal: AbortSignal;
  /** Runs right before the transaction (fsfreeze) and right after it (thaw), whatever happened. */
  around?: { before(): Promise<void>; after(): Promise<void> };
}

/**
 * Copies the disk into `targetFile` with blockdev-backup: full, or the clusters
 * marked by the merged bitmaps. Returns the bytes the job went through and the
 * moment it started (the moment the backup shows). The target is opened
 * without its backing file (backing: null): the job only writes, and the
 * previous backups stay closed and untouched.
 */
export async function runBackupJob(qmp: QmpClient, s: JobSpec): Promise<{ bytes: number; startedAt: number }> {
  const node = `${TARGET_NODE_PREFIX}${s.seq}`;
  const job = `${JOB_PREFIX}${s.seq}`;
  const { disk } = s;
  await qmp.execute("blockdev-add", {
    "node-name": node, driver: "qcow2", backing: null,
    file: { driver: "file", filename: s.targetFile },
  });
  let started = false;
  try {
    const actions: Array<{ type: string; data: Record<string, unknown> }> = [
      { type: "block-dirty-bitmap-add", data: { node: disk.node, name: bitmapName(s.seq), persistent: true } },
    ];
    for (const b of ourBitmaps(disk.bitmaps)) {
      if (b.recording) actions.push({ type: "block-dirty-bitmap-disable", data: { node: disk.node, name: b.name } });
    }
    const backup: Record<string, unknown> = {
      "job-id": job, device: disk.node, target: node, "auto-dismiss": false, "on-source-error": "report", "on-target-error": "report",
    };
    if (s.rateLimitBytesPerSec > 0) backup.speed = s.rateLimitBytesPerSec;
    if (s.merge) {
      await qmp.execute("block-dirty-bitmap-add", { node: disk.node, name: MERGE_BITMAP, disabled: true, persistent: false });
      actions.push({ type: "block-dirty-bitmap-merge", data: { node: disk.node, target: MERGE_BITMAP, bitmaps: s.merge } });
      Object.assign(backup, { sync: "bitmap", bitmap: MERGE_BITMAP, "bitmap-mode": "never" });
    } else {
      backup.sync = "full";
    }
    actions.push({ type: "blockdev-backup", data: backup });
    // The moment the backup shows is this transaction: a frozen guest has
    // flushed everything before it, and is thawed as soon as it returns (the
    // job then copies old data before the guest overwrites it: copy-before-write).
    await s.around?.before();
    const startedAt = Date.now();
    try {
      await qmp.execute("transaction", { actions });
      started = true;
    } finally {
      await s.around?.after();
    }
    return { bytes: await watchJob(qmp, job, s), startedAt };
  } finally {
    if (started) await qmp.execute("job-dismiss", { id: job }).catch(() => undefined);
    await qmp.execute("blockdev-del", { "node-name": node }).catch(() => undefined);
    if (s.merge) await qmp.execute("block-dirty-bitmap-remove", { node: disk.node, name: MERGE_BITMAP }).catch(() => undefined);
  }
}

async function watchJob(qmp: QmpClient, job: string, s: JobSpec): Promise<number> {
  let lastBytes = -1;
  let lastMove = Date.now();
  for (;;) {
    const j = (await qmp.execute<JobInfo[]>("query-jobs")).find((x) => x.id === job);
    if (!j) throw new ProvisionerError("backup_failed", `backup job ${job} vanished`, 500);
    s.meter.update(j["current-progress"], j["total-progress"], j.status === "concluded");
    if (j.status === "concluded") {
      if (j.error) throw new ProvisionerError("backup_failed", `QEMU backup job failed: ${j.error}`, 500);
      return j["current-progress"];
    }
    if (j["current-progress"] !== lastBytes) { lastBytes = j["current-progress"]; lastMove = Date.now(); }
    const why = s.signal.aborted ? "the provisioner is shutting down"
      : Date.now() - lastMove > s.stallTimeoutMs ? `no progress for ${s.stallTimeoutMs} ms (stall_timeout)` : null;
    if (why) {
      await qmp.execute("job-cancel", { id: job }).catch(() => undefined);
      await waitConcluded(qmp, job, s.cancelTimeoutMs);
      throw new ProvisionerError("backup_cancelled", `backup cancelled: ${why}`, 503);
    }
    await new Promise((r) => setTimeout(r, JOB_POLL_INTERVAL_MS));
  }
}
