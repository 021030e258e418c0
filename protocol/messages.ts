/**
 * Length-prefixed JSON messages: the framing of the control stream and of the
 * visitor-stream header (see protocol/PROTOCOL.md). A message is a 4-byte
 * big-endian length followed by that many bytes of UTF-8 JSON (an object with
 * a string `type`). Pure encode/decode plus a small reader over a Duplex.
 */
import type { Duplex } from "node:stream";
import { ProtocolError } from "../lib/errors.js";

/** A message longer than this is a protocol error (control messages carry certs and route lists). */
export const MESSAGE_MAX_BYTES = 1024 * 1024;
const LENGTH_BYTES = 4;

export type DecodeResult<T> =
  | { type: "need-more" }
  | { type: "ok"; value: T; consumed: number }
  | { type: "invalid"; reason: string };

export function encodeMessage<T extends { type: string }>(value: T): Buffer {
  const body = Buffer.from(JSON.stringify(value), "utf8");
  if (body.length > MESSAGE_MAX_BYTES) throw new ProtocolError(`message too large: ${body.length} bytes`);
  const out = Buffer.allocUnsafe(LENGTH_BYTES + body.length);
  out.writeUInt32BE(body.length, 0);
  body.copy(out, LENGTH_BYTES);
  return out;
}

export function decodeMessage<T extends { type: string }>(buf: Buffer, maxBytes = MESSAGE_MAX_BYTES): DecodeResult<T> {
  if (buf.length < LENGTH_BYTES) return { type: "need-more" };
  const len = buf.readUInt32BE(0);
  if (len > maxBytes) return { type: "invalid", reason: `message length ${len} exceeds ${maxBytes}` };
  if (buf.length < LENGTH_BYTES + len) return { type: "need-more" };
  let value: unknown;
  try {
    value = JSON.parse(buf.toString("utf8", LENGTH_BYTES, LENGTH_BYTES + len));
  } catch {
    return { type: "invalid", reason: "message is not valid JSON" };
  }
  if (typeof value !== "object" || value === null || Array.isArray(value) || typeof (value as { type?: unknown }).type !== "string") {
    return { type: "invalid", reason: "message is not an object with a string type" };
  }
  return { type: "ok", value: value as T, consumed: LENGTH_BYTES + len };
}

/**
 * Reads messages one after another from a stream. `next()` resolves with the
 * next message, or null at a clean end of stream; rejects with ProtocolError
 * on bad framing. Bytes after a message stay buffered for the next call, and
 * `detach()` hands back whatever was read past the last message (used by the
 * visitor header: what follows it are the visitor's bytes).
 */
export class MessageReader<T extends { type: string }> {
  private buf: Buffer = Buffer.alloc(0);
  private ended = false;
  private failed: Error | null = null;
  private waiter: (() => void) | null = null;
  private readonly onData = (chunk: Buffer): void => {
    this.buf = this.buf.length === 0 ? chunk : Buffer.concat([this.buf, chunk]);
    this.wake();
  };
  private readonly onEnd = (): void => { this.ended = true; this.wake(); };
  private readonly onError = (err: Error): void => { this.failed = err; this.wake(); };

  constructor(private readonly stream: Duplex, private readonly maxBytes = MESSAGE_MAX_BYTES) {
    stream.on("data", this.onData);
    stream.on("end", this.onEnd);
    stream.on("close", this.onEnd);
    stream.on("error", this.onError);
  }

  private wake(): void {
    const w = this.waiter;
    this.waiter = null;
    w?.();
  }

  async next(): Promise<T | null> {
    for (;;) {
      const r = decodeMessage<T>(this.buf, this.maxBytes);
      if (r.type === "ok") {
        this.buf = this.buf.subarray(r.consumed);
        return r.value;
      }
      if (r.type === "invalid") throw new ProtocolError(r.reason);
      if (this.failed) throw this.failed;
      if (this.ended) {
        if (this.buf.length > 0) throw new ProtocolError("stream ended in the middle of a message");
        return null;
      }
      await new Promise<void>((resolve) => { this.waiter = resolve; });
    }
  }

  /** Stop reading; pause the stream and return bytes read past the last message. */
  detach(): Buffer {
    this.stream.off("data", this.onData);
    this.stream.off("end", this.onEnd);
    this.stream.off("close", this.onEnd);
    this.stream.off("error", this.onError);
    this.stream.pause();
    const rest = this.buf;
    this.buf = Buffer.alloc(0);
    return rest;
  }
}
