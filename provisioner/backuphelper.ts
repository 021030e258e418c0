import { spawn } from "node:child_process";
import fs from "node:fs";
import fsp from "node:fs/promises";
import path from "node:path";
import type { Logger } from "../lib/log.js";
import { ProvisionerError } from "./errors.js";
import { DISK_NODE_NAME, procCmdline, processAlive, readPidFile } from "./qemu.js";
import { QmpClient } from "./qmp.js";

/**
 * A stopped VM is backed up by a QEMU of its own that opens only the disk
 * (-machine none, no CPU, no guest, no network) and serves QMP: the same
 * bitmaps and jobs as for a running VM (backupjob.ts), and at its `quit` QEMU
 * stores the bitmaps in the qcow2 again. The VM's lifecycle lock is held
 * meanwhile, so the VM cannot start on the same disk (QEMU's image locking
 * would refuse it anyway).
 *
 * It is a plain child of the provisioner; if the provisioner dies, it lives
 * on: its pidfile under <dataDir>/backup-helpers/ lets the next provisioner
 * find it (`-name capsul-backup-<vm>` in its cmdline) and quit it.
 */

export const HELPER_DIR = "backup-helpers";
/** The helper's QMP socket, in the VM's run dir: as short as qmp.sock (MAX_DATA_DIR_LENGTH). */
export const HELPER_SOCKET = "bk.sock";
const QMP_CONNECT_POLL_MS = 100;

export interface HelperOptions { qemuBinary: string; dataDir: string; runDir: string; vm: string; disk: string; launchTimeoutMs: number; qmpTimeoutMs: number; quitTimeoutMs: number }

export interface Helper { pid: number; qmp: QmpClient; quit(): Promise<void> }

const marker = (vm: string): string => `capsul-backup-${vm}`;

function waitExit(pid: number, timeoutMs: number): Promise<boolean> {
  return new Promise((resolve) => {
    const deadline = Date.now() + timeoutMs;
    const tick = (): void => {
      if (!processAlive(pid)) { resolve(true); return; }
      if (Date.now() > deadline) { resolve(false); return; }
      setTimeout(tick, QMP_CONNECT_POLL_MS);
    };
    tick();
  });
}

export async function startHelper(o: HelperOptions): Promise<Helper> {
  const sock = path.join(o.runDir, HELPER_SOCKET);
  const pidDir = path.join(o.dataDir, HELPER_DIR);
  await fsp.mkdir(pidDir, { recursive: true, mode: 0o700 });
  const pidFile = path.join(pidDir, `${o.vm}.pid`);
  // Its stderr goes to a file, not a pipe: a pipe would break (SIGPIPE) if the provisioner died first.
  const logFile = path.join(pidDir, `${o.vm}.log`);
  await fsp.rm(sock, { force: true });
  const log = await fsp.open(logFile, "w", 0o600);
  const blockdev = JSON.stringify({ driver: "qcow2", "node-name": DISK_NODE_NAME, file: { driver: "file", filename: o.disk } });
  const child = spawn(o.qemuBinary, [
    "-name", marker(o.vm), "-machine", "none", "-nodefaults", "-no-user-config", "-display", "none",
    "-chardev", `socket,id=qmp,path=${sock.replaceAll(",", ",,")},server=on,wait=off`, "-mon", "chardev=qmp,mode=control",
    "-blockdev", blockdev, "-pidfile", pidFile,
  ], { stdio: ["ignore", "ignore", log.fd] });
  await log.close();
  const stderr = (): string => { try { return fs.readFileSync(logFile, "utf8").slice(-2000); } catch { return ""; } };
  const exited = new Promise<void>((resolve) => child.once("exit", () => resolve()));
  let qmp: QmpClient | undefined;
  const deadline = Date.now() + o.launchTimeoutMs;
  while (!qmp) {
    if (child.exitCode !== null || child.signalCode !== null) {
      const line = stderr().trim().split("\n").pop() || `exit ${child.exitCode}`;
      throw new ProvisionerError("backup_helper_failed", `QEMU could not open the disk of ${o.vm}: ${line}`, 500);
    }
    if (Date.now() > deadline) {
      child.kill("SIGKILL");
      throw new ProvisionerError("backup_helper_failed", `the backup QEMU of ${o.vm} did not serve QMP within ${o.launchTimeoutMs} ms`, 500);
    }
    if (fs.existsSync(sock)) qmp = await QmpClient.connect(sock, o.qmpTimeoutMs).catch(() => undefined);
    if (!qmp) await new Promise((r) => setTimeout(r, QMP_CONNECT_POLL_MS));
  }
  const pid = child.pid!;
  return {
    pid,
    qmp,
    quit: async () => {
      // quit stores the persistent bitmaps; SIGKILL only if QEMU hangs (they come back inconsistent).
      await qmp!.execute("quit").catch(() => undefined);
      qmp!.close();
      const done = await Promise.race([exited.then(() => true), new Promise<boolean>((r) => setTimeout(() => r(false), o.quitTimeoutMs))]);
      if (!done) { child.kill("SIGKILL"); await exited; }
      await fsp.rm(sock, { force: true });
      await fsp.rm(pidFile, { force: true });
      await fsp.rm(logFile, { force: true });
    },
  };
}

/**
 * Helpers left by a provisioner that died during an offline backup: asked to
 * quit over QMP (so the bitmaps are stored), killed if they do not.
 */
export async function reapHelpers(dataDir: string, vmsDir: string, qmpTimeoutMs: number, quitTimeoutMs: number, log: Logger): Promise<void> {
  const dir = path.join(dataDir, HELPER_DIR);
  let names: string[] = [];
  try { names = await fsp.readdir(dir); } catch { return; }
  for (const n of names) {
    if (!n.endsWith(".pid")) { await fsp.rm(path.join(dir, n), { force: true }); continue; }
    const vm = n.replace(/\.pid$/, "");
    const file = path.join(dir, n);
    const pid = readPidFile(file);
    if (pid && (procCmdline(pid) ?? []).includes(marker(vm))) {
      const sock = path.join(vmsDir, vm, HELPER_SOCKET);
      const qmp = await QmpClient.connect(sock, qmpTimeoutMs).catch(() => undefined);
      await qmp?.execute("quit").catch(() => undefined);
      qmp?.close();
      if (!(await waitExit(pid, quitTimeoutMs))) {
        try { process.kill(pid, "SIGKILL"); } catch { /* gone */ }
        await waitExit(pid, quitTimeoutMs);
      }
      log.warn("quit a backup QEMU left by an earlier provisioner", { vm, pid });
    }
    await fsp.rm(file, { force: true });
  }
}
