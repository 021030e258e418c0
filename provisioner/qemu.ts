import fs from "node:fs";
import fsp from "node:fs/promises";
import path from "node:path";
import type { ProvisionerSize } from "../config/types.js";
import type { ImageRecord, VmPorts } from "./db.js";
import { ProvisionerError } from "./errors.js";
import { runTool } from "./tools.js";

/** Files of one VM's run directory (DESIGN.md "The provisioner"). */
export function runFiles(runDir: string): {
  pid: string; qmp: string; console: string; consoleSock: string; pasta: string; seed: string; disk: string; qga: string;
} {
  return {
    pid: path.join(runDir, "qemu.pid"),
    qmp: path.join(runDir, "qmp.sock"),
    console: path.join(runDir, "console.log"),
    // As long as qmp.sock: MAX_DATA_DIR_LENGTH is computed for that length.
    consoleSock: path.join(runDir, "con.sock"),
    // "<pasta pid> <qemu pid>", written by guestnet.ts (pasta's own -P is limited to /tmp by AppArmor).
    pasta: path.join(runDir, "pasta.pid"),
    seed: path.join(runDir, "seed.iso"),
    disk: path.join(runDir, "disk.qcow2"),
    // The guest agent's virtio-serial port (guestagent.ts); as long as qmp.sock.
    qga: path.join(runDir, "qga.sock"),
  };
}

/** QEMU's -drive/-chardev option syntax: "," separates options and ",," is a literal comma. */
export function qemuOpt(value: string): string {
  if (/[\0\n\r]/.test(value)) throw new ProvisionerError("bad_value", "control character in a QEMU option value", 400);
  return value.replaceAll(",", ",,");
}

/** The qdev id of the VM's disk (virtio-blk-pci) and the -drive id behind it (query-blockstats "device"). */
export const DISK_DEVICE_ID = "vdisk0";
export const DISK_DRIVE_ID = "disk0";
/**
 * The node name of the disk's qcow2 format node: backup.ts puts its persistent
 * dirty bitmaps there. (QEMU names an unnamed node "#blockNNN", different in
 * every run; backup.ts still finds it through query-block for VMs started
 * before this name existed.)
 */
export const DISK_NODE_NAME = "capsul-disk";
/** The virtio-serial port qemu-guest-agent looks for inside the guest. */
export const GUEST_AGENT_PORT_NAME = "org.qemu.guest_agent.0";
/**
 * block_set_io_throttle wants the device that owns the block backend: for
 * virtio-blk-pci that is its virtio-backend child, not the PCI proxy.
 */
export const DISK_BACKEND_QOM_PATH = `/machine/peripheral/${DISK_DEVICE_ID}/virtio-backend`;

export interface LaunchSpec {
  name: string;
  uuid: string;
  runDir: string;
  accel: "kvm" | "tcg";
  size: ProvisionerSize;
  image: ImageRecord;
  /** Ports inside the VM's own network namespace forwarded to the guest's 22/80/443 (guestnet.ts NS_FORWARD_PORTS). */
  ports: VmPorts;
}

/**
 * The CPU a VM sees; the KVM probe (accel.ts) boots with the same one.
 * qemu64 under TCG: "max" emulates more features and boots ~25% slower here.
 */
export function cpuModel(accel: "kvm" | "tcg"): string {
  return accel === "kvm" ? "host" : "qemu64";
}

/**
 * The full argv of one VM, built without a shell. Identity: `-uuid` (re-adoption
 * checks it in /proc/PID/cmdline). QEMU daemonizes itself (fork + setsid) after
 * initialising, so the VM outlives a crash or kill -9 of the provisioner, and a
 * start-up error (bad disk) still reaches us as exit status + stderr. It starts
 * paused (-S): the provisioner connects the console first, then sends `cont`,
 * so the log misses nothing of the boot. Networking: slirp inside the VM's own
 * network namespace (guestnet.ts), forwarding NS_FORWARD_PORTS there to the
 * guest's 22/80/443; pasta brings the VM's host loopback ports to those.
 */
export function buildQemuArgs(s: LaunchSpec): string[] {
  const f = runFiles(s.runDir);
  const mib = Math.floor(s.size.memoryBytes / (1024 * 1024));
  let drive = `if=none,id=${DISK_DRIVE_ID},node-name=${DISK_NODE_NAME},file=${qemuOpt(f.disk)},format=qcow2,discard=unmap,detect-zeroes=unmap`;
  if (s.size.diskIopsPerSec > 0) drive += `,throttling.iops-total=${s.size.diskIopsPerSec}`;
  if (s.size.diskBytesPerSec > 0) drive += `,throttling.bps-total=${s.size.diskBytesPerSec}`;
  // 0.0.0.0 of the VM's own namespace: its loopback is still down when QEMU binds.
  const fwd = (p: number, guest: number): string => `hostfwd=tcp::${p}-:${guest}`;
  const args = [
    "-name", `capsul-${s.name},debug-threads=on`,
    "-uuid", s.uuid,
    "-machine", `q35,accel=${s.accel}`,
    "-cpu", cpuModel(s.accel),
    "-m", String(mib),
    "-smp", String(s.size.vcpus),
    "-nodefaults", "-no-user-config", "-display", "none",
    "-chardev", `socket,id=console,path=${qemuOpt(f.consoleSock)},server=on,wait=off`,
    "-serial", "chardev:console",
    "-chardev", `socket,id=qmp,path=${qemuOpt(f.qmp)},server=on,wait=off`,
    "-mon", "chardev=qmp,mode=control",
    "-pidfile", f.pid,
    "-daemonize",
    "-S",
    "-drive", drive,
    "-device", `virtio-blk-pci,drive=${DISK_DRIVE_ID},id=${DISK_DEVICE_ID}`,
    "-drive", `if=none,id=seed,file=${qemuOpt(f.seed)},format=raw,readonly=on`,
    "-device", "virtio-blk-pci,drive=seed,id=vseed",
    "-netdev", `user,id=net0,${fwd(s.ports.ssh, 22)},${fwd(s.ports.http, 80)},${fwd(s.ports.https, 443)}`,
    // romfile= drops the iPXE option ROM: the guest never boots from the network.
    "-device", "virtio-net-pci,netdev=net0,romfile=",
    "-device", "virtio-rng-pci",
    // The guest agent's channel: backups freeze the guest's filesystems through
    // it when the guest runs qemu-guest-agent (Debian's cloud image does).
    "-chardev", `socket,id=qga0,path=${qemuOpt(f.qga)},server=on,wait=off`,
    "-device", "virtio-serial-pci,id=vserial0",
    "-device", `virtserialport,chardev=qga0,name=${GUEST_AGENT_PORT_NAME}`,
  ];
  if (s.image.format === "kernel") {
    args.push("-kernel", s.image.files.kernel!.path, "-initrd", s.image.files.initrd!.path);
    if (s.image.cmdline) args.push("-append", s.image.cmdline);
  }
  return args;
}

/**
 * Starts QEMU (`cmd`: its argv, possibly behind unshare, see guestnet.ts, and
 * systemd-run, see scope.ts); resolves with the daemon's pid once it has
 * initialised (paused, see -S).
 */
export async function launchQemu(cmd: { file: string; args: string[]; qemu: string; env?: NodeJS.ProcessEnv }, pidFile: string, timeoutMs: number): Promise<number> {
  await fsp.rm(pidFile, { force: true });
  try {
    // Errors are QEMU's unless unshare or systemd-run speaks ("unshare: …", "Failed to start transient scope unit: …").
    await runTool("launch_failed", cmd.file, cmd.args, timeoutMs, cmd.qemu, cmd.env);
  } catch (e) {
    const msg = (e as Error).message;
    if (/: unshare: unshare failed/.test(msg)) {
      throw new ProvisionerError("launch_failed", `${msg} (VMs run in user namespaces: sysctl kernel.unprivileged_userns_clone=1)`, 500, { cause: e });
    }
    throw e;
  }
  const pid = readPidFile(pidFile);
  if (!pid) throw new ProvisionerError("launch_failed", `QEMU started but wrote no pid to ${pidFile}`, 500);
  return pid;
}

export function readPidFile(file: string): number | null {
  try {
    const n = Number(fs.readFileSync(file, "utf8").trim());
    return Number.isInteger(n) && n > 1 ? n : null;
  } catch {
    return null;
  }
}

/** argv of a live process, or null when it is gone (or is a zombie with an empty cmdline). */
export function procCmdline(pid: number): string[] | null {
  try {
    const raw = fs.readFileSync(`/proc/${pid}/cmdline`, "utf8");
    if (!raw) return null;
    return raw.split("\0").filter((x, i, a) => i < a.length - 1 || x !== "");
  } catch {
    return null;
  }
}

/** Is `pid` the QEMU of the VM with this uuid? (A pid may have been reused by anything.) */
export function isQemuOf(pid: number, uuid: string): boolean {
  const argv = procCmdline(pid);
  if (!argv) return false;
  const i = argv.indexOf("-uuid");
  return i >= 0 && argv[i + 1] === uuid;
}

export function processAlive(pid: number): boolean {
  try {
    process.kill(pid, 0);
  } catch (e) {
    return (e as NodeJS.ErrnoException).code === "EPERM";
  }
  // A zombie still answers signal 0; it has no cmdline.
  return procCmdline(pid) !== null;
}

/** QEMU processes on this host whose pidfile lies under `vmsDir` (ours), by pid. */
export function findOurQemus(vmsDir: string): Array<{ pid: number; uuid: string | null; argv: string[] }> {
  const out: Array<{ pid: number; uuid: string | null; argv: string[] }> = [];
  let entries: string[];
  try { entries = fs.readdirSync("/proc"); } catch { return out; }
  const prefix = vmsDir.endsWith("/") ? vmsDir : `${vmsDir}/`;
  for (const e of entries) {
    if (!/^\d+$/.test(e)) continue;
    const argv = procCmdline(Number(e));
    if (!argv) continue;
    const p = argv.indexOf("-pidfile");
    if (p < 0 || !argv[p + 1]?.startsWith(prefix)) continue;
    const u = argv.indexOf("-uuid");
    out.push({ pid: Number(e), uuid: u >= 0 ? argv[u + 1] ?? null : null, argv });
  }
  return out;
}

const CLK_TCK = 100; // USER_HZ on Linux x86-64

/** CPU seconds (user+system) of one thread or process from /proc/…/stat, or null. */
export function cpuSeconds(statPath: string): number | null {
  try {
    const s = fs.readFileSync(statPath, "utf8");
    // Field 2 (comm) may contain spaces and parentheses: split after the last ")".
    const rest = s.slice(s.lastIndexOf(")") + 2).split(" ");
    // rest[0] is field 3 (state); utime and stime are fields 14 and 15.
    return (Number(rest[11]) + Number(rest[12])) / CLK_TCK;
  } catch {
    return null;
  }
}

/** Resident set size of a process in bytes, or null. */
export function rssBytes(pid: number): number | null {
  try {
    const m = /^VmRSS:\s+(\d+)\s+kB/m.exec(fs.readFileSync(`/proc/${pid}/status`, "utf8"));
    return m ? Number(m[1]) * 1024 : null;
  } catch {
    return null;
  }
}
