import { randomBytes } from "node:crypto";
import fs from "node:fs";
import path from "node:path";
import type { ProvisionerConfig } from "../config/types.js";
import type { Logger } from "../lib/log.js";
import { ProvisionerError } from "./errors.js";
import { runTool } from "./tools.js";

/**
 * Each VM's QEMU (and the pasta serving it) in a systemd scope of its own, when
 * the cog runs as a systemd service (cog.provisioner.systemd_scope).
 *
 * Why: QEMU -daemonize leaves capsul's process tree but not its cgroup. Under a
 * service whose KillMode is control-group (systemd's default), `systemctl stop` or
 * `restart` of the cog kills every VM with it. A scope is a unit holding processes
 * systemd did not start: `systemd-run --scope CMD` asks the manager to create one
 * containing systemd-run itself, then execs CMD in it, so QEMU starts in
 * capsul.slice/capsul-vm-<name>-<id>.scope, not in the cog's cgroup, and the
 * cog's unit can kill its whole cgroup again (no helper outlives the cog).
 *
 * Which manager:
 * - root: the system manager, through its private socket /run/systemd/private
 *   (no D-Bus needed).
 * - any other user (the deploy unit's `capsul`): that user's own manager
 *   (user@UID.service, kept running by `loginctl enable-linger capsul`), through
 *   $XDG_RUNTIME_DIR/systemd/private. It cannot move a process out of the
 *   system's capsul-cog.service cgroup by itself (cgroup v2 wants write access to
 *   the common ancestor, the root), so it asks the system manager over the system
 *   D-Bus (AttachProcesses, allowed to anyone for their own processes into their
 *   own delegated unit; no polkit). Not the system manager through polkit: on
 *   systemd ≤ 255 (Debian 12 has 252) StartTransientUnit gives polkit no unit name
 *   to check, so a rule letting `capsul` create capsul-vm-*.scope would let it start
 *   any transient unit, as root: root for whoever takes over the cog.
 *
 * Detection (auto): INVOCATION_ID in our environment, then a probe scope.
 * systemd sets INVOCATION_ID (since v232) in the environment of every process it
 * starts for a unit, and nothing else does: it means "a service manager owns the
 * cgroup we run in and will kill it at stop", which is the one case scopes are
 * for. A terminal, a container entrypoint, `capsul demo` have no such owner and
 * keep today's behaviour (QEMU daemonized in our cgroup). Not NOTIFY_SOCKET (set
 * for Type=notify only), not the name in /proc/self/cgroup (a container's cgroup
 * namespace may show anything). A manager socket that exists can still refuse
 * (no system bus to move the process, old systemd): the probe runs `true` in a
 * scope exactly as QEMU will be run, once, before the first VM starts.
 */

/** cog.provisioner.systemd_scope. */
export type SystemdScopeMode = "auto" | "on" | "off";

/** The slice every VM scope goes into: `systemctl [--user] status capsul.slice` lists all VMs. */
export const VM_SLICE = "capsul.slice";
/** systemd-run, on PATH (it comes with systemd). */
export const SYSTEMD_RUN_BINARY = "systemd-run";
/** Hex characters of the random part of a scope's name: a new name per launch, so a restart never meets the old scope. */
const SCOPE_ID_HEX = 8;
/** The system manager's private socket (root only). */
export const SYSTEM_MANAGER_SOCKET = "/run/systemd/private";

/** The service manager VMs are put under. */
export interface ScopeManager {
  /** The calling user's manager (systemd-run --user), else the system's. */
  user: boolean;
  /** Environment for systemd-run: XDG_RUNTIME_DIR locates the user manager. */
  env: NodeJS.ProcessEnv;
}

export interface ScopeDecision {
  manager: ScopeManager | null;
  /** Why (logged, and part of the error when systemd_scope is on). */
  reason: string;
}

/** Where the manager would be, from uid and environment: nothing is run. */
export function locateManager(uid: number, env: NodeJS.ProcessEnv): { manager: ScopeManager; socket: string } {
  if (uid === 0) return { manager: { user: false, env: { ...env } }, socket: SYSTEM_MANAGER_SOCKET };
  const runtimeDir = env.XDG_RUNTIME_DIR || `/run/user/${uid}`;
  return { manager: { user: true, env: { ...env, XDG_RUNTIME_DIR: runtimeDir } }, socket: path.join(runtimeDir, "systemd", "private") };
}

/** A scope unit name: capsul-<kind>-<vm name>-<random hex>. VM names (NAME_RE) are valid in unit names as they are. */
export function scopeUnitName(kind: "vm" | "vmnet", vmName: string): string {
  return `capsul-${kind}-${vmName}-${randomBytes(SCOPE_ID_HEX / 2).toString("hex")}`;
}

/** `cmd` run through systemd-run in a new scope of `manager`: same pid, same stdio, same exit status. */
export function inScope(manager: ScopeManager, unit: string, description: string, cmd: { file: string; args: string[] }): { file: string; args: string[] } {
  return {
    file: SYSTEMD_RUN_BINARY,
    args: [
      ...(manager.user ? ["--user"] : []),
      "--scope", "--quiet",
      // Unloaded once empty even after a kill (else a failed scope lingers until reset-failed).
      "--collect",
      `--unit=${unit}`, `--slice=${VM_SLICE}`, `--description=${description}`,
      // Per-VM memory and task counts in `systemctl status` (the cgroup's own accounting; no limit is set).
      "-p", "MemoryAccounting=yes", "-p", "TasksAccounting=yes",
      "--", cmd.file, ...cmd.args,
    ],
  };
}

/** Decides once whether VMs get scopes; `probe` runs a command in a scope and throws why it could not. */
export async function decideScope(
  mode: SystemdScopeMode, uid: number, env: NodeJS.ProcessEnv,
  probe: (m: ScopeManager) => Promise<void>,
  exists: (p: string) => boolean = fs.existsSync,
): Promise<ScopeDecision> {
  if (mode === "off") return { manager: null, reason: "cog.provisioner.systemd_scope is off" };
  if (mode === "auto" && !env.INVOCATION_ID) return { manager: null, reason: "not started by systemd (no INVOCATION_ID)" };
  const { manager, socket } = locateManager(uid, env);
  const which = manager.user ? `the service manager of uid ${uid}` : "the system service manager";
  if (!exists(socket)) {
    const hint = manager.user ? ` (is it running? loginctl enable-linger ${userName(uid)})` : "";
    return { manager: null, reason: `${which} is not reachable: no ${socket}${hint}` };
  }
  try {
    await probe(manager);
  } catch (e) {
    return { manager: null, reason: `${which} cannot run a scope: ${(e as Error).message}` };
  }
  return { manager, reason: `each VM in a scope of ${which}, in ${VM_SLICE}` };
}

function userName(uid: number): string {
  try {
    for (const line of fs.readFileSync("/etc/passwd", "utf8").split("\n")) {
      const f = line.split(":");
      if (f[2] === String(uid) && f[0]) return f[0];
    }
  } catch { /* below */ }
  return String(uid);
}

/**
 * The provisioner's choice, made before the first VM start (QEMU or pasta). A
 * manager found is kept while systemd_scope stays what it was (a reload may change
 * it: cfg is the provisioner's live copy). One not found is looked for again at the
 * next start: at boot the cog may come up before capsul's user manager does (README
 * "Deploy" orders them, but a drop-in may be missing).
 */
export class VmScopes {
  private found: ScopeManager | null = null;
  private foundFor: SystemdScopeMode | null = null;
  private pending: Promise<ScopeDecision> | null = null;
  private lastReason = "";

  constructor(private readonly cfg: ProvisionerConfig, private readonly log: Logger) {}

  /** The manager to use, or null; with systemd_scope on, throws when there is none. */
  async manager(): Promise<ScopeManager | null> {
    if (this.found && this.foundFor === this.cfg.systemdScope) return this.found;
    this.found = null;
    // Concurrent starts share one probe.
    this.pending ??= decideScope(this.cfg.systemdScope, process.getuid?.() ?? -1, process.env, (m) => this.probe(m));
    const d = await this.pending.finally(() => { this.pending = null; });
    if (d.manager) {
      this.log.info("vm scopes", { manager: d.manager.user ? "user" : "system", slice: VM_SLICE });
      this.found = d.manager;
      this.foundFor = this.cfg.systemdScope;
      this.lastReason = "";
      return d.manager;
    }
    if (d.reason !== this.lastReason) {
      this.lastReason = d.reason;
      if (this.cfg.systemdScope === "auto" && process.env.INVOCATION_ID) {
        // Under systemd without scopes, VMs share the cog's cgroup: its KillMode decides their fate.
        this.log.warn("vm scopes unavailable: this VM runs in the cog service's cgroup and stops with it", { why: d.reason });
      } else if (this.cfg.systemdScope !== "on") this.log.info("vm scopes not used", { why: d.reason });
    }
    if (this.cfg.systemdScope === "on") {
      throw new ProvisionerError("launch_failed", `cog.provisioner.systemd_scope is on but ${d.reason}`, 500);
    }
    return null;
  }

  /** Runs `true` in a scope, as QEMU will be (then the scope is empty and collected). */
  private async probe(m: ScopeManager): Promise<void> {
    const cmd = inScope(m, `capsul-probe-${randomBytes(SCOPE_ID_HEX / 2).toString("hex")}`, "capsul: can VMs get scopes?", { file: "true", args: [] });
    await runTool("launch_failed", cmd.file, cmd.args, this.cfg.launchTimeoutMs, SYSTEMD_RUN_BINARY, m.env);
  }
}
