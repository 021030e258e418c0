import { type Duplex, PassThrough } from "node:stream";
import type { Logger } from "../lib/log.js";
import { encodeMessage, MessageReader } from "../protocol/messages.js";
import { type CarriedHostname, type CarriedPort, type MoveOffer, MOVE_REASON_MAX_CHARS, MOVE_RESULT_MAX_BYTES, reasonOf } from "../protocol/move.js";
import { badRequest, conflict, notFound, ProvisionerError } from "./errors.js";
import type { ProgressFn } from "./progress.js";
import { vmHostname } from "./routes.js";
import { type ExportDeps, importArchive, type PreparedExport, prepareExport, writeArchive } from "./vmexport.js";

/**
 * `capsul vm move NAME --to COG` (README "Moving a capsul"; the wire is in
 * protocol/move.ts). The source flattens and hashes the VM (vmexport.ts), opens
 * a move stream to the hub, and sends the archive only once the hub says the
 * target consented. The target (its `accept_moves_from` lists the source)
 * imports it as `capsul vm import` does, straight from the stream, and answers
 * with the new VM. Only then is the VM deleted here.
 *
 * Anything else leaves the source VM as it was (started again if the move
 * stopped it) and the target without a trace of it (the import removes its
 * staging dir on every failure, a cut stream included), so running the move
 * again is always safe.
 */

export interface MoveTunnel {
  /** A new stream to the hub; throws when the tunnel is not connected. */
  openMoveStream(): Duplex;
  /** Who takes the move offers the hub relays to this cog. */
  setMoveHandler(h: ((stream: Duplex, offer: MoveOffer, rest: Buffer) => void) | null): void;
}

interface MoveRequest { to: string; stop: boolean }

function withTimeout<T>(p: Promise<T>, ms: number, what: string, onTimeout: () => void): Promise<T> {
  let timer: NodeJS.Timeout | undefined;
  return Promise.race([
    p,
    new Promise<never>((_, reject) => {
      timer = setTimeout(() => { onTimeout(); reject(new ProvisionerError("move_timeout", `${what} (no answer within ${ms} ms)`, 504)); }, ms);
    }),
  ]).finally(() => clearTimeout(timer));
}

/**
 * What the hub said followed the VM, as the API and `capsul vm move --json` show it; null
 * when the hub did not say (a hub from before carrying: nothing followed).
 */
function carriedJson(raw: unknown): { ports: Record<string, unknown>[]; hostnames: Record<string, unknown>[] } | null {
  if (typeof raw !== "object" || raw === null) return null;
  const c = raw as { ports?: unknown; hostnames?: unknown };
  const list = <T>(v: unknown): T[] => (Array.isArray(v) ? (v as T[]).filter((x) => typeof x === "object" && x !== null) : []);
  const text = (v: unknown): string | null => (typeof v === "string" ? v.slice(0, MOVE_REASON_MAX_CHARS) : null);
  return {
    ports: list<CarriedPort>(c.ports).map((p) => ({ route: text(p.route), port: typeof p.port === "number" ? p.port : null, state: text(p.state), reason: text(p.reason) })),
    hostnames: list<CarriedHostname>(c.hostnames).map((h) => ({ hostname: text(h.hostname), state: text(h.state), reason: text(h.reason), record: text(h.record), value: text(h.value) })),
  };
}

export class MoveManager {
  private readonly busy = new Set<string>();

  constructor(private readonly d: ExportDeps, private readonly tunnel: MoveTunnel | null, private readonly log: Logger) {
    tunnel?.setMoveHandler((s, offer, rest) => { void this.receive(s, offer, rest); });
  }

  close(): void { this.tunnel?.setMoveHandler(null); }

  /** Source side: the whole move, with progress (flatten, checksum, move). */
  async move(name: string, req: MoveRequest, onProgress?: ProgressFn): Promise<Record<string, unknown>> {
    const { d } = this;
    if (!this.tunnel) throw conflict("no_tunnel", "this provisioner runs without a hub tunnel: moves go through the hub (capsul cog)");
    if (req.to === d.cogName) throw badRequest("bad_request", `${name} is already on cog ${d.cogName}`);
    const v = d.db.getVm(name);
    if (!v) throw notFound("vm_not_found", `no VM named ${JSON.stringify(name)}`);
    if (this.busy.has(name)) throw conflict("vm_busy", `VM ${name} is being moved already`);
    const wasRunning = v.desired === "running" || !!d.vms.liveVm(name);
    if (wasRunning && !req.stop) {
      throw conflict("vm_running", `VM ${name} is running: stop it first, or consent to the move stopping it (--stop); it runs again on ${req.to} after the move`);
    }
    this.busy.add(name);
    const started = Date.now();
    let prep: PreparedExport | null = null;
    let stream: Duplex | null = null;
    try {
      if (wasRunning) {
        this.log.info("move: stopping the VM", { vm: name, to: req.to });
        await d.vms.stop(name);
      }
      prep = await prepareExport(d, name, onProgress);
      const carry = this.carryOf(name);
      stream = this.tunnel.openMoveStream();
      const s = stream;
      s.on("error", () => {});
      // The hub's answers are headers, then the verdict it passes on (with what followed the VM).
      const reader = new MessageReader<Record<string, unknown> & { type: string }>(s, MOVE_RESULT_MAX_BYTES);
      s.write(encodeMessage({ type: "move", to: req.to, vm: name, bytes: prep.totalBytes, ...carry }));
      const go = await withTimeout(reader.next(), d.cfg.moveAnswerTimeoutMs, `the hub did not pass on ${req.to}'s answer`, () => s.destroy());
      if (!go) throw new ProvisionerError("move_failed", "the hub closed the move stream before answering", 502);
      if (go.type === "move-refused") throw conflict("move_refused", `the move was refused: ${reasonOf(go)}`);
      if (go.type !== "move-go") throw new ProvisionerError("move_failed", `unexpected answer from the hub: ${String(go.type).slice(0, 40)}`, 502);
      const sendStarted = Date.now();
      // The target's verdict may come early (a refused archive): read it while sending.
      const verdict = reader.next();
      // A target that refuses the archive early (its image differs, the manifest is bad) says so
      // before the last byte: stop sending at once instead of pushing the rest of the disk.
      let early: Record<string, unknown> | null = null;
      verdict.then((v) => { if (v && v.type !== "move-done") { early = v; s.destroy(); } }, () => undefined);
      let sent = 0;
      try {
        await writeArchive(prep, s, "move", (p) => { sent = p.bytes; onProgress?.(p); }, d.cfg.moveBytesPerSec);
      } catch (e) {
        if (early) throw new ProvisionerError("move_failed", `${req.to} could not import the VM: ${reasonOf(early)}`, 502);
        throw new ProvisionerError("move_failed", `the move stream to ${req.to} was cut after about ${sent} of ${prep.totalBytes} bytes (${(e as Error).message}; the tunnel dropped, or ${req.to} gave up)`, 502);
      }
      s.end();
      const sendMs = Date.now() - sendStarted;
      const res = await withTimeout(verdict, d.cfg.moveVerifyTimeoutMs, `${req.to} did not confirm the import`, () => s.destroy());
      if (!res) throw new ProvisionerError("move_failed", `the move stream ended before ${req.to} confirmed the import`, 502);
      if (res.type !== "move-done") throw new ProvisionerError("move_failed", `${req.to} could not import the VM: ${reasonOf(res)}`, 502);
      const moved = (res.vm ?? {}) as Record<string, unknown>;
      // The target holds a verified copy that it runs: only now does this one go.
      await d.vms.delete(name);
      const move = {
        from_cog: d.cogName, to_cog: req.to, bytes: prep.totalBytes, duration_ms: Date.now() - started, send_ms: sendMs,
        bytes_per_sec: sendMs > 0 ? Math.round(prep.totalBytes / (sendMs / 1000)) : null,
        hostname_before: prep.manifest.vm.hostname, hostname_after: typeof moved.hostname === "string" ? moved.hostname : null, stopped: wasRunning,
      };
      const carried = carriedJson(res.carried);
      this.log.info("vm moved", {
        vm: name, ...move,
        followed: carried ? [...carried.ports, ...carried.hostnames].filter((c) => c.state === "followed").map((c) => String(c.route ?? c.hostname)).join(",") : "",
      });
      return { vm: moved, move: { ...move, carried } };
    } catch (e) {
      stream?.destroy();
      const err = e instanceof ProvisionerError ? e : new ProvisionerError("move_failed", (e as Error).message, 502);
      this.log.warn("move failed; the VM stays here", { vm: name, to: req.to, err: err.message });
      if (wasRunning && d.db.getVm(name)) await d.vms.start(name).catch((se: Error) => this.log.error("cannot start the VM again after a failed move", { vm: name, err: se.message }));
      throw new ProvisionerError(err.code, `${err.message}; ${name} stays on ${d.cogName}${wasRunning ? " and runs again" : ""}`, err.status);
    } finally {
      this.busy.delete(name);
      await prep?.cleanup();
    }
  }

  /**
   * What the hub should move to the target with the VM (protocol/move.ts): its TCP routes by
   * name (their hub ports), and its hostnames other than the default one, which names this
   * cog and cannot follow.
   */
  private carryOf(name: string): { routes: string[]; hostnames: string[] } {
    const { d } = this;
    const routes = d.vms.publishedRoutes(name);
    const own = vmHostname(name, { cogName: d.cogName, hubDomain: d.hubDomain, hubHost: "" });
    const hostnames = routes.filter((r) => r.kind !== "tcp" && r.hostname !== undefined && r.hostname.toLowerCase() !== own).map((r) => (r.hostname as string).toLowerCase());
    return { routes: routes.filter((r) => r.kind === "tcp").map((r) => r.name), hostnames: [...new Set(hostnames)] };
  }

  /** Target side: consent (accept_moves_from), then the import straight from the stream. */
  private async receive(s: Duplex, offer: MoveOffer, rest: Buffer): Promise<void> {
    const { d } = this;
    s.on("error", () => {});
    const say = (m: { type: string } & Record<string, unknown>): void => { if (!s.destroyed) s.write(encodeMessage(m)); };
    const refuse = (reason: string): void => {
      this.log.warn("move refused", { vm: offer.vm, from: offer.from, reason });
      say({ type: "move-refuse", reason: reason.slice(0, MOVE_REASON_MAX_CHARS) });
      s.end();
    };
    if (!d.cfg.acceptMovesFrom.includes(offer.from)) {
      refuse(`cog ${d.cogName} does not accept VMs from cog ${offer.from} (add it to cog.provisioner.accept_moves_from on ${d.cogName})`);
      return;
    }
    if (offer.bytes > d.cfg.maxArchiveBytes) { refuse(`the archive (${offer.bytes} bytes) is over ${d.cogName}'s max_archive_size (${d.cfg.maxArchiveBytes})`); return; }
    if (d.db.getVm(offer.vm)) { refuse(`a VM named ${offer.vm} already exists on ${d.cogName}`); return; }
    this.log.info("receiving a VM", { vm: offer.vm, from: offer.from, bytes: offer.bytes });
    const src = new PassThrough();
    if (rest.length) src.write(rest);
    let ended = false;
    s.once("end", () => { ended = true; });
    s.pipe(src);
    s.once("close", () => { if (!ended) src.destroy(new Error(`the move stream from ${offer.from} was cut`)); });
    say({ type: "move-accept" });
    try {
      const r = await importArchive(d, src, { expectBytes: offer.bytes });
      say({ type: "move-done", vm: r.vm as Record<string, unknown> });
      s.end();
    } catch (e) {
      const err = e as ProvisionerError;
      this.log.warn("move import failed; nothing was kept", { vm: offer.vm, from: offer.from, err: err.message });
      say({ type: "move-failed", code: err.code ?? "import_failed", reason: err.message.slice(0, MOVE_REASON_MAX_CHARS) });
      s.end();
      src.resume();
    }
  }
}
