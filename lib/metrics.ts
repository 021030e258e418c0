/**
 * prom-client plumbing shared by the hub, the cog and the provisioner.
 *
 * One registry per process (`processRegistry()`, with prom-client's default Node metrics);
 * an in-process test hub gets a registry of its own so its counts are its own. Every
 * capsul family is read by a collect callback at scrape time from counters the code keeps
 * anyway (VisitorStats, socket.bytesRead/bytesWritten, the router, the state store): nothing is
 * added per byte, and a family's series are exactly what its callback reports at that
 * scrape, so a route or cog that is gone simply stops being reported.
 */
import type { Socket } from "node:net";
import { collectDefaultMetrics, Counter, Gauge, Registry } from "prom-client";

let processReg: Registry | null = null;

/** The one registry of a `capsul` process, with prom-client's default Node metrics (process_*, nodejs_*). */
export function processRegistry(): Registry {
  if (!processReg) {
    processReg = new Registry();
    collectDefaultMetrics({ register: processReg });
  }
  return processReg;
}

export type Labels = Record<string, string>;
/** Reports one sample; a collect callback calls it once per series. */
export type Emit = (labels: Labels, value: number) => void;
type Fill = (emit: Emit) => void | Promise<void>;

/**
 * The families one component registers, each filled at scrape time by a callback;
 * close() takes them off the registry again (a hub or cog closed in a process that
 * goes on, as in the tests, leaves nothing behind).
 */
export class MetricFamilies {
  private readonly names: string[] = [];
  constructor(readonly registry: Registry) {}

  gauge(name: string, help: string, labelNames: readonly string[], fill: Fill): void {
    this.names.push(name);
    new Gauge({
      name, help, labelNames, registers: [this.registry],
      async collect() {
        this.reset();
        await fill((labels, value) => this.set(labels, value));
      },
    });
  }

  counter(name: string, help: string, labelNames: readonly string[], fill: Fill): void {
    this.names.push(name);
    new Counter({
      name, help, labelNames, registers: [this.registry],
      async collect() {
        this.reset();
        await fill((labels, value) => this.inc(labels, value));
      },
    });
  }

  /** A metric the component updates itself (a histogram); it is only registered here so close() removes it. */
  own(name: string): void {
    this.names.push(name);
  }

  close(): void {
    for (const n of this.names.splice(0)) this.registry.removeSingleMetric(n);
  }
}

/**
 * One value per scrape: Registry.metrics() starts every family's collect() in the same
 * tick (one Promise.all), so they share the first call's result; the next scrape
 * computes afresh. Keeps, say, one state store query per scrape instead of one per family; `compute` may
 * return a promise, which every family of that scrape then awaits.
 */
export function perScrape<T>(compute: () => T): () => T {
  let fresh = false;
  let value: T;
  return () => {
    if (!fresh) {
      value = compute();
      fresh = true;
      setImmediate(() => { fresh = false; });
    }
    return value;
  };
}

/**
 * The last result of an async read, reused while it is younger than `maxAgeMs` (monotonic
 * clock). Calls made while a read is in flight share it whatever the age (so every family
 * of one scrape, which Registry.metrics() starts in the same tick, shares one read even at
 * 0); a failed read is not kept; invalidate() makes the next call read afresh (after a
 * write of this process, whose answer must show it).
 */
export class CachedRead<T> {
  private value: Promise<T> | null = null;
  private pending = false;
  private readAt = 0;

  /** `maxAgeMs`: a number, or where to read it at each call (a setting a reload may change). */
  constructor(private readonly read: () => Promise<T>, private readonly maxAgeMs: number | (() => number)) {}

  get(): Promise<T> {
    const maxAge = typeof this.maxAgeMs === "function" ? this.maxAgeMs() : this.maxAgeMs;
    if (this.value && (this.pending || performance.now() - this.readAt < maxAge)) return this.value;
    const p = this.read();
    this.value = p;
    this.pending = true;
    const settle = (ok: boolean): void => {
      if (this.value !== p) return; // invalidated meanwhile: leave the newer read alone
      this.pending = false;
      this.readAt = performance.now();
      if (!ok) this.value = null;
    };
    p.then(() => settle(true), () => settle(false));
    return p;
  }

  invalidate(): void {
    this.value = null;
    this.pending = false;
  }
}

/**
 * Certificates whose expiry is exported as <prefix>_certificate_expiry_timestamp_seconds{kind,name}.
 * The hub and cog register their own; register() is the hook for others (ACME certificates):
 * it returns the function that unregisters. `notAfterMs` is read at scrape time; null hides
 * the series (no certificate yet).
 */
export class CertificateExpiry {
  private readonly sources = new Map<string, { kind: string; name: string; notAfterMs: () => number | null }>();

  register(kind: string, name: string, notAfterMs: () => number | null): () => void {
    const key = `${kind}\u0000${name}`;
    const entry = { kind, name, notAfterMs };
    this.sources.set(key, entry);
    return () => { if (this.sources.get(key) === entry) this.sources.delete(key); };
  }

  /**
   * Adds the family to `families` under `<prefix>_certificate_expiry_timestamp_seconds`;
   * `more` reports certificates the owner lists itself (the hub's cogs, from its state store; may be async).
   */
  export(families: MetricFamilies, prefix: string, help: string, more?: Fill): void {
    families.gauge(`${prefix}_certificate_expiry_timestamp_seconds`, help, ["kind", "name"], async (emit) => {
      await more?.(emit);
      for (const s of this.sources.values()) {
        let ms: number | null;
        try { ms = s.notAfterMs(); } catch { ms = null; }
        if (ms !== null) emit({ kind: s.kind, name: s.name }, Math.floor(ms / 1000));
      }
    });
  }
}

/**
 * The connections of one route and their bytes, without a counter on the data path:
 * socket.bytesRead/bytesWritten are added up when each socket closes, and summed over
 * the live ones when someone reads. One 'close' listener per connection.
 */
export class SocketTally {
  readonly live = new Set<Socket>();
  /** Connections ever added. */
  count = 0;
  /** Set by a scrape that found the route gone and idle; the next such scrape forgets it. */
  gone = false;
  private closedRead = 0;
  private closedWritten = 0;

  add(socket: Socket): void {
    this.count++;
    this.live.add(socket);
    socket.once("close", () => {
      this.live.delete(socket);
      this.closedRead += socket.bytesRead;
      this.closedWritten += socket.bytesWritten;
    });
  }

  bytes(): { read: number; written: number } {
    let read = this.closedRead;
    let written = this.closedWritten;
    for (const s of this.live) { read += s.bytesRead; written += s.bytesWritten; }
    return { read, written };
  }
}
