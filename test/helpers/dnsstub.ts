/**
 * Real DNS for the custom-domain tests: Debian's `pebble-challtestsrv` (it
 * ships with the pebble package) answering on loopback, its TXT records set
 * and cleared through its management API; and DnsRelay, a UDP relay in front
 * of it that can stop answering (it reads every query and drops it) to play a
 * resolver that times out, and start again.
 */
import { spawn, type ChildProcess } from "node:child_process";
import dgram from "node:dgram";
import http from "node:http";
import net from "node:net";
import { waitFor, type Teardown } from "./procs.js";

/** A UDP port and a TCP port on 127.0.0.1 that were free a moment ago. */
async function freePorts(): Promise<{ udp: number; tcp: number }> {
  const u = dgram.createSocket("udp4");
  await new Promise<void>((resolve) => u.bind(0, "127.0.0.1", () => resolve()));
  const udp = u.address().port;
  const s = net.createServer();
  await new Promise<void>((resolve) => s.listen(0, "127.0.0.1", () => resolve()));
  const tcp = (s.address() as net.AddressInfo).port;
  await new Promise<void>((resolve) => u.close(() => resolve()));
  await new Promise<void>((resolve) => s.close(() => resolve()));
  return { udp, tcp };
}

function post(port: number, path: string, body: unknown): Promise<number> {
  return new Promise((resolve, reject) => {
    const req = http.request({ host: "127.0.0.1", port, path, method: "POST", agent: false }, (res) => {
      res.resume();
      res.on("end", () => resolve(res.statusCode ?? 0));
    });
    req.on("error", reject);
    req.end(JSON.stringify(body));
  });
}

export interface DnsStub {
  /** host:port of its DNS listener (UDP and TCP). */
  address: string;
  port: number;
  setTxt(name: string, value: string): Promise<void>;
  clearTxt(name: string): Promise<void>;
  log(): string;
}

/** Starts challtestsrv with DNS on a loopback port (every name's A record is 127.0.0.1). */
export async function startDnsStub(t: Teardown): Promise<DnsStub> {
  const dns = await freePorts();
  const mgmt = await freePorts();
  const out: string[] = [];
  const child: ChildProcess = spawn("pebble-challtestsrv", [
    "-defaultIPv4", "127.0.0.1", "-defaultIPv6", "", "-dns01", `127.0.0.1:${dns.udp}`,
    "-http01", "", "-https01", "", "-tlsalpn01", "", "-management", `127.0.0.1:${mgmt.tcp}`,
  ], { stdio: ["ignore", "pipe", "pipe"] });
  for (const s of [child.stdout!, child.stderr!]) {
    s.setEncoding("utf8");
    s.on("data", (c: string) => { out.push(c); if (process.env.CAPSUL_TEST_LOG) process.stderr.write(`[challtestsrv] ${c}`); });
  }
  t.teardown(async () => {
    if (child.exitCode !== null || child.signalCode !== null) return;
    const exited = new Promise<void>((resolve) => child.once("exit", () => resolve()));
    child.kill("SIGKILL");
    await exited;
  });
  await waitFor("challtestsrv's management API", async () => {
    if (child.exitCode !== null) throw new Error(`challtestsrv exited (${child.exitCode}): ${out.join("")}`);
    return (await post(mgmt.tcp, "/set-default-ipv4", { ip: "127.0.0.1" }).catch(() => 0)) === 200;
  }, { timeoutMs: 30_000 });
  const fqdn = (n: string): string => (n.endsWith(".") ? n : `${n}.`);
  return {
    address: `127.0.0.1:${dns.udp}`,
    port: dns.udp,
    async setTxt(name, value) {
      const status = await post(mgmt.tcp, "/set-txt", { host: fqdn(name), value });
      if (status !== 200) throw new Error(`challtestsrv set-txt answered ${status}`);
    },
    async clearTxt(name) {
      const status = await post(mgmt.tcp, "/clear-txt", { host: fqdn(name) });
      if (status !== 200) throw new Error(`challtestsrv clear-txt answered ${status}`);
    },
    log: () => out.join(""),
  };
}

/**
 * A UDP DNS relay on a loopback port: "pass" forwards each query to `upstream` and the
 * answer back; "drop" reads queries and never answers (a resolver that times out).
 */
export class DnsRelay {
  mode: "pass" | "drop" = "pass";
  /** Queries received, answered or not. */
  queries = 0;
  dropped = 0;
  private readonly sock = dgram.createSocket("udp4");
  private readonly up = dgram.createSocket("udp4");
  /** Client of each query in flight, by DNS message id. */
  private readonly pending = new Map<number, { address: string; port: number }>();
  port = 0;

  constructor(private readonly upstreamPort: number) {}

  async start(t: Teardown): Promise<void> {
    this.sock.on("message", (msg, rinfo) => {
      this.queries++;
      if (this.mode === "drop" || msg.length < 2) { this.dropped++; return; }
      this.pending.set(msg.readUInt16BE(0), { address: rinfo.address, port: rinfo.port });
      this.up.send(msg, this.upstreamPort, "127.0.0.1");
    });
    this.up.on("message", (msg) => {
      if (msg.length < 2) return;
      const id = msg.readUInt16BE(0);
      const client = this.pending.get(id);
      if (!client) return;
      this.pending.delete(id);
      this.sock.send(msg, client.port, client.address);
    });
    await new Promise<void>((resolve) => this.sock.bind(0, "127.0.0.1", () => resolve()));
    await new Promise<void>((resolve) => this.up.bind(0, "127.0.0.1", () => resolve()));
    this.port = this.sock.address().port;
    t.teardown(() => { this.sock.close(); this.up.close(); });
  }

  get address(): string { return `127.0.0.1:${this.port}`; }
}
