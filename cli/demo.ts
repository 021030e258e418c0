/**
 * `capsul demo` (what `npm start` runs): a hub, a cog enrolled through the
 * real invite + enroll path, and three small backends, all on loopback in a
 * temporary directory. Prints ready-to-paste commands that reach each
 * backend through the hub, then runs until Ctrl-C / SIGTERM and cleans up.
 */
import fs from "node:fs";
import net from "node:net";
import os from "node:os";
import path from "node:path";
import type { Command } from "commander";
import { Registry } from "prom-client";
import { parseConfig } from "../config/config.js";
import { createInvite, startHub, type Hub } from "../gateway/hub.js";
import { loadOrCreateHubPki } from "../certs/pki.js";
import { startCog, type Cog } from "../tunnel-client/cog.js";
import { enroll } from "../tunnel-client/enroll.js";
import { createLogger, type Level } from "../lib/log.js";
import { processRegistry } from "../lib/metrics.js";
import { startBackends, type Backends } from "./demo-backends.js";
import { exitOnBugs, printJson, untilSignal } from "./common.js";

export const DEMO_DOMAIN = "demo.capsul.test";
export const DEMO_COG = "home1";
/** First port tried for the demo's TCP port pool. */
export const DEMO_TCP_POOL_START = 20000;
const DEMO_TCP_POOL_SIZE = 4;

async function portFree(port: number): Promise<boolean> {
  return new Promise((resolve) => {
    const s = net.createServer();
    s.once("error", () => resolve(false));
    s.listen(port, "127.0.0.1", () => s.close(() => resolve(true)));
  });
}

async function freePool(start: number, size: number): Promise<string> {
  for (let p = start; p + size < 65535; p += size) {
    let ok = true;
    for (let i = 0; i < size && ok; i++) ok = await portFree(p + i);
    if (ok) return `${p}-${p + size - 1}`;
  }
  throw new Error("no free TCP ports for the demo pool");
}

export interface Demo {
  dir: string;
  hub: Hub;
  cog: Cog;
  backends: Backends;
  hosts: { web: string; blog: string };
  caFile: string;
  commands: string[];
  /** The hub's status page and its /metrics, on its admin listener. */
  statusUrl: string;
  metricsUrl: string;
  close(): Promise<void>;
}

export async function startDemo(opts: { logLevel?: Level; dir?: string; registry?: Registry } = {}): Promise<Demo> {
  // Hub and cog share the process's registry, so the hub's /metrics shows the cog's side too.
  const registry = opts.registry ?? new Registry();
  const dir = opts.dir ?? fs.mkdtempSync(path.join(os.tmpdir(), "capsul-demo-"));
  const log = createLogger({ level: opts.logLevel ?? "warn" });
  const web = `web.${DEMO_COG}.${DEMO_DOMAIN}`;
  const blog = `blog.${DEMO_COG}.${DEMO_DOMAIN}`;
  const cleanups: Array<() => Promise<void>> = [];
  const close = async (): Promise<void> => {
    for (const c of cleanups.reverse()) await c().catch(() => {});
    if (!opts.dir) fs.rmSync(dir, { recursive: true, force: true });
  };
  try {
    // The HTTPS backend's certificate comes from its own little CA, like a site's real one would.
    const sitePki = await loadOrCreateHubPki(path.join(dir, "site"), [web]);
    const caFile = path.join(dir, "site-ca.crt");
    fs.writeFileSync(caFile, sitePki.caCertPem);
    const backends = await startBackends({ keyPem: sitePki.hubKeyPem, certPem: sitePki.hubCertPem });
    cleanups.push(() => backends.close());

    const pool = await freePool(DEMO_TCP_POOL_START, DEMO_TCP_POOL_SIZE);
    const hubCfg = parseConfig({
      hub: {
        data_dir: path.join(dir, "hub"),
        domain: DEMO_DOMAIN,
        listen: { tls: "127.0.0.1:0", http: "127.0.0.1:0", tunnel: "127.0.0.1:0", tcp_host: "127.0.0.1", tcp_ports: [pool], admin: "127.0.0.1:0" },
        public_tunnel_address: "127.0.0.1:7443",
      },
    }).hub!;
    const hub = await startHub(hubCfg, log.child("hub"), { registry });
    cleanups.push(() => hub.close());

    const cogCfg = parseConfig({
      cog: {
        data_dir: path.join(dir, "cog"),
        hub: `127.0.0.1:${hub.ports.tunnel}`,
        routes: [
          { name: "web", kind: "tls", hostname: web, target: `127.0.0.1:${backends.https}` },
          { name: "blog", kind: "http", hostname: blog, target: `127.0.0.1:${backends.http}` },
          { name: "echo", kind: "tcp", target: `127.0.0.1:${backends.echo}`, proxy_protocol: "v2" },
        ],
        listen: { admin: "off" }, // its metrics are in the hub's /metrics (one registry per process)
      },
    }).cog!;
    const invite = await createInvite(hubCfg, DEMO_COG);
    await enroll({ hub: cogCfg.hub!, token: invite.token, caFingerprint: invite.caFingerprint, dataDir: cogCfg.dataDir, tuning: cogCfg.tunnel });
    const cog = await startCog(cogCfg, log.child("cog"), { registry });
    cleanups.push(() => cog.close());
    const routes = await new Promise<{ accepted: Array<{ name: string; port?: number }> }>((resolve) => cog.client.once("routes", resolve));
    const echoPort = routes.accepted.find((r) => r.name === "echo")?.port;

    const tlsPort = hub.ports.tls!;
    const httpPort = hub.ports.http!;
    const commands = [
      `curl --resolve ${web}:${tlsPort}:127.0.0.1 --cacert ${caFile} https://${web}:${tlsPort}/`,
      `curl --resolve ${blog}:${httpPort}:127.0.0.1 http://${blog}:${httpPort}/`,
    ];
    // curl's telnet:// speaks raw TCP, so no netcat is needed: type a line, Ctrl-C to quit.
    if (echoPort) commands.push(`curl telnet://127.0.0.1:${echoPort}`);
    const statusUrl = `http://127.0.0.1:${hub.ports.admin}/`;
    const metricsUrl = `http://127.0.0.1:${hub.ports.admin}/metrics`;
    return { dir, hub, cog, backends, hosts: { web, blog }, caFile, commands, statusUrl, metricsUrl, close };
  } catch (err) {
    await close();
    throw err;
  }
}

export function registerDemoCommand(program: Command): void {
  program
    .command("demo")
    .description("run a hub, a cog and demo backends on loopback, and print commands that reach them through the hub")
    .option("--log-level <level>", "debug, info, warn or error", "warn")
    .option("--json", "print the ports, data dir and commands as one line of JSON instead of text")
    .action(async (opts: { logLevel: Level; json?: boolean }) => {
      const log = createLogger({ level: "warn" });
      exitOnBugs(log);
      const demo = await startDemo({ logLevel: opts.logLevel, registry: processRegistry() });
      if (opts.json) {
        printJson({
          ports: { tls: demo.hub.ports.tls, http: demo.hub.ports.http, tunnel: demo.hub.ports.tunnel, admin: demo.hub.ports.admin },
          data_dir: demo.dir, ca_file: demo.caFile, commands: demo.commands, status_url: demo.statusUrl, metrics_url: demo.metricsUrl,
        });
        await untilSignal(() => demo.close(), log);
        return;
      }
      const lines = [
        "capsul demo is running: a hub, a cog named home1 and three backends, all on 127.0.0.1.",
        `TLS (by SNI) on :${demo.hub.ports.tls}, HTTP (by Host) on :${demo.hub.ports.http}, tunnel on :${demo.hub.ports.tunnel}. Data in ${demo.dir}.`,
        "Try these in another terminal (each goes visitor -> hub -> tunnel -> cog -> backend):",
        "",
        ...demo.commands.map((c) => "  " + c),
        "",
        "An unknown name is refused by the hub (no catch-all route):",
        `  curl --resolve nope.${DEMO_DOMAIN}:${demo.hub.ports.tls}:127.0.0.1 -k https://nope.${DEMO_DOMAIN}:${demo.hub.ports.tls}/`,
        "",
        "Watch it: the hub's status page (open it in a browser; it reloads itself) and its Prometheus metrics:",
        `  ${demo.statusUrl}`,
        `  curl ${demo.metricsUrl}`,
        "",
        "Press Ctrl-C to stop.",
      ];
      process.stdout.write(lines.join("\n") + "\n");
      await untilSignal(() => demo.close(), log);
    });
}
