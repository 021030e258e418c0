/**
 * Visitors that would pin the hub's memory or its connection slots, performed on a real
 * hub and a real cog over loopback sockets (issue 8, defect 6):
 * - many visitors stop reading a download the backend keeps writing: the hub's buffered
 *   bytes end within hub.limits.buffer_budget, and a normal visitor's download still
 *   completes with the right SHA-256;
 * - one source opens more than max_visitors_per_ip connections, or more than
 *   max_unpeeked_per_ip that send nothing: the extra one is refused, another source
 *   (another 127.x address) is served;
 * - a silent connection is cut by the idle timeout, which is now on by default.
 * Each refusal and cut is read back from the hub's /metrics (and /v1/status) as well.
 */
import t, { type Test } from "tap";
import { createHash } from "node:crypto";
import net from "node:net";
import { DEFAULT_IDLE_TIMEOUT_MS } from "../config/config.js";
import { IDLE_CHECKS_PER_TIMEOUT } from "../gateway/visitors.js";
import type { HubConfig } from "../config/types.js";
import type { Hub } from "../gateway/hub.js";
import { cogConfig, closeServer, enrolledCog, HUB_DOMAIN, hubConfig, listen, startTestHub, tmpDir } from "./helpers/cluster.js";
import { adminJson, scrape } from "./helpers/adminclient.js";

const KiB = 1024;
const MiB = 1024 * KiB;
const COG = "vl";
const HOST = `dl.${COG}.${HUB_DOMAIN}`;
/** Of bytes each pattern chunk the backend writes; any content will do, the SHA-256 checks it. */
const CHUNK_BYTES = 64 * KiB;
/** How often the test looks at the backend and the hub while waiting for a condition (never a timing assertion). */
const POLL_MS = 100;

function chunk(i: number): Buffer {
  const b = Buffer.alloc(CHUNK_BYTES);
  for (let k = 0; k < CHUNK_BYTES; k += 4) b.writeUInt32BE(((i + 1) * 2654435761 + k * 40503) >>> 0, k);
  return b;
}

/**
 * HTTP backend: `GET /bytes/N` answers N bytes of chunk() data and closes; `GET /endless`
 * writes chunk() data until the connection goes away, honouring backpressure. Counts every
 * byte its socket accepted, so the test can see when every download has stalled.
 */
async function downloadBackend(): Promise<{ port: number; written(): number; close(): Promise<void> }> {
  let written = 0;
  const server = net.createServer((sock) => {
    sock.on("error", () => {});
    let head = "";
    const onData = (d: Buffer): void => {
      head += d.toString("latin1");
      const end = head.indexOf("\r\n\r\n");
      if (end < 0) return;
      sock.off("data", onData);
      const path = /^GET (\S+)/.exec(head)?.[1] ?? "";
      const n = /^\/bytes\/(\d+)$/.exec(path);
      if (n) {
        const total = Number(n[1]);
        sock.write(`HTTP/1.1 200 OK\r\nContent-Length: ${total}\r\nConnection: close\r\n\r\n`);
        let i = 0;
        const more = (): void => {
          while (i * CHUNK_BYTES < total) {
            const c = chunk(i).subarray(0, Math.min(CHUNK_BYTES, total - i * CHUNK_BYTES));
            i++;
            const ok = sock.write(c, () => { written += c.length; });
            if (!ok) { sock.once("drain", more); return; }
          }
          sock.end();
        };
        more();
        return;
      }
      sock.write("HTTP/1.1 200 OK\r\nConnection: close\r\n\r\n");
      let i = 0;
      const more = (): void => {
        while (!sock.destroyed) {
          const c = chunk(i++ % 64);
          if (!sock.write(c, (err) => { if (!err) written += c.length; })) { sock.once("drain", more); return; }
        }
      };
      more();
    };
    sock.on("data", onData);
  });
  const port = await listen(server);
  return { port, written: () => written, close: () => closeServer(server) };
}

async function until(what: string, cond: () => boolean, maxMs = 60_000): Promise<void> {
  for (let waited = 0; !cond(); waited += POLL_MS) {
    if (waited > maxMs) throw new Error(`timed out waiting for ${what}`);
    await new Promise((r) => setTimeout(r, POLL_MS));
  }
}

function request(path: string): string {
  return `GET ${path} HTTP/1.1\r\nHost: ${HOST}\r\n\r\n`;
}

/** A visitor that requests an endless download, reads its first bytes, then stops reading. */
function stalledVisitor(port: number, localAddress?: string): Promise<net.Socket> {
  return new Promise((resolve, reject) => {
    const s = net.connect({ port, host: "127.0.0.1", localAddress });
    s.on("error", () => {}); // the hub may cut it: that is the point
    s.once("connect", () => s.write(request("/endless")));
    s.once("data", () => { s.pause(); resolve(s); });
    s.once("close", () => reject(new Error("stalled visitor closed before its first bytes")));
  });
}

/** Downloads /bytes/N; resolves with the SHA-256 of the body and its length. */
function download(port: number, total: number, localAddress?: string): Promise<{ hex: string; bytes: number }> {
  return new Promise((resolve, reject) => {
    const s = net.connect({ port, host: "127.0.0.1", localAddress });
    const h = createHash("sha256");
    let head: Buffer | null = Buffer.alloc(0);
    let bytes = 0;
    s.once("connect", () => s.write(request(`/bytes/${total}`)));
    s.on("data", (d: Buffer) => {
      if (head !== null) {
        head = Buffer.concat([head, d]);
        const end = head.indexOf("\r\n\r\n");
        if (end < 0) return;
        d = head.subarray(end + 4);
        head = null;
      }
      h.update(d);
      bytes += d.length;
    });
    s.on("error", reject);
    s.on("end", () => resolve({ hex: h.digest("hex"), bytes }));
  });
}

function expectedSha(total: number): string {
  const h = createHash("sha256");
  for (let i = 0; i * CHUNK_BYTES < total; i++) h.update(chunk(i).subarray(0, Math.min(CHUNK_BYTES, total - i * CHUNK_BYTES)));
  return h.digest("hex");
}

/**
 * A raw connection that sends `bytes` (if any) and reports what came back before the hub
 * closed it; `settled` resolves with the bytes received once it is closed.
 */
function rawVisitor(port: number, localAddress: string, bytes?: string): { sock: net.Socket; closed: Promise<Buffer> } {
  const sock = net.connect({ port, host: "127.0.0.1", localAddress });
  const got: Buffer[] = [];
  sock.on("data", (d: Buffer) => got.push(d));
  sock.on("error", () => {});
  if (bytes !== undefined) sock.once("connect", () => sock.write(bytes));
  const closed = new Promise<Buffer>((resolve) => sock.once("close", () => resolve(Buffer.concat(got))));
  return { sock, closed };
}

/** One hub + one cog with an HTTP route to the download backend. */
async function cluster(t: Test, limits: Record<string, unknown>): Promise<{ hub: Hub; hubCfg: HubConfig; backend: Awaited<ReturnType<typeof downloadBackend>> }> {
  const dir = tmpDir();
  const hubCfg = hubConfig(dir, { limits });
  const hub = await startTestHub(hubCfg);
  t.teardown(() => hub.close());
  const backend = await downloadBackend();
  t.teardown(() => backend.close());
  const cog = await enrolledCog(hubCfg, hub, cogConfig(dir, COG, hub.ports.tunnel, [
    { name: "dl", kind: "http", hostname: HOST, target: `127.0.0.1:${backend.port}` },
  ]), COG);
  t.teardown(() => cog.close());
  return { hub, hubCfg, backend };
}

t.test("visitors that stop reading: the hub's buffered bytes end within buffer_budget, a normal download completes", async (t) => {
  const BUDGET = 4 * MiB;
  const STALLED = 16;
  const { hub, backend } = await cluster(t, { buffer_budget: "4MiB", cog_buffer_budget: "4MiB", buffer_check_interval: "100ms" });
  t.equal(hub.tunnels.links.size, 1);

  const stalled: net.Socket[] = [];
  for (let i = 0; i < STALLED; i++) stalled.push(await stalledVisitor(hub.ports.http!));

  // A normal visitor downloads while the others stall: it must not be cut, nor lose a byte.
  const TOTAL = 32 * MiB;
  const normal = await download(hub.ports.http!, TOTAL);
  t.equal(normal.bytes, TOTAL, "the normal download got every byte");
  t.equal(normal.hex, expectedSha(TOTAL), "and its SHA-256 matches");

  // Steady state: the backend can write no more (every stalled download is blocked end to end).
  let last = -1;
  let still = 0;
  await until("the backend to stop making progress", () => {
    const w = backend.written();
    still = w === last ? still + 1 : 0;
    last = w;
    return still >= 10;
  });
  const held = hub.visitors.budget.bufferedBytes();
  t.ok(held.bytes <= BUDGET, `the hub holds ${(held.bytes / MiB).toFixed(2)} MiB for its visitors, within the 4 MiB budget`);
  t.ok((held.perCog.get(COG) ?? 0) <= BUDGET, "and within the cog's budget");
  t.ok(hub.visitors.stats.shed >= 1, `visitors were cut to get there (${hub.visitors.stats.shed})`);
  // (A paused client does not notice the reset until it reads again; count on the hub's side.)
  t.equal(hub.visitors.stats.active, STALLED - hub.visitors.stats.shed, "the cut connections are closed, the rest still open");
  t.ok(hub.visitors.stats.shed < STALLED, `not every stalled visitor had to go (${STALLED - hub.visitors.stats.shed} of ${STALLED} kept)`);
  const m = await scrape(hub.ports.admin!);
  t.equal(m.value("capsul_hub_visitors_cut_total", { reason: "buffer_budget" }), hub.visitors.stats.shed, "each cut is in /metrics");
  t.equal(m.value("capsul_hub_visitors_cut_total", { reason: "idle_timeout" }), 0);
  for (const s of stalled) s.destroy();
  await until("every visit to end", () => hub.visitors.budget.visitCount === 0);
  t.equal(hub.visitors.budget.reservedBytes, 0, "every window reservation went back to the pool");
  t.equal(hub.visitors.budget.bufferedBytes().bytes, 0);
});

t.test("max_visitors_per_ip: the (cap+1)th connection from one source is refused, another source is served", async (t) => {
  const CAP = 3;
  const { hub } = await cluster(t, { max_visitors_per_ip: CAP, max_unpeeked_per_ip: CAP, refusal_log_interval: "1m" });
  const port = hub.ports.http!;
  // CAP downloads from 127.0.0.2 hold their connections open (stalled after their first bytes).
  const held: net.Socket[] = [];
  for (let i = 0; i < CAP; i++) held.push(await stalledVisitor(port, "127.0.0.2"));
  t.equal(hub.visitors.stats.routed, CAP);

  const extra = rawVisitor(port, "127.0.0.2", request("/bytes/100"));
  t.equal((await extra.closed).length, 0, "the extra connection from 127.0.0.2 is closed without an answer");
  t.equal(hub.visitors.stats.overSourceLimit, 1, "and counted");
  const m = await scrape(hub.ports.admin!);
  t.equal(m.value("capsul_hub_routing_total", { outcome: "over_source_limit" }), 1, "a refusal in /metrics");
  t.equal(m.value("capsul_hub_routing_total", { outcome: "over_unpeeked_limit" }), 0);

  const other = await download(port, 100 * KiB, "127.0.0.3");
  t.equal(other.bytes, 100 * KiB, "127.0.0.3 is served meanwhile");
  t.equal(other.hex, expectedSha(100 * KiB));

  // The cap counts open connections: once one closes, the source gets a slot back.
  held[0]!.destroy();
  await until("the hub to see the close", () => hub.visitors.sources.openFrom("127.0.0.2") === CAP - 1);
  const again = await download(port, 100 * KiB, "127.0.0.2");
  t.equal(again.bytes, 100 * KiB, "127.0.0.2 is served again after one of its connections closed");
  for (const h of held) h.destroy();
});

t.test("max_unpeeked_per_ip: silent connections from one source are capped, a source that sends its request is not", async (t) => {
  const CAP = 2;
  const { hub } = await cluster(t, { max_visitors_per_ip: 10, max_unpeeked_per_ip: CAP, http_header_timeout: "30s" });
  const port = hub.ports.http!;
  const silent = [rawVisitor(port, "127.0.0.4"), rawVisitor(port, "127.0.0.4")];
  await until("the silent connections to be admitted", () => hub.visitors.stats.active === CAP);

  const third = rawVisitor(port, "127.0.0.4");
  t.equal((await third.closed).length, 0, "a third silent connection from 127.0.0.4 is closed at once");
  t.equal(hub.visitors.stats.overUnpeekedLimit, 1, "and counted");
  t.equal(hub.visitors.stats.overSourceLimit, 0, "by the un-peeked cap, not the per-source one");
  const m = await scrape(hub.ports.admin!);
  t.equal(m.value("capsul_hub_routing_total", { outcome: "over_unpeeked_limit" }), 1, "a refusal in /metrics");
  t.equal(m.value("capsul_hub_routing_total", { outcome: "over_source_limit" }), 0);
  const st = await adminJson<{ visitors: { refused: Record<string, number> } }>(hub.ports.admin!, "/v1/status");
  t.match(st.json.visitors.refused, { over_unpeeked_limit: 1, over_source_limit: 0 }, "and in /v1/status");

  const other = await download(port, 10 * KiB, "127.0.0.5");
  t.equal(other.hex, expectedSha(10 * KiB), "127.0.0.5 is served meanwhile");

  // Once a silent one sends its request head it is peeked: the source may open another.
  silent[0]!.sock.write(request(`/bytes/${10 * KiB}`));
  const answered = await silent[0]!.closed;
  t.ok(answered.length > 10 * KiB, "the formerly silent connection got its answer");
  const after = await download(port, 10 * KiB, "127.0.0.4");
  t.equal(after.hex, expectedSha(10 * KiB), "and 127.0.0.4 is served again");
  silent[1]!.sock.destroy();
});

t.test("idle timeout: on by default, and it cuts a silent connection", async (t) => {
  // The default, through the hub's real check, with the check's clock moved ahead (10 minutes
  // cannot be waited out here).
  const def = await cluster(t, {});
  t.equal(def.hubCfg.limits.idleTimeoutMs, DEFAULT_IDLE_TIMEOUT_MS);
  t.ok(DEFAULT_IDLE_TIMEOUT_MS > 0, "a default idle timeout exists");
  t.equal(def.hub.visitors.idleCheckIntervalMs, DEFAULT_IDLE_TIMEOUT_MS / IDLE_CHECKS_PER_TIMEOUT, "and is checked while visitors are connected");
  const t0 = performance.now();
  const silent = rawVisitor(def.hub.ports.http!, "127.0.0.6");
  await until("the silent connection to be admitted", () => def.hub.visitors.stats.active === 1);
  def.hub.visitors.checkIdle(t0 + DEFAULT_IDLE_TIMEOUT_MS - 1);
  t.equal(def.hub.visitors.stats.idleTimeout, 0, "not cut a moment before the default idle timeout");
  def.hub.visitors.checkIdle(performance.now() + DEFAULT_IDLE_TIMEOUT_MS);
  t.equal((await silent.closed).length, 0, "cut once it has passed, without an answer");
  t.equal(def.hub.visitors.stats.idleTimeout, 1, "and counted");
  t.equal((await scrape(def.hub.ports.admin!)).value("capsul_hub_visitors_cut_total", { reason: "idle_timeout" }), 1, "a cut in /metrics");

  // A shorter one, waited out on the real clock: a connection with no byte either way is cut.
  const { hub } = await cluster(t, { idle_timeout: "300ms" });
  const quiet = rawVisitor(hub.ports.http!, "127.0.0.7", request("/bytes/0"));
  const got = await quiet.closed;
  t.match(got.toString("latin1"), /^HTTP\/1\.1 200 OK/, "the request was answered");
  const mute = rawVisitor(hub.ports.http!, "127.0.0.7");
  await until("the silent connection to be admitted", () => hub.visitors.stats.active >= 1);
  // It never sends a byte; the idle timeout (300ms) passes before the request-head
  // deadline (hub default 5s), so it is the idle timeout that closes it.
  await mute.closed;
  t.equal(hub.visitors.stats.idleTimeout, 1, "closed by the idle timeout, and counted");
  t.equal(hub.visitors.stats.peekTimeout, 0, "not by the request-head deadline");

  // A stalled download is cut by it too (nothing moves either way once its queues are full).
  const stalled = await stalledVisitor(hub.ports.http!, "127.0.0.8");
  await until("the stalled download to be cut", () => hub.visitors.stats.idleTimeout === 2);
  stalled.destroy();
  const cut = await adminJson<{ visitors: { cut: Record<string, number> } }>(hub.ports.admin!, "/v1/status");
  t.same(cut.json.visitors.cut, { buffer_budget: 0, idle_timeout: 2 }, "both idle closes in /v1/status");
});
