/**
 * Measures two pre-authentication attacks on the tunnel port against an in-process hub
 * on 127.0.0.1 (issue 8, defect 2). Not a test: numbers for before/after comparisons.
 * It uses only APIs the hub had before the fixes, so the same file runs on older trees.
 *
 *   node dist/bench/tunnel-dos.js reassembly [KiB=1024]
 *     A control message of KiB in 16-byte yamux frames from an enrolled cog: wall time
 *     until the welcome, the hub's longest event-loop stall meanwhile, and the bytes the
 *     message reader copied (when the tree counts them).
 *   node dist/bench/tunnel-dos.js pings [MiB=32]
 *     A TLS peer without a certificate that writes MiB of yamux Ping frames and never
 *     reads: the largest write queue (Node's writableLength) of the hub's side of that
 *     connection, and whether the hub ended it.
 */
import fs from "node:fs";
import os from "node:os";
import path from "node:path";
import tls from "node:tls";
import { monitorEventLoopDelay } from "node:perf_hooks";
import * as config from "../config/config.js";
import { createInvite, startHub } from "../gateway/hub.js";
import { createKeyAndCsr, signCogCsr } from "../certs/pki.js";
import { silentLogger } from "../lib/log.js";
import { MuxSession } from "../protocol/mux.js";
import * as messages from "../protocol/messages.js";
import { Flag, FrameType, encodeHeader } from "../protocol/frame.js";

const KIB = 1024;
const MIB = 1024 * 1024;

async function hub() {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), "capsul-dos-bench-"));
  // The admin listener (when the tree has one) on an ephemeral port, never a second hub's 7444;
  // an older tree would refuse the key it does not know.
  const admin = "DEFAULT_HUB_ADMIN_LISTEN" in config ? { admin: "127.0.0.1:0" } : {};
  const cfg = config.parseConfig({
    hub: {
      data_dir: path.join(dir, "hub"), domain: "hub.test",
      listen: { tls: "127.0.0.1:0", http: "127.0.0.1:0", tunnel: "127.0.0.1:0", tcp_host: "127.0.0.1", ...admin },
      // Only the attack may end the connection: no keepalive verdict, no hello deadline.
      tunnel: { keepalive_interval: "1h", keepalive_timeout: "2h", control_hello_timeout: "1h" },
    },
  }).hub!;
  const h = await startHub(cfg, silentLogger);
  return { cfg, hub: h, close: async () => { await h.close(); fs.rmSync(dir, { recursive: true, force: true }); } };
}

function connect(port: number, id?: { key: string; cert: string }): Promise<tls.TLSSocket> {
  return new Promise((resolve, reject) => {
    const s = tls.connect({ host: "127.0.0.1", port, rejectUnauthorized: false, minVersion: "TLSv1.3", ...id });
    s.once("secureConnect", () => resolve(s));
    s.once("error", reject);
  });
}

async function reassembly(kib: number): Promise<void> {
  const { cfg, hub: h, close } = await hub();
  await createInvite(cfg, "big");
  const { keyPem, csrPem } = await createKeyAndCsr("big");
  const signed = await signCogCsr(h.pki, csrPem, "big", { validityMs: 86_400_000 });
  await h.store.recordCert("big", signed.serial.replace(/^0+/, ""), signed.notAfter.getTime());
  const sock = await connect(h.ports.tunnel, { key: keyPem, cert: signed.certPem });
  sock.on("error", () => {});
  const session = new MuxSession(sock, { role: "client", keepaliveIntervalMs: 0, maxFramePayloadBytes: 16 });
  session.on("error", () => {});
  const control = session.open();
  const hello = { type: "hello", protocol: 1, software: "bench", routes: [], pad: "" };
  hello.pad = "x".repeat(Math.min(kib * KIB, messages.MESSAGE_MAX_BYTES) - messages.encodeMessage(hello).length + 4);
  const msg = messages.encodeMessage(hello);
  const stats = (messages as { messageReaderStats?: { copiedBytes: number } }).messageReaderStats;
  const copied0 = stats?.copiedBytes ?? 0;
  const loop = monitorEventLoopDelay({ resolution: 10 });
  loop.enable();
  const t0 = performance.now();
  const cpu0 = process.cpuUsage();
  const reader = new messages.MessageReader<{ type: string }>(control);
  // In 4 KiB slices, one per turn of the event loop, so that the stall measured is the hub's,
  // not this peer framing the whole message at once (both run in this process).
  for (let off = 0; off < msg.length; off += 4 * KIB) {
    control.write(msg.subarray(off, off + 4 * KIB));
    await new Promise((r) => setImmediate(r));
  }
  const answer = await reader.next();
  const ms = performance.now() - t0;
  const cpu = process.cpuUsage(cpu0);
  loop.disable();
  console.log(JSON.stringify({
    attack: "reassembly", messageBytes: msg.length, frames: Math.ceil(msg.length / 16), answer: answer?.type,
    wallMs: Math.round(ms), cpuMs: Math.round((cpu.user + cpu.system) / 1000),
    maxEventLoopStallMs: Math.round(loop.max / 1e6),
    readerCopiedBytes: stats ? stats.copiedBytes - copied0 : "not counted by this tree",
  }));
  session.destroy();
  await close();
}

async function pings(mib: number): Promise<void> {
  const { hub: h, close } = await hub();
  // The hub's side of the connection, from its TLS server (named server or tlsServer by tree).
  const tunnels = h.tunnels as unknown as { server?: tls.Server; tlsServer?: tls.Server };
  const server = tunnels.tlsServer ?? tunnels.server!;
  let hubSide: tls.TLSSocket | null = null;
  server.prependListener("secureConnection", (s: tls.TLSSocket) => { hubSide = s; });
  const sock = await connect(h.ports.tunnel);
  sock.on("error", () => {});
  sock.pause(); // never read
  let closed = false;
  const gone = new Promise<void>((r) => sock.once("close", () => { closed = true; r(); }));
  let maxQueue = 0;
  const sample = setInterval(() => { if (hubSide) maxQueue = Math.max(maxQueue, hubSide.writableLength); }, 20);
  const frames = MIB / 12 | 0;
  const chunk = Buffer.alloc(frames * 12);
  for (let i = 0; i < frames; i++) encodeHeader(FrameType.Ping, Flag.SYN, 0, i + 1, chunk, i * 12);
  const rss0 = process.memoryUsage().rss;
  let written = 0;
  while (!closed && written < mib) {
    if (!sock.write(chunk)) await Promise.race([new Promise((r) => sock.once("drain", r)), gone]);
    written++;
  }
  // Let the hub work through what it has read.
  await new Promise((r) => setTimeout(r, 2000));
  clearInterval(sample);
  const side = hubSide as tls.TLSSocket | null;
  console.log(JSON.stringify({
    attack: "pings", pingMiBWritten: written, pings: written * frames,
    hubClosedIt: closed || side?.destroyed === true,
    hubWriteQueueMaxBytes: maxQueue, hubWriteQueueNowBytes: side?.destroyed ? 0 : side?.writableLength ?? 0,
    rssGrowthMiB: Math.round((process.memoryUsage().rss - rss0) / MIB),
  }));
  sock.destroy();
  await close();
}

const [mode, arg] = process.argv.slice(2);
if (mode === "reassembly") await reassembly(Number(arg ?? 1024));
else if (mode === "pings") await pings(Number(arg ?? 32));
else {
  console.error("usage: node dist/bench/tunnel-dos.js reassembly [KiB] | pings [MiB]");
  process.exit(2);
}
