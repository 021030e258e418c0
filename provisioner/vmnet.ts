import path from "node:path";
import type { ProvisionerConfig } from "../config/types.js";
import type { Logger } from "../lib/log.js";
import type { Store, VmPorts, VmRecord } from "./db.js";
import type { DriftItem } from "./drift.js";
import { inOurNetNamespace, type PastaWrap, PortTakenError, readPastaPid, startPasta, writePastaPid } from "./guestnet.js";
import { pickFreePorts, portFree } from "./net.js";
import { runFiles } from "./qemu.js";
import { inScope, scopeUnitName, type VmScopes } from "./scope.js";

/** pasta start attempts when a freshly picked port was taken before pasta bound it. */
export const LAUNCH_ATTEMPTS = 3;

/**
 * A VM's host side: the three loopback ports its routes point at, and the
 * pasta that brings them into the VM's own network namespace (guestnet.ts).
 * What it fixes on the way (ports taken, pasta gone) goes to `resolved`.
 */
export class VmNetwork {
  constructor(
    private readonly cfg: ProvisionerConfig,
    private readonly store: Store,
    private readonly vmsDir: string,
    private readonly resolved: DriftItem[],
    private readonly log: Logger,
    private readonly scopes: VmScopes,
  ) {}

  /** Keeps the VM's recorded ports when they are still free, so that its routes stay the same. */
  async ports(v: VmRecord, fresh: boolean): Promise<VmPorts> {
    const others = new Set<number>();
    for (const o of this.store.listVms()) if (o.name !== v.name && o.ports) others.add(o.ports.ssh).add(o.ports.http).add(o.ports.https);
    if (v.ports && !fresh) {
      const mine = [v.ports.ssh, v.ports.http, v.ports.https];
      const clash = mine.filter((p) => others.has(p));
      const free = await Promise.all(mine.map(portFree));
      if (clash.length === 0 && free.every(Boolean)) return v.ports;
      const item: DriftItem = { vm: v.name, kind: "port-clash", detail: `recorded ports ${mine.join(",")} not free; picked new ones` };
      this.resolved.push(item);
      this.log.warn("drift: port clash", { vm: v.name, ports: mine.join(",") });
    }
    const [ssh, http, https] = await pickFreePorts(3, others);
    return { ssh: ssh!, http: http!, https: https! };
  }

  /**
   * Connects the QEMU `pid` (in its own namespace) to the world with pasta, on
   * the VM's recorded host ports when they are free, else on fresh ones; a port
   * taken between our check and pasta's bind gets new ports, LAUNCH_ATTEMPTS times.
   */
  async connect(v: VmRecord, pid: number): Promise<VmPorts> {
    const f = runFiles(path.join(this.vmsDir, v.name));
    // pasta outlives us like QEMU: under systemd it needs a scope as well (its own:
    // systemd-run cannot add a process to an existing scope), else a stop of the
    // cog's service would cut the VM's network.
    const manager = await this.scopes.manager();
    const wrap: PastaWrap | undefined = manager
      ? (c) => ({ ...inScope(manager, scopeUnitName("vmnet", v.name), `capsul VM ${v.name} network (pasta)`, c), env: manager.env })
      : undefined;
    let ports = v.ports;
    for (let attempt = 1; ; attempt++) {
      ports = await this.ports({ ...v, ports }, attempt > 1);
      try {
        const pastaPid = await startPasta(this.cfg.pastaBinary, pid, ports, this.cfg.launchTimeoutMs, wrap);
        writePastaPid(f.pasta, pastaPid, pid);
        return ports;
      } catch (e) {
        if (!(e instanceof PortTakenError) || attempt >= LAUNCH_ATTEMPTS) throw e;
        this.log.warn("port taken before pasta bound it; retrying with new ports", { vm: v.name, attempt });
      }
    }
  }

  /**
   * A re-adopted QEMU keeps its pasta (it outlives us too); one that lost it
   * (killed) gets a new one, on new ports if its old ones were taken meanwhile.
   * A QEMU in our own network namespace was started before VMs had their own:
   * its slirp still reaches the cog's loopback until it is stopped and started.
   */
  async readopt(v: VmRecord, pid: number): Promise<VmPorts> {
    const f = runFiles(path.join(this.vmsDir, v.name));
    if (inOurNetNamespace(pid)) {
      const detail = "runs without its own network namespace (started by an older capsul); stop and start it to isolate it";
      this.resolved.push({ vm: v.name, kind: "network-not-isolated", detail });
      this.log.warn("drift: vm network not isolated", { vm: v.name, pid });
      return v.ports!;
    }
    if (readPastaPid(f.pasta)?.qemuPid === pid) return v.ports!;
    this.log.warn("drift: vm had no pasta; reconnecting its network", { vm: v.name, pid });
    const ports = await this.connect(v, pid);
    this.resolved.push({ vm: v.name, kind: "network-reconnected", detail: `pasta was gone; reconnected on ports ${ports.ssh},${ports.http},${ports.https}` });
    if (ports.ssh !== v.ports?.ssh || ports.http !== v.ports?.http || ports.https !== v.ports?.https) this.store.updateVm(v.name, { ports });
    return ports;
  }
}
