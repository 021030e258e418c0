/**
 * The custom-domain proof value (protocol/domainproof.ts) and the `domains`
 * message check (protocol/control.ts): pure functions, no sockets.
 */
import t from "tap";
import { base32, challengeName, describeRecord, domainProofValue } from "../protocol/domainproof.js";
import { checkWireDomainProofs } from "../protocol/control.js";
import { ProtocolError } from "../lib/errors.js";

t.test("base32 follows RFC 4648 §10 (lower case, no padding)", async (t) => {
  const vectors: [string, string][] = [["", ""], ["f", "my"], ["fo", "mzxq"], ["foo", "mzxw6"], ["foob", "mzxw6yq"], ["fooba", "mzxw6ytb"], ["foobar", "mzxw6ytboi"]];
  for (const [input, want] of vectors) t.equal(base32(Buffer.from(input)), want, JSON.stringify(input));
});

t.test("the proof value is bound to the hub CA, the cog and the hostname", async (t) => {
  const ca = "sha256:" + "ab".repeat(32);
  const v = domainProofValue(ca, "alice", "blog.alice.net");
  t.match(v, /^[a-z2-7]{52}$/, "52 base32 characters: a SHA-256");
  t.equal(domainProofValue(ca, "alice", "blog.alice.net"), v, "the same every time (the CLI and the hub agree)");
  t.equal(domainProofValue(ca.toUpperCase().replace("SHA256", "sha256"), "alice", "blog.alice.net"), v, "the fingerprint's case does not matter");
  t.not(domainProofValue(ca, "mallory", "blog.alice.net"), v, "another cog");
  t.not(domainProofValue(ca, "alice", "shop.alice.net"), v, "another name");
  t.not(domainProofValue("sha256:" + "cd".repeat(32), "alice", "blog.alice.net"), v, "another hub");
  t.not(domainProofValue(ca, "ali", "ce.x.net"), domainProofValue(ca, "alice", ".x.net"), "fields cannot run into each other (NUL between them)");
  t.equal(challengeName("blog.alice.net"), "_capsul-challenge.blog.alice.net");
  t.equal(describeRecord("blog.alice.net", v), `_capsul-challenge.blog.alice.net. TXT "${v}"`);
});

t.test("a domains message is checked before the cog keeps it", async (t) => {
  const good = { hostname: "a.example", record: "_capsul-challenge.a.example", value: "v", state: "verified", verifiedAt: 1, checkedAt: 2, lastError: null };
  t.same(checkWireDomainProofs([good]), [good]);
  t.same(checkWireDomainProofs([{ ...good, extra: "dropped" }]), [good], "unknown fields are not kept");
  const bad: unknown[] = ["x", null, [null], [{ ...good, state: "owned" }], [{ ...good, verifiedAt: "yesterday" }], [{ ...good, hostname: 7 }], [{ ...good, lastError: 3 }], [{ ...good, checkedAt: Infinity }]];
  for (const b of bad) t.throws(() => checkWireDomainProofs(b), ProtocolError, JSON.stringify(b));
});
