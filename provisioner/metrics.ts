import type { Registry } from "prom-client";
import { MetricFamilies } from "../lib/metrics.js";
import type { Store, VmState } from "./db.js";
import { cpuSeconds, DISK_DRIVE_ID, rssBytes } from "./qemu.js";
import type { VmManager } from "./vms.js";

const STATES: VmState[] = ["creating", "starting", "running", "rebooting", "stopping", "stopped", "error", "deleting"];

interface VmSample { vm: string; cpu?: number; rss?: number; rd?: number; wr?: number }

/**
 * Per-VM state, vCPU time (sum of the vCPU threads' utime+stime, thread ids from QMP
 * query-cpus-fast), QEMU RSS, and disk bytes read/written (QMP query-blockstats), as
 * families on the cog's registry (one registry per process, lib/metrics.ts). QEMU is asked
 * once per scrape: every family's collect() starts in the same tick and shares one
 * sampling. Returns the function that takes the families off the registry.
 */
export function registerVmMetrics(registry: Registry, store: Store, vms: VmManager): () => void {
  const f = new MetricFamilies(registry);
  let inflight: Promise<VmSample[]> | null = null;
  const sample = (): Promise<VmSample[]> => {
    inflight ??= sampleVms(store, vms).finally(() => { inflight = null; });
    return inflight;
  };
  f.gauge("capsul_vm_state", "1 for the state the VM is in.", ["vm", "state"], (emit) => {
    for (const v of store.listVms()) for (const s of STATES) emit({ vm: v.name, state: s }, v.state === s ? 1 : 0);
  });
  const perVm = (name: string, help: string, pick: (s: VmSample) => number | undefined, counter: boolean): void => {
    const fill = async (emit: (l: Record<string, string>, v: number) => void): Promise<void> => {
      for (const s of await sample()) {
        const v = pick(s);
        if (v !== undefined) emit({ vm: s.vm }, v);
      }
    };
    if (counter) f.counter(name, help, ["vm"], fill);
    else f.gauge(name, help, ["vm"], fill);
  };
  perVm("capsul_vm_vcpu_seconds_total", "CPU time of the VM's vCPU threads.", (s) => s.cpu, true);
  perVm("capsul_vm_rss_bytes", "Resident memory of the VM's QEMU process.", (s) => s.rss, false);
  perVm("capsul_vm_disk_read_bytes_total", "Bytes the guest read from its disk.", (s) => s.rd, true);
  perVm("capsul_vm_disk_written_bytes_total", "Bytes the guest wrote to its disk.", (s) => s.wr, true);
  f.gauge("capsul_memory_committed_bytes", "Memory of every VM that should run.", [], (emit) => emit({}, vms.committedMemoryBytes()));
  f.gauge("capsul_memory_limit_bytes", "Host memory × memory_overcommit_ratio.", [], (emit) => emit({}, vms.memoryLimitBytes()));
  return () => f.close();
}

async function sampleVms(store: Store, vms: VmManager): Promise<VmSample[]> {
  const out: VmSample[] = [];
  for (const v of store.listVms()) {
    const live = vms.liveVm(v.name);
    if (!live) continue;
    const s: VmSample = { vm: v.name };
    try {
      const cpus = await live.qmp.execute<Array<{ "thread-id": number }>>("query-cpus-fast");
      let sum = 0;
      for (const c of cpus) sum += cpuSeconds(`/proc/${live.pid}/task/${c["thread-id"]}/stat`) ?? 0;
      s.cpu = sum;
      const stats = await live.qmp.execute<Array<{ device: string; stats: { rd_bytes: number; wr_bytes: number } }>>("query-blockstats");
      const disk = stats.find((d) => d.device === DISK_DRIVE_ID);
      if (disk) { s.rd = disk.stats.rd_bytes; s.wr = disk.stats.wr_bytes; }
    } catch { /* QEMU going away: skip its samples this scrape */ }
    const r = rssBytes(live.pid);
    if (r !== null) s.rss = r;
    out.push(s);
  }
  return out;
}
