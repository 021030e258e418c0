/**
 * The hot path: moves bytes both ways between two Duplex streams, nothing else.
 * No parsing, no per-chunk logging, no per-chunk closures or allocations of our own.
 *
 * Batching: every chunk read in one turn of the event loop is written to the other
 * side inside one cork()/uncork(), so it leaves as one writev() instead of one
 * write() per chunk. On the hub, the tunnel's TLS layer hands out ~16 KiB records;
 * one syscall each to the visitor socket was 75% of the hub's CPU under bulk load.
 * We uncork in setImmediate (after the poll phase), not process.nextTick: Node runs
 * the nextTick queue after every native read callback, i.e. after each record.
 * A MuxStream destination is not corked: the session already gathers every frame of
 * a tick into one connection write, and corking it too would push its flush into the
 * next loop iteration (an extra turn per request/response on keep-alive traffic).
 *
 * Backpressure: the source is paused once SPLICE_MAX_QUEUED_BYTES wait in the
 * destination's write queue, and resumed on its 'drain'. (We do not stop at the
 * first write() returning false, as pipe() does: with the 16 KiB default
 * highWaterMark that would cap a batch at one record.) 'drain' is guaranteed:
 * the queue only exceeds the cap after a write() returned false.
 *
 * Half-close survives: when one side ends (FIN), the other side's writable is
 * ended and bytes keep flowing the other way until that side ends too; also when
 * the FIN was read before splice() was called.
 * An error or abrupt close on either side destroys the other (a TCP socket is
 * reset, a mux stream sends RST), so a dead peer never leaves a half-open
 * connection behind.
 */
import type { Duplex } from "node:stream";
import net from "node:net";
import { MuxStream } from "./mux.js";

/** Bytes waiting in a destination's write queue before we stop reading its source. */
export const SPLICE_MAX_QUEUED_BYTES = 256 * 1024;
/** A socket read hands out at most this much at once (libuv's read buffer): how far a queue can overshoot its bound. */
export const SOCKET_READ_MAX_BYTES = 64 * 1024;

/**
 * The most one splice holds in user space besides a MuxStream's receive buffer (which its
 * window bounds): each direction's write queue, overshot by one read, and one read held by
 * a paused socket. 704 KiB with the default 256 KiB queue. The hub's buffer budget counts
 * it per visitor (gateway/budget.ts); the arithmetic is in capsul.yaml.example.
 */
export function spliceHeldMaxBytes(maxQueuedBytes: number): number {
  return 2 * (maxQueuedBytes + SOCKET_READ_MAX_BYTES) + SOCKET_READ_MAX_BYTES;
}

/**
 * RST a TCP socket, unless our FIN is still in flight (end() called, shutdown not yet
 * done): libuv refuses uv_tcp_close_reset() while a shutdown request is pending
 * (UV_EINVAL), and Node 20 then neither closes the handle nor emits 'close'. The fd
 * leaked, this splice never completed, and a process exiting with such a handle spun
 * at 100% CPU in Environment::CleanupHandles (test/splice-exit.test.ts). A plain
 * close after our FIN still ends the connection (RST if the peer sends more).
 */
function abort(s: Duplex): void {
  if (s.destroyed) return;
  const finInFlight = s.writableEnded && !s.writableFinished;
  if (s instanceof net.Socket && typeof s.resetAndDestroy === "function" && !s.connecting && !finInFlight) s.resetAndDestroy();
  else s.destroy();
}

/**
 * One direction: src's bytes into dst. All handlers are bound once, at construction.
 * protocol/throttle.ts extends it for the visitors of a cog with a bandwidth limit; the
 * per-chunk handler here is the same for every splice.
 */
export class Direction {
  private readonly batch: boolean;
  private corked = false;
  /** The source is paused because the destination's queue is full. */
  protected paused = false;

  constructor(protected readonly src: Duplex, protected readonly dst: Duplex, private readonly maxQueuedBytes: number) {
    this.batch = !(dst instanceof MuxStream);
    src.on("data", this.onData);
    src.on("end", this.onEnd);
    dst.on("drain", this.onDrain);
    // The source's FIN may already have been read (a peek or a header reader took the
    // last bytes with it): its 'end' is gone, so pass it on now.
    if (src.readableEnded) this.onEnd();
  }

  private readonly onData = (chunk: Buffer): void => {
    const dst = this.dst;
    if (dst.destroyed) return;
    if (this.batch && !this.corked) {
      this.corked = true;
      dst.cork();
      setImmediate(this.uncork);
    }
    dst.write(chunk);
    if (dst.writableLength >= this.maxQueuedBytes && !this.paused) {
      this.paused = true;
      this.src.pause();
    }
  };

  private readonly uncork = (): void => {
    this.corked = false;
    if (!this.dst.destroyed) this.dst.uncork();
  };

  private readonly onDrain = (): void => {
    if (!this.paused) return;
    this.paused = false;
    this.resumeSource();
  };

  /** The destination drained (once per full queue, not per chunk): read the source again. */
  protected resumeSource(): void {
    this.src.resume();
  }

  private readonly onEnd = (): void => {
    // end() flushes a pending cork itself; the scheduled uncork then finds nothing to do.
    if (!this.dst.destroyed) this.dst.end();
  };
}

/**
 * Splices `a` and `b`. `onClose` runs once when both are closed; `err` is the
 * first error seen, if any. Both sources are resumed: a socket handed over paused
 * (after a peek) starts flowing only now, after the caller wrote what it had read.
 * `maxQueuedBytes` is each direction's queue bound (hub.limits.splice_queue, cog.splice_queue).
 */
export function splice(a: Duplex, b: Duplex, onClose?: (err?: Error) => void, maxQueuedBytes = SPLICE_MAX_QUEUED_BYTES): void {
  joinEnds(a, b, onClose);
  new Direction(a, b, maxQueuedBytes);
  new Direction(b, a, maxQueuedBytes);
  a.resume();
  b.resume();
}

/**
 * What every splice does besides moving bytes (protocol/throttle.ts too): an error or an
 * abrupt close of either side aborts the other, and `onClose` runs once both are closed.
 */
export function joinEnds(a: Duplex, b: Duplex, onClose?: (err?: Error) => void): void {
  let open = 2;
  let firstErr: Error | undefined;
  const done = (): void => {
    if (--open === 0) onClose?.(firstErr);
  };
  const wire = (x: Duplex, y: Duplex): void => {
    x.on("error", (err: Error) => {
      firstErr ??= err;
      abort(y);
    });
    x.on("close", () => {
      // A clean close has both directions finished; anything else is an abort.
      if (!(x.readableEnded && x.writableFinished)) abort(y);
      done();
    });
  };
  wire(a, b);
  wire(b, a);
}
