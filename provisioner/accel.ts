import { spawn } from "node:child_process";
import fs from "node:fs";
import os from "node:os";
import type { ProvisionerConfig } from "../config/types.js";
import type { Logger } from "../lib/log.js";
import { LINUX_BANNER } from "./boot.js";
import type { ImageRecord } from "./db.js";
import { cpuModel, qemuOpt } from "./qemu.js";

/**
 * `accel: auto`: use KVM only when a Linux guest actually boots under it.
 *
 * /dev/kvm opening proves little. On the machines capsul is developed on it
 * opens, SeaBIOS and a real-mode boot sector run fine under KVM, the kernel's
 * decompressor even prints "Physical KASLR disabled", and then the kernel hangs
 * for good; with `-cpu host` QEMU aborts at once ("failed to set MSR 0x10a").
 * So the probe boots a real Linux kernel the way the VM would be run (same
 * machine, same CPU model) and waits for the kernel's banner on the serial
 * port, which a working KVM host prints in well under a second.
 *
 * What it boots, in this order: a kernel image from the catalogue, the host's
 * /boot/vmlinuz-$(uname -r), else the disk image of the VM being started
 * (read-only, BIOS → GRUB → kernel; a cloud image's kernel logs to ttyS0). A
 * container has no /boot kernel and a catalogue of cloud images has none
 * either: the VM's own disk is what is always there. One decision per
 * provisioner process, logged with its reason and shown by `vm show`.
 */

export type Accel = "kvm" | "tcg";

/** What a probe boots: a kernel (`-kernel`) or a disk image (BIOS boot). */
export type ProbeSource =
  | { kind: "kernel"; path: string; label: string }
  | { kind: "disk"; path: string; format: "qcow2" | "raw"; label: string };

export interface ProbeResult {
  /** The Linux banner appeared. */
  ok: boolean;
  /** From spawn to the banner, or to the end of the probe. */
  ms: number;
  /** For people: what was seen ("Linux banner after 0.8 s", "QEMU exited: …", "no Linux banner within 15 s …"). */
  detail: string;
}

export interface AccelDecision {
  accel: Accel;
  /** One line for the log and `vm show`. */
  reason: string;
  /** The probe that decided it; null when none ran (accel set in capsul.yaml, no usable /dev/kvm). */
  probe: (ProbeResult & { source: string }) | null;
}

/** Guest memory of a probe: the banner comes long before memory matters; GRUB and the initrd fit. */
export const PROBE_MEMORY_MIB = 256;
/** Last serial output and stderr kept for the probe's report. */
const PROBE_TAIL_BYTES = 2048;
/** Longest piece of guest or QEMU output quoted in a reason. */
const QUOTE_MAX_CHARS = 160;

function lastLine(text: string): string {
  // Serial output has ANSI colours and carriage returns; a reason is one plain line.
  const lines = text.replace(/\x1b\[[0-9;]*[A-Za-z]/g, "").split(/[\r\n]+/).map((l) => l.trim()).filter(Boolean);
  const l = lines[lines.length - 1] ?? "";
  return l.length > QUOTE_MAX_CHARS ? `${l.slice(0, QUOTE_MAX_CHARS)}…` : l;
}

/**
 * Boots `source` once under `accel` (kvm in production; tcg lets tests see a
 * probe succeed on any machine) with no network and no writable disk, and
 * resolves when the kernel banner appears on the serial port (ok), QEMU exits,
 * or `timeoutMs` passes. The QEMU is always killed before this resolves.
 */
export function runAccelProbe(qemu: string, accel: Accel, source: ProbeSource, timeoutMs: number): Promise<ProbeResult> {
  const args = [
    "-machine", `q35,accel=${accel}`, "-cpu", cpuModel(accel), "-m", String(PROBE_MEMORY_MIB),
    "-nodefaults", "-no-user-config", "-display", "none",
    // A triple fault ends QEMU instead of rebooting in a loop until the deadline.
    "-no-reboot",
    // The serial port on QEMU's stdout: no file to poll, nothing left behind.
    "-chardev", "stdio,id=con,signal=off", "-serial", "chardev:con",
  ];
  if (source.kind === "kernel") {
    args.push("-kernel", source.path, "-append", "console=ttyS0 panic=-1");
  } else {
    // readonly: the catalogue's image is immutable; the probe is killed long before the guest would write.
    args.push("-drive", `if=none,id=probe,file=${qemuOpt(source.path)},format=${source.format},readonly=on`, "-device", "virtio-blk-pci,drive=probe");
  }
  const started = Date.now();
  const child = spawn(qemu, args, { stdio: ["ignore", "pipe", "pipe"] });
  let serial = "";
  let stderr = "";
  return new Promise<ProbeResult>((resolve) => {
    let settled = false;
    const finish = (ok: boolean, detail: string): void => {
      if (settled) return;
      settled = true;
      clearTimeout(timer);
      const ms = Date.now() - started;
      const done = (): void => resolve({ ok, ms, detail });
      if (child.exitCode !== null || child.signalCode !== null) { done(); return; }
      child.once("exit", done);
      child.kill("SIGKILL");
    };
    const timer = setTimeout(() => {
      const seen = lastLine(serial);
      finish(false, `no Linux banner on the serial port within ${Math.round(timeoutMs / 1000)} s` +
        (seen ? ` (last output: ${JSON.stringify(seen)})` : " (no output at all)"));
    }, timeoutMs);
    child.stdout.setEncoding("latin1");
    child.stdout.on("data", (d: string) => {
      serial = (serial + d).slice(-PROBE_TAIL_BYTES);
      if (serial.includes(LINUX_BANNER)) finish(true, `Linux banner after ${((Date.now() - started) / 1000).toFixed(1)} s`);
    });
    child.stderr.setEncoding("utf8");
    child.stderr.on("data", (d: string) => { stderr = (stderr + d).slice(-PROBE_TAIL_BYTES); });
    child.once("error", (e) => finish(false, `cannot run ${qemu}: ${e.message}`));
    // "close", not "exit": the last chunk of stdout (the banner, perhaps) arrives before it.
    child.once("close", (code, signal) => {
      if (serial.includes(LINUX_BANNER)) { finish(true, `Linux banner after ${((Date.now() - started) / 1000).toFixed(1)} s`); return; }
      // QEMU's own "error: …" line says more than the assertion that follows it.
      const lines = stderr.split("\n").filter((l) => l.trim() && !/warning: host doesn't support/.test(l));
      const why = lastLine(lines.find((l) => /\berror\b/i.test(l)) ?? lines.join("\n"));
      finish(false, `QEMU exited (${signal ?? `code ${code}`}) before a Linux banner${why ? `: ${why}` : ""}`);
    });
  });
}

/** Where a probe can find a Linux kernel to boot, best first (see the file comment). */
export function probeSources(vmImage: ImageRecord, catalogue: ImageRecord[], hostKernel = `/boot/vmlinuz-${os.release()}`): ProbeSource[] {
  const out: ProbeSource[] = [];
  const kernelImage = vmImage.format === "kernel" ? vmImage : catalogue.find((i) => i.format === "kernel");
  if (kernelImage) out.push({ kind: "kernel", path: kernelImage.files.kernel!.path, label: `the kernel of image ${kernelImage.name}` });
  try {
    fs.accessSync(hostKernel, fs.constants.R_OK);
    out.push({ kind: "kernel", path: hostKernel, label: `the host kernel ${hostKernel}` });
  } catch { /* a container has none */ }
  if (vmImage.format === "qcow2" && vmImage.files.disk) {
    out.push({ kind: "disk", path: vmImage.files.disk.path, format: "qcow2", label: `the disk of image ${vmImage.name}` });
  }
  return out;
}

/** Can this process open /dev/kvm read-write? Necessary, not sufficient (see the file comment). */
export function kvmDevice(dev = "/dev/kvm"): { usable: true } | { usable: false; why: string } {
  try {
    fs.closeSync(fs.openSync(dev, "r+"));
    return { usable: true };
  } catch (e) {
    return { usable: false, why: (e as NodeJS.ErrnoException).code ?? (e as Error).message };
  }
}

/**
 * The accelerator for every VM of this provisioner process. `sources` come
 * from probeSources for the first VM started; the first source is probed.
 */
export async function decideAccel(cfg: ProvisionerConfig, sources: ProbeSource[], log: Logger, dev = "/dev/kvm"): Promise<AccelDecision> {
  const decided = (d: AccelDecision): AccelDecision => {
    log.info(`accel: using ${d.accel}`, { reason: d.reason, probe_ms: d.probe?.ms });
    return d;
  };
  if (cfg.accel !== "auto") return decided({ accel: cfg.accel, reason: `accel: ${cfg.accel} in capsul.yaml`, probe: null });
  const kvm = kvmDevice(dev);
  if (!kvm.usable) return decided({ accel: "tcg", reason: `accel auto: ${dev} cannot be opened (${kvm.why})`, probe: null });
  const source = sources[0];
  if (!source) {
    return decided({ accel: "tcg", reason: "accel auto: nothing to probe KVM with (no kernel and no disk image); set accel: kvm to force it", probe: null });
  }
  log.info("accel auto: probing KVM", { with: source.label, timeout_ms: cfg.kvmProbeTimeoutMs });
  const r = await runAccelProbe(cfg.qemuBinary, "kvm", source, cfg.kvmProbeTimeoutMs);
  const accel: Accel = r.ok ? "kvm" : "tcg";
  return decided({
    accel,
    reason: `accel auto: KVM probe with ${source.label}: ${r.detail}`,
    probe: { ...r, source: source.label },
  });
}
