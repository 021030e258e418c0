import { createHash, randomBytes } from "node:crypto";
import fs from "node:fs";
import fsp from "node:fs/promises";
import path from "node:path";
import { type Readable, Transform } from "node:stream";
import { pipeline } from "node:stream/promises";
import type { ProvisionerConfig } from "../config/types.js";
import type { Logger } from "../lib/log.js";
import { NAME_RE } from "./config.js";
import type { ImageFile, ImageRecord, Store } from "./db.js";
import { openDownload } from "./download.js";
import { badRequest, conflict, notFound, ProvisionerError } from "./errors.js";
import { AddressPolicy } from "./netguard.js";
import { runTool } from "./tools.js";

/**
 * The image catalogue: <dataDir>/images/<name>/ (0700) holds immutable files
 * (0400: read-only, and only QEMU's user reads them; an image may be private)
 * that VM disks are overlays on. Import = fetch (copy from the import dir or
 * download, see download.ts) into a staging dir while hashing, verify the
 * checksum, inspect, convert raw to qcow2, then rename into place and record
 * it. A failed import leaves nothing.
 */

export interface ImportRequest {
  name: string;
  /** qcow2 or raw disk: an absolute path in the import dir (cog.provisioner.import_dir) or an http(s) URL. */
  source?: string;
  /** Expected sha256 (hex) of `source`, or of `kernel`. */
  sha256?: string;
  /** Kernel + initrd image instead of a disk. */
  kernel?: string;
  initrd?: string;
  /** sha256 of `initrd`. */
  initrdSha256?: string;
  cmdline?: string;
  sshUser?: string;
}

export type Progress = (p: { file: string; bytes: number; totalBytes: number | null }) => void;

const SHA256_RE = /^[0-9a-f]{64}$/;
const USER_RE = /^[a-z_][a-z0-9_-]{0,31}$/;
/** Kernel command lines longer than this do not fit x86's boot protocol anyway (2048). */
export const CMDLINE_MAX_CHARS = 2048;

export function validateImportRequest(raw: unknown): ImportRequest {
  if (typeof raw !== "object" || raw === null || Array.isArray(raw)) throw badRequest("bad_request", "body must be a JSON object");
  const b = raw as Record<string, unknown>;
  const known = new Set(["name", "source", "sha256", "kernel", "initrd", "initrd_sha256", "cmdline", "ssh_user"]);
  for (const k of Object.keys(b)) if (!known.has(k)) throw badRequest("bad_request", `unknown field ${JSON.stringify(k)}`);
  const str = (k: string): string | undefined => {
    const v = b[k];
    if (v === undefined || v === null) return undefined;
    if (typeof v !== "string" || v.length === 0 || v.length > 4096) throw badRequest("bad_request", `${k}: must be a non-empty string`);
    return v;
  };
  const name = str("name");
  if (!name || !NAME_RE.test(name)) throw badRequest("bad_name", "name: must match ^[a-z][a-z0-9-]{0,38}$");
  const req: ImportRequest = {
    name, source: str("source"), sha256: str("sha256")?.toLowerCase(), kernel: str("kernel"), initrd: str("initrd"),
    initrdSha256: str("initrd_sha256")?.toLowerCase(), cmdline: str("cmdline"), sshUser: str("ssh_user"),
  };
  if (req.source && (req.kernel || req.initrd)) throw badRequest("bad_request", "give either source or kernel+initrd, not both");
  if (!req.source && !(req.kernel && req.initrd)) throw badRequest("bad_request", "give source (a disk image) or kernel and initrd");
  if (req.cmdline !== undefined && (req.source || req.cmdline.length > CMDLINE_MAX_CHARS || /[\0-\x1f]/.test(req.cmdline))) {
    throw badRequest("bad_request", "cmdline: only for kernel images, printable, at most 2048 characters");
  }
  for (const [k, v] of [["sha256", req.sha256], ["initrd_sha256", req.initrdSha256]] as const) {
    if (v !== undefined && !SHA256_RE.test(v)) throw badRequest("bad_checksum", `${k}: must be 64 hex digits`);
  }
  if (req.sshUser !== undefined && !USER_RE.test(req.sshUser)) throw badRequest("bad_request", "ssh_user: not a user name");
  for (const [k, v] of [["source", req.source], ["kernel", req.kernel], ["initrd", req.initrd]] as const) {
    if (v !== undefined && !/^https?:\/\//.test(v) && !path.isAbsolute(v)) {
      throw badRequest("bad_source", `${k}: must be an absolute path in the import dir of the cog or an http(s) URL`);
    }
  }
  return req;
}

/** Mode of image files: read-only (immutable bases), owner only (an image may hold secrets). */
export const IMAGE_FILE_MODE = 0o400;
/** Mode of the catalogue and its image dirs. */
export const IMAGE_DIR_MODE = 0o700;
/** Bytes read from the start of a source to tell its format (the VMDK descriptor needs 21). */
const SNIFF_BYTES = 512;
/** qcow2 header magic "QFI\xfb" (qcow2 spec, "Header"). */
const QCOW2_MAGIC = Buffer.from([0x51, 0x46, 0x49, 0xfb]);
/**
 * Container formats that must not be imported as raw bytes by mistake; their
 * parsers never run here (qemu-img is always told -f qcow2 or -f raw, so no
 * probing of exotic formats on untrusted data): [offset, magic, name].
 */
const OTHER_FORMATS: ReadonlyArray<[number, string, string]> = [
  [0, "KDMV", "vmdk"], [0, "# Disk DescriptorFile", "vmdk"], [0, "vhdxfile", "vhdx"], [0, "conectix", "vpc"],
  [0, "QED\0", "qed"], [0, "LUKS\xba\xbe", "luks"], [0x40, "\x7f\x10\xda\xbe", "vdi"], [0, "WithoutFreeSpace", "parallels"],
  [0, "WithouFreSpacExt", "parallels"], [0, "Bochs Virtual HD Image", "bochs"], [0, "#!/bin/sh\n#V2.0 Format", "cloop"],
];

export function sniffFormat(head: Buffer): "qcow2" | "raw" | string {
  if (head.subarray(0, 4).equals(QCOW2_MAGIC)) return "qcow2";
  for (const [off, magic, name] of OTHER_FORMATS) {
    if (head.subarray(off, off + magic.length).equals(Buffer.from(magic, "latin1"))) return name;
  }
  return "raw";
}

/** What `qemu-img info --output=json -f qcow2` says about the fields that matter here. */
export interface Qcow2Info {
  format?: string;
  "virtual-size"?: number;
  "backing-filename"?: string;
  "full-backing-filename"?: string;
  encrypted?: boolean;
  "format-specific"?: { type?: string; data?: { "data-file"?: string; "data-file-raw"?: boolean } };
}

/**
 * Why a qcow2 is not safe to hand to QEMU as a VM's disk, or null. A VM opens
 * these files with QEMU: anything that names another file would let it read
 * that file from the cog (the cog's keys, another VM's disk).
 */
export function notSelfContained(info: Qcow2Info): string | null {
  if (info["backing-filename"] || info["full-backing-filename"]) return "image has a backing file; flatten it first (qemu-img convert)";
  const dataFile = info["format-specific"]?.data?.["data-file"];
  if (dataFile !== undefined) return `image keeps its data in an external file (${JSON.stringify(dataFile)}); convert it to a self-contained qcow2 first`;
  if (info.encrypted) return "encrypted images are not supported";
  return null;
}

export class ImageCatalogue {
  readonly dir: string;
  private readonly importing = new Set<string>();
  private readonly policy: AddressPolicy;

  constructor(
    private readonly cfg: ProvisionerConfig,
    private readonly store: Store,
    private readonly log: Logger,
  ) {
    this.dir = path.join(cfg.dataDir, "images");
    fs.mkdirSync(this.dir, { recursive: true, mode: IMAGE_DIR_MODE });
    fs.mkdirSync(cfg.importDir, { recursive: true, mode: 0o700 });
    this.policy = new AddressPolicy(cfg.importAllowedCidrs);
    // Staging dirs of imports cut short by a crash.
    for (const e of fs.readdirSync(this.dir)) if (e.startsWith(".tmp-")) fs.rmSync(path.join(this.dir, e), { recursive: true, force: true });
    this.tightenModes();
  }

  /** Catalogues written before images were private (0755 dirs, 0444 files) are brought to 0700/0400. */
  private tightenModes(): void {
    const fix = (p: string, mode: number): void => {
      if ((fs.statSync(p).mode & 0o777) !== mode) fs.chmodSync(p, mode);
    };
    fix(this.dir, IMAGE_DIR_MODE);
    for (const name of fs.readdirSync(this.dir)) {
      const d = path.join(this.dir, name);
      if (!fs.statSync(d).isDirectory()) continue;
      fix(d, IMAGE_DIR_MODE);
      for (const f of fs.readdirSync(d)) fix(path.join(d, f), IMAGE_FILE_MODE);
    }
  }

  list(): ImageRecord[] { return this.store.listImages(); }

  get(name: string): ImageRecord {
    const img = this.store.getImage(name);
    if (!img) throw notFound("image_not_found", `no image named ${JSON.stringify(name)} (see capsul image list)`);
    return img;
  }

  async import(req: ImportRequest, progress?: Progress): Promise<ImageRecord> {
    if (this.store.getImage(req.name) || this.importing.has(req.name)) {
      throw conflict("image_exists", `an image named ${JSON.stringify(req.name)} already exists`);
    }
    this.importing.add(req.name);
    const stage = path.join(this.dir, `.tmp-${req.name}-${randomBytes(4).toString("hex")}`);
    const final = path.join(this.dir, req.name);
    try {
      await fsp.mkdir(stage, { mode: IMAGE_DIR_MODE });
      let record: Omit<ImageRecord, "createdAt">;
      if (req.source) {
        const fetched = await this.fetch(req.source, path.join(stage, "source"), req.sha256, progress);
        const disk = await this.toQcow2(path.join(stage, "source"), path.join(stage, "disk.qcow2"));
        record = {
          name: req.name, format: "qcow2", cmdline: null, sshUser: req.sshUser ?? "root",
          files: { disk: { path: path.join(final, "disk.qcow2"), sha256: fetched.sha256, bytes: disk } },
        };
      } else {
        const k = await this.fetch(req.kernel!, path.join(stage, "kernel"), req.sha256, progress);
        const i = await this.fetch(req.initrd!, path.join(stage, "initrd"), req.initrdSha256, progress);
        record = {
          name: req.name, format: "kernel", cmdline: req.cmdline ?? "console=ttyS0", sshUser: req.sshUser ?? "root",
          files: {
            kernel: { path: path.join(final, "kernel"), sha256: k.sha256, bytes: k.bytes },
            initrd: { path: path.join(final, "initrd"), sha256: i.sha256, bytes: i.bytes },
          },
        };
      }
      for (const f of Object.values(record.files)) await fsp.chmod(path.join(stage, path.basename(f.path)), IMAGE_FILE_MODE);
      await fsp.rename(stage, final);
      try {
        this.store.insertImage(record);
      } catch (e) {
        await fsp.rm(final, { recursive: true, force: true });
        throw e;
      }
      this.log.info("image imported", { image: req.name, format: record.format });
      return this.get(req.name);
    } finally {
      this.importing.delete(req.name);
      await fsp.rm(stage, { recursive: true, force: true });
    }
  }

  /**
   * Opens a local source: only a regular file inside the import dir, judged
   * after resolving symlinks and "..", so that neither can point the
   * provisioner at the cog's keys or another tenant's disk. The resolved path
   * is opened with O_NOFOLLOW (a symlink swapped in afterwards is refused) and
   * O_NONBLOCK (a FIFO cannot hang the open).
   */
  private async openLocal(src: string): Promise<{ input: Readable; total: number }> {
    const root = await fsp.realpath(this.cfg.importDir);
    const inside = (p: string): boolean => p.startsWith(root.endsWith(path.sep) ? root : root + path.sep);
    const outside = (): ProvisionerError => badRequest("source_refused",
      `${src}: outside the import directory ${this.cfg.importDir} (cog.provisioner.import_dir); copy the image there first`);
    if (!inside(path.resolve(root, path.relative(this.cfg.importDir, path.resolve(src))))) throw outside();
    let real: string;
    try { real = await fsp.realpath(src); } catch { throw badRequest("bad_source", `${src}: no such file in the import directory`); }
    if (!inside(real)) throw outside();
    let fh: fsp.FileHandle;
    try {
      fh = await fsp.open(real, fs.constants.O_RDONLY | fs.constants.O_NOFOLLOW | fs.constants.O_NONBLOCK);
    } catch (e) {
      throw badRequest("bad_source", `${src}: cannot open (${(e as NodeJS.ErrnoException).code})`);
    }
    const st = await fh.stat();
    if (!st.isFile()) {
      await fh.close();
      throw badRequest("bad_source", `${src}: not a regular file`);
    }
    return { input: fh.createReadStream(), total: st.size };
  }

  /** Copies or downloads `src` to `dst`, hashing on the way; checks the size cap and the checksum. */
  private async fetch(src: string, dst: string, wantSha256: string | undefined, progress?: Progress): Promise<ImageFile> {
    const hash = createHash("sha256");
    let bytes = 0;
    let input: Readable;
    let total: number | null;
    if (/^https?:\/\//.test(src)) {
      const dl = await openDownload(src, {
        policy: this.policy, maxRedirects: this.cfg.importMaxRedirects, idleTimeoutMs: this.cfg.downloadIdleTimeoutMs,
      });
      input = dl.body;
      total = dl.totalBytes;
    } else {
      ({ input, total } = await this.openLocal(src));
    }
    if (total !== null && total > this.cfg.maxImageBytes) {
      input.destroy();
      throw new ProvisionerError("image_too_large", `${src}: ${total} bytes, more than the limit of ${this.cfg.maxImageBytes}`, 413);
    }
    const max = this.cfg.maxImageBytes;
    let lastReport = 0;
    const counter = new Transform({
      transform(chunk: Buffer, _enc, cb) {
        bytes += chunk.length;
        if (bytes > max) { cb(new ProvisionerError("image_too_large", `${src}: more than the limit of ${max} bytes`, 413)); return; }
        hash.update(chunk);
        // Progress at most every 1 MiB: the hot loop does no other work.
        if (progress && bytes - lastReport >= 1 << 20) { lastReport = bytes; progress({ file: src, bytes, totalBytes: total }); }
        cb(null, chunk);
      },
    });
    try {
      await pipeline(input, counter, fs.createWriteStream(dst, { mode: 0o600 }));
    } catch (e) {
      if (e instanceof ProvisionerError) throw e;
      throw new ProvisionerError("download_failed", `${src}: ${(e as Error).message}`, 502, { cause: e });
    }
    progress?.({ file: src, bytes, totalBytes: total });
    const sha256 = hash.digest("hex");
    if (wantSha256 && wantSha256 !== sha256) {
      throw badRequest("checksum_mismatch", `${src}: sha256 is ${sha256}, expected ${wantSha256}`);
    }
    return { path: dst, sha256, bytes };
  }

  /**
   * `qemu-img info` of an untrusted qcow2, told the format (no probing) and
   * under prlimit: address space image_inspect_memory, CPU image_inspect_cpu_time.
   */
  async inspectQcow2(src: string): Promise<Qcow2Info> {
    const cpuSeconds = Math.max(1, Math.ceil(this.cfg.imageInspectCpuMs / 1000));
    let stdout: string;
    try {
      ({ stdout } = await runTool("image_invalid", "prlimit", [
        `--as=${this.cfg.imageInspectMemoryBytes}`, `--cpu=${cpuSeconds}`, "--",
        this.cfg.qemuImgBinary, "info", "--output=json", "-f", "qcow2", src,
      ], this.cfg.toolTimeoutMs));
    } catch (e) {
      throw badRequest("image_invalid", `qemu-img info refused the image within its limits (image_inspect_memory ` +
        `${this.cfg.imageInspectMemoryBytes} bytes, image_inspect_cpu_time ${cpuSeconds}s): ${(e as Error).message}`);
    }
    try { return JSON.parse(stdout) as Qcow2Info; } catch { throw badRequest("image_invalid", "qemu-img info gave no JSON"); }
  }

  /** Leaves a standalone qcow2 at `dst`; returns its size in bytes. */
  private async toQcow2(src: string, dst: string): Promise<number> {
    const head = Buffer.alloc(SNIFF_BYTES);
    const fh = await fsp.open(src, "r");
    try { await fh.read(head, 0, SNIFF_BYTES, 0); } finally { await fh.close(); }
    const format = sniffFormat(head);
    if (format === "qcow2") {
      const info = await this.inspectQcow2(src);
      // A VM opens these files with QEMU: anything that names another file would
      // let it read that file from the cog (the cog's keys, another VM's disk).
      const problem = notSelfContained(info);
      if (problem) throw badRequest("image_invalid", problem);
      await fsp.rename(src, dst);
    } else if (format === "raw") {
      // -f raw: the bytes are data, never parsed as a header.
      await runTool("convert_failed", this.cfg.qemuImgBinary, ["convert", "-f", "raw", "-O", "qcow2", src, dst], this.cfg.toolTimeoutMs);
      await fsp.rm(src, { force: true });
    } else {
      throw badRequest("image_invalid", `unsupported image format ${format} (qcow2 or raw; convert it with qemu-img convert -O qcow2)`);
    }
    return (await fsp.stat(dst)).size;
  }

  async delete(name: string): Promise<void> {
    this.get(name);
    const users = this.store.countVmsUsingImage(name);
    if (users > 0) throw conflict("image_in_use", `image ${name} is used by ${users} VM(s); delete them first`);
    this.store.deleteImage(name);
    await fsp.rm(path.join(this.dir, name), { recursive: true, force: true });
    this.log.info("image deleted", { image: name });
  }
}
