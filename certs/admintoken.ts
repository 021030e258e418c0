/**
 * The admin listener's bearer token (hub.listen.admin, cog.listen.admin): 32 random bytes,
 * base64url, in <data_dir>/admin-token, written 0600 on first start and read on every
 * start after. It is asked for only when the listener is not on loopback, but it is made
 * either way so the operator finds it before moving the listener.
 */
import { randomBytes } from "node:crypto";
import { readFile, stat } from "node:fs/promises";
import { join } from "node:path";
import { RuntimeError } from "../lib/errors.js";
import { writeSecretFile } from "./files.js";

export const ADMIN_TOKEN_FILE = "admin-token";
export const ADMIN_TOKEN_BYTES = 32;

export async function loadOrCreateAdminToken(dataDir: string): Promise<string> {
  const file = join(dataDir, ADMIN_TOKEN_FILE);
  let text: string | null = null;
  try {
    text = await readFile(file, "utf8");
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code !== "ENOENT") throw new RuntimeError(`cannot read ${file}: ${(err as Error).message}`, { cause: err });
  }
  if (text !== null) {
    // Like ssh with a private key: a token others can read is not a secret any more.
    const mode = (await stat(file)).mode & 0o777;
    if (mode & 0o077) throw new RuntimeError(`${file} is readable by other users (mode ${mode.toString(8)}); run chmod 600 ${file}`);
    const token = text.trim();
    if (token) return token;
  }
  const token = randomBytes(ADMIN_TOKEN_BYTES).toString("base64url");
  await writeSecretFile(file, token + "\n");
  return token;
}
