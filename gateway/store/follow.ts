/**
 * Follows the revocations log (table `revocations`, numbered in commit order)
 * for a hub: each `check()` reads only what is newer than the last one it saw,
 * so a write by another process costs one indexed read, not a scan of every
 * cog (issue 12: the old poll re-read the whole `cogs` table on any write).
 * What wakes it is the dialect's business (SQLite: PRAGMA data_version;
 * PostgreSQL: LISTEN), so nothing here polls.
 */
import type { StoreOps } from "./types.js";

export class RevocationFollower {
  private last = 0;
  private started = false;
  private running = false;
  /** A check was asked for while one was running (or before start): run once more. */
  private pending = false;
  private closed = false;
  private retry: NodeJS.Timeout | null = null;

  /** `retryMs`: after a failed read, when to read again (the write that woke us will not wake us twice). */
  constructor(
    private readonly store: StoreOps,
    private readonly onRevoked: (cogs: string[]) => void,
    private readonly onError: (err: Error) => void,
    private readonly retryMs: number,
  ) {}

  /** Everything revoked so far counts as seen: the hub cannot hold a tunnel of those cogs yet. */
  async start(): Promise<void> {
    this.last = await this.store.lastRevocationSeq();
    this.started = true;
    if (this.pending) this.check();
  }

  /** Reads the revocations newer than the last seen; never two reads at once, none lost. */
  check(): void {
    if (this.closed) return;
    if (!this.started || this.running) {
      this.pending = true;
      return;
    }
    this.running = true;
    void this.loop();
  }

  close(): void {
    this.closed = true;
    if (this.retry) clearTimeout(this.retry);
  }

  private async loop(): Promise<void> {
    try {
      do {
        this.pending = false;
        const rows = await this.store.revocationsSince(this.last);
        if (this.closed) return;
        if (rows.length === 0) continue;
        this.last = rows[rows.length - 1]!.seq;
        this.onRevoked([...new Set(rows.map((r) => r.cog))]);
      } while (this.pending && !this.closed);
    } catch (err) {
      // The store is busy or unreachable: read again from the same place a little later.
      this.onError(err as Error);
      if (!this.closed && !this.retry) {
        this.retry = setTimeout(() => { this.retry = null; this.check(); }, this.retryMs);
        this.retry.unref();
      }
    } finally {
      this.running = false;
    }
  }
}
