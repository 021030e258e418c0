/**
 * A hub and cogs as real `capsul` child processes configured by capsul.yaml files,
 * for the operations tests (reload, drain): the files are rewritten and the
 * processes signalled the way an operator or systemd would.
 */
import path from "node:path";
import type { Test } from "tap";
import { curl, runCli, spawnCli, writeYaml, type CliProc, type Teardown } from "./procs.js";

export const DOMAIN = "hub.test";
export const READY_RE = /hub ready tls=(\d+|off) http=(\d+|off) tunnel=(\d+)/;
export const CONNECTED_RE = /\[cog\/tunnel\] connected to hub/;
export const RELOADED_RE = /configuration reloaded.*$/;
export const REFUSED_RE = /reload refused, the running configuration stays: (.*)$/;

export interface HubPorts { tls: number; http: number; tunnel: number }
export interface RunningHub { proc: CliProc; ports: HubPorts; yaml: string }

/** A hub section on loopback with quick timeouts; `listen` ports default to 0 (the kernel's choice). */
export function hubDoc(dir: string, opts: { pool: string; ports?: Partial<HubPorts>; hub?: Record<string, unknown> }): Record<string, unknown> {
  const p = { tls: 0, http: 0, tunnel: 0, ...opts.ports };
  const { listen: extraListen, ...extra } = (opts.hub ?? {}) as { listen?: Record<string, unknown> };
  return {
    hub: {
      data_dir: path.join(dir, "hub"),
      domain: DOMAIN,
      listen: {
        tls: `127.0.0.1:${p.tls}`, http: `127.0.0.1:${p.http}`, tunnel: `127.0.0.1:${p.tunnel}`,
        // The admin listener on the kernel's port: the default 127.0.0.1:7444 would collide between hubs.
        tcp_host: "127.0.0.1", tcp_ports: [opts.pool], admin: "127.0.0.1:0", ...extraListen,
      },
      limits: { grace: "1s", client_hello_timeout: "2s", http_header_timeout: "2s" },
      tunnel: { keepalive_interval: "1s", keepalive_timeout: "3s" },
      // No DNS lookups of custom domains: the system resolver is off loopback (test/helpers/cluster.ts).
      domains: { enabled: false },
      ...extra,
    },
  };
}

export function cogDoc(dir: string, name: string, routes: unknown[], extra: Record<string, unknown> = {}): Record<string, unknown> {
  return {
    cog: {
      data_dir: path.join(dir, `cog-${name}`),
      routes,
      reconnect: { min_delay: "100ms", max_delay: "500ms" },
      tunnel: { keepalive_interval: "1s", keepalive_timeout: "3s" },
      listen: { admin: "127.0.0.1:0" },
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

/** `capsul hub invite NAME --json`, then `capsul cog enroll …` with what it printed. */
export async function enrollCog(t: Test, hub: RunningHub, name: string, cogYaml: string, inviteArgs: string[] = []): Promise<void> {
  const inv = await runCli(["hub", "invite", name, "--json", "-c", hub.yaml, ...inviteArgs]);
  t.equal(inv.code, 0, `invite ${name}: ${inv.stderr}`);
  const invite = JSON.parse(inv.stdout) as Record<string, string>;
  const fingerprint = invite.caFingerprint ?? invite.ca_fingerprint;
  const en = await runCli(["cog", "enroll", "--hub", `127.0.0.1:${hub.ports.tunnel}`, "--token", invite.token!, "--ca-fingerprint", fingerprint!, "-c", cogYaml]);
  t.equal(en.code, 0, `enroll ${name}: ${en.stderr}`);
}

/** Starts `capsul cog -c yaml` and waits for it to be connected. */
export async function startCogProc(t: Teardown, name: string, yaml: string): Promise<CliProc> {
  const proc = spawnCli(t, `cog-${name}`, ["cog", "-c", yaml]);
  await proc.waitLine(CONNECTED_RE);
  return proc;
}

export function writeDoc(file: string, doc: unknown): string {
  return writeYaml(file, doc);
}

/** GET http://host:port/ through the hub; the body, or "" and the status when curl gets no 2xx body. */
export async function httpGet(port: number, host: string): Promise<{ status: string; body: string }> {
  const r = await curl(["-w", "\n%{http_code}", "--resolve", `${host}:${port}:127.0.0.1`, `http://${host}:${port}/`]);
  const text = r.stdout;
  const cut = text.lastIndexOf("\n");
  return { status: text.slice(cut + 1), body: text.slice(0, cut) };
}
