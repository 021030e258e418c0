/**
 * Child process: opens N TLS visitor connections to 127.0.0.1:PORT with SNI =
 * BENCH_HOST, makes one keep-alive GET /small on each (so every connection is a fully
 * proxied one, not just a handshake), prints "ready N", and holds them until SIGTERM.
 * Usage: node idle-holder.js PORT N [CONCURRENCY]
 */
import tls from "node:tls";
import { BENCH_HOST, SMALL_BYTES } from "./backend.js";

const HOLDER_CONNECT_TIMEOUT_MS = 30_000;

const port = Number(process.argv[2]);
const n = Number(process.argv[3]);
const concurrency = Number(process.argv[4] ?? 64);
const socks: tls.TLSSocket[] = [];

function one(): Promise<void> {
  return new Promise((resolve, reject) => {
    const s = tls.connect({ host: "127.0.0.1", port, servername: BENCH_HOST, rejectUnauthorized: false });
    const timer = setTimeout(() => { s.destroy(); reject(new Error("idle-holder: connection timed out")); }, HOLDER_CONNECT_TIMEOUT_MS);
    let got = "";
    s.setEncoding("latin1");
    s.on("secureConnect", () => s.write(`GET /small HTTP/1.1\r\nHost: ${BENCH_HOST}\r\n\r\n`));
    const onData = (d: string): void => {
      got += d;
      const head = got.indexOf("\r\n\r\n");
      if (head >= 0 && got.length - head - 4 >= SMALL_BYTES) {
        clearTimeout(timer);
        s.off("data", onData);
        socks.push(s);
        resolve();
      }
    };
    s.on("data", onData);
    s.on("error", (err) => { clearTimeout(timer); reject(err); });
  });
}

async function main(): Promise<void> {
  let next = 0;
  const worker = async (): Promise<void> => {
    while (next < n) {
      next++;
      await one();
    }
  };
  await Promise.all(Array.from({ length: Math.min(concurrency, n) }, worker));
  process.stdout.write(`ready ${socks.length}\n`);
}

process.on("SIGTERM", () => {
  for (const s of socks) s.destroy();
  process.exit(0);
});
main().catch((err: Error) => {
  process.stderr.write(`idle-holder failed after ${socks.length} connections: ${err.message}\n`);
  process.exit(1);
});
