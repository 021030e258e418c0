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
  const r = parseBody<T>(buf.subarray(LENGTH_BYTES, LENGTH_BYTES + len));
  return r.type === "ok" ? { type: "ok", value: r.value, consumed: LENGTH_BYTES + len } : r;
}

/** The JSON body of one message (without its length prefix). */
function parseBody<T extends { type: string }>(body: Buffer): { type: "ok"; value: T } | { type: "invalid"; reason: string } {
  let value: unknown;
  try {
    value = JSON.parse(body.toString("utf8"));
  } catch {
    return { type: "invalid", reason: "message is not valid JSON" };
  }
  if (typeof value !== "object" || value === null || Array.isArray(value) || typeof (value as { type?: unknown }).type !== "string") {
    return { type: "invalid", reason: "message is not an object with a string type" };
  }
  return { type: "ok", value: value as T };
}

/**
 * Bytes every MessageReader copied to join a message that arrived in several chunks
 * (a process-wide counter, like a metric): at most one copy per byte received.
 */
export const messageReaderStats = { copiedBytes: 0 };

const EMPTY = Buffer.alloc(0);

/**
 * Reads messages one after another from a stream. `next()` resolves with the
 * next message, or null at a clean end of stream; rejects with ProtocolError
 * on bad framing. Bytes after a message stay buffered for the next call, and
 * `detach()` hands back whatever was read past the last message (used by the
 * visitor header: what follows it are the visitor's bytes).
 *
 * Chunks are kept as they arrive and joined once per message: a 1 MiB message
 * sent in 16-byte yamux frames is 65,536 chunks, and joining the whole buffer
 * per chunk (as this reader once did) copied ~34 GB for it; now every byte is
 * copied at most once. The reader pauses its stream once it holds a whole
 * message's worth of bytes (maxBytes + the 4-byte length) that nobody asked
 * for, so a peer that writes faster than we read is held back by the stream's
 * flow control instead of growing this buffer.
 */
export class MessageReader<T extends { type: string }> {
  /** Chunks not yet consumed, from index `first` on (consumed ones are dropped in bulk, not shifted one by one). */
  private chunks: Buffer[] = [];
  private first = 0;
  private bytes = 0;
  private ended = false;
  private failed: Error | null = null;
  private pausedByUs = false;
  private waiter: (() => void) | null = null;
  private readonly highWaterBytes: number;
  private readonly onData = (chunk: Buffer): void => {
    if (chunk.length === 0) return;
    this.chunks.push(chunk);
    this.bytes += chunk.length;
    if (this.bytes >= this.highWaterBytes && !this.pausedByUs) {
      this.pausedByUs = true;
      this.stream.pause();
    }
    this.wake();
  };
  private readonly onEnd = (): void => { this.ended = true; this.wake(); };
  private readonly onError = (err: Error): void => { this.failed = err; this.wake(); };

  constructor(private readonly stream: Duplex, private readonly maxBytes = MESSAGE_MAX_BYTES) {
    this.highWaterBytes = LENGTH_BYTES + maxBytes;
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

  /** Bytes buffered and not yet returned as messages. */
  get bufferedBytes(): number {
    return this.bytes;
  }

  /**
   * The next message if it is already buffered whole, else undefined; never waits.
   * Throws ProtocolError on bad framing, like next().
   */
  poll(): T | undefined {
    if (this.bytes < LENGTH_BYTES) return undefined;
    const len = this.peekLength();
    if (len > this.maxBytes) throw new ProtocolError(`message length ${len} exceeds ${this.maxBytes}`);
    if (this.bytes < LENGTH_BYTES + len) return undefined;
    this.skip(LENGTH_BYTES);
    const r = parseBody<T>(this.take(len));
    if (r.type === "invalid") throw new ProtocolError(r.reason);
    return r.value;
  }

  async next(): Promise<T | null> {
    for (;;) {
      const m = this.poll();
      if (m !== undefined) return m;
      if (this.failed) throw this.failed;
      if (this.ended) {
        if (this.bytes > 0) throw new ProtocolError("stream ended in the middle of a message");
        return null;
      }
      // Not a whole message yet, so fewer than highWaterBytes are held: read on.
      if (this.pausedByUs) {
        this.pausedByUs = false;
        this.stream.resume();
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
    const rest = this.bytes === 0 ? Buffer.alloc(0) : this.take(this.bytes);
    this.chunks = [];
    this.first = 0;
    return rest;
  }

  /** The 4-byte big-endian length at the front; the caller checked that 4 bytes are buffered. */
  private peekLength(): number {
    const head = this.chunks[this.first]!;
    if (head.length >= LENGTH_BYTES) return head.readUInt32BE(0);
    let len = 0;
    let got = 0;
    for (let i = this.first; got < LENGTH_BYTES; i++) {
      const c = this.chunks[i]!;
      for (let j = 0; j < c.length && got < LENGTH_BYTES; j++, got++) len = len * 256 + c[j]!;
    }
    return len;
  }

  private skip(n: number): void {
    this.take(n, false);
  }

  /**
   * Removes the first n buffered bytes and returns them: a view when they lie in one
   * chunk, else one copy of exactly those bytes (counted in messageReaderStats).
   */
  private take(n: number, keep = true): Buffer {
    this.bytes -= n;
    const head = this.chunks[this.first]!;
    if (head.length >= n) {
      const out = head.subarray(0, n);
      if (head.length === n) this.dropChunks(1);
      else this.chunks[this.first] = head.subarray(n);
      return out;
    }
    const out = keep ? Buffer.allocUnsafe(n) : EMPTY;
    let off = 0;
    let used = 0;
    while (off < n) {
      const c = this.chunks[this.first + used]!;
      const k = Math.min(c.length, n - off);
      if (keep) c.copy(out, off, 0, k);
      off += k;
      if (k === c.length) used++;
      else this.chunks[this.first + used] = c.subarray(k);
    }
    if (keep) messageReaderStats.copiedBytes += n;
    this.dropChunks(used);
    return out;
  }

  private dropChunks(n: number): void {
    this.first += n;
    if (this.first === this.chunks.length) {
      this.chunks = [];
      this.first = 0;
    } else if (this.first >= 1024 && this.first * 2 >= this.chunks.length) {
      // Compact now and then: amortised O(1) per chunk.
      this.chunks = this.chunks.slice(this.first);
      this.first = 0;
    }
  }
}
