/**
 * Big transfers whose integrity a test checks by SHA-256, and that a test can hold
 * in flight: the visitor reads part of it, stops reading (every hop's buffers fill
 * and the stream stays open), the test does something to the hub or the cog, then
 * the visitor reads the rest.
 */
import { createHash } from "node:crypto";
import net from "node:net";
import { closeServer, listen } from "./cluster.js";
import { prng } from "./prng.js";
import { WAIT_MS } from "./procs.js";

/** One chunk of the stream: every chunk differs (a counter, then seeded noise), so a lost, repeated or swapped chunk changes the digest. */
export const BULK_CHUNK_BYTES = 1024 * 1024;

export interface BulkBackend {
  port: number;
  /** SHA-256 (hex) of what every connection receives. */
  sha256: string;
  totalBytes: number;
  /** Connections accepted so far. */
  readonly connections: number;
  close(): Promise<void>;
}

/** A TCP backend that sends `totalBytes` (a multiple of 1 MiB) to each connection, then ends it. */
export async function bulkBackend(totalBytes: number, seed = 1): Promise<BulkBackend> {
  if (totalBytes % BULK_CHUNK_BYTES !== 0) throw new Error("bulkBackend: totalBytes must be a multiple of 1 MiB");
  const noise = Buffer.alloc(BULK_CHUNK_BYTES);
  const rnd = prng(seed);
  for (let i = 0; i < noise.length; i += 4) noise.writeUInt32LE(Math.floor(rnd() * 2 ** 32), i);
  const chunks = totalBytes / BULK_CHUNK_BYTES;
  const chunk = (i: number): Buffer => {
    const c = Buffer.from(noise);
    c.writeUInt32BE(i, 0);
    return c;
  };
  const h = createHash("sha256");
  for (let i = 0; i < chunks; i++) h.update(chunk(i));
  const sha256 = h.digest("hex");
  let connections = 0;
  const server = net.createServer((sock) => {
    connections++;
    sock.on("error", () => {});
    let i = 0;
    const pump = (): void => {
      while (i < chunks) {
        if (!sock.write(chunk(i++))) { sock.once("drain", pump); return; }
      }
      sock.end();
    };
    pump();
  });
  const port = await listen(server);
  return {
    port, sha256, totalBytes,
    get connections() { return connections; },
    close: () => closeServer(server),
  };
}

export interface BulkResult { bytes: number; sha256: string; error: string | null }

/** A visitor reading a bulk transfer, hashing as it goes. */
export class BulkReader {
  readonly socket: net.Socket;
  private readonly hash = createHash("sha256");
  bytes = 0;
  error: string | null = null;
  /** Settles when the connection has closed, however it ended. */
  readonly done: Promise<BulkResult>;

  constructor(port: number, host = "127.0.0.1") {
    this.socket = net.connect({ port, host });
    this.socket.on("data", (c: Buffer) => {
      this.bytes += c.length;
      this.hash.update(c);
    });
    this.socket.on("error", (err: NodeJS.ErrnoException) => { this.error = err.code ?? err.message; });
    this.done = new Promise((resolve) => {
      this.socket.once("close", () => resolve({ bytes: this.bytes, sha256: this.hash.digest("hex"), error: this.error }));
    });
  }

  /** Reads until at least `bytes` arrived, then stops reading: the transfer is now held in flight. */
  pauseAfter(bytes: number, timeoutMs = WAIT_MS): Promise<void> {
    return new Promise((resolve, reject) => {
      const timer = setTimeout(() => reject(new Error(`bulk reader: ${this.bytes} of the ${bytes} bytes wanted within ${timeoutMs} ms (error: ${this.error})`)), timeoutMs);
      const check = (): void => {
        if (this.bytes < bytes) return;
        this.socket.pause();
        this.socket.off("data", check);
        clearTimeout(timer);
        resolve();
      };
      this.socket.on("data", check);
      this.socket.once("close", () => { clearTimeout(timer); reject(new Error(`bulk reader: closed after ${this.bytes} bytes (error: ${this.error})`)); });
      check();
    });
  }

  resume(): void {
    this.socket.resume();
  }

  destroy(): void {
    this.socket.destroy();
  }
}
