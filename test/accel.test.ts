/**
 * accel auto (provisioner/accel.ts): the probe boots a real kernel and looks
 * for its banner. Every outcome is produced for real here: a banner (the test
 * kernel under TCG, so it works on any machine), a guest that runs but never
 * prints one (a boot sector under TCG), QEMU failing, no QEMU at all; and the
 * KVM probe itself on this machine, which must run, not be skipped.
 */
import fs from "node:fs";
import path from "node:path";
import t from "tap";
import { createLogger } from "../lib/log.js";
import { decideAccel, kvmDevice, probeSources, runAccelProbe, type ProbeSource } from "../provisioner/accel.js";
import type { ImageRecord } from "../provisioner/db.js";
import { testImage } from "./helpers/testimage.js";
import { tempDataDir, testConfig } from "./helpers/vm.js";

t.setTimeout(10 * 60_000);

/** A TCG boot of the test kernel printed its banner after 1–17 s here (load 1–15). */
const BANNER_DEADLINE_MS = 120_000;

const dir = tempDataDir();
t.teardown(() => fs.rmSync(dir, { recursive: true, force: true }));
const img = await testImage();
const kernel: ProbeSource = { kind: "kernel", path: img.kernel, label: "the test kernel" };

/**
 * A disk whose boot sector prints a line on COM1 and halts: a guest that runs
 * (SeaBIOS loads and executes it) but is no Linux. Hand-assembled 16-bit code:
 *   mov dx,0x3f8 / mov si,msg / l: lodsb / test al,al / jz h / out dx,al / jmp l / h: cli / hlt / jmp h
 */
function bootSectorDisk(file: string, text: string): string {
  const code = Buffer.from([0xba, 0xf8, 0x03, 0xbe, 0x00, 0x00, 0xac, 0x84, 0xc0, 0x74, 0x03, 0xee, 0xeb, 0xf8, 0xfa, 0xf4, 0xeb, 0xfc]);
  code.writeUInt16LE(0x7c00 + code.length, 4); // msg right after the code
  const sector = Buffer.alloc(512);
  code.copy(sector);
  sector.write(`${text}\r\n\0`, code.length, "latin1");
  sector[510] = 0x55;
  sector[511] = 0xaa;
  // SeaBIOS wants more than one sector to call it a disk.
  const disk = Buffer.alloc(1024 * 1024);
  sector.copy(disk);
  fs.writeFileSync(file, disk);
  return file;
}

t.test("a kernel that prints its banner: ok", async (t) => {
  const r = await runAccelProbe("qemu-system-x86_64", "tcg", kernel, BANNER_DEADLINE_MS);
  t.equal(r.ok, true, r.detail);
  t.match(r.detail, /^Linux banner after \d+\.\d s$/);
});

t.test("a guest that runs but prints no banner: not ok at the deadline, with what it printed", async (t) => {
  const disk = bootSectorDisk(path.join(dir, "bootsector.raw"), "not-linux-here");
  const r = await runAccelProbe("qemu-system-x86_64", "tcg", { kind: "disk", path: disk, format: "raw", label: "a boot sector" }, 5000);
  t.equal(r.ok, false);
  t.ok(r.ms >= 5000, `waited for the deadline (${r.ms} ms)`);
  t.match(r.detail, /^no Linux banner on the serial port within 5 s \(last output: "not-linux-here"\)$/, "the boot sector ran and is quoted");
});

t.test("QEMU that exits, or is missing: not ok, says why", async (t) => {
  const gone = await runAccelProbe("/bin/false", "kvm", kernel, 5000);
  t.equal(gone.ok, false);
  t.equal(gone.detail, "QEMU exited (code 1) before a Linux banner");
  const missing = await runAccelProbe(path.join(dir, "no-qemu"), "kvm", kernel, 5000);
  t.equal(missing.ok, false);
  t.match(missing.detail, /^cannot run .*no-qemu: .*ENOENT/);
  // A QEMU that refuses the machine: its error line is the reason.
  const bad = await runAccelProbe("qemu-system-x86_64", "tcg", { kind: "disk", path: path.join(dir, "absent.qcow2"), format: "qcow2", label: "x" }, 5000);
  t.equal(bad.ok, false);
  t.match(bad.detail, /^QEMU exited \(code 1\) before a Linux banner: .*absent\.qcow2/);
});

t.test("what the probe boots: a kernel when there is one, else the VM's own disk", async (t) => {
  const rec = (name: string, format: "qcow2" | "kernel"): ImageRecord => ({
    name, format, cmdline: null, sshUser: "root", createdAt: "2026-01-01T00:00:00.000Z",
    files: format === "kernel"
      ? { kernel: { path: `/imgs/${name}/kernel`, sha256: "0", bytes: 1 }, initrd: { path: `/imgs/${name}/initrd`, sha256: "0", bytes: 1 } }
      : { disk: { path: `/imgs/${name}/disk.qcow2`, sha256: "0", bytes: 1 } },
  });
  const debian = rec("debian", "qcow2");
  const tiny = rec("tiny", "kernel");
  const noHostKernel = path.join(dir, "vmlinuz-none");
  t.same(probeSources(debian, [debian], noHostKernel), [
    { kind: "disk", path: "/imgs/debian/disk.qcow2", format: "qcow2", label: "the disk of image debian" },
  ], "a catalogue of cloud images in a container: the VM's disk");
  t.same(probeSources(debian, [debian, tiny], noHostKernel).map((s) => s.label), ["the kernel of image tiny", "the disk of image debian"]);
  t.same(probeSources(tiny, [debian, tiny], noHostKernel).map((s) => s.label), ["the kernel of image tiny"]);
  const hostKernel = path.join(dir, "vmlinuz-host");
  fs.writeFileSync(hostKernel, "x");
  t.same(probeSources(debian, [debian], hostKernel).map((s) => s.label), [`the host kernel ${hostKernel}`, "the disk of image debian"]);
});

t.test("decideAccel: set in capsul.yaml, no /dev/kvm, and the real probe on this machine", async (t) => {
  const logs: string[] = [];
  const log = createLogger({ level: "info", write: (l) => logs.push(l) });
  const set = await decideAccel(testConfig(dir, { accel: "tcg" }), [kernel], log);
  t.same(set, { accel: "tcg", reason: "accel: tcg in capsul.yaml", probe: null });

  const noDev = await decideAccel(testConfig(dir, { accel: "auto" }), [kernel], log, path.join(dir, "no-kvm"));
  t.equal(noDev.accel, "tcg");
  t.match(noDev.reason, /^accel auto: .*no-kvm cannot be opened \(ENOENT\)$/);
  t.equal(noDev.probe, null);
  t.ok(logs.some((l) => /accel: using tcg/.test(l) && /cannot be opened/.test(l)), "the choice and why are logged");

  const dev = kvmDevice();
  if (!dev.usable) {
    t.comment(`/dev/kvm is not usable here (${dev.why}): the KVM probe cannot run on this machine`);
    return;
  }
  // /dev/kvm opens here: the probe must run, and decide by what the guest did.
  const d = await decideAccel(testConfig(dir, { accel: "auto", kvmProbeTimeoutMs: 15_000 }), [kernel], log);
  t.not(d.probe, null, "the probe ran");
  t.equal(d.probe!.source, "the test kernel");
  t.equal(d.accel, d.probe!.ok ? "kvm" : "tcg", "the probe's outcome decides");
  t.match(d.reason, /^accel auto: KVM probe with the test kernel: /);
  t.ok(logs.some((l) => /accel auto: probing KVM/.test(l)), "logged before it ran");
  t.comment(`on this machine: ${d.accel} (${d.reason}, ${d.probe!.ms} ms)`);
});
