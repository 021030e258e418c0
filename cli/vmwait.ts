/**
 * `--wait` of `capsul vm create|start|reboot`: polls the VM through the
 * provisioner API until it is ready, showing its state and the time elapsed.
 */
import { RuntimeError } from "../lib/errors.js";

/** Between two looks at the VM while waiting. */
const WAIT_POLL_MS = 1000;

export function clock(ms: number): string {
  const s = Math.max(0, Math.round(ms / 1000));
  return `${Math.floor(s / 60)}:${String(s % 60).padStart(2, "0")}`;
}

/**
 * What `--wait` waits for. ready: SSH answers and, if cloud-init showed up on
 * the console during this boot, it has finished (provisioner/boot.ts); a VM
 * whose image has no cloud-init (or logs it elsewhere) is ready at SSH.
 * ssh: SSH answers.
 */
export const WAIT_UNTIL = ["ready", "ssh"] as const;
export type WaitUntil = (typeof WAIT_UNTIL)[number];

function isReady(vm: any, until: WaitUntil): boolean {
  return vm.state === "running" && (until === "ssh" || vm.boot?.cloud_init !== "running");
}

function phase(vm: any): string {
  if (vm.state !== "running") return vm.state;
  return vm.boot?.cloud_init === "running" ? "running, cloud-init running" : "running";
}

/**
 * Progress while waiting, on stderr (stdout stays the one result): a status
 * line rewritten in place on a terminal; otherwise (or with --json) a JSON line
 * whenever the state changes.
 */
class WaitProgress {
  private last = "";
  private readonly live: boolean;
  constructor(private readonly name: string, json: boolean) { this.live = Boolean(process.stderr.isTTY) && !json; }

  update(vm: any, elapsedMs: number): void {
    if (this.live) {
      const msg = vm.message ? ` (${vm.message})` : "";
      process.stderr.write(`\r\x1b[K${this.name}: ${phase(vm)}, ${clock(elapsedMs)} elapsed${msg}`);
      return;
    }
    const key = `${vm.state}|${vm.boot?.cloud_init ?? ""}|${vm.message ?? ""}`;
    if (key === this.last) return;
    this.last = key;
    process.stderr.write(JSON.stringify({
      vm: this.name, state: vm.state, cloud_init: vm.boot?.cloud_init ?? null, message: vm.message ?? null, elapsed_ms: elapsedMs,
    }) + "\n");
  }

  end(): void { if (this.live) process.stderr.write("\n"); }
}

export async function waitReady(
  getVm: (name: string) => Promise<any>, name: string, o: { until: WaitUntil; timeoutMs: number; json: boolean },
): Promise<{ vm: any; elapsedMs: number }> {
  const started = Date.now();
  const progress = new WaitProgress(name, o.json);
  try {
    for (;;) {
      const vm = await getVm(name);
      const elapsedMs = Date.now() - started;
      progress.update(vm, elapsedMs);
      if (isReady(vm, o.until)) return { vm, elapsedMs };
      if (vm.state === "error") throw new RuntimeError(`VM ${name} failed: ${vm.message}`);
      if (vm.state === "stopped" || vm.state === "deleting") throw new RuntimeError(`VM ${name} is ${vm.state}${vm.message ? `: ${vm.message}` : ""}`);
      if (elapsedMs > o.timeoutMs) {
        throw new RuntimeError(`VM ${name} not ${o.until} after ${clock(elapsedMs)} (${phase(vm)}${vm.message ? `; ${vm.message}` : ""}); ` +
          `it may still be booting: capsul vm show ${name}`);
      }
      await new Promise((r) => setTimeout(r, WAIT_POLL_MS));
    }
  } finally {
    progress.end();
  }
}

export function readyLine(name: string, vm: any, elapsedMs: number): string {
  const b = vm.boot;
  const cloud = b?.cloud_init === "done" ? ", cloud-init done" : "";
  return `${name}: ${vm.state}${cloud} after ${clock(elapsedMs)} of waiting`;
}
