import t from "tap";
import { HTTP_HEAD_MAX_BYTES, HTTP_METHOD_MAX_BYTES, httpErrorResponse, httpHeadPeekParser, parseHttpHead, type HttpHeadResult } from "../gateway/httphost.js";
import { prng } from "./helpers/prng.js";


/** Feeds growing prefixes at the cut points; returns where the first non-need-more answer came and what it was. */
function feed(buf: Buffer, cuts: number[]): { at: number; result: HttpHeadResult } {
  for (const cut of cuts) {
    const r = parseHttpHead(buf.subarray(0, cut));
    if (r.type !== "need-more") return { at: cut, result: r };
  }
  return { at: -1, result: { type: "need-more" } };
}
const byteCuts = (n: number) => Array.from({ length: n }, (_, i) => i + 1);

const ok = (host: string | null, path: string, headLength: number, method = "GET", version = "HTTP/1.1") =>
  ({ type: "ok", host, method, path, version, headLength }) as const;

const good: [string, string, ReturnType<typeof ok>][] = [
  ["curl-like", "GET / HTTP/1.1\r\nHost: www.Example.com\r\nUser-Agent: curl/7.88.1\r\nAccept: */*\r\n\r\n", ok("www.example.com", "/", 0)],
  ["port stripped, trailing dot", "GET /x?y=1 HTTP/1.1\r\nhost: App.Example.COM.:8080\r\n\r\n", ok("app.example.com", "/x?y=1", 0)],
  ["header name case", "HEAD /a HTTP/1.1\r\nHOST:   spaced.example   \r\n\r\n", ok("spaced.example", "/a", 0, "HEAD")],
  ["IPv6 literal with port", "GET / HTTP/1.1\r\nHost: [2001:DB8::1]:8080\r\n\r\n", ok("2001:db8::1", "/", 0)],
  ["IPv6 literal", "GET / HTTP/1.1\r\nHost: [::1]\r\n\r\n", ok("::1", "/", 0)],
  ["IPv4 literal", "GET / HTTP/1.1\r\nHost: 203.0.113.7:80\r\n\r\n", ok("203.0.113.7", "/", 0)],
  ["HTTP/1.0 without Host", "GET /old HTTP/1.0\r\n\r\n", ok(null, "/old", 0, "GET", "HTTP/1.0")],
  ["HTTP/1.0 with Host", "GET / HTTP/1.0\r\nHost: a.example\r\n\r\n", ok("a.example", "/", 0, "GET", "HTTP/1.0")],
  ["absolute-form wins over Host (RFC 9112 §3.2.2)", "GET http://Target.example:81/p/q?x HTTP/1.1\r\nHost: other.example\r\n\r\n", ok("target.example", "/p/q?x", 0)],
  ["absolute-form, no path, no Host", "GET http://t.example HTTP/1.1\r\n\r\n", ok("t.example", "/", 0)],
  ["absolute-form with query only", "GET http://t.example?a=1 HTTP/1.1\r\nHost: t.example\r\n\r\n", ok("t.example", "/?a=1", 0)],
  ["absolute-form userinfo and IPv6", "GET http://u:p@[::1]:8/ HTTP/1.1\r\nHost: x.example\r\n\r\n", ok("::1", "/", 0)],
  ["acme challenge path", "GET /.well-known/acme-challenge/abc123 HTTP/1.1\r\nHost: vm.cog.hub.example\r\n\r\n", ok("vm.cog.hub.example", "/.well-known/acme-challenge/abc123", 0)],
  ["bare LF line endings tolerated", "GET / HTTP/1.1\nHost: lf.example\n\n", ok("lf.example", "/", 0)],
  ["mixed CRLF and LF", "GET / HTTP/1.1\r\nHost: mix.example\n\r\n", ok("mix.example", "/", 0)],
  ["leading empty lines skipped (RFC 9112 §2.2)", "\r\n\r\nGET / HTTP/1.1\r\nHost: e.example\r\n\r\n", ok("e.example", "/", 0)],
  ["empty Host value", "GET / HTTP/1.1\r\nHost:\r\n\r\n", ok(null, "/", 0)],
  ["OPTIONS *", "OPTIONS * HTTP/1.1\r\nHost: o.example\r\n\r\n", ok("o.example", "*", 0, "OPTIONS")],
  ["CONNECT authority-form", "CONNECT x.example:443 HTTP/1.1\r\nHost: x.example:443\r\n\r\n", ok("x.example", "x.example:443", 0, "CONNECT")],
  ["obs-text in another header", "GET / HTTP/1.1\r\nHost: a.example\r\nX-Name: caf\xe9\r\n\r\n", ok("a.example", "/", 0)],
];

t.test("valid request heads, whole, byte at a time and in random splits", async (t) => {
  t.ok(good.length > 0);
  const rnd = prng(42);
  for (const [name, text, expectedIn] of good) {
    const head = Buffer.from(text, "latin1");
    const expected = { ...expectedIn, headLength: head.length };
    // The body (or a pipelined request) after the head is not part of it.
    const withBody = Buffer.concat([head, Buffer.from("BODYBYTES")]);
    t.same(parseHttpHead(head), expected, name);
    t.same(parseHttpHead(withBody), expected, `${name} (with body)`);
    const byByte = feed(withBody, byteCuts(withBody.length));
    t.equal(byByte.at, head.length, `${name}: need-more until the blank line`);
    t.same(byByte.result, expected);
    for (let i = 0; i < 10; i++) {
      const cuts = new Set<number>([withBody.length]);
      for (let k = 0; k < 5; k++) cuts.add(1 + Math.floor(rnd() * withBody.length));
      const r = feed(withBody, [...cuts].sort((a, b) => a - b));
      if (JSON.stringify(r.result) !== JSON.stringify(expected)) t.fail(`${name}: random split ${i} gave ${JSON.stringify(r)}`);
    }
  }
});

t.test("invalid request heads", async (t) => {
  const bad: [string, string, RegExp][] = [
    ["duplicate Host", "GET / HTTP/1.1\r\nHost: a.example\r\nHost: a.example\r\n\r\n", /more than one Host/],
    ["duplicate Host, different case", "GET / HTTP/1.1\r\nHost: a.example\r\nhOsT: b.example\r\n\r\n", /more than one Host/],
    ["duplicate Host even with absolute-form", "GET http://a.example/ HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n", /more than one Host/],
    ["HTTP/1.1 without Host", "GET / HTTP/1.1\r\nAccept: */*\r\n\r\n", /without a Host/],
    ["obs-fold", "GET / HTTP/1.1\r\nHost: a.example\r\nX-Long: one\r\n two\r\n\r\n", /obs-fold/],
    ["obs-fold of Host", "GET / HTTP/1.1\r\nHost:\r\n\ta.example\r\n\r\n", /obs-fold/],
    ["space before colon", "GET / HTTP/1.1\r\nHost : a.example\r\n\r\n", /malformed header field name/],
    ["bare CR", "GET / HTTP/1.1\r\nHost: a.example\rX: y\r\n\r\n", /bare CR/],
    ["header without colon", "GET / HTTP/1.1\r\nHost a.example\r\n\r\n", /no field name/],
    ["NUL in value", "GET / HTTP/1.1\r\nHost: a.exa\x00mple\r\n\r\n", /control character/],
    ["Host with bad chars", "GET / HTTP/1.1\r\nHost: a_b.example\r\n\r\n", /invalid Host/],
    ["Host with bad port", "GET / HTTP/1.1\r\nHost: a.example:http\r\n\r\n", /invalid Host/],
    ["Host with userinfo", "GET / HTTP/1.1\r\nHost: u@a.example\r\n\r\n", /invalid Host/],
    ["unclosed IPv6", "GET / HTTP/1.1\r\nHost: [::1\r\n\r\n", /invalid Host/],
    ["bracketed non-IPv6", "GET / HTTP/1.1\r\nHost: [a.example]\r\n\r\n", /invalid Host/],
    ["absolute-form with bad host", "GET http://a_b/ HTTP/1.1\r\nHost: a.example\r\n\r\n", /absolute-form/],
    ["HTTP/2 preface", "PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n", /HTTP\/2 prior-knowledge/],
    ["HTTP/0.9", "GET /\r\n\r\n", /malformed request line/],
    ["HTTP/3.0", "GET / HTTP/3.0\r\nHost: a.example\r\n\r\n", /unsupported HTTP version/],
    ["two spaces", "GET  / HTTP/1.1\r\nHost: a.example\r\n\r\n", /malformed request line/],
    ["relative target", "GET foo HTTP/1.1\r\nHost: a.example\r\n\r\n", /malformed request target/],
    ["TLS hello on port 80", "\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03", /not an HTTP\/1.x request/],
    ["SSH banner", "SSH-2.0-OpenSSH_9.2p1\r\n", /not an HTTP\/1.x request/],
    ["leading space", " GET / HTTP/1.1\r\n\r\n", /not an HTTP\/1.x request/],
    ["binary garbage", "\x00\x01\x02\x03", /not an HTTP\/1.x request/],
    ["endless method token", "G".repeat(HTTP_METHOD_MAX_BYTES + 1), /method longer than 64/],
  ];
  for (const [name, text, reason] of bad) {
    t.match(parseHttpHead(Buffer.from(text, "latin1")), { type: "invalid", reason }, name);
  }
  // Garbage is rejected from its first byte, before any line ends.
  t.match(parseHttpHead(Buffer.from([0x16])), { type: "invalid" });
  t.match(parseHttpHead(Buffer.from("GE\x00")), { type: "invalid" });
});

t.test("need-more for prefixes and empty input", async (t) => {
  t.same(parseHttpHead(Buffer.alloc(0)), { type: "need-more" });
  t.same(parseHttpHead(Buffer.from("GET")), { type: "need-more" });
  t.same(parseHttpHead(Buffer.from("G".repeat(HTTP_METHOD_MAX_BYTES))), { type: "need-more" });
  t.same(parseHttpHead(Buffer.from("\r")), { type: "need-more" });
  // The request line and Host line are complete: the next call may resume after them.
  t.same(parseHttpHead(Buffer.from("GET / HTTP/1.1\r\nHost: a\r\n")), { type: "need-more", resumeAt: 25 });
});

t.test("httpHeadPeekParser: resuming gives the answers of a fresh parse, scanning each byte about once", async (t) => {
  const rnd = prng(7);
  for (const [name, text] of good) {
    const withBody = Buffer.from(text + "BODYBYTES", "latin1");
    for (let round = 0; round < 5; round++) {
      const parser = httpHeadPeekParser();
      const cuts = round === 0 ? byteCuts(withBody.length) : [...new Set([...Array(6)].map(() => 1 + Math.floor(rnd() * withBody.length)).concat(withBody.length))].sort((a, b) => a - b);
      for (const cut of cuts) {
        const want = parseHttpHead(withBody.subarray(0, cut));
        const got = parser(withBody.subarray(0, cut));
        if (JSON.stringify(want.type === "need-more" ? { type: "need-more" } : want) !== JSON.stringify(got.type === "need-more" ? { type: "need-more" } : got)) {
          t.fail(`${name}: at ${cut}, resumed ${JSON.stringify(got)}, fresh ${JSON.stringify(want)}`);
          break;
        }
        if (got.type !== "need-more") break;
      }
    }
  }
  // 16 KiB of short header lines dripped a byte at a time: each call starts at the line under way.
  const head = Buffer.from("GET / HTTP/1.1\r\n" + "a:b\n".repeat(4000));
  let rescanned = 0;
  let at = 0;
  let answers = 0;
  for (let n = 1; n <= head.length; n++) {
    rescanned += n - at;
    const r = parseHttpHead(head.subarray(0, n), HTTP_HEAD_MAX_BYTES, at);
    if (r.type !== "need-more") { answers++; break; }
    at = r.resumeAt ?? 0;
  }
  t.equal(answers, 0, "need-more all along");
  t.ok(rescanned < 4 * head.length, `bytes handed to the parser again: ${rescanned} for a ${head.length}-byte head`);
});

t.test("oversize", async (t) => {
  const filler = "X-Pad: " + "a".repeat(1000) + "\r\n";
  const huge = Buffer.from("GET / HTTP/1.1\r\nHost: a.example\r\n" + filler.repeat(20) + "\r\n");
  t.ok(huge.length > HTTP_HEAD_MAX_BYTES);
  t.match(parseHttpHead(huge), { type: "invalid", reason: /exceeds 16384/ });
  // An unterminated head hits the cap as soon as that many bytes are buffered.
  const endless = Buffer.from("GET / HTTP/1.1\r\nHost: a.example\r\n" + filler.repeat(20));
  t.same(parseHttpHead(endless.subarray(0, 2000)), { type: "need-more", resumeAt: endless.subarray(0, 2000).lastIndexOf("\n") + 1 });
  t.match(parseHttpHead(endless), { type: "invalid", reason: /exceeds/ });
  // Configurable cap.
  const small = Buffer.from("GET / HTTP/1.1\r\nHost: a.example\r\n" + filler + "\r\n");
  t.match(parseHttpHead(small, 512), { type: "invalid", reason: /exceeds 512/ });
  t.equal(parseHttpHead(small, 4096).type, "ok");
  t.match(parseHttpHead(Buffer.from("\r\n".repeat(100)), 64), { type: "invalid", reason: /exceeds 64/ });
  // Empty lines before the request line are bounded on their own (each call re-skips them).
  t.match(parseHttpHead(Buffer.from("\r\n".repeat(40) + "GET / HTTP/1.1\r\n\r\n")), { type: "invalid", reason: /more than 64 bytes of empty lines/ });
  t.equal(parseHttpHead(Buffer.from("\r\n".repeat(32) + "GET / HTTP/1.0\r\n\r\n")).type, "ok", "32 empty lines are still skipped");
});

t.test("fuzz: mutated heads never throw", async (t) => {
  const rnd = prng(7);
  let thrown = 0;
  const counts: Record<string, number> = {};
  for (let i = 0; i < 3000; i++) {
    const input = Buffer.from(good[Math.floor(rnd() * good.length)]![1], "latin1");
    const mutations = 1 + Math.floor(rnd() * 4);
    for (let m = 0; m < mutations; m++) input[Math.floor(rnd() * input.length)] = Math.floor(rnd() * 256);
    try {
      const r = parseHttpHead(input.subarray(0, Math.floor(rnd() * (input.length + 1))));
      counts[r.type] = (counts[r.type] ?? 0) + 1;
    } catch {
      thrown++;
    }
  }
  t.equal(thrown, 0, `none threw (${JSON.stringify(counts)})`);
});

t.test("httpErrorResponse", async (t) => {
  const res = httpErrorResponse(404, "No such capsul", "Nothing is published at <b>x.example</b> & friends.");
  const text = res.toString("utf8");
  const [head, body] = text.split("\r\n\r\n") as [string, string];
  t.match(head, /^HTTP\/1\.1 404 Not Found\r\n/);
  t.match(head, /\r\nConnection: close(\r\n|$)/);
  t.match(head, /Content-Type: text\/html; charset=utf-8/);
  t.equal(Number(/Content-Length: (\d+)/.exec(head)![1]), Buffer.byteLength(body));
  t.match(body, /&lt;b&gt;x\.example&lt;\/b&gt; &amp; friends/);
  t.notMatch(body, /<b>/);
  t.match(httpErrorResponse(502, "Cog offline", "try later").toString(), /^HTTP\/1\.1 502 Bad Gateway/);
  t.throws(() => httpErrorResponse(42, "x", "y"), RangeError);
});
