/**
 * The socket-level peek every public listener runs before routing: read until a
 * pure parser (ClientHello, HTTP head) has an answer, under one deadline and one
 * byte cap, then hand the socket back PAUSED together with every byte read so far.
 *
 * Invariant: bytes are never lost. The caller writes `bytes` downstream first and
 * only then resumes/pipes the socket. We pause inside the 'data' handler that
 * completes the peek, so no later chunk can be emitted to nobody; a FIN that
 * arrived meanwhile stays queued ('end' is only emitted once the caller reads).
 * The pause is explicit, so Node will not resume on a new 'data' listener alone:
 * the caller resumes with `pipe()` (which calls resume()) or `socket.resume()`.
 *
 * Linear in the bytes received, however they are cut: a visitor may drip its hello one
 * byte per segment, up to the cap, within the deadline. Re-running a parser over the whole
 * buffer per byte was quadratic: 16 KiB of one-byte TLS records (or of short header lines)
 * cost ~3 s of the hub's only thread per connection, so 64 such connections from one
 * source (max_unpeeked_per_ip) could have stalled every visitor. Now the bytes go into one
 * buffer that doubles (no copy of everything per chunk), and a parser's need-more may say
 * `needBytes`: no answer can change before the buffer is that long, so the parser is not
 * called again until then (parseClientHello). A parser may also keep its own place
 * between calls of one peek (httpHeadPeekParser).
 */
import type { Socket } from "node:net";

/** Default deadline for the whole peek (DESIGN.md: "under a deadline (default 5 s)"). */
export const PEEK_TIMEOUT_MS = 5_000;
/** Default byte cap when the caller gives none: the ClientHello cap (16 KiB + 8 record headers). */
export const PEEK_MAX_BYTES = 16 * 1024 + 5 * 8;

/**
 * What a peek parser may answer; parseClientHello and parseHttpHead both fit. A need-more
 * may carry `needBytes`: a lower bound on the buffer length at which the answer can change.
 */
export type PeekParseResult =
  | { type: "need-more"; needBytes?: number }
  | { type: "invalid"; reason: string }
  | { type: "ok" };

/** First capacity of the peek buffer once a second chunk arrives (at least twice the bytes so far). */
export const PEEK_INITIAL_CAPACITY_BYTES = 2048;

export type PeekOutcome<T> =
  | { kind: "ok"; value: T; bytes: Buffer }
  | { kind: "invalid"; reason: string; bytes: Buffer }
  | { kind: "timeout"; bytes: Buffer }
  | { kind: "too-large"; bytes: Buffer }
  | { kind: "closed"; bytes: Buffer };

export interface PeekOptions {
  /** Deadline for the whole peek, in milliseconds. Default PEEK_TIMEOUT_MS. */
  timeoutMs?: number;
  /** Give up with `too-large` once this many bytes are buffered without an answer. Default PEEK_MAX_BYTES. */
  maxBytes?: number;
}

/**
 * Reads from `socket` until `parse` answers ok or invalid, the deadline passes, the
 * byte cap is reached, or the peer closes. Never throws and never destroys the
 * socket: every failure is an outcome, and the caller decides whether to answer
 * (alert, 400 page) before closing.
 */
export function peek<R extends PeekParseResult>(
  socket: Socket,
  parse: (buf: Buffer) => R,
  opts: PeekOptions = {},
): Promise<PeekOutcome<Extract<R, { type: "ok" }>>> {
  const timeoutMs = opts.timeoutMs ?? PEEK_TIMEOUT_MS;
  const maxBytes = opts.maxBytes ?? PEEK_MAX_BYTES;
  type Outcome = PeekOutcome<Extract<R, { type: "ok" }>>;

  return new Promise<Outcome>((resolve) => {
    // buf is a view of the first `len` bytes of `store`, which doubles when full.
    let store: Buffer | null = null;
    let len = 0;
    let buf: Buffer = Buffer.alloc(0);
    let needBytes = 0;
    let done = false;

    const finish = (outcome: Outcome): void => {
      if (done) return;
      done = true;
      socket.pause();
      clearTimeout(timer);
      socket.off("data", onData);
      socket.off("end", onClosed);
      socket.off("close", onClosed);
      socket.off("error", onError);
      resolve(outcome);
    };

    const append = (bytes: Buffer): void => {
      if (store === null) {
        // Most hellos come in one chunk: use it as is, copy only once a second one arrives.
        if (len === 0) {
          buf = bytes;
          len = bytes.length;
          return;
        }
        store = Buffer.allocUnsafe(Math.max(PEEK_INITIAL_CAPACITY_BYTES, 2 * (len + bytes.length)));
        buf.copy(store, 0, 0, len);
      } else if (store.length < len + bytes.length) {
        const bigger = Buffer.allocUnsafe(Math.max(2 * store.length, len + bytes.length));
        store.copy(bigger, 0, 0, len);
        store = bigger;
      }
      bytes.copy(store, len);
      len += bytes.length;
      buf = store.subarray(0, len);
    };

    const onData = (chunk: Buffer | string): void => {
      if (done) return;
      append(typeof chunk === "string" ? Buffer.from(chunk, "latin1") : chunk);
      if (len < needBytes) {
        // The parser said nothing can change before needBytes: skip it, but keep the cap.
        if (len >= maxBytes) finish({ kind: "too-large", bytes: buf });
        return;
      }
      let result: PeekParseResult;
      try {
        result = parse(buf);
      } catch (err) {
        // Parsers are meant to be total; if one is not, that is one bad visitor, not a crash.
        finish({ kind: "invalid", reason: `parser threw: ${(err as Error)?.message ?? String(err)}`, bytes: buf });
        return;
      }
      if (result.type === "ok") finish({ kind: "ok", value: result as Extract<R, { type: "ok" }>, bytes: buf });
      else if (result.type === "invalid") finish({ kind: "invalid", reason: result.reason, bytes: buf });
      else if (buf.length >= maxBytes) finish({ kind: "too-large", bytes: buf });
      else needBytes = result.needBytes ?? 0;
    };
    const onClosed = (): void => finish({ kind: "closed", bytes: buf });
    // Attaching an 'error' listener for the duration also keeps an ECONNRESET
    // during the peek from becoming an uncaught exception.
    const onError = (): void => finish({ kind: "closed", bytes: buf });

    // One timer per connection, cleared in finish().
    const timer = setTimeout(() => finish({ kind: "timeout", bytes: buf }), timeoutMs);

    if (socket.destroyed || socket.readableEnded) {
      finish({ kind: "closed", bytes: buf });
      return;
    }
    socket.on("end", onClosed);
    socket.on("close", onClosed);
    socket.on("error", onError);
    // Adding a 'data' listener switches the stream to flowing mode and first
    // delivers anything already buffered in it.
    socket.on("data", onData);
    socket.resume();
  });
}
