import { createHash } from "node:crypto";
import { spawnSync } from "node:child_process";
import fs from "node:fs";
import os from "node:os";
import path from "node:path";
import { fileURLToPath } from "node:url";

/**
 * The tiny test VM image (scripts/build-test-image.sh), built once into
 * os.tmpdir()/capsul-test-image-<hash of the script> and reused: an edited script
 * builds into a directory of its own, so worktrees with different scripts on one
 * machine never rebuild (or replace) each other's image; concurrent test files
 * wait on a lock dir.
 */
export interface TestImage { dir: string; kernel: string; initrd: string; cmdline: string }

const ROOT = path.resolve(path.dirname(fileURLToPath(import.meta.url)), "..", "..");
const SCRIPT = path.join(ROOT, "scripts", "build-test-image.sh");
export const TEST_IMAGE_CACHE_PREFIX = path.join(os.tmpdir(), "capsul-test-image");
/** A stale lock (a build that crashed) is broken after this long; a build takes ~10 s. */
const BUILD_LOCK_STALE_MS = 10 * 60_000;
const LOCK_POLL_MS = 500;

function stamp(): string {
  return createHash("sha256").update(fs.readFileSync(SCRIPT)).digest("hex").slice(0, 16);
}

function ready(dir: string): TestImage | null {
  const want = stamp();
  try {
    if (fs.readFileSync(path.join(dir, "STAMP"), "utf8").trim() !== want) return null;
  } catch {
    return null;
  }
  return {
    dir, kernel: path.join(dir, "kernel"), initrd: path.join(dir, "initrd"),
    cmdline: fs.readFileSync(path.join(dir, "cmdline"), "utf8").trim(),
  };
}

export async function testImage(): Promise<TestImage> {
  const dir = `${TEST_IMAGE_CACHE_PREFIX}-${stamp()}`;
  const lock = `${dir}.lock`;
  for (;;) {
    const img = ready(dir);
    if (img) return img;
    try {
      fs.mkdirSync(lock);
    } catch {
      try {
        if (Date.now() - fs.statSync(lock).mtimeMs > BUILD_LOCK_STALE_MS) fs.rmSync(lock, { recursive: true, force: true });
      } catch { /* gone meanwhile */ }
      await new Promise((r) => setTimeout(r, LOCK_POLL_MS));
      continue;
    }
    try {
      if (ready(dir)) continue;
      const tmp = `${dir}.build-${process.pid}`;
      fs.rmSync(tmp, { recursive: true, force: true });
      const r = spawnSync("bash", [SCRIPT, tmp], { stdio: ["ignore", "inherit", "pipe"], encoding: "utf8" });
      if (r.status !== 0) throw new Error(`build-test-image.sh failed (${r.status}): ${r.stderr}`);
      fs.writeFileSync(path.join(tmp, "STAMP"), stamp() + "\n");
      fs.rmSync(dir, { recursive: true, force: true });
      fs.renameSync(tmp, dir);
    } finally {
      fs.rmSync(lock, { recursive: true, force: true });
    }
  }
}
