/**
 * A token bucket: `burst` tokens at most, refilled at `ratePerSec`. Pure state
 * over an injectable millisecond clock, so it is tested without waiting.
 */
export class TokenBucket {
  private tokens: number;
  private last: number;

  constructor(
    readonly ratePerSec: number,
    readonly burst: number,
    private readonly clock: () => number = () => performance.now(),
  ) {
    if (!(ratePerSec > 0) || !(burst >= 1)) throw new RangeError(`token bucket needs a positive rate and a burst of at least 1, got ${ratePerSec}/s, ${burst}`);
    this.tokens = burst;
    this.last = clock();
  }

  private refill(): void {
    const now = this.clock();
    if (now > this.last) {
      this.tokens = Math.min(this.burst, this.tokens + ((now - this.last) * this.ratePerSec) / 1000);
      this.last = now;
    }
  }

  /** Takes one token if there is one. */
  tryTake(): boolean {
    this.refill();
    if (this.tokens < 1) return false;
    this.tokens -= 1;
    return true;
  }

  /** Milliseconds until tryTake() would succeed (0: now). */
  waitMs(): number {
    this.refill();
    return this.tokens >= 1 ? 0 : Math.ceil(((1 - this.tokens) * 1000) / this.ratePerSec);
  }
}
