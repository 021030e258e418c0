/**
 * VM moves through the hub (PROTOCOL.md "Move stream", protocol/move.ts): a cog
 * opens a stream and asks to send a VM archive to another cog; the hub offers
 * it to that cog, naming the sender by its certificate, and splices the two
 * streams only after the target's explicit `move-accept`. Until then not a byte
 * of the archive reaches the target: what the source sends early waits in its
 * own stream's window (the reader stops at one header), and a refusal, a
 * timeout or a target that is not connected ends both streams.
 *
 * What the hub holds per move is bounded: the source stream's window
 * (hub.tunnel.max_auto_window at most) plus hub.limits.splice_queue per
 * direction; at most hub.tunnel.max_moves moves per cog run at once.
 */
import type { HubConfig } from "../config/types.js";
import type { Logger } from "../lib/log.js";
import { encodeMessage, MessageReader } from "../protocol/messages.js";
import type { MuxSession, MuxStream } from "../protocol/mux.js";
import { checkMoveRequest, MOVE_HEADER_MAX_BYTES, MOVE_REASON_MAX_CHARS, reasonOf } from "../protocol/move.js";
import { splice } from "../protocol/splice.js";

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
    const dstReader = new MessageReader<Msg>(dst, MOVE_HEADER_MAX_BYTES);
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
    // Consent given: the source may send, and from now on the hub only moves bytes.
    const started = Date.now();
    const early = srcReader.detach();
    const late = dstReader.detach();
    src.write(encodeMessage({ type: "move-go" }));
    if (late.length) src.write(late);
    if (early.length) dst.write(early);
    spliced = true;
    this.log.info("move relayed: started", { from, to: req.to, vm: req.vm, bytes: req.bytes });
    splice(src, dst, (err) => {
      release();
      const ms = Date.now() - started;
      this.log.info("move relayed: ended", { from, to: req.to, vm: req.vm, bytes: req.bytes, ms, error: err?.message });
    }, this.cfg.limits.spliceQueueBytes);
  }
}
