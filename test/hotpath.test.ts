/**
 * Every byte, through a real hub and a real cog on loopback: many concurrent
 * visitors, the smallest stream window the config allows (so every stream stalls
 * on flow control many times), visitors that stop reading, and SHA-256 of every
 * byte in both directions. Bench round 3 once reported 3 of 16 downloads as
 * 0 bytes; that was the bench reading curl's output on 'exit' (see
 * test/bench.test.ts), but this is the test that would catch the product
 * losing bytes under the same shape of load.
 */
import t from "tap";
import { createHash, randomBytes } from "node:crypto";
import net from "node:net";
import tls from "node:tls";
import path from "node:path";
import { parseConfig } from "../config/config.js";
import { MIN_STREAM_WINDOW_BYTES } from "../config/config.js";
import { loadOrCreateHubPki } from "../certs/pki.js";
import { closeServer, enrolledCog, HUB_DOMAIN, hubConfig, listen, startTestHub, tmpDir } from "./helpers/cluster.js";

/** As many concurrent visitors as the bench's "bulk 16x". */
const VISITORS = 16;
/** Per visitor and direction; with a 256 KiB window each transfer waits for credit ~16 times. */
const TRANSFER_BYTES = 4 * 1024 * 1024;
const TCP_PORT_LOW = 23700;
const TCP_PORT_HIGH = 23709;

function sha256(b: Buffer | Buffer[]): string {
  const h = createHash("sha256");
  for (const x of Array.isArray(b) ? b : [b]) h.update(x);
  return h.digest("hex");
}

function tunnelTuning(): Record<string, string> {
  // The smallest window parseConfig accepts: flow control is exercised, not bypassed.
  return { max_stream_window: `${MIN_STREAM_WINDOW_BYTES / 1024}KiB`, keepalive_interval: "1s", keepalive_timeout: "3s" };
}

/** Echo server: every byte a connection sends comes back, and its FIN too (half-close kept). */
async function echoBackend(): Promise<{ port: number; close(): Promise<void> }> {
  const server = net.createServer({ allowHalfOpen: true }, (sock) => {
    sock.on("error", () => {});
    sock.pipe(sock);
  });
  return { port: await listen(server), close: () => closeServer(server) };
}

/** TLS server that sends `body` to every connection, then closes (like nginx serving /big). */
async function tlsDownloadBackend(dir: string, hostname: string, body: Buffer): Promise<{ port: number; close(): Promise<void> }> {
  const pki = await loadOrCreateHubPki(path.join(dir, "site-dl"), [hostname]);
  const server = tls.createServer({ key: pki.hubKeyPem, cert: pki.hubCertPem }, (sock) => {
    sock.on("error", () => {});
    sock.end(body);
  });
  return { port: await listen(server), close: () => closeServer(server) };
}

/**
 * Sends `payload` (in 64 KiB writes, honouring backpressure), half-closes, and reads the
 * echo. `stallUntil`: the visitor reads nothing until that promise settles.
 */
function echoVisitor(port: number, payload: Buffer, stallUntil?: Promise<unknown>): Promise<Buffer[]> {
  return new Promise((resolve, reject) => {
    const got: Buffer[] = [];
    const s = net.connect({ port, host: "127.0.0.1", allowHalfOpen: true });
    if (stallUntil) {
      s.pause();
      void stallUntil.then(() => s.resume());
    }
    s.on("data", (c: Buffer) => got.push(c));
    s.on("error", reject);
    s.on("close", () => resolve(got));
    s.once("connect", () => {
      let off = 0;
      const pump = (): void => {
        while (off < payload.length) {
          const piece = payload.subarray(off, off + 64 * 1024);
          off += piece.length;
          if (!s.write(piece)) { s.once("drain", pump); return; }
        }
        s.end();
      };
      pump();
    });
  });
}

function tlsVisitor(port: number, servername: string, stallUntil?: Promise<unknown>): Promise<Buffer[]> {
  return new Promise((resolve, reject) => {
    const got: Buffer[] = [];
    const s = tls.connect({ port, host: "127.0.0.1", servername, rejectUnauthorized: false });
    if (stallUntil) {
      s.pause();
      void stallUntil.then(() => s.resume());
    }
    s.on("data", (c: Buffer) => got.push(c));
    s.on("error", reject);
    s.on("close", () => resolve(got));
  });
}

t.test("hub + cog, smallest window: 16 concurrent visitors, stalled readers, every byte checked by SHA-256", async (t) => {
  const dir = tmpDir();
  const hubCfg = hubConfig(dir, { listen: { tcp_ports: [`${TCP_PORT_LOW}-${TCP_PORT_HIGH}`] }, tunnel: tunnelTuning() });
  t.equal(hubCfg.tunnel.maxStreamWindowBytes, MIN_STREAM_WINDOW_BYTES, "hub uses the reduced window");
  const hub = await startTestHub(hubCfg);
  t.teardown(() => hub.close());

  const host = `dl.hp.${HUB_DOMAIN}`;
  const body = randomBytes(TRANSFER_BYTES);
  const echo = await echoBackend();
  const dl = await tlsDownloadBackend(dir, host, body);
  t.teardown(async () => { await echo.close(); await dl.close(); });

  const cogCfg = parseConfig({
    cog: {
      data_dir: path.join(dir, "cog-hp"),
      hub: `127.0.0.1:${hub.ports.tunnel}`,
      routes: [
        { name: "echo", kind: "tcp", target: `127.0.0.1:${echo.port}` },
        { name: "dl", kind: "tls", hostname: host, target: `127.0.0.1:${dl.port}` },
      ],
      reconnect: { min_delay: "100ms", max_delay: "500ms" },
      tunnel: tunnelTuning(),
      listen: { admin: "127.0.0.1:0" },
    },
  }).cog!;
  t.equal(cogCfg.tunnel.maxStreamWindowBytes, MIN_STREAM_WINDOW_BYTES, "cog uses the reduced window");
  const cog = await enrolledCog(hubCfg, hub, cogCfg, "hp");
  t.teardown(() => cog.close());
  const st = cog.client.status("echo");
  const echoPort = st.state === "accepted" ? st.port! : 0;
  t.ok(echoPort >= TCP_PORT_LOW && echoPort <= TCP_PORT_HIGH, `echo route got a hub port (${echoPort})`);

  await t.test("raw TCP echo both ways; two visitors read nothing until the other 14 are done", async (t) => {
    const payloads = Array.from({ length: VISITORS }, () => randomBytes(TRANSFER_BYTES));
    let othersDone!: () => void;
    const gate = new Promise<void>((r) => { othersDone = r; });
    const stalled = new Set([0, VISITORS - 1]);
    const others = payloads.map((p, i) => (stalled.has(i) ? null : echoVisitor(echoPort, p)));
    const slow = payloads.map((p, i) => (stalled.has(i) ? echoVisitor(echoPort, p, gate) : null));
    // A stalled visitor must not hold the session up: the others finish while it reads nothing.
    const fast = await Promise.all(others.filter((x) => x !== null));
    othersDone();
    const late = await Promise.all(slow.filter((x) => x !== null));
    const results: Buffer[][] = [];
    let f = 0;
    let l = 0;
    for (let i = 0; i < VISITORS; i++) results.push(stalled.has(i) ? late[l++]! : fast[f++]!);
    for (let i = 0; i < VISITORS; i++) {
      const got = results[i]!;
      t.equal(got.reduce((a, c) => a + c.length, 0), TRANSFER_BYTES, `visitor ${i}: every byte came back`);
      t.equal(sha256(got), sha256(payloads[i]!), `visitor ${i}: SHA-256 of the echo matches what it sent`);
    }
  });

  await t.test("TLS by SNI like the bench's bulk 16x: 16 downloads, one stalled until the rest finish", async (t) => {
    const want = sha256(body);
    let othersDone!: () => void;
    const gate = new Promise<void>((r) => { othersDone = r; });
    const stalledOne = tlsVisitor(hub.ports.tls!, host, gate);
    const rest = await Promise.all(Array.from({ length: VISITORS - 1 }, () => tlsVisitor(hub.ports.tls!, host)));
    othersDone();
    const all = [await stalledOne, ...rest];
    for (let i = 0; i < all.length; i++) {
      t.equal(all[i]!.reduce((a, c) => a + c.length, 0), TRANSFER_BYTES, `download ${i}: full size`);
      t.equal(sha256(all[i]!), want, `download ${i}: SHA-256 matches`);
    }
  });
});
