/**
 * Per-stream windows on the wire (protocol/mux.ts open({ windowBytes, budget })): the window a
 * stream advertises in its SYN bounds what the peer may send, and a WindowBudget decides how
 * far auto-tuning grows it and how much consumed credit goes back (shrinking it, never below
 * the spec's 256 KiB). Real sessions over an in-memory pair, loopback TCP and TLS.
 */
import t, { type Test } from "tap";
import { createHash, randomBytes } from "node:crypto";
import { once } from "node:events";
import { MUX_INITIAL_WINDOW_BYTES, MuxSession, type MuxOptions, type MuxStream, type WindowBudget } from "../protocol/mux.js";
import { PAIR_KINDS, duplexPair, type PairKind } from "./helpers/pair.js";

const KiB = 1024;
const MiB = 1024 * KiB;
const DATA = randomBytes(4 * MiB);

async function sessions(kind: PairKind, opts: Partial<MuxOptions> = {}): Promise<{ hub: MuxSession; cog: MuxSession; close(): Promise<void> }> {
  const pair = await duplexPair(kind);
  // As in capsul: the cog is the yamux client, the hub the server and opens the visitor streams.
  const cog = new MuxSession(pair.a, { keepaliveIntervalMs: 0, ...opts, role: "client" });
  const hub = new MuxSession(pair.b, { keepaliveIntervalMs: 0, ...opts, role: "server" });
  return { hub, cog, async close() { cog.destroy(); hub.destroy(); await pair.close(); } };
}

async function untilPing(session: MuxSession, cond: () => boolean, maxRoundTrips = 10_000): Promise<void> {
  for (let i = 0; i < maxRoundTrips && !cond(); i++) await session.ping();
  if (!cond()) throw new Error(`condition not reached after ${maxRoundTrips} ping round trips`);
}

function sha(b: Buffer): string {
  return createHash("sha256").update(b).digest("hex");
}

function readAll(s: MuxStream): Promise<Buffer> {
  const parts: Buffer[] = [];
  s.on("data", (c: Buffer) => parts.push(c));
  return new Promise((resolve, reject) => {
    s.once("end", () => resolve(Buffer.concat(parts)));
    s.once("error", reject);
  });
}

function body(kind: PairKind) {
  return async (t: Test) => {
    t.test("the window given to open() is what the peer may send before anything is read", async (t) => {
      const W = 512 * KiB;
      const { hub, cog, close } = await sessions(kind, { maxStreamWindowBytes: 4 * MiB });
      t.teardown(close);
      const s = hub.open({ windowBytes: W });
      s.on("error", () => {});
      s.pause();
      const [peer] = (await once(cog, "stream")) as [MuxStream];
      peer.on("error", () => {});
      t.equal(peer.sendWindow, W, "the SYN carried exactly the extra credit above 256 KiB");
      peer.write(DATA.subarray(0, 2 * MiB));
      await untilPing(hub, () => s.readableLength >= W);
      for (let i = 0; i < 20; i++) await hub.ping();
      t.equal(s.readableLength, W, "the paused stream holds exactly its window, not the session's 4 MiB");
      const floor = hub.open({ windowBytes: MUX_INITIAL_WINDOW_BYTES });
      floor.on("error", () => {});
      const [peer2] = (await once(cog, "stream")) as [MuxStream];
      peer2.on("error", () => {});
      t.equal(peer2.sendWindow, MUX_INITIAL_WINDOW_BYTES, "the spec's window: a SYN with no extra credit");
    });

    t.test("open() refuses a window outside [256 KiB, maxStreamWindowBytes]", async (t) => {
      const { hub, close } = await sessions(kind, { maxStreamWindowBytes: MiB });
      t.teardown(close);
      t.throws(() => hub.open({ windowBytes: MUX_INITIAL_WINDOW_BYTES - 1 }), RangeError);
      t.throws(() => hub.open({ windowBytes: MiB + 1 }), RangeError);
      t.throws(() => hub.open({ windowBytes: 300_000.5 }), RangeError);
      t.equal(hub.streamCount, 0, "nothing was opened");
    });

    t.test("a budget that keeps credit back shrinks a live stream's window to the floor; every byte still arrives", async (t) => {
      const W = MiB;
      const { hub, cog, close } = await sessions(kind, { maxStreamWindowBytes: W, maxAutoWindowBytes: W });
      t.teardown(close);
      let kept = 0;
      const squeeze: WindowBudget = {
        grow: () => 0,
        shrink: (s, credit) => {
          const k = Math.min(credit, s.rxWindow - MUX_INITIAL_WINDOW_BYTES);
          kept += k;
          return k;
        },
      };
      const s = hub.open({ windowBytes: W, budget: squeeze });
      s.on("error", () => {});
      const [peer] = (await once(cog, "stream")) as [MuxStream];
      peer.on("error", () => {});
      const payload = DATA.subarray(0, 3 * MiB);
      peer.end(payload);
      const got = await readAll(s);
      t.equal(got.length, payload.length, "every byte arrived through the shrinking window");
      t.equal(sha(got), sha(payload), "in order");
      t.equal(s.rxWindow, MUX_INITIAL_WINDOW_BYTES, "the window ended at the floor");
      t.equal(kept, W - MUX_INITIAL_WINDOW_BYTES, "exactly the credit above the floor was kept back");

      // A second stream, same budget: once shrunk, a paused reader holds only the floor.
      const s2 = hub.open({ windowBytes: W, budget: squeeze });
      s2.on("error", () => {});
      const [peer2] = (await once(cog, "stream")) as [MuxStream];
      peer2.on("error", () => {});
      peer2.write(DATA.subarray(0, 2 * MiB));
      // Read the first window, which the budget shrinks, then stop reading.
      let read = 0;
      await new Promise<void>((resolve) => {
        const onData = (c: Buffer): void => {
          read += c.length;
          if (read >= W) { s2.off("data", onData); s2.pause(); resolve(); }
        };
        s2.on("data", onData);
      });
      // The writer still has bytes to send: it stops once our (shrunk) window is used up.
      await untilPing(hub, () => peer2.sendWindow === 0);
      for (let i = 0; i < 20; i++) await hub.ping();
      t.equal(s2.rxWindow, MUX_INITIAL_WINDOW_BYTES, "its window shrank to the floor too");
      t.ok(s2.readableLength <= MUX_INITIAL_WINDOW_BYTES, `the stalled reader holds at most the floor (${s2.readableLength})`);
      t.equal(peer2.sendWindow, 0, "and the writer is held back");
    });

    t.test("auto-tuning grows a window only by what its budget grants", async (t) => {
      const W = MUX_INITIAL_WINDOW_BYTES;
      // Frozen clock: every epoch is "fast", so growth depends on the budget alone (as in mux.test.ts).
      const { hub, cog, close } = await sessions(kind, { maxStreamWindowBytes: W, maxAutoWindowBytes: 16 * W, clock: () => 0 });
      t.teardown(close);
      await hub.ping(); // the receiver's first RTT sample
      const asked: number[] = [];
      const GRANT = 64 * KiB;
      const stingy: WindowBudget = { grow: (_s, bytes) => { asked.push(bytes); return Math.min(bytes, GRANT); }, shrink: () => 0 };
      const s = hub.open({ windowBytes: W, budget: stingy });
      s.on("error", () => {});
      const [peer] = (await once(cog, "stream")) as [MuxStream];
      peer.on("error", () => {});
      const payload = DATA.subarray(0, 4 * MiB);
      peer.end(payload);
      const got = await readAll(s);
      t.equal(sha(got), sha(payload), "every byte arrived");
      t.ok(asked.length >= 2, `auto-tuning asked the budget (${asked.length} times)`);
      t.equal(s.rxWindow, W + asked.length * GRANT, "and grew by exactly what it granted each time");
      t.ok(s.rxWindow < 16 * W, "far below the ceiling it would have reached alone");
    });
  };
}

for (const kind of PAIR_KINDS) t.test(`windows per stream over ${kind}`, body(kind));
