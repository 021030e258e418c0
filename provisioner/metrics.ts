import type { Store, VmState } from "./db.js";
import { cpuSeconds, DISK_DRIVE_ID, rssBytes } from "./qemu.js";
import type { VmManager } from "./vms.js";

const STATES: VmState[] = ["creating", "starting", "running", "rebooting", "stopping", "stopped", "error", "deleting"];

/** Label values are VM names (NAME_RE) or states, but escape per the exposition format anyway. */
const esc = (s: string): string => s.replace(/\\/g, "\\\\").replace(/"/g, '\\"').replace(/\n/g, "\\n");

/**
 * Prometheus text exposition (format 0.0.4) of per-VM state, vCPU time (sum of
 * the vCPU threads' utime+stime, thread ids from QMP query-cpus-fast), QEMU RSS,
 * and disk bytes read/written (QMP query-blockstats).
 */
export async function renderMetrics(store: Store, vms: VmManager): Promise<string> {
  const lines: string[] = [];
  const family = (name: string, type: string, help: string): void => { lines.push(`# HELP ${name} ${help}`, `# TYPE ${name} ${type}`); };
  const records = store.listVms();

  family("capsul_vm_state", "gauge", "1 for the state the VM is in.");
  for (const v of records) for (const s of STATES) lines.push(`capsul_vm_state{vm="${esc(v.name)}",state="${s}"} ${v.state === s ? 1 : 0}`);

  const cpu: string[] = [];
  const rss: string[] = [];
  const rd: string[] = [];
  const wr: string[] = [];
  for (const v of records) {
    const live = vms.liveVm(v.name);
    if (!live) continue;
    const l = `{vm="${esc(v.name)}"}`;
    try {
      const cpus = await live.qmp.execute<Array<{ "thread-id": number }>>("query-cpus-fast");
      let sum = 0;
      for (const c of cpus) sum += cpuSeconds(`/proc/${live.pid}/task/${c["thread-id"]}/stat`) ?? 0;
      cpu.push(`capsul_vm_vcpu_seconds_total${l} ${sum}`);
      const stats = await live.qmp.execute<Array<{ device: string; stats: { rd_bytes: number; wr_bytes: number } }>>("query-blockstats");
      const disk = stats.find((s) => s.device === DISK_DRIVE_ID);
      if (disk) {
        rd.push(`capsul_vm_disk_read_bytes_total${l} ${disk.stats.rd_bytes}`);
        wr.push(`capsul_vm_disk_written_bytes_total${l} ${disk.stats.wr_bytes}`);
      }
    } catch { /* QEMU going away: skip its samples this scrape */ }
    const r = rssBytes(live.pid);
    if (r !== null) rss.push(`capsul_vm_rss_bytes${l} ${r}`);
  }
  family("capsul_vm_vcpu_seconds_total", "counter", "CPU time of the VM's vCPU threads.");
  lines.push(...cpu);
  family("capsul_vm_rss_bytes", "gauge", "Resident memory of the VM's QEMU process.");
  lines.push(...rss);
  family("capsul_vm_disk_read_bytes_total", "counter", "Bytes the guest read from its disk.");
  lines.push(...rd);
  family("capsul_vm_disk_written_bytes_total", "counter", "Bytes the guest wrote to its disk.");
  lines.push(...wr);
  family("capsul_memory_committed_bytes", "gauge", "Memory of every VM that should run.");
  lines.push(`capsul_memory_committed_bytes ${vms.committedMemoryBytes()}`);
  family("capsul_memory_limit_bytes", "gauge", "Host memory × memory_overcommit_ratio.");
  lines.push(`capsul_memory_limit_bytes ${vms.memoryLimitBytes()}`);
  return lines.join("\n") + "\n";
}
