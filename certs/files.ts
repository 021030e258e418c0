/**
 * Files that hold keys and certificates. A private key is never world- or
 * group-readable, and a crash mid-write never leaves a truncated key behind:
 * the bytes go to a temp file in the same directory (so rename(2) stays on one
 * file system and is atomic), are fsync'ed, then renamed over the target.
 */
import { randomBytes } from "node:crypto";
import { chmod, mkdir, open, readFile, rename, unlink } from "node:fs/promises";
import { basename, dirname, join } from "node:path";
import { RuntimeError } from "../lib/errors.js";

export const SECRET_FILE_MODE = 0o600;
export const SECRET_DIR_MODE = 0o700;

/**
 * Writes `data` to `path` with mode 0600, atomically (temp + fsync + rename).
 * The parent directory is created with mode 0700 when missing; an existing
 * directory keeps its mode.
 */
export async function writeSecretFile(path: string, data: string | Uint8Array): Promise<void> {
  const dir = dirname(path);
  await mkdir(dir, { recursive: true, mode: SECRET_DIR_MODE });
  const tmp = join(dir, `.${basename(path)}.${process.pid}.${randomBytes(6).toString("hex")}.tmp`);
  // "wx": never follow or reuse a file someone else planted at the temp name.
  const fh = await open(tmp, "wx", SECRET_FILE_MODE);
  try {
    // The umask can only remove bits from 0600, but be explicit anyway.
    await fh.chmod(SECRET_FILE_MODE);
    await fh.writeFile(data);
    await fh.sync();
  } catch (err) {
    await fh.close().catch(() => {});
    await unlink(tmp).catch(() => {});
    throw new RuntimeError(`cannot write ${path}: ${(err as Error).message}`, { cause: err });
  }
  await fh.close();
  try {
    await rename(tmp, path);
  } catch (err) {
    await unlink(tmp).catch(() => {});
    throw new RuntimeError(`cannot write ${path}: ${(err as Error).message}`, { cause: err });
  }
  // Make the rename itself durable; best effort (not every FS allows fsync on a directory).
  try {
    const dh = await open(dir, "r");
    await dh.sync().catch(() => {});
    await dh.close();
  } catch {
    /* ignore */
  }
}

/** Creates `dir` if needed and forces its mode to 0700 (it holds private keys). */
export async function ensureSecretDir(dir: string): Promise<void> {
  await mkdir(dir, { recursive: true, mode: SECRET_DIR_MODE });
  await chmod(dir, SECRET_DIR_MODE);
}

/**
 * Reads a PEM file. Throws a RuntimeError naming the file when it is missing,
 * unreadable, or does not contain a PEM block.
 */
export async function readPem(path: string): Promise<string> {
  let text: string;
  try {
    text = await readFile(path, "utf8");
  } catch (err) {
    const code = (err as NodeJS.ErrnoException).code;
    const why = code === "ENOENT" ? "file not found" : code === "EACCES" ? "permission denied" : (err as Error).message;
    throw new RuntimeError(`cannot read PEM file ${path}: ${why}`, { cause: err });
  }
  if (!/-----BEGIN [A-Z0-9 ]+-----/.test(text)) {
    throw new RuntimeError(`${path} is not a PEM file (no "-----BEGIN" line)`);
  }
  return text;
}
