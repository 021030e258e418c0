/**
 * How far the current boot of a VM has come, read from what the provisioner
 * sees anyway: the SSH banner (watchBoot in vms.ts) and the serial console.
 *
 * cloud-init logs each stage to the console (its units run with
 * StandardOutput=journal+console, and cloud images boot with console=ttyS0):
 *   cloud-init[259]: Cloud-init v. 22.4.2 running 'init-local' at … Up 42.74 seconds.
 *   cloud-init[472]: Cloud-init v. 22.4.2 finished at … Datasource DataSourceNoCloud …
 * The second line is its final_message (cc_final_message; the same words since
 * cloud-init 0.7). "running" comes first, from cloud-init-local.service,
 * which runs before sshd; so by the time SSH answers, a guest with cloud-init
 * has said so, and `vm create --wait` knows whether to wait for "finished".
 * Measured on the Debian 12 image under TCG (load ~14): init-local at 43 s,
 * SSH at ~150 s, finished at 208 s. A guest can print these lines itself;
 * that only fools the wait of its own owner.
 */

export type CloudInitState = "running" | "done";

export const CLOUD_INIT_RUNNING_RE = /Cloud-init v\. \S+ running '/;
export const CLOUD_INIT_FINISHED_RE = /Cloud-init v\. \S+ finished at /;
/** Printed by every Linux kernel first thing once its console is up (init/version.c linux_banner). */
export const LINUX_BANNER = "Linux version ";
/**
 * A console line longer than this is cut from the front while it grows: the
 * markers are ~150 characters, and a guest writing without newlines must not
 * grow our memory.
 */
export const BOOT_SCAN_MAX_LINE_CHARS = 4096;

export class BootProgress {
  /** When this boot began (QEMU started or the guest reset); null after re-adoption. */
  startedAt: number | null;
  sshAt: number | null = null;
  cloudInit: CloudInitState | null = null;
  cloudInitDoneAt: number | null = null;
  private partial = "";

  constructor(startedAt: number | null) { this.startedAt = startedAt; }

  /** A new boot (start, or RESET): nothing of the last one counts. */
  restart(now: number): void {
    this.startedAt = now;
    this.sshAt = null;
    this.cloudInit = null;
    this.cloudInitDoneAt = null;
    this.partial = "";
  }

  /** Console bytes as they arrive. Only complete lines are looked at. */
  feed(chunk: Buffer): void { this.feedText(chunk.toString("latin1")); }

  feedText(text: string): void {
    let data = this.partial + text;
    let nl: number;
    while ((nl = data.indexOf("\n")) >= 0) {
      this.line(data.slice(0, nl));
      data = data.slice(nl + 1);
    }
    this.partial = data.length > BOOT_SCAN_MAX_LINE_CHARS ? data.slice(-BOOT_SCAN_MAX_LINE_CHARS) : data;
  }

  private line(l: string): void {
    // Cheap test first: nearly every console line is not cloud-init's.
    if (!l.includes("Cloud-init v.")) return;
    // A login prompt may share the line ("web1 login: [ 157.37] cloud-init[437]: …").
    if (CLOUD_INIT_FINISHED_RE.test(l)) {
      this.cloudInit = "done";
      this.cloudInitDoneAt = Date.now();
    } else if (CLOUD_INIT_RUNNING_RE.test(l) && this.cloudInit !== "done") {
      this.cloudInit = "running";
    }
  }

  view(): { started_at: string | null; ssh_at: string | null; cloud_init: CloudInitState | null; cloud_init_done_at: string | null } {
    const iso = (ms: number | null): string | null => (ms === null ? null : new Date(ms).toISOString());
    return { started_at: iso(this.startedAt), ssh_at: iso(this.sshAt), cloud_init: this.cloudInit, cloud_init_done_at: iso(this.cloudInitDoneAt) };
  }
}

/**
 * The progress of a re-adopted VM's boot, from the end of its console log:
 * everything after the last kernel banner belongs to the current boot. No
 * banner in the tail (a long-running guest, a rotated log): nothing is known.
 */
export function progressFromConsole(tail: string): BootProgress {
  const p = new BootProgress(null);
  const at = tail.lastIndexOf(LINUX_BANNER);
  // cloud_init_done_at is then when it was read: the console has no wall-clock times.
  if (at >= 0) p.feedText(tail.slice(at));
  return p;
}
