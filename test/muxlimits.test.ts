/**
 * The mux and splice limits of capsul.yaml take effect: hub.tunnel / cog.tunnel's
 * max_auto_window, accept_backlog, max_frame_payload, write_batch and close_linger
 * (MuxOptions), and hub.limits.splice_queue / cog.splice_queue (splice()'s queue
 * bound). First each value, parsed from YAML, on a MuxSession or splice over loopback
 * TCP, watched on the wire; then through a real hub, at both ends of its tunnels.
 * Every wait is for a condition (ping round trips, events), never for time; the one
 * timer, close_linger, runs on node:test's mock clock.
 */
import t, { type Test } from "tap";
import { createHash, randomBytes } from "node:crypto";
import diagnostics from "node:diagnostics_channel";
import { EventEmitter, once } from "node:events";
import fs from "node:fs";
import net from "node:net";
import path from "node:path";
import { Duplex } from "node:stream";
import { mock } from "node:test";
import * as C from "../config/config.js";
import { parseConfig } from "../config/config.js";
import type { CogConfig, CogTunnelTuning, HubConfig } from "../config/types.js";
import { ConfigError } from "../lib/errors.js";
import { createInvite, startHub } from "../gateway/hub.js";
import { HUB_ACCEPT_BACKLOG } from "../gateway/tunnels.js";
import { Flag, FrameDecoder, FrameType, type FrameHeader } from "../protocol/frame.js";
import {
  MUX_DEFAULT_ACCEPT_BACKLOG, MUX_DEFAULT_CLOSE_LINGER_MS, MUX_DEFAULT_KEEPALIVE_INTERVAL_MS, MUX_DEFAULT_KEEPALIVE_TIMEOUT_MS,
  MUX_DEFAULT_MAX_AUTO_WINDOW_BYTES, MUX_DEFAULT_MAX_FRAME_PAYLOAD_BYTES, MUX_DEFAULT_MAX_STREAM_WINDOW_BYTES,
  MUX_DEFAULT_WRITE_BATCH_MAX_BYTES, MUX_INITIAL_WINDOW_BYTES, MUX_MAX_WINDOW_BYTES, MuxSession, type MuxOptions, type MuxStream,
} from "../protocol/mux.js";
import { encodeMessage, MessageReader } from "../protocol/messages.js";
import { TUNNEL_PROTOCOL_VERSION, type HubMessage, type VisitorHeader } from "../protocol/control.js";
import { splice, SPLICE_MAX_QUEUED_BYTES } from "../protocol/splice.js";
import { startCog } from "../tunnel-client/cog.js";
import { dialHub } from "../tunnel-client/dial.js";
import { enroll } from "../tunnel-client/enroll.js";
import { loadIdentity } from "../tunnel-client/identity.js";
import { closeServer, HUB_DOMAIN, listen, testLogger, tmpDir } from "./helpers/cluster.js";

const KiB = 1024;
const MiB = 1024 * KiB;
/** The most one socket read hands to a 'data' listener: what may land after a queue bound is crossed. */
const MAX_READ_BYTES = 64 * KiB;
const POOL = randomBytes(4 * MiB);

/** The MuxSession fields the config sets, as gateway/tunnels.ts and tunnel-client/dial.ts pass them. */
const MUX_FIELDS = [
  "maxStreamWindowBytes", "maxAutoWindowBytes", "keepaliveIntervalMs", "keepaliveTimeoutMs",
  "acceptBacklog", "maxFramePayloadBytes", "writeBatchMaxBytes", "closeLingerMs",
] as const;

function muxOptions(tuning: CogTunnelTuning, role: "client" | "server"): MuxOptions {
  const opts: MuxOptions = { role };
  for (const f of MUX_FIELDS) opts[f] = tuning[f];
  return opts;
}

/** cog.tunnel parsed from YAML-shaped values. */
function tuning(yaml: Record<string, unknown> = {}): CogTunnelTuning {
  return parseConfig({ cog: { tunnel: yaml } }).cog!.tunnel;
}

/** A Duplex that goes nowhere, for sessions that only need constructing. */
function nullConn(): Duplex {
  return new Duplex({ read() {}, write(_c, _e, cb) { cb(); } });
}

/** A loopback TCP pair; both ends half-open capable, so neither closes just because the other sent FIN. */
async function loopback(t: Test): Promise<{ a: net.Socket; b: net.Socket }> {
  const server = net.createServer({ allowHalfOpen: true, noDelay: true });
  const port = await listen(server);
  const accepted = once(server, "connection") as Promise<[net.Socket]>;
  const a = net.connect({ host: "127.0.0.1", port, allowHalfOpen: true, noDelay: true });
  const [b] = await accepted;
  await once(a, "connect");
  server.close();
  a.on("error", () => {});
  b.on("error", () => {});
  t.teardown(() => { a.destroy(); b.destroy(); });
  return { a, b };
}

/** Client and server sessions over loopback TCP, each with its options from cog.tunnel YAML. */
async function sessions(t: Test, clientYaml: Record<string, unknown>, serverYaml: Record<string, unknown>, extra: Partial<MuxOptions> = {}) {
  const { a, b } = await loopback(t);
  const client = new MuxSession(a, { ...muxOptions(tuning(clientYaml), "client"), ...extra });
  const server = new MuxSession(b, { ...muxOptions(tuning(serverYaml), "server"), ...extra });
  client.on("error", () => {});
  server.on("error", () => {});
  t.teardown(() => { client.destroy(); server.destroy(); });
  return { a, b, client, server };
}

/** Every frame header in what `sock` receives (an extra 'data' listener sees the same chunks the session does). */
function tapIncoming(sock: net.Socket): FrameHeader[] {
  const headers: FrameHeader[] = [];
  const dec = new FrameDecoder();
  sock.on("data", (chunk: Buffer) => drain(dec, chunk, headers));
  return headers;
}

/** Every frame header in what is written to `sock`. */
function tapOutgoing(sock: net.Socket): FrameHeader[] {
  const headers: FrameHeader[] = [];
  const dec = new FrameDecoder();
  const write = sock.write;
  sock.write = function (this: net.Socket, chunk: unknown, ...rest: unknown[]): boolean {
    if (Buffer.isBuffer(chunk)) drain(dec, chunk, headers);
    return (write as (...args: unknown[]) => boolean).call(this, chunk, ...rest);
  } as typeof sock.write;
  return headers;
}

function drain(dec: FrameDecoder, chunk: Buffer, headers: FrameHeader[]): void {
  dec.push(chunk);
  for (let step = dec.next(); step.kind !== "need-more"; step = dec.next()) {
    if (step.kind === "invalid") throw new Error(`tap: ${step.reason}`);
    if (step.kind === "header") headers.push(step.header);
  }
}

const dataLengths = (headers: FrameHeader[], id?: number): number[] =>
  headers.filter((h) => h.type === FrameType.Data && (id === undefined || h.streamId === id)).map((h) => h.length);
const flagged = (headers: FrameHeader[], flag: number): number[] =>
  headers.filter((h) => h.type !== FrameType.Ping && h.type !== FrameType.GoAway && (h.flags & flag) !== 0).map((h) => h.streamId);

/** Round trips until `cond()` holds: progress is measured in pings, never in wall time. */
async function untilPing(session: MuxSession, cond: () => boolean, what: string, maxRoundTrips = 10_000): Promise<void> {
  for (let i = 0; i < maxRoundTrips && !cond(); i++) await session.ping();
  if (!cond()) throw new Error(`${what}: not reached after ${maxRoundTrips} ping round trips`);
}

/**
 * Writes `total` bytes of POOL from `offset` in 64 KiB chunks, each after the previous one's
 * 'drain', as splice's writes are. (Not one big write: protocol/mux.ts pump() frames what a
 * Window Update allows without scheduling a flush, so a write larger than a 256 KiB window,
 * credited in pieces smaller than the write batch, waits for some other frame to flush it.)
 */
async function writeAll(s: Duplex, total: number, offset = 0): Promise<void> {
  for (let off = 0; off < total; off += 64 * KiB) {
    const at = (offset + off) % (POOL.length - 64 * KiB);
    if (!s.write(POOL.subarray(at, at + Math.min(64 * KiB, total - off)))) await once(s, "drain");
  }
}

function sha256(bufs: Buffer[]): string {
  const h = createHash("sha256");
  for (const b of bufs) h.update(b);
  return h.digest("hex");
}

/** Resolves with the bytes `s` delivers (resuming it) once at least `n` have arrived. */
function readBytes(s: Duplex, n: number): Promise<Buffer> {
  if (n <= 0) return Promise.resolve(Buffer.alloc(0));
  return new Promise((resolve, reject) => {
    const parts: Buffer[] = [];
    let got = 0;
    const onData = (c: Buffer): void => {
      parts.push(c);
      got += c.length;
      if (got >= n) { s.off("data", onData); resolve(Buffer.concat(parts)); }
    };
    s.on("data", onData);
    s.once("error", reject);
    s.resume(); // a stream paused on purpose (MessageReader.detach) does not resume for a new listener
  });
}

/** Sockets Node creates from now on ("net.client.socket": net.connect; "net.server.socket": accepted). */
function watchSockets(t: Test, channel: "net.client.socket" | "net.server.socket"): net.Socket[] {
  const seen: net.Socket[] = [];
  const onSocket = (msg: unknown): void => { seen.push((msg as { socket: net.Socket }).socket); };
  diagnostics.subscribe(channel, onSocket);
  t.teardown(() => diagnostics.unsubscribe(channel, onSocket));
  return seen;
}

// ---------------------------------------------------------------------------

t.test("the config defaults are protocol/mux.ts's and protocol/splice.ts's constants", async (t) => {
  t.equal(C.DEFAULT_MAX_AUTO_WINDOW_BYTES, MUX_DEFAULT_MAX_AUTO_WINDOW_BYTES);
  t.equal(C.DEFAULT_ACCEPT_BACKLOG, MUX_DEFAULT_ACCEPT_BACKLOG);
  t.equal(C.DEFAULT_MAX_FRAME_PAYLOAD_BYTES, MUX_DEFAULT_MAX_FRAME_PAYLOAD_BYTES);
  t.equal(C.DEFAULT_WRITE_BATCH_MAX_BYTES, MUX_DEFAULT_WRITE_BATCH_MAX_BYTES);
  t.equal(C.DEFAULT_CLOSE_LINGER_MS, MUX_DEFAULT_CLOSE_LINGER_MS);
  t.equal(C.DEFAULT_MAX_STREAM_WINDOW_BYTES, MUX_DEFAULT_MAX_STREAM_WINDOW_BYTES);
  t.equal(C.DEFAULT_KEEPALIVE_INTERVAL_MS, MUX_DEFAULT_KEEPALIVE_INTERVAL_MS);
  t.equal(C.DEFAULT_KEEPALIVE_TIMEOUT_MS, MUX_DEFAULT_KEEPALIVE_TIMEOUT_MS);
  t.equal(C.MIN_STREAM_WINDOW_BYTES, MUX_INITIAL_WINDOW_BYTES);
  t.equal(C.MAX_WINDOW_BYTES, MUX_MAX_WINDOW_BYTES);
  t.equal(C.DEFAULT_SPLICE_QUEUE_BYTES, SPLICE_MAX_QUEUED_BYTES);
  // A session built from an empty cog.tunnel is the session built with no options at all.
  const fromConfig = new MuxSession(nullConn(), muxOptions(tuning(), "client"));
  const bare = new MuxSession(nullConn(), { role: "client" });
  t.teardown(() => { fromConfig.destroy(); bare.destroy(); });
  for (const f of MUX_FIELDS) t.equal(fromConfig[f], bare[f], f);
});

t.test("what the config accepts MuxSession accepts; one step past each bound, both refuse", async (t) => {
  // [key, YAML values accepted, [YAML value, MuxOptions value] pairs one step out of range, other keys]
  const cases: [string, unknown[], [unknown, number][], Record<string, unknown>?][] = [
    ["max_stream_window", ["256KiB", 4294967295], [[262143, 262143], ["4GiB", 2 ** 32]]],
    ["max_auto_window", ["8MiB", 4294967295], [["8388607B", 8388607], [4294967296, 2 ** 32]]],
    ["accept_backlog", [0, 2147483647], [[-1, -1], [2147483648, 2 ** 31]]],
    ["max_frame_payload", [1, "4294967295B"], [[0, 0], ["4GiB", 2 ** 32]]],
    ["write_batch", [1, 2147483647], [[0, 0], ["2GiB", 2 ** 31]]],
    ["close_linger", [0, "2147483647ms"], [[0.5, 0.5], [2147483648, 2 ** 31]]],
    ["keepalive_timeout", ["2147483647ms"], [[2147483648, 2 ** 31], [30000.5, 30000.5]]],
    ["keepalive_interval", ["2147483646ms"], [[2147483648, 2 ** 31]], { keepalive_timeout: "2147483647ms" }],
  ];
  const field = (key: string): (typeof MUX_FIELDS)[number] => ({
    max_stream_window: "maxStreamWindowBytes", max_auto_window: "maxAutoWindowBytes", accept_backlog: "acceptBacklog",
    max_frame_payload: "maxFramePayloadBytes", write_batch: "writeBatchMaxBytes", close_linger: "closeLingerMs",
    keepalive_timeout: "keepaliveTimeoutMs", keepalive_interval: "keepaliveIntervalMs",
  } as const)[key as "max_stream_window"];
  for (const [key, accepted, past, others] of cases) {
    for (const value of accepted) {
      const tun = tuning({ ...others, [key]: value });
      const session = new MuxSession(nullConn(), muxOptions(tun, "client"));
      t.equal(session[field(key)], tun[field(key)], `${key}: ${JSON.stringify(value)} accepted by both`);
      session.destroy();
    }
    for (const [value, option] of past) {
      t.throws(() => tuning({ ...others, [key]: value }), ConfigError, `${key}: ${JSON.stringify(value)} refused by the config`);
      t.throws(() => new MuxSession(nullConn(), { ...muxOptions(tuning(others), "client"), [field(key)]: option }), RangeError,
        `${key}: ${option} refused by MuxSession`);
    }
  }
});

t.test("max_auto_window: a fast reader's window grows to the ceiling, no further", async (t) => {
  // A frozen clock makes every RTT sample 0 and every epoch take 0 ms: "drained within 4 RTTs"
  // always holds once an RTT is known, so growth depends on consumption alone (as in mux.test.ts).
  const run = async (yaml: Record<string, unknown>): Promise<number> => {
    const { client, server } = await sessions(t, yaml, yaml, { clock: () => 0 });
    await server.ping(); // the receiver's first RTT sample
    const s = client.open();
    s.on("error", () => {});
    const [rs] = (await once(server, "stream")) as [MuxStream];
  rs.on("error", () => {});
    rs.on("error", () => {});
    const got = readBytes(rs, 8 * MiB);
    await writeAll(s, 8 * MiB);
    await got;
    return rs.rxWindow;
  };
  const W = 256 * KiB;
  t.equal(await run({ max_stream_window: "256KiB", max_auto_window: "1MiB" }), MiB, "grew from 256KiB to max_auto_window, 1MiB, and stopped");
  t.ok(await run({ max_stream_window: "256KiB" }) > MiB, "with the default ceiling the same transfer grows it further");
  t.equal(await run({ max_stream_window: "256KiB", max_auto_window: "256KiB" }), W, "equal to max_stream_window: no growth");
});

t.test("accept_backlog: with N streams waiting, the (N+1)th SYN gets RST", async (t) => {
  const { a, client, server } = await sessions(t, {}, { accept_backlog: 3 });
  const fromServer = tapIncoming(a);
  const errors: (Error | undefined)[] = [];
  const streams = [0, 1, 2, 3].map((i) => {
    const s = client.open();
    s.on("error", (err: Error) => { errors[i] = err; });
    s.write(`stream ${i}`);
    return s;
  });
  // The server answers the SYNs in order, before our ping: after two round trips every ACK,
  // RST and the errors they raise are in.
  await client.ping();
  await client.ping();
  t.match(errors, [undefined, undefined, undefined, { code: "ECONNRESET", message: /refused by peer/ }], "the fourth stream is refused");
  t.same(flagged(fromServer, Flag.RST), [streams[3]!.id], "RST on the wire for the fourth only");
  t.same(flagged(fromServer, Flag.ACK), streams.slice(0, 3).map((s) => s.id), "ACK for the three that wait");
  // The three were kept, data and all, for the first listener.
  const taken: string[] = [];
  server.on("stream", (s: MuxStream) => { s.on("error", () => {}); s.once("data", (d: Buffer) => taken.push(d.toString())); });
  await untilPing(client, () => taken.length === 3, "queued streams delivered");
  t.same(taken, ["stream 0", "stream 1", "stream 2"]);
});

t.test("max_frame_payload: no Data frame on the wire is longer", async (t) => {
  const { b, client, server } = await sessions(t, { max_frame_payload: "1000B" }, {});
  const seen = tapIncoming(b);
  const s = client.open();
  s.on("error", () => {});
  const [rs] = (await once(server, "stream")) as [MuxStream];
  rs.on("error", () => {});
  // Big writes, one-byte writes, and a burst of small ones (gathered by _writev).
  const chunks = [POOL.subarray(0, 300 * KiB), POOL.subarray(5, 6), POOL.subarray(7, 1007), POOL.subarray(0, 64 * KiB + 1)];
  for (let i = 0; i < 200; i++) chunks.push(POOL.subarray(i * 100, i * 100 + 37));
  const total = chunks.reduce((n, c) => n + c.length, 0);
  const got = readBytes(rs, total);
  for (const c of chunks) s.write(c);
  t.equal(sha256([await got]), sha256(chunks), "every byte arrives");
  const lengths = dataLengths(seen, s.id).filter((n) => n > 0);
  t.equal(lengths.reduce((n, l) => n + l, 0), total);
  t.equal(Math.max(...lengths), 1000, `${lengths.length} frames, the longest 1000 bytes`);
});

t.test("write_batch: the session hands the connection at most write_batch + one frame at a time", async (t) => {
  /** Bytes per hand-over: one write(), or the writes between cork() and uncork(). */
  const batchesOf = (sock: net.Socket): number[] => {
    const batches: number[] = [];
    let corked = -1;
    const { cork, uncork, write } = sock;
    sock.cork = function (this: net.Socket) { corked = 0; cork.call(this); };
    sock.uncork = function (this: net.Socket) { batches.push(corked); corked = -1; uncork.call(this); };
    sock.write = function (this: net.Socket, chunk: unknown, ...rest: unknown[]): boolean {
      const n = Buffer.isBuffer(chunk) ? chunk.length : 0;
      if (corked >= 0) corked += n;
      else batches.push(n);
      return (write as (...args: unknown[]) => boolean).call(this, chunk, ...rest);
    } as typeof sock.write;
    return batches;
  };
  const run = async (yaml: Record<string, unknown>): Promise<number> => {
    const { a, client, server } = await sessions(t, { max_frame_payload: "2000B", ...yaml }, {});
    const batches = batchesOf(a);
    const s = client.open();
    s.on("error", () => {});
    const [rs] = (await once(server, "stream")) as [MuxStream];
  rs.on("error", () => {});
    rs.on("error", () => {});
    const got = readBytes(rs, 2 * MiB);
    s.write(POOL.subarray(0, 2 * MiB));
    t.equal(sha256([await got]), sha256([POOL.subarray(0, 2 * MiB)]));
    return Math.max(...batches);
  };
  const FRAME = 12 + 2000;
  const CONTROL_SLACK = 12 * 16; // window updates and pings queued in the same turn
  const small = await run({ write_batch: "10000B" });
  t.ok(small >= 10_000, `batches reach write_batch (largest ${small} bytes)`);
  t.ok(small < 10_000 + FRAME + CONTROL_SLACK, `and stop there: largest ${small} < 10000 + one frame`);
  const dflt = await run({});
  t.ok(dflt > 10_000 + FRAME + CONTROL_SLACK, `with the default (256KiB) batches are larger: ${dflt} bytes`);
});

t.test("close_linger: after close(), a peer that keeps its side open is cut off at close_linger", async (t) => {
  const { a, b } = await loopback(t);
  const session = new MuxSession(a, muxOptions(tuning({ close_linger: "250ms" }), "client"));
  session.on("error", () => {});
  const peerGotFin = once(b, "end");
  b.resume(); // reads, never ends: the peer "has not closed its side"
  mock.timers.enable({ apis: ["setTimeout"] });
  try {
    session.close(); // no streams: flush, FIN, start the linger timer
    t.equal(a.destroyed, false, "not destroyed at close()");
    mock.timers.tick(249);
    t.equal(a.destroyed, false, "not destroyed 1 ms before close_linger");
    mock.timers.tick(1);
    t.equal(a.destroyed, true, "destroyed at close_linger");
  } finally {
    mock.timers.reset();
  }
  await peerGotFin;
  t.pass("the peer saw the FIN close() sent first");
});

t.test("splice with a small maxQueuedBytes pauses its source: a stalled reader pins little memory", async (t) => {
  const QUEUE = 16 * KiB;
  const front = await loopback(t);
  const back = await loopback(t);
  splice(front.b, back.a, undefined, QUEUE);
  back.b.pause(); // the backend reads nothing
  const payload = POOL.subarray(0, 4 * MiB);
  const writer = (async () => {
    for (let off = 0; off < payload.length; off += 64 * KiB) {
      if (!front.a.write(payload.subarray(off, off + 64 * KiB))) await once(front.a, "drain");
    }
    front.a.end();
  })();
  // Kernel buffers fill, then splice's queue; each turn of the loop moves bytes until it pauses.
  for (let turns = 0; !front.b.isPaused() && turns < 1_000_000; turns++) await new Promise((r) => setImmediate(r));
  t.ok(front.b.isPaused(), "splice paused the source");
  t.ok(back.a.writableLength < QUEUE + MAX_READ_BYTES,
    `queued in splice's destination: ${back.a.writableLength} bytes (bound ${QUEUE} + one read, default ${SPLICE_MAX_QUEUED_BYTES})`);
  const got = readBytes(back.b, payload.length);
  back.b.resume();
  await writer;
  t.equal(sha256([await got]), sha256([payload]), "every byte arrives once the backend reads");
});

// ---------------------------------------------------------------------------
// Through the hub. The hub's end: a real hub, and a stand-in cog built from dialHub (as the
// cog's TunnelClient is) that says hello and then does what each test needs. The cog's end:
// the same dialHub session, and for cog.splice_queue a real cog.

const HUB_TUNNEL = {
  max_stream_window: "256KiB", max_auto_window: "512KiB", max_frame_payload: "4000B",
  write_batch: "32KiB", close_linger: "250ms",
};
const COG_TUNNEL = {
  max_stream_window: "256KiB", max_auto_window: "768KiB", accept_backlog: 1, max_frame_payload: "3000B",
  write_batch: "48KiB", close_linger: "300ms",
};
const SPLICE_QUEUE = 16 * KiB;
const KEEPALIVE = { keepalive_interval: "1s", keepalive_timeout: "3s" };

function hubCfg(dir: string): HubConfig {
  return parseConfig({
    hub: {
      data_dir: path.join(dir, "hub"), domain: HUB_DOMAIN,
      listen: { tls: "127.0.0.1:0", http: "127.0.0.1:0", tunnel: "127.0.0.1:0", tcp_host: "127.0.0.1", admin: "127.0.0.1:0" },
      limits: { splice_queue: `${SPLICE_QUEUE}B` },
      tunnel: { ...KEEPALIVE, ...HUB_TUNNEL },
    },
  }).hub!;
}

function cogCfg(dir: string, name: string, hubPort: number, routes: unknown[] = []): CogConfig {
  return parseConfig({
    cog: {
      data_dir: path.join(dir, `cog-${name}`), hub: `127.0.0.1:${hubPort}`, routes,
      reconnect: { min_delay: "100ms", max_delay: "500ms" },
      splice_queue: `${SPLICE_QUEUE}B`,
      tunnel: { ...KEEPALIVE, ...COG_TUNNEL },
      listen: { admin: "127.0.0.1:0" },
    },
  }).cog!;
}

const request = (name: string, cog: string, bodyBytes = 0): Buffer =>
  Buffer.from(`POST /${name} HTTP/1.1\r\nHost: web.${cog}.${HUB_DOMAIN}\r\nContent-Length: ${bodyBytes}\r\n\r\n`);

t.test("through the hub: hub.tunnel and hub.limits.splice_queue at its end, cog.tunnel at a dialHub cog's end", async (t) => {
  const dir = tmpDir("capsul-muxlimits-");
  t.teardown(() => fs.rmSync(dir, { recursive: true, force: true }));
  const hubConfig = hubCfg(dir);
  const hub = await startHub(hubConfig, testLogger("hub"));
  t.teardown(() => hub.close());
  const cfg = cogCfg(dir, "c1", hub.ports.tunnel);
  const hubAddr = { host: "127.0.0.1", port: hub.ports.tunnel };
  const invite = await createInvite(hubConfig, "c1");
  await enroll({ hub: hubAddr, token: invite.token, caFingerprint: invite.caFingerprint, dataDir: cfg.dataDir, tuning: cfg.tunnel });
  const id = loadIdentity(cfg.dataDir);
  const hubSockets = watchSockets(t, "net.server.socket");

  const { socket, session } = await dialHub({ hub: hubAddr, tuning: cfg.tunnel, caPem: id.caPem, keyPem: id.keyPem, certPem: id.certPem });
  t.teardown(() => session.destroy());
  session.on("error", () => {});
  const fromHub = tapIncoming(socket);
  const toHub = tapOutgoing(socket);
  const control = session.open();
  control.on("error", () => {});
  control.write(encodeMessage({
    type: "hello", protocol: TUNNEL_PROTOCOL_VERSION, software: "muxlimits-test",
    routes: [{ name: "web", kind: "http", hostname: `web.c1.${HUB_DOMAIN}` }],
  }));
  const welcome = await new MessageReader<HubMessage>(control).next();
  t.match(welcome, { type: "welcome", accepted: [{ name: "web" }] }, "the hub took the route");
  const hubSession = hub.tunnels.links.get("c1")!.session!;

  /** A visitor on the hub's HTTP listener; errors are expected when the hub cuts it off. */
  const visitor = async (t: Test): Promise<net.Socket> => {
    const v = net.connect({ host: "127.0.0.1", port: hub.ports.http!, allowHalfOpen: true });
    v.on("error", () => {});
    t.teardown(() => v.destroy());
    await once(v, "connect");
    return v;
  };
  const newSyn = (after: number): Promise<number> => untilPing(session, () => flagged(fromHub, Flag.SYN).length > after, "hub opened a stream")
    .then(() => flagged(fromHub, Flag.SYN)[after]!);

  t.test("both sessions carry the configured values", async (t) => {
    for (const f of MUX_FIELDS) {
      // The hub has no accept_backlog key: it refuses every stream but the control one.
      const want = f === "acceptBacklog" ? HUB_ACCEPT_BACKLOG : hubConfig.tunnel[f];
      t.equal(hubSession[f], want, `hub: ${f} = ${want}`);
    }
    for (const f of MUX_FIELDS) t.equal(session[f], cfg.tunnel[f], `cog: ${f} = ${cfg.tunnel[f]}`);
  });

  t.test("past hub.tunnel.max_moves, every other stream a cog opens is reset at once", async (t) => {
    // After the hello, a stream a cog opens is a VM move (gateway/moves.ts) that owes its
    // header within move_answer_timeout; at most max_moves of those are taken at once, and
    // any further one is reset before a byte of it is read.
    const maxMoves = hubConfig.tunnel.maxMoves;
    t.ok(maxMoves >= 1, `max_moves ${maxMoves}`);
    const errors: (Error | undefined)[] = [];
    const extra = Array.from({ length: maxMoves + 3 }, (_v, i) => { const s = session.open(); s.on("error", (err: Error) => { errors[i] = err; }); return s; });
    await session.ping(); // the hub answers the SYNs before the ping
    await session.ping();
    t.equal(HUB_ACCEPT_BACKLOG, 0);
    const beyond = extra.slice(maxMoves);
    for (const [i, s] of beyond.entries()) t.match(errors[maxMoves + i], { code: "ECONNRESET" }, `stream ${s.id} beyond max_moves: reset`);
    const rst = flagged(fromHub, Flag.RST);
    t.same(beyond.map((s) => rst.includes(s.id)), beyond.map(() => true), "RST on the wire for each stream beyond max_moves");
    t.same(extra.slice(0, maxMoves).map((s) => rst.includes(s.id)), extra.slice(0, maxMoves).map(() => false), "the first max_moves wait for their move header");
    for (const s of extra) s.destroy();
  });

  t.test("cog.tunnel.accept_backlog: with one visitor stream waiting at the cog, the next is refused", async (t) => {
    const syns = flagged(fromHub, Flag.SYN).length;
    const first = await visitor(t);
    first.write(request("first", "c1"));
    const firstId = await newSyn(syns);
    const second = await visitor(t);
    let secondClosed = false;
    second.once("close", () => { secondClosed = true; });
    second.write(request("second", "c1"));
    const secondId = await newSyn(syns + 1);
    await untilPing(session, () => secondClosed, "the hub closes the refused visitor", 1000);
    // Even ids are the hub's streams (it is the yamux server); the odd ones were the test's own above.
    t.same(flagged(toHub, Flag.RST).filter((id) => id % 2 === 0), [secondId], "the cog sent RST for the second stream only; the hub closed that visitor");
    // The waiting stream is delivered, with its visitor header and request, to the first listener.
    const [s] = (await once(session, "stream")) as [MuxStream];
    s.on("error", () => {});
    t.equal(s.id, firstId);
    const reader = new MessageReader<VisitorHeader>(s);
    t.match(await reader.next(), { type: "visitor", route: "web", host: `web.c1.${HUB_DOMAIN}` });
    t.match(reader.detach().toString(), /^POST \/first /);
    s.destroy();
  });

  // From the next test on, the stand-in cog takes every visitor stream the hub opens.
  const streams = new EventEmitter();

  t.test("max_frame_payload: hub → cog frames are at most hub.tunnel's, cog → hub at most cog.tunnel's", async (t) => {
    session.on("stream", (s: MuxStream) => { s.on("error", () => {}); streams.emit("stream", s); });
    const body = POOL.subarray(0, MiB);
    const answer = POOL.subarray(MiB, 2 * MiB); // what writeAll(s, MiB, MiB) sends
    const v = await visitor(t);
    const accepted = once(streams, "stream") as Promise<[MuxStream]>;
    const head = request("big", "c1", body.length);
    v.write(Buffer.concat([head, body]));
    const [s] = await accepted;
    const reader = new MessageReader<VisitorHeader>(s);
    await reader.next();
    const rest = reader.detach();
    const got = await readBytes(s, head.length + body.length - rest.length);
    t.equal(sha256([rest, got]), sha256([head, body]), "the cog got the request intact");
    const visitorGot = readBytes(v, answer.length);
    await writeAll(s, answer.length, MiB);
    t.equal(sha256([await visitorGot]), sha256([answer]), "the visitor got the answer intact");
    const down = dataLengths(fromHub, s.id).filter((n) => n > 0);
    const up = dataLengths(toHub, s.id).filter((n) => n > 0);
    t.equal(Math.max(...down), 4000, `hub → cog: ${down.length} frames, the longest 4000 bytes (hub.tunnel.max_frame_payload)`);
    t.equal(Math.max(...up), 3000, `cog → hub: ${up.length} frames, the longest 3000 bytes (cog.tunnel.max_frame_payload)`);
  });

  t.test("hub.limits.splice_queue: a cog that stops reading makes the hub stop reading the visitor", async (t) => {
    const W = cfg.tunnel.maxStreamWindowBytes; // what the hub may send before the cog's credit stops
    const v = await visitor(t);
    const accepted = once(streams, "stream") as Promise<[MuxStream]>;
    const body = Buffer.alloc(8 * MiB, 7);
    v.write(Buffer.concat([request("stall", "c1", body.length), body]));
    const [s] = await accepted; // never read
    const hubSide = hubSockets.find((h) => h.remotePort === v.localPort && h.localPort === hub.ports.http);
    t.ok(hubSide, "the hub's socket for this visitor");
    await untilPing(session, () => s.readableLength >= W, "the cog's window is full");
    await untilPing(session, () => hubSide!.isPaused(), "the hub paused the visitor");
    t.equal(s.readableLength, W, "the stalled cog holds exactly its window");
    // What the hub took from the visitor, plus the visitor header (under 1 KiB), went into its
    // stream: the window the cog holds, and what waits in the stream's write queue.
    const taken = hubSide!.bytesRead - hubSide!.readableLength;
    const queued = taken + C.MIN_VISITOR_HEADER_MAX_BYTES - W;
    t.ok(queued < SPLICE_QUEUE + MAX_READ_BYTES,
      `the hub queued at most ${queued} bytes for the stalled cog (bound ${SPLICE_QUEUE} + one read; the default would allow ${SPLICE_MAX_QUEUED_BYTES})`);
    s.destroy();
  });
});

t.test("cog.splice_queue: a hub end that stops reading makes the cog stop reading its target", async (t) => {
  const dir = tmpDir("capsul-muxlimits-");
  t.teardown(() => fs.rmSync(dir, { recursive: true, force: true }));
  // The target answers every connection with 8 MiB at once.
  const backend = net.createServer((s) => { s.on("error", () => {}); s.write(Buffer.alloc(8 * MiB, 9)); });
  const backendPort = await listen(backend);
  t.teardown(() => closeServer(backend));
  const cogSockets = watchSockets(t, "net.client.socket");

  const hubConfig = hubCfg(dir);
  const hub = await startHub(hubConfig, testLogger("hub"));
  t.teardown(() => hub.close());
  const cfg = cogCfg(dir, "c2", hub.ports.tunnel, [{ name: "web", kind: "http", hostname: `web.c2.${HUB_DOMAIN}`, target: `127.0.0.1:${backendPort}` }]);
  const invite = await createInvite(hubConfig, "c2");
  await enroll({ hub: { host: "127.0.0.1", port: hub.ports.tunnel }, token: invite.token, caFingerprint: invite.caFingerprint, dataDir: cfg.dataDir, tuning: cfg.tunnel });
  const cog = await startCog(cfg, testLogger("cog"));
  t.teardown(() => cog.close());
  await once(cog.client, "routes");

  // A visitor stream opened from the hub's end, as visitors.ts does; nobody ever reads it.
  const hubSession = hub.tunnels.sessionFor("c2");
  if (!(hubSession instanceof MuxSession)) throw new Error("no live session for c2");
  const s = hubSession.open();
  s.on("error", () => {});
  t.teardown(() => s.destroy());
  const header: VisitorHeader = { type: "visitor", kind: "http", route: "web", host: `web.c2.${HUB_DOMAIN}`, srcAddr: "127.0.0.1", srcPort: 40000, dstAddr: "127.0.0.1", dstPort: 80 };
  s.write(encodeMessage(header));
  const W = hubConfig.tunnel.maxStreamWindowBytes; // what the cog may send before the hub's credit stops
  await untilPing(hubSession, () => s.readableLength >= W, "the hub end's window is full");
  const target = () => cogSockets.find((c) => c.remotePort === backendPort);
  await untilPing(hubSession, () => target()?.isPaused() === true, "the cog paused its target");
  t.equal(s.readableLength, W, "the stalled hub end holds exactly its window");
  const sock = target()!;
  const queued = sock.bytesRead - sock.readableLength - W;
  t.ok(queued < SPLICE_QUEUE + MAX_READ_BYTES,
    `the cog queued about ${queued} bytes for the stalled hub end (bound ${SPLICE_QUEUE} + one read; the default would allow ${SPLICE_MAX_QUEUED_BYTES})`);
});
