/**
 * One process of bench/tunnels.ts holding many cogs: for each enrolled identity it runs
 * a real TunnelClient (the cog's own tunnel code, capsul.yaml defaults: reconnect backoff,
 * keepalive) with one http route `<cog>.<domain>` to a backend of its own that answers
 * with the cog's name, so a visitor can tell which cog served it.
 *
 *   node dist/bench/tunnel-holder.js STATE.json FROM TO HUB_PORT [ENDPOINTS]
 *
 * ENDPOINTS (default 1): a cog counts as connected once it has a tunnel to that many hub
 * endpoints (a hub with `workers: N` has N, and every cog keeps a tunnel to each).
 *
 * Talks to the bench by lines. Out (stdout, JSON): {"ready":n} once the backends listen;
 * {"connected":c,"since":s} when it changes (c: clients connected now, s: clients that
 * connected since the last epoch); {"kept":k} after a keep. In (stdin): `start`, `epoch`,
 * `keep K` (close every client but the first K), `warnings` (answers {"warnings":{message: count}}), `exit`.
 * The bench going away (stdout closed) ends the holder.
 */
import fs from "node:fs";
import http from "node:http";
import os from "node:os";
import path from "node:path";
import readline from "node:readline";
import { parseConfig } from "../config/config.js";
import type { Fields, Logger } from "../lib/log.js";
import { TunnelClient } from "../tunnel-client/client.js";
import type { CogIdentity } from "../tunnel-client/identity.js";

/** How often a changed count is reported: the bench's resolution for "all connected". */
export const HOLDER_REPORT_EVERY_MS = 20;

export interface BenchIdentity { name: string; keyPem: string; certPem: string }
export interface BenchState { domain: string; caPem: string; caFingerprint: string; cogs: BenchIdentity[] }

interface Held { name: string; client: TunnelClient; server: http.Server }

function out(m: unknown): void {
  process.stdout.write(JSON.stringify(m) + "\n");
}

/** Warnings of all clients, counted by message: why cogs are not back, without 1,000 log lines. */
const warnings = new Map<string, number>();
const countingLogger: Logger = {
  debug() {}, info() {},
  warn(msg: string, f?: Fields) { const k = `${msg}: ${String(f?.error ?? f?.reason ?? "")}`.slice(0, 160); warnings.set(k, (warnings.get(k) ?? 0) + 1); },
  error(msg: string, f?: Fields) { countingLogger.warn(msg, f); },
  child() { return countingLogger; },
};

async function backend(name: string): Promise<{ server: http.Server; port: number }> {
  const body = Buffer.from(name);
  const server = http.createServer((_req, res) => {
    res.writeHead(200, { "content-type": "text/plain", "content-length": body.length });
    res.end(body);
  });
  await new Promise<void>((resolve) => server.listen(0, "127.0.0.1", resolve));
  return { server, port: (server.address() as { port: number }).port };
}

async function main(): Promise<void> {
  process.stdout.on("error", () => process.exit(0));
  let dataDirToRemove = "";
  process.once("exit", () => { if (dataDirToRemove) fs.rmSync(dataDirToRemove, { recursive: true, force: true }); });
  process.once("SIGTERM", () => process.exit(0));
  const [stateFile, fromS, toS, hubPortS, endpointsS] = process.argv.slice(2);
  const endpoints = Number(endpointsS ?? "1");
  if (!stateFile || !fromS || !toS || !hubPortS) {
    process.stderr.write("usage: node dist/bench/tunnel-holder.js STATE.json FROM TO HUB_PORT\n");
    process.exit(2);
  }
  const state = JSON.parse(fs.readFileSync(stateFile, "utf8")) as BenchState;
  const hubPort = Number(hubPortS);
  const dataDir = fs.mkdtempSync(path.join(os.tmpdir(), "capsul-holder-"));
  dataDirToRemove = dataDir;
  const held: Held[] = [];
  let since = new Set<string>();
  /** Cogs seen not connected since the last epoch: only their return counts in `since`. */
  let wentDown = new Set<string>();
  // Counted when reported (every HOLDER_REPORT_EVERY_MS), from each client's live links.
  const up = (h: Held): boolean => h.client.connectedEndpoints().length >= endpoints;
  for (const id of state.cogs.slice(Number(fromS), Number(toS))) {
    const be = await backend(id.name);
    const cfg = parseConfig({
      cog: {
        data_dir: path.join(dataDir, id.name),
        hub: `127.0.0.1:${hubPort}`,
        routes: [{ name: "web", kind: "http", hostname: `${id.name}.${state.domain}`, target: `127.0.0.1:${be.port}` }],
      },
    }).cog!;
    const identity: CogIdentity = {
      name: id.name, hub: `127.0.0.1:${hubPort}`, hubDomain: state.domain, caFingerprint: state.caFingerprint,
      keyPem: id.keyPem, certPem: id.certPem, caPem: state.caPem,
    };
    const client = new TunnelClient(cfg, identity, cfg.hub!, countingLogger, cfg.dataDir);
    held.push({ name: id.name, client, server: be.server });
  }
  out({ ready: held.length });

  let last = "";
  const report = setInterval(() => {
    let connected = 0;
    for (const h of held) {
      if (!up(h)) wentDown.add(h.name);
      else { connected++; if (wentDown.has(h.name)) since.add(h.name); }
    }
    const now = JSON.stringify({ connected, since: since.size });
    if (now !== last) { last = now; process.stdout.write(now + "\n"); }
  }, HOLDER_REPORT_EVERY_MS);

  const rl = readline.createInterface({ input: process.stdin });
  for await (const line of rl) {
    const [cmd, arg] = line.trim().split(/\s+/);
    if (cmd === "start") {
      for (const h of held) h.client.start();
    } else if (cmd === "epoch") {
      since = new Set();
      wentDown = new Set();
      last = "";
    } else if (cmd === "keep") {
      const k = Number(arg);
      const gone = held.splice(k);
      await Promise.all(gone.map(async (h) => {
        await h.client.close();
        await new Promise<void>((resolve) => h.server.close(() => resolve()));
      }));
      out({ kept: held.length });
    } else if (cmd === "warnings") {
      out({ warnings: Object.fromEntries(warnings) });
    } else if (cmd === "exit") {
      break;
    }
  }
  clearInterval(report);
  await Promise.all(held.map((h) => h.client.close()));
  for (const h of held) h.server.close();
  fs.rmSync(dataDir, { recursive: true, force: true });
  process.exit(0);
}

await main();
