import { createHash } from "node:crypto";
import fs from "node:fs";
import fsp from "node:fs/promises";
import path from "node:path";
import { HTTPS_MODES, type HttpsMode } from "./db.js";
import { badRequest, conflict, internal, notFound } from "./errors.js";

/**
 * The backup directory of one cog (README "Backups"):
 *
 *   <dir>/<vm name>/manifest.json     the chain, the source of truth
 *   <dir>/<vm name>/0001-full.qcow2   a full backup: a standalone qcow2
 *   <dir>/<vm name>/0002-inc.qcow2    an incremental: a qcow2 whose backing
 *                                     file is the previous backup ("0001-full.qcow2",
 *                                     relative, so the directory can move)
 *
 * so `qemu-img convert 0002-inc.qcow2 disk.qcow2` alone restores a disk, even
 * without capsul. manifest.json names each backup, its parent, its size and
 * SHA-256 (checked before a restore), and the VM it was taken from (uuid,
 * image, size, SSH keys: enough to recreate a deleted VM). A backup is written
 * as `<file>.part` and enters the manifest only once complete; the manifest is
 * replaced atomically (write, fsync, rename). Sequence numbers never repeat in
 * one directory: they name the persistent dirty bitmaps in the VM's disk too
 * (backupjob.ts), and `nextSeq` is saved before a bitmap is created.
 */

export const MANIFEST_FILE = "manifest.json";
export const MANIFEST_VERSION = 1;
/** A manifest larger than this is not one capsul wrote (a backup record is ~600 bytes). */
export const MANIFEST_MAX_BYTES = 4 * 1024 * 1024;
/** The names backup.ts gives backup files: sequence number, kind. */
export const BACKUP_FILE_RE = /^\d{4,}-(full|inc)\.qcow2$/;
/** Backup ids are the sequence number in decimal. */
export const BACKUP_ID_RE = /^[1-9][0-9]{0,8}$/;

export type BackupKind = "full" | "incremental";

/** What a restore needs to recreate the VM the backup was taken from. */
/** `https`: the VM's HTTPS mode (absent in backups made before `--https`: passthrough). */
export interface BackupVmInfo {
  uuid: string; image: string; size: string; sshKeys: string[]; https?: HttpsMode;
  /** Custom domains at backup time (absent in backups from before them); a restore as a new VM keeps the free ones. */
  domains?: string[];
}

export interface BackupRecord {
  id: string;
  seq: number;
  kind: BackupKind;
  /** The backup this one is an increment on (its qcow2 backing file); null for a full one. */
  parent: string | null;
  /** File name inside the VM's backup directory. */
  file: string;
  /** The moment the backup shows (the job's start, ISO 8601). */
  createdAt: string;
  durationMs: number;
  /** Size of the qcow2 file. */
  bytes: number;
  /**
   * Bytes the job went through: the whole disk for a full backup (unallocated
   * and zero areas become zero clusters, hence the small file), the changed
   * clusters for an incremental.
   */
  dataBytes: number;
  /** The disk's virtual size. */
  virtualBytes: number;
  sha256: string;
  /**
   * "filesystem": the guest agent froze the guest's filesystems; "crash": as
   * after a power cut; "stopped": taken from the disk of a stopped VM.
   */
  consistency: "filesystem" | "crash" | "stopped";
  /** Taken from a running VM (true) or from its disk while stopped (false). */
  online: boolean;
  vm: BackupVmInfo;
}

export interface Manifest {
  version: number;
  vm: string;
  nextSeq: number;
  /** Why the next backup must be a full one, set when the VM's disk was replaced by a restore. */
  resetReason: string | null;
  backups: BackupRecord[];
}

const isStr = (v: unknown): v is string => typeof v === "string";
const isInt = (v: unknown): v is number => typeof v === "number" && Number.isSafeInteger(v) && v >= 0;

function checkRecord(r: unknown, i: number): BackupRecord {
  const b = r as Partial<BackupRecord> | null;
  const bad = (what: string): never => { throw new Error(`backups[${i}]: ${what}`); };
  if (!b || typeof b !== "object") bad("not an object");
  if (!isStr(b!.id) || !BACKUP_ID_RE.test(b!.id) || b!.seq !== Number(b!.id)) bad("bad id/seq");
  if (b!.kind !== "full" && b!.kind !== "incremental") bad("bad kind");
  if (b!.kind === "full" ? b!.parent !== null : !isStr(b!.parent)) bad("bad parent");
  if (!isStr(b!.file) || path.basename(b!.file) !== b!.file || !b!.file.endsWith(".qcow2")) bad("bad file");
  if (b!.consistency !== "filesystem" && b!.consistency !== "crash" && b!.consistency !== "stopped") bad("bad consistency");
  if (!isStr(b!.createdAt) || !isStr(b!.sha256) || !/^[0-9a-f]{64}$/.test(b!.sha256)) bad("bad createdAt/sha256");
  if (!isInt(b!.bytes) || !isInt(b!.dataBytes) || !isInt(b!.virtualBytes) || !isInt(b!.durationMs)) bad("bad sizes");
  const vm = b!.vm;
  if (!vm || !isStr(vm.uuid) || !isStr(vm.image) || !isStr(vm.size) || !Array.isArray(vm.sshKeys) || !vm.sshKeys.every(isStr)) bad("bad vm");
  if (vm?.https !== undefined && !HTTPS_MODES.includes(vm.https)) bad("bad vm https");
  if (vm?.domains !== undefined && (!Array.isArray(vm.domains) || !vm.domains.every(isStr))) bad("bad vm domains");
  return b as BackupRecord;
}

export function parseManifest(text: string, vm: string): Manifest {
  const m = JSON.parse(text) as Partial<Manifest> | null;
  if (!m || typeof m !== "object") throw new Error("not an object");
  if (m.version !== MANIFEST_VERSION) throw new Error(`version ${String(m.version)}, this capsul reads ${MANIFEST_VERSION}`);
  if (m.vm !== vm) throw new Error(`belongs to VM ${JSON.stringify(m.vm)}`);
  if (!isInt(m.nextSeq) || !Array.isArray(m.backups)) throw new Error("bad nextSeq/backups");
  const backups = m.backups.map(checkRecord);
  const ids = new Set<string>();
  for (const b of backups) {
    if (ids.has(b.id)) throw new Error(`backup ${b.id} twice`);
    if (b.seq >= m.nextSeq) throw new Error(`backup ${b.id} not below nextSeq`);
    if (b.parent !== null && !ids.has(b.parent)) throw new Error(`backup ${b.id}: parent ${b.parent} is not an earlier backup`);
    ids.add(b.id);
  }
  return { version: MANIFEST_VERSION, vm, nextSeq: m.nextSeq, resetReason: isStr(m.resetReason) ? m.resetReason : null, backups };
}

/** SHA-256 of a file, reading it in the stream's chunks; `onBytes` after each. */
export async function sha256File(file: string, onBytes?: (n: number) => void): Promise<string> {
  const h = createHash("sha256");
  let n = 0;
  for await (const chunk of fs.createReadStream(file)) {
    h.update(chunk as Buffer);
    n += (chunk as Buffer).length;
    onBytes?.(n);
  }
  return h.digest("hex");
}

async function fsyncPath(p: string): Promise<void> {
  const fh = await fsp.open(p, "r");
  try { await fh.sync(); } finally { await fh.close(); }
}

export class BackupStore {
  constructor(readonly dir: string) {}

  vmDir(vm: string): string { return path.join(this.dir, vm); }
  filePath(vm: string, file: string): string { return path.join(this.vmDir(vm), file); }

  /** The manifest of `vm`; an empty one when it has no backups yet. A manifest that does not parse is an error, never "empty". */
  async load(vm: string): Promise<Manifest> {
    const file = path.join(this.vmDir(vm), MANIFEST_FILE);
    let text: string;
    try {
      const st = await fsp.stat(file);
      if (st.size > MANIFEST_MAX_BYTES) throw internal("backup_manifest_corrupt", `${file} is over ${MANIFEST_MAX_BYTES} bytes; not a capsul manifest`);
      text = await fsp.readFile(file, "utf8");
    } catch (e) {
      if ((e as NodeJS.ErrnoException).code === "ENOENT") return { version: MANIFEST_VERSION, vm, nextSeq: 1, resetReason: null, backups: [] };
      throw e;
    }
    try {
      return parseManifest(text, vm);
    } catch (e) {
      throw internal("backup_manifest_corrupt", `backup manifest ${file} is unreadable (${(e as Error).message}); fix or move it away`, e);
    }
  }

  async save(m: Manifest): Promise<void> {
    const dir = this.vmDir(m.vm);
    await fsp.mkdir(dir, { recursive: true, mode: 0o700 });
    const file = path.join(dir, MANIFEST_FILE);
    const tmp = `${file}.tmp`;
    await fsp.writeFile(tmp, JSON.stringify(m, null, 1) + "\n", { mode: 0o600 });
    await fsyncPath(tmp);
    await fsp.rename(tmp, file);
    await fsyncPath(dir);
  }

  /** VM names that have a backup directory (deleted VMs included). */
  async vmNames(): Promise<string[]> {
    try {
      return (await fsp.readdir(this.dir, { withFileTypes: true })).filter((d) => d.isDirectory()).map((d) => d.name).sort();
    } catch {
      return [];
    }
  }

  /**
   * Removes what backups that never completed left (a crash, a kill -9, a
   * failure): `*.part` files, and backup files the manifest does not name
   * (written completely, killed before they were recorded). Other files are
   * not capsul's and stay.
   */
  async removeUnfinished(m: Manifest): Promise<string[]> {
    const dir = this.vmDir(m.vm);
    let names: string[] = [];
    try { names = await fsp.readdir(dir); } catch { return []; }
    const known = new Set(m.backups.map((b) => b.file));
    const gone = names.filter((n) => n.endsWith(".part") || n === `${MANIFEST_FILE}.tmp` || (BACKUP_FILE_RE.test(n) && !known.has(n)));
    for (const n of gone) await fsp.rm(path.join(dir, n), { force: true });
    return gone.sort();
  }
}

/** A backup as the API shows it. */
export function backupView(b: BackupRecord, roots: Map<string, string>): Record<string, unknown> {
  return {
    id: b.id, kind: b.kind, parent: b.parent, chain: roots.get(b.id) ?? b.id, file: b.file, created_at: b.createdAt,
    duration_ms: b.durationMs, bytes: b.bytes, data_bytes: b.dataBytes, virtual_bytes: b.virtualBytes, sha256: b.sha256,
    consistency: b.consistency, online: b.online, vm_uuid: b.vm.uuid,
  };
}

/** The chain ending at `id`, full first. Throws not-found for an unknown id. */
export function chainOf(m: Manifest, id: string): BackupRecord[] {
  if (!BACKUP_ID_RE.test(id)) throw badRequest("bad_backup_id", `not a backup id: ${JSON.stringify(id)} (capsul vm backups ${m.vm})`);
  const byId = new Map(m.backups.map((b) => [b.id, b]));
  let b = byId.get(id);
  if (!b) throw notFound("backup_not_found", `VM ${m.vm} has no backup ${id} (capsul vm backups ${m.vm})`);
  const chain: BackupRecord[] = [];
  for (;;) {
    chain.unshift(b);
    if (b.parent === null) return chain;
    const p = byId.get(b.parent);
    if (!p) throw conflict("backup_chain_broken", `backup ${b.id} of ${m.vm} builds on backup ${b.parent}, which is gone`);
    b = p;
  }
}

/** The full backup each backup's chain starts with, by backup id. */
export function chainRoots(m: Manifest): Map<string, string> {
  const roots = new Map<string, string>();
  for (const b of m.backups) roots.set(b.id, b.parent === null ? b.id : roots.get(b.parent) ?? b.parent);
  return roots;
}

/**
 * Retention: the newest `keepFull` chains stay, older chains go whole (an
 * incremental is useless without what it builds on). Returns what to delete.
 */
export function pruneList(m: Manifest, keepFull: number): BackupRecord[] {
  const roots = chainRoots(m);
  const fulls = m.backups.filter((b) => b.kind === "full").sort((a, b) => b.seq - a.seq);
  const keep = new Set(fulls.slice(0, keepFull).map((b) => b.id));
  return m.backups.filter((b) => !keep.has(roots.get(b.id)!));
}

/** Deletes backups from the manifest (saved first) and then their files. */
export async function deleteBackups(store: BackupStore, m: Manifest, gone: BackupRecord[]): Promise<void> {
  if (gone.length === 0) return;
  const ids = new Set(gone.map((b) => b.id));
  m.backups = m.backups.filter((b) => !ids.has(b.id));
  // Manifest first: a crash in between leaves stray files, never a record without its file.
  await store.save(m);
  for (const b of gone) await fsp.rm(store.filePath(m.vm, b.file), { force: true });
}

/** Checks that every file of a chain exists with its recorded size (cheap; the SHA-256 is checked before a restore). */
export function missingFiles(store: BackupStore, m: Manifest, chain: BackupRecord[]): string | null {
  for (const b of chain) {
    let size: number;
    try { size = fs.statSync(store.filePath(m.vm, b.file)).size; } catch { return `backup file ${b.file} is missing`; }
    if (size !== b.bytes) return `backup file ${b.file} has ${size} bytes, the manifest says ${b.bytes}`;
  }
  return null;
}

