/**
 * The hub's memory budget for what visitors make it buffer: a hub-wide pool
 * (hub.limits.buffer_budget) and one per cog (hub.limits.cog_buffer_budget).
 *
 * Where a visitor's bytes wait in the hub's memory (user space; kernel socket buffers
 * are the kernel's, bounded by net.ipv4.tcp_mem):
 * - its visitor stream's receive buffer: what the cog sent and the visitor has not taken
 *   yet, bounded by the stream's receive window (yamux flow control). That used to be
 *   8 MiB for every stream (32 MiB after auto-tuning): 20,000 stalled readers, 160 GB.
 * - the splice queues (hub.limits.splice_queue, 256 KiB) toward the visitor and toward
 *   the stream, each overshot by at most one read, and the paused socket's own buffer.
 *
 * Three mechanisms, none with any work per chunk:
 * 1. Windows are reservations. yamux cannot shrink a window once granted, but the hub
 *    chooses each visitor stream's window at open (its SYN) and at every auto-tuning step.
 *    The spec's 256 KiB (MUX_INITIAL_WINDOW_BYTES) is every stream's floor; only the
 *    window above it is taken from the pools (at open and growth) and given back when the
 *    stream closes. On an idle hub a stream gets the full max_stream_window (8 MiB); once
 *    the pools are taken (512 MiB / 7.75 MiB = 66 streams with the defaults; 128 MiB per
 *    cog = 16 streams) new streams get the floor, which on a LAN or loopback path is still
 *    not the limit (256 KiB per 0.1-1 ms round trip). Floors are not reserved: 20,000 idle
 *    keep-alive visitors would hold 5 GiB of pool and leave every new download at the floor.
 * 2. Sweeps. Floors and queues are over-committed (0.94 MiB per visit, 18 GiB for 20,000),
 *    so while what the visits *could* hold exceeds a budget, every buffer_check_interval
 *    (250 ms) the budget measures what they *do* hold: four O(1) length reads per visit,
 *    0.47 ms measured for 20,000 (bench/OPTIMISATION-LOG.md, 8).
 * 3. Over a budget: first the visits that made no progress for a whole interval (no credit
 *    either way, MuxStream.lastProgressAt, and no fewer bytes held than at the last sweep),
 *    longest first, are cut until the pool is within its budget. Visits still draining are
 *    squeezed instead: their windows give consumed credit back only down to the floor
 *    (WindowBudget.shrink), so a slow but live reader shrinks rather than being cut. Only
 *    if squeezing every holder to the floor could not bring the pool within budget are
 *    draining visits cut too, least recently drained first.
 *
 * Worst case, documented in capsul.yaml.example: buffer_budget, plus what arrives within
 * one check interval before a sweep cuts it (bounded by how fast one hub core decrypts
 * tunnel bytes; never more than max_visitors x (floor + queues)), plus ~7 KB of state per
 * connection and up to a peek cap per un-peeked one.
 */
import type net from "node:net";
import { MUX_INITIAL_WINDOW_BYTES, type MuxStream, type WindowBudget } from "../protocol/mux.js";
import { spliceHeldMaxBytes } from "../protocol/splice.js";

/** One pool: the whole hub, or one cog. */
export class Pool {
  /** Window bytes above the floor reserved by this pool's streams. */
  reserved = 0;
  /** Live visits (each holds a floor window and queues that are not reserved). */
  visits = 0;
  /** Bytes its visits held at the last sweep. */
  measured = 0;
  /** Over its budget at the last sweep: streams give window back, none grows. */
  squeezed = false;
  constructor(readonly name: string, public limitBytes: number) {}

  free(): number {
    return this.squeezed || this.limitBytes <= this.reserved ? 0 : this.limitBytes - this.reserved;
  }
}

/** One visitor connection spliced to a stream: what it reserved, and where its bytes wait. */
export class Visit implements WindowBudget {
  /** Receive window above the floor taken from both pools (the stream's rxWindow - 256 KiB). */
  reserved = 0;
  stream: MuxStream | null = null;
  /** Bytes held at the last sweep, and at the one before (-1: not measured yet). */
  measured = -1;
  previous = -1;
  ended = false;

  constructor(
    private readonly owner: BufferBudget,
    readonly cog: Pool,
    readonly socket: net.Socket,
    /** Source key of the visitor (gateway/sources.ts), for logs. */
    readonly source: string,
  ) {}

  /** The window to advertise in the stream's SYN. */
  get windowBytes(): number {
    return MUX_INITIAL_WINDOW_BYTES + this.reserved;
  }

  /** The mux's auto-tuning wants to grow this stream's window (once per epoch). */
  grow(_s: MuxStream, bytes: number): number {
    return this.owner.grow(this, bytes);
  }

  /** The mux is about to return `credit` (once per quarter window). */
  shrink(_s: MuxStream, credit: number): number {
    return this.owner.shrink(this, credit);
  }

  /** Bytes this visit holds in the hub's memory right now (four O(1) reads; sweeps only). */
  heldBytes(): number {
    const s = this.stream;
    const k = this.socket;
    return k.writableLength + k.readableLength + (s === null ? 0 : s.readableLength + s.writableLength);
  }
}

export interface BudgetOptions {
  /** hub.limits.buffer_budget */
  budgetBytes: number;
  /** hub.limits.cog_buffer_budget */
  cogBudgetBytes: number;
  /** hub.limits.splice_queue: each visit's queues (spliceHeldMaxBytes). */
  spliceQueueBytes: number;
  /** hub.limits.buffer_check_interval */
  checkIntervalMs: number;
  /** A visit cut to bring `pool` back within its budget. The budget has already let it go. */
  onShed(v: Visit, pool: Pool): void;
  /** Millisecond clock of the mux sessions (MuxStream.lastProgressAt); default performance.now. */
  clock?: () => number;
  /** A visit without progress for this long counts as stalled (default checkIntervalMs; tests set it apart from the timer). */
  stalledAfterMs?: number;
}

export class BufferBudget {
  readonly global: Pool;
  private readonly cogs = new Map<string, Pool>();
  private readonly visits = new Set<Visit>();
  /** Floor + queues of one visit: what is over-committed per visit. */
  private unreservedPerVisit: number;
  private readonly clock: () => number;
  private timer: NodeJS.Timeout | null = null;
  private closed = false;

  constructor(private opts: BudgetOptions) {
    this.global = new Pool("hub", opts.budgetBytes);
    this.unreservedPerVisit = MUX_INITIAL_WINDOW_BYTES + spliceHeldMaxBytes(opts.spliceQueueBytes);
    this.clock = opts.clock ?? performance.now.bind(performance);
  }

  /**
   * A new visit to `cog`: reserves the window above the floor that both pools can spare,
   * up to `maxWindowBytes` (the session's max_stream_window). Give it back with end().
   */
  begin(cog: string, socket: net.Socket, source: string, maxWindowBytes: number): Visit {
    let pool = this.cogs.get(cog);
    if (pool === undefined) {
      pool = new Pool(cog, this.opts.cogBudgetBytes);
      this.cogs.set(cog, pool);
    }
    const v = new Visit(this, pool, socket, source);
    const take = Math.min(Math.max(0, maxWindowBytes - MUX_INITIAL_WINDOW_BYTES), this.global.free(), pool.free());
    v.reserved = take;
    this.global.reserved += take;
    pool.reserved += take;
    this.global.visits++;
    pool.visits++;
    this.visits.add(v);
    this.watch(pool);
    return v;
  }

  /** Auto-tuning growth: as much of `bytes` as both pools can spare (none while squeezed). */
  grow(v: Visit, bytes: number): number {
    if (v.ended) return 0;
    const take = Math.min(bytes, this.global.free(), v.cog.free());
    v.reserved += take;
    this.global.reserved += take;
    v.cog.reserved += take;
    if (take > 0) this.watch(v.cog);
    return take;
  }

  /** While a pool of the visit is squeezed, consumed credit above the floor is kept back. */
  shrink(v: Visit, credit: number): number {
    if (v.reserved === 0 || !(this.global.squeezed || v.cog.squeezed)) return 0;
    const keep = Math.min(credit, v.reserved);
    v.reserved -= keep;
    this.global.reserved -= keep;
    v.cog.reserved -= keep;
    return keep;
  }

  /** The visit's stream closed (or never opened): its reservation goes back. Idempotent. */
  end(v: Visit): void {
    if (v.ended) return;
    v.ended = true;
    this.global.reserved -= v.reserved;
    v.cog.reserved -= v.reserved;
    v.reserved = 0;
    this.global.visits--;
    v.cog.visits--;
    this.visits.delete(v);
    if (v.cog.visits === 0 && this.cogs.get(v.cog.name) === v.cog) this.cogs.delete(v.cog.name);
  }

  /** Live visits (with a stream open or opening). */
  get visitCount(): number {
    return this.visits.size;
  }

  /** What the pool's visits could hold at most: reserved windows, then floors and queues of every visit. */
  private potential(p: Pool): number {
    return p.reserved + p.visits * this.unreservedPerVisit;
  }

  private overCommitted(): boolean {
    if (this.global.squeezed || this.potential(this.global) > this.global.limitBytes) return true;
    for (const p of this.cogs.values()) if (p.squeezed || this.potential(p) > p.limitBytes) return true;
    return false;
  }

  /** Starts the sweeps once what the visits could hold exceeds a budget. O(1), per visit or growth. */
  private watch(pool: Pool): void {
    if (this.timer !== null || this.closed) return;
    if (this.potential(this.global) <= this.global.limitBytes && this.potential(pool) <= pool.limitBytes) return;
    this.timer = setInterval(this.tick, this.opts.checkIntervalMs);
    this.timer.unref();
  }

  private readonly tick = (): void => {
    this.check();
    if (!this.overCommitted() && this.timer !== null) {
      clearInterval(this.timer);
      this.timer = null;
    }
  };

  /** What the visits hold right now, hub-wide and per cog (for tests and metrics; changes nothing). */
  bufferedBytes(): { bytes: number; perCog: Map<string, number> } {
    const perCog = new Map<string, number>();
    let total = 0;
    for (const v of this.visits) {
      const b = v.heldBytes();
      perCog.set(v.cog.name, (perCog.get(v.cog.name) ?? 0) + b);
      total += b;
    }
    return { bytes: total, perCog };
  }

  /** Window bytes above the floor reserved hub-wide. */
  get reservedBytes(): number {
    return this.global.reserved;
  }

  private sample(): void {
    for (const p of this.cogs.values()) p.measured = 0;
    let total = 0;
    for (const v of this.visits) {
      const b = v.heldBytes();
      v.previous = v.measured;
      v.measured = b;
      v.cog.measured += b;
      total += b;
    }
    this.global.measured = total;
  }

  /** One sweep: measure, then bring every pool over its budget back within it (see the top of this file). Returns the visits cut. */
  check(): number {
    const now = this.clock();
    this.sample();
    let cut = 0;
    this.global.squeezed = this.global.measured > this.global.limitBytes;
    if (this.global.squeezed) cut += this.relieve(this.global, [...this.visits], now);
    for (const p of this.cogs.values()) {
      p.squeezed = p.measured > p.limitBytes;
      if (p.squeezed) cut += this.relieve(p, [...this.visits].filter((v) => v.cog === p), now);
    }
    return cut;
  }

  private relieve(pool: Pool, visits: Visit[], now: number): number {
    const holders = visits.filter((v) => !v.ended && v.measured > 0);
    holders.sort((a, b) => (a.stream?.lastProgressAt ?? 0) - (b.stream?.lastProgressAt ?? 0));
    const stalledBefore = now - (this.opts.stalledAfterMs ?? this.opts.checkIntervalMs);
    let cut = 0;
    // 1. Visits with no progress for a whole interval, longest first.
    for (const v of holders) {
      if (pool.measured <= pool.limitBytes) return cut;
      if ((v.stream?.lastProgressAt ?? 0) > stalledBefore || v.previous < 0 || v.measured < v.previous) continue;
      this.cut(v, pool);
      cut++;
    }
    // 2. Squeezing the rest to the floor must be able to bring the pool within budget.
    let squeezable = 0;
    for (const v of holders) if (!v.ended) squeezable += v.reserved;
    for (const v of holders) {
      if (pool.measured - squeezable <= pool.limitBytes) break;
      if (v.ended) continue;
      squeezable -= v.reserved;
      this.cut(v, pool);
      cut++;
    }
    return cut;
  }

  private cut(v: Visit, pool: Pool): void {
    pool.measured -= v.measured;
    if (pool !== this.global) this.global.measured -= v.measured;
    else v.cog.measured -= v.measured;
    this.end(v);
    this.opts.onShed(v, pool);
  }

  /**
   * New budgets, splice queue and sweep interval (a reload). The budgets bind at the next
   * sweep, new windows and growth at once; the per-visit floor estimate follows the new
   * splice_queue, which only new visitors use (an old visitor's larger queues are sampled
   * by the sweeps like any other bytes it holds).
   */
  setLimits(limits: Pick<BudgetOptions, "budgetBytes" | "cogBudgetBytes" | "spliceQueueBytes" | "checkIntervalMs">): void {
    const restart = this.timer !== null && limits.checkIntervalMs !== this.opts.checkIntervalMs;
    this.opts = { ...this.opts, ...limits };
    this.global.limitBytes = limits.budgetBytes;
    for (const p of this.cogs.values()) p.limitBytes = limits.cogBudgetBytes;
    this.unreservedPerVisit = MUX_INITIAL_WINDOW_BYTES + spliceHeldMaxBytes(limits.spliceQueueBytes);
    if (restart) {
      clearInterval(this.timer!);
      this.timer = null;
    }
    this.watch(this.global);
  }

  /** Stops the sweeps (hub shutdown). */
  close(): void {
    this.closed = true;
    if (this.timer !== null) clearInterval(this.timer);
    this.timer = null;
  }
}
