import t, { type Test } from "tap";
import { createHash, randomBytes } from "node:crypto";
import { once } from "node:events";
import type { Duplex, Readable, Writable } from "node:stream";
import { ProtocolError } from "../lib/errors.js";
import { Flag, FrameDecoder, FrameType, encodeHeader, type FrameHeader } from "../protocol/frame.js";
import { MUX_INITIAL_WINDOW_BYTES, MuxSession, type MuxOptions, type MuxStream } from "../protocol/mux.js";
import { PAIR_KINDS, duplexPair, memoryPair, type PairKind } from "./helpers/pair.js";

const KiB = 1024;
const MiB = 1024 * 1024;

/** Random bytes that every stream's content is cut from (cheap, yet different per stream). */
const POOL = randomBytes(4 * MiB);

function rng(seed: number): () => number {
  let x = (seed * 2654435761) >>> 0 || 1;
  return () => {
    x ^= x << 13;
    x >>>= 0;
    x ^= x >>> 17;
    x ^= x << 5;
    x >>>= 0;
    return x / 0x1_0000_0000;
  };
}

/** The chunks stream `seed` writes: random sizes 1 B..128 KiB at random offsets of POOL. */
function* chunksFor(seed: number, total: number): Generator<Buffer> {
  const r = rng(seed);
  for (let left = total; left > 0; ) {
    const n = Math.min(left, 1 + Math.floor(r() * 128 * KiB));
    const off = Math.floor(r() * (POOL.length - n));
    yield POOL.subarray(off, off + n);
    left -= n;
  }
}

function expectedHash(seed: number, total: number): string {
  const h = createHash("sha256");
  for (const c of chunksFor(seed, total)) h.update(c);
  return h.digest("hex");
}

/** Writes with backpressure (waits for 'drain'), then end(). */
async function writeAll(s: Writable, seed: number, total: number): Promise<void> {
  for (const c of chunksFor(seed, total)) {
    if (!s.write(c)) await once(s, "drain");
  }
  s.end();
}

function hashReadable(s: Readable): Promise<{ hex: string; bytes: number }> {
  return new Promise((resolve, reject) => {
    const h = createHash("sha256");
    let bytes = 0;
    s.on("data", (c: Buffer) => {
      h.update(c);
      bytes += c.length;
    });
    s.once("end", () => resolve({ hex: h.digest("hex"), bytes }));
    s.once("error", reject);
  });
}

function readAll(s: Readable): Promise<Buffer> {
  return new Promise((resolve, reject) => {
    const parts: Buffer[] = [];
    s.on("data", (c: Buffer) => parts.push(c));
    s.once("end", () => resolve(Buffer.concat(parts)));
    s.once("error", reject);
  });
}

function echo(s: Duplex): void {
  s.on("error", () => {});
  s.pipe(s);
}

interface Sessions {
  client: MuxSession;
  server: MuxSession;
  close(): Promise<void>;
}

async function sessions(kind: PairKind, clientOpts: Partial<MuxOptions> = {}, serverOpts: Partial<MuxOptions> = {}): Promise<Sessions> {
  const pair = await duplexPair(kind);
  const client = new MuxSession(pair.a, { keepaliveIntervalMs: 0, ...clientOpts, role: "client" });
  const server = new MuxSession(pair.b, { keepaliveIntervalMs: 0, ...serverOpts, role: "server" });
  return {
    client,
    server,
    async close() {
      client.destroy();
      server.destroy();
      await pair.close();
    },
  };
}

/** Round trips until `cond()` holds: progress is measured in pings, never in wall time. */
async function untilPing(session: MuxSession, cond: () => boolean, maxRoundTrips = 10_000): Promise<void> {
  for (let i = 0; i < maxRoundTrips && !cond(); i++) await session.ping();
  if (!cond()) throw new Error(`condition not reached after ${maxRoundTrips} ping round trips`);
}

function body(kind: PairKind) {
  return async (t: Test) => {
    t.test("128 concurrent streams, 2 MiB each way, checked by SHA-256", async (t) => {
      const N = 128;
      const BYTES = 2 * MiB;
      const { client, server, close } = await sessions(kind);
      t.teardown(close);
      const serverGot = new Map<number, Promise<{ hex: string; bytes: number }>>();
      server.on("stream", (s: MuxStream) => {
        const rx = hashReadable(s);
        serverGot.set(s.id, rx);
        writeAll(s, 100_000 + s.id, BYTES).catch(() => {});
      });
      const results = await Promise.all(
        Array.from({ length: N }, async () => {
          const s = client.open();
          const [rx] = await Promise.all([hashReadable(s), writeAll(s, s.id, BYTES)]);
          return { id: s.id, rx };
        }),
      );
      let ok = 0;
      for (const { id, rx } of results) {
        const up = await serverGot.get(id)!;
        if (
          rx.bytes === BYTES && up.bytes === BYTES &&
          rx.hex === expectedHash(100_000 + id, BYTES) && up.hex === expectedHash(id, BYTES)
        ) ok++;
        else t.fail(`stream ${id}: up ${up.bytes} B, down ${rx.bytes} B, hashes differ`);
      }
      t.equal(ok, N, "every stream's bytes arrived intact both ways");
      await untilPing(client, () => client.streamCount === 0 && server.streamCount === 0);
      t.equal(client.streamCount, 0, "client freed all ids");
      t.equal(server.streamCount, 0, "server freed all ids");
    });

    t.test("half-close: client ends, then reads the reply", async (t) => {
      const { client, server, close } = await sessions(kind);
      t.teardown(close);
      server.on("stream", async (s: MuxStream) => {
        const req = await readAll(s); // only resolves on the client's FIN
        s.end(Buffer.concat([Buffer.from("reply to: "), req]));
      });
      const s = client.open();
      s.end("question");
      t.equal((await readAll(s)).toString(), "reply to: question");
      // And the other way: the server ends first, the client keeps writing.
      const s2 = client.open();
      const [srv] = (await once(server, "stream")) as [MuxStream];
      srv.end("early");
      const early = await readAll(s2);
      t.equal(early.toString(), "early", "client saw the server's FIN");
      const late = readAll(srv);
      s2.end("still writing after the peer's FIN");
      t.equal((await late).toString(), "still writing after the peer's FIN");
      await untilPing(client, () => client.streamCount === 0 && server.streamCount === 0);
    });

    t.test("RST on one stream leaves the others intact", async (t) => {
      const { client, server, close } = await sessions(kind);
      t.teardown(close);
      const serverErrors = new Map<number, Error>();
      const serverStreams = new Map<number, MuxStream>();
      server.on("stream", (s: MuxStream) => {
        serverStreams.set(s.id, s);
        s.on("error", (e) => serverErrors.set(s.id, e));
        if (s.id !== 7) s.pipe(s);
      });
      const streams = [client.open(), client.open(), client.open(), client.open()]; // ids 1, 3, 5, 7
      const clientErrors = new Map<number, Error>();
      for (const s of streams) {
        s.on("error", (e) => clientErrors.set(s.id, e));
        s.write("hello");
      }
      await untilPing(client, () => serverStreams.size === 4);
      streams[1]!.destroy(); // client resets 3
      serverStreams.get(7)!.destroy(); // server resets 7
      await untilPing(client, () => serverErrors.has(3) && clientErrors.has(7));
      t.match(serverErrors.get(3), { code: "ECONNRESET" }, "server side of 3 reset");
      t.match(clientErrors.get(7), { code: "ECONNRESET", message: /reset by peer/ }, "client side of 7 reset");
      const survivors = [streams[0]!, streams[2]!];
      const got = await Promise.all(
        survivors.map(async (s) => {
          const rx = hashReadable(s);
          await writeAll(s, s.id, MiB);
          return rx;
        }),
      );
      const h = (seed: number) => {
        const hash = createHash("sha256").update("hello");
        for (const c of chunksFor(seed, MiB)) hash.update(c);
        return hash.digest("hex");
      };
      t.same(got.map((g) => g.hex), [h(1), h(5)], "streams 1 and 5 echo intact");
      t.equal(clientErrors.size, 1);
      await untilPing(client, () => client.streamCount === 0 && server.streamCount === 0);
    });

    t.test("a paused reader holds at most one window; the sender's callbacks stop", async (t) => {
      const W = MiB;
      const CHUNK = 64 * KiB;
      const TOTAL = 4 * W;
      const { client, server, close } = await sessions(kind, { maxStreamWindowBytes: W }, { maxStreamWindowBytes: W });
      t.teardown(close);
      const accepted = once(server, "stream") as Promise<[MuxStream]>;
      const s = client.open();
      s.on("error", () => {});
      // One write at a time, the next only from the previous write's callback: the
      // callbacks themselves show where the sender is held back.
      let acked = 0;
      const h = createHash("sha256");
      const writeNext = (i: number): void => {
        if (i === TOTAL / CHUNK) return void s.end();
        const c = POOL.subarray(i * 1000, i * 1000 + CHUNK);
        h.update(c);
        s.write(c, () => {
          acked += CHUNK;
          writeNext(i + 1);
        });
      };
      writeNext(0);
      const [rs] = await accepted;
      rs.pause(); // nobody reads
      await untilPing(client, () => rs.readableLength >= W);
      t.equal(rs.readableLength, W, "receiver buffered exactly one window");
      t.equal(acked, W, "sender framed exactly one window; the next write's callback is withheld");
      for (let i = 0; i < 20; i++) await client.ping(); // plenty of chances to misbehave
      t.ok(rs.readableLength <= W, `still at most one window buffered (${rs.readableLength})`);
      t.equal(acked, W, "still no further write callbacks");
      const rx = hashReadable(rs);
      rs.resume();
      const got = await rx;
      t.equal(got.bytes, TOTAL);
      t.equal(got.hex, h.digest("hex"), "everything arrives once the reader resumes");
      t.equal(acked, TOTAL);
    });

    t.test("window auto-tuning: a fast reader's window doubles up to maxAutoWindowBytes, a stalled one never grows", async (t) => {
      const W = MUX_INITIAL_WINDOW_BYTES;
      const MAX = 4 * W;
      // A frozen clock makes every RTT sample 0 and every epoch take 0 ms: "drained within
      // 4 RTTs" always holds once an RTT is known, so growth depends on consumption alone.
      const frozen = { maxStreamWindowBytes: W, maxAutoWindowBytes: MAX, clock: () => 0 };
      const { client, server, close } = await sessions(kind, frozen, frozen);
      t.teardown(close);
      await server.ping(); // the receiver's first RTT sample
      const s = client.open();
      s.on("error", () => {});
      const [rs] = (await once(server, "stream")) as [MuxStream];
      const s2 = client.open();
      s2.on("error", () => {});
      const [stalled] = (await once(server, "stream")) as [MuxStream];
      rs.on("error", () => {});
      stalled.on("error", () => {});
      stalled.pause(); // never reads: must keep its first window
      s2.write(POOL.subarray(0, 2 * MAX));
      const TOTAL = 4 * MiB;
      const h = createHash("sha256");
      const rx = hashReadable(rs);
      let sent = 0;
      while (sent < TOTAL) {
        const c = POOL.subarray(sent % (POOL.length - 64 * KiB), (sent % (POOL.length - 64 * KiB)) + 64 * KiB);
        h.update(c);
        sent += c.length;
        if (!s.write(c)) await once(s, "drain");
      }
      s.end();
      const got = await rx;
      t.equal(got.bytes, TOTAL);
      t.equal(got.hex, h.digest("hex"), "every byte of the fast stream arrives");
      t.equal(rs.rxWindow, MAX, "the fast reader's window grew to the ceiling, no further");
      await untilPing(client, () => stalled.readableLength >= W);
      for (let i = 0; i < 20; i++) await client.ping();
      t.equal(stalled.rxWindow, W, "the stalled reader's window did not grow");
      t.equal(stalled.readableLength, W, "the stalled reader holds exactly its first window");
    });

    t.test("keepalive timeout when the peer goes silent", async (t) => {
      const pair = await duplexPair(kind);
      t.teardown(() => pair.close());
      pair.b.resume(); // reads and discards: alive at the transport level, never answers a ping
      // The session's timers are unref()ed and an in-memory pair holds no handle: keep the loop alive.
      const hold = setInterval(() => {}, 1000);
      t.teardown(() => clearInterval(hold));
      const client = new MuxSession(pair.a, { role: "client", keepaliveIntervalMs: 10, keepaliveTimeoutMs: 50 });
      const s = client.open();
      const streamErr = once(s, "error");
      const [err] = (await once(client, "close")) as [Error];
      t.equal(err?.message, "keepalive timeout");
      t.equal(client.closed, true);
      const [se] = (await streamErr) as [Error];
      t.match(se, { code: "ERR_MUX_SESSION_CLOSED", message: /keepalive timeout/ }, "open stream errored");
      t.throws(() => client.open(), /closed/);
    });

    t.test("ping measures a round trip", async (t) => {
      const { client, server, close } = await sessions(kind);
      t.teardown(close);
      const rtt = await client.ping();
      t.ok(rtt >= 0 && Number.isFinite(rtt), `rtt ${rtt.toFixed(3)} ms`);
      t.ok((await server.ping()) >= 0);
    });

    t.test("goAway: peer cannot open, existing streams keep working; close() waits for them", async (t) => {
      const { client, server, close } = await sessions(kind);
      t.teardown(close);
      server.on("stream", echo);
      const s1 = client.open();
      s1.write("before ");
      await untilPing(client, () => server.streamCount === 1);
      const goaway = once(client, "goaway");
      server.goAway();
      const late = client.open(); // its SYN crosses the GoAway on the wire: refused with RST
      const [lateErr] = (await once(late, "error")) as [Error];
      t.match(lateErr, { code: "ECONNRESET", message: /refused/ }, "SYN after our GoAway gets RST");
      await goaway;
      t.throws(() => client.open(), /GoAway/, "open() after GoAway throws a clear error");
      // Graceful close of the server waits for s1.
      let serverClosed = false;
      server.once("close", () => (serverClosed = true));
      server.close();
      t.notOk(serverClosed, "server waits for its live stream");
      const rx = readAll(s1);
      s1.end("after");
      t.equal((await rx).toString(), "before after", "existing stream still works both ways");
      const clientClose = once(client, "close");
      await untilPing(server, () => serverClosed).catch(() => {});
      t.ok(serverClosed, "server closed once its last stream finished");
      const [cerr] = (await clientClose) as [Error | undefined];
      t.equal(cerr, undefined, "client sees a clean end of session");
    });

    t.test("20k streams freeing ids; the stream map never grows", async (t) => {
      const TOTAL = 20_000;
      const CONCURRENCY = 32;
      const { client, server, close } = await sessions(kind);
      t.teardown(close);
      server.on("stream", echo);
      let maxClient = 0;
      let maxServer = 0;
      let done = 0;
      let bad = 0;
      const msg = Buffer.from("0123456789abcdef");
      const one = async (): Promise<void> => {
        const s = client.open();
        maxClient = Math.max(maxClient, client.streamCount);
        maxServer = Math.max(maxServer, server.streamCount);
        const rx = readAll(s);
        s.end(msg);
        const got = await rx;
        if (!got.equals(msg)) bad++;
      };
      await Promise.all(
        Array.from({ length: CONCURRENCY }, async () => {
          while (done < TOTAL) {
            done++;
            await one();
          }
        }),
      );
      t.equal(bad, 0, "every echo intact");
      t.ok(maxClient <= CONCURRENCY, `client map peaked at ${maxClient}`);
      t.ok(maxServer <= CONCURRENCY * 2, `server map peaked at ${maxServer}`);
      await untilPing(client, () => client.streamCount === 0 && server.streamCount === 0);
      t.equal(client.streamCount, 0);
      t.equal(server.streamCount, 0);
    });
  };
}

for (const kind of PAIR_KINDS) t.test(`mux over ${kind}`, body(kind));

// ---------------------------------------------------------------- wire violations (raw peer)

/** A session on one end of a memory pair, and a raw yamux peer on the other. */
function rawPeer(role: "client" | "server") {
  const pair = memoryPair();
  const session = new MuxSession(pair.a, { role, keepaliveIntervalMs: 0 });
  const dec = new FrameDecoder();
  const frames: FrameHeader[] = [];
  pair.b.on("data", (c: Buffer) => {
    dec.push(c);
    for (let s = dec.next(); s.kind !== "need-more" && s.kind !== "invalid"; s = dec.next()) {
      if (s.kind === "header") frames.push(s.header);
    }
  });
  return { session, peer: pair.b, frames, close: () => pair.close() };
}

t.test("wire violations tear the session down with a ProtocolError and GoAway(protocol error)", async (t) => {
  const cases: Array<[string, "client" | "server", Buffer[], RegExp]> = [
    ["bad version", "server", [Buffer.from([1, 0, 0, 0, 0, 0, 0, 1, 0, 0, 0, 0])], /unsupported yamux version 1/],
    ["unknown type", "server", [Buffer.from([0, 9, 0, 0, 0, 0, 0, 1, 0, 0, 0, 0])], /unknown yamux frame type 9/],
    ["bad id parity", "client", [encodeHeader(FrameType.WindowUpdate, Flag.SYN, 1, 0)], /odd ids are ours/],
    [
      "duplicate SYN",
      "client",
      [encodeHeader(FrameType.WindowUpdate, Flag.SYN, 2, 0), encodeHeader(FrameType.WindowUpdate, Flag.SYN, 2, 0)],
      /already open/,
    ],
    [
      "window exceeded",
      "client",
      [
        encodeHeader(FrameType.WindowUpdate, Flag.SYN, 2, 0),
        encodeHeader(FrameType.Data, 0, 2, MUX_INITIAL_WINDOW_BYTES + 1),
        Buffer.alloc(MUX_INITIAL_WINDOW_BYTES + 1),
      ],
      // We advertised 8 MiB in our ACK, but the peer may not assume it before reading it:
      // the rule we enforce is our own accounting, which already includes the ACK's credit.
      /receive window/,
    ],
  ];
  for (const [name, role, wire, re] of cases) {
    const { session, peer, frames, close } = rawPeer(role);
    session.on("stream", (s: MuxStream) => s.on("error", () => {}));
    if (name === "window exceeded") {
      // Exceed the full advertised window (initial + ACK credit).
      wire[1] = encodeHeader(FrameType.Data, 0, 2, session.maxStreamWindowBytes + 1);
      wire[2] = Buffer.alloc(session.maxStreamWindowBytes + 1);
    }
    const closed = once(session, "close") as Promise<[Error]>;
    for (const b of wire) peer.write(b);
    const [err] = await closed;
    t.ok(err instanceof ProtocolError, `${name}: ProtocolError`);
    t.match(err.message, re, `${name}: ${err.message}`);
    await once(peer, "end");
    const goAway = frames.find((f) => f.type === FrameType.GoAway);
    t.equal(goAway?.length, 1, `${name}: GoAway carries code 1 (protocol error)`);
    await close();
  }
});

t.test("peer-opened streams wait in the accept backlog; beyond it they are reset", async (t) => {
  const pair = memoryPair();
  t.teardown(() => pair.close());
  const session = new MuxSession(pair.a, { role: "client", keepaliveIntervalMs: 0, acceptBacklog: 2 });
  t.teardown(() => session.destroy());
  const dec = new FrameDecoder();
  const seen: FrameHeader[] = [];
  let onPong: () => void = () => {};
  pair.b.on("data", (c: Buffer) => {
    dec.push(c);
    for (let s = dec.next(); s.kind !== "need-more"; s = dec.next()) {
      if (s.kind !== "header") continue;
      seen.push(s.header);
      if (s.header.type === FrameType.Ping) onPong();
    }
  });
  const pong = new Promise<void>((r) => (onPong = r));
  for (const id of [2, 4, 6]) pair.b.write(encodeHeader(FrameType.WindowUpdate, Flag.SYN, id, 0));
  pair.b.write(encodeHeader(FrameType.Ping, Flag.SYN, 0, 99)); // barrier: its answer follows the replies
  await pong;
  const acks = seen.filter((f) => f.type === FrameType.WindowUpdate && f.flags & Flag.ACK).map((f) => f.streamId);
  const rsts = seen.filter((f) => f.type === FrameType.WindowUpdate && f.flags & Flag.RST).map((f) => f.streamId);
  t.same(acks, [2, 4], "two queued and acknowledged");
  t.same(rsts, [6], "the third is reset");
  t.equal(session.streamCount, 2);
  const got: number[] = [];
  session.on("stream", (s: MuxStream) => {
    s.on("error", () => {});
    got.push(s.id);
  });
  await new Promise((r) => setImmediate(r));
  t.same(got, [2, 4], "queued streams are delivered once someone listens");
});

t.test("RST while a write is withheld fails that write's callback, once", async (t) => {
  const small = { maxStreamWindowBytes: MUX_INITIAL_WINDOW_BYTES };
  const { client, server, close } = await sessions("memory", small, small);
  t.teardown(close);
  const accepted = once(server, "stream") as Promise<[MuxStream]>;
  const s = client.open();
  const errors: Error[] = [];
  s.on("error", (e) => errors.push(e));
  let firstDone = false;
  s.write(Buffer.alloc(MUX_INITIAL_WINDOW_BYTES), () => (firstDone = true));
  const withheld = new Promise<Error | null | undefined>((r) => s.write(Buffer.alloc(1000), r));
  const [rs] = await accepted;
  rs.pause();
  await untilPing(client, () => rs.readableLength === MUX_INITIAL_WINDOW_BYTES);
  t.ok(firstDone, "first write framed");
  rs.destroy(); // server resets
  const err = await withheld;
  t.match(err, { code: "ECONNRESET" }, "withheld write fails with the reset");
  await untilPing(client, () => errors.length > 0);
  t.equal(errors.length, 1, "one error event");
  t.equal(client.streamCount, 0);
  t.equal(server.streamCount, 0);
});

t.test("the connection closing under live streams errors them; session 'close' fires once", async (t) => {
  const pair = memoryPair();
  const client = new MuxSession(pair.a, { role: "client", keepaliveIntervalMs: 0 });
  const server = new MuxSession(pair.b, { role: "server", keepaliveIntervalMs: 0 });
  server.on("stream", echo);
  const s = client.open();
  s.write("x");
  const streamErr = once(s, "error");
  let closes = 0;
  client.on("close", () => closes++);
  await untilPing(client, () => server.streamCount === 1);
  pair.b.destroy(); // the transport dies under the server
  const [err] = (await streamErr) as [Error];
  t.match(err, { code: "ERR_MUX_SESSION_CLOSED" });
  t.equal(client.closed, true);
  t.equal(server.closed, true);
  client.destroy();
  await new Promise((r) => setImmediate(r));
  t.equal(closes, 1, "close emitted exactly once");
});

t.test("a write bigger than the peer's window is delivered in full (frames framed after a Window Update are flushed)", async (t) => {
  // Both ends at the smallest window: one 1 MiB write needs three Window Updates mid-write.
  // Before the fix the frames pumped after each update sat unflushed: stuck at 262144 bytes.
  for (const kind of PAIR_KINDS) {
    const ss = await sessions(kind, { maxStreamWindowBytes: MUX_INITIAL_WINDOW_BYTES }, { maxStreamWindowBytes: MUX_INITIAL_WINDOW_BYTES });
    t.teardown(() => ss.close());
    const accepted = once(ss.server, "stream");
    const s = ss.client.open();
    s.on("error", () => {}); // the teardown destroys the session under both streams
    const payload = randomBytes(MiB);
    s.end(payload);
    const [rs] = (await accepted) as [MuxStream];
    rs.on("error", () => {});
    const got = await readAll(rs);
    t.equal(got.length, MiB, `${kind}: every byte arrived`);
    t.ok(got.equals(payload), `${kind}: in order`);
  }
});

t.test("a stream reset by the peer while it waits in the accept backlog is dropped quietly", async (t) => {
  const pair = memoryPair();
  t.teardown(() => pair.close());
  const session = new MuxSession(pair.a, { role: "client", keepaliveIntervalMs: 0, acceptBacklog: 4 });
  t.teardown(() => session.destroy());
  const uncaught: unknown[] = [];
  const onUncaught = (err: unknown): void => void uncaught.push(err);
  process.on("uncaughtException", onUncaught);
  t.teardown(() => process.off("uncaughtException", onUncaught));
  let pongs = 0;
  const dec = new FrameDecoder();
  pair.b.on("data", (c: Buffer) => {
    dec.push(c);
    for (let s = dec.next(); s.kind !== "need-more"; s = dec.next()) if (s.kind === "header" && s.header.type === FrameType.Ping) pongs++;
  });
  for (const id of [2, 4]) pair.b.write(encodeHeader(FrameType.WindowUpdate, Flag.SYN, id, 0));
  pair.b.write(encodeHeader(FrameType.WindowUpdate, Flag.RST, 2, 0));
  pair.b.write(encodeHeader(FrameType.Ping, Flag.SYN, 0, 7)); // barrier
  while (pongs === 0) await new Promise((r) => setImmediate(r));
  await new Promise((r) => setImmediate(r));
  t.same(uncaught, [], "no error event without a listener");
  t.equal(session.streamCount, 1, "the reset stream is gone");
  const got: number[] = [];
  session.on("stream", (s: MuxStream) => {
    s.on("error", () => {}); // the teardown destroys the session under it
    got.push(s.id);
  });
  await new Promise((r) => setImmediate(r));
  t.same(got, [4], "only the live stream is handed out");
});

t.test("sessions sharing the process's frame arena: small writes interleaved across sessions arrive intact", async (t) => {
  // Headers and payloads up to 2 KiB of every session are packed into one shared arena
  // (protocol/mux.ts sharedArena). Writes of four sessions interleaved in the same tick must
  // each keep their own bytes: 4 × 1 MiB of 1 B..2 KiB chunks crosses the 64 KiB arena ~64 times.
  const SESSIONS = 4;
  const BYTES = 1 * MiB;
  const pairs = await Promise.all(Array.from({ length: SESSIONS }, () => sessions("tcp")));
  t.teardown(() => Promise.all(pairs.map((p) => p.close())));
  const got = pairs.map((p) => new Promise<{ hex: string; bytes: number }>((resolve) => {
    p.server.once("stream", (s: MuxStream) => { s.on("error", () => {}); s.end(); resolve(hashReadable(s)); });
  }));
  const streams = pairs.map((p) => p.client.open());
  for (const s of streams) { s.on("error", () => {}); s.resume(); }
  const r = rng(7);
  const sent = streams.map(() => createHash("sha256"));
  const left = streams.map(() => BYTES);
  while (left.some((n) => n > 0)) {
    // One round: every session writes a few small chunks in this tick, in turn.
    for (let round = 0; round < 8; round++) {
      for (let i = 0; i < SESSIONS; i++) {
        if (left[i]! === 0) continue;
        const n = Math.min(left[i]!, 1 + Math.floor(r() * 2 * KiB));
        const off = Math.floor(r() * (POOL.length - n));
        const c = POOL.subarray(off, off + n);
        sent[i]!.update(c);
        left[i]! -= n;
        streams[i]!.write(c);
      }
    }
    await Promise.all(streams.map((s) => (s.writableNeedDrain ? once(s, "drain") : undefined)));
  }
  for (const s of streams) s.end();
  const want = sent.map((h) => h.digest("hex"));
  const results = await Promise.all(got);
  for (let i = 0; i < SESSIONS; i++) {
    t.equal(results[i]!.bytes, BYTES, `session ${i}: every byte`);
    t.equal(results[i]!.hex, want[i], `session ${i}: its own bytes, in order (SHA-256)`);
  }
});
