/**
 * protocol/throttle.ts (the throttled splice of a cog with a bandwidth limit) and the
 * bookkeeping of gateway/quotas.ts: the bucket's arithmetic on a clock the test moves;
 * a throttled splice on real loopback sockets keeps every byte, half-close and the queue
 * bound of the plain splice while both its buckets make it wait; a reload's new limits
 * reach the next visitors. (The rate itself is measured end to end in test/bandwidth.test.ts.)
 */
import t from "tap";
import { createHash, randomBytes } from "node:crypto";
import { once } from "node:events";
import net from "node:net";
import { parseConfig } from "../config/config.js";
import type { HubConfig } from "../config/types.js";
import { Quotas } from "../gateway/quotas.js";
import { SPLICE_MAX_QUEUED_BYTES, SOCKET_READ_MAX_BYTES } from "../protocol/splice.js";
import { spliceThrottled, TokenBucket } from "../protocol/throttle.js";

const KiB = 1024;
const MiB = 1024 * KiB;

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

const sha256 = (bufs: Buffer[]): string => {
  const h = createHash("sha256");
  for (const b of bufs) h.update(b);
  return h.digest("hex");
};

function collect(s: net.Socket): Promise<Buffer[]> {
  const got: Buffer[] = [];
  s.on("data", (c: Buffer) => got.push(c));
  return once(s, "end").then(() => got);
}

async function until(what: string, cond: () => boolean, maxMs = 30_000): Promise<void> {
  for (let waited = 0; !cond(); waited += 10) {
    if (waited > maxMs) throw new Error(`timed out waiting for ${what}`);
    await new Promise((r) => setTimeout(r, 10));
  }
}

t.test("TokenBucket: starts full, pays after the fact, refills at the rate up to the burst", async (t) => {
  let now = 0;
  let dry = 0;
  const b = new TokenBucket(1000, 500, () => dry++, () => now);
  t.equal(b.available, 500, "a full bucket");
  t.ok(b.take(300), "300 of 500");
  t.notOk(b.take(300), "600 of 500: in debt");
  t.equal(b.available, -100);
  now = 100; // 100 ms at 1000 B/s: 100 tokens
  t.equal(b.available, 0, "the debt is repaid by the rate");
  now = 10_000;
  t.equal(b.available, 500, "never more than the burst");
  t.throws(() => new TokenBucket(0, 1), RangeError);
  t.throws(() => new TokenBucket(1, 0), RangeError);
  t.equal(dry, 0, "take() alone never reports dry: a direction that waits does");
});

t.test("throttled splice: 1 MiB each way with half-close, every byte intact, both buckets made it wait", async (t) => {
  const front = await socketPair();
  const back = await socketPair();
  t.teardown(() => { front.close(); back.close(); });
  let dry = 0;
  // 1 MiB at 8 MiB/s with a 64 KiB bucket: ~15 waits each way, ~0.1 s each way.
  const up = new TokenBucket(8 * MiB, 64 * KiB, () => dry++);
  const down = new TokenBucket(8 * MiB, 64 * KiB, () => dry++);
  const closed = new Promise<Error | undefined>((r) => spliceThrottled(front.server, back.client, up, down, r));
  const toBackend = randomBytes(MiB);
  const toVisitor = randomBytes(MiB);
  const backendGot = collect(back.server);
  const visitorGot = collect(front.client);
  front.client.end(toBackend);
  t.equal(sha256(await backendGot), sha256([toBackend]), "the backend got the visitor's bytes, then its FIN");
  back.server.end(toVisitor);
  t.equal(sha256(await visitorGot), sha256([toVisitor]), "the visitor read the whole answer after its own FIN");
  t.equal(await closed, undefined, "clean close, no error");
  t.ok(up.waits > 0 && down.waits > 0, `both directions waited for their bucket (${up.waits} up, ${down.waits} down)`);
  t.equal(dry, up.waits + down.waits, "each wait reported once");
});

t.test("throttled splice: a bucket refilling never resumes a source whose destination is full", async (t) => {
  const front = await socketPair();
  const back = await socketPair();
  t.teardown(() => { front.close(); back.close(); });
  const up = new TokenBucket(16 * MiB, 64 * KiB);
  const down = new TokenBucket(16 * MiB, 64 * KiB);
  spliceThrottled(front.server, back.client, up, down);
  back.server.pause(); // the backend reads nothing
  const payload = randomBytes(32 * MiB);
  const writer = (async () => {
    for (let off = 0; off < payload.length; off += 64 * KiB) {
      if (!front.client.write(payload.subarray(off, off + 64 * KiB))) await once(front.client, "drain");
    }
    front.client.end();
  })();
  // Kernel buffers fill, then the splice's queue: the source stays paused once it is full.
  await until("the queue to fill", () => back.client.writableLength >= SPLICE_MAX_QUEUED_BYTES);
  t.ok(up.waits > 0, `the bucket made the source wait on the way (${up.waits} times)`);
  // Whatever wake is still pending fires now; it must find the queue full and leave the source paused.
  await until("the bucket's debt to be repaid", () => up.available >= 0);
  for (let i = 0; i < 50; i++) await new Promise((r) => setTimeout(r, 2));
  t.ok(front.server.isPaused(), "the source is paused");
  t.ok(back.client.writableLength <= SPLICE_MAX_QUEUED_BYTES + SOCKET_READ_MAX_BYTES,
    `queued: ${back.client.writableLength} bytes (bound ${SPLICE_MAX_QUEUED_BYTES} + one read)`);
  const got = collect(back.server);
  back.server.resume();
  await writer;
  t.equal(sha256(await got), sha256([payload]), "every byte arrives once the backend reads");
});

t.test("Quotas: counts per cog and route, limits from hub.cogs or hub.limits, a reload's limits for the next visitors", async (t) => {
  const parse = (cogs: unknown[]) => parseConfig({ hub: { domain: "hub.example.net", limits: { max_streams_per_cog: 3 }, cogs } }).hub!;
  // A live config as gateway/hub.ts keeps it: a reload replaces its sections.
  const cfg = { ...parse([{ name: "b", limits: { max_streams: 1, bandwidth: "1MiB/s" } }]) } as { -readonly [K in keyof HubConfig]: HubConfig[K] };
  const dry: string[] = [];
  const q = new Quotas(cfg, (cog) => dry.push(cog));
  const a = q.openStream("a")!;
  t.equal(a.configPath, "hub.limits");
  t.equal(a.streamsKey, "max_streams_per_cog");
  t.equal(a.throttle, null, "no bandwidth limit: no bucket");
  q.openStream("a");
  q.openStream("a");
  t.equal(q.openStream("a"), null, "the fourth stream of cog a is refused (max_streams_per_cog 3)");
  const b = q.openStream("b")!;
  t.equal(b.configPath, "hub.cogs[0].limits");
  t.equal(b.streamsKey, "max_streams");
  t.equal(q.openStream("b"), null, "cog b has its own cap of 1");
  t.equal(b.throttle!.windowMaxBytes, MiB, "1 s of its bandwidth for its streams' windows");
  q.closeStream(b);
  t.ok(q.openStream("b"), "a closed stream gives its slot back");

  const route = { cog: "a", route: "web", kind: "http" as const, pattern: "w.example" };
  for (let i = 0; i < 3; i++) t.ok(q.enterRoute(route));
  t.notOk(q.enterRoute(route), "max_connections_per_route follows max_streams_per_cog (3)");
  t.ok(q.enterRoute({ ...route, kind: "tls" }), "another route entry of the cog has its own count");
  q.leaveRoute(route);
  t.equal(q.routeConnections(route), 2);

  const oldBuckets = b.throttle;
  cfg.cogs = parse([{ name: "b", limits: { max_streams: 2, bandwidth: "2MiB/s" } }, { name: "a", limits: { max_streams: 4 } }]).cogs;
  q.reconfigure();
  t.equal(q.of("b").limits.maxStreams, 2, "cog b's new cap");
  t.equal(q.of("b").streams, 1, "its live stream still counts");
  t.ok(q.openStream("b"), "and a second one fits now");
  t.not(q.of("b").throttle, oldBuckets, "new buckets for the next visitors");
  t.equal(q.of("b").throttle!.toVisitors.rateBytesPerSec, 2 * MiB);
  t.equal(q.of("a").configPath, "hub.cogs[1].limits", "cog a is now listed, with its own limits");
  t.ok(q.openStream("a"), "its fourth stream fits (max_streams 4)");
  t.equal(dry.length, 0);
});
