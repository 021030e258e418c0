/**
 * The slow lane of the hot path: a splice whose directions draw on token buckets, for the
 * visitors of a cog with a bandwidth limit (hub.limits.cog_bandwidth, gateway/quotas.ts).
 * Every other splice is protocol/splice.ts's and never reaches this file: the choice is
 * made once per connection, so an unlimited cog's chunks cost exactly what they did.
 *
 * A bucket holds up to `burstBytes` tokens and gains `rateBytesPerSec` per second. Each
 * chunk is written first and paid for after (the bytes are already in our memory; holding
 * them back would only add a copy): a chunk the bucket cannot cover leaves it in debt, and
 * the direction's source is paused until a timer finds the debt repaid. Over a transfer of
 * S bytes the bucket lets through at most burst + rate x T, whatever the chunk sizes, so the
 * long-run rate is exact; a single wait overshoots by at most one chunk per direction (a
 * socket read, 64 KiB, or a mux frame). One bucket serves every visitor of the cog in one
 * direction, so they share the rate: all waiting directions resume together after a refill
 * and each pays for what it reads.
 *
 * Pausing the source is the backpressure the plain splice already uses: a paused visitor
 * socket stops TCP reads (the visitor's kernel then stops it), a paused mux stream returns
 * no credit (the cog stops sending after one window). Nothing here buffers bytes.
 */
import type { Duplex } from "node:stream";
import { Direction, joinEnds, SPLICE_MAX_QUEUED_BYTES } from "./splice.js";

/**
 * Shortest wait between refills. A debt of one 64 KiB read is repaid in 31 ms at 2 MiB/s and
 * in 0.06 ms at 1 GiB/s; at such rates waiting a whole millisecond (Node's timer resolution)
 * still moves 1 MiB per wait, so a bucket fires at most 1,000 timers a second.
 */
export const THROTTLE_MIN_WAIT_MS = 1;

/** Tokens for one direction of one cog's visitors. */
export class TokenBucket {
  private tokens: number;
  private last: number;
  private waiting = new Set<ThrottledDirection>();
  private timer: NodeJS.Timeout | null = null;
  /** Times the bucket ran dry and directions waited for it (once per wait, not per chunk). */
  waits = 0;

  constructor(
    readonly rateBytesPerSec: number,
    readonly burstBytes: number,
    /** Told each time the bucket runs dry (gateway/quotas.ts counts and logs it). */
    private readonly onDry: () => void = () => {},
    private readonly clock: () => number = performance.now.bind(performance),
  ) {
    if (!(rateBytesPerSec > 0) || !(burstBytes > 0)) throw new RangeError(`token bucket: rate and burst must be positive, got ${rateBytesPerSec}, ${burstBytes}`);
    this.tokens = burstBytes;
    this.last = this.clock();
  }

  private refill(): void {
    const now = this.clock();
    this.tokens = Math.min(this.burstBytes, this.tokens + ((now - this.last) * this.rateBytesPerSec) / 1000);
    this.last = now;
  }

  /** Pays for `bytes` already passed. False: the bucket is in debt and the caller must wait(). */
  take(bytes: number): boolean {
    this.refill();
    this.tokens -= bytes;
    return this.tokens >= 0;
  }

  /** Tokens available now (negative: debt); tests and status. */
  get available(): number {
    this.refill();
    return this.tokens;
  }

  /** `d` paused its source: it is woken once the debt is repaid. */
  wait(d: ThrottledDirection): void {
    this.waiting.add(d);
    if (this.timer !== null) return;
    this.waits++;
    this.onDry();
    this.arm();
  }

  /** `d` is gone (its source closed): it is not woken. */
  leave(d: ThrottledDirection): void {
    this.waiting.delete(d);
    if (this.waiting.size === 0 && this.timer !== null) {
      clearTimeout(this.timer);
      this.timer = null;
    }
  }

  private arm(): void {
    const ms = Math.max(THROTTLE_MIN_WAIT_MS, Math.ceil((-this.tokens * 1000) / this.rateBytesPerSec));
    // Unref'd: the waiting sockets keep a live process up; one that is shutting down must not
    // wait out a debt (64 KiB at 1 KiB/s is a minute).
    this.timer = setTimeout(this.onTimer, ms);
    this.timer.unref();
  }

  private readonly onTimer = (): void => {
    this.timer = null;
    this.refill();
    if (this.tokens < 0) {
      this.arm();
      return;
    }
    // A woken direction only resumes its source (its next read comes in a later turn), so
    // nothing joins the set while it is walked; swap it anyway, so that cannot matter.
    const woken = this.waiting;
    this.waiting = new Set();
    for (const d of woken) d.wake();
  };
}

/** A Direction that pays its bucket for every chunk and pauses its source while the bucket is in debt. */
export class ThrottledDirection extends Direction {
  /** The source is paused for want of tokens. */
  private throttled = false;

  constructor(src: Duplex, dst: Duplex, maxQueuedBytes: number, private readonly bucket: TokenBucket) {
    super(src, dst, maxQueuedBytes);
    // After Direction's handler: the chunk is written, then paid for.
    src.on("data", this.pay);
    src.once("close", this.onClose);
  }

  private readonly pay = (chunk: Buffer): void => {
    if (this.bucket.take(chunk.length) || this.throttled) return;
    this.throttled = true;
    this.src.pause();
    this.bucket.wait(this);
  };

  /** The bucket's debt is repaid: read again, unless the destination's queue is still full. */
  wake(): void {
    this.throttled = false;
    if (!this.paused && !this.src.destroyed) this.src.resume();
  }

  /** The destination drained: read again, unless the bucket is still in debt. */
  protected override resumeSource(): void {
    if (!this.throttled) this.src.resume();
  }

  private readonly onClose = (): void => {
    this.bucket.leave(this);
  };
}

/**
 * splice() (protocol/splice.ts) with bandwidth limits: `a`'s bytes into `b` pay `toB`, `b`'s
 * into `a` pay `toA`. Close, error and half-close behave exactly as there.
 */
export function spliceThrottled(
  a: Duplex, b: Duplex, toB: TokenBucket, toA: TokenBucket,
  onClose?: (err?: Error) => void, maxQueuedBytes = SPLICE_MAX_QUEUED_BYTES,
): void {
  joinEnds(a, b, onClose);
  new ThrottledDirection(a, b, maxQueuedBytes, toB);
  new ThrottledDirection(b, a, maxQueuedBytes, toA);
  a.resume();
  b.resume();
}
