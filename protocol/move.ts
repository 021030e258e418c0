/**
 * Move streams (PROTOCOL.md "Move stream"): a VM archive sent from one cog to
 * another through the hub. Framed like every other message (messages.ts).
 *
 *   source cog → hub   {type: "move", to, vm, bytes}          (a stream the cog opens)
 *   hub → target cog   {type: "move-offer", from, vm, bytes}  (a stream the hub opens; `from` is the
 *                                                              source's certificate name, never its word)
 *   target → hub       {type: "move-accept"} | {type: "move-refuse", reason}
 *   hub → source       {type: "move-go"} | {type: "move-refused", reason}
 * After move-go the hub splices the two streams: the source sends exactly
 * `bytes` of archive and ends its side; the target answers
 * {type: "move-done", vm, hostname} or {type: "move-failed", code, reason}.
 */

import { COG_NAME_RE } from "../lib/hostname.js";
import { ProtocolError } from "../lib/errors.js";

/** The headers above are a few hundred bytes; this bounds what either end buffers for one. */
export const MOVE_HEADER_MAX_BYTES = 4096;
/** A move's reason strings are cut to this many characters before they are passed on. */
export const MOVE_REASON_MAX_CHARS = 500;
const VM_NAME_RE = /^[a-z][a-z0-9-]{0,38}$/;

export interface MoveRequest { type: "move"; to: string; vm: string; bytes: number }
export interface MoveOffer { type: "move-offer"; from: string; vm: string; bytes: number }

export type MoveAnswer = { type: "move-accept" } | { type: "move-refuse"; reason: string };
export type MoveGo = { type: "move-go" } | { type: "move-refused"; reason: string };
export type MoveResult = { type: "move-done"; vm: Record<string, unknown> } | { type: "move-failed"; code: string; reason: string };

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
  return { type: "move", to: m.to, vm: m.vm as string, bytes: m.bytes as number };
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
