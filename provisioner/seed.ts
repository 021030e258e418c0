import fs from "node:fs/promises";
import path from "node:path";
import { runTool } from "./tools.js";

/**
 * The cloud-init NoCloud seed: an ISO 9660 volume labelled "cidata" holding
 * `meta-data` (instance id, hostname) and `user-data` (#cloud-config with the
 * SSH keys). Every value written here was validated before (names match
 * NAME_RE, keys match sshkeys.ts), and keys are double-quoted YAML strings.
 */
export function seedFiles(opts: { name: string; uuid: string; sshKeys: string[]; sshUser: string }): { metaData: string; userData: string } {
  const metaData = `instance-id: ${opts.uuid}\nlocal-hostname: ${opts.name}\n`;
  let userData = `#cloud-config\nhostname: ${opts.name}\n`;
  if (opts.sshUser === "root") userData += "disable_root: false\n";
  userData += "ssh_authorized_keys:\n";
  for (const k of opts.sshKeys) userData += `  - ${JSON.stringify(k)}\n`;
  return { metaData, userData };
}

/** Writes `out` (seed.iso) with genisoimage; the staging dir beside it is removed afterwards. */
export async function buildSeedIso(
  out: string,
  opts: { name: string; uuid: string; sshKeys: string[]; sshUser: string },
  genisoimage: string,
  timeoutMs: number,
): Promise<void> {
  const stage = `${out}.d`;
  await fs.rm(stage, { recursive: true, force: true });
  await fs.mkdir(stage);
  try {
    const { metaData, userData } = seedFiles(opts);
    await fs.writeFile(path.join(stage, "meta-data"), metaData);
    await fs.writeFile(path.join(stage, "user-data"), userData);
    await runTool("seed_failed", genisoimage, [
      "-quiet", "-output", out, "-volid", "cidata", "-joliet", "-rock",
      path.join(stage, "user-data"), path.join(stage, "meta-data"),
    ], timeoutMs);
  } finally {
    await fs.rm(stage, { recursive: true, force: true });
  }
}
