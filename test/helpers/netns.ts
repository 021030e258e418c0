/**
 * A network namespace of the test's own, standing for "the internet": a veth
 * pair with TEST-NET-2 addresses (RFC 5737, 198.51.100.0/24), one /30 per
 * namespace, host side in the root namespace, the other end inside. Test
 * traffic to these addresses never leaves the machine. Needs root (ip netns).
 */
import { execFileSync, spawn, type ChildProcess } from "node:child_process";
import { randomBytes } from "node:crypto";

/** How long a server started inside the namespace may take to listen. */
export const NS_SERVER_START_MS = 30_000;

export interface TestNet {
  ns: string;
  hostIf: string;
  /** The root namespace's end of the veth. */
  hostAddr: string;
  /** The namespace's end: where "internet" servers listen. */
  nsAddr: string;
  /** Adds `addr/32` inside the namespace and routes it there from the host. */
  addAddress(addr: string): void;
  /** Starts `node -e js` inside the namespace; resolves once it printed "LISTENING". */
  serve(js: string, args?: string[]): Promise<ChildProcess>;
  close(): void;
}

const ip = (...args: string[]): string => execFileSync("ip", args, { encoding: "utf8", stdio: ["ignore", "pipe", "pipe"] });

export function createTestNet(): TestNet {
  const id = randomBytes(3).toString("hex");
  const ns = `cpv-${id}`;
  const hostIf = `cpv${id}h`;
  const peer = `cpv${id}n`;
  // A /30 of 198.51.100.0/24 that no interface uses yet (several tests may run at once).
  const used = ip("-4", "-o", "addr");
  let base = -1;
  for (let tries = 0; tries < 64 && base < 0; tries++) {
    const b = 4 * ((randomBytes(1)[0]! % 63) + 1);
    if (!used.includes(`198.51.100.${b + 1}/`) && !used.includes(`198.51.100.${b + 2}/`)) base = b;
  }
  if (base < 0) throw new Error("no free /30 in 198.51.100.0/24");
  const hostAddr = `198.51.100.${base + 1}`;
  const nsAddr = `198.51.100.${base + 2}`;
  const routes: string[] = [];
  const procs: ChildProcess[] = [];
  // A test killed before its teardown still takes its servers along when it exits.
  const killAll = (): void => { for (const p of procs) if (p.exitCode === null && p.signalCode === null) p.kill("SIGKILL"); };
  process.once("exit", killAll);
  ip("netns", "add", ns);
  try {
    ip("link", "add", hostIf, "type", "veth", "peer", "name", peer);
    ip("link", "set", peer, "netns", ns);
    ip("addr", "add", `${hostAddr}/30`, "dev", hostIf);
    ip("link", "set", hostIf, "up");
    ip("-n", ns, "addr", "add", `${nsAddr}/30`, "dev", peer);
    ip("-n", ns, "link", "set", peer, "up");
    ip("-n", ns, "link", "set", "lo", "up");
    ip("-n", ns, "route", "add", "default", "via", hostAddr);
  } catch (e) {
    try { ip("netns", "del", ns); } catch { /* gone */ }
    try { ip("link", "del", hostIf); } catch { /* gone */ }
    throw e;
  }
  return {
    ns, hostIf, hostAddr, nsAddr,
    addAddress(addr: string) {
      ip("-n", ns, "addr", "add", `${addr}/32`, "dev", "lo");
      ip("route", "add", `${addr}/32`, "via", nsAddr, "dev", hostIf);
      routes.push(addr);
    },
    serve(js: string, args: string[] = []) {
      const p = spawn("ip", ["netns", "exec", ns, process.execPath, "-e", js, "--", ...args], { stdio: ["ignore", "pipe", "pipe"] });
      procs.push(p);
      return new Promise((resolve, reject) => {
        let out = "";
        let err = "";
        const timer = setTimeout(() => reject(new Error(`server in ${ns} did not start: ${err}`)), NS_SERVER_START_MS);
        p.stderr!.on("data", (d: Buffer) => { err += d.toString(); });
        p.stdout!.on("data", (d: Buffer) => {
          out += d.toString();
          if (out.includes("LISTENING")) { clearTimeout(timer); resolve(p); }
        });
        p.once("exit", (code) => { clearTimeout(timer); reject(new Error(`server in ${ns} exited ${code}: ${err}`)); });
      });
    },
    close() {
      killAll();
      process.removeListener("exit", killAll);
      for (const r of routes) { try { ip("route", "del", `${r}/32`); } catch { /* gone with the link */ } }
      try { ip("netns", "del", ns); } catch { /* gone */ }
      // Deleting the namespace deletes the peer, and with it the pair.
      try { ip("link", "del", hostIf); } catch { /* gone */ }
    },
  };
}
