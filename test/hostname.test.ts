import t from "tap";
import { ConfigError } from "../lib/errors.js";
import {
  COG_NAME_RE, formatHostPort, formatPortRange, isValidHostnamePattern, normalizeHostname,
  normalizeHostnamePattern, parseHostPort, parsePortRange, patternMatches, patternsOverlap, suggestALabel, clipRange, rangeInside,
} from "../lib/hostname.js";

t.test("normalizeHostname: case, trailing dot, A-labels", async (t) => {
  const ok: [string, string][] = [
    ["example.com", "example.com"],
    ["WWW.Example.COM", "www.example.com"],
    ["www.example.com.", "www.example.com"],
    ["localhost", "localhost"],
    ["xn--bcher-kva.example", "xn--bcher-kva.example"],
    ["XN--BCHER-KVA.example", "xn--bcher-kva.example"],
    ["a-b.c0.example", "a-b.c0.example"],
    ["0day.example", "0day.example"],
    [`${"a".repeat(63)}.example`, `${"a".repeat(63)}.example`],
  ];
  for (const [input, want] of ok) t.equal(normalizeHostname(input), want, input);

  const bad = [
    "", ".", "example..com", ".example.com", "example.com..", "-a.example", "a-.example",
    "exa mple.com", "exa_mple.com", "bücher.example", "пример.рф", "*.example.com", "a.*.example",
    "1.2.3.4", "example.123", "[::1]", "host:80", `${"a".repeat(64)}.example`,
    // U+212A KELVIN SIGN lower-cases to ASCII "k": it must not sneak in.
    "\u212Aey.example",
  ];
  for (const input of bad) t.equal(normalizeHostname(input), null, JSON.stringify(input));
  t.equal(normalizeHostname(42 as unknown as string), null, "non-string");
});

t.test("normalizeHostname: 253-character limit", async (t) => {
  const label = "a".repeat(63);
  const name253 = [label, label, label, "a".repeat(61)].join("."); // 63*3 + 61 + 3 dots = 253
  t.equal(name253.length, 253);
  t.equal(normalizeHostname(name253), name253);
  t.equal(normalizeHostname(`${name253}.`), name253, "trailing dot is not counted");
  t.equal(normalizeHostname(`${name253}a`), null, "254 characters");
});

t.test("hostname patterns", async (t) => {
  t.equal(normalizeHostnamePattern("*.Example.COM."), "*.example.com");
  t.equal(normalizeHostnamePattern("App.Example.com"), "app.example.com");
  t.equal(normalizeHostnamePattern("*.xn--bcher-kva.example"), "*.xn--bcher-kva.example");
  for (const p of ["*.example.com", "*.a.b.example", "example.com", "localhost"]) t.ok(isValidHostnamePattern(p), p);
  for (const p of ["*", "*.", "*.com", "**.example.com", "*a.example.com", "a*.example.com",
    "a.*.example.com", "*.*.example.com", "*example.com", "*.bücher.example", "exa mple", ""]) {
    t.notOk(isValidHostnamePattern(p), JSON.stringify(p));
  }
});

t.test("suggestALabel gives the punycode form of IDNs", async (t) => {
  t.equal(suggestALabel("bücher.example"), "xn--bcher-kva.example");
  t.equal(suggestALabel("*.bücher.example"), "*.xn--bcher-kva.example");
  t.equal(suggestALabel("plain.example"), null);
});

t.test("patternMatches: exact, wildcard covers one or more labels, never the suffix", async (t) => {
  const table: [string, string, boolean][] = [
    ["example.com", "example.com", true],
    ["example.com", "EXAMPLE.com.", true],
    ["example.com", "www.example.com", false],
    ["*.example.com", "a.example.com", true],
    ["*.example.com", "A.Example.Com.", true],
    ["*.example.com", "a.b.example.com", true],
    ["*.example.com", "example.com", false],
    ["*.example.com", "badexample.com", false],
    ["*.example.com", "a.example.org", false],
    ["*.EXAMPLE.com", "x.example.com", true],
    ["*.example.com", "bücher.example.com", false],
    ["bad pattern", "bad pattern", false],
    ["*.com", "example.com", false],
  ];
  for (const [pattern, host, want] of table) t.equal(patternMatches(pattern, host), want, `${pattern} ~ ${host}`);
});

t.test("patternsOverlap table (symmetric)", async (t) => {
  const table: [string, string, boolean][] = [
    ["a.example", "a.example", true],
    ["A.example.", "a.example", true],
    ["a.example", "b.example", false],
    ["*.a.example", "x.a.example", true],
    ["*.a.example", "y.x.a.example", true],
    ["*.a.example", "a.example", false],
    // The brief's "*.a.example" vs "*.example": "*.example" is not a valid pattern
    // (a wildcard suffix needs two labels), so the same nesting one level down:
    ["*.a.b.example", "*.b.example", true],
    ["*.a.example", "*.example", false],
    ["*.a.example", "*.a.example", true],
    ["*.a.example", "*.b.example", false],
    ["*.a.example", "*.xa.example", false],
    ["*.example", "example", false],
    ["*.hub.example.net", "home1.hub.example.net", true],
    ["*.home1.hub.example.net", "home2.hub.example.net", false],
    ["*.home1.hub.example.net", "home1.hub.example.net", false],
    ["not valid", "not valid", false],
  ];
  for (const [a, b, want] of table) {
    t.equal(patternsOverlap(a, b), want, `${a} / ${b}`);
    t.equal(patternsOverlap(b, a), want, `${b} / ${a}`);
  }
});

t.test("parseHostPort", async (t) => {
  t.same(parseHostPort("127.0.0.1:8080"), { host: "127.0.0.1", port: 8080 });
  t.same(parseHostPort("Hub.Example.NET.:7443"), { host: "hub.example.net", port: 7443 });
  t.same(parseHostPort("[::1]:443"), { host: "::1", port: 443 });
  t.same(parseHostPort("[FE80::1]:443"), { host: "fe80::1", port: 443 });
  t.same(parseHostPort(":443"), { host: "0.0.0.0", port: 443 });
  t.same(parseHostPort("localhost:65535"), { host: "localhost", port: 65535 });
  t.same(parseHostPort("127.0.0.1:0", "x", { allowPortZero: true }), { host: "127.0.0.1", port: 0 });

  const bad: [unknown, string][] = [
    ["127.0.0.1", 'a.b: not host:port (missing :port): "127.0.0.1"'],
    ["::1:443", 'a.b: not host:port (write IPv6 as [addr]:port): "::1:443"'],
    ["[::1]443", 'a.b: not host:port (write IPv6 as [addr]:port): "[::1]443"'],
    ["[1.2.3.4]:443", 'a.b: not an IPv6 address: "[1.2.3.4]:443"'],
    ["exa mple:80", 'a.b: not an IP address or hostname: "exa mple:80"'],
    ["1.2.3.400:80", 'a.b: not an IP address or hostname: "1.2.3.400:80"'],
    ["host:http", 'a.b: not a port number: "host:http"'],
    ["host:", 'a.b: not a port number: "host:"'],
    ["host:65536", "a.b: port out of range (1-65535): 65536"],
    ["host:0", "a.b: port out of range (1-65535): 0"],
    [443, 'a.b: expected "host:port" as a string, got 443'],
  ];
  for (const [input, message] of bad) {
    t.throws(() => parseHostPort(input, "a.b"), { name: "ConfigError", message, path: "a.b" }, String(input));
  }
  t.throws(() => parseHostPort("x:1".replace("1", "99999")), ConfigError);
});

t.test("formatHostPort round-trips", async (t) => {
  for (const s of ["127.0.0.1:80", "[::1]:443", "hub.example.net:7443"]) t.equal(formatHostPort(parseHostPort(s)), s);
});

t.test("parsePortRange", async (t) => {
  t.same(parsePortRange("20000-20099"), { from: 20000, to: 20099 });
  t.same(parsePortRange(" 20000 - 20099 "), { from: 20000, to: 20099 });
  t.same(parsePortRange(20000), { from: 20000, to: 20000 });
  t.same(parsePortRange("2222"), { from: 2222, to: 2222 });
  t.same(parsePortRange("1-65535"), { from: 1, to: 65535 });
  t.equal(formatPortRange({ from: 5, to: 5 }), "5");
  t.equal(formatPortRange({ from: 5, to: 9 }), "5-9");
  const bad: [unknown, string][] = [
    ["20099-20000", 'p: empty port range (20099 > 20000): "20099-20000"'],
    ["0-10", "p: port out of range (1-65535): 0"],
    [70000, "p: port out of range (1-65535): 70000"],
    ["1-2-3", 'p: not a port range (use e.g. 20000-20099 or 20022): "1-2-3"'],
    ["a-b", 'p: not a port range (use e.g. 20000-20099 or 20022): "a-b"'],
    [1.5, "p: not a port range (use e.g. 20000-20099 or 20022): 1.5"],
    [null, "p: not a port range (use e.g. 20000-20099 or 20022): null"],
  ];
  for (const [input, message] of bad) t.throws(() => parsePortRange(input, "p"), { message }, String(input));
});

t.test("COG_NAME_RE", async (t) => {
  for (const n of ["home1", "a", "a-b-c", `a${"b".repeat(38)}`]) t.ok(COG_NAME_RE.test(n), n);
  for (const n of ["", "1home", "Home", "home_1", "home.1", `a${"b".repeat(39)}`, "-a"]) t.notOk(COG_NAME_RE.test(n), n);
});

t.test("rangeInside and clipRange against a pool of several ranges", async (t) => {
  const pool = [{ from: 30, to: 39 }, { from: 10, to: 19 }, { from: 20, to: 24 }];
  t.ok(rangeInside({ from: 10, to: 24 }, pool), "across adjacent ranges, in any order");
  t.ok(rangeInside({ from: 35, to: 35 }, pool));
  t.notOk(rangeInside({ from: 20, to: 30 }, pool), "25-29 is not in the pool");
  t.notOk(rangeInside({ from: 9, to: 10 }, pool));
  t.notOk(rangeInside({ from: 1, to: 1 }, []), "nothing is inside an empty pool");
  t.same(clipRange({ from: 15, to: 32 }, pool), [{ from: 15, to: 19 }, { from: 20, to: 24 }, { from: 30, to: 32 }]);
  t.same(clipRange({ from: 25, to: 29 }, pool), []);
  t.same(clipRange({ from: 5, to: 50 }, [{ from: 10, to: 19 }]), [{ from: 10, to: 19 }]);
});
