/**
 * yamux v0 framing (hashicorp/yamux spec.md, "Framing"): pure header encode/decode
 * and a streaming decoder. No I/O, no timers: fuzzable without sockets.
 *
 * Header, 12 bytes, big endian (spec.md §Framing):
 *   version u8 | type u8 | flags u16 | stream id u32 | length u32
 */

/** spec.md §Framing: "each header has a 12 byte overhead". */
export const FRAME_HEADER_BYTES = 12;
/** spec.md §Version Field: "the field is always set to 0". */
export const YAMUX_VERSION = 0;

/** spec.md §Type Field. Plain object (not a const enum) so transpile-only loaders work. */
export const FrameType = {
  Data: 0,
  WindowUpdate: 1,
  Ping: 2,
  GoAway: 3,
} as const;
export type FrameTypeValue = (typeof FrameType)[keyof typeof FrameType];

/** spec.md §Flag Field. Bits outside these four are ignored on receive. */
export const Flag = {
  SYN: 0x1,
  ACK: 0x2,
  FIN: 0x4,
  RST: 0x8,
} as const;

/** spec.md §Session termination: Go Away error codes. */
export const GoAwayCode = {
  Normal: 0,
  ProtocolError: 1,
  InternalError: 2,
} as const;

export interface FrameHeader {
  version: number;
  type: FrameTypeValue;
  flags: number;
  streamId: number;
  /** Data: payload bytes that follow; WindowUpdate: delta; Ping: opaque value; GoAway: code. */
  length: number;
}

export type HeaderResult =
  | { kind: "need-more" }
  | { kind: "ok"; header: FrameHeader }
  | { kind: "invalid"; reason: string };

const NEED_MORE = Object.freeze({ kind: "need-more" as const });

const TYPE_NAMES = ["data", "window update", "ping", "go away"];

/** Human name of a frame type, for error messages. */
export function frameTypeName(type: number): string {
  return TYPE_NAMES[type] ?? `type ${type}`;
}

/**
 * Writes one header into `target` at `offset` (default: a fresh 12-byte buffer) and
 * returns `target`. Values are not validated beyond the u8/u16/u32 ranges of the fields.
 */
export function encodeHeader(
  type: FrameTypeValue,
  flags: number,
  streamId: number,
  length: number,
  target: Buffer = Buffer.allocUnsafe(FRAME_HEADER_BYTES),
  offset = 0,
): Buffer {
  target[offset] = YAMUX_VERSION;
  target[offset + 1] = type;
  target.writeUInt16BE(flags, offset + 2);
  target.writeUInt32BE(streamId >>> 0, offset + 4);
  target.writeUInt32BE(length >>> 0, offset + 8);
  return target;
}

/**
 * Decodes the header at `buf[offset..]`. Pure. Checks what the framing alone can check:
 *  - version must be 0 (spec.md §Version Field);
 *  - type must be 0..3 (spec.md §Type Field);
 *  - Ping and Go Away use stream id 0 (spec.md §StreamID Field: "should always use the 0 StreamID");
 *  - Data and Window Update never use stream id 0 ("the 0 ID is reserved to represent the session").
 * Window and stream-state rules are the session's job (mux.ts).
 */
export function decodeHeader(buf: Buffer, offset = 0): HeaderResult {
  if (buf.length - offset < FRAME_HEADER_BYTES) return NEED_MORE;
  const version = buf[offset]!;
  if (version !== YAMUX_VERSION) {
    return {
      kind: "invalid",
      reason: `unsupported yamux version ${version} (this side speaks version ${YAMUX_VERSION}; the peer is not a yamux v0 endpoint or the stream is out of sync)`,
    };
  }
  const type = buf[offset + 1]!;
  if (type > FrameType.GoAway) {
    return { kind: "invalid", reason: `unknown yamux frame type ${type} (known: 0 data, 1 window update, 2 ping, 3 go away)` };
  }
  const flags = buf.readUInt16BE(offset + 2);
  const streamId = buf.readUInt32BE(offset + 4);
  const length = buf.readUInt32BE(offset + 8);
  if (type >= FrameType.Ping) {
    if (streamId !== 0) {
      return { kind: "invalid", reason: `${frameTypeName(type)} frame on stream ${streamId} (must use stream id 0)` };
    }
  } else if (streamId === 0) {
    return { kind: "invalid", reason: `${frameTypeName(type)} frame on stream id 0 (reserved for the session)` };
  }
  return { kind: "ok", header: { version, type: type as FrameTypeValue, flags, streamId, length } };
}

export type DecodeStep =
  | { kind: "need-more" }
  /** A complete header. For a Data frame, `header.length` payload bytes follow as "payload" steps. */
  | { kind: "header"; header: FrameHeader }
  /** A piece of the current Data frame's payload; `last` marks the frame's final piece. */
  | { kind: "payload"; data: Buffer; last: boolean }
  | { kind: "invalid"; reason: string };

/**
 * Streaming decoder: `push()` chunks of any split, then call `next()` until it returns
 * "need-more". Payloads are handed out as zero-copy sub-views of the pushed chunks, piece
 * by piece, so a 64 KiB frame arriving in 16 KiB TLS records is never reassembled; only a
 * header split across chunks is copied (into a 12-byte scratch). Work is linear in the
 * bytes pushed, whatever the split (byte-at-a-time included).
 *
 * After "invalid" the decoder stays failed: the byte stream has lost framing.
 */
export class FrameDecoder {
  private chunks: Buffer[] = [];
  private head = 0; // index of the chunk being read
  private pos = 0; // read position inside chunks[head]
  private readonly scratch = Buffer.allocUnsafe(FRAME_HEADER_BYTES);
  private scratchFill = 0;
  private payloadLeft = 0;
  private failure: { kind: "invalid"; reason: string } | null = null;

  /** Bytes pushed but not yet returned by next() (header scratch included). */
  get bufferedBytes(): number {
    let n = this.scratchFill - this.pos;
    for (let i = this.head; i < this.chunks.length; i++) n += this.chunks[i]!.length;
    return n;
  }

  push(chunk: Buffer): void {
    if (chunk.length > 0) this.chunks.push(chunk);
  }

  next(): DecodeStep {
    if (this.failure) return this.failure;
    const chunks = this.chunks;
    while (this.head < chunks.length) {
      const c = chunks[this.head]!;
      const avail = c.length - this.pos;
      if (avail === 0) {
        this.head++;
        this.pos = 0;
        continue;
      }
      if (this.payloadLeft > 0) {
        const n = avail < this.payloadLeft ? avail : this.payloadLeft;
        const data = n === c.length ? c : c.subarray(this.pos, this.pos + n);
        this.pos += n;
        this.payloadLeft -= n;
        return { kind: "payload", data, last: this.payloadLeft === 0 };
      }
      let res: HeaderResult;
      if (this.scratchFill === 0 && avail >= FRAME_HEADER_BYTES) {
        res = decodeHeader(c, this.pos);
        this.pos += FRAME_HEADER_BYTES;
      } else {
        const n = Math.min(FRAME_HEADER_BYTES - this.scratchFill, avail);
        c.copy(this.scratch, this.scratchFill, this.pos, this.pos + n);
        this.scratchFill += n;
        this.pos += n;
        if (this.scratchFill < FRAME_HEADER_BYTES) continue;
        this.scratchFill = 0;
        res = decodeHeader(this.scratch, 0);
      }
      if (res.kind === "invalid") {
        this.failure = res;
        this.chunks = [];
        this.head = 0;
        this.pos = 0;
        return res;
      }
      if (res.kind === "need-more") throw new Error("unreachable: full header decoded as need-more");
      if (res.header.type === FrameType.Data) this.payloadLeft = res.header.length;
      return { kind: "header", header: res.header };
    }
    // Everything consumed: drop references so pushed chunks can be collected.
    if (chunks.length > 0) {
      chunks.length = 0;
      this.head = 0;
      this.pos = 0;
    }
    return NEED_MORE;
  }
}
