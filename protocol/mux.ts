/**
 * The yamux v0 session: many `MuxStream`s (Node Duplex, muxstream.ts) over one connection;
 * its limits and defaults are in muxlimits.ts. Wire format: frame.ts and hashicorp/yamux
 * spec.md; what we implement: PROTOCOL.md.
 *
 * Hot path (per data chunk): `pump()` on send, `onConnData()` -> `onPayload()` on
 * receive, `creditConsumed()` from `_read()`. No closures, logging or awaits there;
 * frames produced in one tick are written with one cork()/uncork() batch.
 */
import { EventEmitter } from "node:events";
import type { Duplex } from "node:stream";
import { ProtocolError } from "../lib/errors.js";
import {
  FRAME_HEADER_BYTES,
  Flag,
  FrameDecoder,
  FrameType,
  GoAwayCode,
  encodeHeader,
  type FrameHeader,
  type FrameTypeValue,
} from "./frame.js";
import {
  MUX_ARENA_BYTES,
  MUX_AUTOTUNE_RTTS,
  MUX_COPY_PAYLOAD_MAX_BYTES,
  MUX_CREDIT_WINDOW_DIVISOR,
  MUX_DEFAULT_ACCEPT_BACKLOG,
  MUX_DEFAULT_CLOSE_LINGER_MS,
  MUX_DEFAULT_KEEPALIVE_INTERVAL_MS,
  MUX_DEFAULT_KEEPALIVE_TIMEOUT_MS,
  MUX_DEFAULT_MAX_AUTO_WINDOW_BYTES,
  MUX_DEFAULT_MAX_FRAME_PAYLOAD_BYTES,
  MUX_DEFAULT_MAX_QUEUED_CONTROL_FRAMES,
  MUX_DEFAULT_MAX_STREAM_WINDOW_BYTES,
  MUX_DEFAULT_WRITE_BATCH_MAX_BYTES,
  MUX_INITIAL_WINDOW_BYTES,
  MUX_MAX_WINDOW_BYTES,
  type MuxOptions,
} from "./muxlimits.js";
import { MuxStream, errWithCode, type WindowBudget } from "./muxstream.js";

// The public surface stays here: protocol/mux.js exports the session, its streams and limits.
export * from "./muxlimits.js";
export { MuxStream, type WindowBudget } from "./muxstream.js";

/** Per-stream choices for `MuxSession.open()`. */
export interface OpenOptions {
  /**
   * The receive window this stream advertises in its SYN (what the peer may send before our
   * reader consumes anything): MUX_INITIAL_WINDOW_BYTES (the spec's 256 KiB, no extra
   * credit) up to maxStreamWindowBytes (the default).
   */
  windowBytes?: number;
  /** Asked before auto-tuning grows this stream's window (see WindowBudget). */
  budget?: WindowBudget;
}

/**
 * One arena for the headers and small payloads of every session of this process. A private
 * 64 KiB arena per session was 64 MB of external memory at 1,000 idle tunnels that each
 * write a few dozen bytes per keepalive (issue 12). Bytes handed out are never written
 * again: a session takes the next free bytes, and a full arena is replaced by a new one,
 * which lives on only while a queued batch still points into it (as Node's Buffer pool).
 */
const sharedArena = { buf: Buffer.allocUnsafe(MUX_ARENA_BYTES), pos: 0 };

interface PendingPing {
  resolve: (rttMs: number) => void;
  reject: (err: Error) => void;
  t0: number;
  timer: NodeJS.Timeout;
}

function checkInt(name: string, v: number, min: number, max: number): number {
  if (!Number.isInteger(v) || v < min || v > max) {
    throw new RangeError(`MuxOptions.${name} must be an integer in [${min}, ${max}], got ${v}`);
  }
  return v;
}

export class MuxSession extends EventEmitter {
  readonly role: "client" | "server";
  readonly maxStreamWindowBytes: number;
  readonly maxAutoWindowBytes: number;
  readonly keepaliveIntervalMs: number;
  readonly keepaliveTimeoutMs: number;
  readonly acceptBacklog: number;
  readonly maxFramePayloadBytes: number;
  readonly writeBatchMaxBytes: number;
  readonly closeLingerMs: number;
  readonly maxQueuedControlFrames: number;

  private readonly conn: Duplex;
  private readonly streams = new Map<number, MuxStream>();
  private readonly decoder = new FrameDecoder();
  private nextId: number;
  private readonly ourParity: number;
  private readonly clock: () => number;
  /** Smallest round trip seen (SYN->ACK of our streams, pings); Infinity until the first sample. */
  private minRttMs = Infinity;

  // ---- write side
  private out: Buffer[] = [];
  private outBytes = 0;
  /** This session's part of the current batch in the shared arena: [segStart, segEnd) of segBuf. */
  private segBuf: Buffer | null = null;
  private segStart = 0;
  private segEnd = 0;
  private flushScheduled = false;
  private connBlocked = false;
  private waitingConn: MuxStream[] = [];
  /** Control frames queued since write() returned false and no 'drain' came (see maxQueuedControlFrames). */
  private controlWhileBlocked = 0;

  // ---- receive side: the Data frame whose payload is arriving
  private rxStream: MuxStream | null = null;
  private rxFin = false;
  private rxChunks = 0;

  // ---- lifecycle
  private _closed = false;
  private closing = false;
  private localGoAway = false;
  private remoteGoAway = false;
  private remoteGoAwayCode = -1;
  private readonly acceptQueue: MuxStream[] = [];
  private lingerTimer: NodeJS.Timeout | null = null;

  // ---- ping / keepalive
  private nextPingId = 1;
  private readonly pings = new Map<number, PendingPing>();
  private kaTimer: NodeJS.Timeout | null = null;
  private kaDeadline: NodeJS.Timeout | null = null;
  private kaId = 0; // 0: no keepalive ping outstanding
  private kaRxMark = 0;
  private kaSentAt = 0;

  private readonly flushBound = (): void => {
    this.flushScheduled = false;
    this.flush();
  };

  constructor(conn: Duplex, opts: MuxOptions) {
    super();
    if (opts.role !== "client" && opts.role !== "server") {
      throw new RangeError(`MuxOptions.role must be "client" or "server", got ${String(opts.role)}`);
    }
    this.role = opts.role;
    this.maxStreamWindowBytes = checkInt(
      "maxStreamWindowBytes", opts.maxStreamWindowBytes ?? MUX_DEFAULT_MAX_STREAM_WINDOW_BYTES,
      MUX_INITIAL_WINDOW_BYTES, MUX_MAX_WINDOW_BYTES,
    );
    this.maxAutoWindowBytes = checkInt(
      "maxAutoWindowBytes", opts.maxAutoWindowBytes ?? Math.max(MUX_DEFAULT_MAX_AUTO_WINDOW_BYTES, this.maxStreamWindowBytes),
      this.maxStreamWindowBytes, MUX_MAX_WINDOW_BYTES,
    );
    this.clock = opts.clock ?? performance.now.bind(performance);
    this.keepaliveIntervalMs = checkInt(
      "keepaliveIntervalMs", opts.keepaliveIntervalMs ?? MUX_DEFAULT_KEEPALIVE_INTERVAL_MS, 0, 2 ** 31 - 1,
    );
    this.keepaliveTimeoutMs = checkInt(
      "keepaliveTimeoutMs", opts.keepaliveTimeoutMs ?? MUX_DEFAULT_KEEPALIVE_TIMEOUT_MS, 1, 2 ** 31 - 1,
    );
    this.acceptBacklog = checkInt("acceptBacklog", opts.acceptBacklog ?? MUX_DEFAULT_ACCEPT_BACKLOG, 0, 2 ** 31 - 1);
    this.maxFramePayloadBytes = checkInt(
      "maxFramePayloadBytes", opts.maxFramePayloadBytes ?? MUX_DEFAULT_MAX_FRAME_PAYLOAD_BYTES, 1, MUX_MAX_WINDOW_BYTES,
    );
    this.writeBatchMaxBytes = checkInt(
      "writeBatchMaxBytes", opts.writeBatchMaxBytes ?? MUX_DEFAULT_WRITE_BATCH_MAX_BYTES, 1, 2 ** 31 - 1,
    );
    this.closeLingerMs = checkInt("closeLingerMs", opts.closeLingerMs ?? MUX_DEFAULT_CLOSE_LINGER_MS, 0, 2 ** 31 - 1);
    this.maxQueuedControlFrames = checkInt(
      "maxQueuedControlFrames", opts.maxQueuedControlFrames ?? MUX_DEFAULT_MAX_QUEUED_CONTROL_FRAMES, 1, 2 ** 31 - 1,
    );
    this.ourParity = this.role === "client" ? 1 : 0;
    this.nextId = this.role === "client" ? 1 : 2;

    this.conn = conn;
    conn.on("data", this.onConnData);
    conn.on("drain", this.onConnDrain);
    conn.on("error", this.onConnError);
    conn.on("end", this.onConnEnd);
    conn.on("close", this.onConnClose);
    this.on("newListener", this.onNewListener);

    if (this.keepaliveIntervalMs > 0) {
      this.kaTimer = setInterval(this.onKeepaliveTick, this.keepaliveIntervalMs);
      this.kaTimer.unref();
    }
  }

  /** Live streams: ids are freed when both directions are finished or on RST. */
  get streamCount(): number {
    return this.streams.size;
  }

  get closed(): boolean {
    return this._closed;
  }

  /**
   * Opens a stream; its SYN (a Window Update advertising its receive window, by default
   * maxStreamWindowBytes) goes out this tick.
   */
  open(opts?: OpenOptions): MuxStream {
    if (this._closed) throw errWithCode("mux: session is closed; cannot open a stream", "ERR_MUX_CLOSED");
    if (this.closing) throw errWithCode("mux: session is closing; cannot open a stream", "ERR_MUX_CLOSED");
    if (this.remoteGoAway) {
      throw errWithCode(
        `mux: the peer sent GoAway (code ${this.remoteGoAwayCode}) and accepts no new streams; open a new session`,
        "ERR_MUX_GOAWAY",
      );
    }
    const window = opts?.windowBytes ?? this.maxStreamWindowBytes;
    if (!Number.isInteger(window) || window < MUX_INITIAL_WINDOW_BYTES || window > this.maxStreamWindowBytes) {
      throw new RangeError(
        `mux: open(): windowBytes must be an integer in [${MUX_INITIAL_WINDOW_BYTES}, ${this.maxStreamWindowBytes}], got ${window}`,
      );
    }
    const id = this.nextId;
    if (id > MUX_MAX_WINDOW_BYTES) throw errWithCode("mux: stream ids exhausted; open a new session", "ERR_MUX_IDS_EXHAUSTED");
    this.nextId = id + 2;
    const s = new MuxStream(this, id);
    this.streams.set(id, s);
    // spec.md §Flow Control: "can immediately send a window update as part of the SYN/ACK
    // indicating a larger window" -> the peer may send `window` at once.
    s.recvWindow = window;
    s.rxWindow = window;
    s.budget = opts?.budget ?? null;
    s.synAt = this.clock();
    s.lastProgressAt = s.synAt;
    this.putHeader(FrameType.WindowUpdate, Flag.SYN, id, window - MUX_INITIAL_WINDOW_BYTES);
    this.scheduleFlush();
    return s;
  }

  /** Round trip of one Ping frame, in ms. Rejects if no answer within keepaliveTimeoutMs or on close. */
  ping(): Promise<number> {
    if (this._closed) return Promise.reject(errWithCode("mux: session is closed", "ERR_MUX_CLOSED"));
    return new Promise<number>((resolve, reject) => {
      const id = this.takePingId();
      const timer = setTimeout(() => {
        this.pings.delete(id);
        reject(errWithCode("mux: ping timeout", "ETIMEDOUT"));
      }, this.keepaliveTimeoutMs);
      timer.unref();
      this.pings.set(id, { resolve, reject, t0: this.clock(), timer });
      this.sendControl(FrameType.Ping, Flag.SYN, 0, id);
    });
  }

  /** Tells the peer we accept no new streams (their SYNs get RST from now on). Existing streams keep working. */
  goAway(): void {
    if (this._closed || this.localGoAway) return;
    this.localGoAway = true;
    this.sendControl(FrameType.GoAway, 0, 0, GoAwayCode.Normal);
  }

  /** GoAway, then end the connection once every stream has finished both ways. */
  close(): void {
    if (this._closed || this.closing) return;
    this.goAway();
    this.closing = true;
    // Peer-opened streams nobody took will never finish: refuse them.
    for (const s of this.acceptQueue.splice(0)) s.destroy();
    if (this.streams.size === 0) this.finishClose();
  }

  /** Tears everything down now: every live stream is destroyed with an error, the connection destroyed. */
  destroy(err?: Error): void {
    if (this._closed) return;
    this._closed = true;
    this.stopTimers();
    const streamErr = errWithCode(
      err ? `mux session closed: ${err.message}` : "mux session closed",
      "ERR_MUX_SESSION_CLOSED",
      err,
    );
    const live = [...this.streams.values()];
    this.streams.clear();
    const queued = new Set(this.acceptQueue.splice(0));
    for (const s of live) {
      s.freed = true;
      s.destroy(queued.has(s) ? undefined : streamErr);
    }
    this.failPings(streamErr);
    this.out = [];
    this.outBytes = 0;
    this.waitingConn = [];
    if (err instanceof ProtocolError && !this.conn.destroyed) {
      // Tell the peer why (spec.md §Session termination), then hang up.
      this.conn.end(encodeHeader(FrameType.GoAway, 0, 0, GoAwayCode.ProtocolError));
      this.startLinger();
    } else {
      this.conn.destroy();
    }
    this.emit("close", err);
  }

  // ------------------------------------------------------------------ write side

  /** @internal Appends one header to the current batch. */
  putHeader(type: FrameTypeValue, flags: number, id: number, length: number): void {
    const at = this.reserve(FRAME_HEADER_BYTES);
    encodeHeader(type, flags, id, length, this.segBuf!, at);
    this.outBytes += FRAME_HEADER_BYTES;
  }

  private putPayload(buf: Buffer): void {
    const n = buf.length;
    if (n <= MUX_COPY_PAYLOAD_MAX_BYTES) {
      const at = this.reserve(n);
      buf.copy(this.segBuf!, at);
    } else {
      this.sealArena();
      this.out.push(buf);
    }
    this.outBytes += n;
  }

  /**
   * Takes `n` bytes of the shared arena for this session's batch and returns their offset in
   * segBuf. They extend the session's open segment when nobody took arena bytes since (one
   * buffer per batch, as with a private arena); else the segment is sealed and a new one starts.
   */
  private reserve(n: number): number {
    const a = sharedArena;
    if (this.segBuf !== null && (this.segBuf !== a.buf || this.segEnd !== a.pos)) this.sealArena();
    if (a.buf.length - a.pos < n) {
      this.sealArena();
      a.buf = Buffer.allocUnsafe(MUX_ARENA_BYTES);
      a.pos = 0;
    }
    if (this.segBuf === null) {
      this.segBuf = a.buf;
      this.segStart = a.pos;
    }
    const at = a.pos;
    a.pos += n;
    this.segEnd = a.pos;
    return at;
  }

  /** Moves the open segment to the batch; its bytes are never written again (the arena only moves forward). */
  private sealArena(): void {
    if (this.segBuf === null) return;
    if (this.segEnd > this.segStart) this.out.push(this.segBuf.subarray(this.segStart, this.segEnd));
    this.segBuf = null;
  }

  /**
   * @internal A control frame (no payload), written with this tick's batch. Data waits for
   * 'drain' but control frames do not, so while the connection is blocked they are counted:
   * past maxQueuedControlFrames the peer is provoking replies it never reads, and the session ends.
   */
  sendControl(type: FrameTypeValue, flags: number, id: number, length: number): void {
    if (this._closed) return;
    if (this.connBlocked && ++this.controlWhileBlocked > this.maxQueuedControlFrames) {
      this.destroy(errWithCode(
        `mux: the peer is not reading: more than ${this.maxQueuedControlFrames} control frames (pings, credit, resets) ` +
          "queued without the connection draining",
        "ERR_MUX_CONTROL_QUEUE",
      ));
      return;
    }
    this.putHeader(type, flags, id, length);
    this.scheduleFlush();
  }

  private scheduleFlush(): void {
    if (!this.flushScheduled) {
      this.flushScheduled = true;
      setImmediate(this.flushBound);
    }
  }

  /** Hands the batch to the connection: one write, or cork + writes + uncork (one writev). */
  private flush(): void {
    this.sealArena();
    const out = this.out;
    if (out.length === 0 || this._closed) return;
    this.out = [];
    this.outBytes = 0;
    const conn = this.conn;
    let ok: boolean;
    if (out.length === 1) {
      ok = conn.write(out[0]);
    } else {
      conn.cork();
      ok = true;
      for (let i = 0; i < out.length; i++) ok = conn.write(out[i]);
      conn.uncork();
    }
    if (!ok) this.connBlocked = true;
  }

  private readonly onConnDrain = (): void => {
    this.connBlocked = false;
    this.controlWhileBlocked = 0;
    const waiting = this.waitingConn;
    if (waiting.length === 0) return;
    this.waitingConn = [];
    for (let i = 0; i < waiting.length; i++) {
      const s = waiting[i]!;
      s.waitingConn = false;
      if (s.txCb !== null) this.pump(s);
    }
  };

  /**
   * @internal Moves a stream's pending write into frames while it has send window and the
   * connection is not pushing back. The stream's write callback is withheld until every
   * byte is framed: that is the backpressure the writer sees.
   */
  pump(s: MuxStream): void {
    while (s.txCb !== null) {
      const chunk = s.txChunk!;
      const off = s.txOff;
      if (off < chunk.length) {
        if (this.connBlocked) {
          if (!s.waitingConn) {
            s.waitingConn = true;
            this.waitingConn.push(s);
          }
          return;
        }
        const win = s.sendWindow;
        if (win === 0) {
          // Out of window mid-write: what we framed so far must still leave this tick
          // (the write is not finished, so its completion will not schedule the flush).
          if (this.outBytes > 0) this.scheduleFlush();
          return; // resumed by a Window Update (onHeader)
        }
        let n = chunk.length - off;
        if (n > win) n = win;
        if (n > this.maxFramePayloadBytes) n = this.maxFramePayloadBytes;
        this.putHeader(FrameType.Data, 0, s.id, n);
        this.putPayload(off === 0 && n === chunk.length ? chunk : chunk.subarray(off, off + n));
        s.sendWindow = win - n;
        s.txOff = off + n;
        if (this.outBytes >= this.writeBatchMaxBytes) this.flush();
        if (s.txOff < chunk.length) continue;
      }
      const list = s.txList;
      if (list !== null && s.txIdx + 1 < list.length) {
        s.txIdx++;
        s.txChunk = list[s.txIdx]!;
        s.txOff = 0;
        continue;
      }
      const cb = s.txCb;
      s.txCb = null;
      s.txChunk = null;
      s.txList = null;
      this.scheduleFlush();
      cb(); // may re-enter _write -> pump; the loop re-checks s.txCb
    }
  }

  // ------------------------------------------------------------------ receive side

  private readonly onConnData = (chunk: Buffer): void => {
    if (this._closed) return;
    this.rxChunks++;
    const dec = this.decoder;
    dec.push(chunk);
    for (;;) {
      const step = dec.next();
      switch (step.kind) {
        case "need-more":
          return;
        case "payload":
          this.onPayload(step.data, step.last);
          break;
        case "header":
          this.onHeader(step.header);
          break;
        case "invalid":
          this.destroy(new ProtocolError(`yamux: ${step.reason}`));
          return;
      }
      if (this._closed) return;
    }
  };

  private onPayload(data: Buffer, last: boolean): void {
    const s = this.rxStream;
    if (s !== null && !s.destroyed) {
      s.rxBuffered += data.length;
      s.push(data);
      if (last && this.rxFin) this.onRemoteFin(s);
    }
    if (last) this.rxStream = null;
  }

  private onHeader(h: FrameHeader): void {
    const type = h.type;
    if (type === FrameType.Data || type === FrameType.WindowUpdate) {
      const id = h.streamId;
      const flags = h.flags;
      let s = this.streams.get(id);
      if ((flags & Flag.SYN) !== 0) {
        if (s !== undefined) return this.fail(`peer sent SYN for stream ${id}, which is already open`);
        s = this.acceptIncoming(id, type === FrameType.WindowUpdate ? h.length : 0);
        if (s === undefined) return; // refused (RST sent) or session failed; payload is discarded
      } else if (s === undefined) {
        // A stream we already reset or finished: late frames are dropped (hashicorp does the same).
        return;
      }
      if ((flags & Flag.ACK) !== 0 && !s.acked) {
        s.acked = true;
        if (s.synAt >= 0) this.rttSample(this.clock() - s.synAt);
      }
      if ((flags & Flag.RST) !== 0) return this.onRemoteReset(s);
      if (type === FrameType.WindowUpdate) {
        if ((flags & Flag.SYN) === 0 && h.length > 0) {
          s.sendWindow += h.length;
          s.lastProgressAt = this.clock(); // once per credit frame (a quarter of the peer's window), not per chunk
          if (s.txCb !== null && !s.waitingConn) this.pump(s);
        }
        if ((flags & Flag.FIN) !== 0) this.onRemoteFin(s);
        return;
      }
      // Data frame
      const len = h.length;
      if (len > s.recvWindow) {
        // Flow-control violation: the peer ignores our window, so nothing bounds our memory.
        // Tear the whole session down (as hashicorp does): the peer is broken, not one stream.
        return this.fail(
          `stream ${id}: peer sent a ${len}-byte data frame with only ${s.recvWindow} bytes of receive window left`,
        );
      }
      if (s.finRecv) {
        s.destroy(new ProtocolError(`yamux: stream ${id}: peer sent data after its FIN`));
        return;
      }
      s.recvWindow -= len;
      if (len > 0) {
        this.rxStream = s;
        this.rxFin = (flags & Flag.FIN) !== 0;
      } else if ((flags & Flag.FIN) !== 0) {
        this.onRemoteFin(s);
      }
      return;
    }
    if (type === FrameType.Ping) {
      if ((h.flags & Flag.SYN) !== 0) this.sendControl(FrameType.Ping, Flag.ACK, 0, h.length);
      else if ((h.flags & Flag.ACK) !== 0) this.onPong(h.length);
      return;
    }
    // GoAway
    if (!this.remoteGoAway) {
      this.remoteGoAway = true;
      this.remoteGoAwayCode = h.length;
      this.emit("goaway", h.length);
    }
  }

  /** Returns the new stream, or undefined if refused with RST (or the session failed). */
  private acceptIncoming(id: number, synDelta: number): MuxStream | undefined {
    if ((id & 1) === this.ourParity) {
      this.fail(
        `peer opened stream ${id}, but ${this.role === "client" ? "odd" : "even"} ids are ours ` +
          `(we are the ${this.role}; spec.md §StreamID Field)`,
      );
      return undefined;
    }
    const noTaker = this.listenerCount("stream") === 0;
    if (this.localGoAway || this.closing || (noTaker && this.acceptQueue.length >= this.acceptBacklog)) {
      this.sendControl(FrameType.WindowUpdate, Flag.RST, id, 0);
      return undefined;
    }
    const s = new MuxStream(this, id);
    s.sendWindow += synDelta;
    s.recvWindow = this.maxStreamWindowBytes;
    s.rxWindow = this.maxStreamWindowBytes;
    s.lastProgressAt = this.clock();
    this.streams.set(id, s);
    this.sendControl(FrameType.WindowUpdate, Flag.ACK, id, this.maxStreamWindowBytes - MUX_INITIAL_WINDOW_BYTES);
    if (noTaker) this.acceptQueue.push(s);
    else this.emit("stream", s);
    return s;
  }

  private readonly onNewListener = (event: string | symbol): void => {
    if (event === "stream" && this.acceptQueue.length > 0) process.nextTick(this.drainAcceptQueue);
  };

  private readonly drainAcceptQueue = (): void => {
    while (this.acceptQueue.length > 0 && this.listenerCount("stream") > 0) {
      const s = this.acceptQueue.shift()!;
      if (!s.destroyed) this.emit("stream", s);
    }
  };

  private onRemoteFin(s: MuxStream): void {
    if (s.finRecv) return;
    s.finRecv = true;
    s.push(null);
    if (s.finSent) this.forget(s);
  }

  private onRemoteReset(s: MuxStream): void {
    this.forget(s);
    s.rstRecv = true;
    if (this.rxStream === s) this.rxStream = null;
    // Still waiting in the accept queue: nobody holds it, so nobody could hear an error.
    const q = this.acceptQueue.indexOf(s);
    if (q >= 0) {
      this.acceptQueue.splice(q, 1);
      s.destroy();
      return;
    }
    s.destroy(
      errWithCode(
        s.acked || (s.id & 1) !== this.ourParity
          ? `mux: stream ${s.id} reset by peer`
          : `mux: stream ${s.id} refused by peer (RST before ACK)`,
        "ECONNRESET",
      ),
    );
  }

  /**
   * @internal Called from `_read()`: bytes the reader consumed since last time become
   * credit; returned to the peer once they reach a quarter of the stream's window, so a
   * paused reader stops the sender after at most one window (s.rxWindow).
   *
   * Auto-tuning (as QUIC and HTTP/2 stacks do): credit is counted in epochs of one full
   * window, from the first consumed byte. If the reader consumed the window in less than
   * MUX_AUTOTUNE_RTTS x the smallest RTT seen, the window, not the reader, is what limits
   * the stream: the window doubles (up to maxAutoWindowBytes) by sending extra credit.
   * A slow or stalled reader never completes a fast epoch, so it keeps its window; with no
   * RTT sample yet (or on loopback, where a window drains in far more than 4 RTTs) no
   * stream grows. A stream with a WindowBudget (hub visitor streams) grows only by what its
   * budget grants; this is asked once per epoch, so the accounting costs nothing per chunk.
   * Each credit stamps lastProgressAt: one clock read per quarter window, not per chunk.
   */
  creditConsumed(s: MuxStream): void {
    const unread = s.readableLength;
    const consumed = s.rxBuffered - unread;
    if (consumed <= 0) return;
    s.rxBuffered = unread;
    const credit = s.rxUncredited + consumed;
    const win = s.rxWindow;
    if (credit >= win / MUX_CREDIT_WINDOW_DIVISOR && !s.finRecv && !s.freed && !this._closed) {
      let grow = 0;
      const now = this.clock();
      s.lastProgressAt = now;
      if (win < this.maxAutoWindowBytes) {
        if (s.rxEpochStart < 0) s.rxEpochStart = now;
        s.rxEpochBytes += credit;
        if (s.rxEpochBytes >= win) {
          if (now - s.rxEpochStart <= MUX_AUTOTUNE_RTTS * this.minRttMs) {
            grow = Math.min(win, this.maxAutoWindowBytes - win);
            if (s.budget !== null) grow = s.budget.grow(s, grow);
            s.rxWindow = win + grow;
          }
          s.rxEpochStart = now;
          s.rxEpochBytes = 0;
        }
      }
      // A budget under pressure keeps some consumed credit back (never below the spec's
      // 256 KiB window: the budget only returns what the stream holds above it).
      const keep = s.budget !== null && grow === 0 ? s.budget.shrink(s, credit) : 0;
      if (keep > 0) s.rxWindow -= keep;
      s.rxUncredited = 0;
      const delta = credit + grow - keep;
      s.recvWindow += delta;
      if (delta > 0) this.sendControl(FrameType.WindowUpdate, 0, s.id, delta);
    } else {
      s.rxUncredited = credit;
    }
  }

  private rttSample(ms: number): void {
    if (ms < this.minRttMs) this.minRttMs = ms;
  }

  /** @internal Frees a stream id: both directions finished, or RST either way. */
  forget(s: MuxStream): void {
    if (s.freed) return;
    s.freed = true;
    this.streams.delete(s.id);
    if (this.closing && this.streams.size === 0) this.finishClose();
  }

  private fail(message: string): void {
    this.destroy(new ProtocolError(`yamux: ${message}`));
  }

  // ------------------------------------------------------------------ ping / keepalive

  private takePingId(): number {
    const id = this.nextPingId;
    this.nextPingId = id >= MUX_MAX_WINDOW_BYTES ? 1 : id + 1;
    return id;
  }

  private onPong(id: number): void {
    if (id === this.kaId && this.kaId !== 0) {
      this.kaId = 0;
      this.rttSample(this.clock() - this.kaSentAt);
      if (this.kaDeadline) clearTimeout(this.kaDeadline);
      this.kaDeadline = null;
      return;
    }
    const p = this.pings.get(id);
    if (p === undefined) return;
    this.pings.delete(id);
    clearTimeout(p.timer);
    const rtt = this.clock() - p.t0;
    this.rttSample(rtt);
    p.resolve(rtt);
  }

  private readonly onKeepaliveTick = (): void => {
    if (this._closed || this.kaId !== 0) return;
    this.kaId = this.takePingId();
    this.kaRxMark = this.rxChunks;
    this.kaSentAt = this.clock();
    this.sendControl(FrameType.Ping, Flag.SYN, 0, this.kaId);
    this.kaDeadline = setTimeout(this.onKeepaliveDeadline, this.keepaliveTimeoutMs);
    this.kaDeadline.unref();
  };

  /**
   * No pong yet. If anything else arrived meanwhile the peer is alive and its pong is
   * queued behind data (a saturated link): wait another period. Total silence kills.
   */
  private readonly onKeepaliveDeadline = (): void => {
    this.kaDeadline = null;
    if (this._closed || this.kaId === 0) return;
    if (this.rxChunks !== this.kaRxMark) {
      this.kaRxMark = this.rxChunks;
      this.kaDeadline = setTimeout(this.onKeepaliveDeadline, this.keepaliveTimeoutMs);
      this.kaDeadline.unref();
      return;
    }
    this.destroy(errWithCode("keepalive timeout", "ETIMEDOUT"));
  };

  private failPings(err: Error): void {
    for (const p of this.pings.values()) {
      clearTimeout(p.timer);
      p.reject(err);
    }
    this.pings.clear();
  }

  // ------------------------------------------------------------------ lifecycle

  private stopTimers(): void {
    if (this.kaTimer) clearInterval(this.kaTimer);
    if (this.kaDeadline) clearTimeout(this.kaDeadline);
    this.kaTimer = null;
    this.kaDeadline = null;
  }

  private startLinger(): void {
    if (this.lingerTimer || this.conn.destroyed) return;
    this.lingerTimer = setTimeout(() => this.conn.destroy(), this.closeLingerMs);
    this.lingerTimer.unref();
  }

  /** Graceful end: all streams finished. Flush, half-close the connection, report. */
  private finishClose(): void {
    if (this._closed) return;
    this.flush();
    this._closed = true;
    this.stopTimers();
    this.failPings(errWithCode("mux session closed", "ERR_MUX_SESSION_CLOSED"));
    this.conn.end();
    this.startLinger();
    this.emit("close");
  }

  private readonly onConnError = (err: Error): void => {
    if (!this._closed) this.destroy(err);
  };

  private readonly onConnEnd = (): void => {
    if (this._closed) {
      this.conn.destroy();
      return;
    }
    const n = this.streams.size;
    this.destroy(n > 0 ? errWithCode(`mux: connection ended by peer with ${n} streams open`, "ECONNRESET") : undefined);
  };

  private readonly onConnClose = (): void => {
    if (this.lingerTimer) clearTimeout(this.lingerTimer);
    this.lingerTimer = null;
    if (!this._closed) this.destroy(errWithCode("mux: connection closed", "ECONNRESET"));
  };
}


/** For error messages elsewhere (e.g. logs of a GoAway code). */
export function describeGoAwayCode(code: number): string {
  return code === GoAwayCode.Normal ? "normal" : code === GoAwayCode.ProtocolError ? "protocol error"
    : code === GoAwayCode.InternalError ? "internal error" : `code ${code}`;
}
