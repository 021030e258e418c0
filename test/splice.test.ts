/**
 * protocol/splice.ts on real loopback sockets: every byte both ways (SHA-256),
 * half-close, the per-tick batching, and the queue bound that pauses a source
 * whose destination does not drain.
 */
import t from "tap";
import { createHash, randomBytes } from "node:crypto";
import { once } from "node:events";
import net from "node:net";
import { splice, SPLICE_MAX_QUEUED_BYTES } from "../protocol/splice.js";

const MiB = 1024 * 1024;

/** A connected loopback pair: `client` is ours, `server` is the accepted side. */
async function socketPair(): Promise<{ client: net.Socket; server: net.Socket; close(): void }> {
  const srv = net.createServer({ allowHalfOpen: true });
  srv.listen(0, "127.0.0.1");
  await once(srv, "listening");
  const port = (srv.address() as net.AddressInfo).port;
  const accepted = once(srv, "connection") as Promise<[net.Socket]>;
  const client = net.connect({ port, host: "127.0.0.1", allowHalfOpen: true });
  const [server] = await accepted;
  await once(client, "connect");
  srv.close();
  return { client, server, close: () => { client.destroy(); server.destroy(); } };
}

function sha256(bufs: Buffer[]): string {
  const h = createHash("sha256");
  for (const b of bufs) h.update(b);
  return h.digest("hex");
}

function collect(s: net.Socket): Promise<Buffer[]> {
  const got: Buffer[] = [];
  s.on("data", (c: Buffer) => got.push(c));
  return once(s, "end").then(() => got);
}

t.test("visitor <-> splice <-> backend: 8 MiB each way, half-close first, SHA-256 intact", async (t) => {
  // visitor ---- (a) [splice] (b) ---- backend
  const front = await socketPair();
  const back = await socketPair();
  t.teardown(() => { front.close(); back.close(); });
  const closed = new Promise<Error | undefined>((r) => splice(front.server, back.client, r));
  const up = randomBytes(8 * MiB);
  const down = randomBytes(8 * MiB);
  const backendGot = collect(back.server);
  const visitorGot = collect(front.client);
  // The visitor sends everything and half-closes before the backend answers a byte.
  front.client.end(up);
  const fromVisitor = await backendGot;
  t.equal(sha256(fromVisitor), sha256([up]), "backend got the visitor's bytes, then its FIN");
  back.server.end(down);
  const fromBackend = await visitorGot;
  t.equal(sha256(fromBackend), sha256([down]), "the visitor still read the whole answer after its own FIN");
  t.equal(await closed, undefined, "clean close, no error");
});

t.test("a destination that does not drain pauses the source at the queue bound; nothing is lost", async (t) => {
  const front = await socketPair();
  const back = await socketPair();
  t.teardown(() => { front.close(); back.close(); });
  splice(front.server, back.client);
  back.server.pause(); // the backend reads nothing
  const payload = randomBytes(32 * MiB);
  let written = 0;
  const writer = (async () => {
    for (let off = 0; off < payload.length; off += 64 * 1024) {
      written = off;
      if (!front.client.write(payload.subarray(off, off + 64 * 1024))) await once(front.client, "drain");
    }
    front.client.end();
  })();
  // Kernel buffers fill, then splice's queue; each turn of the loop moves bytes until it pauses.
  for (let turns = 0; !front.server.isPaused() && turns < 1_000_000; turns++) await new Promise((r) => setImmediate(r));
  t.ok(front.server.isPaused(), "splice paused the source");
  const MAX_READ_BYTES = 64 * 1024; // one socket read: the most that can land after the bound is crossed
  t.ok(back.client.writableLength <= SPLICE_MAX_QUEUED_BYTES + MAX_READ_BYTES,
    `queued in splice's destination: ${back.client.writableLength} bytes (bound ${SPLICE_MAX_QUEUED_BYTES} + one read)`);
  t.ok(written < payload.length, "the visitor is held back too");
  const got = collect(back.server);
  back.server.resume();
  await writer;
  t.equal(sha256(await got), sha256([payload]), "every byte arrives once the backend reads");
});

t.test("a source whose FIN was read before splice() still half-closes the destination", async (t) => {
  // As on the cog: the header reader consumed the visitor's last bytes and its FIN.
  const front = await socketPair();
  const back = await socketPair();
  t.teardown(() => { front.close(); back.close(); });
  front.client.end("hello");
  front.server.resume();
  await once(front.server, "end");
  t.ok(front.server.readableEnded, "the source already ended");
  const backendGot = collect(back.server);
  const closed = new Promise<Error | undefined>((r) => splice(front.server, back.client, r));
  t.same(Buffer.concat(await backendGot), Buffer.alloc(0), "the backend sees the FIN");
  const visitorGot = collect(front.client);
  back.server.end("bye");
  t.equal(Buffer.concat(await visitorGot).toString(), "bye", "and the answer still flows back");
  t.equal(await closed, undefined, "clean close");
});
