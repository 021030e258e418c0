/**
 * In-process hub + enrolled cogs on loopback for end-to-end tests, through the
 * real invite + enroll path, with timeouts shrunk so tests are quick.
 */
import fs from "node:fs";
import os from "node:os";
import path from "node:path";
import https from "node:https";
import http from "node:http";
import net from "node:net";
import { parseConfig } from "../../config/config.js";
import type { CogConfig, HubConfig } from "../../config/types.js";
import { createInvite, startHub, type Hub } from "../../gateway/hub.js";
import { startCog, type Cog } from "../../tunnel-client/cog.js";
import { enroll } from "../../tunnel-client/enroll.js";
import { loadOrCreateHubPki } from "../../certs/pki.js";
import { createLogger, silentLogger, type Logger } from "../../lib/log.js";

export const HUB_DOMAIN = "hub.test";

export function tmpDir(prefix = "capsul-test-"): string {
  return fs.mkdtempSync(path.join(os.tmpdir(), prefix));
}

export function testLogger(name: string): Logger {
  return process.env.CAPSUL_TEST_LOG ? createLogger({ level: "debug", component: name }) : silentLogger;
}

export function hubConfig(dir: string, extra: Record<string, unknown> = {}): HubConfig {
  return parseConfig({
    hub: {
      data_dir: path.join(dir, "hub"),
      domain: HUB_DOMAIN,
      listen: { tls: "127.0.0.1:0", http: "127.0.0.1:0", tunnel: "127.0.0.1:0", tcp_host: "127.0.0.1", admin: "127.0.0.1:0", ...(extra.listen as object ?? {}) },
      limits: { client_hello_timeout: "2s", grace: "1s", ...(extra.limits as object ?? {}) },
      tunnel: { keepalive_interval: "1s", keepalive_timeout: "3s" },
      // Custom domains look names up in DNS: off unless a test brings its own resolver
      // (test/helpers/dnsstub.ts), so that no lookup leaves loopback for the system's.
      domains: { enabled: false },
      ...Object.fromEntries(Object.entries(extra).filter(([k]) => k !== "listen" && k !== "limits")),
    },
  }).hub!;
}

/** `tunnel`: cog.tunnel keys over the quick keepalive the tests use; `extra`: other cog keys (acme, terminate, ...). */
export function cogConfig(dir: string, name: string, hubPort: number, routes: unknown[], tunnel: Record<string, unknown> = {}, extra: Record<string, unknown> = {}): CogConfig {
  return parseConfig({
    cog: {
      data_dir: path.join(dir, `cog-${name}`),
      hub: `127.0.0.1:${hubPort}`,
      routes,
      reconnect: { min_delay: "100ms", max_delay: "500ms" },
      tunnel: { keepalive_interval: "1s", keepalive_timeout: "3s", ...tunnel },
      ...extra,
      listen: { admin: "127.0.0.1:0", ...(extra.listen as object ?? {}) },
    },
  }).cog!;
}

/** Invites and enrolls a cog named `name`, then starts it and waits for the hub's welcome. */
export async function enrolledCog(hubCfg: HubConfig, hub: Hub, cfg: CogConfig, name: string, opts: { hostnames?: string[]; log?: Logger } = {}): Promise<Cog> {
  const invite = await createInvite(hubCfg, name, { hostnames: opts.hostnames });
  await enroll({ hub: { host: "127.0.0.1", port: hub.ports.tunnel }, token: invite.token, caFingerprint: invite.caFingerprint, dataDir: cfg.dataDir, tuning: cfg.tunnel });
  return startConnectedCog(cfg, name, opts.log);
}

export async function startConnectedCog(cfg: CogConfig, name: string, log: Logger = testLogger(`cog-${name}`)): Promise<Cog> {
  const cog = await startCog(cfg, log);
  await new Promise<void>((resolve) => cog.client.once("routes", () => resolve()));
  return cog;
}

export async function startTestHub(hubCfg: HubConfig): Promise<Hub> {
  return startHub(hubCfg, testLogger("hub"));
}

/** A TLS backend for `hostname` whose certificate chains to its own CA (`caFile`), answering with `tag`. */
export async function tlsBackend(dir: string, hostname: string, tag: string): Promise<{ port: number; caFile: string; close(): Promise<void> }> {
  const pki = await loadOrCreateHubPki(path.join(dir, `site-${tag}`), [hostname]);
  const caFile = path.join(dir, `site-${tag}-ca.crt`);
  fs.writeFileSync(caFile, pki.caCertPem);
  const server = https.createServer({ key: pki.hubKeyPem, cert: pki.hubCertPem }, (req, res) => {
    res.end(`${tag} ${req.headers.host}\n`);
  });
  const port = await listen(server);
  return { port, caFile, close: () => closeServer(server) };
}

export async function httpBackend(tag: string): Promise<{ port: number; close(): Promise<void> }> {
  const server = http.createServer((req, res) => res.end(`${tag} ${req.headers.host} ${req.url}\n`));
  const port = await listen(server);
  return { port, close: () => closeServer(server) };
}

export function listen(server: net.Server, host = "127.0.0.1"): Promise<number> {
  return new Promise((resolve, reject) => {
    server.once("error", reject);
    server.listen(0, host, () => resolve((server.address() as net.AddressInfo).port));
  });
}

export function closeServer(server: net.Server): Promise<void> {
  (server as http.Server).closeAllConnections?.();
  return new Promise((resolve) => server.close(() => resolve()));
}
