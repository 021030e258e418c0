import { NAME_RE } from "./config.js";
import { HTTPS_MODES, type HttpsMode } from "./db.js";
import { badRequest } from "./errors.js";
import { parseSshKey } from "./sshkeys.js";
import { parseVmDomain } from "./vmdomains.js";

/** POST /v1/vms: every field checked here, before anything is created. */
export interface CreateRequest {
  name: string; image: string; size: string; sshKeys: string[]; https: HttpsMode;
  /** Custom domains (`--domain`), normalised; checked against the other VMs by VmManager.create. Absent: none. */
  domains?: string[];
}

export function validateCreateRequest(raw: unknown, maxSshKeys: number, maxDomains: number): CreateRequest {
  if (typeof raw !== "object" || raw === null || Array.isArray(raw)) throw badRequest("bad_request", "body must be a JSON object");
  const b = raw as Record<string, unknown>;
  for (const k of Object.keys(b)) {
    if (!["name", "image", "size", "ssh_keys", "https", "domains"].includes(k)) throw badRequest("bad_request", `unknown field ${JSON.stringify(k)}`);
  }
  if (typeof b.name !== "string" || !NAME_RE.test(b.name)) {
    throw badRequest("bad_name", "name: must match ^[a-z][a-z0-9-]{0,38}$ (lower-case letters, digits, dashes)");
  }
  if (typeof b.image !== "string" || b.image.length === 0) throw badRequest("bad_request", "image: required string");
  if (typeof b.size !== "string" || b.size.length === 0) throw badRequest("bad_request", "size: required string");
  if (!Array.isArray(b.ssh_keys) || b.ssh_keys.length === 0) throw badRequest("bad_ssh_key", "ssh_keys: at least one OpenSSH public key");
  if (b.ssh_keys.length > maxSshKeys) throw badRequest("bad_ssh_key", `ssh_keys: at most ${maxSshKeys}`);
  const sshKeys = b.ssh_keys.map((k, i) => parseSshKey(k, `ssh_keys[${i}]`));
  if (b.https !== undefined && !HTTPS_MODES.includes(b.https as HttpsMode)) {
    throw badRequest("bad_request", `https: must be ${HTTPS_MODES.join(" or ")}, got ${JSON.stringify(b.https)}`);
  }
  let domains: string[] = [];
  if (b.domains !== undefined) {
    if (!Array.isArray(b.domains)) throw badRequest("bad_domain", "domains: a list of hostnames");
    // Bounded before parsing: the count error of VmManager.create names the limit too, this keeps a huge list cheap.
    if (b.domains.length > maxDomains) throw badRequest("too_many_domains", `domains: at most ${maxDomains} per VM (cog.provisioner.max_domains_per_vm)`);
    domains = b.domains.map((d, i) => parseVmDomain(d, `domains[${i}]`));
  }
  return { name: b.name, image: b.image, size: b.size, sshKeys, https: (b.https as HttpsMode | undefined) ?? "passthrough", domains };
}
