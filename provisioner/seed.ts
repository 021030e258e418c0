import fs from "node:fs/promises";
import path from "node:path";
import { Document, Scalar } from "yaml";
import { runTool } from "./tools.js";

export interface SeedOptions {
  /** The VM name (NAME_RE), also its hostname. */
  name: string;
  /** The VM uuid: cloud-init's instance-id, so a new VM on an old disk is a new instance. */
  uuid: string;
  /** OpenSSH public key lines, validated by sshkeys.ts. */
  sshKeys: string[];
  /** The image's `ssh_user` (`capsul image import --ssh-user`, default root). */
  sshUser: string;
}

/**
 * Passwordless sudo for the user the seed creates, as Debian's and Ubuntu's
 * images give their own default user ("debian", "ubuntu").
 */
export const SEED_SUDO_RULE = "ALL=(ALL) NOPASSWD:ALL";
/** The created user's login shell: every mainstream cloud image has bash, and useradd's own default is /bin/sh. */
export const SEED_USER_SHELL = "/bin/bash";

/** One key as a double-quoted YAML string: never folded, never an alias (see toYaml). */
function quoted(value: string): Scalar {
  const s = new Scalar(value);
  s.type = Scalar.QUOTE_DOUBLE;
  return s;
}

/**
 * lineWidth 0: no line folding, so every key stays on one line; the busybox test
 * image (scripts/build-test-image.sh) reads `local-hostname:` from meta-data and
 * each `- "ssh-… …"` line of user-data with sed. aliasDuplicateObjects false: the
 * same key under two users must be written twice, not as a YAML alias.
 */
function toYaml(value: unknown): string {
  return new Document(value, { aliasDuplicateObjects: false }).toString({ lineWidth: 0 });
}

/**
 * The cloud-init NoCloud seed files, written with the yaml library (every value
 * is quoted or escaped as YAML requires, whatever it holds).
 *
 * meta-data: instance id and hostname. user-data (#cloud-config):
 * - `hostname` and `manage_etc_hosts: true`: cloud-init writes /etc/hosts with a
 *   `127.0.1.1 <hostname>` line on every boot. Without it sudo looks the new
 *   hostname up, fails and prints "unable to resolve host web1" on every call.
 * - `ssh_authorized_keys` at the top: cloud-init gives them to the image's
 *   default user (debian on Debian, ubuntu on Ubuntu), so that user keeps working.
 * - ssh_user root: `disable_root: false`, so root gets the same keys (cloud-init
 *   otherwise writes them behind a "please log in as …" command).
 * - any other ssh_user: `users: [default, {name, keys, sudo, shell}]` creates it.
 *   The provisioner cannot know the image's default user's name, and need not:
 *   when ssh_user names it, cloud-init merges this entry into the default user
 *   (ug_util.normalize_users_groups), so the same seed is right for both.
 */
export function seedFiles(opts: SeedOptions): { metaData: string; userData: string } {
  const metaData = toYaml({ "instance-id": opts.uuid, "local-hostname": opts.name });
  const user: Record<string, unknown> = { hostname: opts.name, manage_etc_hosts: true };
  if (opts.sshUser === "root") {
    user.disable_root = false;
  } else {
    user.users = [
      "default",
      { name: opts.sshUser, sudo: SEED_SUDO_RULE, shell: SEED_USER_SHELL, lock_passwd: true, ssh_authorized_keys: opts.sshKeys.map(quoted) },
    ];
  }
  user.ssh_authorized_keys = opts.sshKeys.map(quoted);
  return { metaData, userData: `#cloud-config\n${toYaml(user)}` };
}

/** Writes `out` (seed.iso) with genisoimage; the staging dir beside it is removed afterwards. */
export async function buildSeedIso(out: string, opts: SeedOptions, genisoimage: string, timeoutMs: number): Promise<void> {
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
