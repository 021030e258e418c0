import t from "tap";
import { ConfigError } from "../lib/errors.js";
import { DEFAULT_SIZES, DEFAULT_VM_MEMORY_OVERHEAD_BYTES, parseProvisionerConfig } from "../provisioner/config.js";
import { buildQemuArgs, qemuOpt } from "../provisioner/qemu.js";
import { seedFiles } from "../provisioner/seed.js";
import { parseSshKey } from "../provisioner/sshkeys.js";

const MIB = 1024 * 1024;

t.test("defaults", async (t) => {
  const c = parseProvisionerConfig(undefined, "cog.provisioner", "/etc/capsul");
  t.same(c.listen, { host: "127.0.0.1", port: 7480 });
  t.equal(c.dataDir, "/var/lib/capsul/provisioner");
  t.equal(c.accel, "auto");
  t.equal(c.memoryOvercommitRatio, 1);
  t.equal(c.bootTimeoutMs, 180_000);
  t.equal(c.bootTimeoutTcgMs, 600_000, "TCG boots get longer before they are called slow");
  t.equal(c.stopTimeoutMs, 60_000);
  t.equal(c.rebootTimeoutMs, 120_000);
  t.equal(c.quitTimeoutMs, 5000);
  t.equal(c.crashRestarts, 3);
  t.equal(c.crashWindowMs, 600_000);
  t.same(c.sizes["f1-s"], DEFAULT_SIZES["f1-s"]);
  t.equal(c.importDir, "/var/lib/capsul/provisioner/import", "import dir inside the data dir");
  t.same(c.importAllowedCidrs, [], "no exceptions: private targets refused");
  t.equal(c.importMaxRedirects, 5);
  t.equal(c.downloadIdleTimeoutMs, 60_000);
  t.equal(c.imageInspectMemoryBytes, 1024 * MIB);
  t.equal(c.imageInspectCpuMs, 30_000);
  t.equal(c.consoleLogMaxBytes, MIB);
  t.equal(c.pastaBinary, "pasta");
  t.equal(c.systemdScope, "auto");
  t.equal(c.sizes["f1-xxx"]!.memoryBytes, 16 * 1024 * MIB);
  t.ok(Object.isFrozen(c));
});

t.test("values and overrides", async (t) => {
  const c = parseProvisionerConfig({
    listen: "[::1]:9000", data_dir: "state", accel: "tcg", memory_overcommit_ratio: 1.5, boot_timeout: "2m",
    boot_timeout_tcg: "20m", reboot_timeout: "45s",
    sizes: { "f1-s": { memory: "256MiB" }, tiny: { vcpus: 1, memory: "128MiB", disk: "1GiB", disk_iops: 100 } },
    qemu_binary: "bin/qemu", host_memory: "8GiB", crash_restarts: 0, crash_window: "1h", quit_timeout: "2s",
    vm_memory_overhead: "48MiB", import_dir: "images-in", import_allowed_cidrs: ["192.168.1.0/24", "fd00::/8"],
    import_max_redirects: 0, download_idle_timeout: "2m", image_inspect_memory: "512MiB", image_inspect_cpu_time: "5s",
    console_log_size: "256KiB", pasta_binary: "/opt/passt/pasta",
    accept_moves_from: ["home1", "old-box"], max_archive_size: "100GiB", move_answer_timeout: "2m", move_verify_timeout: "1h", move_rate: "10MiB", systemd_scope: "off",
  }, "cog.provisioner", "/etc/capsul");
  t.equal(c.systemdScope, "off");
  t.same(c.acceptMovesFrom, ["home1", "old-box"]);
  t.equal(c.maxArchiveBytes, 100 * 1024 * MIB);
  t.equal(c.moveAnswerTimeoutMs, 120_000);
  t.equal(c.moveVerifyTimeoutMs, 3_600_000);
  t.equal(c.moveBytesPerSec, 10 * MIB);
  t.equal(c.importDir, "/etc/capsul/images-in", "relative to the config file");
  t.same(c.importAllowedCidrs, ["192.168.1.0/24", "fd00::/8"]);
  t.equal(c.importMaxRedirects, 0);
  t.equal(c.downloadIdleTimeoutMs, 120_000);
  t.equal(c.imageInspectMemoryBytes, 512 * MIB);
  t.equal(c.imageInspectCpuMs, 5000);
  t.equal(c.consoleLogMaxBytes, 256 * 1024);
  t.equal(c.pastaBinary, "/opt/passt/pasta");
  t.equal(parseProvisionerConfig({ data_dir: "/srv/capsul" }, "cog.provisioner", "/etc").importDir, "/srv/capsul/import", "follows data_dir");
  t.equal(c.vmMemoryOverheadBytes, 48 * MIB);
  t.equal(parseProvisionerConfig({}, "cog.provisioner", "/etc/capsul").vmMemoryOverheadBytes, DEFAULT_VM_MEMORY_OVERHEAD_BYTES, "default");
  t.equal(DEFAULT_VM_MEMORY_OVERHEAD_BYTES, 128 * MIB);
  t.equal(c.crashRestarts, 0, "0 = never restart");
  t.equal(c.crashWindowMs, 3_600_000);
  t.equal(c.quitTimeoutMs, 2000);
  t.same(c.listen, { host: "::1", port: 9000 });
  t.equal(c.dataDir, "/etc/capsul/state", "relative to the config file");
  t.equal(c.sizes["f1-s"]!.memoryBytes, 256 * MIB);
  t.equal(c.sizes["f1-s"]!.diskBytes, DEFAULT_SIZES["f1-s"]!.diskBytes, "unnamed fields keep the default");
  t.equal(c.sizes.tiny!.diskIopsPerSec, 100);
  t.equal(c.bootTimeoutMs, 120_000);
  t.equal(c.bootTimeoutTcgMs, 20 * 60_000);
  t.equal(c.rebootTimeoutMs, 45_000);
  t.equal(c.qemuBinary, "/etc/capsul/bin/qemu");
  t.equal(c.hostMemoryBytes, 8 * 1024 * MIB);
});

t.test("errors name the key path", async (t) => {
  const bad: Array<[unknown, RegExp]> = [
    [{ lisen: "x" }, /^cog\.provisioner\.lisen: unknown key/],
    [{ vm_memory_overhead: "lots" }, /^cog\.provisioner\.vm_memory_overhead: /],
    [{ listen: "nope" }, /^cog\.provisioner\.listen: /],
    [{ accel: "xen" }, /^cog\.provisioner\.accel: must be auto, kvm or tcg/],
    [{ systemd_scope: true }, /^cog\.provisioner\.systemd_scope: must be auto, on or off: true/],
    [{ systemd_scope: "yes" }, /^cog\.provisioner\.systemd_scope: must be auto, on or off: "yes"/],
    [{ memory_overcommit_ratio: 0 }, /^cog\.provisioner\.memory_overcommit_ratio: /],
    [{ boot_timeout: "soon" }, /^cog\.provisioner\.boot_timeout: not a duration/],
    [{ boot_timeout: "0s" }, /^cog\.provisioner\.boot_timeout: at least 1s/],
    [{ boot_timeout_tcg: "500ms" }, /^cog\.provisioner\.boot_timeout_tcg: at least 1s/],
    [{ boot_timeout_tcg: "later" }, /^cog\.provisioner\.boot_timeout_tcg: not a duration/],
    [{ reboot_timeout: 0 }, /^cog\.provisioner\.reboot_timeout: at least 1s/],
    [{ reboot_timeout: "-5s" }, /^cog\.provisioner\.reboot_timeout: not a duration/],
    [{ sizes: { "F1": { vcpus: 1 } } }, /^cog\.provisioner\.sizes\.F1: not a size name/],
    [{ sizes: { new1: { vcpus: 1 } } }, /^cog\.provisioner\.sizes\.new1\.memory: required/],
    [{ sizes: { "f1-s": { ram: 1 } } }, /^cog\.provisioner\.sizes\.f1-s\.ram: unknown key/],
    [{ sizes: { "f1-s": { vcpus: 0 } } }, /^cog\.provisioner\.sizes\.f1-s\.vcpus: /],
    [{ data_dir: "/" + "x".repeat(80) }, /^cog\.provisioner\.data_dir: longer than 60/],
    [{ data_dir: "/tmp/a,b" }, /^cog\.provisioner\.data_dir: must not contain commas/],
    [{ qemu_binary: "-evil" }, /^cog\.provisioner\.qemu_binary: /],
    [{ max_vms: 1.5 }, /^cog\.provisioner\.max_vms: /],
    [{ crash_restarts: -1 }, /^cog\.provisioner\.crash_restarts: /],
    [{ max_domains_per_vm: -1 }, /^cog\.provisioner\.max_domains_per_vm: /],
    [{ max_domains_per_vm: "many" }, /^cog\.provisioner\.max_domains_per_vm: /],
    [{ quit_timeout: "later" }, /^cog\.provisioner\.quit_timeout: not a duration/],
    [{ import_dir: "" }, /^cog\.provisioner\.import_dir: must be a path/],
    [{ import_dir: 7 }, /^cog\.provisioner\.import_dir: must be a path/],
    [{ import_allowed_cidrs: "127.0.0.0/8" }, /^cog\.provisioner\.import_allowed_cidrs: must be a list/],
    [{ import_allowed_cidrs: ["10.0.0.0/8", "lan"] }, /^cog\.provisioner\.import_allowed_cidrs\[1\]: not an IP address or CIDR block/],
    [{ import_allowed_cidrs: ["10.0.0.0/40"] }, /^cog\.provisioner\.import_allowed_cidrs\[0\]: prefix longer than 32/],
    [{ import_max_redirects: -1 }, /^cog\.provisioner\.import_max_redirects: /],
    [{ import_max_redirects: 21 }, /^cog\.provisioner\.import_max_redirects: /],
    [{ download_idle_timeout: "whenever" }, /^cog\.provisioner\.download_idle_timeout: not a duration/],
    [{ image_inspect_memory: "1MiB" }, /^cog\.provisioner\.image_inspect_memory: at least 16MiB/],
    [{ image_inspect_cpu_time: "500ms" }, /^cog\.provisioner\.image_inspect_cpu_time: at least 1s/],
    [{ console_log_size: "1KiB" }, /^cog\.provisioner\.console_log_size: at least 4096 bytes/],
    [{ console_log_size: "big" }, /^cog\.provisioner\.console_log_size: /],
    [{ pasta_binary: "-x" }, /^cog\.provisioner\.pasta_binary: /],
    [{ accept_moves_from: "home1" }, /^cog\.provisioner\.accept_moves_from: must be a list of cog names/],
    [{ accept_moves_from: ["home1", "Home 2"] }, /^cog\.provisioner\.accept_moves_from\[1\]: not a cog name: "Home 2"/],
    [{ max_archive_size: "1MiB" }, /^cog\.provisioner\.max_archive_size: at least 64MiB/],
    [{ move_answer_timeout: "10ms" }, /^cog\.provisioner\.move_answer_timeout: at least 1s/],
    [{ move_verify_timeout: "soon" }, /^cog\.provisioner\.move_verify_timeout: /],
    [{ move_rate: "fast" }, /^cog\.provisioner\.move_rate: /],
    ["yes", /^cog\.provisioner: must be a mapping/],
  ];
  t.ok(bad.length > 0);
  for (const [raw, re] of bad) {
    let err: unknown;
    try { parseProvisionerConfig(raw, "cog.provisioner", "/etc/capsul"); } catch (e) { err = e; }
    t.ok(err instanceof ConfigError, `${JSON.stringify(raw)} is a ConfigError`);
    t.match((err as Error | undefined)?.message, re);
  }
});

t.test("argv and seed cannot be injected into", async (t) => {
  t.equal(qemuOpt("/a,b"), "/a,,b");
  t.throws(() => qemuOpt("a\nb"));
  const args = buildQemuArgs({
    name: "web1", uuid: "u", runDir: "/d/vms/web1", accel: "tcg", size: DEFAULT_SIZES["f1-s"]!,
    image: { name: "i", format: "kernel", files: { kernel: { path: "/k", sha256: "", bytes: 0 }, initrd: { path: "/i", sha256: "", bytes: 0 } }, cmdline: "console=ttyS0 x=1", sshUser: "root", createdAt: "" },
    ports: { ssh: 1, http: 2, https: 3 },
  });
  t.ok(args.includes("-daemonize"));
  t.equal(args[args.indexOf("-append") + 1], "console=ttyS0 x=1", "cmdline is one argv element");
  t.match(args.find((a) => a.startsWith("if=none,id=disk0"))!, /discard=unmap,detect-zeroes=unmap,throttling\.iops-total=1000,throttling\.bps-total=52428800/);
  // The forwards listen inside the VM's own network namespace (guestnet.ts); pasta brings the host's loopback ports there.
  t.match(args.find((a) => a.startsWith("user,"))!, /^user,id=net0,hostfwd=tcp::1-:22,hostfwd=tcp::2-:80,hostfwd=tcp::3-:443$/);
  t.ok(args.includes("-S"), "starts paused until the console is connected");
  t.equal(args[args.indexOf("-serial") + 1], "chardev:console");
  t.match(args.find((a) => a.startsWith("socket,id=console,"))!, /^socket,id=console,path=\/d\/vms\/web1\/con\.sock,server=on,wait=off$/, "console on a socket, not a file QEMU grows");
  t.notOk(args.some((a) => a.startsWith("file,id=console")));
  const key = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIJC7WuZ6ySQTtcSr5i+g+rMLC/YgTaO1ZUzcjsHBY4dQ me@host";
  t.equal(parseSshKey(`  ${key}\n`, "k"), key);
  const { userData, metaData } = seedFiles({ name: "web1", uuid: "u1", sshKeys: [key], sshUser: "root" });
  t.equal(metaData, "instance-id: u1\nlocal-hostname: web1\n");
  t.match(userData, /^#cloud-config\nhostname: web1\n/);
  t.match(userData, `  - "${key}"\n`);
});

t.test("capsul.yaml.example sets and documents every cog.provisioner key", async (t) => {
  const { parse } = await import("yaml");
  const fs = await import("node:fs");
  const path = await import("node:path");
  const { fileURLToPath } = await import("node:url");
  const file = path.join(path.dirname(fileURLToPath(import.meta.url)), "..", "capsul.yaml.example");
  const p = (parse(fs.readFileSync(file, "utf8")) as { cog: { provisioner: Record<string, unknown> } }).cog.provisioner;
  const keys = ["listen", "data_dir", "accel", "sizes", "host_memory", "memory_overcommit_ratio", "vm_memory_overhead", "qemu_binary",
    "qemu_img_binary", "genisoimage_binary", "boot_timeout", "boot_timeout_tcg", "stop_timeout", "reboot_timeout", "launch_timeout", "qmp_timeout", "kvm_probe_timeout",
    "tool_timeout", "max_request_body", "max_image_size", "console_tail", "max_vms", "max_ssh_keys", "max_domains_per_vm", "quit_timeout", "crash_restarts",
    "crash_window", "import_dir", "import_allowed_cidrs", "import_max_redirects", "download_idle_timeout", "image_inspect_memory",
    "image_inspect_cpu_time", "console_log_size", "pasta_binary", "backups", "accept_moves_from", "max_archive_size", "move_answer_timeout",
    "move_verify_timeout", "move_rate", "systemd_scope"];
  for (const k of keys) t.not(p[k], undefined, `example sets cog.provisioner.${k}`);
  t.same(Object.keys(p).filter((k) => !keys.includes(k)), [], "and nothing this list does not know");
  const c = parseProvisionerConfig(p, "cog.provisioner", path.dirname(file));
  t.equal(c.consoleLogMaxBytes, MIB, "the example's values are the defaults");
  t.same(c.importAllowedCidrs, []);
});
