import { randomUUID } from "node:crypto";
import fs from "node:fs";
import fsp from "node:fs/promises";
import os from "node:os";
import path from "node:path";
import type { ProvisionerConfig, ProvisionerSize } from "../config/types.js";
import type { Logger } from "../lib/log.js";
import type { PublishedRoute, RouteSink } from "../tunnel-client/routesink.js";
import type { ImageRecord, IoLimits, Store, VmPorts, VmRecord } from "./db.js";
import { prepareRunDir, imageVirtualSize } from "./disk.js";
import { computeDrift, type DriftItem } from "./drift.js";
import { type AccelDecision, decideAccel, probeSources } from "./accel.js";
import { BootProgress, progressFromConsole } from "./boot.js";
import { ConsoleLog, consoleTail } from "./console.js";
import { badRequest, conflict, notFound } from "./errors.js";
import { inOwnNamespace, NS_FORWARD_PORTS, stopPasta } from "./guestnet.js";
import { sshBanner } from "./net.js";
import { type PowerOutcome, powerOff, rebootGuest, waitExit } from "./power.js";
import { QmpClient } from "./qmp.js";
import { VmNetwork } from "./vmnet.js";
import {
  buildQemuArgs, DISK_BACKEND_QOM_PATH, isQemuOf, launchQemu, processAlive, readPidFile, runFiles,
} from "./qemu.js";
import { type Reach, routeOwner, vmReach, vmRoutes } from "./routes.js";
import { checkVmDomains, type CogDomains, domainsFreeFor, operatorGranted } from "./vmdomains.js";
import { inScope, scopeUnitName, VmScopes } from "./scope.js";
import type { CreateRequest } from "./requests.js";

/** Wait between SSH banner probes while a guest boots. */
export const BOOT_POLL_INTERVAL_MS = 1000;
/** The same once the boot timeout has passed ("slow, still booting"): one probe per this, for as long as QEMU runs. */
export const BOOT_SLOW_POLL_INTERVAL_MS = 5000;
/** One SSH banner probe: through hostfwd the guest answers in milliseconds once sshd runs. */
export const BANNER_TIMEOUT_MS = 3000;
/** After QEMU exits, how long its console socket may take to deliver its last bytes (console.ts closeAtEnd). */
export const CONSOLE_END_TIMEOUT_MS = 1000;
/** QMP connection attempts right after launch or on re-adoption (the socket exists once QEMU daemonized). */
export const QMP_CONNECT_ATTEMPTS = 5;
/** Pause before restarting a crashed VM. */
export const CRASH_RESTART_DELAY_MS = 1000;

/** QEMU and its connections, for a VM whose process we know. */
interface Live {
  pid: number;
  qmp: QmpClient;
  /** Writes the serial console to console.log (capped, rotated); null for a VM from before the console socket. */
  console: ConsoleLog | null;
  /** Bumped by every stop/start/reboot; a boot watcher of an older generation gives up. */
  generation: number;
  /** Set by stop/delete so that the exit is expected. */
  stopping: boolean;
  /** The guest asked to power off (SHUTDOWN event, guest: true). */
  guestShutdown: boolean;
  /** This boot: since when, SSH, cloud-init (fed from the console). */
  boot: BootProgress;
}


/** The size a VM's QEMU starts with: its size, with the disk limits set at run time if any. */
function withIoLimits(size: ProvisionerSize, io: IoLimits | null): ProvisionerSize {
  return io ? { ...size, diskIopsPerSec: io.iops, diskBytesPerSec: io.bps } : size;
}

export class VmManager {
  readonly vmsDir: string;
  private readonly live = new Map<string, Live>();
  private readonly locks = new Map<string, Promise<unknown>>();
  private accelChoice: Promise<AccelDecision> | null = null;
  /** Why VMs use the accelerator they use (accel.ts); null until the first start. */
  private accelDecision: AccelDecision | null = null;
  /** What reconcile found and fixed at start-up (GET /v1/drift "resolved"). */
  readonly resolved: DriftItem[] = [];
  private closed = false;
  /** Times of recent unexpected exits, per VM. */
  private readonly crashes = new Map<string, number[]>();
  private readonly background = new Set<Promise<unknown>>();
  private readonly net: VmNetwork;
  /** Whether QEMU and pasta start in systemd scopes (scope.ts), decided before the first start. */
  private readonly scopes: VmScopes;

  constructor(
    private readonly cfg: ProvisionerConfig,
    private readonly store: Store,
    private readonly sink: RouteSink,
    private readonly reach: Reach,
    private readonly log: Logger,
    /** The cog's side of custom domains (proof values, the hub's report); null for a provisioner alone. */
    readonly cogDomains: CogDomains | null = null,
  ) {
    this.vmsDir = path.join(cfg.dataDir, "vms");
    fs.mkdirSync(this.vmsDir, { recursive: true });
    this.scopes = new VmScopes(cfg, log);
    this.net = new VmNetwork(cfg, store, this.vmsDir, this.resolved, log, this.scopes);
  }

  runDir(name: string): string { return path.join(this.vmsDir, name); }

  // ---------------------------------------------------------------- queries

  /**
   * The routes the VM publishes while it runs (names, kinds, hostnames; local ports as they
   * were last, 0 if it never ran): what a move asks the hub to carry (move.ts).
   */
  publishedRoutes(name: string): PublishedRoute[] {
    const v = this.record(name);
    return this.routesFor(v, v.ports ?? { ssh: 0, http: 0, https: 0 });
  }

  private routesFor(v: VmRecord, ports: VmPorts): PublishedRoute[] {
    return vmRoutes(v.name, ports, this.reach, v.https, v.domains);
  }

  private record(name: string): VmRecord {
    const v = this.store.getVm(name);
    if (!v) throw notFound("vm_not_found", `no VM named ${JSON.stringify(name)}`);
    return v;
  }

  view(v: VmRecord): Record<string, unknown> {
    const size = this.cfg.sizes[v.size];
    const img = this.store.getImage(v.image);
    return {
      name: v.name, uuid: v.uuid, image: v.image, size: v.size, state: v.state, desired: v.desired, message: v.message,
      accel: v.accel, accel_reason: v.accel ? this.accelDecision?.reason ?? null : null, vcpus: size?.vcpus ?? null, memory_bytes: size?.memoryBytes ?? null, disk_bytes: size?.diskBytes ?? null,
      io_limits: size ? { iops: withIoLimits(size, v.ioLimits).diskIopsPerSec, bps: withIoLimits(size, v.ioLimits).diskBytesPerSec } : null,
      pid: this.live.get(v.name)?.pid ?? null, boot: this.live.get(v.name)?.boot.view() ?? null,
      created_at: v.createdAt, updated_at: v.updatedAt,
      ...vmReach(v, img?.sshUser ?? "root", this.reach, this.sink, { published: this.live.has(v.name), cog: this.cogDomains }),
    };
  }

  list(): Record<string, unknown>[] { return this.store.listVms().map((v) => this.view(v)); }
  get(name: string): Record<string, unknown> { return this.view(this.record(name)); }
  liveVm(name: string): { pid: number; qmp: QmpClient } | undefined { return this.live.get(name); }

  /** Runs `fn` holding the VM's lifecycle lock: no start, stop or delete meanwhile (backup.ts: offline backups, restores). */
  exclusive<T>(name: string, fn: () => Promise<T>): Promise<T> { return this.withLock(name, fn); }

  /** Memory of every VM that should run: its size plus vm_memory_overhead. */
  committedMemoryBytes(exceptVm?: string): number {
    let sum = 0;
    for (const v of this.store.listVms()) {
      if (v.name === exceptVm || (v.desired !== "running" && !this.live.has(v.name))) continue;
      sum += (this.cfg.sizes[v.size]?.memoryBytes ?? 0) + this.cfg.vmMemoryOverheadBytes;
    }
    return sum;
  }

  hostMemoryBytes(): number { return this.cfg.hostMemoryBytes ?? os.totalmem(); }

  memoryLimitBytes(): number { return Math.floor(this.hostMemoryBytes() * this.cfg.memoryOvercommitRatio); }

  private checkMemory(vm: string, size: ProvisionerSize): void {
    const limit = this.memoryLimitBytes();
    const after = this.committedMemoryBytes(vm) + size.memoryBytes + this.cfg.vmMemoryOverheadBytes;
    if (after > limit) {
      const mib = (n: number): string => `${Math.round(n / 1048576)} MiB`;
      throw conflict("memory_overcommit",
        `not enough memory: VMs would need ${mib(after)} (their sizes + vm_memory_overhead ${mib(this.cfg.vmMemoryOverheadBytes)} each), ` +
        `the limit is ${mib(limit)} (host × memory_overcommit_ratio ${this.cfg.memoryOvercommitRatio})`);
    }
  }

  async consoleTail(name: string): Promise<string> {
    this.record(name);
    return consoleTail(runFiles(this.runDir(name)).console, this.cfg.consoleTailBytes);
  }

  // --------------------------------------------------------------- locking

  /** Runs `fn` after every earlier operation on the same VM: no two lifecycle steps interleave. */
  private withLock<T>(name: string, fn: () => Promise<T>): Promise<T> {
    const prev = this.locks.get(name) ?? Promise.resolve();
    const next = prev.then(fn, fn);
    const tail = next.catch(() => undefined);
    this.locks.set(name, tail);
    void tail.then(() => { if (this.locks.get(name) === tail) this.locks.delete(name); });
    return next;
  }

  private spawnBackground(p: Promise<unknown>): void {
    const tracked = p.catch((e: unknown) => this.log.error("background task failed", { err: (e as Error).message }));
    this.background.add(tracked);
    void tracked.finally(() => this.background.delete(tracked));
  }

  // ---------------------------------------------------------------- create

  /**
   * Validates, records the VM, makes its disk and seed (fast, synchronous with the
   * request so that a failure is the request's error and leaves nothing behind),
   * then boots it in the background. Returns the VM in state `creating`.
   * A restore (backup.ts) passes the disk to boot from (moved into the run dir)
   * and, when it recreates a deleted VM, that VM's uuid.
   */
  async create(req: CreateRequest, from: { disk?: string; uuid?: string } = {}): Promise<Record<string, unknown>> {
    const image = this.store.getImage(req.image);
    if (!image) throw badRequest("image_not_found", `no image named ${JSON.stringify(req.image)} (GET /v1/images)`);
    const size = this.cfg.sizes[req.size];
    if (!size) throw badRequest("size_not_found", `no size named ${JSON.stringify(req.size)} (GET /v1/sizes)`);
    if (image.format === "qcow2" && image.files.disk && size.diskBytes < (await imageVirtualSize(this.cfg, image))) {
      throw badRequest("disk_too_small", `image ${image.name} is larger than the disk of size ${req.size}`);
    }
    // From these checks to the insert nothing awaits: concurrent creates cannot
    // all pass the count (or the name, or the memory) before any of them is recorded.
    if (this.store.getVm(req.name)) throw conflict("vm_exists", `a VM named ${req.name} already exists`);
    if (this.store.listVms().length >= this.cfg.maxVms) throw conflict("too_many_vms", `this cog holds at most ${this.cfg.maxVms} VMs`);
    const domains = req.domains ?? [];
    checkVmDomains(req.name, domains, this.store.listVms(), this.reach, this.cfg.maxDomainsPerVm, this.cogDomains);
    this.checkMemory(req.name, size);
    const uuid = from.uuid ?? randomUUID();
    // The row is the reservation: from here on the name is taken (SQLite's primary key).
    this.store.insertVm({
      name: req.name, uuid, image: image.name, size: req.size, sshKeys: req.sshKeys, desired: "running",
      state: "creating", message: null, accel: null, ports: null, https: req.https, domains,
    });
    try {
      if (from.disk) {
        await fsp.mkdir(this.runDir(req.name), { recursive: true, mode: 0o700 });
        await fsp.rename(from.disk, runFiles(this.runDir(req.name)).disk);
      }
      await this.prepare(this.record(req.name), image, size);
    } catch (e) {
      await fsp.rm(this.runDir(req.name), { recursive: true, force: true });
      this.store.deleteVm(req.name);
      throw e;
    }
    await this.noteClaims(domains, []);
    this.log.info("vm created", { vm: req.name, image: image.name, size: req.size, https: req.https, domains: domains.join(",") || undefined });
    const view = this.get(req.name);
    this.spawnBackground(this.withLock(req.name, () => this.startLocked(req.name)));
    return view;
  }

  private prepare(v: VmRecord, image: ImageRecord, size: ProvisionerSize): Promise<void> {
    return prepareRunDir(this.cfg, this.runDir(v.name), v, image, size);
  }

  // ----------------------------------------------------------------- start

  async start(name: string): Promise<Record<string, unknown>> {
    const v = this.record(name);
    if (v.state === "deleting") throw conflict("vm_busy", `VM ${name} is being deleted`);
    if (!this.live.has(name)) this.checkMemory(name, this.cfg.sizes[v.size]!);
    this.store.updateVm(name, { desired: "running" });
    await this.withLock(name, () => this.startLocked(name));
    return this.get(name);
  }

  /** One decision per provisioner process, made when the first VM starts (accel.ts). */
  private async chooseAccel(image: ImageRecord): Promise<"kvm" | "tcg"> {
    this.accelChoice ??= decideAccel(this.cfg, probeSources(image, this.store.listImages()), this.log).then((d) => {
      this.accelDecision = d;
      return d;
    });
    return (await this.accelChoice).accel;
  }

  private async startLocked(name: string): Promise<void> {
    const v = this.store.getVm(name);
    if (!v || v.desired !== "running" || this.closed) return;
    if (this.live.has(name)) return;
    const image = this.store.getImage(v.image);
    const size = this.cfg.sizes[v.size];
    if (!image || !size) {
      this.store.updateVm(name, { state: "error", message: `image ${v.image} or size ${v.size} no longer exists` });
      return;
    }
    const dir = this.runDir(name);
    const f = runFiles(dir);
    let pid = 0;
    let scope: string | undefined;
    let consoleLog: ConsoleLog | null = null;
    try {
      await this.prepare(v, image, size);
      const accel = await this.chooseAccel(image);
      // A pasta left from a QEMU that died while we were not looking holds the VM's ports.
      await stopPasta(f.pasta);
      await fsp.rm(f.qmp, { force: true });
      await fsp.rm(f.consoleSock, { force: true });
      const args = buildQemuArgs({ name, uuid: v.uuid, runDir: dir, accel, size: withIoLimits(size, v.ioLimits), image, ports: NS_FORWARD_PORTS });
      const cmd = inOwnNamespace(this.cfg.qemuBinary, args);
      const manager = await this.scopes.manager();
      scope = manager ? `${scopeUnitName("vm", name)}.scope` : undefined;
      pid = await launchQemu(manager ? { ...cmd, ...inScope(manager, scope!, `capsul VM ${name} (QEMU)`, cmd), env: manager.env } : cmd, f.pid, this.cfg.launchTimeoutMs);
      const ports = await this.net.connect(v, pid);
      const qmp = await this.connectQmp(f.qmp);
      consoleLog = new ConsoleLog(f.console, this.cfg.consoleLogMaxBytes);
      const boot = new BootProgress(Date.now());
      consoleLog.onData = (d): void => boot.feed(d);
      await consoleLog.attach(f.consoleSock);
      // Started paused (-S): the console is connected, the guest may run.
      await qmp.execute("cont");
      this.store.updateVm(name, { state: "starting", accel, ports, message: null });
      const live = this.attach(name, pid, qmp, consoleLog, boot);
      this.sink.publish(routeOwner(name), this.routesFor(this.record(name), ports));
      this.log.info("vm started", { vm: name, pid, accel, ssh: ports.ssh, http: ports.http, https: ports.https, scope });
      this.spawnBackground(this.watchBoot(name, live.generation, ports.ssh));
    } catch (e) {
      const err = e as Error;
      consoleLog?.close();
      if (pid && isQemuOf(pid, v.uuid)) {
        try { process.kill(pid, "SIGKILL"); } catch { /* gone */ }
        await waitExit(pid, this.cfg.quitTimeoutMs);
      }
      await stopPasta(f.pasta);
      this.store.updateVm(name, { state: "error", message: err.message });
      this.log.error("vm start failed", { vm: name, err: err.message });
    }
  }

  private async connectQmp(sock: string): Promise<QmpClient> {
    let last: unknown;
    for (let i = 0; i < QMP_CONNECT_ATTEMPTS; i++) {
      try {
        return await QmpClient.connect(sock, this.cfg.qmpTimeoutMs);
      } catch (e) {
        last = e;
        await new Promise((r) => setTimeout(r, 200 * (i + 1)));
      }
    }
    throw last as Error;
  }

  /** Registers a running QEMU and what happens when it exits. */
  private attach(name: string, pid: number, qmp: QmpClient, consoleLog: ConsoleLog | null, boot: BootProgress): Live {
    const live: Live = { pid, qmp, console: consoleLog, generation: 1, stopping: false, guestShutdown: false, boot };
    this.live.set(name, live);
    qmp.on("event", (ev: { event: string; data?: Record<string, unknown> }) => {
      if (ev.event === "SHUTDOWN" && ev.data?.guest === true) live.guestShutdown = true;
      // Any reset is a new boot: ours (reboot), or the guest's own (`reboot`
      // inside, cloud-init's power_state) at any point, also while it still
      // boots, so its boot timeout starts again. One reboot may bring two or
      // three RESET events within ~100 ms; each restarts the watch.
      if (ev.event === "RESET" && !live.stopping) {
        const v = this.store.getVm(name);
        if (!v?.ports) return;
        live.boot.restart(Date.now());
        live.generation++;
        this.store.updateVm(name, { state: "starting" });
        this.spawnBackground(this.watchBoot(name, live.generation, v.ports.ssh));
      }
    });
    qmp.once("close", () => this.spawnBackground(this.onQmpClosed(name, live)));
    return live;
  }

  private async onQmpClosed(name: string, live: Live): Promise<void> {
    if (this.closed || live.stopping || this.live.get(name) !== live) return;
    // QMP closes when QEMU exits; give the process a moment to be reaped.
    await waitExit(live.pid, 2000);
    if (processAlive(live.pid)) {
      // Socket dropped but QEMU lives: reconnect.
      try {
        const qmp = await this.connectQmp(runFiles(this.runDir(name)).qmp);
        live.qmp = qmp;
        qmp.once("close", () => this.spawnBackground(this.onQmpClosed(name, live)));
        return;
      } catch { /* fall through: treat as gone */ }
    }
    this.live.delete(name);
    this.sink.withdraw(routeOwner(name));
    await live.console?.closeAtEnd(CONSOLE_END_TIMEOUT_MS);
    await this.withLock(name, () => stopPasta(runFiles(this.runDir(name)).pasta));
    if (live.guestShutdown) {
      this.store.updateVm(name, { state: "stopped", desired: "stopped", message: "powered off from inside the guest" });
      this.log.info("vm powered off by its guest", { vm: name });
      return;
    }
    const now = Date.now();
    const recent = (this.crashes.get(name) ?? []).filter((t) => now - t < this.cfg.crashWindowMs);
    const v = this.store.getVm(name);
    if (v?.desired !== "running" || recent.length >= this.cfg.crashRestarts) {
      this.store.updateVm(name, { state: "error", message: `QEMU exited unexpectedly (${recent.length} restarts in the last ${this.cfg.crashWindowMs / 60_000} min; see console)` });
      this.log.error("drift: QEMU exited unexpectedly; not restarting", { vm: name, pid: live.pid, restarts: recent.length });
      return;
    }
    recent.push(now);
    this.crashes.set(name, recent);
    this.resolved.push({ vm: name, kind: "not-running", detail: `QEMU pid ${live.pid} exited unexpectedly; restarted` });
    this.store.updateVm(name, { state: "stopped", message: "QEMU exited unexpectedly; restarting" });
    this.log.warn("drift: QEMU exited unexpectedly; restarting", { vm: name, pid: live.pid });
    await new Promise((r) => setTimeout(r, CRASH_RESTART_DELAY_MS));
    await this.withLock(name, () => this.startLocked(name));
  }

  /**
   * Polls the guest's SSH banner until it answers: then the VM is `running`.
   * Past the boot timeout (boot_timeout, or boot_timeout_tcg under TCG, where
   * a cloud image takes minutes) the VM is not failed: QEMU runs, so it stays
   * `starting` with a "slow, still booting" message, and the watch goes on.
   */
  private async watchBoot(name: string, generation: number, sshPort: number): Promise<void> {
    const accel = this.store.getVm(name)?.accel;
    const timeoutMs = accel === "tcg" ? this.cfg.bootTimeoutTcgMs : this.cfg.bootTimeoutMs;
    const deadline = Date.now() + timeoutMs;
    let slow = false;
    const current = (): boolean => !this.closed && this.live.get(name)?.generation === generation && !this.live.get(name)?.stopping;
    while (current()) {
      if (await sshBanner(sshPort, BANNER_TIMEOUT_MS)) {
        if (!current()) return;
        this.live.get(name)!.boot.sshAt = Date.now();
        this.store.updateVm(name, { state: "running", message: null });
        this.log.info("vm running: guest answers ssh", { vm: name, slow });
        return;
      }
      if (!slow && Date.now() > deadline) {
        if (!current()) return;
        slow = true;
        const s = Math.round(timeoutMs / 1000);
        this.store.updateVm(name, {
          message: `slow: no ssh after ${s} s under ${accel ?? "?"}; still booting while QEMU runs (see capsul vm console ${name})`,
        });
        this.log.warn("vm slow to boot; still watching", { vm: name, after_ms: timeoutMs, accel });
      }
      await new Promise((r) => setTimeout(r, slow ? BOOT_SLOW_POLL_INTERVAL_MS : BOOT_POLL_INTERVAL_MS));
    }
  }

  // ------------------------------------------------------------ stop, reboot

  /** Powers the VM off (power.ts: the guest first unless `force`); resolves once QEMU is gone. */
  async stop(name: string, force = false): Promise<{ vm: Record<string, unknown>; outcome: PowerOutcome | null }> {
    const v = this.record(name);
    if (v.state === "deleting") throw conflict("vm_busy", `VM ${name} is being deleted`);
    this.store.updateVm(name, { desired: "stopped" });
    const outcome = await this.withLock(name, () => this.stopLocked(name, !force));
    return { vm: this.get(name), outcome };
  }

  /** null when no QEMU ran. */
  private async stopLocked(name: string, graceful: boolean): Promise<PowerOutcome | null> {
    const live = this.live.get(name);
    if (!live) {
      const v = this.store.getVm(name);
      if (v && v.state !== "deleting") this.store.updateVm(name, { state: "stopped" });
      return null;
    }
    live.stopping = true;
    live.generation++;
    this.store.updateVm(name, { state: "stopping" });
    this.sink.withdraw(routeOwner(name));
    const outcome = await powerOff(live.qmp, live.pid, {
      force: !graceful, stopTimeoutMs: this.cfg.stopTimeoutMs, quitTimeoutMs: this.cfg.quitTimeoutMs,
    }, this.log, name);
    live.qmp.close();
    await live.console?.closeAtEnd(CONSOLE_END_TIMEOUT_MS);
    this.live.delete(name);
    const f = runFiles(this.runDir(name));
    await stopPasta(f.pasta);
    await fsp.rm(f.pid, { force: true });
    await fsp.rm(f.qmp, { force: true });
    await fsp.rm(f.consoleSock, { force: true });
    const message = graceful && !outcome.graceful ? `the guest ignored the power button for ${Math.round(this.cfg.stopTimeoutMs / 1000)} s; QEMU was quit` : null;
    if (this.store.getVm(name)?.state !== "deleting") this.store.updateVm(name, { state: "stopped", message });
    this.log.info("vm stopped", { vm: name, graceful: outcome.graceful, took_ms: outcome.tookMs });
    return outcome;
  }

  /**
   * Reboots a running VM (power.ts: ctrl-alt-delete, system_reset after
   * reboot_timeout; at once with `force`). Resolves once the guest has reset;
   * the RESET listener (attach) then watches the new boot (`starting`).
   */
  async reboot(name: string, force = false): Promise<{ vm: Record<string, unknown>; outcome: PowerOutcome }> {
    this.record(name);
    const outcome = await this.withLock(name, async () => {
      const live = this.live.get(name);
      const v = this.store.getVm(name);
      if (!live || !v?.ports) throw conflict("vm_not_running", `VM ${name} is not running (start it)`);
      // The current boot watch stops: the old guest's sshd may answer until it is down.
      live.generation++;
      this.store.updateVm(name, { state: "rebooting", message: null });
      try {
        const o = await rebootGuest(live.qmp, { force, rebootTimeoutMs: this.cfg.rebootTimeoutMs, qmpTimeoutMs: this.cfg.qmpTimeoutMs }, this.log, name);
        if (!force && !o.graceful) {
          this.store.updateVm(name, { message: `the guest did not reboot within ${Math.round(this.cfg.rebootTimeoutMs / 1000)} s of ctrl-alt-delete; it was reset` });
        }
        return o;
      } catch (e) {
        // Still ours and alive (a QMP error): watch it as before. Gone: onQmpClosed decides.
        if (this.live.get(name) === live && !live.qmp.isClosed) {
          live.generation++;
          this.store.updateVm(name, { state: "starting" });
          this.spawnBackground(this.watchBoot(name, live.generation, v.ports.ssh));
        }
        throw e;
      }
    });
    this.log.info("vm rebooted", { vm: name, graceful: outcome.graceful, force, took_ms: outcome.tookMs });
    return { vm: this.get(name), outcome };
  }

  /**
   * Changes the disk limits of a running VM (QMP block_set_io_throttle); 0 = unlimited.
   * Stored too, so every later QEMU of this VM (start, crash restart) starts with them.
   */
  async setIoLimits(name: string, iops: number, bps: number): Promise<void> {
    this.record(name);
    const live = this.live.get(name);
    if (!live) throw conflict("vm_not_running", `VM ${name} is not running`);
    await live.qmp.execute("block_set_io_throttle", {
      id: DISK_BACKEND_QOM_PATH, iops, iops_rd: 0, iops_wr: 0, bps, bps_rd: 0, bps_wr: 0,
    });
    this.store.updateVm(name, { ioLimits: { iops, bps } });
    this.log.info("vm io limits changed", { vm: name, iops, bps });
  }

  /**
   * Changes a VM's custom domains (vmdomains.ts checks them against every VM of
   * this cog) and, when it runs, publishes its routes again: a new domain is
   * announced (and so claimed at the hub), a removed one withdrawn. Under the VM's
   * lock, so a start in between publishes either the old set or the new one.
   */
  async setDomainsWith(name: string, change: (have: readonly string[]) => string[]): Promise<VmRecord> {
    this.record(name);
    return this.withLock(name, async () => {
      const v = this.record(name);
      if (v.state === "deleting") throw conflict("vm_busy", `VM ${name} is being deleted`);
      // Computed from the record read under the lock: two adds at once both land.
      const domains = change(v.domains);
      checkVmDomains(name, domains, this.store.listVms(), this.reach, this.cfg.maxDomainsPerVm, this.cogDomains);
      this.store.updateVm(name, { domains });
      await this.noteClaims(domains.filter((d) => !v.domains.includes(d)), v.domains.filter((d) => !domains.includes(d)));
      const now = this.record(name);
      if (this.live.has(name) && now.ports) this.sink.publish(routeOwner(name), this.routesFor(now, now.ports));
      this.log.info("vm domains changed", { vm: name, domains: domains.join(",") || "(none)" });
      return now;
    });
  }

  /** Of `domains`, those VM `name` may have on this cog now (restore.ts), and why each other one may not. */
  freeDomains(name: string, domains: readonly string[]): ReturnType<typeof domainsFreeFor> {
    return domainsFreeFor(name, domains, this.store.listVms(), this.reach);
  }

  /**
   * Keeps `capsul cog domains` in step (CogDomains remember/forget): a name that needs a
   * DNS proof is listed there from the moment a VM has it. Only a listing: a failure is
   * logged, never the request's error.
   */
  private async noteClaims(added: readonly string[], removed: readonly string[]): Promise<void> {
    const cog = this.cogDomains;
    if (!cog) return;
    for (const [list, what] of [[added, "remember"], [removed, "forget"]] as const) {
      for (const d of list) {
        if (operatorGranted(d, this.reach)) continue;
        try {
          await (what === "remember" ? cog.remember(d) : cog.forget(d));
        } catch (e) {
          this.log.warn(`could not ${what} the custom domain for capsul cog domains`, { domain: d, err: (e as Error).message });
        }
      }
    }
  }

  // ---------------------------------------------------------------- delete

  /** Kills QEMU (the disk goes anyway), withdraws routes, removes the run dir, then the record. */
  async delete(name: string): Promise<void> {
    this.record(name);
    this.store.updateVm(name, { state: "deleting", desired: "stopped" });
    await this.withLock(name, () => this.deleteLocked(name));
  }

  private async deleteLocked(name: string): Promise<void> {
    const v = this.store.getVm(name);
    if (!v) return;
    await this.stopLocked(name, false);
    // A QEMU we never attached to (adoption failed): find it by pidfile + uuid.
    const pid = readPidFile(runFiles(this.runDir(name)).pid);
    if (pid && isQemuOf(pid, v.uuid)) {
      try { process.kill(pid, "SIGKILL"); } catch { /* gone */ }
      await waitExit(pid, this.cfg.quitTimeoutMs);
    }
    await stopPasta(runFiles(this.runDir(name)).pasta);
    this.sink.withdraw(routeOwner(name));
    await fsp.rm(this.runDir(name), { recursive: true, force: true });
    this.store.deleteVm(name);
    await this.noteClaims([], v.domains);
    this.log.info("vm deleted", { vm: name });
  }

  // ------------------------------------------------------- restart safety

  /**
   * After a (re)start of the provisioner: re-adopt every QEMU that still runs
   * (pidfile + uuid in /proc/PID/cmdline + QMP), restart VMs that should run but
   * do not, finish interrupted deletes, and report what did not match.
   */
  async reconcile(): Promise<void> {
    for (const v of this.store.listVms()) {
      await this.withLock(v.name, () => this.reconcileOne(v)).catch((e: Error) => {
        this.store.updateVm(v.name, { state: "error", message: e.message });
        this.log.error("reconcile failed", { vm: v.name, err: e.message });
      });
    }
    for (const d of this.drift()) this.log.warn("drift", { vm: d.vm ?? undefined, kind: d.kind, detail: d.detail, pid: d.pid });
  }

  private async reconcileOne(v: VmRecord): Promise<void> {
    if (v.state === "deleting") { await this.deleteLocked(v.name); return; }
    const f = runFiles(this.runDir(v.name));
    const pid = readPidFile(f.pid);
    if (pid && isQemuOf(pid, v.uuid)) {
      const qmp = await this.connectQmp(f.qmp);
      const status = await qmp.execute<{ status: string }>("query-status");
      let consoleLog: ConsoleLog | null = null;
      // The boot so far: what the console log holds after the last kernel banner.
      const boot = progressFromConsole(await consoleTail(f.console, this.cfg.consoleTailBytes));
      if (fs.existsSync(f.consoleSock)) {
        consoleLog = new ConsoleLog(f.console, this.cfg.consoleLogMaxBytes);
        // Before attach: the guest runs, output may arrive with the connection.
        consoleLog.onData = (d): void => boot.feed(d);
        await consoleLog.attach(f.consoleSock).catch((e: Error) => {
          this.log.warn("cannot reconnect the console", { vm: v.name, err: e.message });
          consoleLog?.close();
          consoleLog = null;
        });
      }
      const live = this.attach(v.name, pid, qmp, consoleLog, boot);
      this.log.info("re-adopted running vm", { vm: v.name, pid, status: status.status });
      if (v.desired === "stopped") { await this.stopLocked(v.name, true); return; }
      const ports = await this.net.readopt(v, pid);
      if (status.status === "paused") await qmp.execute("cont");
      this.sink.publish(routeOwner(v.name), this.routesFor(v, ports));
      if (await sshBanner(ports.ssh, BANNER_TIMEOUT_MS)) {
        boot.sshAt = Date.now();
        this.store.updateVm(v.name, { state: "running", message: null });
      } else {
        this.store.updateVm(v.name, { state: "starting" });
        this.spawnBackground(this.watchBoot(v.name, live.generation, ports.ssh));
      }
      return;
    }
    // QEMU is gone: so must its pasta be, or it keeps the VM's ports.
    await stopPasta(f.pasta);
    if (v.desired === "running") {
      if (v.state !== "creating") {
        const item: DriftItem = { vm: v.name, kind: "not-running", detail: `should run but QEMU was not running (state was ${v.state}); restarted` };
        this.resolved.push(item);
        this.log.warn("drift: vm not running; restarting", { vm: v.name, was: v.state });
      }
      await this.startLocked(v.name);
    } else if (v.state !== "stopped") {
      this.store.updateVm(v.name, { state: "stopped" });
    }
  }

  /** Desired against actual, now. Empty when everything matches. */
  drift(): DriftItem[] {
    return computeDrift(this.store.listVms(), new Map([...this.live].map(([n, l]) => [n, l.pid])), this.vmsDir);
  }

  /** Closes our connections; QEMU processes keep running and are re-adopted next time. */
  async close(): Promise<void> {
    this.closed = true;
    for (const live of this.live.values()) { live.qmp.close(); live.console?.close(); }
    await Promise.allSettled([...this.locks.values()]);
    await Promise.allSettled([...this.background]);
    this.live.clear();
  }
}
