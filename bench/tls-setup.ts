/**
 * The floor under the hub's CPU per tunnel setup: what Node's mTLS 1.3 handshake alone costs
 * the accepting process, with the hub's and the cogs' certificates from a bench/tunnels.ts
 * cache and the tunnel listener's TLS options (requestCert, rejectUnauthorized: false,
 * TLSv1.3). Nothing else runs in the server: no mux, no store, no logging.
 *
 *   node dist/bench/tls-setup.js [--cache DIR] [--n 1000] [--concurrency 32]
 *
 * The server is a child process (this file with `serve`), so its /proc CPU time is its own.
 */
import { spawn } from "node:child_process";
import fs from "node:fs";
import os from "node:os";
import path from "node:path";
import readline from "node:readline";
import tls from "node:tls";
import { parseArgs } from "node:util";
import { cpuSeconds } from "./procs.js";
import type { BenchState } from "./tunnel-holder.js";

const HERE = path.dirname(new URL(import.meta.url).pathname);

function serve(dataDir: string): void {
  const pki = path.join(dataDir, "pki");
  const read = (f: string): string => fs.readFileSync(path.join(pki, f), "utf8");
  const server = tls.createServer({
    key: read("hub.key"), cert: read("hub.crt") + "\n" + read("ca.crt"), ca: read("ca.crt"),
    requestCert: true, rejectUnauthorized: false, minVersion: "TLSv1.3",
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
  let next = 0;
  let ok = 0;
  const one = (i: number): Promise<void> => new Promise((resolve, reject) => {
    const id = state.cogs[i % state.cogs.length]!;
    const s = tls.connect({ host: "127.0.0.1", port, key: id.keyPem, cert: id.certPem, ca: state.caPem, minVersion: "TLSv1.3" });
    let got = "";
    s.setEncoding("utf8");
    s.on("data", (d: string) => { got += d; });
    s.on("end", () => { if (got === "ok") ok++; s.end(); resolve(); });
    s.on("error", reject);
  });
  const c0 = cpuSeconds(child.pid!);
  const t0 = Date.now();
  await Promise.all(Array.from({ length: Number(v.concurrency) }, async () => {
    while (next < n) await one(next++);
  }));
  const cpu = cpuSeconds(child.pid!) - c0;
  process.stdout.write(JSON.stringify({ handshakes: n, ok, serverCpuMsPerHandshake: (cpu * 1000) / n, wallS: (Date.now() - t0) / 1000, load: os.loadavg()[0] }) + "\n");
  child.kill();
}

if (process.argv[2] === "serve") serve(process.argv[3]!);
else await main();
