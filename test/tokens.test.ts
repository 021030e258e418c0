import t from "tap";
import { INVITE_TOKEN_BYTES, hashToken, newInviteToken, tokenHashEquals } from "../certs/tokens.js";

t.test("tokens are url-safe, full length and unique", async (t) => {
  const seen = new Set<string>();
  const bad: string[] = [];
  for (let i = 0; i < 1000; i++) {
    const { token, hash } = newInviteToken();
    if (!/^[A-Za-z0-9_-]+$/.test(token)) bad.push(`not url-safe: ${token}`);
    if (Buffer.from(token, "base64url").length !== INVITE_TOKEN_BYTES) bad.push(`wrong length: ${token}`);
    if (hash !== hashToken(token)) bad.push(`hash mismatch: ${token}`);
    seen.add(token);
  }
  t.same(bad, [], "every token is url-safe base64 of INVITE_TOKEN_BYTES bytes, with its hash");
  t.equal(seen.size, 1000);
});

t.test("hash is stable sha256 hex", async (t) => {
  // sha256("abc"), FIPS 180-2 appendix B.1
  t.equal(hashToken("abc"), "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad");
  const { token, hash } = newInviteToken();
  t.equal(hashToken(token), hash);
  t.equal(hashToken(token), hashToken(token));
  t.match(hash, /^[0-9a-f]{64}$/);
  t.not(hashToken(token + "x"), hash);
});

t.test("tokenHashEquals", async (t) => {
  const a = newInviteToken();
  const b = newInviteToken();
  t.ok(tokenHashEquals(a.hash, hashToken(a.token)));
  t.notOk(tokenHashEquals(a.hash, b.hash));
  t.notOk(tokenHashEquals(a.hash, a.hash.slice(0, -1)), "different length");
  t.notOk(tokenHashEquals(a.hash, ""));
  t.ok(tokenHashEquals("", ""));
  const flipped = a.hash.slice(0, -1) + (a.hash.endsWith("0") ? "1" : "0");
  t.notOk(tokenHashEquals(a.hash, flipped), "last char differs");
});
