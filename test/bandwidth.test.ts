/**
 * hub.cogs[].limits.bandwidth on a real hub with real cogs over loopback (issue 9 "Limits":
 * "bandwidth limit within 10% of the set rate"): a cog limited to 2 MiB/s moves 8 MiB to
 * four visitors at once, and 8 MiB from one visitor, at that rate (measured, allowing for
 * the burst); a second cog without a limit, downloading at the same time, is not slowed and
 * its visitors never touch a bucket.
 *
 * This is the one rate measurement of the suite, on purpose: the issue asks for it. The
 * tolerance is the issue's. 8 MiB at 2 MiB/s takes ~4 s, so scheduling noise of a few tens
 * of milliseconds stays far inside 10%.
 */
import t from "tap";
import { createHash } from "node:crypto";
import net from "node:net";
import fs from "node:fs";
import { startHub } from "../gateway/hub.js";
import { createLogger } from "../lib/log.js";
import { closeServer, cogConfig, enrolledCog, HUB_DOMAIN, hubConfig, listen, tmpDir } from "./helpers/cluster.js";

const KiB = 1024;
const MiB = 1024 * KiB;
const RATE_BYTES_PER_SEC = 2 * MiB;
const BURST_BYTES = 512 * KiB;
const TOTAL_BYTES = 8 * MiB;
const DOWNLOADERS = 4;
/** The tolerance. */
const TOLERANCE = 0.1;

function pattern(n: number): Buffer {
  const b = Buffer.alloc(n);
  for (let i = 0; i < n; i += 4) b.writeUInt32BE((i * 2654435761) >>> 0, i);
  return b;
}
const BODY = pattern(TOTAL_BYTES);
const sha = (b: Buffer): string => createHash("sha256").update(b).digest("hex");

/**
 * HTTP backend: `GET /bytes/N` answers the first N bytes of BODY; `POST /sink` with a
 * Content-Length reads the whole body and answers its SHA-256.
 */
async function backend(): Promise<{ port: number; close(): Promise<void> }> {
  const server = net.createServer((sock) => {
    sock.on("error", () => {});
    let head: Buffer | null = Buffer.alloc(0);
    let need = 0;
    const h = createHash("sha256");
    sock.on("data", (d: Buffer) => {
      if (head !== null) {
        head = Buffer.concat([head, d]);
        const end = head.indexOf("\r\n\r\n");
        if (end < 0) return;
        const text = head.subarray(0, end).toString("latin1");
        d = head.subarray(end + 4);
        head = null;
        const n = /^GET \/bytes\/(\d+) /.exec(text);
        if (n) {
          const len = Number(n[1]);
          sock.end(Buffer.concat([Buffer.from(`HTTP/1.1 200 OK\r\nContent-Length: ${len}\r\nConnection: close\r\n\r\n`), BODY.subarray(0, len)]));
          return;
        }
        need = Number(/content-length: (\d+)/i.exec(text)?.[1] ?? 0);
      }
      h.update(d);
      need -= d.length;
      if (need === 0) {
        const hex = h.digest("hex");
        sock.end(`HTTP/1.1 200 OK\r\nContent-Length: ${hex.length}\r\nConnection: close\r\n\r\n${hex}`);
      }
    });
  });
  const port = await listen(server);
  return { port, close: () => closeServer(server) };
}

/** Sends `request` (and `body`), resolves with the response body and when its first and last bytes arrived. */
function exchange(port: number, request: string, body?: Buffer): Promise<{ body: Buffer; firstAt: number; doneAt: number }> {
  return new Promise((resolve, reject) => {
    const s = net.connect({ port, host: "127.0.0.1" });
    const got: Buffer[] = [];
    let firstAt = 0;
    s.on("data", (d: Buffer) => {
      if (got.length === 0) firstAt = performance.now();
      got.push(d);
    });
    s.on("error", reject);
    s.once("connect", () => {
      s.write(request);
      if (body) s.write(body);
    });
    s.once("end", () => {
      const doneAt = performance.now();
      const all = Buffer.concat(got);
      const end = all.indexOf("\r\n\r\n");
      if (!/^HTTP\/1\.1 200 /.test(all.toString("latin1", 0, 16))) reject(new Error(`unexpected answer: ${all.toString("latin1", 0, 80)}`));
      resolve({ body: all.subarray(end + 4), firstAt, doneAt });
      s.end();
    });
  });
}

const download = (port: number, host: string, n: number) => exchange(port, `GET /bytes/${n} HTTP/1.1\r\nHost: ${host}\r\n\r\n`);

t.test("a cog's bandwidth limit: 8 MiB both ways within 10% of 2 MiB/s, shared by its visitors; an unlimited cog is unaffected", async (t) => {
  const dir = tmpDir();
  t.teardown(() => fs.rmSync(dir, { recursive: true, force: true }));
  const hubCfg = hubConfig(dir, {
    limits: { refusal_log_interval: "1h" },
    cogs: [{ name: "slow", limits: { bandwidth: "2MiB/s", bandwidth_burst: "512KiB" } }],
  });
  const lines: string[] = [];
  const hub = await startHub(hubCfg, createLogger({ level: "info", write: (l) => lines.push(l) }));
  t.teardown(() => hub.close());
  const be = await backend();
  t.teardown(() => be.close());
  const target = `127.0.0.1:${be.port}`;
  const SLOW = `d.slow.${HUB_DOMAIN}`;
  const FREE = `d.free.${HUB_DOMAIN}`;
  for (const [name, host] of [["slow", SLOW], ["free", FREE]] as const) {
    const cog = await enrolledCog(hubCfg, hub, cogConfig(dir, name, hub.ports.tunnel, [{ name: "d", kind: "http", hostname: host, target }]), name);
    t.teardown(() => cog.close());
  }
  const port = hub.ports.http!;
  t.equal(hub.visitors.quotas.of("free").throttle, null, "the unlimited cog has no bucket: its visitors take the plain splice");
  const buckets = hub.visitors.quotas.of("slow").throttle!;
  t.equal(buckets.toVisitors.rateBytesPerSec, RATE_BYTES_PER_SEC);

  // Downloads: four visitors share the slow cog's 2 MiB/s toward visitors, while the free cog's
  // visitor downloads 8 MiB at the same time.
  const each = TOTAL_BYTES / DOWNLOADERS;
  const t0 = performance.now();
  const [slow, free] = await Promise.all([
    Promise.all(Array.from({ length: DOWNLOADERS }, () => download(port, SLOW, each))),
    download(port, FREE, TOTAL_BYTES),
  ]);
  for (const r of slow) t.equal(sha(r.body), sha(BODY.subarray(0, each)), "each throttled download is complete and intact");
  t.equal(sha(free.body), sha(BODY), "the unlimited download is complete and intact");
  // From the first byte to the last: the bucket starts full, so BURST_BYTES pass at once and the
  // rest at the rate (the response heads, ~60 bytes each, are within the noise). Connection
  // setup before the first byte is not the limiter's doing.
  const slowSec = (Math.max(...slow.map((r) => r.doneAt)) - Math.min(...slow.map((r) => r.firstAt))) / 1000;
  const downRate = (TOTAL_BYTES - BURST_BYTES) / slowSec;
  t.comment(`throttled downloads: ${TOTAL_BYTES / MiB} MiB in ${slowSec.toFixed(2)} s = ${(downRate / MiB).toFixed(3)} MiB/s after the burst (set: ${RATE_BYTES_PER_SEC / MiB} MiB/s)`);
  t.ok(Math.abs(downRate - RATE_BYTES_PER_SEC) <= TOLERANCE * RATE_BYTES_PER_SEC,
    `the four downloads together ran at ${(downRate / MiB).toFixed(3)} MiB/s, within 10% of 2 MiB/s`);
  const freeSec = (free.doneAt - t0) / 1000;
  t.comment(`unlimited download: ${TOTAL_BYTES / MiB} MiB in ${freeSec.toFixed(2)} s = ${(TOTAL_BYTES / freeSec / MiB).toFixed(1)} MiB/s`);
  t.ok(TOTAL_BYTES / freeSec > (1 + TOLERANCE) * RATE_BYTES_PER_SEC, "the unlimited cog's download was not held to the other cog's rate");
  t.ok(buckets.toVisitors.waits > 0, `the slow cog's visitors waited for its bucket (${buckets.toVisitors.waits} times)`);
  t.equal(hub.visitors.stats.throttled, buckets.toVisitors.waits + buckets.fromVisitors.waits, "and VisitorStats counts those waits");

  // Upload: 8 MiB from one visitor to the slow cog, through the bucket from visitors.
  const waitsBefore = buckets.fromVisitors.waits;
  const t1 = performance.now();
  const up = await exchange(port, `POST /sink HTTP/1.1\r\nHost: ${SLOW}\r\nContent-Length: ${TOTAL_BYTES}\r\n\r\n`, BODY);
  t.equal(up.body.toString(), sha(BODY), "the throttled upload arrived complete and intact");
  const upSec = (up.doneAt - t1) / 1000;
  const upRate = (TOTAL_BYTES - BURST_BYTES) / upSec;
  t.comment(`throttled upload: ${TOTAL_BYTES / MiB} MiB in ${upSec.toFixed(2)} s = ${(upRate / MiB).toFixed(3)} MiB/s after the burst`);
  t.ok(Math.abs(upRate - RATE_BYTES_PER_SEC) <= TOLERANCE * RATE_BYTES_PER_SEC,
    `the upload ran at ${(upRate / MiB).toFixed(3)} MiB/s, within 10% of 2 MiB/s`);
  t.ok(buckets.fromVisitors.waits > waitsBefore, "it waited for the bucket from visitors");

  const logged = lines.filter((l) => l.includes("their cog is at its bandwidth limit"));
  t.equal(logged.length, 1, `the cog at its limit is logged once per refusal_log_interval (${hub.visitors.stats.throttled} waits)`);
  t.match(logged[0], /cog=slow/);
  t.notOk(lines.some((l) => l.includes("bandwidth limit") && l.includes("cog=free")), "the free cog never is");
});
