import { badRequest } from "./errors.js";

const KEY_TYPES = new Set([
  "ssh-ed25519", "ssh-rsa", "ecdsa-sha2-nistp256", "ecdsa-sha2-nistp384", "ecdsa-sha2-nistp521",
  "sk-ssh-ed25519@openssh.com", "sk-ecdsa-sha2-nistp256@openssh.com",
]);
/** An OpenSSH RSA 16384-bit public key is ~2.8 KB of base64; anything longer is not a key. */
export const SSH_KEY_MAX_CHARS = 4096;
/**
 * A key line "TYPE BASE64 [COMMENT]". The comment may hold printable ASCII but no
 * quote or backslash: keys are written into the seed as double-quoted YAML strings.
 */
const KEY_RE = /^(\S+) ([A-Za-z0-9+/]+={0,3})(?: ([\x20-\x21\x23-\x5b\x5d-\x7e]{0,200}))?$/;

/** Validates one OpenSSH public key line; returns it normalised (trimmed). */
export function parseSshKey(raw: unknown, at: string): string {
  if (typeof raw !== "string") throw badRequest("bad_ssh_key", `${at}: must be a string`);
  const line = raw.trim();
  if (line.length > SSH_KEY_MAX_CHARS) throw badRequest("bad_ssh_key", `${at}: longer than ${SSH_KEY_MAX_CHARS} characters`);
  const m = KEY_RE.exec(line);
  if (!m || !KEY_TYPES.has(m[1]!)) {
    throw badRequest("bad_ssh_key", `${at}: not an OpenSSH public key ("ssh-ed25519 AAAA… comment")`);
  }
  // The blob starts with the key type as an SSH string: uint32 length + bytes.
  const blob = Buffer.from(m[2]!, "base64");
  const n = blob.length >= 4 ? blob.readUInt32BE(0) : -1;
  if (n <= 0 || 4 + n > blob.length || blob.subarray(4, 4 + n).toString("latin1") !== m[1]) {
    throw badRequest("bad_ssh_key", `${at}: key data does not match its type ${m[1]}`);
  }
  return line;
}
