/**
 * Child process for the mux microbenchmark: one end of a loopback TLS connection that
 * either sends or receives TOTAL bytes over S streams, with one of three stream kinds:
 *   raw    - S separate TLS connections (no multiplexer: the ceiling)
 *   capsul - protocol/mux.ts MuxSession over one TLS connection
 *   libp2p - @libp2p/yamux (from LIBP2P_DIR, installed outside the repo) over one TLS connection
 *
 *   node mux-peer.js recv IMPL CERT KEY TOTAL      -> "listening PORT", then one JSON line
 *   node mux-peer.js send IMPL PORT STREAMS TOTAL  -> one JSON line
 * The JSON line is {"bytes","ms","cpuSec"}, CPU (user+system) counted from the first
 * connection (recv) or from before connecting (send).
 */
import { readFileSync } from "node:fs";
import path from "node:path";
import { Duplex } from "node:stream";
import tls from "node:tls";
import { pathToFileURL } from "node:url";
import { MuxSession, type MuxStream } from "../protocol/mux.js";
import { LIBP2P_DIR, MUXBENCH_WINDOW_BYTES } from "./micro.js";

const CHUNK_BYTES = 64 * 1024;
const CHUNK = Buffer.alloc(CHUNK_BYTES, 0x61);

function cpuNow(): number {
  const u = process.cpuUsage();
  return (u.user + u.system) / 1e6;
}
function report(bytes: number, t0: bigint, cpu0: number): void {
  process.stdout.write(JSON.stringify({ bytes, ms: Number(process.hrtime.bigint() - t0) / 1e6, cpuSec: cpuNow() - cpu0 }) + "\n");
}

/** Writes `n` bytes to a Node writable, honouring backpressure, then ends it. */
function pushBytes(w: Duplex, n: number): Promise<void> {
  return new Promise((resolve, reject) => {
    let left = n;
    w.on("error", reject);
    const go = (): void => {
      while (left > 0) {
        const len = Math.min(left, CHUNK_BYTES);
        left -= len;
        if (!w.write(len === CHUNK_BYTES ? CHUNK : CHUNK.subarray(0, len))) { w.once("drain", go); return; }
      }
      w.end(resolve);
    };
    go();
  });
}

// ---- @libp2p/yamux adapter: a Node TLS socket as a libp2p MessageStream
/* eslint-disable @typescript-eslint/no-explicit-any */
interface P2PStream {
  send(d: Uint8Array): boolean;
  onDrain(): Promise<void>;
  close(): Promise<void>;
  addEventListener(t: string, f: (e: any) => void): void;
}
interface P2PMuxer {
  createStream(): Promise<P2PStream>;
  addEventListener(t: string, f: (e: any) => void): void;
}

async function libp2pMuxer(sock: tls.TLSSocket, direction: "inbound" | "outbound"): Promise<P2PMuxer> {
  // @libp2p/yamux 8 uses Promise.withResolvers (Node 22); Node 20 lacks it.
  const P = Promise as any;
  if (typeof P.withResolvers !== "function") {
    P.withResolvers = function withResolvers<T>() {
      let resolve!: (v: T) => void;
      let reject!: (e: unknown) => void;
      const promise = new Promise<T>((res, rej) => { resolve = res; reject = rej; });
      return { promise, resolve, reject };
    };
  }
  const mod = (p: string): Promise<any> => import(pathToFileURL(path.join(LIBP2P_DIR, "node_modules", p)).href);
  const { yamux } = await mod("@libp2p/yamux/dist/src/index.js");
  const { AbstractMessageStream } = await mod("@libp2p/utils/dist/src/abstract-message-stream.js");
  const { logger } = await mod("@libp2p/logger/dist/src/index.js");

  class SocketMessageStream extends AbstractMessageStream {
    constructor() {
      super({ log: logger("bench:conn"), direction });
      sock.on("data", (b: Buffer) => this.onData(b));
      sock.on("drain", () => this.safeDispatchEvent("drain"));
      sock.on("close", () => this.onTransportClosed());
    }
    sendData(list: any): { sentBytes: number; canSendMore: boolean } {
      let ok = true;
      for (const b of list) ok = sock.write(b);
      return { sentBytes: list.byteLength, canSendMore: ok };
    }
    sendReset(): void { sock.destroy(); }
    sendPause(): void { sock.pause(); }
    sendResume(): void { sock.resume(); }
    async close(): Promise<void> { sock.end(); }
  }
  const factory = yamux({ enableKeepAlive: false, streamOptions: { maxStreamWindowSize: MUXBENCH_WINDOW_BYTES } })();
  return factory.createStreamMuxer(new SocketMessageStream()) as P2PMuxer;
}

async function p2pPush(s: P2PStream, n: number): Promise<void> {
  let left = n;
  while (left > 0) {
    const len = Math.min(left, CHUNK_BYTES);
    left -= len;
    if (!s.send(len === CHUNK_BYTES ? CHUNK : CHUNK.subarray(0, len))) await s.onDrain();
  }
  await s.close();
}
/* eslint-enable @typescript-eslint/no-explicit-any */

async function recv(impl: string, cert: string, key: string, total: number): Promise<void> {
  let got = 0;
  let t0 = 0n;
  let cpu0 = 0;
  const count = (n: number): void => {
    got += n;
    if (got >= total) { report(got, t0, cpu0); process.exit(0); }
  };
  const server = tls.createServer({ cert: readFileSync(cert), key: readFileSync(key) }, (sock) => {
    sock.setNoDelay(true);
    if (t0 === 0n) { t0 = process.hrtime.bigint(); cpu0 = cpuNow(); }
    if (impl === "raw") {
      sock.on("data", (b: Buffer) => count(b.length));
    } else if (impl === "capsul") {
      const sess = new MuxSession(sock, { role: "server", maxStreamWindowBytes: MUXBENCH_WINDOW_BYTES, keepaliveIntervalMs: 0 });
      sess.on("stream", (s: MuxStream) => s.on("data", (b: Buffer) => count(b.length)));
      sess.on("error", () => {});
    } else {
      void libp2pMuxer(sock, "inbound").then((m) => {
        m.addEventListener("stream", (e) => {
          (e.detail as P2PStream).addEventListener("message", (ev) => count((ev.data as Uint8Array).byteLength));
        });
      });
    }
    sock.on("error", () => {});
  });
  server.listen(0, "127.0.0.1", () => {
    process.stdout.write(`listening ${(server.address() as { port: number }).port}\n`);
  });
}

async function send(impl: string, port: number, streams: number, total: number): Promise<void> {
  const t0 = process.hrtime.bigint();
  const cpu0 = cpuNow();
  const per = Math.floor(total / streams);
  const connect = (): Promise<tls.TLSSocket> => new Promise((resolve, reject) => {
    const s = tls.connect({ host: "127.0.0.1", port, rejectUnauthorized: false }, () => resolve(s));
    s.setNoDelay(true);
    s.once("error", reject);
  });
  if (impl === "raw") {
    const socks = await Promise.all(Array.from({ length: streams }, connect));
    await Promise.all(socks.map((s) => pushBytes(s, per)));
  } else if (impl === "capsul") {
    const sock = await connect();
    const sess = new MuxSession(sock, { role: "client", maxStreamWindowBytes: MUXBENCH_WINDOW_BYTES, keepaliveIntervalMs: 0 });
    sess.on("error", () => {});
    await Promise.all(Array.from({ length: streams }, () => pushBytes(sess.open(), per)));
  } else {
    const sock = await connect();
    const m = await libp2pMuxer(sock, "outbound");
    const ss = await Promise.all(Array.from({ length: streams }, () => m.createStream()));
    await Promise.all(ss.map((s) => p2pPush(s, per)));
  }
  report(per * streams, t0, cpu0);
  // The receiver exits once it has counted everything; that closes our sockets.
  setTimeout(() => process.exit(0), 60_000).unref();
}

const [role, impl, a, b, c] = process.argv.slice(2);
const main = role === "recv" ? recv(impl, a, b, Number(c)) : send(impl, Number(a), Number(b), Number(c));
main.catch((err: Error) => {
  process.stderr.write(`mux-peer ${role} ${impl}: ${err.stack ?? err.message}\n`);
  process.exit(1);
});
