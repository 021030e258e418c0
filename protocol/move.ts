/**
 * Move streams (PROTOCOL.md "Move stream"): a VM archive sent from one cog to
 * another through the hub. Framed like every other message (messages.ts).
 *
 *   source cog → hub   {type: "move", to, vm, bytes,          (a stream the cog opens)
 *                       routes?, hostnames?}                  (what should follow the VM, see below)
 *   hub → target cog   {type: "move-offer", from, vm, bytes}  (a stream the hub opens; `from` is the
 *                                                              source's certificate name, never its word)
 *   target → hub       {type: "move-accept"} | {type: "move-refuse", reason}
 *   hub → source       {type: "move-go"} | {type: "move-refused", reason}
 * After move-go the hub splices the two streams: the source sends exactly
 * `bytes` of archive and ends its side; the target answers
 * {type: "move-done", vm} or {type: "move-failed", code, reason}. The hub
 * passes a move-done on with `carried` (MoveCarried): what of the source's
 * hub state followed the VM to the target (gateway/carry.ts).
 *
 * `routes` names the VM's TCP routes and `hostnames` its hostnames besides the
 * default one; the hub moves to the target only what the source holds (its port
 * assignment for that route name, its DNS-proven claim on that name) and what
 * the target may hold. Naming anything else changes nothing.
 */

import { COG_NAME_RE, normalizeHostnamePattern } from "../lib/hostname.js";
import { ProtocolError } from "../lib/errors.js";

/** The headers above are a few hundred bytes; this bounds what either end buffers for one. */
export const MOVE_HEADER_MAX_BYTES = 4096;
/** A move's reason strings are cut to this many characters before they are passed on. */
export const MOVE_REASON_MAX_CHARS = 500;
/**
 * The verdict the hub passes on (move-done with the VM's record and what was carried) may be
 * longer than a header: a VM's record is ~1.5 KiB, each carried name ~300 bytes more.
 */
export const MOVE_RESULT_MAX_BYTES = 64 * 1024;
/** Route names are what control.ts accepts in a route set. */
const ROUTE_NAME_MAX_CHARS = 64;
const VM_NAME_RE = /^[a-z][a-z0-9-]{0,38}$/;

export interface MoveRequest { type: "move"; to: string; vm: string; bytes: number; routes: string[]; hostnames: string[] }

/** A TCP route's port, after move-done: it followed (the same hub port), or stayed with the source (why). */
export interface CarriedPort {
  route: string;
  /** The source's port for that route; null when it held none. */
  port: number | null;
  state: "followed" | "kept" | "not-held" | "error";
  reason?: string;
}
/**
 * A hostname's fate: its DNS-proven claim followed; the target holds it by its own grant;
 * it needs an operator grant to the target; it needs a DNS record for the target (`record`,
 * `value`); or the hub failed (error).
 */
export interface CarriedHostname {
  hostname: string;
  state: "followed" | "granted" | "needs-grant" | "needs-proof" | "error";
  reason?: string;
  record?: string;
  value?: string;
}
export interface MoveCarried { ports: CarriedPort[]; hostnames: CarriedHostname[] }
export interface MoveOffer { type: "move-offer"; from: string; vm: string; bytes: number }

export type MoveAnswer = { type: "move-accept" } | { type: "move-refuse"; reason: string };
export type MoveGo = { type: "move-go" } | { type: "move-refused"; reason: string };
export type MoveResult = { type: "move-done"; vm: Record<string, unknown>; carried?: MoveCarried } | { type: "move-failed"; code: string; reason: string };

function fields(m: unknown): Record<string, unknown> {
  if (typeof m !== "object" || m === null || Array.isArray(m)) throw new ProtocolError("move message is not an object");
  return m as Record<string, unknown>;
}

function checkCommon(m: Record<string, unknown>): void {
  if (typeof m.vm !== "string" || !VM_NAME_RE.test(m.vm)) throw new ProtocolError("move: vm is not a VM name");
  if (typeof m.bytes !== "number" || !Number.isSafeInteger(m.bytes) || m.bytes <= 0) throw new ProtocolError("move: bytes must be a positive integer");
}

export function checkMoveRequest(raw: unknown): MoveRequest {
  const m = fields(raw);
  if (m.type !== "move") throw new ProtocolError(`expected a move header, got ${JSON.stringify(m.type)}`);
  if (typeof m.to !== "string" || !COG_NAME_RE.test(m.to)) throw new ProtocolError("move: to is not a cog name");
  checkCommon(m);
  const routes = [...new Set(stringList(m.routes, "routes", (r) => r.length > 0 && r.length <= ROUTE_NAME_MAX_CHARS))];
  // Patterns: a VM's route may be for a wildcard (its proof is on the base name, gateway/carry.ts).
  const hostnames = [...new Set(stringList(m.hostnames, "hostnames", (h) => normalizeHostnamePattern(h) !== null).map((h) => normalizeHostnamePattern(h) as string))];
  return { type: "move", to: m.to, vm: m.vm as string, bytes: m.bytes as number, routes, hostnames };
}

/** An optional list of strings (absent: empty, as a source from before carrying sends). */
function stringList(v: unknown, what: string, ok: (s: string) => boolean): string[] {
  if (v === undefined) return [];
  if (!Array.isArray(v)) throw new ProtocolError(`move: ${what} is not a list`);
  for (const s of v) if (typeof s !== "string" || !ok(s)) throw new ProtocolError(`move: ${what} holds a bad entry`);
  return v as string[];
}

export function checkMoveOffer(raw: unknown): MoveOffer {
  const m = fields(raw);
  if (m.type !== "move-offer") throw new ProtocolError(`expected a move offer, got ${JSON.stringify(m.type)}`);
  if (typeof m.from !== "string" || !COG_NAME_RE.test(m.from)) throw new ProtocolError("move-offer: from is not a cog name");
  checkCommon(m);
  return { type: "move-offer", from: m.from, vm: m.vm as string, bytes: m.bytes as number };
}

export const reasonOf = (m: Record<string, unknown>): string =>
  (typeof m.reason === "string" ? m.reason : "no reason given").slice(0, MOVE_REASON_MAX_CHARS);
