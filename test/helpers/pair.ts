/**
 * Connected Duplex pairs for running one test body over several transports:
 * an in-memory pair (pure JS, asynchronous delivery, real backpressure), loopback TCP,
 * and loopback TLS 1.3 with a throwaway self-signed certificate made by openssl.
 */
import { execFile } from "node:child_process";
import { mkdtemp, readFile, rm } from "node:fs/promises";
import net from "node:net";
import os from "node:os";
import path from "node:path";
import { Duplex } from "node:stream";
import tls from "node:tls";
import { promisify } from "node:util";

const execFileP = promisify(execFile);

export type PairKind = "memory" | "tcp" | "tls";
export const PAIR_KINDS: readonly PairKind[] = ["memory", "tcp", "tls"];

export interface DuplexPair {
  a: Duplex;
  b: Duplex;
  /** Destroys both ends (and the listener, for sockets). */
  close(): Promise<void>;
}

/** How many bytes one in-memory end buffers on the reading side before the writer waits. */
export const MEMORY_PAIR_HIGH_WATER_MARK_BYTES = 64 * 1024;

/**
 * One end of an in-memory pipe. A write is delivered to the peer on a later turn of the
 * event loop (like a socket, never re-entrantly) and its callback is withheld while the
 * peer's readable buffer is above its high-water mark, so backpressure is real.
 */
class MemoryEnd extends Duplex {
  peer!: MemoryEnd;
  private waitingWriteCb: ((err?: Error | null) => void) | null = null;

  constructor() {
    super({ allowHalfOpen: false, highWaterMark: MEMORY_PAIR_HIGH_WATER_MARK_BYTES });
  }

  override _write(chunk: Buffer, _enc: BufferEncoding, cb: (err?: Error | null) => void): void {
    setImmediate(() => {
      const peer = this.peer;
      if (peer.destroyed || peer.readableEnded) return cb(Object.assign(new Error("memory pair: peer closed"), { code: "EPIPE" }));
      if (peer.push(chunk)) cb();
      else peer.waitingWriteCb = cb;
    });
  }

  override _read(): void {
    const cb = this.waitingWriteCb;
    if (cb) {
      this.waitingWriteCb = null;
      cb();
    }
  }

  override _final(cb: (err?: Error | null) => void): void {
    setImmediate(() => {
      if (!this.peer.destroyed) this.peer.push(null);
      cb();
    });
  }

  override _destroy(err: Error | null, cb: (err?: Error | null) => void): void {
    const waiting = this.waitingWriteCb;
    this.waitingWriteCb = null;
    if (waiting) waiting(new Error("memory pair: closed"));
    const peer = this.peer;
    // Like a socket: the other side sees EOF, then closes (allowHalfOpen: false).
    setImmediate(() => {
      if (!peer.destroyed && !peer.readableEnded) peer.push(null);
    });
    cb(err);
  }
}

export function memoryPair(): DuplexPair {
  const a = new MemoryEnd();
  const b = new MemoryEnd();
  a.peer = b;
  b.peer = a;
  return {
    a,
    b,
    async close() {
      a.destroy();
      b.destroy();
    },
  };
}

async function tcpLikePair(
  listen: (onConn: (s: net.Socket) => void) => net.Server,
  connect: (port: number) => net.Socket,
  connectEvent: string,
): Promise<DuplexPair> {
  let resolveServerSide!: (s: net.Socket) => void;
  const serverSide = new Promise<net.Socket>((r) => (resolveServerSide = r));
  const server = listen((s) => resolveServerSide(s));
  await new Promise<void>((resolve, reject) => {
    server.once("error", reject);
    server.listen(0, "127.0.0.1");
    server.once("listening", () => resolve());
  });
  const port = (server.address() as net.AddressInfo).port;
  const client = connect(port);
  await new Promise<void>((resolve, reject) => {
    client.once("error", reject);
    client.once(connectEvent, () => {
      client.off("error", reject);
      resolve();
    });
  });
  const b = await serverSide;
  return {
    a: client,
    b,
    async close() {
      client.destroy();
      b.destroy();
      await new Promise<void>((r) => server.close(() => r()));
    },
  };
}

export function tcpPair(): Promise<DuplexPair> {
  return tcpLikePair(
    (onConn) => net.createServer({ noDelay: true }, onConn),
    (port) => net.connect({ port, host: "127.0.0.1", noDelay: true }),
    "connect",
  );
}

export interface TestCert {
  key: Buffer;
  cert: Buffer;
}

let certPromise: Promise<TestCert> | null = null;

/** A throwaway self-signed P-256 certificate for "localhost"/127.0.0.1, made once per process. */
export function testCert(): Promise<TestCert> {
  certPromise ??= (async () => {
    const dir = await mkdtemp(path.join(os.tmpdir(), "capsul-testcert-"));
    try {
      const keyPath = path.join(dir, "key.pem");
      const certPath = path.join(dir, "cert.pem");
      await execFileP("openssl", [
        "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes",
        "-keyout", keyPath, "-out", certPath, "-days", "2", "-subj", "/CN=localhost",
        "-addext", "subjectAltName=DNS:localhost,IP:127.0.0.1",
      ]);
      return { key: await readFile(keyPath), cert: await readFile(certPath) };
    } finally {
      await rm(dir, { recursive: true, force: true });
    }
  })();
  return certPromise;
}

export async function tlsPair(): Promise<DuplexPair> {
  const { key, cert } = await testCert();
  return tcpLikePair(
    (onConn) => tls.createServer({ key, cert, minVersion: "TLSv1.3" }, onConn),
    (port) => tls.connect({ port, host: "127.0.0.1", servername: "localhost", ca: cert, minVersion: "TLSv1.3" }),
    "secureConnect",
  );
}

export function duplexPair(kind: PairKind): Promise<DuplexPair> {
  switch (kind) {
    case "memory":
      return Promise.resolve(memoryPair());
    case "tcp":
      return tcpPair();
    case "tls":
      return tlsPair();
  }
}
