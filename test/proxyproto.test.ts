import t from "tap";
import { ProtocolError } from "../lib/errors.js";
import {
  encodeProxyV1,
  encodeProxyV2,
  parseProxyHeader,
  PROXY_V1_MAX_BYTES,
  PROXY_V2_SIGNATURE,
  type ProxyHeaderResult,
} from "../protocol/proxyproto.js";

const hex = (s: string) => Buffer.from(s.replace(/\s+/g, ""), "hex");
const SIG = "0d0a0d0a000d0a515549540a";

/** Feeds prefixes one byte longer each time; returns the first non-need-more answer and where. */
function byteAtATime(buf: Buffer): { at: number; result: ProxyHeaderResult } {
  for (let n = 1; n <= buf.length; n++) {
    const r = parseProxyHeader(buf.subarray(0, n));
    if (r.type !== "need-more") return { at: n, result: r };
  }
  return { at: -1, result: { type: "need-more" } };
}

t.test("v1 vectors from the spec (§2.1)", async (t) => {
  // The spec's worst cases: 56 bytes for TCP4, 104 for TCP6, 107 for UNKNOWN with addresses.
  const tcp4 = Buffer.from("PROXY TCP4 255.255.255.255 255.255.255.255 65535 65535\r\n");
  t.equal(tcp4.length, 56);
  t.same(encodeProxyV1({ address: "255.255.255.255", port: 65535 }, { address: "255.255.255.255", port: 65535 }), tcp4);
  const ff = "ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff";
  const tcp6 = Buffer.from(`PROXY TCP6 ${ff} ${ff} 65535 65535\r\n`);
  t.equal(tcp6.length, 104);
  t.same(encodeProxyV1({ address: ff.toUpperCase(), port: 65535 }, { address: ff, port: 65535 }), tcp6);
  const unknownMax = Buffer.from(`PROXY UNKNOWN ${ff} ${ff} 65535 65535\r\n`);
  t.equal(unknownMax.length, PROXY_V1_MAX_BYTES);

  // The spec's example connection: 192.168.0.1:56324 → 192.168.0.11:443.
  const example = Buffer.from("PROXY TCP4 192.168.0.1 192.168.0.11 56324 443\r\nGET / HTTP/1.1\r\nHost: 192.168.0.11\r\n\r\n");
  const r = parseProxyHeader(example);
  t.same(r, {
    type: "ok", version: 1, command: "proxy", family: "tcp4",
    src: { address: "192.168.0.1", port: 56324 }, dst: { address: "192.168.0.11", port: 443 },
    tlvs: [], headerLength: 47,
  });
  t.equal(example.subarray(47).toString().split("\r\n")[0], "GET / HTTP/1.1");

  t.match(parseProxyHeader(Buffer.from("PROXY UNKNOWN\r\n")), { type: "ok", version: 1, family: "unknown", src: null, dst: null, headerLength: 15 });
  t.match(parseProxyHeader(unknownMax), { type: "ok", family: "unknown", headerLength: 107 });
  t.match(parseProxyHeader(tcp6), { type: "ok", family: "tcp6", src: { address: ff, port: 65535 } });
});

t.test("v2 vectors written from the spec's field layout (§2.2)", async (t) => {
  // PROXY, TCP over IPv4, 12 address bytes: 192.168.0.1:56324 → 192.168.0.11:443.
  const v4 = hex(`${SIG} 21 11 000c  c0a80001 c0a8000b  dc04 01bb`);
  t.same(encodeProxyV2({ address: "192.168.0.1", port: 56324 }, { address: "192.168.0.11", port: 443 }), v4);
  t.same(parseProxyHeader(v4), {
    type: "ok", version: 2, command: "proxy", family: "tcp4",
    src: { address: "192.168.0.1", port: 56324 }, dst: { address: "192.168.0.11", port: 443 },
    tlvs: [], headerLength: 28,
  });

  // PROXY, TCP over IPv6, 36 address bytes: [2001:db8::1]:1234 → [2001:db8::2]:443.
  const v6 = hex(`${SIG} 21 21 0024
    20010db8000000000000000000000001
    20010db8000000000000000000000002
    04d2 01bb`);
  t.same(encodeProxyV2({ address: "2001:db8::1", port: 1234 }, { address: "2001:DB8:0:0:0:0:0:2", port: 443 }), v6);
  t.match(parseProxyHeader(v6), { type: "ok", family: "tcp6", src: { address: "2001:db8::1", port: 1234 }, dst: { address: "2001:db8::2", port: 443 }, headerLength: 52 });

  // LOCAL command (health check): addresses, if any, are ignored.
  t.match(parseProxyHeader(hex(`${SIG} 20 00 0000`)), { type: "ok", version: 2, command: "local", src: null, dst: null, headerLength: 16 });
  t.match(parseProxyHeader(hex(`${SIG} 20 11 000c c0a80001 c0a8000b dc04 01bb`)), { type: "ok", command: "local", src: null });
  // UNSPEC family with PROXY: no addresses to report.
  t.match(parseProxyHeader(hex(`${SIG} 21 00 0000`)), { type: "ok", command: "proxy", family: "unknown", src: null });
  // UDP over IPv4.
  t.match(parseProxyHeader(hex(`${SIG} 21 12 000c 7f000001 7f000002 0035 0035`)), { type: "ok", family: "udp4", src: { address: "127.0.0.1", port: 53 } });
  // AF_UNIX: 216 bytes of paths.
  const unix = Buffer.concat([hex(`${SIG} 21 31 00d8`), Buffer.alloc(216)]);
  t.match(parseProxyHeader(unix), { type: "ok", family: "unix", src: null, headerLength: 232 });
  // TLVs after the addresses (§2.2.7): PP2_TYPE_ALPN (0x01) "h2", PP2_TYPE_AUTHORITY (0x02) "a.example".
  const withTlv = hex(`${SIG} 21 11 001d c0a80001 c0a8000b dc04 01bb  01 0002 6832  02 0009 612e6578616d706c65`);
  const r = parseProxyHeader(withTlv);
  t.match(r, { type: "ok", family: "tcp4", headerLength: 45 });
  if (r.type === "ok") {
    t.same(r.tlvs.map((x) => [x.type, x.value.toString()]), [[1, "h2"], [2, "a.example"]]);
  }
});

t.test("round trips", async (t) => {
  const cases: [string, number, string, number, string, string, string][] = [
    // src, sport, dst, dport, expected family, expected src text, expected dst text
    ["203.0.113.9", 51000, "10.0.0.2", 443, "tcp4", "203.0.113.9", "10.0.0.2"],
    ["0.0.0.0", 0, "255.255.255.255", 65535, "tcp4", "0.0.0.0", "255.255.255.255"],
    ["2001:db8:0:0:1:0:0:1", 40000, "::1", 80, "tcp6", "2001:db8::1:0:0:1", "::1"],
    ["fe80::1%eth0", 1, "fe80::2", 2, "tcp6", "fe80::1", "fe80::2"],
    ["::", 5, "1::", 6, "tcp6", "::", "1::"],
    // IPv4-mapped IPv6, as a dual-stack Node socket reports IPv4 peers: normalized to IPv4.
    ["::ffff:127.0.0.1", 12345, "::ffff:127.0.0.2", 8443, "tcp4", "127.0.0.1", "127.0.0.2"],
    ["::FFFF:7f00:1", 1, "127.0.0.3", 2, "tcp4", "127.0.0.1", "127.0.0.3"],
    // Mixed families: the IPv4 side travels as its mapped IPv6 form.
    ["198.51.100.1", 7, "2001:db8::5", 8, "tcp6", "::ffff:198.51.100.1", "2001:db8::5"],
  ];
  for (const [sa, sp, da, dp, family, se, de] of cases) {
    for (const [version, encode] of [[1, encodeProxyV1], [2, encodeProxyV2]] as const) {
      const header = encode({ address: sa, port: sp }, { address: da, port: dp });
      const stream = Buffer.concat([header, Buffer.from("payload")]);
      const whole = parseProxyHeader(stream);
      t.same(whole, {
        type: "ok", version, command: "proxy", family,
        src: { address: se, port: sp }, dst: { address: de, port: dp },
        tlvs: [], headerLength: header.length,
      }, `v${version} ${sa} → ${da}`);
      const fed = byteAtATime(stream);
      t.equal(fed.at, header.length, `v${version} ${sa}: need-more until the header ends`);
    }
  }
});

t.test("encode rejects what cannot be encoded", async (t) => {
  const good = { address: "127.0.0.1", port: 1 };
  for (const enc of [encodeProxyV1, encodeProxyV2]) {
    t.throws(() => enc({ address: "localhost", port: 1 }, good), ProtocolError);
    t.throws(() => enc(good, { address: "1.2.3", port: 1 }), ProtocolError);
    t.throws(() => enc({ address: "127.0.0.1", port: 65536 }, good), ProtocolError);
    t.throws(() => enc({ address: "127.0.0.1", port: -1 }, good), ProtocolError);
    t.throws(() => enc({ address: "127.0.0.1", port: 1.5 }, good), ProtocolError);
  }
});

t.test("parser rejects", async (t) => {
  const bad: [string, Buffer, RegExp][] = [
    ["no header", Buffer.from("GET / HTTP/1.1\r\n"), /no PROXY protocol header/],
    ["TLS instead", Buffer.from([0x16, 3, 1]), /no PROXY protocol header/],
    ["v1 unknown proto", Buffer.from("PROXY UDP4 1.2.3.4 1.2.3.4 1 2\r\n"), /not TCP4, TCP6 or UNKNOWN/],
    ["v1 missing port", Buffer.from("PROXY TCP4 1.2.3.4 1.2.3.4 1\r\n"), /exactly/],
    ["v1 double space", Buffer.from("PROXY TCP4  1.2.3.4 1.2.3.4 1 2\r\n"), /exactly/],
    ["v1 v6 address in TCP4", Buffer.from("PROXY TCP4 ::1 ::1 1 2\r\n"), /not a valid IPv4/],
    ["v1 v4 address in TCP6", Buffer.from("PROXY TCP6 1.2.3.4 ::1 1 2\r\n"), /not a valid IPv6/],
    ["v1 port too big", Buffer.from("PROXY TCP4 1.2.3.4 1.2.3.4 65536 2\r\n"), /port/],
    ["v1 port leading zero", Buffer.from("PROXY TCP4 1.2.3.4 1.2.3.4 080 2\r\n"), /port/],
    ["v1 bare LF", Buffer.from("PROXY TCP4 1.2.3.4 1.2.3.4 1 2\n"), /CRLF/],
    ["v1 too long", Buffer.from("PROXY UNKNOWN " + "x".repeat(120)), /longer than 107/],
    ["v1 control byte", Buffer.from("PROXY TCP4 1.2.3.4\x001.2.3.4 1 2\r\n"), /non-printable/],
    ["v2 version 1", hex(`${SIG} 11 11 000c`), /version nibble/],
    ["v2 command 2", hex(`${SIG} 22`), /neither LOCAL nor PROXY/],
    ["v2 family 4", hex(`${SIG} 21 41 0000`), /address family 4/],
    ["v2 protocol 3", hex(`${SIG} 21 13 000c`), /transport protocol 3/],
    ["v2 length shorter than IPv4 block", hex(`${SIG} 21 11 000b`), /too short/],
    ["v2 length shorter than IPv6 block", hex(`${SIG} 21 21 000c`), /too short/],
    ["v2 TLV overruns", hex(`${SIG} 21 11 0010 c0a80001 c0a8000b dc04 01bb 01 0005 68`), /overruns/],
    ["v2 TLV header truncated", hex(`${SIG} 21 11 000e c0a80001 c0a8000b dc04 01bb 01 00`), /TLV header/],
  ];
  for (const [name, buf, reason] of bad) t.match(parseProxyHeader(buf), { type: "invalid", reason }, name);
});

t.test("need-more on prefixes", async (t) => {
  t.same(parseProxyHeader(Buffer.alloc(0)), { type: "need-more" });
  t.same(parseProxyHeader(Buffer.from("PRO")), { type: "need-more" });
  t.same(parseProxyHeader(Buffer.from("PROXY TCP4 1.2.3.4")), { type: "need-more" });
  t.same(parseProxyHeader(PROXY_V2_SIGNATURE.subarray(0, 5)), { type: "need-more" });
  t.same(parseProxyHeader(hex(`${SIG} 21 11 000c c0a8`)), { type: "need-more" });
  // A v2 header announcing a large TLV area waits for all of it.
  t.same(parseProxyHeader(hex(`${SIG} 21 11 ffff`)), { type: "need-more" });
});

t.test("fuzz: mutated headers never throw", async (t) => {
  let seed = 99;
  const rnd = () => ((seed = (seed * 1103515245 + 12345) >>> 0) / 2 ** 32);
  const seeds = [
    encodeProxyV1({ address: "1.2.3.4", port: 5 }, { address: "6.7.8.9", port: 10 }),
    encodeProxyV1({ address: "2001:db8::1", port: 5 }, { address: "::1", port: 10 }),
    encodeProxyV2({ address: "1.2.3.4", port: 5 }, { address: "6.7.8.9", port: 10 }),
    encodeProxyV2({ address: "2001:db8::1", port: 5 }, { address: "::1", port: 10 }),
  ];
  let thrown = 0;
  for (let i = 0; i < 3000; i++) {
    const b = Buffer.from(seeds[i % seeds.length]!);
    for (let m = 0; m < 1 + (i % 4); m++) b[Math.floor(rnd() * b.length)] = Math.floor(rnd() * 256);
    try {
      parseProxyHeader(b.subarray(0, Math.floor(rnd() * (b.length + 1))));
    } catch {
      thrown++;
    }
  }
  t.equal(thrown, 0);
});
