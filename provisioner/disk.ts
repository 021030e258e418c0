import fs from "node:fs";
import fsp from "node:fs/promises";
import type { ProvisionerConfig, ProvisionerSize } from "../config/types.js";
import type { ImageRecord, VmRecord } from "./db.js";
import { runFiles } from "./qemu.js";
import { buildSeedIso } from "./seed.js";
import { runTool } from "./tools.js";

/** Virtual size in bytes of a qcow2 base image. */
export async function imageVirtualSize(cfg: ProvisionerConfig, image: ImageRecord): Promise<number> {
  const { stdout } = await runTool("image_invalid", cfg.qemuImgBinary,
    ["info", "--output=json", "-f", "qcow2", image.files.disk!.path], cfg.toolTimeoutMs);
  return Number((JSON.parse(stdout) as { "virtual-size"?: number })["virtual-size"] ?? 0);
}

/**
 * Makes whatever of a VM's run dir is missing: the dir, the qcow2 overlay on the
 * image (or a blank qcow2 for kernel+initrd images), the cidata seed. Each file
 * is written under a temporary name first, so a crash never leaves half a disk
 * that a later start would take for whole.
 */
export async function prepareRunDir(cfg: ProvisionerConfig, dir: string, v: VmRecord, image: ImageRecord, size: ProvisionerSize): Promise<void> {
  const f = runFiles(dir);
  await fsp.mkdir(dir, { recursive: true, mode: 0o700 });
  if (!fs.existsSync(f.disk)) {
    const tmp = `${f.disk}.tmp`;
    const args = ["create", "-q", "-f", "qcow2"];
    if (image.format === "qcow2") args.push("-F", "qcow2", "-b", image.files.disk!.path);
    args.push(tmp, String(size.diskBytes));
    await runTool("disk_create_failed", cfg.qemuImgBinary, args, cfg.toolTimeoutMs);
    await fsp.rename(tmp, f.disk);
  }
  if (!fs.existsSync(f.seed)) {
    const tmp = `${f.seed}.tmp`;
    await buildSeedIso(tmp, { name: v.name, uuid: v.uuid, sshKeys: v.sshKeys, sshUser: image.sshUser }, cfg.genisoimageBinary, cfg.toolTimeoutMs);
    await fsp.rename(tmp, f.seed);
  }
}
