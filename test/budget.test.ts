/**
 * gateway/budget.ts's decisions, on real mux sessions and real sockets with a clock the
 * test moves (so "no progress for a whole interval" is exact, not a race): windows are
 * reserved from the pools and given back; over budget, draining streams are squeezed to
 * the floor and stalled ones are cut, longest without progress first, only as many as needed.
 */
import t from "tap";
import { createHash, randomBytes } from "node:crypto";
import { once } from "node:events";
import net from "node:net";
import { BufferBudget, type Visit } from "../gateway/budget.js";
import { MUX_INITIAL_WINDOW_BYTES, MuxSession, type MuxStream } from "../protocol/mux.js";
import { duplexPair } from "./helpers/pair.js";
import { closeServer, listen } from "./helpers/cluster.js";

const KiB = 1024;
const MiB = 1024 * KiB;
const FLOOR = MUX_INITIAL_WINDOW_BYTES;
/** Each stream's max window in these sessions. */
const W = MiB;
/** With a 16 KiB splice queue a visit's unreserved part is 256 + 2 x (16 + 64) + 64 = 480 KiB. */
const SPLICE = 16 * KiB;
const STALLED_AFTER_MS = 100;

async function untilPing(session: MuxSession, cond: () => boolean, maxRoundTrips = 10_000): Promise<void> {
  for (let i = 0; i < maxRoundTrips && !cond(); i++) await session.ping();
  if (!cond()) throw new Error(`condition not reached after ${maxRoundTrips} ping round trips`);
}

t.test("reservations, squeezing and cutting", async (t) => {
  const clock = { now: 0 };
  const pair = await duplexPair("memory");
  const opts = { keepaliveIntervalMs: 0, maxStreamWindowBytes: W, maxAutoWindowBytes: W, clock: () => clock.now };
  const cogSide = new MuxSession(pair.a, { ...opts, role: "client" });
  const hubSide = new MuxSession(pair.b, { ...opts, role: "server" });
  // Idle loopback sockets stand for the visitors' connections (their queues stay empty).
  const server = net.createServer((s) => s.on("error", () => {}));
  const port = await listen(server);
  const sockets: net.Socket[] = [];
  t.teardown(async () => {
    budget.close();
    for (const s of sockets) s.destroy();
    cogSide.destroy();
    hubSide.destroy();
    await pair.close();
    await closeServer(server);
  });
  const cut: string[] = [];
  const names = new Map<Visit, string>();
  const budget = new BufferBudget({
    budgetBytes: 2 * MiB,
    cogBudgetBytes: 2 * MiB,
    spliceQueueBytes: SPLICE,
    checkIntervalMs: 2 ** 31 - 1, // the test sweeps by hand
    stalledAfterMs: STALLED_AFTER_MS,
    clock: () => clock.now,
    onShed: (v) => { cut.push(names.get(v)!); v.stream?.destroy(); },
  });

  /** Opens a visit at the current clock: hub-side stream paused, cog-side writes `bytes`. */
  async function visit(name: string, bytes: number): Promise<{ v: Visit; hub: MuxStream; sent: Buffer }> {
    const sock = net.connect(port, "127.0.0.1");
    sock.on("error", () => {});
    await once(sock, "connect");
    sockets.push(sock);
    const v = budget.begin("c1", sock, name, hubSide.maxStreamWindowBytes);
    names.set(v, name);
    const hub = hubSide.open({ windowBytes: v.windowBytes, budget: v });
    hub.on("error", () => {});
    hub.once("close", () => budget.end(v));
    v.stream = hub;
    hub.pause();
    const [peer] = (await once(cogSide, "stream")) as [MuxStream];
    peer.on("error", () => {});
    const sent = randomBytes(bytes);
    peer.end(sent);
    return { v, hub, sent };
  }

  clock.now = 0;
  const a = await visit("A", W);
  clock.now = 10;
  const b = await visit("B", W);
  clock.now = 20;
  const c = await visit("C", W);
  clock.now = 30;
  const d = await visit("D", W);
  t.equal(a.v.windowBytes, W, "A: the pool had room for a full window");
  t.equal(b.v.windowBytes, W, "B too");
  t.equal(c.v.windowBytes, FLOOR + 2 * MiB - 2 * (W - FLOOR), "C: what was left of the 2 MiB pool");
  t.equal(d.v.windowBytes, FLOOR, "D: the pool is taken, the floor");
  t.equal(budget.reservedBytes, 2 * MiB, "the pool is exactly taken");

  await untilPing(hubSide, () => a.hub.readableLength === W && b.hub.readableLength === W
    && c.hub.readableLength === c.v.windowBytes && d.hub.readableLength === FLOOR);
  const held = budget.bufferedBytes();
  t.equal(held.bytes, 2 * W + c.v.windowBytes + FLOOR, "every paused stream holds its whole window");
  t.ok(held.bytes > 2 * MiB, "over the 2 MiB budget");

  clock.now = 50;
  t.equal(budget.check(), 0, "first sweep: nothing is known to be stalled yet and squeezing can cover the excess");
  t.ok(budget.global.squeezed, "so the pool is squeezed");

  // C drains while squeezed: its window gives back what it held above the floor.
  const cData: Buffer[] = [];
  c.hub.on("data", (x: Buffer) => cData.push(x));
  c.hub.resume();
  await once(c.hub, "end");
  t.equal(createHash("sha256").update(Buffer.concat(cData)).digest("hex"), createHash("sha256").update(c.sent).digest("hex"), "C got every byte");
  t.equal(c.hub.rxWindow, FLOOR, "C's window shrank to the floor while it drained");
  t.equal(c.v.reserved, 0, "and its reservation went back to the pool");
  t.equal(budget.reservedBytes, 2 * (W - FLOOR), "only A's and B's reservations remain");

  // A, B and D made no progress for more than STALLED_AFTER_MS and hold what they held:
  // the sweep cuts the longest-stalled (A, opened first) and stops once within budget.
  clock.now = 50 + STALLED_AFTER_MS + 1;
  t.equal(budget.check(), 1, "one visit cut");
  t.same(cut, ["A"], "A, the longest without progress");
  const after = budget.bufferedBytes();
  t.ok(after.bytes <= 2 * MiB, `back within the budget (${after.bytes} bytes)`);
  t.equal(budget.reservedBytes, W - FLOOR, "A's reservation went back with it");
  t.equal(budget.check(), 0, "a further sweep within budget cuts nothing");
  t.notOk(budget.global.squeezed, "and lifts the squeeze");

  // New visits get windows from the pool again.
  const e = await visit("E", 0);
  t.equal(e.v.windowBytes, W, "a new visit gets a full window once the pool has room");
  budget.end(e.v);
  budget.end(e.v);
  t.equal(budget.reservedBytes, W - FLOOR, "end() gives a reservation back once, however often called");
});
