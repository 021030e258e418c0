/**
 * Hub memory under visitors that stop reading (issue 8, defect 6):
 *
 *   node dist/bench/stalled.js [--a DIR] [--readers 1000] [--rss-cap-mib 8192] [--big-mib 64]
 *
 * Starts nginx and a capsul hub + cog as child processes (bench/paths.ts startCapsul, the
 * CLI of this checkout or of --a DIR, each with its own defaults), then opens --readers TLS
 * visitors, each from its own loopback address (127.10.x.y: one source each, as many
 * attackers would be), that ask for /big, read their first bytes and stop reading while
 * nginx keeps writing. Reports the hub's and the cog's RSS before, at the peak and once
 * settled, what the hub cut, and the hub's CPU while it holds the stalled readers (its
 * budget sweeps). Stops opening readers once the hub's RSS passes --rss-cap-mib, so a build
 * without a budget cannot take the machine down; the report says where it stopped.
 */
import { mkdtemp, rm } from "node:fs/promises";
import net from "node:net";
import os from "node:os";
import path from "node:path";
import tls from "node:tls";
import { BENCH_HOST, startBackend } from "./backend.js";
import { walkArgs } from "./options.js";
import { CAPSUL_CLI, startCapsul } from "./paths.js";
import { cpuSeconds, rssBytes, sleep } from "./procs.js";

const MIB = 1024 * 1024;
/** Readers being connected at once. */
const OPEN_CONCURRENCY = 50;
/** Default of --first-bytes-s: a reader that has not received its first bytes by then is a failure. */
const READER_FIRST_BYTES_TIMEOUT_MS = 30_000;
/** Settled: hub RSS moved less than this fraction over SETTLE_WINDOW samples. */
const SETTLE_TOLERANCE = 0.02;
const SAMPLE_MS = 500;
const SETTLE_WINDOW = 8;
const SETTLE_MAX_MS = 90_000;
/** Hub CPU is measured over this long once settled (the sweeps' cost with the readers held). */
const HOLD_MS = 10_000;

const USAGE = `usage: node dist/bench/stalled.js [options]
  --a DIR              measure another checkout's build (its dist/cli/main.js; default: this one)
  --readers N          stalled readers (default 1000)
  --rss-cap-mib N      stop opening readers once the hub's RSS passes this (default 8192)
  --big-mib N          size of the download each reader starts (default 64)
  --first-bytes-s N    a reader without its first bytes after N s counts as failed (default 30)`;

interface Opts { cli: string; readers: number; rssCapBytes: number; bigBytes: number; firstBytesMs: number }

function parse(argv: string[]): Opts {
  const o: Opts = { cli: CAPSUL_CLI, readers: 1000, rssCapBytes: 8192 * MIB, bigBytes: 64 * MIB, firstBytesMs: READER_FIRST_BYTES_TIMEOUT_MS };
  walkArgs(argv, USAGE, (a, { val, int }) => {
    switch (a) {
      case "--a": o.cli = path.join(path.resolve(val()), "dist", "cli", "main.js"); break;
      case "--readers": o.readers = int(); break;
      case "--rss-cap-mib": o.rssCapBytes = int() * MIB; break;
      case "--big-mib": o.bigBytes = int() * MIB; break;
      case "--first-bytes-s": o.firstBytesMs = int() * 1000; break;
      case "-h": case "--help": process.stdout.write(USAGE + "\n"); process.exit(0); break;
      default: throw new Error(`unknown option ${a}\n${USAGE}`);
    }
  });
  return o;
}

/** Reader i's own source address: 127.10.0.1 ... 127.10.3.232 for 1000. */
function sourceAddress(i: number): string {
  return `127.10.${Math.floor(i / 250)}.${(i % 250) + 1}`;
}

function stalledReader(port: number, i: number, firstBytesMs: number): Promise<tls.TLSSocket> {
  return new Promise((resolve, reject) => {
    const raw = net.connect({ host: "127.0.0.1", port, localAddress: sourceAddress(i) });
    raw.on("error", () => {});
    const s = tls.connect({ socket: raw, servername: BENCH_HOST, rejectUnauthorized: false });
    const timer = setTimeout(() => { s.destroy(); reject(new Error(`reader ${i}: no bytes within ${firstBytesMs} ms`)); }, firstBytesMs);
    s.on("error", (err) => { clearTimeout(timer); reject(err); });
    s.once("secureConnect", () => s.write(`GET /big HTTP/1.1\r\nHost: ${BENCH_HOST}\r\n\r\n`));
    s.once("data", () => {
      clearTimeout(timer);
      s.pause(); // and never read again
      s.removeAllListeners("error");
      s.on("error", () => {});
      resolve(s);
    });
  });
}

const mib = (b: number): string => (b / MIB).toFixed(0);

async function main(): Promise<void> {
  const o = parse(process.argv.slice(2));
  const tmp = await mkdtemp(path.join(os.tmpdir(), "capsul-stalled-"));
  const be = await startBackend(path.join(tmp, "nginx"), ["capsul"], o.bigBytes);
  const readers: tls.TLSSocket[] = [];
  try {
    const capsul = await startCapsul(path.join(tmp, "capsul"), be.httpsPorts.capsul, { cli: o.cli });
    const [hub, cog] = capsul.procs;
    // Count the hub's "visitor cut" lines as they stream by (its kept output is capped).
    let cut = 0;
    let tail = "";
    const onOut = (b: Buffer): void => {
      const text = tail + b.toString();
      cut += (text.match(/visitor cut/g) ?? []).length;
      tail = text.slice(-("visitor cut".length - 1));
    };
    hub.child.stdout!.on("data", onOut);
    hub.child.stderr!.on("data", onOut);
    try {
      await sleep(2000);
      const before = [rssBytes(hub.pid), rssBytes(cog.pid)];
      let peak = before[0];
      let capped = false;
      let failures = 0;
      let next = 0;
      const worker = async (): Promise<void> => {
        while (next < o.readers && !capped) {
          const i = next++;
          try {
            readers.push(await stalledReader(capsul.port, i, o.firstBytesMs));
          } catch (err) {
            if (++failures <= 3) process.stderr.write(`${(err as Error).message}\n`);
          }
          const rss = rssBytes(hub.pid);
          peak = Math.max(peak, rss);
          if (rss > o.rssCapBytes) capped = true;
        }
      };
      const t0 = Date.now();
      await Promise.all(Array.from({ length: OPEN_CONCURRENCY }, worker));
      process.stderr.write(`${readers.length} readers stalled in ${((Date.now() - t0) / 1000).toFixed(0)} s${capped ? " (RSS cap reached)" : ""}\n`);

      // Let every pipeline fill up (or be cut) until the hub's RSS stops moving.
      const samples: number[] = [];
      const settleStart = Date.now();
      for (;;) {
        await sleep(SAMPLE_MS);
        const rss = rssBytes(hub.pid);
        peak = Math.max(peak, rss);
        samples.push(rss);
        if (rss > o.rssCapBytes) { capped = true; break; }
        const w = samples.slice(-SETTLE_WINDOW);
        if (w.length === SETTLE_WINDOW && Math.max(...w) - Math.min(...w) <= SETTLE_TOLERANCE * Math.max(...w)) break;
        if (Date.now() - settleStart > SETTLE_MAX_MS) break;
      }
      const settled = [rssBytes(hub.pid), rssBytes(cog.pid)];
      const cpu0 = cpuSeconds(hub.pid);
      await sleep(HOLD_MS);
      const holdCpu = cpuSeconds(hub.pid) - cpu0;
      const perReader = readers.length > 0 ? (settled[0] - before[0]) / readers.length : 0;
      process.stdout.write([
        `build: ${o.cli}`,
        `stalled readers: ${readers.length} of ${o.readers} (one source address each; ${failures} failed to start)${capped ? `; stopped at the RSS cap of ${mib(o.rssCapBytes)} MiB` : ""}`,
        `hub RSS MiB: before ${mib(before[0])}, peak ${mib(peak)}, settled ${mib(settled[0])} (${(perReader / 1024).toFixed(0)} KiB per reader)`,
        `cog RSS MiB: before ${mib(before[1])}, settled ${mib(settled[1])}`,
        `hub cut (log lines "visitor cut", at most one per source per refusal_log_interval): ${cut}`,
        `hub CPU while holding them: ${(holdCpu / (HOLD_MS / 1000) * 100).toFixed(1)}% of a core`,
        "",
      ].join("\n"));
    } finally {
      for (const r of readers) r.destroy();
      await capsul.stop();
    }
  } finally {
    await be.stop();
    await rm(tmp, { recursive: true, force: true });
  }
}

main().catch((err: Error) => {
  process.stderr.write(`stalled: ${err.stack ?? err.message}\n`);
  process.exit(1);
});
