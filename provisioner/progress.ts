/**
 * Progress of one long operation (a backup job, a checksum, a restore), as the
 * API streams it (application/x-ndjson, one `{progress}` line at a time) and
 * the CLI prints it: bytes done of a total, the average rate since the phase
 * began, and the time left at that rate.
 */

/** flatten: an export's qemu-img convert; export: an archive written; import: one read; move: one sent to another cog. */
export type ProgressPhase = "backup" | "checksum" | "verify" | "restore" | "flatten" | "export" | "import" | "move";

export interface Progress {
  phase: ProgressPhase;
  bytes: number;
  totalBytes: number;
  bytesPerSec: number;
  /** Seconds left at the average rate; null until there is a rate. */
  etaSec: number | null;
}

export type ProgressFn = (p: Progress) => void;

/** Reports go out at most this often per phase (plus the last one): a poll of QEMU's jobs or a 64 KiB read would be too chatty. */
export const PROGRESS_REPORT_INTERVAL_MS = 500;

export class ProgressMeter {
  private readonly started = Date.now();
  private lastReport = 0;

  constructor(private readonly phase: ProgressPhase, private readonly onProgress: ProgressFn | undefined) {}

  /** Reports `bytes` of `totalBytes`; `force` for the final report of a phase. */
  update(bytes: number, totalBytes: number, force = false): void {
    if (!this.onProgress) return;
    const now = Date.now();
    if (!force && now - this.lastReport < PROGRESS_REPORT_INTERVAL_MS) return;
    this.lastReport = now;
    const secs = (now - this.started) / 1000;
    const rate = secs > 0 ? bytes / secs : 0;
    const left = Math.max(0, totalBytes - bytes);
    this.onProgress({
      phase: this.phase, bytes, totalBytes, bytesPerSec: Math.round(rate),
      etaSec: rate > 0 ? Math.round(left / rate) : null,
    });
  }
}
