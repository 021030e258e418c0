import path from "node:path";
import type { HostPort, ProvisionerConfig, ProvisionerSize } from "../config/types.js";
import { ConfigError } from "../lib/errors.js";
import { parseDurationMs, parseSizeBytes } from "../lib/units.js";
import { parseBackupConfig } from "./backupconfig.js";
import { parseCidr } from "./netguard.js";
import { COG_NAME_RE } from "../lib/hostname.js";

const MIB = 1024 * 1024;
const GIB = 1024 * MIB;

export const DEFAULT_LISTEN: HostPort = { host: "127.0.0.1", port: 7480 };
export const DEFAULT_DATA_DIR = "/var/lib/capsul/provisioner";
export const DEFAULT_MEMORY_OVERCOMMIT_RATIO = 1.0;
/** QEMU's own memory per VM, counted with the VM's size (see ProvisionerConfig.vmMemoryOverheadBytes). */
export const DEFAULT_VM_MEMORY_OVERHEAD_BYTES = 128 * 1024 * 1024;
export const DEFAULT_BOOT_TIMEOUT_MS = 180_000;
/** TCG: a cloud image boots to SSH in minutes (ProvisionerConfig.bootTimeoutTcgMs). */
export const DEFAULT_BOOT_TIMEOUT_TCG_MS = 10 * 60_000;
export const DEFAULT_STOP_TIMEOUT_MS = 60_000;
export const DEFAULT_REBOOT_TIMEOUT_MS = 120_000;
export const DEFAULT_LAUNCH_TIMEOUT_MS = 30_000;
export const DEFAULT_QMP_TIMEOUT_MS = 10_000;
export const DEFAULT_KVM_PROBE_TIMEOUT_MS = 15_000;
export const DEFAULT_TOOL_TIMEOUT_MS = 120_000;
export const DEFAULT_MAX_REQUEST_BODY_BYTES = 64 * 1024;
export const DEFAULT_MAX_IMAGE_BYTES = 20 * GIB;
export const DEFAULT_CONSOLE_TAIL_BYTES = 64 * 1024;
/** console.log of a VM is rotated to console.log.1 at this size: at most twice this on disk per VM. */
export const DEFAULT_CONSOLE_LOG_MAX_BYTES = 1024 * 1024;
/** Smallest console_log_size: one rotation per boot banner would be silly. */
export const MIN_CONSOLE_LOG_BYTES = 4096;
/** Local image sources must lie under <data_dir>/<this> unless import_dir says otherwise. */
export const DEFAULT_IMPORT_SUBDIR = "import";
/** Redirects an image download may follow (each hop's address is checked). */
export const DEFAULT_IMPORT_MAX_REDIRECTS = 5;
/** A download whose server sends nothing for this long is abandoned. */
export const DEFAULT_DOWNLOAD_IDLE_TIMEOUT_MS = 60_000;
/**
 * `qemu-img info` runs on untrusted qcow2 headers under prlimit: address space
 * and CPU time. A well-formed 20 GiB image needs well under 100 MiB and 1 s;
 * these stop a crafted one (huge tables, deep recursion) from taking the cog down.
 */
export const DEFAULT_IMAGE_INSPECT_MEMORY_BYTES = 1024 * MIB;
export const DEFAULT_IMAGE_INSPECT_CPU_MS = 30_000;
export const DEFAULT_MAX_VMS = 64;
export const DEFAULT_MAX_SSH_KEYS = 32;
export const DEFAULT_QUIT_TIMEOUT_MS = 5000;
export const DEFAULT_CRASH_RESTARTS = 3;
export const DEFAULT_CRASH_WINDOW_MS = 10 * 60_000;
/**
 * A unix socket path must fit sun_path (108 bytes with the NUL). The longest path
 * under the data dir is "/vms/<39-char name>/qmp.sock" = 52 bytes, so 60 leaves
 * room for the separator and a margin.
 */
export const MAX_DATA_DIR_LENGTH = 60;

/** capsul's size table (DESIGN.md). IO limits grow with the size. */
export const DEFAULT_SIZES: Readonly<Record<string, ProvisionerSize>> = Object.freeze({
  "f1-s": { vcpus: 1, memoryBytes: 512 * MIB, diskBytes: 10 * GIB, diskIopsPerSec: 1000, diskBytesPerSec: 50 * MIB },
  "f1-m": { vcpus: 1, memoryBytes: 1 * GIB, diskBytes: 25 * GIB, diskIopsPerSec: 2000, diskBytesPerSec: 100 * MIB },
  "f1-l": { vcpus: 1, memoryBytes: 2 * GIB, diskBytes: 55 * GIB, diskIopsPerSec: 3000, diskBytesPerSec: 150 * MIB },
  "f1-x": { vcpus: 2, memoryBytes: 4 * GIB, diskBytes: 80 * GIB, diskIopsPerSec: 4000, diskBytesPerSec: 200 * MIB },
  "f1-xx": { vcpus: 4, memoryBytes: 8 * GIB, diskBytes: 160 * GIB, diskIopsPerSec: 6000, diskBytesPerSec: 300 * MIB },
  "f1-xxx": { vcpus: 8, memoryBytes: 16 * GIB, diskBytes: 320 * GIB, diskIopsPerSec: 8000, diskBytesPerSec: 400 * MIB },
});

/** Default of max_archive_size: above the largest default size's disk (320 GiB), with room for the rest. */
export const DEFAULT_MAX_ARCHIVE_BYTES = 400 * GIB;
/** Default of move_answer_timeout: the hub asks the target cog, which answers at once. */
export const DEFAULT_MOVE_ANSWER_TIMEOUT_MS = 60_000;
/** Default of move_verify_timeout: SHA-256 and qemu-img info of a 320 GiB disk at ~300 MB/s take ~18 min. */
export const DEFAULT_MOVE_VERIFY_TIMEOUT_MS = 30 * 60_000;
function parseCogNames(v: unknown, at: string): string[] {
  if (v === undefined || v === null) return [];
  if (!Array.isArray(v)) throw new ConfigError("must be a list of cog names", at);
  return v.map((n, i) => {
    if (typeof n !== "string" || !COG_NAME_RE.test(n)) throw new ConfigError(`not a cog name: ${JSON.stringify(n)}`, `${at}[${i}]`);
    return n;
  });
}

/** VM, image and size names: DNS-label safe, never an option or a path. */
export const NAME_RE = /^[a-z][a-z0-9-]{0,38}$/;

const KEYS: Record<string, true> = {
  listen: true, data_dir: true, accel: true, sizes: true, host_memory: true,
  memory_overcommit_ratio: true, vm_memory_overhead: true, qemu_binary: true, qemu_img_binary: true, genisoimage_binary: true,
  boot_timeout: true, boot_timeout_tcg: true, stop_timeout: true, reboot_timeout: true, launch_timeout: true, qmp_timeout: true,
  kvm_probe_timeout: true, tool_timeout: true, max_request_body: true, max_image_size: true,
  console_tail: true, max_vms: true, max_ssh_keys: true, quit_timeout: true, crash_restarts: true, crash_window: true,
  import_dir: true, import_allowed_cidrs: true, import_max_redirects: true, download_idle_timeout: true,
  image_inspect_memory: true, image_inspect_cpu_time: true, console_log_size: true, pasta_binary: true,
  backups: true, accept_moves_from: true, max_archive_size: true, move_answer_timeout: true, move_verify_timeout: true, move_rate: true,
  systemd_scope: true,
};
const SIZE_KEYS: Record<string, true> = { vcpus: true, memory: true, disk: true, disk_iops: true, disk_bps: true };

function isRecord(v: unknown): v is Record<string, unknown> {
  return typeof v === "object" && v !== null && !Array.isArray(v);
}

function rejectUnknown(obj: Record<string, unknown>, known: Record<string, true>, at: string): void {
  for (const k of Object.keys(obj)) if (!known[k]) throw new ConfigError("unknown key", `${at}.${k}`);
}

export function parseListen(v: unknown, at: string): HostPort {
  if (typeof v !== "string") throw new ConfigError(`not host:port: ${JSON.stringify(v)}`, at);
  // ":7480" means every IPv4 address, as elsewhere in capsul.yaml.
  const m = /^(?:\[([0-9a-fA-F:.]+)\]|([^:[\]\s]*)):(\d{1,5})$/.exec(v.trim());
  const port = m ? Number(m[3]) : NaN;
  if (!m || port > 65535) throw new ConfigError(`not host:port (e.g. 127.0.0.1:7480): ${JSON.stringify(v)}`, at);
  return { host: (m[1] ?? m[2]) || "0.0.0.0", port };
}

function posInt(v: unknown, at: string, min = 1, max = Number.MAX_SAFE_INTEGER): number {
  if (typeof v !== "number" || !Number.isInteger(v) || v < min || v > max) {
    throw new ConfigError(`must be an integer from ${min} to ${max}: ${JSON.stringify(v)}`, at);
  }
  return v;
}

function binary(v: unknown, at: string, baseDir: string): string {
  if (typeof v !== "string" || v.length === 0 || v.startsWith("-") || /[\0\n]/.test(v)) {
    throw new ConfigError(`not a program name or path: ${JSON.stringify(v)}`, at);
  }
  // A bare name is looked up on PATH; anything with a slash is a path.
  return v.includes("/") ? path.resolve(baseDir, v) : v;
}

function parseSize(raw: unknown, at: string, base: ProvisionerSize | undefined): ProvisionerSize {
  if (!isRecord(raw)) throw new ConfigError("must be a mapping", at);
  rejectUnknown(raw, SIZE_KEYS, at);
  const need = (k: string): never => { throw new ConfigError("required for a new size", `${at}.${k}`); };
  const vcpus = raw.vcpus !== undefined ? posInt(raw.vcpus, `${at}.vcpus`, 1, 64) : base?.vcpus ?? need("vcpus");
  const memoryBytes = raw.memory !== undefined ? parseSizeBytes(raw.memory, `${at}.memory`) : base?.memoryBytes ?? need("memory");
  const diskBytes = raw.disk !== undefined ? parseSizeBytes(raw.disk, `${at}.disk`) : base?.diskBytes ?? need("disk");
  const diskIopsPerSec = raw.disk_iops !== undefined ? posInt(raw.disk_iops, `${at}.disk_iops`, 0) : base?.diskIopsPerSec ?? 0;
  const diskBytesPerSec = raw.disk_bps !== undefined ? parseSizeBytes(raw.disk_bps, `${at}.disk_bps`) : base?.diskBytesPerSec ?? 0;
  if (memoryBytes < 64 * MIB) throw new ConfigError("at least 64MiB", `${at}.memory`);
  if (diskBytes < 64 * MIB) throw new ConfigError("at least 64MiB", `${at}.disk`);
  return Object.freeze({ vcpus, memoryBytes, diskBytes, diskIopsPerSec, diskBytesPerSec });
}

/**
 * `cog.provisioner` of capsul.yaml → a frozen, fully defaulted ProvisionerConfig.
 * `raw` null/undefined means "all defaults". Relative paths resolve against baseDir
 * (the directory of capsul.yaml).
 */
export function parseProvisionerConfig(raw: unknown, at: string, baseDir: string): ProvisionerConfig {
  if (raw === null || raw === undefined) raw = {};
  if (!isRecord(raw)) throw new ConfigError("must be a mapping", at);
  rejectUnknown(raw, KEYS, at);
  const dur = (k: string, d: number): number => (raw[k] === undefined ? d : parseDurationMs(raw[k], `${at}.${k}`));
  const bytes = (k: string, d: number): number => (raw[k] === undefined ? d : parseSizeBytes(raw[k], `${at}.${k}`));

  const listen = raw.listen === undefined ? { ...DEFAULT_LISTEN } : parseListen(raw.listen, `${at}.listen`);

  let dataDir = DEFAULT_DATA_DIR;
  if (raw.data_dir !== undefined) {
    if (typeof raw.data_dir !== "string" || raw.data_dir.length === 0) throw new ConfigError("must be a path", `${at}.data_dir`);
    dataDir = path.resolve(baseDir, raw.data_dir);
  }
  checkDataDir(dataDir, `${at}.data_dir`);

  let accel: ProvisionerConfig["accel"] = "auto";
  if (raw.accel !== undefined) {
    if (raw.accel !== "auto" && raw.accel !== "kvm" && raw.accel !== "tcg") {
      throw new ConfigError(`must be auto, kvm or tcg: ${JSON.stringify(raw.accel)}`, `${at}.accel`);
    }
    accel = raw.accel;
  }

  let systemdScope: ProvisionerConfig["systemdScope"] = "auto";
  if (raw.systemd_scope !== undefined) {
    if (raw.systemd_scope !== "auto" && raw.systemd_scope !== "on" && raw.systemd_scope !== "off") {
      throw new ConfigError(`must be auto, on or off: ${JSON.stringify(raw.systemd_scope)}`, `${at}.systemd_scope`);
    }
    systemdScope = raw.systemd_scope;
  }

  const sizes: Record<string, ProvisionerSize> = { ...DEFAULT_SIZES };
  if (raw.sizes !== undefined) {
    if (!isRecord(raw.sizes)) throw new ConfigError("must be a mapping of size name to size", `${at}.sizes`);
    for (const [name, s] of Object.entries(raw.sizes)) {
      if (!NAME_RE.test(name)) throw new ConfigError("not a size name (^[a-z][a-z0-9-]{0,38}$)", `${at}.sizes.${name}`);
      sizes[name] = parseSize(s, `${at}.sizes.${name}`, DEFAULT_SIZES[name]);
    }
  }

  const hostMemoryBytes = raw.host_memory === undefined || raw.host_memory === null ? null : parseSizeBytes(raw.host_memory, `${at}.host_memory`);
  let memoryOvercommitRatio = DEFAULT_MEMORY_OVERCOMMIT_RATIO;
  if (raw.memory_overcommit_ratio !== undefined) {
    const r = raw.memory_overcommit_ratio;
    if (typeof r !== "number" || !Number.isFinite(r) || r <= 0 || r > 16) {
      throw new ConfigError(`must be a number above 0 and at most 16: ${JSON.stringify(r)}`, `${at}.memory_overcommit_ratio`);
    }
    memoryOvercommitRatio = r;
  }

  let importDir = path.join(dataDir, DEFAULT_IMPORT_SUBDIR);
  if (raw.import_dir !== undefined) {
    if (typeof raw.import_dir !== "string" || raw.import_dir.length === 0) throw new ConfigError("must be a path", `${at}.import_dir`);
    importDir = path.resolve(baseDir, raw.import_dir);
  }
  const importAllowedCidrs: string[] = [];
  if (raw.import_allowed_cidrs !== undefined && raw.import_allowed_cidrs !== null) {
    if (!Array.isArray(raw.import_allowed_cidrs)) throw new ConfigError("must be a list of CIDR blocks", `${at}.import_allowed_cidrs`);
    raw.import_allowed_cidrs.forEach((c, i) => {
      try {
        if (typeof c !== "string") throw new Error(`not a CIDR block: ${JSON.stringify(c)}`);
        parseCidr(c);
      } catch (e) {
        throw new ConfigError((e as Error).message, `${at}.import_allowed_cidrs[${i}]`);
      }
      importAllowedCidrs.push((c as string).trim());
    });
  }
  const consoleLogMaxBytes = bytes("console_log_size", DEFAULT_CONSOLE_LOG_MAX_BYTES);
  if (consoleLogMaxBytes < MIN_CONSOLE_LOG_BYTES) throw new ConfigError(`at least ${MIN_CONSOLE_LOG_BYTES} bytes`, `${at}.console_log_size`);
  const inspectMemory = bytes("image_inspect_memory", DEFAULT_IMAGE_INSPECT_MEMORY_BYTES);
  if (inspectMemory < 16 * MIB) throw new ConfigError("at least 16MiB", `${at}.image_inspect_memory`);
  const inspectCpu = dur("image_inspect_cpu_time", DEFAULT_IMAGE_INSPECT_CPU_MS);
  // 0 would make every boot "slow" at once, and every reboot a hard reset.
  const atLeastOneSecond = (k: string, d: number): number => {
    const v = dur(k, d);
    if (v < 1000) throw new ConfigError(`at least 1s: ${JSON.stringify(raw[k])}`, `${at}.${k}`);
    return v;
  };
  if (inspectCpu < 1000) throw new ConfigError("at least 1s (prlimit counts whole CPU seconds)", `${at}.image_inspect_cpu_time`);

  const cfg: ProvisionerConfig = {
    listen,
    dataDir,
    accel,
    sizes: Object.freeze(sizes),
    hostMemoryBytes,
    memoryOvercommitRatio,
    vmMemoryOverheadBytes: bytes("vm_memory_overhead", DEFAULT_VM_MEMORY_OVERHEAD_BYTES),
    qemuBinary: raw.qemu_binary === undefined ? "qemu-system-x86_64" : binary(raw.qemu_binary, `${at}.qemu_binary`, baseDir),
    qemuImgBinary: raw.qemu_img_binary === undefined ? "qemu-img" : binary(raw.qemu_img_binary, `${at}.qemu_img_binary`, baseDir),
    genisoimageBinary: raw.genisoimage_binary === undefined ? "genisoimage" : binary(raw.genisoimage_binary, `${at}.genisoimage_binary`, baseDir),
    bootTimeoutMs: atLeastOneSecond("boot_timeout", DEFAULT_BOOT_TIMEOUT_MS),
    bootTimeoutTcgMs: atLeastOneSecond("boot_timeout_tcg", DEFAULT_BOOT_TIMEOUT_TCG_MS),
    stopTimeoutMs: dur("stop_timeout", DEFAULT_STOP_TIMEOUT_MS),
    rebootTimeoutMs: atLeastOneSecond("reboot_timeout", DEFAULT_REBOOT_TIMEOUT_MS),
    launchTimeoutMs: dur("launch_timeout", DEFAULT_LAUNCH_TIMEOUT_MS),
    qmpTimeoutMs: dur("qmp_timeout", DEFAULT_QMP_TIMEOUT_MS),
    kvmProbeTimeoutMs: dur("kvm_probe_timeout", DEFAULT_KVM_PROBE_TIMEOUT_MS),
    toolTimeoutMs: dur("tool_timeout", DEFAULT_TOOL_TIMEOUT_MS),
    maxRequestBodyBytes: bytes("max_request_body", DEFAULT_MAX_REQUEST_BODY_BYTES),
    maxImageBytes: bytes("max_image_size", DEFAULT_MAX_IMAGE_BYTES),
    consoleTailBytes: bytes("console_tail", DEFAULT_CONSOLE_TAIL_BYTES),
    maxVms: raw.max_vms === undefined ? DEFAULT_MAX_VMS : posInt(raw.max_vms, `${at}.max_vms`, 1, 10_000),
    maxSshKeys: raw.max_ssh_keys === undefined ? DEFAULT_MAX_SSH_KEYS : posInt(raw.max_ssh_keys, `${at}.max_ssh_keys`, 1, 1000),
    quitTimeoutMs: dur("quit_timeout", DEFAULT_QUIT_TIMEOUT_MS),
    crashRestarts: raw.crash_restarts === undefined ? DEFAULT_CRASH_RESTARTS : posInt(raw.crash_restarts, `${at}.crash_restarts`, 0, 100),
    crashWindowMs: dur("crash_window", DEFAULT_CRASH_WINDOW_MS),
    importDir,
    importAllowedCidrs: Object.freeze(importAllowedCidrs) as string[],
    importMaxRedirects: raw.import_max_redirects === undefined ? DEFAULT_IMPORT_MAX_REDIRECTS : posInt(raw.import_max_redirects, `${at}.import_max_redirects`, 0, 20),
    downloadIdleTimeoutMs: dur("download_idle_timeout", DEFAULT_DOWNLOAD_IDLE_TIMEOUT_MS),
    imageInspectMemoryBytes: inspectMemory,
    imageInspectCpuMs: inspectCpu,
    consoleLogMaxBytes,
    pastaBinary: raw.pasta_binary === undefined ? "pasta" : binary(raw.pasta_binary, `${at}.pasta_binary`, baseDir),
    systemdScope,
    backups: parseBackupConfig(raw.backups, `${at}.backups`, baseDir, dataDir),
    acceptMovesFrom: parseCogNames(raw.accept_moves_from, `${at}.accept_moves_from`),
    maxArchiveBytes: bytes("max_archive_size", DEFAULT_MAX_ARCHIVE_BYTES),
    moveAnswerTimeoutMs: atLeastOneSecond("move_answer_timeout", DEFAULT_MOVE_ANSWER_TIMEOUT_MS),
    moveVerifyTimeoutMs: atLeastOneSecond("move_verify_timeout", DEFAULT_MOVE_VERIFY_TIMEOUT_MS),
    moveBytesPerSec: bytes("move_rate", 0),
  };
  if (cfg.maxArchiveBytes < 64 * MIB) throw new ConfigError("at least 64MiB", `${at}.max_archive_size`);
  return Object.freeze(cfg);
}

/** The data dir ends up inside QEMU option strings and unix socket paths: keep it plain and short. */
export function checkDataDir(dir: string, at: string): void {
  if (!path.isAbsolute(dir)) throw new ConfigError("must be an absolute path", at);
  if (dir.length > MAX_DATA_DIR_LENGTH) {
    throw new ConfigError(`longer than ${MAX_DATA_DIR_LENGTH} bytes (QMP socket paths must fit 108 bytes): ${dir}`, at);
  }
  if (/[,\0\n\r\t]/.test(dir)) throw new ConfigError("must not contain commas or control characters", at);
}

/** Defaults with overrides, for tests and `capsul demo`: takes the same fields as the frozen type. */
export function provisionerConfigWith(over: Partial<ProvisionerConfig>): ProvisionerConfig {
  const base = parseProvisionerConfig({}, "provisioner", process.cwd());
  const cfg = { ...base, ...over };
  // As in capsul.yaml: the import dir defaults to one inside the data dir.
  if (over.importDir === undefined) cfg.importDir = path.join(cfg.dataDir, DEFAULT_IMPORT_SUBDIR);
  // And so does the backup dir.
  if (over.backups === undefined) cfg.backups = parseBackupConfig({}, "provisioner.backups", process.cwd(), cfg.dataDir);
  checkDataDir(cfg.dataDir, "provisioner.dataDir");
  return Object.freeze(cfg);
}
