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
  t.equal(c.quitTimeoutMs, 5000);
  t.equal(c.crashRestarts, 3);
  t.equal(c.crashWindowMs, 600_000);
  t.same(c.sizes["f1-s"], DEFAULT_SIZES["f1-s"]);
  t.equal(c.sizes["f1-xxx"]!.memoryBytes, 16 * 1024 * MIB);
  t.ok(Object.isFrozen(c));
});

t.test("values and overrides", async (t) => {
  const c = parseProvisionerConfig({
    listen: "[::1]:9000", data_dir: "state", accel: "tcg", memory_overcommit_ratio: 1.5, boot_timeout: "2m",
    sizes: { "f1-s": { memory: "256MiB" }, tiny: { vcpus: 1, memory: "128MiB", disk: "1GiB", disk_iops: 100 } },
    qemu_binary: "bin/qemu", host_memory: "8GiB", crash_restarts: 0, crash_window: "1h", quit_timeout: "2s",
    vm_memory_overhead: "48MiB",
  }, "cog.provisioner", "/etc/capsul");
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
  t.equal(c.qemuBinary, "/etc/capsul/bin/qemu");
  t.equal(c.hostMemoryBytes, 8 * 1024 * MIB);
});

t.test("errors name the key path", async (t) => {
  const bad: Array<[unknown, RegExp]> = [
    [{ lisen: "x" }, /^cog\.provisioner\.lisen: unknown key/],
    [{ vm_memory_overhead: "lots" }, /^cog\.provisioner\.vm_memory_overhead: /],
    [{ listen: "nope" }, /^cog\.provisioner\.listen: /],
    [{ accel: "xen" }, /^cog\.provisioner\.accel: must be auto, kvm or tcg/],
    [{ memory_overcommit_ratio: 0 }, /^cog\.provisioner\.memory_overcommit_ratio: /],
    [{ boot_timeout: "soon" }, /^cog\.provisioner\.boot_timeout: not a duration/],
    [{ sizes: { "F1": { vcpus: 1 } } }, /^cog\.provisioner\.sizes\.F1: not a size name/],
    [{ sizes: { new1: { vcpus: 1 } } }, /^cog\.provisioner\.sizes\.new1\.memory: required/],
    [{ sizes: { "f1-s": { ram: 1 } } }, /^cog\.provisioner\.sizes\.f1-s\.ram: unknown key/],
    [{ sizes: { "f1-s": { vcpus: 0 } } }, /^cog\.provisioner\.sizes\.f1-s\.vcpus: /],
    [{ data_dir: "/" + "x".repeat(80) }, /^cog\.provisioner\.data_dir: longer than 60/],
    [{ data_dir: "/tmp/a,b" }, /^cog\.provisioner\.data_dir: must not contain commas/],
    [{ qemu_binary: "-evil" }, /^cog\.provisioner\.qemu_binary: /],
    [{ max_vms: 1.5 }, /^cog\.provisioner\.max_vms: /],
    [{ crash_restarts: -1 }, /^cog\.provisioner\.crash_restarts: /],
    [{ quit_timeout: "later" }, /^cog\.provisioner\.quit_timeout: not a duration/],
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
  t.match(args.find((a) => a.startsWith("user,"))!, /hostfwd=tcp:127\.0\.0\.1:1-:22,hostfwd=tcp:127\.0\.0\.1:2-:80,hostfwd=tcp:127\.0\.0\.1:3-:443/);
  const key = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIJC7WuZ6ySQTtcSr5i+g+rMLC/YgTaO1ZUzcjsHBY4dQ me@host";
  t.equal(parseSshKey(`  ${key}\n`, "k"), key);
  const { userData, metaData } = seedFiles({ name: "web1", uuid: "u1", sshKeys: [key], sshUser: "root" });
  t.equal(metaData, "instance-id: u1\nlocal-hostname: web1\n");
  t.match(userData, /^#cloud-config\nhostname: web1\n/);
  t.match(userData, `  - "${key}"\n`);
});
