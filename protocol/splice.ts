/**
 * The hot path: moves bytes both ways between two Duplex streams, nothing else.
 * No parsing, no per-chunk logging or closures: pipe() does the copying with
 * backpressure in both directions.
 *
 * Half-close survives: when one side ends (FIN), the other side's writable is
 * ended and bytes keep flowing the other way until that side ends too.
 * An error or abrupt close on either side destroys the other (a TCP socket is
 * reset, a mux stream sends RST), so a dead peer never leaves a half-open
 * connection behind.
 */
import type { Duplex } from "node:stream";
import net from "node:net";

function abort(s: Duplex): void {
  if (s.destroyed) return;
  if (s instanceof net.Socket && typeof s.resetAndDestroy === "function" && !s.connecting) s.resetAndDestroy();
  else s.destroy();
}

/**
 * Splices `a` and `b`. `onClose` runs once when both are closed; `err` is the
 * first error seen, if any.
 */
export function splice(a: Duplex, b: Duplex, onClose?: (err?: Error) => void): void {
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
    x.pipe(y);
  };
  wire(a, b);
  wire(b, a);
}
