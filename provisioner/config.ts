/**
 * `cog.provisioner` of capsul.yaml: the VM provisioner's keys, each with its description,
 * default and bounds stated once in the schema below (config/fields.ts leaves); the runtime
 * ProvisionerConfig, its errors ("cog.provisioner.max_vms: must be an integer from 1 to
 * 10000: 0") and capsul.schema.json come from it. Backups are ./backupconfig.ts's.
 */
import path from "node:path";
import { z } from "zod";
import {
  custom, describeJson, durationMs, fail, listOf, parseSection, read, resolvePath, rules, section, sizeBytes,
} from "../config/fields.js";
import { fmtMs } from "../config/values.js";
import type { HostPort, ProvisionerConfig, ProvisionerSize } from "../config/types.js";
import { ConfigError } from "../lib/errors.js";
import { parseSizeBytes } from "../lib/units.js";
import { backupsSchema, parseBackupConfig, resolveBackups } from "./backupconfig.js";
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
/** Custom domains per VM: each costs the hub a route or two and, outside the cog's grants, a DNS claim (hub.domains.max_claims_per_cog is 100). */
export const DEFAULT_MAX_DOMAINS_PER_VM = 16;
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

/** VM, image and size names: DNS-label safe, never an option or a path. */
export const NAME_RE = /^[a-z][a-z0-9-]{0,38}$/;

function isRecord(v: unknown): v is Record<string, unknown> {
  return typeof v === "object" && v !== null && !Array.isArray(v);
}

export function parseListen(v: unknown, at: string): HostPort {
  if (typeof v !== "string") throw new ConfigError(`not host:port: ${JSON.stringify(v)}`, at);
  // ":7480" means every IPv4 address, as elsewhere in capsul.yaml.
  const m = /^(?:\[([0-9a-fA-F:.]+)\]|([^:[\]\s]*)):(\d{1,5})$/.exec(v.trim());
  const port = m ? Number(m[3]) : NaN;
  if (!m || port > 65535) throw new ConfigError(`not host:port (e.g. 127.0.0.1:7480): ${JSON.stringify(v)}`, at);
  return { host: (m[1] ?? m[2]) || "0.0.0.0", port };
}

function posInt(v: unknown, min: number, max: number): number {
  if (typeof v !== "number" || !Number.isInteger(v) || v < min || v > max) {
    throw new ConfigError(`must be an integer from ${min} to ${max}: ${JSON.stringify(v)}`);
  }
  return v;
}

/** An integer key with its own wording ("must be an integer from 1 to 100: …"). */
function count(description: string, def: number, min: number, max: number) {
  return custom({ description: `${description} Default: ${def}.`, default: def, anyOf: [{ type: "integer", minimum: min, maximum: max }, { type: "null" }] },
    (v) => (v == null ? def : posInt(v, min, max)));
}

/** A program: a bare name is looked up on PATH; anything with a slash is a path. */
function binary(description: string, def: string) {
  return custom({ description: `${description} Default: ${def}.`, default: def, type: ["string", "null"], minLength: 1, pattern: "^[^-]" }, (v) => {
    if (v == null) return def;
    if (typeof v !== "string" || v.length === 0 || v.startsWith("-") || /[\0\n]/.test(v)) {
      throw new ConfigError(`not a program name or path: ${JSON.stringify(v)}`);
    }
    return v.includes("/") ? resolvePath(v) : v;
  });
}

/** A duration of at least 1 s: 0 would make every boot "slow" at once, and every reboot a hard reset. */
function seconds(description: string, def: number) {
  const d = durationMs(description, { def, min: 0 });
  return d.transform((ms, ctx) => {
    if (ms < 1000) {
      ctx.issues.push({ code: "custom", message: `at least 1s, got ${fmtMs(ms)}`, input: ms });
      return z.NEVER;
    }
    return ms;
  });
}

/** A path, resolved against the config file's directory; absent: undefined (the section picks the default). */
function dir(description: string) {
  return custom({ description, type: ["string", "null"], minLength: 1 }, (v) => {
    if (v == null) return undefined;
    if (typeof v !== "string" || v.length === 0) throw new ConfigError("must be a path");
    return resolvePath(v);
  });
}

const sizeSchema = section("One VM size; a size of capsul's table may override some of its fields.", {
  vcpus: custom({ description: "Virtual CPUs (1 to 64).", anyOf: [{ type: "integer", minimum: 1, maximum: 64 }, { type: "null" }] },
    (v) => (v == null ? undefined : posInt(v, 1, 64))),
  memory: custom({ description: "Guest memory (at least 64MiB).", anyOf: [{ type: "string" }, { type: "integer" }, { type: "null" }] },
    (v) => (v == null ? undefined : parseSizeBytes(v))),
  disk: custom({ description: "Virtual size of the VM's qcow2 disk (at least 64MiB).", anyOf: [{ type: "string" }, { type: "integer" }, { type: "null" }] },
    (v) => (v == null ? undefined : parseSizeBytes(v))),
  disk_iops: custom({ description: "Disk operations per second, reads + writes (0 = unlimited).", anyOf: [{ type: "integer", minimum: 0 }, { type: "null" }] },
    (v) => (v == null ? undefined : posInt(v, 0, Number.MAX_SAFE_INTEGER))),
  disk_bps: custom({ description: "Disk bytes per second, reads + writes (0 = unlimited).", anyOf: [{ type: "string" }, { type: "integer" }, { type: "null" }] },
    (v) => (v == null ? undefined : parseSizeBytes(v))),
}, (o) => o, { nullable: false, notMapping: "must be a mapping" });

/** cog.provisioner.sizes: size name → size, over capsul's table. */
const sizesSchema = z.preprocess((value, ctx) => {
  if (value == null) return {};
  if (!isRecord(value)) {
    ctx.issues.push({ code: "custom", message: "must be a mapping of size name to size", input: value });
    return value;
  }
  for (const name of Object.keys(value)) {
    if (!NAME_RE.test(name)) {
      ctx.issues.push({ code: "custom", message: "not a size name (^[a-z][a-z0-9-]{0,38}$)", path: [name], input: value });
      return value;
    }
  }
  return value;
}, z.record(z.string(), sizeSchema)).transform(rules((given): Record<string, ProvisionerSize> => {
  const sizes: Record<string, ProvisionerSize> = { ...DEFAULT_SIZES };
  for (const [name, s] of Object.entries(given)) {
    const base = DEFAULT_SIZES[name];
    const need = (k: string): never => fail([name, k], "required for a new size");
    const size: ProvisionerSize = {
      vcpus: s.vcpus ?? base?.vcpus ?? need("vcpus"),
      memoryBytes: s.memory ?? base?.memoryBytes ?? need("memory"),
      diskBytes: s.disk ?? base?.diskBytes ?? need("disk"),
      diskIopsPerSec: s.disk_iops ?? base?.diskIopsPerSec ?? 0,
      diskBytesPerSec: s.disk_bps ?? base?.diskBytesPerSec ?? 0,
    };
    if (size.memoryBytes < 64 * MIB) fail([name, "memory"], "at least 64MiB");
    if (size.diskBytes < 64 * MIB) fail([name, "disk"], "at least 64MiB");
    sizes[name] = Object.freeze(size);
  }
  return Object.freeze(sizes);
}));
describeJson(sizesSchema, { description: "VM sizes by name: capsul's table (f1-s … f1-xxx, see DESIGN.md) with overrides and additions; a new size needs vcpus, memory and disk.", propertyNames: { pattern: NAME_RE.source } });

const cidrs = listOf("CIDR blocks an image URL may reach although they are loopback, private (RFC 1918, CGNAT, ULA), link-local, unspecified or multicast (default none: such targets, also after a redirect, are refused). For a mirror on the LAN.",
  custom({ description: "A CIDR block, e.g. 192.168.1.0/24.", type: "string" }, (c) => {
    try {
      if (typeof c !== "string") throw new Error(`not a CIDR block: ${JSON.stringify(c)}`);
      parseCidr(c);
    } catch (e) {
      throw new ConfigError((e as Error).message);
    }
    return c.trim();
  }), { notList: "must be a list of CIDR blocks" });

/** `cog.provisioner`: the VM provisioner's keys, each default and bound stated once. */
export const provisionerSchema = section("The VM provisioner (absent, null or false: none; {} for every default).", {
  listen: custom({
    description: `API listen address; anything but loopback requires the bearer token in <data_dir>/api-token. Default: 127.0.0.1:7480.`,
    default: "127.0.0.1:7480", type: ["string", "null"],
  }, (v) => (v == null ? { ...DEFAULT_LISTEN } : parseListen(v, ""))),
  data_dir: dir(`Directory for the SQLite database, image catalogue and VM run dirs; at most ${MAX_DATA_DIR_LENGTH} bytes (QMP socket paths live under it). Default: ${DEFAULT_DATA_DIR}.`),
  accel: custom({
    description: "Accelerator: kvm, tcg, or auto: probe KVM once by booting a kernel under it, fall back to TCG if it hangs. Default: auto.",
    default: "auto", anyOf: [{ enum: ["auto", "kvm", "tcg"] }, { type: "null" }],
  }, (v): ProvisionerConfig["accel"] => {
    if (v == null) return "auto";
    if (v !== "auto" && v !== "kvm" && v !== "tcg") throw new ConfigError(`must be auto, kvm or tcg: ${JSON.stringify(v)}`);
    return v;
  }),
  sizes: sizesSchema,
  host_memory: custom({ description: "Host memory the provisioner plans with (default the machine's total memory).", anyOf: [{ type: "string" }, { type: "integer" }, { type: "null" }] },
    (v) => (v == null ? null : parseSizeBytes(v))),
  memory_overcommit_ratio: custom({
    description: `Refuse to start a VM when the memory of all VMs that should run would exceed host_memory × this ratio (above 0, at most 16). Default: ${DEFAULT_MEMORY_OVERCOMMIT_RATIO}.`,
    default: DEFAULT_MEMORY_OVERCOMMIT_RATIO, anyOf: [{ type: "number", exclusiveMinimum: 0, maximum: 16 }, { type: "null" }],
  }, (r) => {
    if (r == null) return DEFAULT_MEMORY_OVERCOMMIT_RATIO;
    if (typeof r !== "number" || !Number.isFinite(r) || r <= 0 || r > 16) throw new ConfigError(`must be a number above 0 and at most 16: ${JSON.stringify(r)}`);
    return r;
  }),
  vm_memory_overhead: sizeBytes("Memory counted for each VM on top of its size: QEMU's own (a 160 MiB guest's QEMU held ~300 MB RSS under TCG on the test machine, less under KVM).",
    { def: DEFAULT_VM_MEMORY_OVERHEAD_BYTES, min: 0 }),
  qemu_binary: binary("QEMU system emulator (looked up on PATH).", "qemu-system-x86_64"),
  qemu_img_binary: binary("qemu-img.", "qemu-img"),
  genisoimage_binary: binary("genisoimage, builds the cloud-init NoCloud seed.", "genisoimage"),
  boot_timeout: seconds("Under KVM, from QEMU start (or a guest reset) until the guest answers on its SSH port; past it the VM stays starting, watched on while QEMU runs (at least 1s).",
    DEFAULT_BOOT_TIMEOUT_MS),
  boot_timeout_tcg: seconds("The same under TCG, where a cloud image takes minutes: Debian 12 answered SSH after 78–134 s on a quiet 2-core machine, 142–247 s under load (at least 1s).",
    DEFAULT_BOOT_TIMEOUT_TCG_MS),
  stop_timeout: durationMs("From system_powerdown (ACPI power button) until QEMU has exited; then quit, then SIGKILL.", { def: DEFAULT_STOP_TIMEOUT_MS, min: 0 }),
  reboot_timeout: seconds("From ctrl-alt-delete until the guest resets (a clean reboot); then a hard system_reset (at least 1s).", DEFAULT_REBOOT_TIMEOUT_MS),
  launch_timeout: durationMs("Deadline for `qemu-system … -daemonize` to return, i.e. for QEMU to initialise.", { def: DEFAULT_LAUNCH_TIMEOUT_MS, min: 0 }),
  qmp_timeout: durationMs("Deadline for one QMP command.", { def: DEFAULT_QMP_TIMEOUT_MS, min: 0 }),
  kvm_probe_timeout: durationMs("accel auto: how long a probe kernel may take to print its banner under KVM before KVM is declared unusable.",
    { def: DEFAULT_KVM_PROBE_TIMEOUT_MS, min: 0 }),
  tool_timeout: durationMs("Deadline for one qemu-img or genisoimage run (conversions of big images take a while).", { def: DEFAULT_TOOL_TIMEOUT_MS, min: 0 }),
  max_request_body: sizeBytes("Largest request body the API accepts.", { def: DEFAULT_MAX_REQUEST_BODY_BYTES, min: 0 }),
  max_image_size: sizeBytes("Largest image an import may download or copy.", { def: DEFAULT_MAX_IMAGE_BYTES, min: 0 }),
  console_tail: sizeBytes("Tail of the serial console returned by GET /v1/vms/:name/console.", { def: DEFAULT_CONSOLE_TAIL_BYTES, min: 0 }),
  max_vms: count("Most VMs this cog holds, whatever their state.", DEFAULT_MAX_VMS, 1, 10_000),
  max_ssh_keys: count("Most SSH keys per VM.", DEFAULT_MAX_SSH_KEYS, 1, 1000),
  max_domains_per_vm: count("Most custom domains per VM (capsul vm create --domain, capsul vm domains add).", DEFAULT_MAX_DOMAINS_PER_VM, 0, 1000),
  quit_timeout: durationMs("After QMP quit (the stop deadline passed), how long before SIGKILL.", { def: DEFAULT_QUIT_TIMEOUT_MS, min: 0 }),
  crash_restarts: count("A VM whose QEMU dies unexpectedly is restarted at most this often per crash_window, then left in error (0 never restarts).",
    DEFAULT_CRASH_RESTARTS, 0, 100),
  crash_window: durationMs("The window crash_restarts counts in.", { def: DEFAULT_CRASH_WINDOW_MS, min: 0 }),
  import_dir: dir(`Local image sources (POST /v1/images source, kernel, initrd paths) must lie in this directory after resolving symlinks and .. (default <data_dir>/${DEFAULT_IMPORT_SUBDIR}, created 0700). Keep it writable only by the operator.`),
  import_allowed_cidrs: cidrs,
  import_max_redirects: count("Redirects an image download follows, each hop's address checked.", DEFAULT_IMPORT_MAX_REDIRECTS, 0, 20),
  download_idle_timeout: durationMs("An image download whose server sends nothing for this long is abandoned.", { def: DEFAULT_DOWNLOAD_IDLE_TIMEOUT_MS, min: 0 }),
  image_inspect_memory: sizeBytes("Address space `qemu-img info` may use on an imported qcow2 (prlimit --as; at least 16MiB).",
    { def: DEFAULT_IMAGE_INSPECT_MEMORY_BYTES, min: 0 }),
  image_inspect_cpu_time: durationMs("CPU time `qemu-img info` may use on an imported qcow2 (prlimit --cpu, whole seconds; at least 1s).",
    { def: DEFAULT_IMAGE_INSPECT_CPU_MS, min: 0 }),
  console_log_size: sizeBytes(`A VM's console.log is rotated to console.log.1 when it reaches this size (2 files kept; at least ${MIN_CONSOLE_LOG_BYTES} bytes).`,
    { def: DEFAULT_CONSOLE_LOG_MAX_BYTES, min: 0 }),
  pasta_binary: binary("passt's pasta, which connects each VM's private network namespace to the host.", "pasta"),
  systemd_scope: custom({
    description: "Each VM's QEMU and pasta in a systemd scope of its own (capsul.slice), so that a stop or restart of the cog's service leaves the VMs running: auto when started by systemd (INVOCATION_ID) and a service manager can create scopes, on always (a VM start fails when none can), off never. Default: auto.",
    default: "auto", anyOf: [{ enum: ["auto", "on", "off"] }, { type: "null" }],
  }, (v): ProvisionerConfig["systemdScope"] => {
    if (v == null) return "auto";
    if (v !== "auto" && v !== "on" && v !== "off") throw new ConfigError(`must be auto, on or off: ${JSON.stringify(v)}`);
    return v;
  }),
  backups: backupsSchema,
  accept_moves_from: listOf("Cogs that may move VMs to this one (`capsul vm move NAME --to THIS-COG` run on them), by cog name (default none: every move to this cog is refused).",
    custom({ description: "A cog name.", type: "string", pattern: COG_NAME_RE.source }, (n) => {
      if (typeof n !== "string" || !COG_NAME_RE.test(n)) throw new ConfigError(`not a cog name: ${JSON.stringify(n)}`);
      return n;
    }), { notList: "must be a list of cog names" }),
  max_archive_size: sizeBytes("Largest VM archive an import or a move may declare; a larger one is refused before a byte is kept (at least 64MiB).",
    { def: DEFAULT_MAX_ARCHIVE_BYTES, min: 0 }),
  move_answer_timeout: seconds("A move's source waits this long for the target cog's consent through the hub (at least 1s).", DEFAULT_MOVE_ANSWER_TIMEOUT_MS),
  move_verify_timeout: seconds("After the last byte, a move's source waits this long for the target to verify and recreate the VM (SHA-256 of a big disk; at least 1s).",
    DEFAULT_MOVE_VERIFY_TIMEOUT_MS),
  move_rate: sizeBytes("Bytes per second a move sends, so that it leaves the home uplink usable (0 = unlimited).", { def: 0, min: 0 }),
}, (o): ProvisionerConfig => {
  const dataDir = o.data_dir ?? DEFAULT_DATA_DIR;
  read(["data_dir"], () => checkDataDir(dataDir, ""));
  if (o.console_log_size < MIN_CONSOLE_LOG_BYTES) fail(["console_log_size"], `at least ${MIN_CONSOLE_LOG_BYTES} bytes`);
  if (o.image_inspect_memory < 16 * MIB) fail(["image_inspect_memory"], "at least 16MiB");
  if (o.max_archive_size < 64 * MIB) fail(["max_archive_size"], "at least 64MiB");
  if (o.image_inspect_cpu_time < 1000) fail(["image_inspect_cpu_time"], "at least 1s (prlimit counts whole CPU seconds)");
  return Object.freeze({
    listen: o.listen,
    dataDir,
    accel: o.accel,
    sizes: o.sizes,
    hostMemoryBytes: o.host_memory,
    memoryOvercommitRatio: o.memory_overcommit_ratio,
    vmMemoryOverheadBytes: o.vm_memory_overhead,
    qemuBinary: o.qemu_binary,
    qemuImgBinary: o.qemu_img_binary,
    genisoimageBinary: o.genisoimage_binary,
    bootTimeoutMs: o.boot_timeout,
    bootTimeoutTcgMs: o.boot_timeout_tcg,
    stopTimeoutMs: o.stop_timeout,
    rebootTimeoutMs: o.reboot_timeout,
    launchTimeoutMs: o.launch_timeout,
    qmpTimeoutMs: o.qmp_timeout,
    kvmProbeTimeoutMs: o.kvm_probe_timeout,
    toolTimeoutMs: o.tool_timeout,
    maxRequestBodyBytes: o.max_request_body,
    maxImageBytes: o.max_image_size,
    consoleTailBytes: o.console_tail,
    maxVms: o.max_vms,
    maxSshKeys: o.max_ssh_keys,
    maxDomainsPerVm: o.max_domains_per_vm,
    quitTimeoutMs: o.quit_timeout,
    crashRestarts: o.crash_restarts,
    crashWindowMs: o.crash_window,
    importDir: o.import_dir ?? path.join(dataDir, DEFAULT_IMPORT_SUBDIR),
    importAllowedCidrs: Object.freeze(o.import_allowed_cidrs) as string[],
    importMaxRedirects: o.import_max_redirects,
    downloadIdleTimeoutMs: o.download_idle_timeout,
    imageInspectMemoryBytes: o.image_inspect_memory,
    imageInspectCpuMs: o.image_inspect_cpu_time,
    consoleLogMaxBytes: o.console_log_size,
    pastaBinary: o.pasta_binary,
    systemdScope: o.systemd_scope,
    backups: resolveBackups(o.backups, dataDir),
    acceptMovesFrom: Object.freeze(o.accept_moves_from) as string[],
    maxArchiveBytes: o.max_archive_size,
    moveAnswerTimeoutMs: o.move_answer_timeout,
    moveVerifyTimeoutMs: o.move_verify_timeout,
    moveBytesPerSec: o.move_rate,
  });
}, { notMapping: "must be a mapping", jsonType: ["object", "null", "boolean"] });

/**
 * `cog.provisioner` of capsul.yaml → a frozen, fully defaulted ProvisionerConfig.
 * `raw` null/undefined means "all defaults". Relative paths resolve against baseDir
 * (the directory of capsul.yaml). Errors name the key path under `at`.
 */
export function parseProvisionerConfig(raw: unknown, at: string, baseDir: string): ProvisionerConfig {
  return parseSection(provisionerSchema, raw ?? {}, at, baseDir);
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
