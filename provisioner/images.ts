import { createHash, randomBytes } from "node:crypto";
import fs from "node:fs";
import fsp from "node:fs/promises";
import path from "node:path";
import { Readable, Transform } from "node:stream";
import { pipeline } from "node:stream/promises";
import type { Logger } from "../lib/log.js";
import { NAME_RE } from "./config.js";
import type { ImageFile, ImageRecord, Store } from "./db.js";
import { badRequest, conflict, notFound, ProvisionerError } from "./errors.js";
import { runTool } from "./tools.js";

/**
 * The image catalogue: <dataDir>/images/<name>/ holds immutable files (mode 0444)
 * that VM disks are overlays on. Import = fetch (copy or download) into a staging
 * dir while hashing, verify the checksum, inspect with qemu-img, convert raw to
 * qcow2, then rename into place and record it. A failed import leaves nothing.
 */

export interface ImportRequest {
  name: string;
  /** qcow2 or raw disk: an absolute path on this host or an http(s) URL. */
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
      throw badRequest("bad_source", `${k}: must be an absolute path on the cog or an http(s) URL`);
    }
  }
  return req;
}

export class ImageCatalogue {
  readonly dir: string;
  private readonly importing = new Set<string>();

  constructor(
    dataDir: string,
    private readonly store: Store,
    private readonly opts: { qemuImg: string; toolTimeoutMs: number; maxImageBytes: number; log: Logger },
  ) {
    this.dir = path.join(dataDir, "images");
    fs.mkdirSync(this.dir, { recursive: true });
    // Staging dirs of imports cut short by a crash.
    for (const e of fs.readdirSync(this.dir)) if (e.startsWith(".tmp-")) fs.rmSync(path.join(this.dir, e), { recursive: true, force: true });
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
      await fsp.mkdir(stage);
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
      for (const f of Object.values(record.files)) await fsp.chmod(path.join(stage, path.basename(f.path)), 0o444);
      await fsp.rename(stage, final);
      try {
        this.store.insertImage(record);
      } catch (e) {
        await fsp.rm(final, { recursive: true, force: true });
        throw e;
      }
      this.opts.log.info("image imported", { image: req.name, format: record.format });
      return this.get(req.name);
    } finally {
      this.importing.delete(req.name);
      await fsp.rm(stage, { recursive: true, force: true });
    }
  }

  /** Copies or downloads `src` to `dst`, hashing on the way; checks the size cap and the checksum. */
  private async fetch(src: string, dst: string, wantSha256: string | undefined, progress?: Progress): Promise<ImageFile> {
    const hash = createHash("sha256");
    let bytes = 0;
    let input: Readable;
    let total: number | null = null;
    if (/^https?:\/\//.test(src)) {
      let res: Response;
      try {
        res = await fetch(src, { redirect: "follow" });
      } catch (e) {
        throw new ProvisionerError("download_failed", `download ${src}: ${(e as Error).message}`, 502, { cause: e });
      }
      if (!res.ok || !res.body) throw new ProvisionerError("download_failed", `download ${src}: HTTP ${res.status}`, 502);
      const len = Number(res.headers.get("content-length"));
      total = Number.isFinite(len) && len > 0 ? len : null;
      input = Readable.fromWeb(res.body as import("node:stream/web").ReadableStream<Uint8Array>);
    } else {
      let st: fs.Stats;
      try { st = await fsp.stat(src); } catch { throw badRequest("bad_source", `${src}: no such file on the cog`); }
      if (!st.isFile()) throw badRequest("bad_source", `${src}: not a regular file`);
      total = st.size;
      input = fs.createReadStream(src);
    }
    if (total !== null && total > this.opts.maxImageBytes) {
      input.destroy();
      throw new ProvisionerError("image_too_large", `${src}: ${total} bytes, more than the limit of ${this.opts.maxImageBytes}`, 413);
    }
    const max = this.opts.maxImageBytes;
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
    await pipeline(input, counter, fs.createWriteStream(dst, { mode: 0o600 }));
    progress?.({ file: src, bytes, totalBytes: total });
    const sha256 = hash.digest("hex");
    if (wantSha256 && wantSha256 !== sha256) {
      throw badRequest("checksum_mismatch", `${src}: sha256 is ${sha256}, expected ${wantSha256}`);
    }
    return { path: dst, sha256, bytes };
  }

  /** Leaves a standalone qcow2 at `dst`; returns its size in bytes. */
  private async toQcow2(src: string, dst: string): Promise<number> {
    // Format probing is safe here: the file is only read, never written as raw.
    const { stdout } = await runTool("image_invalid", this.opts.qemuImg, ["info", "--output=json", src], this.opts.toolTimeoutMs);
    let info: { format?: string; "backing-filename"?: string };
    try { info = JSON.parse(stdout) as typeof info; } catch { throw badRequest("image_invalid", "qemu-img info gave no JSON"); }
    // A qcow2 naming a backing file could make a VM read any file on the cog.
    if (info["backing-filename"]) throw badRequest("image_invalid", "image has a backing file; flatten it first (qemu-img convert)");
    if (info.format === "qcow2") {
      await fsp.rename(src, dst);
    } else if (info.format === "raw") {
      await runTool("convert_failed", this.opts.qemuImg, ["convert", "-f", "raw", "-O", "qcow2", src, dst], this.opts.toolTimeoutMs);
      await fsp.rm(src, { force: true });
    } else {
      throw badRequest("image_invalid", `unsupported image format ${JSON.stringify(info.format)} (qcow2 or raw)`);
    }
    return (await fsp.stat(dst)).size;
  }

  async delete(name: string): Promise<void> {
    this.get(name);
    const users = this.store.countVmsUsingImage(name);
    if (users > 0) throw conflict("image_in_use", `image ${name} is used by ${users} VM(s); delete them first`);
    this.store.deleteImage(name);
    await fsp.rm(path.join(this.dir, name), { recursive: true, force: true });
    this.opts.log.info("image deleted", { image: name });
  }
}
