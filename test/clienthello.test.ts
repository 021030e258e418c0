import t, { type Test } from "tap";
import { readFileSync } from "node:fs";
import { dirname, join } from "node:path";
import { fileURLToPath } from "node:url";
import {
  CLIENT_HELLO_MAX_BYTES,
  normalizeHostname,
  parseClientHello,
  TLS_ALERT_INTERNAL_ERROR,
  TLS_ALERT_UNRECOGNIZED_NAME,
  type HelloResult,
} from "../gateway/clienthello.js";
import { prng } from "./helpers/prng.js";

const FIXTURES = join(dirname(fileURLToPath(import.meta.url)), "fixtures", "clienthello");
interface Fixture { file: string; client: string; sni: string | null; alpn: string[]; bytes: number }
const manifest: Fixture[] = JSON.parse(readFileSync(join(FIXTURES, "fixtures.json"), "utf8"));
const fixtures = manifest.map((f) => ({ ...f, data: readFileSync(join(FIXTURES, f.file)) }));


// ---- builders for hand-made hellos (RFC 8446 §4.1.2, §4.2; RFC 6066 §3; RFC 7301 §3.1) ----
const u16 = (n: number) => Buffer.from([n >> 8, n & 0xff]);
const vec8 = (b: Buffer) => Buffer.concat([Buffer.from([b.length]), b]);
const vec16 = (b: Buffer) => Buffer.concat([u16(b.length), b]);
const ext = (type: number, data: Buffer) => Buffer.concat([u16(type), vec16(data)]);
const sniExt = (...names: [number, string][]) =>
  ext(0, vec16(Buffer.concat(names.map(([type, n]) => Buffer.concat([Buffer.from([type]), vec16(Buffer.from(n, "latin1"))])))));
const alpnExt = (...protos: string[]) => ext(16, vec16(Buffer.concat(protos.map((p) => vec8(Buffer.from(p, "latin1"))))));
/** key_share (51) with an X25519MLKEM768 (0x11ec) share of 1184 + 32 bytes and an X25519 share, as Chrome sends. */
const pqKeyShareExt = () =>
  ext(51, vec16(Buffer.concat([u16(0x11ec), vec16(Buffer.alloc(1216, 0xab)), u16(0x001d), vec16(Buffer.alloc(32, 0xcd))])));

function helloBody(extensions: Buffer[] | null, opts: { sessionId?: Buffer; suites?: Buffer; compression?: Buffer } = {}): Buffer {
  const parts = [
    u16(0x0303),
    Buffer.alloc(32, 0x11),
    vec8(opts.sessionId ?? Buffer.alloc(32, 0x22)),
    vec16(opts.suites ?? Buffer.from([0x13, 0x01, 0x13, 0x02, 0x13, 0x03])),
    vec8(opts.compression ?? Buffer.from([0])),
  ];
  if (extensions) parts.push(vec16(Buffer.concat(extensions)));
  return Buffer.concat(parts);
}
function handshake(body: Buffer, type = 1): Buffer {
  return Buffer.concat([Buffer.from([type, body.length >> 16, (body.length >> 8) & 0xff, body.length & 0xff]), body]);
}
/** Frames a handshake message into TLS records with the given fragment sizes (the last takes the rest). */
function frame(msg: Buffer, sizes: number[] = [], contentType = 22): Buffer {
  const out: Buffer[] = [];
  let off = 0;
  for (let i = 0; off < msg.length || i === 0; i++) {
    const n = i < sizes.length ? sizes[i]! : msg.length - off;
    const frag = msg.subarray(off, off + n);
    out.push(Buffer.from([contentType, 3, 1]), u16(frag.length), frag);
    off += n;
    if (i >= sizes.length) break;
  }
  return Buffer.concat(out);
}
const build = (extensions: Buffer[] | null, sizes?: number[]) => frame(handshake(helloBody(extensions)), sizes);
/** Concatenates the payloads of all records: the handshake message. */
function unframe(records: Buffer): Buffer {
  const parts: Buffer[] = [];
  for (let off = 0; off < records.length; ) {
    const len = records.readUInt16BE(off + 3);
    parts.push(records.subarray(off + 5, off + 5 + len));
    off += 5 + len;
  }
  return Buffer.concat(parts);
}
/** Inserts an extension at the front of a real hello's extensions block and fixes every enclosing length. */
function spliceExtension(records: Buffer, extension: Buffer): Buffer {
  const msg = unframe(records);
  const body = msg.subarray(4);
  let off = 2 + 32;
  off += 1 + body[off]!; // session id
  off += 2 + body.readUInt16BE(off); // cipher suites
  off += 1 + body[off]!; // compression
  const extsLen = body.readUInt16BE(off);
  const exts = body.subarray(off + 2, off + 2 + extsLen);
  const newBody = Buffer.concat([body.subarray(0, off), vec16(Buffer.concat([extension, exts]))]);
  return frame(handshake(newBody));
}

/** Feeds the growing buffer at the given cut points; returns the index of the first non-need-more answer and it. */
function feed(buf: Buffer, cuts: number[], max?: number): { at: number; result: HelloResult } {
  for (const cut of cuts) {
    const r = parseClientHello(buf.subarray(0, cut), max);
    if (r.type !== "need-more") return { at: cut, result: r };
  }
  return { at: -1, result: { type: "need-more" } };
}
const byteCuts = (n: number) => Array.from({ length: n }, (_, i) => i + 1);
function randomCuts(n: number, rnd: () => number): number[] {
  const cuts = new Set<number>([n]);
  const count = 1 + Math.floor(rnd() * 8);
  for (let i = 0; i < count; i++) cuts.add(1 + Math.floor(rnd() * n));
  return [...cuts].sort((a, b) => a - b);
}

function expectOk(t: Test, buf: Buffer, sni: string | null, alpn: string[], consumed = buf.length, max?: number): void {
  const r = parseClientHello(buf, max);
  t.same(r, { type: "ok", sni, alpn, consumed });
}

t.test("fixtures exist", async (t) => {
  t.ok(fixtures.length > 0, "at least one captured ClientHello");
  t.ok(fixtures.some((f) => f.sni === null), "one without SNI");
  t.ok(fixtures.some((f) => f.client.startsWith("curl")), "one from curl");
  t.ok(fixtures.some((f) => f.client.startsWith("node")), "one from node");
});

for (const f of fixtures) {
  t.test(`captured ${f.file} (${f.client})`, async (t) => {
    t.equal(f.data.length, f.bytes);
    expectOk(t, f.data, f.sni, f.alpn);

    // What follows the hello (TLS 1.3 middlebox-compat CCS, early data) is not part of it.
    const ccs = Buffer.from([20, 3, 3, 0, 1, 1]);
    expectOk(t, Buffer.concat([f.data, ccs]), f.sni, f.alpn, f.data.length);

    const whole = feed(f.data, byteCuts(f.data.length));
    t.equal(whole.at, f.data.length, "byte at a time: need-more until the last byte");
    t.same(whole.result, { type: "ok", sni: f.sni, alpn: f.alpn, consumed: f.data.length });

    const rnd = prng(f.bytes);
    for (let i = 0; i < 20; i++) {
      const r = feed(f.data, randomCuts(f.data.length, rnd));
      if (r.at !== f.data.length || r.result.type !== "ok") {
        t.fail(`random split ${i}: ${JSON.stringify(r)}`);
        break;
      }
    }

    // The same handshake message re-framed into 2–5 records, each fed byte at a time.
    const msg = unframe(f.data);
    for (let records = 2; records <= 5; records++) {
      const size = Math.ceil(msg.length / records);
      const framed = frame(msg, Array(records - 1).fill(size));
      t.equal(framed.length, msg.length + 5 * records);
      const r = feed(framed, byteCuts(framed.length));
      t.equal(r.at, framed.length, `${records} records: need-more until the end`);
      t.same(r.result, { type: "ok", sni: f.sni, alpn: f.alpn, consumed: framed.length });
    }
    // Tiny first fragments: the handshake header itself split across records.
    const tiny = frame(msg, [1, 2, 1, 7]);
    expectOk(t, tiny, f.sni, f.alpn);

    // Post-quantum-sized (1.5 KB) and >8 KiB versions of the real hello.
    for (const extra of [1300, 9000]) {
      const big = spliceExtension(f.data, ext(0x3a3a, Buffer.alloc(extra)));
      t.ok(big.length > extra);
      expectOk(t, big, f.sni, f.alpn);
      const r = feed(big, randomCuts(big.length, rnd));
      t.equal(r.result.type, "ok", `${big.length}-byte hello in random splits`);
      t.equal(feed(frame(unframe(big), [500, 3000, 1]), byteCuts(big.length + 15)).result.type, "ok", "big hello over 4 records");
    }

    // Mutating any single byte (every length field included) gives an answer, never a throw.
    let thrown = 0;
    const kinds = new Set<string>();
    for (let i = 0; i < f.data.length; i++) {
      for (const v of [0x00, 0xff, f.data[i]! ^ 0x01]) {
        const m = Buffer.from(f.data);
        m[i] = v;
        try {
          kinds.add(parseClientHello(m).type);
        } catch {
          thrown++;
        }
      }
    }
    t.equal(thrown, 0, "no mutation throws");
    t.ok(kinds.has("invalid") && kinds.has("ok"), "mutations produce both ok and invalid");
  });
}

t.test("hand-made hellos", async (t) => {
  expectOk(t, build([sniExt([0, "Example.COM."]), alpnExt("h2", "http/1.1")]), "example.com", ["h2", "http/1.1"]);
  expectOk(t, build([alpnExt("acme-tls/1")]), null, ["acme-tls/1"]);
  expectOk(t, build([]), null, []);
  // RFC 5246 §7.4.1.2: a hello may carry no extensions block at all.
  expectOk(t, build(null), null, []);
  // An unknown name type is skipped, host_name still found.
  expectOk(t, build([sniExt([7, "opaque"], [0, "a.example"])]), "a.example", []);

  const pq = build([sniExt([0, "pq.example"]), alpnExt("h2"), pqKeyShareExt()]);
  t.ok(pq.length > 1300 && pq.length < 2048, `post-quantum hello is ${pq.length} bytes`);
  expectOk(t, pq, "pq.example", ["h2"]);
  t.equal(feed(pq, byteCuts(pq.length)).at, pq.length);

  const huge = build([sniExt([0, "huge.example"]), pqKeyShareExt(), ext(21, Buffer.alloc(8 * 1024))]);
  t.ok(huge.length > 8 * 1024, `big hello is ${huge.length} bytes`);
  expectOk(t, huge, "huge.example", []);
  const hugeMsg = unframe(huge);
  const r = feed(frame(hugeMsg, [2000, 2000, 2000, 2000]), byteCuts(huge.length + 20));
  t.same(r.result, { type: "ok", sni: "huge.example", alpn: [], consumed: huge.length + 20 });

  // Largest handshake that fits: 2 records of ~8 KiB, just under the cap.
  const nearCapBody = helloBody([sniExt([0, "cap.example"]), ext(21, Buffer.alloc(16 * 1024 - 200))]);
  const nearCap = frame(handshake(nearCapBody), [8000]);
  t.ok(nearCap.length <= CLIENT_HELLO_MAX_BYTES);
  expectOk(t, nearCap, "cap.example", []);
});

t.test("oversize", async (t) => {
  const big = build([sniExt([0, "a.example"]), ext(21, Buffer.alloc(4000))]);
  expectOk(t, big, "a.example", []);
  // A smaller cap rejects it as soon as the handshake header announces the length.
  const early = parseClientHello(big.subarray(0, 9), 1024);
  t.equal(early.type, "invalid");
  t.match((early as { reason: string }).reason, /exceeds 1024/);
  t.equal(parseClientHello(big, 1024).type, "invalid");
  // A handshake length beyond the default cap, declared in the first 9 bytes.
  const header = Buffer.from([22, 3, 1, 0x40, 0x00, 1, 0x00, 0x50, 0x00]);
  t.match(parseClientHello(header), { type: "invalid", reason: /exceeds/ });
  // Too many tiny records: the record headers push it past the cap.
  const msg = unframe(build([sniExt([0, "a.example"]), ext(21, Buffer.alloc(3000))]));
  const shredded = frame(msg, Array(Math.ceil(msg.length / 4)).fill(4));
  t.match(parseClientHello(shredded, 4096), { type: "invalid", reason: /exceeds 4096/ });
});

t.test("rejects", async (t) => {
  const good = build([sniExt([0, "ok.example"])]);
  const msg = unframe(good);
  const cases: [string, Buffer, RegExp][] = [
    // SSLv2 CLIENT-HELLO: 2-byte length with the high bit, msg type 1, version 3.1.
    ["SSLv2-style hello", Buffer.from([0x80, 0x2e, 0x01, 0x03, 0x01, 0x00, 0x15]), /SSLv2/],
    ["SSLv2-style, first byte only", Buffer.from([0x80]), /SSLv2/],
    ["application data first", Buffer.from([23, 3, 3, 0, 5, 1, 2, 3, 4, 5]), /not a handshake record/],
    ["alert first", Buffer.from([21]), /not a handshake record/],
    ["plain HTTP", Buffer.from("GET / HTTP/1.1\r\n"), /not a handshake record/],
    ["SSH banner", Buffer.from("SSH-2.0-OpenSSH_9.2\r\n"), /not a handshake record/],
    ["record major version 2", Buffer.from([22, 2]), /major/],
    ["zero-length record", Buffer.from([22, 3, 1, 0, 0]), /zero-length/],
    ["record over 2^14", Buffer.from([22, 3, 1, 0x40, 0x01]), /2\^14/],
    ["server hello instead", frame(handshake(helloBody([]), 2)), /expected client_hello/],
    ["handshake type seen in first fragment byte", Buffer.from([22, 3, 1, 0, 50, 11]), /expected client_hello/],
    ["alert between fragments", Buffer.concat([frame(msg.subarray(0, 10)), Buffer.from([21, 3, 3, 0, 2, 2, 40])]), /content type 21/],
    ["record runs past the hello", frame(Buffer.concat([msg, Buffer.from([0, 0, 0])])), /past the end/],
    ["second record runs past the hello", frame(Buffer.concat([msg, Buffer.alloc(40)]), [20]), /past the end/],
    ["session id > 32", frame(handshake(helloBody([], { sessionId: Buffer.alloc(33) }))), /legacy_session_id/],
    ["odd cipher suites", frame(handshake(helloBody([], { suites: Buffer.from([0x13, 0x01, 0x13]) }))), /cipher_suites/],
    ["no cipher suites", frame(handshake(helloBody([], { suites: Buffer.alloc(0) }))), /cipher_suites/],
    ["no compression methods", frame(handshake(helloBody([], { compression: Buffer.alloc(0) }))), /compression/],
    ["duplicate extension", build([alpnExt("h2"), alpnExt("h2")]), /duplicate extension 16/],
    ["empty SNI", build([sniExt([0, ""])]), /empty SNI/],
    ["empty server_name list", build([ext(0, vec16(Buffer.alloc(0)))]), /empty server_name list/],
    ["two host_names", build([sniExt([0, "a.example"], [0, "b.example"])]), /more than one name/],
    ["SNI with space", build([sniExt([0, "exa mple.com"])]), /not a valid DNS hostname/],
    ["SNI empty label", build([sniExt([0, "a..example"])]), /not a valid DNS hostname/],
    ["SNI leading hyphen", build([sniExt([0, "-a.example"])]), /not a valid DNS hostname/],
    ["SNI IPv4 literal", build([sniExt([0, "192.0.2.1"])]), /not a valid DNS hostname/],
    ["SNI UTF-8 (U-label)", build([ext(0, vec16(Buffer.concat([Buffer.from([0]), vec16(Buffer.from("bücher.example", "utf8"))])))]), /not a valid DNS hostname/],
    ["SNI label of 64", build([sniExt([0, "a".repeat(64) + ".example"])]), /not a valid DNS hostname/],
    ["server_name list overruns", build([ext(0, Buffer.from([0, 9, 0, 0, 3, 0x61]))]), /overruns/],
    ["server_name trailing bytes", build([ext(0, Buffer.concat([vec16(Buffer.from([0, 0, 1, 0x61])), Buffer.from([0])]))]), /trailing/],
    ["ALPN empty list", build([ext(16, vec16(Buffer.alloc(0)))]), /ALPN protocol list is empty/],
    ["ALPN empty name", build([ext(16, vec16(Buffer.from([0, 2, 0x68, 0x32])))]), /empty ALPN/],
    ["ALPN name overruns", build([ext(16, vec16(Buffer.from([5, 0x68, 0x32])))]), /overruns/],
    ["extension overruns block", build([Buffer.from([0, 16, 0, 50, 0])]), /overruns/],
    ["extension header truncated", build([Buffer.from([0])]), /truncated/],
    ["empty ClientHello body", frame(handshake(Buffer.alloc(0))), /truncated before legacy_version/],
    ["legacy_version not TLS", frame(handshake(Buffer.concat([u16(0x0200), Buffer.alloc(40)]))), /not TLS/],
    ["truncated random", frame(handshake(Buffer.concat([u16(0x0303), Buffer.alloc(20)]))), /truncated in random/],
    ["session id overruns", frame(handshake(Buffer.concat([u16(0x0303), Buffer.alloc(32), Buffer.from([20, 1])]))), /legacy_session_id overruns/],
    ["extensions block overruns", frame(handshake(Buffer.concat([helloBody(null), u16(10), Buffer.alloc(3)]))), /extensions block overruns/],
    ["bytes after extensions", frame(handshake(Buffer.concat([helloBody([]), Buffer.alloc(3)]))), /trailing bytes/],
  ];
  for (const [name, buf, reason] of cases) {
    const r = parseClientHello(buf);
    t.match(r, { type: "invalid", reason }, name);
  }
  // Invalid stays invalid as more bytes arrive (the peek stops at the first answer anyway).
  t.equal(parseClientHello(Buffer.concat([Buffer.from([0x80]), Buffer.alloc(100)])).type, "invalid");
});

t.test("need-more for prefixes, including the empty buffer", async (t) => {
  t.same(parseClientHello(Buffer.alloc(0)), { type: "need-more" });
  // A partial record header: nothing can change before the header and one payload byte.
  t.same(parseClientHello(Buffer.from([22])), { type: "need-more", needBytes: 6 });
  t.same(parseClientHello(Buffer.from([22, 3, 1, 0])), { type: "need-more", needBytes: 6 });
  // A whole header announcing 200 bytes: the record must complete.
  t.same(parseClientHello(Buffer.from([22, 3, 1, 0, 200, 1])), { type: "need-more", needBytes: 205 });
  // The handshake header says 1000 body bytes but this record carries 100: one more record at least.
  const hs = Buffer.from([22, 3, 1, 0, 100, 1, 0, 0x03, 0xe8]);
  t.same(parseClientHello(hs), { type: "need-more", needBytes: 105 + 5 + (1004 - 100) });
});

t.test("needBytes never overshoots: no prefix shorter than it gets another answer", async (t) => {
  // Every fixture, framed in 1-byte records (the worst drip) and in 3 records: for every
  // prefix, the first length with a non-need-more answer is at or after the hint.
  for (const f of fixtures) {
    const msg = unframe(f.data);
    for (const framed of [frame(msg, Array(Math.min(msg.length - 1, 300)).fill(1)), frame(msg, [Math.ceil(msg.length / 3), Math.ceil(msg.length / 3)])]) {
      if (framed.length > CLIENT_HELLO_MAX_BYTES) continue;
      const done = feed(framed, byteCuts(framed.length));
      t.equal(done.result.type, "ok", `${f.file}: parses whole (${framed.length} bytes)`);
      let bad = 0;
      let calls = 0;
      for (let n = 1; n < done.at; n++) {
        const r = parseClientHello(framed.subarray(0, n));
        if (r.type === "need-more" && (r.needBytes ?? 0) > done.at) bad++;
      }
      // What the peek does: call again only once the hint is reached.
      for (let n = 1, need = 0; n <= framed.length; n++) {
        if (n < need) continue;
        calls++;
        const r = parseClientHello(framed.subarray(0, n));
        if (r.type !== "need-more") break;
        need = r.needBytes ?? 0;
      }
      t.equal(bad, 0, `${f.file}, ${framed.length} bytes: no hint beyond the answer`);
      t.ok(calls <= 100, `${f.file}, ${framed.length} bytes dripped a byte at a time: ${calls} parser calls, not ${done.at}`);
    }
  }
});

t.test("hostname normalization", async (t) => {
  t.equal(normalizeHostname("WWW.Example.ORG."), "www.example.org");
  t.equal(normalizeHostname("localhost"), "localhost");
  t.equal(normalizeHostname("xn--bcher-kva.example"), "xn--bcher-kva.example");
  t.equal(normalizeHostname("a-b.c0"), "a-b.c0");
  for (const bad of ["", ".", "a..b", "a.b..", "under_score.example", "a-.example", "1.2.3.4", "x".repeat(254), "a b"]) {
    t.equal(normalizeHostname(bad), null, JSON.stringify(bad));
  }
});

t.test("alerts", async (t) => {
  // RFC 8446 §5.1 record (alert=21, 0x0303, length 2) + §6 Alert (fatal=2, description).
  t.same([...TLS_ALERT_UNRECOGNIZED_NAME], [21, 3, 3, 0, 2, 2, 112]);
  t.same([...TLS_ALERT_INTERNAL_ERROR], [21, 3, 3, 0, 2, 2, 80]);
});

t.test("fuzz: random and mutated input never throws", async (t) => {
  const rnd = prng(0xc0ffee);
  const seeds = [...fixtures.map((f) => f.data), build([sniExt([0, "f.example"]), alpnExt("h2"), pqKeyShareExt()])];
  let thrown = 0;
  const counts: Record<string, number> = {};
  const FUZZ_ITERATIONS = 3000;
  for (let i = 0; i < FUZZ_ITERATIONS; i++) {
    let input: Buffer;
    if (i % 3 === 0) {
      // Random bytes behind a plausible record header.
      const body = Buffer.from(Array.from({ length: Math.floor(rnd() * 300) }, () => Math.floor(rnd() * 256)));
      input = Buffer.concat([Buffer.from([22, 3, 1, Math.floor(rnd() * 4), Math.floor(rnd() * 256), 1]), body]);
    } else {
      input = Buffer.from(seeds[Math.floor(rnd() * seeds.length)]!);
      const mutations = 1 + Math.floor(rnd() * 6);
      for (let m = 0; m < mutations; m++) input[Math.floor(rnd() * input.length)] = Math.floor(rnd() * 256);
      if (rnd() < 0.3) input = input.subarray(0, Math.floor(rnd() * input.length));
    }
    try {
      const r = parseClientHello(input);
      counts[r.type] = (counts[r.type] ?? 0) + 1;
    } catch (err) {
      thrown++;
      if (thrown === 1) t.fail(`threw on ${input.toString("hex")}: ${err}`);
    }
  }
  t.equal(thrown, 0, `${FUZZ_ITERATIONS} inputs, none threw (${JSON.stringify(counts)})`);
});
