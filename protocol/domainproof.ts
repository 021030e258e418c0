/**
 * The DNS record that proves a cog may use a hostname outside its grants
 * (issue 10, "Bring your own domain"): a TXT record at
 * `_capsul-challenge.<hostname>` holding `domainProofValue(...)`. The hub
 * computes it to check it, and the cog (`capsul cog domains add`) computes
 * the same value offline to print it, so both sides share this one function.
 *
 * Why a value bound to the cog and not a random one:
 * - The proof is of DNS control, not of a secret: whoever can write the TXT
 *   record controls the name. The value need not be secret (it is public in
 *   DNS the moment it is published) and so need not be unguessable.
 * - What matters is that it cannot be *replayed*. The value is a SHA-256 over
 *   the hub CA's fingerprint, the cog's name and the hostname. The hub takes
 *   the cog's name from the certificate the tunnel presented (never from the
 *   wire) and checks for that cog's value only, so a record published for
 *   cog "alice" proves nothing for cog "mallory", even though mallory can
 *   compute alice's value; a record for blog.alice.net proves nothing for
 *   shop.alice.net (a CNAME from one challenge name to another needs control
 *   of the second zone, which is the point); and the CA fingerprint keeps a
 *   record made for one hub from counting on another hub with a cog of the
 *   same name.
 * - Not the cog's public key: the cog's key changes at every certificate
 *   renewal (every 60 days by default), which would make the owner change
 *   the record each time. A cog re-enrolled under the same name keeps its
 *   proofs, as it keeps its grants: the name is the identity the hub
 *   operator manages.
 *
 * Base32 (RFC 4648, lower case, no padding): 52 characters, safe in every DNS
 * control panel's TXT field (no quoting, no `=` or `+`), well under the
 * 255-byte TXT string limit (RFC 1035 §3.3.14).
 */
import { createHash } from "node:crypto";

/** The label the TXT record lives under. */
export const DOMAIN_CHALLENGE_LABEL = "_capsul-challenge";
/** Versioned so that a future derivation can coexist with this one. */
const DOMAIN_PROOF_CONTEXT = "capsul-domain-proof-v1";
const BASE32_ALPHABET = "abcdefghijklmnopqrstuvwxyz234567";

/** RFC 4648 §6 base32, lower case, without padding. */
export function base32(bytes: Uint8Array): string {
  let out = "";
  let bits = 0;
  let acc = 0;
  for (const b of bytes) {
    acc = (acc << 8) | b;
    bits += 8;
    while (bits >= 5) {
      out += BASE32_ALPHABET[(acc >>> (bits - 5)) & 31];
      bits -= 5;
    }
    acc &= (1 << bits) - 1;
  }
  if (bits > 0) out += BASE32_ALPHABET[(acc << (5 - bits)) & 31];
  return out;
}

/** Where the TXT record goes: `_capsul-challenge.<hostname>` (hostname normalized, no wildcard). */
export function challengeName(hostname: string): string {
  return `${DOMAIN_CHALLENGE_LABEL}.${hostname}`;
}

/** The TXT value that proves `hostname` for `cog` of the hub whose CA has `caFingerprint` ("sha256:<hex>"). */
export function domainProofValue(caFingerprint: string, cog: string, hostname: string): string {
  const h = createHash("sha256");
  // NUL-separated: none of the three may contain a NUL, so no two inputs join to the same bytes.
  h.update(`${DOMAIN_PROOF_CONTEXT}\0${caFingerprint.toLowerCase()}\0${cog}\0${hostname}`, "utf8");
  return base32(h.digest());
}

/** The record as a person types it into a DNS panel, and as zone-file syntax. */
export function describeRecord(hostname: string, value: string): string {
  return `${challengeName(hostname)}. TXT "${value}"`;
}
