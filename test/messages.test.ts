/**
 * The length-prefixed message reader (protocol/messages.ts) fed chunk by chunk,
 * and the token bucket the hub paces control messages with (lib/tokenbucket.ts),
 * on a frozen clock. The attacks on the hub that use them are in
 * tunnel-dos.test.ts and control-flood.test.ts.
 */
import t from "tap";
import { PassThrough } from "node:stream";
import { ProtocolError } from "../lib/errors.js";
import { TokenBucket } from "../lib/tokenbucket.js";
import { encodeMessage, MessageReader, messageReaderStats } from "../protocol/messages.js";
import { prng } from "./helpers/prng.js";

t.test("messages split anywhere come out whole, each byte copied at most once", async (t) => {
  const msgs = Array.from({ length: 50 }, (_, i) => ({ type: "m", i, pad: "y".repeat(i * 37) }));
  const wire = Buffer.concat(msgs.map((m) => encodeMessage(m)));
  for (const mode of ["byte", "random"] as const) {
    const s = new PassThrough();
    const reader = new MessageReader<{ type: string; i: number }>(s);
    const before = messageReaderStats.copiedBytes;
    const rnd = prng(7);
    for (let off = 0; off < wire.length;) {
      const n = mode === "byte" ? 1 : 1 + Math.floor(rnd() * 300);
      s.write(wire.subarray(off, off + n));
      off += n;
    }
    s.end();
    const got: number[] = [];
    for (let m = await reader.next(); m; m = await reader.next()) got.push(m.i);
    t.same(got, msgs.map((m) => m.i), `${mode}: all messages in order`);
    t.ok(messageReaderStats.copiedBytes - before <= wire.length, `${mode}: ${messageReaderStats.copiedBytes - before} bytes copied for ${wire.length}`);
  }
});

t.test("poll() returns only what is already whole; a stream that ends mid-message is an error", async (t) => {
  const s = new PassThrough();
  const reader = new MessageReader<{ type: string }>(s);
  const one = encodeMessage({ type: "a" });
  s.write(Buffer.concat([one, one.subarray(0, 3)]));
  await new Promise((r) => setImmediate(r));
  t.same(reader.poll(), { type: "a" });
  t.equal(reader.poll(), undefined, "the second is not whole yet");
  s.end();
  await t.rejects(reader.next(), new ProtocolError("stream ended in the middle of a message"));
});

t.test("a length over the cap is refused before its bytes arrive", async (t) => {
  const s = new PassThrough();
  const reader = new MessageReader<{ type: string }>(s, 16);
  const head = Buffer.alloc(4);
  head.writeUInt32BE(17);
  s.write(head);
  await t.rejects(reader.next(), { message: "message length 17 exceeds 16" });
});

t.test("the reader stops reading once it holds a whole message nobody asked for", async (t) => {
  const s = new PassThrough({ highWaterMark: 1024 });
  const reader = new MessageReader<{ type: string }>(s, 64);
  const m = encodeMessage({ type: "x", pad: "z".repeat(40) });
  for (let i = 0; i < 20; i++) s.write(m);
  await new Promise((r) => setImmediate(r));
  t.ok(reader.bufferedBytes >= 68 && reader.bufferedBytes < 20 * m.length, `the reader holds ${reader.bufferedBytes} bytes, not all ${20 * m.length}`);
  t.ok(s.isPaused(), "and paused its stream");
  let n = 0;
  s.end();
  while (await reader.next()) n++;
  t.equal(n, 20, "nothing lost: every message is read once asked for");
});

t.test("token bucket: burst, then the rate", async (t) => {
  let now = 0;
  const b = new TokenBucket(2, 3, () => now);
  t.ok(b.tryTake() && b.tryTake() && b.tryTake(), "the burst");
  t.notOk(b.tryTake(), "then empty");
  t.equal(b.waitMs(), 500, "one token every 500 ms at 2/s");
  now += 499;
  t.notOk(b.tryTake());
  now += 1;
  t.ok(b.tryTake());
  now += 10_000;
  t.equal(b.waitMs(), 0);
  t.ok(b.tryTake() && b.tryTake() && b.tryTake(), "refilled up to the burst");
  t.notOk(b.tryTake(), "and no more");
  t.throws(() => new TokenBucket(0, 1), RangeError);
});
