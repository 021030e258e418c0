import { spawn } from "node:child_process";
import fs from "node:fs";
import type { VmPorts } from "./db.js";
import { ProvisionerError } from "./errors.js";
import { procCmdline } from "./qemu.js";

/**
 * Tenant VMs reach the internet but never the cog's loopback (DESIGN.md "Trust
 * boundaries"). QEMU's user networking (slirp) maps the guest's 10.0.2.2 to
 * 127.0.0.1 of the namespace QEMU runs in; in the host's namespace that is the
 * provisioner API, every other VM's forwarded ports and every local service.
 * So each QEMU runs in a network namespace of its own (`unshare --user --net`,
 * no root needed), whose loopback holds nothing but that VM's own forwards,
 * and pasta (Debian package passt) joins that namespace and connects it to the
 * world: outbound connections leave through pasta's sockets on the host, and
 * pasta forwards the VM's host loopback ports 22/80/443 into the namespace.
 *
 * Why not the alternatives (checked on Debian 12, QEMU 7.2, passt 2023-03-09):
 * - `-netdev user,restrict=on` cuts the guest off the internet entirely.
 * - passt (`-netdev stream`) with --no-map-gw: the guest no longer reaches the
 *   host through its gateway address, but passt connects to whatever
 *   destination the guest's packets carry. A guest root that routes 127.0.0.0/8
 *   out of eth0 (route_localnet=1, rp_filter=0) reached a host service on
 *   127.0.0.1 through it. Loopback has to be another namespace's loopback.
 *
 * pasta's options, each load-bearing:
 * - --no-map-gw: otherwise a connection to the namespace's gateway reaches the
 *   host's 127.0.0.1 (the same mapping as slirp's 10.0.2.2).
 * - -T none -U none: otherwise pasta forwards ports bound on the host's
 *   loopback into the namespace's loopback ("auto"), and the guest's 10.0.2.2:P
 *   would be the host's 127.0.0.1:P again.
 * - -u none, -t only the three ports: nothing else of the host comes in.
 */

/** Ports QEMU's hostfwd listens on inside the VM's namespace; pasta maps the VM's host ports onto them. */
export const NS_FORWARD_PORTS: Readonly<VmPorts> = Object.freeze({ ssh: 10022, http: 10080, https: 10443 });
/**
 * The namespace's own address and gateway as pasta configures them: from
 * 198.18.0.0/15 (RFC 2544, benchmarking), never a real destination, so that
 * the host's own addresses are not copied into the namespace and a guest
 * reaching 198.18.0.1 gets the real 198.18.0.1 (nothing), not the host.
 */
export const NS_ADDRESS = "198.18.0.2";
export const NS_PREFIX_LEN = 30;
export const NS_GATEWAY = "198.18.0.1";
/** util-linux unshare: a user namespace (so that no root is needed) with a network namespace in it. */
export const UNSHARE_BINARY = "unshare";
export const UNSHARE_ARGS = ["--user", "--map-root-user", "--net", "--"];
/** pasta's "couldn't bind" message: another process took a port we picked (the caller picks new ones). */
const BIND_FAILED_RE = /Failed to bind|Address already in use/i;

/** Thrown when pasta cannot bind one of the VM's host ports. */
export class PortTakenError extends ProvisionerError {
  override name = "PortTakenError";
}

/** QEMU's argv, run in a new user + network namespace. */
export function inOwnNamespace(qemu: string, args: string[]): { file: string; args: string[]; qemu: string } {
  return { file: UNSHARE_BINARY, args: [...UNSHARE_ARGS, qemu, ...args], qemu };
}

export function pastaArgs(qemuPid: number, ports: VmPorts, asRoot: boolean): string[] {
  const fwd = (host: number, ns: number): string[] => ["-t", `127.0.0.1/${host}:${ns}`];
  return [
    // As root pasta would switch to nobody, who may not join a root-owned user namespace.
    ...(asRoot ? ["--runas", "0"] : []),
    "--quiet", "--config-net", "--no-map-gw", "-T", "none", "-U", "none", "-u", "none",
    ...fwd(ports.ssh, NS_FORWARD_PORTS.ssh), ...fwd(ports.http, NS_FORWARD_PORTS.http), ...fwd(ports.https, NS_FORWARD_PORTS.https),
    "-a", NS_ADDRESS, "-n", String(NS_PREFIX_LEN), "-g", NS_GATEWAY,
    // A PID: pasta joins that process's user and network namespace.
    String(qemuPid),
  ];
}

/** Is `pid` the pasta serving the QEMU `qemuPid`? (pids are reused.) */
export function isPastaOf(pid: number, qemuPid: number): boolean {
  const argv = procCmdline(pid);
  return !!argv && /pasta/.test(argv[0] ?? "") && argv[argv.length - 1] === String(qemuPid);
}

/** Is this process in the host's (our) network namespace? A VM started before the namespaces were introduced is. */
export function inOurNetNamespace(pid: number): boolean {
  try {
    return fs.readlinkSync(`/proc/${pid}/ns/net`) === fs.readlinkSync("/proc/self/ns/net");
  } catch {
    return false;
  }
}

/** The pasta serving the QEMU `qemuPid`, found in /proc (when its pasta.pid is lost). */
export function findPasta(qemuPid: number): number | null {
  for (const e of fs.readdirSync("/proc")) {
    if (/^\d+$/.test(e) && isPastaOf(Number(e), qemuPid)) return Number(e);
  }
  return null;
}

/** How pasta's argv is wrapped before it runs (scope.ts: systemd-run --scope), with the environment for it. */
export type PastaWrap = (cmd: { file: string; args: string[] }) => { file: string; args: string[]; env?: NodeJS.ProcessEnv };

/**
 * Starts pasta for the QEMU `qemuPid` and returns the pid of its daemon. pasta
 * forks into the background once the namespace is configured and the ports
 * are bound, so its foreground process exiting 0 means ready.
 */
export function startPasta(pasta: string, qemuPid: number, ports: VmPorts, timeoutMs: number, wrap: PastaWrap = (c) => c): Promise<number> {
  const cmd = wrap({ file: pasta, args: pastaArgs(qemuPid, ports, process.getuid?.() === 0) });
  return new Promise((resolve, reject) => {
    const child = spawn(cmd.file, cmd.args, { stdio: ["ignore", "ignore", "pipe"], detached: true, env: cmd.env });
    let err = "";
    child.stderr!.on("data", (d: Buffer) => { if (err.length < 64 * 1024) err += d.toString(); });
    const timer = setTimeout(() => { child.kill("SIGKILL"); }, timeoutMs);
    child.once("error", (e) => {
      clearTimeout(timer);
      const why = (e as NodeJS.ErrnoException).code === "ENOENT" ? `${cmd.file} not found (apt-get install ${cmd.file === pasta ? "passt, or set cog.provisioner.pasta_binary" : "systemd"})` : e.message;
      reject(new ProvisionerError("network_failed", why, 500, { cause: e }));
    });
    child.once("close", (code, signal) => {
      clearTimeout(timer);
      if (code === 0) {
        const pid = findPasta(qemuPid);
        if (pid) { resolve(pid); return; }
        reject(new ProvisionerError("network_failed", "pasta started but its process is gone", 500));
        return;
      }
      // Without syslog (containers) pasta reports every line it could not send there.
      const lines = err.split("\n").map((l) => l.trim()).filter((l) => l && !/to syslog$/.test(l));
      const last = lines.at(-1) ?? (signal ? `killed by ${signal} after ${timeoutMs} ms` : `exit ${code}`);
      if (BIND_FAILED_RE.test(err)) reject(new PortTakenError("network_failed", `pasta: ${last}`, 500));
      else reject(new ProvisionerError("network_failed", `pasta failed: ${last}`, 500));
    });
  });
}

export function writePastaPid(file: string, pastaPid: number, qemuPid: number): void {
  fs.writeFileSync(file, `${pastaPid} ${qemuPid}\n`);
}

/** The pasta recorded in `file`, if it still serves the QEMU recorded with it. */
export function readPastaPid(file: string): { pid: number; qemuPid: number } | null {
  try {
    const [a, b] = fs.readFileSync(file, "utf8").trim().split(/\s+/).map(Number);
    if (!Number.isInteger(a) || !Number.isInteger(b) || a! <= 1 || b! <= 1) return null;
    return isPastaOf(a!, b!) ? { pid: a!, qemuPid: b! } : null;
  } catch {
    return null;
  }
}

/** How long pasta may take to exit on SIGTERM (it closes its sockets and exits at once) before SIGKILL. */
export const PASTA_EXIT_TIMEOUT_MS = 5000;
const PASTA_EXIT_POLL_MS = 50;

/**
 * Ends the pasta recorded in `file` (it would otherwise keep the VM's host
 * ports bound after QEMU is gone) and removes the file. Resolves once it has
 * exited, so that a restart can bind the same ports again.
 */
export async function stopPasta(file: string): Promise<void> {
  const p = readPastaPid(file);
  if (p) {
    const gone = (): boolean => !isPastaOf(p.pid, p.qemuPid);
    try { process.kill(p.pid, "SIGTERM"); } catch { /* gone */ }
    const deadline = Date.now() + PASTA_EXIT_TIMEOUT_MS;
    while (!gone() && Date.now() < deadline) await new Promise((r) => setTimeout(r, PASTA_EXIT_POLL_MS));
    if (!gone()) {
      try { process.kill(p.pid, "SIGKILL"); } catch { /* gone */ }
    }
  }
  fs.rmSync(file, { force: true });
}
