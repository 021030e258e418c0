import type { Logger } from "../lib/log.js";
import { ProvisionerError } from "./errors.js";
import { processAlive } from "./qemu.js";
import type { QmpClient } from "./qmp.js";

/**
 * Stop and reboot, graceful first. A hard `system_reset` is pulling the plug
 * and pushing it back: the Debian 12 image's next boot then logged
 * "EXT4-fs (vda1): INFO: recovery required". So:
 * - reboot sends ctrl-alt-delete (QMP send-key). systemd traps it
 *   (/proc/sys/kernel/ctrl-alt-del = 0) and starts ctrl-alt-del.target, a link
 *   to reboot.target: a clean reboot, 13 s to the RESET event under TCG.
 *   A kernel whose init does not trap it (the busybox test image) restarts at
 *   once. A guest that does neither within reboot_timeout gets system_reset.
 * - stop presses the ACPI power button (system_powerdown); systemd-logind
 *   powers off (23 s under TCG). After stop_timeout: QMP quit, then SIGKILL.
 * `force` skips the guest's part: system_reset at once, or quit at once.
 */

/** While waiting for a QEMU process to exit. */
export const EXIT_POLL_INTERVAL_MS = 100;

/** ctrl-alt-delete as QMP send-key qcodes, pressed together and released. */
export const CTRL_ALT_DELETE = [
  { type: "qcode", data: "ctrl" }, { type: "qcode", data: "alt" }, { type: "qcode", data: "delete" },
];

export interface PowerOutcome {
  /** The guest did it itself (rebooted, powered off) before the deadline. */
  graceful: boolean;
  tookMs: number;
}

export const powerView = (o: PowerOutcome): { graceful: boolean; took_ms: number } => ({ graceful: o.graceful, took_ms: o.tookMs });

export async function waitExit(pid: number, timeoutMs: number): Promise<boolean> {
  const deadline = Date.now() + timeoutMs;
  while (processAlive(pid)) {
    if (Date.now() > deadline) return false;
    await new Promise((r) => setTimeout(r, EXIT_POLL_INTERVAL_MS));
  }
  return true;
}

/**
 * Reboots the guest and resolves once it has reset (QMP RESET: the firmware
 * runs again). The caller's RESET listener starts watching the new boot.
 */
export async function rebootGuest(
  qmp: QmpClient, o: { force: boolean; rebootTimeoutMs: number; qmpTimeoutMs: number }, log: Logger, vm: string,
): Promise<PowerOutcome> {
  const started = Date.now();
  const took = (): number => Date.now() - started;
  if (!o.force) {
    const reset = qmp.waitEvent("RESET", o.rebootTimeoutMs);
    await qmp.execute("send-key", { keys: CTRL_ALT_DELETE });
    if (await reset) return { graceful: true, tookMs: took() };
    if (qmp.isClosed) {
      throw new ProvisionerError("vm_gone", `VM ${vm}: QEMU exited while the guest was rebooting (it powered off instead?)`, 409);
    }
    log.warn("guest did not reboot on ctrl-alt-delete; resetting it", { vm, after_ms: o.rebootTimeoutMs });
  }
  const reset = qmp.waitEvent("RESET", o.qmpTimeoutMs);
  await qmp.execute("system_reset");
  await reset;
  return { graceful: false, tookMs: took() };
}

/**
 * Powers the VM off: system_powerdown and up to stopTimeoutMs for the guest
 * (unless force), then QMP quit and up to quitTimeoutMs, then SIGKILL.
 * Resolves once the QEMU process is gone.
 */
export async function powerOff(
  qmp: QmpClient, pid: number, o: { force: boolean; stopTimeoutMs: number; quitTimeoutMs: number }, log: Logger, vm: string,
): Promise<PowerOutcome> {
  const started = Date.now();
  let exited = false;
  if (!o.force) {
    try { await qmp.execute("system_powerdown"); } catch { /* QEMU may be going already */ }
    exited = await waitExit(pid, o.stopTimeoutMs);
    if (exited) return { graceful: true, tookMs: Date.now() - started };
    log.warn("guest ignored the power button; quitting QEMU", { vm, after_ms: o.stopTimeoutMs });
  }
  try { await qmp.execute("quit"); } catch { /* closed as it quits */ }
  exited = await waitExit(pid, o.quitTimeoutMs);
  if (!exited) {
    log.warn("QEMU ignored quit; killing it", { vm, pid });
    try { process.kill(pid, "SIGKILL"); } catch { /* gone */ }
    await waitExit(pid, o.quitTimeoutMs);
  }
  return { graceful: false, tookMs: Date.now() - started };
}
