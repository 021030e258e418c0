/**
 * What visitors see during a reconnect storm (bench/tunnels.ts): CONC loops, each GETting `/`
 * on the hub's HTTP port with `Host: <random cog>.<domain>` over a fresh connection (no
 * keep-alive: every visit is a new TCP connection, as a browser arriving during the storm),
 * each visit bounded by a timeout. A visit is ok when the answer is 200 with the cog's own
 * name as its body (the holders' backends answer so); anything else is a failure, counted by
 * kind (connection error code, timeout, other status, wrong body).
 *
 * It is a load generator, not a test: it shares the machine's 2 cores with the hub and the
 * holders, so it does the least per visit (no logging, a body kept only up to
 * PROBE_BODY_MAX_CHARS, a failure pauses its loop PROBE_FAIL_PAUSE_MS so a dead port is
 * not hammered by a tight loop of refused connects), and `gapMs` paces the ok ones.
 */
import http from "node:http";
import { performance } from "node:perf_hooks";
import { sleep } from "./procs.js";

/** After a failed visit the loop waits this long: a refused connect returns in ~0.1 ms. */
export const PROBE_FAIL_PAUSE_MS = 20;
/** Failure examples kept: the first of each kind, in time order (the counts per kind cover the rest). */
export const PROBE_MAX_EXAMPLES = 5;
/** The ok body is a cog's name (`cog123`); longer bodies only matter as an example's start. */
const PROBE_BODY_MAX_CHARS = 200;

export interface ProbeOptions {
  port: number;
  domain: string;
  names: readonly string[];
  /** Concurrent loops. */
  conc: number;
  /** Each visit: connect, request and whole answer within this, or it fails as "timeout". */
  timeoutMs: number;
  /** Pause of a loop after an ok visit (0: the next visit at once). */
  gapMs: number;
}

export interface ProbeResult {
  conc: number; timeoutMs: number; gapMs: number;
  durationS: number;
  total: number; ok: number; failed: number;
  /** Failures by kind: `error ECONNREFUSED`, `timeout`, `status 502`, `wrong body`, ... */
  failures: Record<string, number>;
  /** The first failure of each kind, up to PROBE_MAX_EXAMPLES: `+S s (took MS ms) cog: what`, S from the kill to the visit's end. */
  examples: string[];
  /** The last failure, as an example: what visitors saw at the end of the trouble. */
  lastFailure: string | null;
  /** The PROBE_MAX_EXAMPLES slowest ok visits, as the examples (held by a grace hold, or a busy hub or cog). */
  slowest: string[];
  /** Of the ok visits, in ms. */
  latencyMs: { p50: number; p99: number; max: number } | null;
  /** From the kill to the end of the first / last failed visit (null: none failed). */
  firstFailAfterKillS: number | null;
  /** "Visitors saw trouble for X s": from the kill to the end of the last failed visit. */
  troubleS: number | null;
}

type Outcome = { status: number; body: string } | { error: string };

function visitOnce(port: number, host: string, timeoutMs: number): Promise<Outcome> {
  return new Promise((resolve) => {
    let done = false;
    const finish = (o: Outcome): void => {
      if (done) return;
      done = true;
      clearTimeout(timer);
      resolve(o);
    };
    const req = http.get({ host: "127.0.0.1", port, path: "/", headers: { host }, agent: false }, (res) => {
      let body = "";
      res.setEncoding("utf8");
      res.on("data", (d: string) => { if (body.length < PROBE_BODY_MAX_CHARS) body += d; });
      res.on("end", () => finish({ status: res.statusCode ?? 0, body }));
      res.on("error", (e: NodeJS.ErrnoException) => finish({ error: e.code ?? e.message }));
      res.on("close", () => finish({ error: "closed before the end of the answer" }));
    });
    req.on("error", (e: NodeJS.ErrnoException) => finish({ error: e.code ?? e.message }));
    const timer = setTimeout(() => { finish({ error: "timeout" }); req.destroy(); }, timeoutMs);
  });
}

function percentile(sorted: number[], p: number): number {
  return sorted[Math.min(sorted.length - 1, Math.floor((p / 100) * sorted.length))]!;
}

export class VisitorProbe {
  private running = true;
  private readonly loops: Promise<void>[] = [];
  private readonly startedAt = Date.now();
  private total = 0;
  private ok = 0;
  private readonly okMs: number[] = [];
  private readonly failures = new Map<string, number>();
  /** The first failure of each kind as [end time (epoch ms), took ms, cog, what]. */
  private readonly examples = new Map<string, [number, number, string, string]>();
  private lastExample: [number, number, string, string] | null = null;
  /** The slowest ok visits so far, slowest first, at most PROBE_MAX_EXAMPLES. */
  private readonly slow: Array<[number, number, string, string]> = [];
  private firstFailAt = 0;
  private lastFailAt = 0;

  constructor(private readonly o: ProbeOptions) {
    for (let i = 0; i < o.conc; i++) this.loops.push(this.loop());
  }

  private async loop(): Promise<void> {
    const { names, domain, port, timeoutMs, gapMs } = this.o;
    while (this.running) {
      const cog = names[Math.floor(Math.random() * names.length)]!;
      const t = performance.now();
      const out = await visitOnce(port, `${cog}.${domain}`, timeoutMs);
      const took = performance.now() - t;
      this.total++;
      let kind: string | null = null;
      if ("error" in out) kind = out.error === "timeout" ? "timeout" : `error ${out.error}`;
      else if (out.status !== 200) kind = `status ${out.status}`;
      else if (out.body !== cog) kind = "wrong body";
      if (kind === null) {
        this.ok++;
        this.okMs.push(took);
        if (this.slow.length < PROBE_MAX_EXAMPLES || took > this.slow[this.slow.length - 1]![1]) {
          this.slow.push([Date.now(), took, cog, "ok"]);
          this.slow.sort((x, y) => y[1] - x[1]);
          this.slow.length = Math.min(this.slow.length, PROBE_MAX_EXAMPLES);
        }
        if (gapMs > 0) await sleep(gapMs);
        continue;
      }
      const now = Date.now();
      this.failures.set(kind, (this.failures.get(kind) ?? 0) + 1);
      if (this.firstFailAt === 0) this.firstFailAt = now;
      this.lastFailAt = now;
      const what = "error" in out ? kind : `${kind} ${JSON.stringify(out.body.slice(0, 60))}`;
      this.lastExample = [now, took, cog, what];
      if (!this.examples.has(kind)) this.examples.set(kind, this.lastExample);
      await sleep(PROBE_FAIL_PAUSE_MS);
    }
  }

  /** Stops starting visits, waits for those under way (at most timeoutMs), and sums up; killAt: the kill's epoch ms. */
  async stop(killAt: number): Promise<ProbeResult> {
    this.running = false;
    await Promise.all(this.loops);
    const sorted = this.okMs.sort((x, y) => x - y);
    const round = (ms: number): number => Math.round(ms * 10) / 10;
    const s = (at: number): number | null => (at === 0 ? null : (at - killAt) / 1000);
    const show = ([at, took, cog, what]: [number, number, string, string]): string => `+${((at - killAt) / 1000).toFixed(2)} s (took ${Math.round(took)} ms) ${cog}: ${what}`;
    return {
      conc: this.o.conc, timeoutMs: this.o.timeoutMs, gapMs: this.o.gapMs,
      durationS: (Date.now() - this.startedAt) / 1000,
      total: this.total, ok: this.ok, failed: this.total - this.ok,
      failures: Object.fromEntries([...this.failures].sort((x, y) => y[1] - x[1])),
      examples: [...this.examples.values()].slice(0, PROBE_MAX_EXAMPLES).map(show),
      lastFailure: this.lastExample && show(this.lastExample),
      slowest: this.slow.map(show),
      latencyMs: sorted.length === 0 ? null : { p50: round(percentile(sorted, 50)), p99: round(percentile(sorted, 99)), max: round(sorted[sorted.length - 1]!) },
      firstFailAfterKillS: s(this.firstFailAt),
      troubleS: s(this.lastFailAt),
    };
  }
}
