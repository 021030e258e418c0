import { createHash, randomBytes } from "node:crypto";
import fs from "node:fs";
import fsp from "node:fs/promises";
import path from "node:path";
import type { Readable, Writable } from "node:stream";
import type { ProvisionerConfig } from "../config/types.js";
import type { Logger } from "../lib/log.js";
import { ExactReader, parseTarHeader, TAR_BLOCK_BYTES, TAR_END, tarHeader, tarLength, tarPadding, writeAll } from "./archive.js";
import { sha256File } from "./backupstore.js";
import { NAME_RE } from "./config.js";
import { HTTPS_MODES, type HttpsMode, type ImageRecord, type Store } from "./db.js";
import { badRequest, conflict, notFound, ProvisionerError } from "./errors.js";
import { type ImageCatalogue, notSelfContained } from "./images.js";
import { ProgressMeter, type ProgressFn, type ProgressPhase } from "./progress.js";
import { runFiles } from "./qemu.js";
import { flattenQcow2 } from "./restore.js";
import { domainRouteNames } from "./routes.js";
import { domainsFreeFor, parseVmDomain } from "./vmdomains.js";
import { seedFiles } from "./seed.js";
import { runTool } from "./tools.js";
import type { VmManager } from "./vms.js";

/**
 * `capsul vm export|import` (README "Moving a capsul"): one tar (archive.ts)
 * holding manifest.json, the VM's disk flattened into a standalone qcow2 by
 * `qemu-img convert`, and the cloud-init seed it was given. The manifest names
 * every other part with its size and SHA-256, and the image the VM boots with
 * (name and the SHA-256 of its files: a kernel+initrd image is not in the
 * archive, the target must hold the same one).
 *
 * An import reads the tar once, in order, from a file or a network stream:
 * manifest first (at most MANIFEST_MAX_BYTES), then each part into a staging
 * dir, hashed as it is written, refused at the first byte past its declared
 * size. Only when every part matches and `qemu-img info` (under prlimit) finds
 * a self-contained qcow2 no larger than the size's disk is the VM created. Any
 * failure removes the staging dir: nothing is left behind.
 *
 * The VM keeps its uuid (cloud-init's instance-id): the guest sees the same
 * instance and keeps its SSH host keys and its data. A copy imported beside a
 * VM that has that uuid gets a new one, as any new VM.
 */

export const ARCHIVE_FORMAT = "capsul-vm-archive";
export const ARCHIVE_VERSION = 1;
export const MANIFEST_NAME = "manifest.json";
/** vm.domains in a manifest: the largest max_domains_per_vm a cog may set; the importing cog's own limit applies after. */
export const MANIFEST_MAX_DOMAINS = 1000;
/** A manifest is ~2 KiB with 32 SSH keys; anything near this is not one. */
export const MANIFEST_MAX_BYTES = 1024 * 1024;
/** Staging dirs of exports and imports, under the data dir. */
export const EXPORT_SUBDIR = "export";
export const INCOMING_SUBDIR = "incoming";
/** Reads and writes of parts go in pieces of this size (the tar reader keeps at most 128 blocks = 64 KiB ahead). */
const COPY_CHUNK_BYTES = 64 * 1024;
/** The parts, in archive order. Nothing else is ever read from an archive. */
export const PART_NAMES = ["disk.qcow2", "seed/meta-data", "seed/user-data"] as const;

export interface ArchivePart { name: string; bytes: number; sha256: string }

export interface ArchiveManifest {
  format: typeof ARCHIVE_FORMAT;
  version: number;
  created_at: string;
  source_cog: string;
  vm: {
    name: string; uuid: string; size: string; ssh_keys: string[]; ssh_user: string; hostname: string; routes: string[]; https?: HttpsMode;
    /** Custom domains (`capsul vm domains`); absent in archives from before them. */
    domains?: string[];
  };
  image: { name: string; format: string; files: Record<string, { sha256: string; bytes: number }> };
  disk: { format: "qcow2"; virtual_bytes: number; flattened: true };
  parts: ArchivePart[];
}

export interface ExportDeps {
  cfg: ProvisionerConfig; db: Store; vms: VmManager; images: ImageCatalogue; log: Logger; signal: AbortSignal; cogName: string; hubDomain: string;
}

/** An archive ready to be written: its parts staged and hashed. `cleanup()` removes the staging dir. */
export interface PreparedExport {
  manifest: ArchiveManifest;
  manifestBytes: Buffer;
  files: string[];
  /** Length of the whole tar. */
  totalBytes: number;
  cleanup(): Promise<void>;
}

const sha256 = (b: Buffer | string): string => createHash("sha256").update(b).digest("hex");

function imageFiles(image: ImageRecord): Record<string, { sha256: string; bytes: number }> {
  const out: Record<string, { sha256: string; bytes: number }> = {};
  for (const [k, f] of Object.entries(image.files)) out[k] = { sha256: f.sha256, bytes: f.bytes };
  return out;
}

/**
 * Flattens the disk of a stopped VM, writes its seed inputs and hashes it all.
 * A running VM is refused: a disk copied while the guest writes is not one
 * moment of it (a live export is not supported; stop it, or `vm move --stop`).
 */
export async function prepareExport(d: ExportDeps, name: string, onProgress?: ProgressFn): Promise<PreparedExport> {
  const v = d.db.getVm(name);
  if (!v) throw notFound("vm_not_found", `no VM named ${JSON.stringify(name)}`);
  const image = d.db.getImage(v.image);
  if (!image) throw conflict("image_not_found", `VM ${name} uses image ${v.image}, which this cog no longer has`);
  const dir = path.join(d.cfg.dataDir, EXPORT_SUBDIR, `${name}-${randomBytes(6).toString("hex")}`);
  const cleanup = (): Promise<void> => fsp.rm(dir, { recursive: true, force: true });
  await fsp.mkdir(dir, { recursive: true, mode: 0o700 });
  try {
    await fsp.mkdir(path.join(dir, "seed"));
    const disk = path.join(dir, PART_NAMES[0]);
    let virtualBytes = 0;
    // Under the VM's lifecycle lock: no start while its disk is read.
    await d.vms.exclusive(name, async () => {
      if (d.vms.liveVm(name) || d.db.getVm(name)?.desired === "running") {
        throw conflict("vm_running", `VM ${name} is running: stop it first (capsul vm stop ${name}); a live export is not supported`);
      }
      const src = runFiles(d.vms.runDir(name)).disk;
      const { stdout } = await runTool("export_failed", d.cfg.qemuImgBinary, ["info", "--output=json", "-f", "qcow2", src], d.cfg.toolTimeoutMs);
      virtualBytes = Number((JSON.parse(stdout) as { "virtual-size"?: number })["virtual-size"] ?? 0);
      await flattenQcow2(d.cfg, d.signal, src, disk, virtualBytes, "flatten", onProgress);
    });
    const seed = seedFiles({ name: v.name, uuid: v.uuid, sshKeys: v.sshKeys, sshUser: image.sshUser });
    await fsp.writeFile(path.join(dir, PART_NAMES[1]), seed.metaData);
    await fsp.writeFile(path.join(dir, PART_NAMES[2]), seed.userData);
    const files = PART_NAMES.map((p) => path.join(dir, p));
    const sizes = await Promise.all(files.map(async (f) => (await fsp.stat(f)).size));
    const total = sizes.reduce((a, b) => a + b, 0);
    const meter = new ProgressMeter("checksum", onProgress);
    const parts: ArchivePart[] = [];
    let before = 0;
    for (let i = 0; i < files.length; i++) {
      parts.push({ name: PART_NAMES[i]!, bytes: sizes[i]!, sha256: await sha256File(files[i]!, (n) => meter.update(before + n, total)) });
      before += sizes[i]!;
    }
    meter.update(total, total, true);
    const manifest: ArchiveManifest = {
      format: ARCHIVE_FORMAT, version: ARCHIVE_VERSION, created_at: new Date().toISOString(), source_cog: d.cogName,
      vm: {
        name: v.name, uuid: v.uuid, size: v.size, ssh_keys: v.sshKeys, ssh_user: image.sshUser, https: v.https,
        hostname: `${v.name}.${d.cogName}.${d.hubDomain}`.toLowerCase(),
        routes: [`vm-${v.name}-https`, `vm-${v.name}-http`, `vm-${v.name}-ssh`, ...v.domains.flatMap((dom) => Object.values(domainRouteNames(v.name, dom)))],
        domains: v.domains,
      },
      image: { name: image.name, format: image.format, files: imageFiles(image) },
      disk: { format: "qcow2", virtual_bytes: virtualBytes, flattened: true },
      parts,
    };
    const manifestBytes = Buffer.from(JSON.stringify(manifest, null, 2) + "\n");
    return { manifest, manifestBytes, files, totalBytes: tarLength([manifestBytes.length, ...sizes]), cleanup };
  } catch (e) {
    await cleanup();
    throw e;
  }
}

/**
 * Writes the tar to `out` with progress (`phase`), at most `bytesPerSec` (0: as
 * fast as `out` takes it). Does not end `out`.
 */
export async function writeArchive(p: PreparedExport, out: Writable, phase: ProgressPhase, onProgress?: ProgressFn, bytesPerSec = 0): Promise<void> {
  const meter = new ProgressMeter(phase, onProgress);
  const started = Date.now();
  let sent = 0;
  const put = async (b: Buffer): Promise<void> => {
    await writeAll(out, b);
    sent += b.length;
    meter.update(sent, p.totalBytes);
    if (bytesPerSec > 0) {
      const ahead = sent / bytesPerSec * 1000 - (Date.now() - started);
      if (ahead > 0) await new Promise((r) => setTimeout(r, ahead));
    }
  };
  const mtime = Math.floor(Date.parse(p.manifest.created_at) / 1000);
  await put(tarHeader(MANIFEST_NAME, p.manifestBytes.length, mtime));
  await put(p.manifestBytes);
  await put(tarPadding(p.manifestBytes.length));
  for (let i = 0; i < p.files.length; i++) {
    const part = p.manifest.parts[i]!;
    await put(tarHeader(part.name, part.bytes, mtime));
    let n = 0;
    for await (const chunk of fs.createReadStream(p.files[i]!, { highWaterMark: COPY_CHUNK_BYTES })) {
      n += (chunk as Buffer).length;
      if (n > part.bytes) throw new ProvisionerError("export_failed", `${part.name} grew while it was exported`, 500);
      await put(chunk as Buffer);
    }
    if (n !== part.bytes) throw new ProvisionerError("export_failed", `${part.name} shrank while it was exported`, 500);
    await put(tarPadding(part.bytes));
  }
  await put(TAR_END);
  meter.update(sent, p.totalBytes, true);
}

const isRecord = (v: unknown): v is Record<string, unknown> => typeof v === "object" && v !== null && !Array.isArray(v);
const isSha = (v: unknown): v is string => typeof v === "string" && /^[0-9a-f]{64}$/.test(v);
const isCount = (v: unknown): v is number => typeof v === "number" && Number.isSafeInteger(v) && v >= 0;

/** Checks a manifest's shape and limits; its numbers are only claims until the parts are read. */
export function validateManifest(raw: unknown, maxArchiveBytes: number, maxSshKeys: number): ArchiveManifest {
  const bad = (why: string): never => { throw new ProvisionerError("archive_invalid", `manifest.json: ${why}`, 400); };
  if (!isRecord(raw)) return bad("not a JSON object");
  if (raw.format !== ARCHIVE_FORMAT) bad(`format is not ${ARCHIVE_FORMAT}`);
  if (raw.version !== ARCHIVE_VERSION) bad(`version ${JSON.stringify(raw.version)}; this capsul reads version ${ARCHIVE_VERSION}: upgrade it`);
  const vm = raw.vm;
  if (!isRecord(vm) || typeof vm.name !== "string" || !NAME_RE.test(vm.name)) return bad("vm.name is not a VM name");
  if (typeof vm.uuid !== "string" || !/^[0-9a-f-]{36}$/.test(vm.uuid)) bad("vm.uuid is not a uuid");
  if (typeof vm.size !== "string" || !NAME_RE.test(vm.size)) bad("vm.size is not a size name");
  // Absent in archives from before `vm create --https`: those VMs pass TLS through.
  if (vm.https !== undefined && !HTTPS_MODES.includes(vm.https as HttpsMode)) bad(`vm.https must be ${HTTPS_MODES.join(" or ")}`);
  if (vm.domains !== undefined) {
    if (!Array.isArray(vm.domains) || vm.domains.length > MANIFEST_MAX_DOMAINS) bad(`vm.domains: a list of at most ${MANIFEST_MAX_DOMAINS} hostnames`);
    (vm.domains as unknown[]).forEach((dom, i) => {
      try {
        if (parseVmDomain(dom, `vm.domains[${i}]`) !== dom) bad(`vm.domains[${i}]: not in normal form (lower case, no trailing dot)`);
      } catch (e) {
        if (e instanceof ProvisionerError && e.code === "bad_domain") bad(e.message);
        throw e;
      }
    });
  }
  if (!Array.isArray(vm.ssh_keys) || vm.ssh_keys.length > maxSshKeys || !vm.ssh_keys.every((k) => typeof k === "string" && k.length < 16384 && !/[\r\n\0]/.test(k))) {
    bad(`vm.ssh_keys: at most ${maxSshKeys} one-line keys`);
  }
  const image = raw.image;
  if (!isRecord(image) || typeof image.name !== "string" || !NAME_RE.test(image.name) || !isRecord(image.files)) return bad("image: name and files required");
  for (const [k, f] of Object.entries(image.files)) if (!isRecord(f) || !isSha(f.sha256) || !isCount(f.bytes)) bad(`image.files.${k}: sha256 and bytes required`);
  if (!isRecord(raw.disk) || !isCount(raw.disk.virtual_bytes)) bad("disk.virtual_bytes required");
  const parts = raw.parts;
  if (!Array.isArray(parts) || parts.length !== PART_NAMES.length) return bad(`parts: exactly ${PART_NAMES.join(", ")}`);
  let total = 0;
  parts.forEach((p, i) => {
    if (!isRecord(p) || p.name !== PART_NAMES[i]) bad(`parts[${i}]: must be ${PART_NAMES[i]} (the archive may hold nothing else, in this order)`);
    const q = p as Record<string, unknown>;
    if (!isCount(q.bytes) || !isSha(q.sha256)) bad(`parts[${i}]: bytes and sha256 required`);
    total += q.bytes as number;
  });
  if (total > maxArchiveBytes) {
    throw new ProvisionerError("archive_too_large", `the archive declares ${total} bytes, over this cog's max_archive_size (${maxArchiveBytes}); nothing was kept`, 413);
  }
  return raw as unknown as ArchiveManifest;
}

export interface ImportOptions {
  /** Recreate under this name instead of the archive's. */
  as?: string;
  /** The whole stream must be exactly this long (a move declares its length). */
  expectBytes?: number;
}

async function readPart(r: ExactReader, part: ArchivePart, file: string, meter: ProgressMeter, done: { bytes: number; total: number }): Promise<void> {
  const head = await r.exact(TAR_BLOCK_BYTES);
  if (!head) throw new ProvisionerError("archive_truncated", `the archive ends before ${part.name}; nothing was kept`, 400);
  const h = parseTarHeader(head);
  if (!h) throw new ProvisionerError("archive_truncated", `the archive ends before ${part.name}; nothing was kept`, 400);
  if (h.name !== part.name) throw new ProvisionerError("archive_invalid", `archive entry ${JSON.stringify(h.name)} where ${part.name} belongs; nothing was kept`, 400);
  if (h.bytes !== part.bytes) throw new ProvisionerError("archive_invalid", `${part.name} is ${h.bytes} bytes in the tar but ${part.bytes} in the manifest; nothing was kept`, 400);
  done.bytes += TAR_BLOCK_BYTES;
  const hash = createHash("sha256");
  const fh = await fsp.open(file, "wx", 0o600);
  try {
    let left = part.bytes;
    while (left > 0) {
      const chunk = await r.some(Math.min(left, COPY_CHUNK_BYTES));
      if (!chunk) throw new ProvisionerError("archive_truncated", `the archive ends inside ${part.name} (${part.bytes - left} of ${part.bytes} bytes); nothing was kept`, 400);
      hash.update(chunk);
      await fh.write(chunk);
      left -= chunk.length;
      done.bytes += chunk.length;
      meter.update(done.bytes, done.total);
    }
  } finally {
    await fh.close();
  }
  const pad = tarPadding(part.bytes).length;
  if (pad && !(await r.exact(pad))) throw new ProvisionerError("archive_truncated", `the archive ends inside ${part.name}'s padding; nothing was kept`, 400);
  done.bytes += pad;
  if (hash.digest("hex") !== part.sha256) {
    throw new ProvisionerError("archive_corrupt", `${part.name} does not match its SHA-256 in the manifest: the archive is corrupt; nothing was kept`, 400);
  }
}

/**
 * Reads a VM archive from `src` and recreates the VM on this cog (see the top of
 * this file). On any failure nothing of it stays: no staging files, no VM row.
 */
export async function importArchive(d: ExportDeps, src: Readable, opts: ImportOptions, onProgress?: ProgressFn): Promise<Record<string, unknown>> {
  const r = new ExactReader(src);
  const head = await r.exact(TAR_BLOCK_BYTES);
  if (!head) throw new ProvisionerError("archive_truncated", "the archive is empty or ends in its first header", 400);
  const h = parseTarHeader(head);
  if (!h || h.name !== MANIFEST_NAME) throw new ProvisionerError("archive_invalid", `not a capsul VM archive: the first entry must be ${MANIFEST_NAME}`, 400);
  if (h.bytes > MANIFEST_MAX_BYTES) throw new ProvisionerError("archive_invalid", `${MANIFEST_NAME} declares ${h.bytes} bytes (at most ${MANIFEST_MAX_BYTES})`, 400);
  const body = await r.exact(h.bytes + tarPadding(h.bytes).length);
  if (!body) throw new ProvisionerError("archive_truncated", `the archive ends inside ${MANIFEST_NAME}`, 400);
  let raw: unknown;
  try { raw = JSON.parse(body.subarray(0, h.bytes).toString("utf8")); } catch { throw new ProvisionerError("archive_invalid", `${MANIFEST_NAME} is not JSON`, 400); }
  const m = validateManifest(raw, d.cfg.maxArchiveBytes, d.cfg.maxSshKeys);
  const total = tarLength([h.bytes, ...m.parts.map((p) => p.bytes)]);
  if (opts.expectBytes !== undefined && opts.expectBytes !== total) {
    throw new ProvisionerError("archive_invalid", `the archive's manifest adds up to ${total} bytes, the sender declared ${opts.expectBytes}`, 400);
  }

  const name = opts.as ?? m.vm.name;
  if (!NAME_RE.test(name)) throw badRequest("bad_name", "as: must match ^[a-z][a-z0-9-]{0,38}$");
  if (d.db.getVm(name)) throw conflict("vm_exists", `a VM named ${name} already exists on this cog: import it --as another name, or delete that one`);
  const size = d.cfg.sizes[m.vm.size];
  if (!size) throw conflict("size_not_found", `the VM has size ${m.vm.size}, which this cog does not offer (add it to cog.provisioner.sizes)`);
  if (m.disk.virtual_bytes > size.diskBytes) throw badRequest("archive_invalid", `the disk (${m.disk.virtual_bytes} bytes) is larger than size ${m.vm.size}'s disk here (${size.diskBytes})`);
  const image = d.db.getImage(m.image.name);
  if (!image) throw conflict("image_not_found", `the VM boots image ${m.image.name}, which this cog does not have: import the same image under that name first (capsul image import)`);
  for (const [k, f] of Object.entries(m.image.files)) {
    if (image.files[k]?.sha256 !== f.sha256) {
      throw conflict("image_mismatch", `image ${m.image.name} on this cog differs from the source cog's (its ${k} has another SHA-256): import the same image`);
    }
  }

  const stage = path.join(d.cfg.dataDir, INCOMING_SUBDIR, `${name}-${randomBytes(6).toString("hex")}`);
  await fsp.mkdir(path.join(stage, "seed"), { recursive: true, mode: 0o700 });
  try {
    const meter = new ProgressMeter("import", onProgress);
    const done = { bytes: TAR_BLOCK_BYTES + body.length, total };
    for (const part of m.parts) await readPart(r, part, path.join(stage, part.name), meter, done);
    const end = await r.exact(TAR_BLOCK_BYTES);
    if (end && parseTarHeader(end) !== null) throw new ProvisionerError("archive_invalid", "the archive holds more entries than its manifest names; nothing was kept", 400);
    if (!(await r.atEnd())) throw new ProvisionerError("archive_invalid", "data after the end of the archive; nothing was kept", 400);
    meter.update(done.total, done.total, true);
    const disk = path.join(stage, PART_NAMES[0]);
    const info = await d.images.inspectQcow2(disk);
    if (info.format !== "qcow2") throw new ProvisionerError("archive_invalid", `disk.qcow2 is ${info.format}, not qcow2`, 400);
    const problem = notSelfContained(info);
    if (problem) throw new ProvisionerError("archive_invalid", `disk.qcow2: ${problem}`, 400);
    if ((info["virtual-size"] ?? Infinity) > size.diskBytes) throw new ProvisionerError("archive_invalid", `disk.qcow2 is larger than size ${m.vm.size}'s disk`, 400);
    const uuid = d.db.listVms().some((v) => v.uuid === m.vm.uuid) ? undefined : m.vm.uuid;
    // A domain another VM here has stays with that VM; the import says which it dropped.
    const domains = domainsFreeFor(name, m.vm.domains ?? [], d.db.listVms(), { cogName: d.cogName, hubDomain: d.hubDomain, hubHost: "" });
    for (const x of domains.dropped) d.log.warn("import: custom domain dropped", { vm: name, domain: x.domain, why: x.why });
    const vm = await d.vms.create({ name, image: image.name, size: m.vm.size, sshKeys: m.vm.ssh_keys, https: m.vm.https ?? "passthrough", domains: domains.kept }, { disk, uuid });
    d.log.info("vm imported", { vm: name, from_cog: m.source_cog, from_name: m.vm.name, same_uuid: uuid !== undefined, bytes: total });
    return {
      vm,
      imported: {
        from_cog: m.source_cog, from_name: m.vm.name, from_hostname: m.vm.hostname, same_instance: uuid !== undefined, bytes: total,
        domains_dropped: domains.dropped,
      },
    };
  } finally {
    await fsp.rm(stage, { recursive: true, force: true });
  }
}
