/**
 * A TCP forwarder that adds latency without limiting bandwidth: every chunk read from
 * one side is written to the other DELAY ms later (per direction, so RTT = 2 x DELAY),
 * in order; end-of-stream is delayed the same way. Reading pauses only when more than
 * RELAY_MAX_IN_FLIGHT_BYTES are waiting, which at 25 ms is ~2.6 GB/s: far above what
 * loopback TLS moves here, so the relay delays but does not throttle.
 * Usage (as a process): node delay-relay.js TARGET_HOST:PORT DELAY_MS  -> prints "relay PORT"
 */
import net from "node:net";
import { fileURLToPath } from "node:url";

export const RELAY_MAX_IN_FLIGHT_BYTES = 64 * 1024 * 1024;

function pipeDelayed(src: net.Socket, dst: net.Socket, delayMs: number): void {
  let inFlight = 0;
  let paused = false;
  // Timers of equal duration fire in insertion order (Node keeps one list per duration),
  // so chunks stay in order.
  src.on("data", (chunk: Buffer) => {
    inFlight += chunk.length;
    if (inFlight > RELAY_MAX_IN_FLIGHT_BYTES && !paused) { paused = true; src.pause(); }
    setTimeout(() => {
      inFlight -= chunk.length;
      if (!dst.destroyed) dst.write(chunk);
      if (paused && inFlight < RELAY_MAX_IN_FLIGHT_BYTES / 2 && dst.writableLength < RELAY_MAX_IN_FLIGHT_BYTES) {
        paused = false;
        src.resume();
      }
    }, delayMs);
  });
  src.on("end", () => setTimeout(() => { if (!dst.destroyed) dst.end(); }, delayMs));
  src.on("error", () => setTimeout(() => dst.destroy(), delayMs));
  src.on("close", () => setTimeout(() => { if (!dst.writableLength) dst.destroy(); }, delayMs + 1000));
}

export interface DelayRelay {
  port: number;
  close(): Promise<void>;
}

export function startDelayRelay(targetHost: string, targetPort: number, delayMs: number): Promise<DelayRelay> {
  const conns = new Set<net.Socket>();
  const server = net.createServer({ allowHalfOpen: true }, (a) => {
    const b = net.connect({ host: targetHost, port: targetPort, allowHalfOpen: true });
    a.setNoDelay(true);
    b.setNoDelay(true);
    conns.add(a); conns.add(b);
    a.on("close", () => conns.delete(a));
    b.on("close", () => conns.delete(b));
    pipeDelayed(a, b, delayMs);
    pipeDelayed(b, a, delayMs);
  });
  return new Promise((resolve, reject) => {
    server.on("error", reject);
    server.listen(0, "127.0.0.1", () => {
      resolve({
        port: (server.address() as net.AddressInfo).port,
        close: () => new Promise<void>((r) => { for (const c of conns) c.destroy(); server.close(() => r()); }),
      });
    });
  });
}

if (process.argv[1] === fileURLToPath(import.meta.url)) {
  const [host, port] = (process.argv[2] ?? "").split(":");
  const delay = Number(process.argv[3] ?? 25);
  startDelayRelay(host, Number(port), delay).then((r) => process.stdout.write(`relay ${r.port}\n`), (err: Error) => {
    process.stderr.write(`delay-relay: ${err.message}\n`);
    process.exit(1);
  });
  process.on("SIGTERM", () => process.exit(0));
}
