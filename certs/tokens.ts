/**
 * One-time invite tokens (DESIGN "Enrollment", step 1). The hub stores only
 * the SHA-256 of a token, so a leaked database does not leak usable tokens;
 * 32 random bytes make guessing hopeless, so no salt or slow hash is needed.
 */
import { createHash, randomBytes, timingSafeEqual } from "node:crypto";

export const INVITE_TOKEN_BYTES = 32;

/** A fresh token (url-safe base64, no padding: 43 chars) and its hash for storage. */
export function newInviteToken(): { token: string; hash: string } {
  const token = randomBytes(INVITE_TOKEN_BYTES).toString("base64url");
  return { token, hash: hashToken(token) };
}

/** SHA-256 of the token's UTF-8 bytes, lowercase hex. */
export function hashToken(token: string): string {
  return createHash("sha256").update(token, "utf8").digest("hex");
}

/**
 * Compares two token hashes in constant time (for equal lengths; the length of
 * a SHA-256 hex digest is public, so an early return on a length mismatch leaks nothing).
 */
export function tokenHashEquals(a: string, b: string): boolean {
  const ba = Buffer.from(a, "utf8");
  const bb = Buffer.from(b, "utf8");
  if (ba.length !== bb.length) return false;
  return timingSafeEqual(ba, bb);
}
