import { spawn } from "node:child_process";
import { createHash } from "node:crypto";
import fs from "node:fs";
import path from "node:path";
import { fileURLToPath } from "node:url";

/**
 * The real Debian 12 cloud image (scripts/build-debian-image.sh), built once per
 * machine into DEBIAN_IMAGE_CACHE and reused by every test and worktree. The
 * cache key is the script's hash plus the environment it reads, so an edited
 * script or another mirror rebuilds; concurrent test files wait on a lock dir
 * that names the builder's pid (a dead builder's lock is broken at once).
 * Package updates on the mirror do not rebuild it: remove the dir for that.
 */
export interface DebianImage { path: string; key: string; builtNowMs: number | null }

const ROOT = path.resolve(path.dirname(fileURLToPath(import.meta.url)), "..", "..");
const SCRIPT = path.join(ROOT, "scripts", "build-debian-image.sh");
/** Outside the repository, on disk (not /tmp, which may be a small tmpfs): ~270 MB. */
export const DEBIAN_IMAGE_CACHE = process.env.CAPSUL_IMAGE_CACHE || "/var/tmp/capsul-debian-image";
/** The script's inputs besides its own text (see its header). */
const INPUT_ENV = ["DEBIAN_MIRROR", "DEBIAN_SECURITY_MIRROR", "IMAGE_SIZE"] as const;
/** A build took 4–11 min on this busy 2-core machine (mostly mmdebstrap); past this it is stuck. */
export const DEBIAN_IMAGE_BUILD_TIMEOUT_MS = 30 * 60_000;
const LOCK_POLL_MS = 2_000;
/** A lock dir still without its pid file after this long was left by a builder that died. */
const LOCK_NO_PID_STALE_MS = 60_000;

export function debianImageKey(): string {
  const h = createHash("sha256").update(fs.readFileSync(SCRIPT));
  for (const k of INPUT_ENV) h.update(`\0${k}=${process.env[k] ?? ""}`);
  return h.digest("hex").slice(0, 16);
}

function ready(dir: string, key: string): string | null {
  const img = path.join(dir, "debian-12.qcow2");
  try {
    if (fs.readFileSync(path.join(dir, "STAMP"), "utf8").trim() !== key) return null;
    return fs.existsSync(img) ? img : null;
  } catch {
    return null;
  }
}

function lockHolderAlive(lock: string): boolean {
  try {
    const pid = Number(fs.readFileSync(path.join(lock, "pid"), "utf8"));
    if (!Number.isInteger(pid) || pid <= 1) return false;
    process.kill(pid, 0);
    return true;
  } catch (e) {
    const code = (e as NodeJS.ErrnoException).code;
    if (code === "EPERM") return true; // alive, not ours to signal
    // No pid file: a builder between mkdir and write (alive), or one that died
    // right there (the lock is then older than that moment can last).
    if (code === "ENOENT") {
      try { return Date.now() - fs.statSync(lock).mtimeMs < LOCK_NO_PID_STALE_MS; } catch { return false; }
    }
    return false;
  }
}

function runBuild(out: string, log: string): Promise<void> {
  return new Promise((resolve, reject) => {
    const fd = fs.openSync(log, "w");
    const child = spawn("bash", [SCRIPT, out], { stdio: ["ignore", fd, fd] });
    fs.closeSync(fd);
    const timer = setTimeout(() => child.kill("SIGKILL"), DEBIAN_IMAGE_BUILD_TIMEOUT_MS);
    child.once("error", (e) => { clearTimeout(timer); reject(e); });
    child.once("exit", (code, signal) => {
      clearTimeout(timer);
      if (code === 0) { resolve(); return; }
      let tail = "";
      try { tail = fs.readFileSync(log, "utf8").split("\n").slice(-25).join("\n"); } catch { /* no log */ }
      reject(new Error(`build-debian-image.sh failed (${signal ?? code}); log ${log}:\n${tail}`));
    });
  });
}

/** The cached image, building it first when the cache is missing or stale. */
export async function debianImage(): Promise<DebianImage> {
  const dir = DEBIAN_IMAGE_CACHE;
  const lock = `${dir}.lock`;
  const key = debianImageKey();
  for (;;) {
    const img = ready(dir, key);
    if (img) return { path: img, key, builtNowMs: null };
    try {
      fs.mkdirSync(path.dirname(lock), { recursive: true });
      fs.mkdirSync(lock);
      fs.writeFileSync(path.join(lock, "pid"), String(process.pid));
    } catch {
      if (!lockHolderAlive(lock)) fs.rmSync(lock, { recursive: true, force: true });
      await new Promise((r) => setTimeout(r, LOCK_POLL_MS));
      continue;
    }
    try {
      if (ready(dir, key)) continue;
      const tmp = `${dir}.build-${process.pid}`;
      fs.rmSync(tmp, { recursive: true, force: true });
      fs.mkdirSync(tmp, { recursive: true });
      const started = Date.now();
      await runBuild(path.join(tmp, "debian-12.qcow2"), path.join(tmp, "build.log"));
      const builtNowMs = Date.now() - started;
      fs.writeFileSync(path.join(tmp, "STAMP"), `${key}\n`);
      fs.rmSync(dir, { recursive: true, force: true });
      fs.renameSync(tmp, dir);
      return { path: path.join(dir, "debian-12.qcow2"), key, builtNowMs };
    } finally {
      fs.rmSync(lock, { recursive: true, force: true });
    }
  }
}
