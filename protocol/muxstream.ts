/**
 * One yamux stream: a Node Duplex whose writes become Data frames (MuxSession.pump) and
 * whose reads return credit (MuxSession.creditConsumed). Created only by its session.
 */
import { Duplex } from "node:stream";
import { Flag, FrameType } from "./frame.js";
import { MUX_DEFAULT_MAX_FRAME_PAYLOAD_BYTES, MUX_INITIAL_WINDOW_BYTES } from "./muxlimits.js";
import type { MuxSession } from "./mux.js";

/** @internal */
export type WriteCb = (err?: Error | null) => void;

/** @internal An Error with a Node-style `code`. */
export function errWithCode(message: string, code: string, cause?: unknown): Error {
  const e = new Error(message, cause === undefined ? undefined : { cause }) as Error & { code: string };
  e.code = code;
  return e;
}


/**
 * Where a stream's receive window comes from beyond the session's own limits: the hub
 * gives each visitor stream one (gateway/budget.ts), so that windows are reservations
 * against its memory budgets. Consulted per auto-tuning step, never per chunk.
 */
export interface WindowBudget {
  /** Auto-tuning wants `bytes` more receive window for `s`; returns how many it may have (0..bytes). */
  grow(s: MuxStream, bytes: number): number;
  /**
   * `credit` consumed bytes are about to be returned to the peer: how many of them to keep
   * back (0..credit), shrinking the window by that much. yamux cannot take back credit
   * already granted, but the receiver decides how much consumed credit it returns.
   * Called once per credit (a quarter window), never per chunk.
   */
  shrink(s: MuxStream, credit: number): number;
}

export class MuxStream extends Duplex {
  readonly id: number;
  readonly session: MuxSession;

  /** @internal Bytes we may still send (peer's credit to us). */
  sendWindow = MUX_INITIAL_WINDOW_BYTES;
  /** @internal Bytes the peer may still send us. */
  recvWindow = MUX_INITIAL_WINDOW_BYTES;
  /** @internal Bytes pushed into the readable side and not yet seen consumed. */
  rxBuffered = 0;
  /** @internal Consumed bytes not yet returned as credit. */
  rxUncredited = 0;
  /** @internal This stream's receive window: maxStreamWindowBytes, grown by auto-tuning. */
  rxWindow = MUX_INITIAL_WINDOW_BYTES;
  /** @internal Auto-tuning epoch: when it started (-1: nothing consumed yet) and credit in it. */
  rxEpochStart = -1;
  rxEpochBytes = 0;
  /** @internal When our SYN went out (RTT sample on the ACK); -1 for peer-opened streams. */
  synAt = -1;
  /**
   * Session clock (ms) of the last time credit moved on this stream, either way: we returned
   * some (our reader drained a quarter window) or the peer did (its reader drained ours).
   * Set at open / accept. The hub sheds the visitors whose streams have gone longest without.
   */
  lastProgressAt = 0;
  /** @internal Consulted before auto-tuning grows the receive window; null: only maxAutoWindowBytes limits it. */
  budget: WindowBudget | null = null;
  /** @internal The write being framed: one chunk, or a _writev list. */
  txChunk: Buffer | null = null;
  txList: Buffer[] | null = null;
  txIdx = 0;
  txOff = 0;
  txCb: WriteCb | null = null;
  /** @internal Parked until the connection drains. */
  waitingConn = false;
  acked = false;
  finSent = false;
  finRecv = false;
  rstRecv = false;
  /** @internal The id is no longer in the session's map. */
  freed = false;

  /** @internal Use MuxSession.open() or the session's "stream" event. */
  constructor(session: MuxSession, id: number) {
    super({ allowHalfOpen: true });
    this.session = session;
    this.id = id;
  }

  override _read(): void {
    this.session.creditConsumed(this);
  }

  override _write(chunk: Buffer, _enc: BufferEncoding, cb: WriteCb): void {
    if (this.session.closed) return cb(errWithCode("mux session closed", "ERR_MUX_SESSION_CLOSED"));
    this.txChunk = chunk;
    this.txList = null;
    this.txOff = 0;
    this.txCb = cb;
    this.session.pump(this);
  }

  override _writev(chunks: Array<{ chunk: Buffer; encoding: BufferEncoding }>, cb: WriteCb): void {
    if (this.session.closed) return cb(errWithCode("mux session closed", "ERR_MUX_SESSION_CLOSED"));
    const list = new Array<Buffer>(chunks.length);
    let total = 0;
    for (let i = 0; i < chunks.length; i++) total += (list[i] = chunks[i]!.chunk).length;
    // Many small writes become one frame; big ones are framed in place (no copy).
    if (total <= MUX_DEFAULT_MAX_FRAME_PAYLOAD_BYTES) {
      this.txChunk = Buffer.concat(list, total);
      this.txList = null;
    } else {
      this.txChunk = list[0]!;
      this.txList = list;
      this.txIdx = 0;
    }
    this.txOff = 0;
    this.txCb = cb;
    this.session.pump(this);
  }

  /** end(): every write is framed by now; send FIN (half-close, we keep reading). */
  override _final(cb: (err?: Error | null) => void): void {
    if (this.session.closed) return cb(errWithCode("mux session closed", "ERR_MUX_SESSION_CLOSED"));
    this.finSent = true;
    this.session.sendControl(FrameType.WindowUpdate, Flag.FIN, this.id, 0);
    if (this.finRecv) this.session.forget(this);
    cb();
  }

  /** destroy(): RST unless both directions already finished; fails a withheld write. */
  override _destroy(err: Error | null, cb: (err?: Error | null) => void): void {
    const pending = this.txCb;
    this.txCb = null;
    this.txChunk = null;
    this.txList = null;
    if (!this.freed) {
      this.session.forget(this);
      if (!(this.finSent && this.finRecv) && !this.rstRecv) {
        this.session.sendControl(FrameType.WindowUpdate, Flag.RST, this.id, 0);
      }
    }
    if (pending !== null) pending(err ?? errWithCode(`mux: stream ${this.id} destroyed`, "ERR_STREAM_DESTROYED"));
    cb(err);
  }
}
