import t from "tap";
import {
  FRAME_HEADER_BYTES,
  Flag,
  FrameDecoder,
  FrameType,
  decodeHeader,
  encodeHeader,
  type DecodeStep,
  type FrameHeader,
  type FrameTypeValue,
} from "../protocol/frame.js";
import { prng as rng } from "./helpers/prng.js";

interface Frame {
  type: FrameTypeValue;
  flags: number;
  streamId: number;
  length: number;
  payload?: Buffer;
}

function encodeFrame(f: Frame): Buffer {
  const h = encodeHeader(f.type, f.flags, f.streamId, f.payload ? f.payload.length : f.length);
  return f.payload ? Buffer.concat([h, f.payload]) : h;
}


function sampleFrames(): Frame[] {
  const r = rng(7);
  const frames: Frame[] = [
    { type: FrameType.WindowUpdate, flags: Flag.SYN, streamId: 1, length: 8 * 1024 * 1024 - 256 * 1024 },
    { type: FrameType.Data, flags: 0, streamId: 1, length: 0, payload: Buffer.from("hello") },
    { type: FrameType.Data, flags: Flag.FIN, streamId: 1, length: 0, payload: Buffer.alloc(0) },
    { type: FrameType.Ping, flags: Flag.SYN, streamId: 0, length: 0xdeadbeef },
    { type: FrameType.Ping, flags: Flag.ACK, streamId: 0, length: 0xdeadbeef },
    { type: FrameType.WindowUpdate, flags: Flag.RST, streamId: 0xffff_ffff, length: 0 },
    { type: FrameType.GoAway, flags: 0, streamId: 0, length: 2 },
  ];
  for (let i = 0; i < 20; i++) {
    const n = Math.floor(r() * 70_000);
    const payload = Buffer.alloc(n);
    for (let j = 0; j < n; j++) payload[j] = Math.floor(r() * 256);
    frames.push({ type: FrameType.Data, flags: i % 3 === 0 ? Flag.ACK : 0, streamId: 2 * i + 2, length: n, payload });
  }
  return frames;
}

/** Feeds `chunks` one push at a time, draining next() after each, and reassembles frames. */
function decodeChunks(chunks: Buffer[]): { frames: Frame[]; invalid?: string } {
  const dec = new FrameDecoder();
  const frames: Frame[] = [];
  let cur: { header: FrameHeader; parts: Buffer[] } | null = null;
  for (const c of chunks) {
    dec.push(c);
    for (;;) {
      const step: DecodeStep = dec.next();
      if (step.kind === "need-more") break;
      if (step.kind === "invalid") return { frames, invalid: step.reason };
      if (step.kind === "header") {
        const h = step.header;
        if (h.type === FrameType.Data && h.length > 0) cur = { header: h, parts: [] };
        else frames.push({ ...h, ...(h.type === FrameType.Data ? { payload: Buffer.alloc(0) } : {}) });
      } else {
        if (!cur) throw new Error("payload without header");
        cur.parts.push(Buffer.from(step.data)); // copy: proves pieces are not overwritten later
        if (step.last) {
          frames.push({ ...cur.header, payload: Buffer.concat(cur.parts) });
          cur = null;
        }
      }
    }
  }
  return { frames };
}

function normalise(frames: Frame[]): Frame[] {
  return frames.map((f) => ({
    type: f.type,
    flags: f.flags,
    streamId: f.streamId,
    length: f.payload ? f.payload.length : f.length,
    ...(f.payload ? { payload: f.payload } : {}),
  }));
}

t.test("header round trip", async (t) => {
  const buf = encodeHeader(FrameType.WindowUpdate, Flag.SYN | Flag.ACK, 0x1234_5678, 0x9abc_def0);
  t.equal(buf.length, FRAME_HEADER_BYTES);
  t.same([...buf], [0, 1, 0, 3, 0x12, 0x34, 0x56, 0x78, 0x9a, 0xbc, 0xde, 0xf0], "big endian, version 0");
  const r = decodeHeader(buf);
  t.same(r, { kind: "ok", header: { version: 0, type: 1, flags: 3, streamId: 0x1234_5678, length: 0x9abc_def0 } });
  t.same(decodeHeader(buf.subarray(0, 11)), { kind: "need-more" });
  const off = Buffer.alloc(20);
  encodeHeader(FrameType.Ping, Flag.SYN, 0, 42, off, 5);
  t.same(decodeHeader(off, 5), { kind: "ok", header: { version: 0, type: 2, flags: 1, streamId: 0, length: 42 } });
});

t.test("decoder: whole buffer, byte at a time, random splits give the same frames", async (t) => {
  const frames = sampleFrames();
  const wire = Buffer.concat(frames.map(encodeFrame));
  const want = normalise(frames);

  const whole = decodeChunks([wire]);
  t.equal(whole.invalid, undefined);
  t.same(normalise(whole.frames), want, "one chunk");

  const bytes: Buffer[] = [];
  for (let i = 0; i < wire.length; i++) bytes.push(wire.subarray(i, i + 1));
  const oneByOne = decodeChunks(bytes);
  t.equal(oneByOne.invalid, undefined);
  t.same(normalise(oneByOne.frames), want, "byte at a time");

  for (const seed of [1, 2, 3, 4, 5]) {
    const r = rng(seed);
    const chunks: Buffer[] = [];
    for (let i = 0; i < wire.length; ) {
      // Mostly tiny splits (header boundaries), sometimes big ones.
      const n = r() < 0.7 ? 1 + Math.floor(r() * 20) : 1 + Math.floor(r() * 40_000);
      chunks.push(Buffer.from(wire.subarray(i, i + n))); // separate allocations, not views of one buffer
      i += n;
    }
    const res = decodeChunks(chunks);
    t.equal(res.invalid, undefined);
    t.same(normalise(res.frames), want, `random split seed ${seed} (${chunks.length} chunks)`);
  }
});

t.test("decoder: payload pieces are zero-copy views when a frame sits in one chunk", async (t) => {
  const payload = Buffer.alloc(1000, 7);
  const wire = encodeFrame({ type: FrameType.Data, flags: 0, streamId: 3, length: 0, payload });
  const dec = new FrameDecoder();
  dec.push(wire);
  const h = dec.next();
  t.equal(h.kind, "header");
  const p = dec.next();
  if (p.kind !== "payload") throw new Error(`expected payload, got ${p.kind}`);
  t.equal(p.data.buffer, wire.buffer, "shares memory with the pushed chunk");
  t.equal(p.last, true);
  t.same(dec.next(), { kind: "need-more" });
  t.equal(dec.bufferedBytes, 0);
});

t.test("decoder: bufferedBytes counts a partial header", async (t) => {
  const dec = new FrameDecoder();
  dec.push(encodeHeader(FrameType.Ping, Flag.SYN, 0, 1).subarray(0, 5));
  t.same(dec.next(), { kind: "need-more" });
  t.equal(dec.bufferedBytes, 5);
});

t.test("decoder rejects bad version and unknown type, also split across calls", async (t) => {
  const good = encodeHeader(FrameType.Ping, Flag.SYN, 0, 1);
  const badVersion = Buffer.from(encodeHeader(FrameType.Ping, Flag.SYN, 0, 1));
  badVersion[0] = 1;
  const badType = Buffer.from(encodeHeader(FrameType.Ping, Flag.SYN, 0, 1));
  badType[1] = 4;
  for (const [name, bad, re] of [
    ["version", badVersion, /unsupported yamux version 1/],
    ["type", badType, /unknown yamux frame type 4/],
  ] as const) {
    const wire = Buffer.concat([good, bad, good]);
    const bytes: Buffer[] = [];
    for (let i = 0; i < wire.length; i++) bytes.push(wire.subarray(i, i + 1));
    const res = decodeChunks(bytes);
    t.equal(res.frames.length, 1, `${name}: the good frame before it decodes`);
    t.match(res.invalid, re, `${name}: rejected with a clear reason`);
    // Stays failed: framing is lost.
    const dec = new FrameDecoder();
    dec.push(bad);
    t.equal(dec.next().kind, "invalid");
    dec.push(good);
    t.equal(dec.next().kind, "invalid", `${name}: decoder stays failed`);
  }
});

t.test("decoder rejects stream-id misuse", async (t) => {
  t.match(decodeHeader(encodeHeader(FrameType.Ping, Flag.SYN, 5, 1)), { kind: "invalid", reason: /ping frame on stream 5/ });
  t.match(decodeHeader(encodeHeader(FrameType.GoAway, 0, 2, 0)), { kind: "invalid", reason: /go away frame on stream 2/ });
  t.match(decodeHeader(encodeHeader(FrameType.Data, 0, 0, 0)), { kind: "invalid", reason: /stream id 0/ });
  t.match(decodeHeader(encodeHeader(FrameType.WindowUpdate, 0, 0, 0)), { kind: "invalid", reason: /stream id 0/ });
});

t.test("decoder work is linear: a 4 MiB frame byte-at-a-time", async (t) => {
  // 4 Mi single-byte pushes; a quadratic decoder (concat per push) would not finish.
  const n = 4 * 1024 * 1024;
  const wire = Buffer.concat([encodeHeader(FrameType.Data, 0, 1, n), Buffer.alloc(n, 1)]);
  const dec = new FrameDecoder();
  let got = 0;
  for (let i = 0; i < wire.length; i++) {
    dec.push(wire.subarray(i, i + 1));
    for (let s = dec.next(); s.kind !== "need-more"; s = dec.next()) {
      if (s.kind === "payload") got += s.data.length;
    }
  }
  t.equal(got, n);
});
