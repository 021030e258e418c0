import t from "tap";
import { createHash, randomBytes } from "node:crypto";
import { once } from "node:events";
import net from "node:net";
import type { Duplex } from "node:stream";
import { MuxSession, type MuxStream } from "../protocol/mux.js";
import { runYamuxref } from "./helpers/yamuxref.js";

const MiB = 1024 * 1024;
const STREAMS = 64;
const BYTES = 4 * MiB;
const REF_OPENS = 16;

function echo(s: Duplex): void {
  s.on("error", () => {});
  s.pipe(s);
}

/** Sends `payload` on a fresh stream, half-closes, and hashes what comes back. */
async function roundTrip(session: MuxSession, payload: Buffer): Promise<string> {
  const s = session.open();
  const h = createHash("sha256");
  const done = new Promise<void>((resolve, reject) => {
    s.on("data", (c: Buffer) => h.update(c));
    s.once("end", resolve);
    s.once("error", reject);
  });
  // Varying write sizes, with backpressure.
  for (let off = 0, i = 0; off < payload.length; i++) {
    const n = Math.min(payload.length - off, 1 + ((i * 7919) % (256 * 1024)));
    if (!s.write(payload.subarray(off, off + n))) await once(s, "drain");
    off += n;
  }
  s.end();
  await done;
  return h.digest("hex");
}

function connect(port: number): Promise<net.Socket> {
  return new Promise((resolve, reject) => {
    const c = net.connect({ port, host: "127.0.0.1", noDelay: true });
    c.once("error", reject);
    c.once("connect", () => resolve(c));
  });
}

for (const ourRole of ["client", "server"] as const) {
  const refRole = ourRole === "client" ? "server" : "client";
  t.test(`we dial as yamux ${ourRole}; the reference serves as ${refRole}`, async (t) => {
    const ref = await runYamuxref([
      "serve", "-listen", "127.0.0.1:0", "-role", refRole, "-open", String(REF_OPENS), "-bytes", String(BYTES),
    ]);
    t.teardown(() => ref.kill());
    const [, port] = await ref.waitLine(/^ready addr=127\.0\.0\.1:(\d+)/);
    const conn = await connect(Number(port));
    t.teardown(() => conn.destroy());
    const session = new MuxSession(conn, { role: ourRole });
    t.teardown(() => session.destroy());
    let accepted = 0;
    session.on("stream", (s: MuxStream) => {
      accepted++;
      echo(s);
    });
    const payloads = Array.from({ length: STREAMS }, () => randomBytes(BYTES));
    const hashes = await Promise.all(payloads.map((p) => roundTrip(session, p)));
    let ok = 0;
    hashes.forEach((h, i) => {
      if (h === createHash("sha256").update(payloads[i]!).digest("hex")) ok++;
      else t.fail(`stream ${i}: echo differs`);
    });
    t.equal(ok, STREAMS, `${STREAMS} streams x ${BYTES / MiB} MiB echoed intact by hashicorp/yamux`);
    const [, refOk, refBad] = await ref.waitLine(/^opened streams: ok=(\d+) bad=(\d+)/);
    t.equal(Number(refOk), REF_OPENS, "every stream the reference opened towards us was echoed intact");
    t.equal(Number(refBad), 0);
    t.equal(accepted, REF_OPENS);
    // The reference's last FINs may still be in flight when it prints: ping round trips order them.
    for (let i = 0; i < 1000 && session.streamCount > 0; i++) await session.ping();
    t.equal(session.streamCount, 0, "all ids freed");
  });
}

for (const ourRole of ["server", "client"] as const) {
  const refRole = ourRole === "server" ? "client" : "server";
  t.test(`the reference dials as yamux ${refRole}; we listen as ${ourRole} and echo`, async (t) => {
    const server = net.createServer({ noDelay: true });
    t.teardown(() => new Promise<void>((r) => server.close(() => r())));
    const sessionP = new Promise<MuxSession>((resolve) => {
      server.once("connection", (conn: net.Socket) => {
        const session = new MuxSession(conn, { role: ourRole });
        session.on("stream", echo);
        resolve(session);
      });
    });
    server.listen(0, "127.0.0.1");
    await once(server, "listening");
    const port = (server.address() as net.AddressInfo).port;
    const ref = await runYamuxref([
      "dial", "-addr", `127.0.0.1:${port}`, "-role", refRole, "-streams", String(STREAMS), "-bytes", String(BYTES),
    ]);
    t.teardown(() => ref.kill());
    const session = await sessionP;
    t.teardown(() => session.destroy());
    const closed = once(session, "close");
    const [, passed, failed] = await ref.waitLine(/^opened streams: ok=(\d+) bad=(\d+)/);
    t.equal(Number(passed), STREAMS, `reference: ${passed} passed`);
    t.equal(Number(failed), 0, `reference: ${failed} failed`);
    const { code } = await ref.exited;
    t.equal(code, 0, "reference exited 0");
    await closed;
    t.equal(session.closed, true, "our session closed when the reference hung up");
  });
}

t.test("the reference notices an echo that differs by one byte (its check can fail)", async (t) => {
  const FLIP_AT = 300_000;
  const CORRUPT_STREAMS = 4;
  const server = net.createServer({ noDelay: true });
  t.teardown(() => new Promise<void>((r) => server.close(() => r())));
  server.on("connection", (conn: net.Socket) => {
    const session = new MuxSession(conn, { role: "server" });
    session.on("stream", (s: MuxStream) => {
      s.on("error", () => {});
      let off = 0;
      s.on("data", (c: Buffer) => {
        if (off <= FLIP_AT && FLIP_AT < off + c.length) {
          c = Buffer.from(c);
          c[FLIP_AT - off] ^= 0x01;
        }
        off += c.length;
        s.write(c);
      });
      s.on("end", () => s.end());
    });
  });
  server.listen(0, "127.0.0.1");
  await once(server, "listening");
  const port = (server.address() as net.AddressInfo).port;
  const ref = await runYamuxref([
    "dial", "-addr", `127.0.0.1:${port}`, "-streams", String(CORRUPT_STREAMS), "-bytes", String(MiB),
  ]);
  t.teardown(() => ref.kill());
  const [, passed, failed] = await ref.waitLine(/^opened streams: ok=(\d+) bad=(\d+)/);
  t.equal(Number(passed), 0, "no stream passed");
  t.equal(Number(failed), CORRUPT_STREAMS, "every corrupted stream was caught");
  t.match(ref.lines.join("\n"), new RegExp(`echo differs at byte ${FLIP_AT} of ${MiB}`), "at the flipped byte");
  const { code } = await ref.exited;
  t.equal(code, 1, "the reference exits 1");
});
