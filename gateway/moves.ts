/**
 * VM moves through the hub (PROTOCOL.md "Move stream", protocol/move.ts): a cog
 * opens a stream and asks to send a VM archive to another cog; the hub offers
 * it to that cog, naming the sender by its certificate, and passes the archive
 * on only after the target's explicit `move-accept`. Until then not a byte of
 * the archive reaches the target: what the source sends early waits in its own
 * stream's window (the reader stops at one header), and a refusal, a timeout
 * or a target that is not connected ends both streams. After it, the archive
 * flows one way (pump()) and the hub reads the target's verdict the other way:
 * on a move-done for the whole archive, what the source held for the VM
 * follows it (carry.ts) before the verdict is passed on.
 *
 * What the hub holds per move is bounded: the source stream's window
 * (hub.tunnel.max_auto_window at most) plus hub.limits.splice_queue, and one
 * verdict of at most MOVE_RESULT_MAX_BYTES; at most hub.tunnel.max_moves moves
 * per cog run at once.
 */
import type { HubConfig } from "../config/types.js";
import type { Logger } from "../lib/log.js";
import { encodeMessage, MessageReader } from "../protocol/messages.js";
import type { MuxSession, MuxStream } from "../protocol/mux.js";
import { checkMoveRequest, MOVE_HEADER_MAX_BYTES, MOVE_REASON_MAX_CHARS, MOVE_RESULT_MAX_BYTES, reasonOf } from "../protocol/move.js";
import type { MoveCarrier } from "./carry.js";

type Msg = Record<string, unknown> & { type: string };

export class MoveRelay {
  /** Moves under way per cog, as source or target. */
  private readonly active = new Map<string, number>();
  /** Streams per cog still owing their move header: at most hub.tunnel.max_moves. */
  private readonly pending = new Map<string, number>();

  constructor(
    private readonly cfg: HubConfig,
    /** The live session of a cog, or null when it is not connected. */
    private readonly sessionOf: (cog: string) => MuxSession | null,
    private readonly log: Logger,
    /** Moves what follows a VM on move-done (carry.ts); without one, nothing follows. */
    private readonly carrier: MoveCarrier | null = null,
  ) {}

  private take(cog: string): void { this.active.set(cog, (this.active.get(cog) ?? 0) + 1); }
  private give(cog: string): void {
    const n = (this.active.get(cog) ?? 1) - 1;
    if (n <= 0) this.active.delete(cog); else this.active.set(cog, n);
  }

  /** A stream cog `from` opened after its hello: it must be a move, or it is reset. */
  onStream(from: string, src: MuxStream): void {
    src.on("error", () => {});
    // A cog may not park streams here: with max_moves streams already owing their header,
    // a new one is reset at once, before it is read. (Moves under way are capped apart, with
    // a "too many moves" answer the CLI can print, once the header is in: relay().)
    const waiting = this.pending.get(from) ?? 0;
    if (waiting >= this.cfg.tunnel.maxMoves) {
      src.destroy();
      return;
    }
    this.pending.set(from, waiting + 1);
    let counted = true;
    const settle = (): void => {
      if (!counted) return;
      counted = false;
      const n = (this.pending.get(from) ?? 1) - 1;
      if (n <= 0) this.pending.delete(from); else this.pending.set(from, n);
    };
    src.once("close", settle);
    void this.relay(from, src, settle).catch((err: Error) => {
      this.log.warn("move stream refused", { cog: from, error: err.message });
      src.destroy();
    }).finally(settle);
  }

  /** `headerRead`: called once the header is in (or the stream is given up), so the pending count drops. */
  private async relay(from: string, src: MuxStream, headerRead: () => void): Promise<void> {
    const timeoutMs = this.cfg.tunnel.moveAnswerTimeoutMs;
    const refuse = (reason: string): void => {
      this.log.warn("move refused", { from, reason });
      src.end(encodeMessage({ type: "move-refused", reason: reason.slice(0, MOVE_REASON_MAX_CHARS) }));
    };
    const srcReader = new MessageReader<Msg>(src, MOVE_HEADER_MAX_BYTES);
    const timer = setTimeout(() => src.destroy(), timeoutMs);
    let raw: Msg | null;
    try { raw = await srcReader.next(); } finally { clearTimeout(timer); headerRead(); }
    if (!raw) { src.destroy(); return; }
    const req = checkMoveRequest(raw);
    if (req.to === from) { refuse(`${req.vm} is already on cog ${from}`); return; }
    const max = this.cfg.tunnel.maxMoves;
    if ((this.active.get(from) ?? 0) >= max || (this.active.get(req.to) ?? 0) >= max) {
      refuse(`too many moves at once (hub.tunnel.max_moves ${max} per cog); try again when one has finished`);
      return;
    }
    const session = this.sessionOf(req.to);
    if (!session || session.closed) { refuse(`cog ${req.to} is not connected to the hub`); return; }
    this.take(from);
    this.take(req.to);
    let released = false;
    const release = (): void => { if (!released) { released = true; this.give(from); this.give(req.to); } };
    let dst: MuxStream;
    try {
      dst = session.open();
    } catch (e) {
      release();
      refuse(`cannot reach cog ${req.to}: ${(e as Error).message}`);
      return;
    }
    dst.on("error", () => {});
    let spliced = false;
    src.once("close", () => { if (!dst.destroyed && !spliced) dst.destroy(); });
    dst.write(encodeMessage({ type: "move-offer", from, vm: req.vm, bytes: req.bytes }));
    const dstReader = new MessageReader<Msg>(dst, MOVE_RESULT_MAX_BYTES);
    const answerTimer = setTimeout(() => dst.destroy(), timeoutMs);
    let answer: Msg | null = null;
    try { answer = await dstReader.next(); } catch { answer = null; } finally { clearTimeout(answerTimer); }
    if (!answer || answer.type !== "move-accept") {
      release();
      dst.destroy();
      const why = !answer ? `cog ${req.to} did not answer the move offer` : answer.type === "move-refuse" ? `cog ${req.to} refused: ${reasonOf(answer)}` : `cog ${req.to} answered ${String(answer.type).slice(0, 40)}`;
      refuse(why);
      return;
    }
    if (src.destroyed) { release(); dst.destroy(); return; }
    // Consent given: the source may send, and from now on the hub moves the archive's bytes
    // one way, and reads the target's verdict the other way (to act on a move-done).
    const started = Date.now();
    const early = srcReader.detach();
    src.write(encodeMessage({ type: "move-go" }));
    spliced = true;
    this.log.info("move relayed: started", { from, to: req.to, vm: req.vm, bytes: req.bytes });
    const flow = pump(src, dst, early, this.cfg.limits.spliceQueueBytes);
    let verdict: Msg | null = null;
    try {
      verdict = await dstReader.next();
    } catch {
      verdict = null;
    }
    let error: string | undefined;
    if (!verdict || src.destroyed) {
      error = verdict ? "the source's stream was cut" : "the target ended the stream without a verdict";
      src.destroy();
      dst.destroy();
    } else {
      // Only a target that got the whole archive can have imported it: a move-done before the
      // last byte carries nothing (and is passed on as the target's word, for the source to judge).
      const passed = flow.moved();
      flow.stop();
      if (verdict.type === "move-done" && this.carrier && passed === req.bytes) {
        verdict = { ...verdict, carried: await this.carrier.carry(from, req.to, req.routes, req.hostnames) };
      }
      if (verdict.type !== "move-done") error = `${String(verdict.type).slice(0, 40)}: ${reasonOf(verdict)}`;
      src.end(encodeMessage(verdict));
      dst.end();
    }
    release();
    this.log.info("move relayed: ended", { from, to: req.to, vm: req.vm, bytes: req.bytes, passed: flow.moved(), ms: Date.now() - started, error });
  }
}

/**
 * Moves `src`'s bytes into `dst` (after `first`, what was read before), ending `dst` when
 * `src` ends, pausing `src` while `dst` has more than `maxQueuedBytes` queued; either side
 * failing destroys the other. Returns a reader of the bytes moved so far.
 */
function pump(src: MuxStream, dst: MuxStream, first: Buffer, maxQueuedBytes: number): { moved(): number; stop(): void } {
  let moved = first.length;
  let stopped = false;
  if (first.length) dst.write(first);
  const resume = (): void => { src.resume(); };
  src.on("data", (chunk: Buffer) => {
    if (stopped) return; // the verdict is in: what the source still sends is dropped
    moved += chunk.length;
    dst.write(chunk);
    if (dst.writableLength > maxQueuedBytes) {
      src.pause();
      dst.once("drain", resume);
    }
  });
  src.once("end", () => { if (!stopped) dst.end(); });
  // Before the verdict the hub has not ended the source's stream, so any close of it is a cut
  // (its end sent, then given up waiting: the source's move_verify_timeout): the target's goes too.
  src.once("close", () => { if (!stopped) dst.destroy(); });
  dst.once("close", () => { if (!dst.writableFinished && !stopped) src.destroy(); });
  src.resume();
  return {
    moved: () => moved,
    stop: () => {
      stopped = true;
      dst.off("drain", resume);
      src.resume();
    },
  };
}
