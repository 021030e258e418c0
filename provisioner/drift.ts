import path from "node:path";
import type { VmRecord } from "./db.js";
import { inOurNetNamespace, readPastaPid } from "./guestnet.js";
import { findOurQemus, processAlive, runFiles } from "./qemu.js";

export interface DriftItem {
  vm: string | null;
  kind: "not-running" | "unknown-process" | "port-clash" | "state-mismatch" | "network-missing" | "network-not-isolated" | "network-reconnected";
  detail: string;
  pid?: number;
}

/**
 * Desired against actual state: VMs that should run and do not, QEMU processes
 * under our vms/ dir that the database does not know (reported, never killed),
 * loopback ports recorded for two running VMs, and running VMs whose network
 * is not what guestnet.ts sets up (no pasta, or no namespace of their own).
 */
export function computeDrift(vms: VmRecord[], livePids: Map<string, number>, vmsDir: string): DriftItem[] {
  const out: DriftItem[] = [];
  const byUuid = new Map(vms.map((v) => [v.uuid, v]));
  for (const v of vms) {
    const pid = livePids.get(v.name);
    if (v.desired === "running" && pid === undefined && v.state !== "creating") {
      out.push({ vm: v.name, kind: "not-running", detail: `should run, QEMU is not running (state ${v.state})` });
    }
    if (pid !== undefined && !processAlive(pid)) {
      out.push({ vm: v.name, kind: "state-mismatch", detail: `pid ${pid} is gone`, pid });
    } else if (pid !== undefined && inOurNetNamespace(pid)) {
      out.push({ vm: v.name, kind: "network-not-isolated", detail: "QEMU runs in the cog's network namespace (started by an older capsul); stop and start it", pid });
    } else if (pid !== undefined && readPastaPid(runFiles(path.join(vmsDir, v.name)).pasta)?.qemuPid !== pid) {
      out.push({ vm: v.name, kind: "network-missing", detail: "its pasta is gone: the VM has no network (a provisioner restart reconnects it)", pid });
    }
  }
  let procs: ReturnType<typeof findOurQemus> = [];
  try { procs = findOurQemus(vmsDir); } catch { /* no /proc: nothing to compare */ }
  for (const p of procs) {
    if (!p.uuid || !byUuid.has(p.uuid)) {
      out.push({ vm: null, kind: "unknown-process", detail: `QEMU pid ${p.pid} (uuid ${p.uuid ?? "none"}) is not in the database`, pid: p.pid });
    }
  }
  const seen = new Map<number, string>();
  for (const v of vms) {
    if (!v.ports || !livePids.has(v.name)) continue;
    for (const port of [v.ports.ssh, v.ports.http, v.ports.https]) {
      const other = seen.get(port);
      if (other) out.push({ vm: v.name, kind: "port-clash", detail: `port ${port} is also recorded for ${other}` });
      seen.set(port, v.name);
    }
  }
  return out;
}
