/**
 * The floor under the hub's CPU per tunnel setup: what Node's mTLS 1.3 handshake alone costs
 * the accepting process, with the hub's and the cogs' certificates from a bench/tunnels.ts
 * cache and the tunnel listener's TLS options (requestCert, rejectUnauthorized: false,
 * TLSv1.3). Nothing else runs in the server: no mux, no store, no logging.
 *
 *   node dist/bench/tls-setup.js [--cache DIR] [--n 1000] [--concurrency 32]
 *
 * Two passes of N handshakes each: full (certificate signature, the cog's chain verified), then
 * resumed (each cog offers the TLS 1.3 session ticket of a full handshake made before the pass,
 * as a cog redialling a restarted hub does; gateway/ticketkeys.ts). The server has the tunnel
 * listener's ticket settings: one 48-byte key, a session id context, a day of ticket lifetime.
 *
 * The server is a child process (this file with `serve`), so its /proc CPU time is its own.
 */
import { spawn } from "node:child_process";
import fs from "node:fs";
import os from "node:os";
import path from "node:path";
import readline from "node:readline";
import tls from "node:tls";
import { randomBytes } from "node:crypto";
import { parseArgs } from "node:util";
import { cpuSeconds } from "./procs.js";
import type { BenchState } from "./tunnel-holder.js";
import { TICKET_KEY_BYTES, tunnelSessionIdContext } from "../gateway/ticketkeys.js";

const HERE = path.dirname(new URL(import.meta.url).pathname);

function serve(dataDir: string): void {
  const pki = path.join(dataDir, "pki");
  const read = (f: string): string => fs.readFileSync(path.join(pki, f), "utf8");
  const server = tls.createServer({
    key: read("hub.key"), cert: read("hub.crt") + "\n" + read("ca.crt"), ca: read("ca.crt"),
    requestCert: true, rejectUnauthorized: false, minVersion: "TLSv1.3",
    ticketKeys: randomBytes(TICKET_KEY_BYTES), sessionTimeout: 86_400, sessionIdContext: tunnelSessionIdContext(read("ca.crt")),
  }, (s) => {
    // What the hub reads of every tunnel before its first message.
    const peer = s.getPeerCertificate();
    s.end(s.authorized && typeof peer.subject?.CN === "string" ? "ok" : "no");
    s.on("error", () => {});
  });
  server.listen(0, "127.0.0.1", () => process.stdout.write(`${(server.address() as { port: number }).port}\n`));
}

async function main(): Promise<void> {
  const { values: v } = parseArgs({ options: {
    cache: { type: "string", default: path.join(os.tmpdir(), "capsul-bench-tunnels-1000") },
    n: { type: "string", default: "1000" }, concurrency: { type: "string", default: "32" },
  } });
  const cache = v.cache!;
  const state = JSON.parse(fs.readFileSync(path.join(cache, "state-v2.json"), "utf8")) as BenchState;
  const child = spawn(process.execPath, [path.join(HERE, "tls-setup.js"), "serve", path.join(cache, "hub")], { stdio: ["ignore", "pipe", "inherit"] });
  const port = Number(await new Promise<string>((resolve) => readline.createInterface({ input: child.stdout! }).once("line", resolve)));
  const n = Number(v.n);
  const tickets = new Map<number, Buffer>();
  let ok = 0;
  let reused = 0;
  const one = (i: number, offer: boolean): Promise<void> => new Promise((resolve, reject) => {
    const k = i % state.cogs.length;
    const id = state.cogs[k]!;
    const s = tls.connect({ host: "127.0.0.1", port, key: id.keyPem, cert: id.certPem, ca: state.caPem, minVersion: "TLSv1.3", session: offer ? tickets.get(k) : undefined });
    let got = "";
    s.setEncoding("utf8");
    s.on("session", (t: Buffer) => { if (!offer) tickets.set(k, t); });
    s.on("data", (d: string) => { got += d; });
    s.on("end", () => { if (got === "ok") ok++; if (s.isSessionReused()) reused++; s.end(); resolve(); });
    s.on("error", reject);
  });
  const pass = async (count: number, offer: boolean): Promise<{ handshakes: number; ok: number; reused: number; serverCpuMsPerHandshake: number; wallS: number; load: number }> => {
    let next = 0;
    ok = 0;
    reused = 0;
    const c0 = cpuSeconds(child.pid!);
    const t0 = Date.now();
    await Promise.all(Array.from({ length: Number(v.concurrency) }, async () => {
      while (next < count) await one(next++, offer);
    }));
    const cpu = cpuSeconds(child.pid!) - c0;
    return { handshakes: count, ok, reused, serverCpuMsPerHandshake: (cpu * 1000) / count, wallS: (Date.now() - t0) / 1000, load: os.loadavg()[0]! };
  };
  const full = await pass(n, false);
  process.stdout.write(JSON.stringify({ mode: "full", ...full }) + "\n");
  // The resumed pass dials the same cogs in the same order: each holds a ticket from the full pass.
  const resumed = await pass(n, true);
  process.stdout.write(JSON.stringify({ mode: "resumed", ...resumed }) + "\n");
  child.kill();
}

if (process.argv[2] === "serve") serve(process.argv[3]!);
else await main();
