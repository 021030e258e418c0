/**
 * Denial of service on the tunnel port (issue 8, defect 2), each attack made on
 * real sockets against an in-process hub on 127.0.0.1:
 *  - a 1 MiB control message in 16-byte yamux frames (reassembly was quadratic);
 *  - tunnels that open their control stream and then say nothing, or trickle
 *    (the hello deadline was cleared when the stream opened);
 *  - pings from a peer that never reads (every pong was queued);
 *  - more unauthenticated connections than the caps allow, overall and per source.
 */
import t, { type Test } from "tap";
import { execFileSync } from "node:child_process";
import fs from "node:fs";
import http from "node:http";
import net from "node:net";
import path from "node:path";
import * as C from "../config/config.js";
import { DEFAULT_TUNNEL_LISTEN_BACKLOG, parseConfig } from "../config/config.js";
import type { HubConfig } from "../config/types.js";
import { startHub, type Hub } from "../gateway/hub.js";
import { MAX_UNAUTHENTICATED, MAX_UNAUTHENTICATED_PER_IP, sourceKey } from "../gateway/admission.js";
import { CONTROL_BURST, CONTROL_RATE_PER_SEC } from "../gateway/control.js";
import { RENEW_MIN_INTERVAL_MS } from "../gateway/issuance.js";
import { TUNNEL_LISTEN_BACKLOG } from "../gateway/tunnels.js";
import { MUX_DEFAULT_MAX_QUEUED_CONTROL_FRAMES } from "../protocol/mux.js";
import { Flag, FrameType, encodeHeader } from "../protocol/frame.js";
import { encodeMessage, messageReaderStats, MESSAGE_MAX_BYTES } from "../protocol/messages.js";
import { TUNNEL_PROTOCOL_VERSION } from "../protocol/control.js";
import { HUB_DOMAIN, tmpDir } from "./helpers/cluster.js";
import { capturingLogger, cogIdentity, rawTunnel, tlsTo, until, within } from "./helpers/rawpeer.js";

function hubCfg(dir: string, tunnel: Record<string, unknown> = {}): HubConfig {
  return parseConfig({
    hub: {
      data_dir: path.join(dir, "hub"),
      domain: HUB_DOMAIN,
      listen: { tls: "127.0.0.1:0", http: "127.0.0.1:0", tunnel: "127.0.0.1:0", tcp_host: "127.0.0.1", admin: "127.0.0.1:0" },
      tunnel: { keepalive_interval: "1s", keepalive_timeout: "3s", ...tunnel },
    },
  }).hub!;
}

async function setupHub(t: Test, tunnel: Record<string, unknown> = {}): Promise<{ cfg: HubConfig; hub: Hub; lines: string[] }> {
  const dir = tmpDir("capsul-dos-");
  t.teardown(() => fs.rmSync(dir, { recursive: true, force: true }));
  const cfg = hubCfg(dir, tunnel);
  const { log, lines } = capturingLogger("hub");
  const hub = await startHub(cfg, log);
  t.teardown(() => hub.close());
  return { cfg, hub, lines };
}

/** GET on the hub's HTTP port for a name nobody routes: the hub itself answers 404. */
function httpStatus(port: number): Promise<number> {
  return new Promise((resolve, reject) => {
    const req = http.get({ host: "127.0.0.1", port, path: "/", headers: { host: `nobody.${HUB_DOMAIN}` } }, (res) => {
      res.resume();
      resolve(res.statusCode ?? 0);
    });
    req.on("error", reject);
  });
}

/** A plain TCP connection to the tunnel port from `localAddress`; `closed` settles when it ends. */
async function tcpTo(t: Test, port: number, localAddress: string): Promise<{ sock: net.Socket; closed: Promise<void> }> {
  const sock = net.connect({ host: "127.0.0.1", port, localAddress });
  t.teardown(() => sock.destroy());
  sock.on("error", () => {});
  const closed = new Promise<void>((resolve) => sock.once("close", () => resolve()));
  await new Promise<void>((resolve, reject) => { sock.once("connect", resolve); sock.once("close", () => reject(new Error("refused"))); });
  return { sock, closed };
}

t.test("the defaults in config/config.ts are the constants the modules name", async (t) => {
  t.equal(C.DEFAULT_MAX_UNAUTHENTICATED, MAX_UNAUTHENTICATED);
  t.equal(C.DEFAULT_MAX_UNAUTHENTICATED_PER_IP, MAX_UNAUTHENTICATED_PER_IP);
  t.equal(C.DEFAULT_CONTROL_RATE_PER_SEC, CONTROL_RATE_PER_SEC);
  t.equal(C.DEFAULT_CONTROL_BURST, CONTROL_BURST);
  t.equal(C.DEFAULT_RENEW_MIN_INTERVAL_MS, RENEW_MIN_INTERVAL_MS);
  t.equal(C.DEFAULT_MAX_QUEUED_CONTROL_FRAMES, MUX_DEFAULT_MAX_QUEUED_CONTROL_FRAMES);
});

t.test("sources: IPv4 as is, IPv4-mapped as IPv4, IPv6 by its /64", async (t) => {
  t.equal(sourceKey("203.0.113.7"), "203.0.113.7");
  t.equal(sourceKey("::ffff:203.0.113.7"), "203.0.113.7");
  t.equal(sourceKey("2001:db8:1:2:aaaa::1"), "2001:db8:1:2::/64");
  t.equal(sourceKey("2001:db8:1:2:bbbb:cccc:dddd:eeee"), "2001:db8:1:2::/64", "the same /64");
  t.equal(sourceKey("2001:db8::1"), "2001:db8:0:0::/64");
  t.equal(sourceKey("::1"), "0:0:0:0::/64");
  t.equal(sourceKey("fe80::1%eth0"), "fe80:0:0:0::/64");
  t.not(sourceKey("2001:db8:1:3::1"), sourceKey("2001:db8:1:2::1"), "another /64");
});

t.test("a 1 MiB hello in 16-byte frames: every byte copied at most once, the HTTP port answers meanwhile", async (t) => {
  // A long hello deadline: this test is about the work, not the clock.
  const { cfg, hub } = await setupHub(t, { control_hello_timeout: "10m" });
  const id = await cogIdentity(cfg, hub, "big");
  const raw = await rawTunnel(t, hub.ports.tunnel, id, { maxFramePayloadBytes: 16 });
  const hello = { type: "hello", protocol: TUNNEL_PROTOCOL_VERSION, software: "test", routes: [], pad: "" };
  hello.pad = "x".repeat(MESSAGE_MAX_BYTES - encodeMessage(hello).length + 4);
  const msg = encodeMessage(hello);
  t.equal(msg.length, MESSAGE_MAX_BYTES + 4, "the largest message there is");
  const before = messageReaderStats.copiedBytes;
  // Half of it, then the HTTP port, then the rest: 65,536 frames of 16 bytes in all.
  const half = msg.length / 2;
  raw.control.write(msg.subarray(0, half));
  t.equal(await within(httpStatus(hub.ports.http!), "the HTTP port answering mid-message", 60_000), 404, "the HTTP port answers while the message trickles in");
  raw.control.write(msg.subarray(half));
  const welcome = await within(raw.reader.next(), "the welcome", 120_000);
  t.equal(welcome?.type, "welcome", "the hub took the message");
  const copied = messageReaderStats.copiedBytes - before;
  t.ok(copied >= MESSAGE_MAX_BYTES, `the message was joined from its pieces (${copied} bytes copied)`);
  t.ok(copied <= 2 * msg.length, `${copied} bytes copied for a ${msg.length}-byte message (quadratic joining copied ~34 GB)`);
});

t.test("the hello deadline runs until the first complete control message", async (t) => {
  const { cfg, hub, lines } = await setupHub(t, { control_hello_timeout: "300ms" });
  const id = await cogIdentity(cfg, hub, "slow");
  // Ten strangers open the control stream and say nothing; one cog trickles its hello a byte at a time.
  // Their mux sessions answer the hub's keepalive pings, so only the deadline can end them.
  const silent = await Promise.all(Array.from({ length: 10 }, () => rawTunnel(t, hub.ports.tunnel)));
  const trickler = await rawTunnel(t, hub.ports.tunnel, id);
  const hello = encodeMessage({ type: "hello", protocol: TUNNEL_PROTOCOL_VERSION, software: "test", routes: [] });
  let sent = 0;
  const drip = setInterval(() => { if (sent < hello.length - 1) trickler.control.write(hello.subarray(sent, ++sent)); }, 50);
  t.teardown(() => clearInterval(drip));
  const all = [...silent, trickler].map((r) => new Promise<void>((resolve) => (r.session.closed ? resolve() : r.session.once("close", () => resolve()))));
  await within(Promise.all(all), "all eleven tunnels closed by the hub", 30_000);
  t.ok(sent > 0 && sent < hello.length, `the trickler had sent ${sent} of ${hello.length} bytes`);
  t.ok(lines.some((l) => /tunnel closed: no control message in time/.test(l)), "the hub says why");
  t.equal(hub.tunnels.links.size, 0, "nobody got in");
  await until("the caps to be free again", () => hub.tunnels.admission.unauthenticated === 0);
});

t.test("pings from a peer that never reads: the hub ends the tunnel instead of queueing pongs", async (t) => {
  // No keepalive and no hello deadline: only the cap on queued control frames can end this.
  const { hub, lines } = await setupHub(t, { keepalive_interval: "1h", keepalive_timeout: "2h", control_hello_timeout: "1h" });
  const sock = await tlsTo(t, hub.ports.tunnel);
  sock.pause(); // never read: the pongs pile up in the kernel, then in the hub
  let closed = false;
  const gone = new Promise<void>((resolve) => sock.once("close", () => { closed = true; resolve(); }));
  // 1 MiB of Ping SYN frames per write, up to 64 MiB.
  const frames = 1024 * 1024 / 12 | 0;
  const chunk = Buffer.alloc(frames * 12);
  for (let i = 0; i < frames; i++) encodeHeader(FrameType.Ping, Flag.SYN, 0, i + 1, chunk, i * 12);
  let written = 0;
  while (!closed && written < 64) {
    if (!sock.write(chunk)) await Promise.race([new Promise((r) => sock.once("drain", r)), gone]);
    written++;
  }
  await within(gone, `the hub ending the tunnel (${written} MiB of pings written)`, 60_000);
  t.ok(written < 64, `closed after ${written} MiB of pings, not after all 64`);
  await until("the hub's log line", () => lines.some((l) => /not reading: more than \d+ control frames/.test(l)));
  t.pass("the hub says the peer is not reading");
  await until("the caps to be free again", () => hub.tunnels.admission.unauthenticated === 0);
});

t.test("caps on unauthenticated connections, overall and per source", async (t) => {
  // Long handshake and hello deadlines: the held connections stay as long as the test needs them.
  const { cfg, hub, lines } = await setupHub(t, { max_unauthenticated: 4, max_unauthenticated_per_ip: 2, handshake_timeout: "1h", control_hello_timeout: "1h" });
  const port = hub.ports.tunnel;
  const count = (): number => hub.tunnels.admission.unauthenticated;

  const a1 = await tcpTo(t, port, "127.0.0.1");
  const a2 = await tcpTo(t, port, "127.0.0.1");
  await until("two held connections", () => count() === 2);
  const over = await tcpTo(t, port, "127.0.0.1").catch(() => null);
  if (over) await within(over.closed, "a third connection from 127.0.0.1 closed at once", 10_000);
  t.pass("a third connection from the same source is closed");
  t.equal(count(), 2, "and was never counted");
  // More refusals from 127.0.0.1 are not logged again.
  for (let i = 0; i < 5; i++) {
    const more = await tcpTo(t, port, "127.0.0.1").catch(() => null);
    if (more) await within(more.closed, "an over-cap connection closed", 10_000);
  }
  const logged = lines.filter((l) => /tunnel connection refused/.test(l) && /source=127\.0\.0\.1 /.test(l));
  t.equal(logged.length, 1, "one log line for six refusals from 127.0.0.1");
  t.match(logged[0], /from this source \(hub\.tunnel\.max_unauthenticated_per_ip\) source=127\.0\.0\.1 limit=2/);

  await tcpTo(t, port, "127.0.0.2");
  await tcpTo(t, port, "127.0.0.2");
  await until("four held connections", () => count() === 4);
  const third = await tcpTo(t, port, "127.0.0.3").catch(() => null);
  if (third) await within(third.closed, "a connection from a new source closed at the overall cap", 10_000);
  t.pass("a new source is refused at the overall cap");
  t.ok(lines.some((l) => /too many unauthenticated tunnel connections \(hub\.tunnel\.max_unauthenticated\) source=127\.0\.0\.3 limit=4/.test(l)), "and logged");

  // A slot frees when its connection closes...
  a1.sock.destroy();
  await a1.closed;
  await until("a slot free", () => count() === 3);
  // ...and when a cog's hello is accepted: it is no longer a stranger.
  const id = await cogIdentity(cfg, hub, "known");
  const raw = await rawTunnel(t, port, id, {}, "127.0.0.1");
  await until("the cog counted while it has not said hello", () => count() === 4);
  raw.control.write(encodeMessage({ type: "hello", protocol: TUNNEL_PROTOCOL_VERSION, software: "test", routes: [] }));
  t.equal((await within(raw.reader.next(), "welcome", 10_000))?.type, "welcome");
  t.equal(count(), 3, "the authenticated cog left the count");
  const again = await tcpTo(t, port, "127.0.0.1");
  await until("127.0.0.1 admitted again", () => count() === 4);
  t.notOk(again.sock.destroyed, "admitted");
  void a2;
});

t.test("the tunnel port listens with a backlog of 1024, as the public ports", async (t) => {
  const { hub } = await setupHub(t);
  // ss shows a listening socket's backlog as its Send-Q (capped by net.core.somaxconn).
  const somaxconn = Number(fs.readFileSync("/proc/sys/net/core/somaxconn", "utf8"));
  const out = execFileSync("ss", ["-Hltn", `sport = :${hub.ports.tunnel}`], { encoding: "utf8" }).trim();
  const sendQ = Number(out.split(/\s+/)[2]);
  t.equal(sendQ, Math.min(TUNNEL_LISTEN_BACKLOG, somaxconn), `ss: ${out}`);
  t.equal(TUNNEL_LISTEN_BACKLOG, 1024);
  t.equal(DEFAULT_TUNNEL_LISTEN_BACKLOG, TUNNEL_LISTEN_BACKLOG, "config's default is the tunnel's constant");
});

t.test("hub.tunnel.listen_backlog sets the tunnel port's backlog", async (t) => {
  const { hub } = await setupHub(t, { listen_backlog: 77 });
  const out = execFileSync("ss", ["-Hltn", `sport = :${hub.ports.tunnel}`], { encoding: "utf8" }).trim();
  t.equal(Number(out.split(/\s+/)[2]), 77, `ss: ${out}`);
});
