/**
 * The hub and cogs as real child processes of the `capsul` CLI, configured by
 * capsul.yaml files, for end-to-end tests: start them, enroll through the
 * real invite + enroll commands, read what `capsul hub cogs` reports, and
 * talk to them as visitors (curl, raw TCP) from this process.
 */
import type { Test } from "tap";
import net from "node:net";
import path from "node:path";
import { closeServer, listen } from "./cluster.js";
import { curl, runCli, spawnCli, WAIT_MS, writeYaml, type CliProc, type Teardown } from "./procs.js";

export const DOMAIN = "hub.test";
export const READY_RE = /hub ready tls=(\d+) http=(\d+) tunnel=(\d+)/;
export const CONNECTED_RE = /\[cog\/tunnel\] connected to hub/;

export interface HubPorts { tls: number; http: number; tunnel: number }
export interface RunningHub { proc: CliProc; ports: HubPorts; yaml: string }

/** A hub capsul.yaml for tests: loopback listeners (port 0 unless pinned), the pool, short limits; `extra`: more hub keys. */
export function hubDoc(dir: string, pool: string, listenPorts?: HubPorts, extra: Record<string, unknown> = {}): Record<string, unknown> {
  const p = listenPorts ?? { tls: 0, http: 0, tunnel: 0 };
  return {
    hub: {
      data_dir: path.join(dir, "hub"),
      domain: DOMAIN,
      listen: {
        tls: `127.0.0.1:${p.tls}`, http: `127.0.0.1:${p.http}`, tunnel: `127.0.0.1:${p.tunnel}`,
        tcp_host: "127.0.0.1", tcp_ports: [pool], admin: "127.0.0.1:0",
      },
      limits: { grace: "1s", client_hello_timeout: "1s", http_header_timeout: "1s" },
      tunnel: { keepalive_interval: "1s", keepalive_timeout: "3s" },
      // No DNS lookups of custom domains: the system resolver is off loopback (test/helpers/cluster.ts).
      domains: { enabled: false },
      ...extra,
    },
  };
}

/** Starts `capsul hub -c yaml` and waits for its "hub ready" line. */
export async function startHubProc(t: Teardown, yaml: string, label = "hub"): Promise<RunningHub> {
  const proc = spawnCli(t, label, ["hub", "-c", yaml]);
  const m = await proc.waitLine(READY_RE);
  return { proc, yaml, ports: { tls: Number(m[1]), http: Number(m[2]), tunnel: Number(m[3]) } };
}

export function cogYaml(dir: string, name: string, routes: unknown[], extra: Record<string, unknown> = {}): string {
  return writeYaml(path.join(dir, `cog-${name}.yaml`), {
    cog: {
      data_dir: path.join(dir, `cog-${name}`),
      routes,
      reconnect: { min_delay: "100ms", max_delay: "500ms" },
      tunnel: { keepalive_interval: "1s", keepalive_timeout: "3s" },
      listen: { admin: "127.0.0.1:0" },
      ...extra,
    },
  });
}

/** `capsul hub invite NAME --json`, then `capsul cog enroll …` with what it printed. */
export async function enrollCog(t: Test, hub: Pick<RunningHub, "yaml"> & { ports: Pick<HubPorts, "tunnel"> }, name: string, yaml: string): Promise<void> {
  const inv = await runCli(["hub", "invite", name, "--json", "-c", hub.yaml]);
  t.equal(inv.code, 0, `invite ${name}: ${inv.stderr}`);
  const invite = JSON.parse(inv.stdout) as { cog: string; token: string; ca_fingerprint: string };
  t.equal(invite.cog, name);
  const en = await runCli(["cog", "enroll", "--hub", `127.0.0.1:${hub.ports.tunnel}`, "--token", invite.token, "--ca-fingerprint", invite.ca_fingerprint, "-c", yaml]);
  t.equal(en.code, 0, `enroll ${name}: ${en.stderr}`);
  t.match(en.stdout, new RegExp(`Enrolled as cog "${name}"`));
}

/** Starts `capsul cog -c yaml` and waits for it to be connected (the `from`th line on). */
export async function startCogProc(t: Teardown, name: string, yaml: string): Promise<CliProc> {
  const proc = spawnCli(t, `cog-${name}`, ["cog", "-c", yaml]);
  await proc.waitLine(CONNECTED_RE);
  return proc;
}

export interface CogRow { name: string; status: string; revoked_at: string | null; online: boolean; endpoints: string[]; routes: string[] }

export async function listCogs(hubYaml: string): Promise<CogRow[]> {
  const r = await runCli(["hub", "cogs", "--json", "-c", hubYaml]);
  if (r.code !== 0) throw new Error(`capsul hub cogs failed (${r.code}): ${r.stderr}`);
  return JSON.parse(r.stdout) as CogRow[];
}

/** The hub TCP port the cog's tcp route holds, as `capsul hub cogs` reports it. */
export async function tcpPortOf(hubYaml: string, cog: string): Promise<number> {
  const row = (await listCogs(hubYaml)).find((c) => c.name === cog);
  const tcp = row?.routes.find((r) => r.startsWith("tcp:"));
  if (!tcp) throw new Error(`cog ${cog} holds no tcp route: ${JSON.stringify(row)}`);
  return Number(tcp.slice(4));
}

export async function curlHttp(port: number, host: string): Promise<{ code: number | null; body: string; stderr: string }> {
  const r = await curl(["--resolve", `${host}:${port}:127.0.0.1`, `http://${host}:${port}/`]);
  return { code: r.code, body: r.stdout, stderr: r.stderr };
}

export async function httpStatus(port: number, host: string): Promise<string> {
  const r = await curl(["-o", "/dev/null", "-w", "%{http_code}", "--resolve", `${host}:${port}:127.0.0.1`, `http://${host}:${port}/`]);
  return r.stdout;
}

/** A TCP backend that greets with `tag` and echoes until the visitor ends. */
export async function echoBackend(tag: string): Promise<{ port: number; close(): Promise<void> }> {
  const server = net.createServer({ allowHalfOpen: true }, (sock) => {
    sock.on("error", () => {});
    sock.write(`${tag}\n`);
    sock.pipe(sock);
  });
  const port = await listen(server);
  return { port, close: () => closeServer(server) };
}

/** Sends `payload`, half-closes, and resolves with everything read until the server closes. */
export function tcpExchange(port: number, payload: string): Promise<string> {
  return new Promise((resolve, reject) => {
    const chunks: Buffer[] = [];
    const s = net.connect({ port, host: "127.0.0.1", allowHalfOpen: true }, () => s.end(payload));
    s.on("data", (c: Buffer) => chunks.push(c));
    s.on("error", reject);
    s.on("close", () => resolve(Buffer.concat(chunks).toString()));
  });
}

/** Resolves when `p` settles, or rejects after `ms` naming `what` (a bound, not a timing assertion). */
export function within<T>(p: Promise<T>, what: string, ms = WAIT_MS): Promise<T> {
  let timer: NodeJS.Timeout;
  const deadline = new Promise<never>((_, reject) => { timer = setTimeout(() => reject(new Error(`${what}: still pending after ${ms} ms`)), ms); });
  return Promise.race([p, deadline]).finally(() => clearTimeout(timer));
}

