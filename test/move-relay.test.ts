/**
 * The hub's side of `capsul vm move` (gateway/moves.ts) on real tunnels: a real
 * hub, real cogs over mTLS, their real mux streams. No provisioner: each
 * target's move handler is the test's, so it can see every byte the hub lets
 * through. The whole move with QEMU is test/vm-move.test.ts.
 */
import type { Duplex } from "node:stream";
import t from "tap";
import { encodeMessage, MessageReader } from "../protocol/messages.js";
import type { MoveOffer } from "../protocol/move.js";
import { cogConfig, enrolledCog, hubConfig, startTestHub, tmpDir } from "./helpers/cluster.js";

t.setTimeout(120_000);

type Msg = Record<string, unknown> & { type: string };

/** Everything a target handler saw: the offer, and the bytes after it. */
interface Seen { offer: MoveOffer | null; bytes: number; ended: boolean }

function recorder(answer: "accept" | "refuse"): { seen: Seen; handler: (s: Duplex, o: MoveOffer, rest: Buffer) => void } {
  const seen: Seen = { offer: null, bytes: 0, ended: false };
  return {
    seen,
    handler: (s, offer, rest) => {
      seen.offer = offer;
      seen.bytes += rest.length;
      s.on("data", (d: Buffer) => { seen.bytes += d.length; });
      s.on("end", () => {
        seen.ended = true;
        if (answer === "accept") s.end(encodeMessage({ type: "move-done", vm: { name: offer.vm, got: seen.bytes } }));
      });
      s.on("error", () => {});
      s.resume(); // the client's header reader leaves the stream paused
      if (answer === "accept") s.write(encodeMessage({ type: "move-accept" }));
      else s.end(encodeMessage({ type: "move-refuse", reason: "not from you" }));
    },
  };
}

/** Bytes pushed through the hub for the throughput comment. */
const RELAY_MEASURE_BYTES = 256 * 1024 * 1024;

const sleep = (ms: number): Promise<void> => new Promise((r) => setTimeout(r, ms));

t.test("the hub relays a move only after the target consents, names the sender by its certificate, and refuses the rest", async (t) => {
  const dir = tmpDir();
  const hubCfg = hubConfig(dir, { tunnel: { keepalive_interval: "1s", keepalive_timeout: "3s", move_answer_timeout: "2s", max_moves: 1 } });
  const hub = await startTestHub(hubCfg);
  t.teardown(() => hub.close());
  const a = await enrolledCog(hubCfg, hub, cogConfig(dir, "cog-a", hub.ports.tunnel, []), "cog-a");
  t.teardown(() => a.close());
  const b = await enrolledCog(hubCfg, hub, cogConfig(dir, "cog-b", hub.ports.tunnel, []), "cog-b");
  t.teardown(() => b.close());

  const send = async (header: Msg, payload: Buffer, early: boolean): Promise<{ first: Msg | null; last: Msg | null; stream: Duplex }> => {
    const s = a.client.openMoveStream();
    s.on("error", () => {});
    const reader = new MessageReader<Msg>(s, 4096);
    // An eager (or hostile) source sends the archive with its header, before any consent.
    s.write(early ? Buffer.concat([encodeMessage(header), payload]) : encodeMessage(header));
    const first = await reader.next().catch(() => null);
    if (first?.type === "move-go" && !early) s.end(payload);
    else if (first?.type === "move-go") s.end();
    const last = first?.type === "move-go" ? await reader.next().catch(() => null) : null;
    return { first, last, stream: s };
  };
  const payload = Buffer.alloc(3 * 1024 * 1024, 7);

  await t.test("a target that refuses gets the offer and not one byte of the archive, though the source sent it at once", async (t) => {
    const r = recorder("refuse");
    b.client.setMoveHandler(r.handler);
    const { first } = await send({ type: "move", to: "cog-b", vm: "web1", bytes: payload.length }, payload, true);
    t.equal(first?.type, "move-refused");
    t.match(String(first?.reason), /cog-b refused: not from you/);
    await sleep(300);
    t.same(r.seen.offer, { type: "move-offer", from: "cog-a", vm: "web1", bytes: payload.length }, "the offer names the sender by its certificate");
    t.equal(r.seen.bytes, 0, "no archive byte reached the target");
  });

  await t.test("the sender cannot pose as another cog: `from` is the hub's, whatever the header says", async (t) => {
    const r = recorder("refuse");
    b.client.setMoveHandler(r.handler);
    await send({ type: "move", to: "cog-b", vm: "web1", bytes: 10, from: "cog-c" } as Msg, Buffer.alloc(0), false);
    t.equal(r.seen.offer?.from, "cog-a");
  });

  await t.test("a target that accepts gets the archive in full, and its verdict reaches the source", async (t) => {
    const r = recorder("accept");
    b.client.setMoveHandler(r.handler);
    const { first, last } = await send({ type: "move", to: "cog-b", vm: "web1", bytes: payload.length }, payload, false);
    t.equal(first?.type, "move-go");
    t.equal(last?.type, "move-done");
    t.same(last?.vm, { name: "web1", got: payload.length }, "every byte arrived, once");
  });

  await t.test("bytes an eager source sent before consent are delivered after it, not lost", async (t) => {
    const r = recorder("accept");
    b.client.setMoveHandler(r.handler);
    const small = Buffer.alloc(1000, 1);
    const { first, last } = await send({ type: "move", to: "cog-b", vm: "web1", bytes: small.length }, small, true);
    t.equal(first?.type, "move-go");
    t.same(last?.vm, { name: "web1", got: small.length });
  });

  await t.test("refused by the hub itself: a cog that is not connected, the sender itself, a bad header", async (t) => {
    const off = await send({ type: "move", to: "nobody", vm: "web1", bytes: 10 }, Buffer.alloc(0), false);
    t.equal(off.first?.type, "move-refused");
    t.match(String(off.first?.reason), /cog nobody is not connected to the hub/);
    const self = await send({ type: "move", to: "cog-a", vm: "web1", bytes: 10 }, Buffer.alloc(0), false);
    t.match(String(self.first?.reason), /already on cog cog-a/);
    const bad = await send({ type: "move", to: "../b", vm: "web1", bytes: 10 }, Buffer.alloc(0), false);
    t.equal(bad.first, null, "a malformed header: the stream is reset, nothing relayed");
  });

  await t.test("a target that says nothing: the hub gives up after move_answer_timeout", async (t) => {
    let offered = 0;
    b.client.setMoveHandler((s) => { offered++; s.on("error", () => {}); });
    const { first } = await send({ type: "move", to: "cog-b", vm: "web1", bytes: 10 }, Buffer.alloc(0), false);
    t.equal(offered, 1);
    t.equal(first?.type, "move-refused");
    t.match(String(first?.reason), /did not answer/);
  });

  await t.test("max_moves: a second move while one runs is refused", async (t) => {
    const r = recorder("accept");
    b.client.setMoveHandler(r.handler);
    // The first move is accepted and left open (the source has not ended it).
    const s = a.client.openMoveStream();
    s.on("error", () => {});
    const reader = new MessageReader<Msg>(s, 4096);
    s.write(encodeMessage({ type: "move", to: "cog-b", vm: "web1", bytes: 100 }));
    t.equal((await reader.next())?.type, "move-go");
    const second = await send({ type: "move", to: "cog-b", vm: "web2", bytes: 10 }, Buffer.alloc(0), false);
    t.match(String(second.first?.reason), /too many moves at once \(hub.tunnel.max_moves 1/);
    s.destroy();
    await sleep(300);
    const third = await send({ type: "move", to: "cog-b", vm: "web3", bytes: 4 }, Buffer.alloc(4), false);
    t.equal(third.first?.type, "move-go", "the slot is free again once the first move ended");
  });

  await t.test("throughput of a relayed move (a comment, no timing assertion): 256 MiB from cog-a to cog-b", async (t) => {
    const r = recorder("accept");
    b.client.setMoveHandler(r.handler);
    const total = RELAY_MEASURE_BYTES;
    const s = a.client.openMoveStream();
    s.on("error", () => {});
    const reader = new MessageReader<Msg>(s, 4096);
    s.write(encodeMessage({ type: "move", to: "cog-b", vm: "big", bytes: total }));
    t.equal((await reader.next())?.type, "move-go");
    const chunk = Buffer.alloc(256 * 1024, 3);
    const started = process.hrtime.bigint();
    for (let sent = 0; sent < total; sent += chunk.length) {
      if (!s.write(chunk)) await new Promise<void>((res) => s.once("drain", () => res()));
    }
    s.end();
    const done = await reader.next();
    const secs = Number(process.hrtime.bigint() - started) / 1e9;
    t.same(done?.vm, { name: "big", got: total }, "every byte arrived");
    t.comment(`relay throughput cog → hub → cog on loopback: ${(total / 1048576 / secs).toFixed(0)} MiB/s (${total / 1048576} MiB in ${secs.toFixed(2)} s)`);
  });

  await t.test("a cog without a move handler refuses offers", async (t) => {
    b.client.setMoveHandler(null);
    const { first } = await send({ type: "move", to: "cog-b", vm: "web1", bytes: 10 }, Buffer.alloc(0), false);
    t.match(String(first?.reason), /cog-b runs no provisioner/);
  });
});
