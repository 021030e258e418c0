/**
 * The tunnel timeouts and caps of capsul.yaml take effect: hub.tunnel's
 * control_hello_timeout and revocation_poll_interval, cog.tunnel's
 * welcome_timeout, enroll_timeout, visitor_header_timeout and
 * visitor_header_max_bytes. Each is set far below its default, so a test that
 * passes cannot be the default at work. Real sockets on 127.0.0.1: an
 * in-process hub and cogs, or a stand-in hub that completes the TLS handshake
 * and then never answers.
 */
import t, { type Test } from "tap";
import { EventEmitter, once } from "node:events";
import fs from "node:fs";
import net from "node:net";
import path from "node:path";
import tls from "node:tls";
import * as C from "../config/config.js";
import { parseConfig } from "../config/config.js";
import type { CogConfig, HubConfig } from "../config/types.js";
import { createInvite, startHub, type Hub } from "../gateway/hub.js";
import { openHubStore } from "../gateway/store/index.js";
import { CONTROL_HELLO_TIMEOUT_MS, REVOCATION_POLL_MS } from "../gateway/tunnels.js";
import { TunnelClient, VISITOR_HEADER_MAX_BYTES, VISITOR_HEADER_TIMEOUT_MS, WELCOME_TIMEOUT_MS } from "../tunnel-client/client.js";
import { startCog, type Cog } from "../tunnel-client/cog.js";
import { enroll, ENROLL_TIMEOUT_MS } from "../tunnel-client/enroll.js";
import { createKeyAndCsr, loadOrCreateHubPki, signCogCsr, type HubPki } from "../certs/pki.js";
import { createLogger, silentLogger, type Logger } from "../lib/log.js";
import { RuntimeError } from "../lib/errors.js";
import { MuxSession, type MuxStream } from "../protocol/mux.js";
import { encodeMessage } from "../protocol/messages.js";
import type { VisitorHeader } from "../protocol/control.js";
import { closeServer, cogConfig, HUB_DOMAIN, listen, tmpDir } from "./helpers/cluster.js";

/** What each test sets its key to; every default is at least 20 times this. */
const SHORT = "200ms";
const SHORT_MS = 200;
/** Timers never fire early, but the two ends start their clocks a little apart. */
const SLACK_MS = 50;

/** A logger that keeps every line (and echoes them with CAPSUL_TEST_LOG=1). */
function capturingLogger(name: string): { log: Logger; lines: string[] } {
  const lines: string[] = [];
  const log = createLogger({
    level: "debug", component: name,
    write: (l) => { lines.push(l); if (process.env.CAPSUL_TEST_LOG) process.stderr.write(l + "\n"); },
  });
  return { log, lines };
}

/** Resolves when `p` settles, or rejects after `ms` naming `what` (a bound, not a timing assertion). */
function within<T>(p: Promise<T>, what: string, ms: number): Promise<T> {
  let timer: NodeJS.Timeout;
  const deadline = new Promise<never>((_, reject) => { timer = setTimeout(() => reject(new Error(`${what}: still pending after ${ms} ms`)), ms); });
  return Promise.race([p, deadline]).finally(() => clearTimeout(timer));
}

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

async function setupHub(t: Test, tunnel: Record<string, unknown> = {}): Promise<{ dir: string; cfg: HubConfig; hub: Hub; lines: string[] }> {
  const dir = tmpDir("capsul-timeouts-");
  t.teardown(() => fs.rmSync(dir, { recursive: true, force: true }));
  const cfg = hubCfg(dir, tunnel);
  const { log, lines } = capturingLogger("hub");
  const hub = await startHub(cfg, log);
  t.teardown(() => hub.close());
  return { dir, cfg, hub, lines };
}

/** Invites, enrolls and starts a cog, and waits until the hub has answered its routes. */
async function connectedCog(t: Test, hubConfig: HubConfig, hub: Hub, cfg: CogConfig, name: string): Promise<Cog> {
  const invite = await createInvite(hubConfig, name);
  await enroll({ hub: { host: "127.0.0.1", port: hub.ports.tunnel }, token: invite.token, caFingerprint: invite.caFingerprint, dataDir: cfg.dataDir, tuning: cfg.tunnel });
  const cog = await startCog(cfg, capturingLogger(`cog-${name}`).log);
  t.teardown(() => cog.close());
  await within(new Promise<void>((resolve) => cog.client.once("routes", () => resolve())), `cog ${name} connected`, 10_000);
  return cog;
}

/**
 * A stand-in hub: the hub's TLS certificate and CA, yamux on top, and then
 * silence. Records when each control stream arrived and when its tunnel closed.
 */
interface SilentTunnel { streamAt: Promise<number>; closedAt: Promise<number> }

async function silentHub(t: Test, pki: HubPki): Promise<{ port: number; tunnels: SilentTunnel[]; tunnel(i: number): Promise<SilentTunnel> }> {
  const tunnels: SilentTunnel[] = [];
  const arrived = new EventEmitter();
  const sessions = new Set<MuxSession>();
  const server = tls.createServer({
    key: pki.hubKeyPem, cert: pki.hubCertPem + "\n" + pki.caCertPem, ca: pki.caCertPem,
    requestCert: true, rejectUnauthorized: false, minVersion: "TLSv1.3",
  }, (sock) => {
    sock.on("error", () => {});
    const session = new MuxSession(sock, { role: "server", keepaliveIntervalMs: 0 });
    sessions.add(session);
    session.on("error", () => {});
    const streamAt = new Promise<number>((resolve) => session.once("stream", (s: MuxStream) => {
      resolve(Date.now());
      s.on("error", () => {});
      s.resume(); // read the hello or enroll message, answer nothing
    }));
    const closedAt = new Promise<number>((resolve) => session.once("close", () => { sessions.delete(session); resolve(Date.now()); }));
    tunnels.push({ streamAt, closedAt });
    arrived.emit("tunnel");
  });
  /** The i-th tunnel (0-based), once it has connected. */
  const tunnel = async (i: number): Promise<SilentTunnel> => {
    while (tunnels.length <= i) await once(arrived, "tunnel");
    return tunnels[i]!;
  };
  const port = await listen(server);
  t.teardown(async () => {
    for (const s of sessions) s.destroy();
    await closeServer(server);
  });
  return { port, tunnels, tunnel };
}

t.test("the config defaults are the constants the modules name", async (t) => {
  t.equal(C.DEFAULT_CONTROL_HELLO_TIMEOUT_MS, CONTROL_HELLO_TIMEOUT_MS);
  t.equal(C.DEFAULT_REVOCATION_POLL_INTERVAL_MS, REVOCATION_POLL_MS);
  t.equal(C.DEFAULT_WELCOME_TIMEOUT_MS, WELCOME_TIMEOUT_MS);
  t.equal(C.DEFAULT_ENROLL_TIMEOUT_MS, ENROLL_TIMEOUT_MS);
  t.equal(C.DEFAULT_VISITOR_HEADER_TIMEOUT_MS, VISITOR_HEADER_TIMEOUT_MS);
  t.equal(C.DEFAULT_VISITOR_HEADER_MAX_BYTES, VISITOR_HEADER_MAX_BYTES);
  // The shortened values below must really be far from the defaults.
  for (const ms of [CONTROL_HELLO_TIMEOUT_MS, WELCOME_TIMEOUT_MS, ENROLL_TIMEOUT_MS, VISITOR_HEADER_TIMEOUT_MS]) t.ok(ms >= 20 * SHORT_MS);
});

t.test("the least visitor_header_max_bytes holds the largest header a hub sends", async (t) => {
  const worst: VisitorHeader = {
    type: "visitor", kind: "http",
    route: "r".repeat(64), // protocol/control.ts checkWireRoutes: route names are at most 64 characters
    host: `${"a".repeat(63)}.${"b".repeat(63)}.${"c".repeat(63)}.${"d".repeat(61)}`, // 253: the longest hostname
    // The longest IPv6 text (45 characters) plus a zone id ("%" + an interface name of at most 15).
    srcAddr: `ffff:ffff:ffff:ffff:ffff:ffff:255.255.255.255%${"e".repeat(15)}`, srcPort: 65535,
    dstAddr: `ffff:ffff:ffff:ffff:ffff:ffff:255.255.255.255%${"e".repeat(15)}`, dstPort: 65535,
  };
  const body = encodeMessage(worst).length - 4; // the cap counts the JSON, not the 4-byte length prefix
  t.ok(body < 600, `largest header is ${body} bytes (config.ts says under 600)`);
  t.ok(body <= C.MIN_VISITOR_HEADER_MAX_BYTES, `${body} <= MIN_VISITOR_HEADER_MAX_BYTES (${C.MIN_VISITOR_HEADER_MAX_BYTES})`);
});

t.test("hub.tunnel.control_hello_timeout: a silent tunnel connection is closed after it", async (t) => {
  const { hub, lines } = await setupHub(t, { control_hello_timeout: SHORT });
  const sock = tls.connect({ host: "127.0.0.1", port: hub.ports.tunnel, rejectUnauthorized: false, minVersion: "TLSv1.3" });
  t.teardown(() => sock.destroy());
  sock.on("error", () => {}); // the hub may reset rather than close
  const connectedAt = await new Promise<number>((resolve) => sock.once("secureConnect", () => resolve(Date.now())));
  const closedAt = await within(new Promise<number>((resolve) => sock.once("close", () => resolve(Date.now()))), "silent tunnel closed", CONTROL_HELLO_TIMEOUT_MS / 2);
  const elapsed = closedAt - connectedAt;
  t.ok(elapsed >= SHORT_MS - SLACK_MS, `closed after ${elapsed} ms, not before ${SHORT}`);
  t.ok(elapsed < CONTROL_HELLO_TIMEOUT_MS / 2, `closed after ${elapsed} ms, long before the ${CONTROL_HELLO_TIMEOUT_MS} ms default`);
  t.ok(lines.some((l) => /tunnel closed: no control message in time/.test(l)), "the hub says why");
});

t.test("hub.tunnel.revocation_poll_interval: a revoked cog is dropped after it, not before", async (t) => {
  t.test("short interval: dropped", async (t) => {
    const { dir, cfg, hub } = await setupHub(t, { revocation_poll_interval: "20ms" });
    const cog = await connectedCog(t, cfg, hub, cogConfig(dir, "quick", hub.ports.tunnel, []), "quick");
    const dropped = new Promise<void>((resolve) => cog.client.once("disconnected", () => resolve()));
    const state = await openHubStore(cfg, silentLogger); // another process's connection, as `capsul hub revoke`
    t.teardown(() => state.close());
    t.ok(await state.revokeCog("quick"));
    await within(dropped, "revoked cog dropped", 5_000);
    t.notOk(hub.tunnels.links.has("quick"), "the hub holds no link for it");
  });

  t.test("long interval: not yet dropped after three default intervals", async (t) => {
    const { dir, cfg, hub } = await setupHub(t, { revocation_poll_interval: "1h" });
    const cog = await connectedCog(t, cfg, hub, cogConfig(dir, "slow", hub.ports.tunnel, []), "slow");
    let dropped = false;
    cog.client.once("disconnected", () => { dropped = true; });
    const state = await openHubStore(cfg, silentLogger);
    t.teardown(() => state.close());
    t.ok(await state.revokeCog("slow"));
    // Proving an absence needs a wait: with the default the cog would be gone within one REVOCATION_POLL_MS.
    await new Promise((r) => setTimeout(r, 3 * REVOCATION_POLL_MS));
    t.notOk(dropped, "still connected");
    t.ok(hub.tunnels.links.get("slow")?.session, "the hub still holds its session");
  });
});

t.test("cog.tunnel.welcome_timeout: a hub that never answers the hello is left and redialed", async (t) => {
  const dir = tmpDir("capsul-timeouts-");
  t.teardown(() => fs.rmSync(dir, { recursive: true, force: true }));
  const pki = await loadOrCreateHubPki(path.join(dir, "fake-hub"), ["127.0.0.1"]);
  const fake = await silentHub(t, pki);
  const { keyPem, csrPem } = await createKeyAndCsr("capsul cog");
  const signed = await signCogCsr(pki, csrPem, "waiter", { validityMs: 86_400_000 });
  const cfg = cogConfig(dir, "waiter", fake.port, [], { welcome_timeout: SHORT });
  const { log, lines } = capturingLogger("cog");
  const client = new TunnelClient(cfg, {
    name: "waiter", hub: `127.0.0.1:${fake.port}`, hubDomain: HUB_DOMAIN, caFingerprint: pki.caFingerprint,
    keyPem, certPem: signed.certPem, caPem: pki.caCertPem,
  }, { host: "127.0.0.1", port: fake.port }, log);
  client.start();
  t.teardown(() => client.close());

  const first = await within(fake.tunnel(0), "first tunnel", 10_000);
  const helloAt = await within(first.streamAt, "hello stream", 10_000);
  const closedAt = await within(first.closedAt, "first tunnel closed by the cog", WELCOME_TIMEOUT_MS / 2);
  const elapsed = closedAt - helloAt;
  t.ok(elapsed >= SHORT_MS - SLACK_MS, `left after ${elapsed} ms, not before ${SHORT}`);
  t.ok(elapsed < WELCOME_TIMEOUT_MS / 2, `left after ${elapsed} ms, long before the ${WELCOME_TIMEOUT_MS} ms default`);
  t.ok(lines.some((l) => /the hub did not answer the hello in time/.test(l)), "the cog says why");
  await within(fake.tunnel(1), "the cog redials", 5_000);
  t.not(client.state, "connected");
});

t.test("cog.tunnel.enroll_timeout: enrollment against a hub that never answers fails after it", async (t) => {
  const dir = tmpDir("capsul-timeouts-");
  t.teardown(() => fs.rmSync(dir, { recursive: true, force: true }));
  const pki = await loadOrCreateHubPki(path.join(dir, "fake-hub"), ["127.0.0.1"]);
  const fake = await silentHub(t, pki);
  const cfg = cogConfig(dir, "late", fake.port, [], { enroll_timeout: SHORT });
  const dataDir = path.join(dir, "cog-late");
  const failed = enroll({ hub: { host: "127.0.0.1", port: fake.port }, token: "never-answered", caFingerprint: pki.caFingerprint, dataDir, tuning: cfg.tunnel })
    .then(() => { throw new Error("enrollment succeeded"); }, (err: unknown) => ({ err, at: Date.now() }));
  const { err, at } = await within(failed, "enrollment failed", ENROLL_TIMEOUT_MS / 2);
  t.type(err, RuntimeError);
  t.equal((err as Error).message, "the hub did not answer the enrollment in time");
  const elapsed = at - await (await fake.tunnel(0)).streamAt;
  t.ok(elapsed >= SHORT_MS - SLACK_MS, `gave up after ${elapsed} ms, not before ${SHORT}`);
  t.ok(elapsed < ENROLL_TIMEOUT_MS / 2, `gave up after ${elapsed} ms, long before the ${ENROLL_TIMEOUT_MS} ms default`);
  t.notOk(fs.existsSync(path.join(dataDir, "enrollment.json")), "nothing stored");
});

t.test("cog.tunnel.visitor_header_timeout and visitor_header_max_bytes, on streams the hub opens", async (t) => {
  // A backend that answers "hello" with "backend: hello" and ends; its connection
  // closes once the visitor's FIN has reached it too.
  let backendConns = 0;
  const backendClosed = new EventEmitter();
  const backend = net.createServer((s) => {
    backendConns++;
    s.on("error", () => {});
    s.on("data", (d: Buffer) => s.end(`backend: ${d.toString()}`));
    s.on("close", () => backendClosed.emit("close"));
  });
  const backendPort = await listen(backend);
  t.teardown(() => closeServer(backend));

  const { dir, cfg, hub } = await setupHub(t);
  const route = (cog: string) => [{ name: "web", kind: "http", hostname: `web.${cog}.${HUB_DOMAIN}`, target: `127.0.0.1:${backendPort}` }];
  // "tight" shortens both; "roomy" keeps the defaults.
  await connectedCog(t, cfg, hub, cogConfig(dir, "tight", hub.ports.tunnel, route("tight"), { visitor_header_timeout: SHORT, visitor_header_max_bytes: "1KiB" }), "tight");
  await connectedCog(t, cfg, hub, cogConfig(dir, "roomy", hub.ports.tunnel, route("roomy")), "roomy");

  /** Opens a visitor stream from the hub's end of `cog`'s tunnel, as the hub's visitors.ts does. */
  const openStream = (cog: string): MuxStream => {
    const session = hub.tunnels.sessionFor(cog);
    if (!(session instanceof MuxSession)) throw new Error(`no live session for ${cog}`);
    const s = session.open();
    s.on("error", () => {});
    return s;
  };
  /** Everything the stream delivers until it closes, and when it closed. */
  const drain = (s: MuxStream): Promise<{ text: string; at: number }> => new Promise((resolve) => {
    const chunks: Buffer[] = [];
    s.on("data", (c: Buffer) => chunks.push(c));
    s.once("close", () => resolve({ text: Buffer.concat(chunks).toString(), at: Date.now() }));
  });

  t.test("a stream without a header is reset after visitor_header_timeout", async (t) => {
    const s = openStream("tight");
    const openedAt = Date.now();
    const { text, at } = await within(drain(s), "header-less stream closed", VISITOR_HEADER_TIMEOUT_MS / 2);
    const elapsed = at - openedAt;
    t.equal(text, "");
    t.ok(elapsed >= SHORT_MS - SLACK_MS, `reset after ${elapsed} ms, not before ${SHORT}`);
    t.ok(elapsed < VISITOR_HEADER_TIMEOUT_MS / 2, `reset after ${elapsed} ms, long before the ${VISITOR_HEADER_TIMEOUT_MS} ms default`);
  });

  // A 1.5 KiB header: over tight's 1KiB cap, under the 4KiB default.
  const header = (cog: string): Buffer => encodeMessage({
    type: "visitor", kind: "http", route: "web", host: `web.${cog}.${HUB_DOMAIN}`,
    srcAddr: "127.0.0.1", srcPort: 40000, dstAddr: "127.0.0.1", dstPort: 80, padding: "x".repeat(1500),
  });

  t.test("a header over visitor_header_max_bytes is refused; the default takes it", async (t) => {
    const before = backendConns;
    const refused = openStream("tight");
    const refusedDone = drain(refused);
    refused.end(Buffer.concat([header("tight"), Buffer.from("hello")]));
    const r = await within(refusedDone, "over-cap stream closed", VISITOR_HEADER_TIMEOUT_MS / 2);
    t.equal(r.text, "", "nothing came back");

    const taken = openStream("roomy");
    const takenDone = drain(taken);
    const closed = once(backendClosed, "close");
    // Header, bytes and FIN in one go: the FIN reaches the cog before its target connects.
    taken.end(Buffer.concat([header("roomy"), Buffer.from("hello")]));
    const ok = await within(takenDone, "under-cap stream answered", 10_000);
    t.equal(ok.text, "backend: hello", "the same header under the default cap reaches the backend");
    t.equal(backendConns, before + 1, "only the roomy cog dialed the backend");
    await within(closed, "backend connection closed (the visitor's early FIN was passed on)", 5_000);
    t.pass("the backend connection closed: the visitor's FIN, sent with the header, reached it");
  });
});
