/**
 * The hub's and the cog's /metrics, scraped over their real admin listeners and read
 * by a strict exposition-format parser, while real visitors (curl, raw sockets, node's
 * TLS client) go through a real hub and cog on loopback. Counters must move by exactly
 * the number of visitors and bytes sent; a name nobody routes must never become a label.
 */
import t, { type Test } from "tap";
import { randomBytes } from "node:crypto";
import { X509Certificate } from "node:crypto";
import fs from "node:fs";
import net from "node:net";
import path from "node:path";
import tls from "node:tls";
import type { HubConfig } from "../config/types.js";
import { createInvite, type Hub } from "../gateway/hub.js";
import { newInviteToken } from "../certs/tokens.js";
import { encodeMessage } from "../protocol/messages.js";
import { TUNNEL_PROTOCOL_VERSION } from "../protocol/control.js";
import type { Cog } from "../tunnel-client/cog.js";
import { enroll } from "../tunnel-client/enroll.js";
import { CERT_FILE } from "../tunnel-client/identity.js";
import { closeServer, cogConfig, enrolledCog, httpBackend, HUB_DOMAIN, hubConfig, listen, startTestHub, tlsBackend, tmpDir } from "./helpers/cluster.js";
import { curl, freePortRange, waitFor } from "./helpers/procs.js";
import { parsePromText, PromParseError, type Scrape } from "./helpers/promtext.js";
import { adminJson, adminRequest, rawExchange, scrape } from "./helpers/adminclient.js";
import { rawTunnel, within } from "./helpers/rawpeer.js";
import { startPostgres } from "./helpers/pgcluster.js";

const WEB = `web.c1.${HUB_DOMAIN}`;
const BLOG = `blog.c1.${HUB_DOMAIN}`;
const ECHO = { cog: "c1", route: "echo", kind: "tcp" };

async function echoBackend(t: Test): Promise<number> {
  const server = net.createServer({ allowHalfOpen: true }, (s) => { s.on("error", () => {}); s.pipe(s); });
  const port = await listen(server);
  t.teardown(() => closeServer(server));
  return port;
}

/** Sends `payload`, half-closes, and resolves with everything read until the server closes. */
function echoSession(port: number, payload: Buffer): Promise<Buffer> {
  return new Promise((resolve, reject) => {
    const s = net.connect({ port, host: "127.0.0.1", allowHalfOpen: true }, () => s.end(payload));
    const chunks: Buffer[] = [];
    s.on("data", (c: Buffer) => chunks.push(c));
    s.on("error", reject);
    s.on("close", () => resolve(Buffer.concat(chunks)));
  });
}

/** An HTTP/1.0 exchange on a raw socket: the exact bytes each way. */
async function httpExchange(port: number, host: string): Promise<{ sent: number; received: number; text: string }> {
  const req = `GET /x HTTP/1.0\r\nHost: ${host}\r\n\r\n`;
  const text = await rawExchange(port, req);
  return { sent: Buffer.byteLength(req), received: Buffer.byteLength(text, "latin1"), text };
}

interface Cluster { dir: string; cfg: HubConfig; hub: Hub; cog: Cog; admin: number; echoPort: number; caFile: string; echoTarget: number }

async function cluster(t: Test, hubExtra: Record<string, unknown> = {}): Promise<Cluster> {
  const dir = tmpDir("capsul-metrics-");
  t.teardown(() => fs.rmSync(dir, { recursive: true, force: true }));
  const pool = await freePortRange(4);
  const hubCfg = hubConfig(dir, { ...hubExtra, listen: { tcp_ports: [pool.spec] } });
  const hub = await startTestHub(hubCfg);
  t.teardown(() => hub.close());
  const web = await tlsBackend(dir, WEB, "web");
  const blog = await httpBackend("blog");
  t.teardown(async () => { await web.close(); await blog.close(); });
  const echoTarget = await echoBackend(t);
  const cogCfg = cogConfig(dir, "c1", hub.ports.tunnel, [
    { name: "web", kind: "tls", hostname: WEB, target: `127.0.0.1:${web.port}` },
    { name: "blog", kind: "http", hostname: BLOG, target: `127.0.0.1:${blog.port}` },
    { name: "echo", kind: "tcp", target: `127.0.0.1:${echoTarget}` },
  ]);
  const cog = await enrolledCog(hubCfg, hub, cogCfg, "c1");
  t.teardown(() => cog.close());
  const st = cog.client.status("echo");
  if (st.state !== "accepted" || !st.port) throw new Error(`echo route not accepted: ${JSON.stringify(st)}`);
  return { dir, cfg: hubCfg, hub, cog, admin: hub.ports.admin!, echoPort: st.port, caFile: web.caFile, echoTarget };
}

const delta = (a: Scrape, b: Scrape, name: string, labels: Record<string, string> = {}): number => b.n(name, labels) - a.n(name, labels);

t.test("the strict parser refuses what a scraper would misread", async (t) => {
  const good = "# HELP a_total x\n# TYPE a_total counter\na_total{k=\"v\\\"q\\\\\\n\"} 3\n\n# TYPE h histogram\nh_bucket{le=\"1\"} 1\nh_bucket{le=\"+Inf\"} 2\nh_sum 3.5\nh_count 2\n";
  const fams = parsePromText(good);
  t.equal(fams.get("a_total")!.samples[0]!.labels.k, "v\"q\\\n", "escapes decoded");
  const bad: [string, string, RegExp][] = [
    ["no TYPE", "a 1\n", /has no # TYPE/],
    ["series twice", "# TYPE a gauge\na{x=\"1\"} 1\na{x=\"1\"} 2\n", /twice/],
    ["bad escape", "# TYPE a gauge\na{x=\"\\t\"} 1\n", /bad escape/],
    ["negative counter", "# TYPE a counter\na -1\n", /counter/],
    ["not contiguous", "# TYPE a gauge\n# TYPE b gauge\nb 1\na 1\n", /not contiguous/],
    ["+Inf != count", "# TYPE h histogram\nh_bucket{le=\"+Inf\"} 2\nh_sum 1\nh_count 3\n", /!= _count/],
    ["buckets decrease", "# TYPE h histogram\nh_bucket{le=\"1\"} 2\nh_bucket{le=\"+Inf\"} 1\nh_sum 1\nh_count 1\n", /decrease/],
    ["no trailing newline", "# TYPE a gauge\na 1", /newline/],
    ["bad value", "# TYPE a gauge\na one\n", /not a number/],
    ["TYPE twice", "# TYPE a gauge\n# TYPE a gauge\n", /second TYPE/],
  ];
  for (const [what, text, re] of bad) t.throws(() => parsePromText(text), { constructor: PromParseError, message: re }, what);
});

t.test("hub /metrics: counters move by exactly the visitors and bytes that went through", async (t) => {
  const c = await cluster(t);
  const tlsPort = c.hub.ports.tls!;
  const httpPort = c.hub.ports.http!;
  const before = await scrape(c.admin);
  t.equal(before.value("capsul_hub_connections_total", { cog: "c1", route: "web", kind: "tls" }), 0, "a held route is reported before its first visitor");

  const N_TLS = 3;
  for (let i = 0; i < N_TLS; i++) {
    const r = await curl(["--resolve", `${WEB}:${tlsPort}:127.0.0.1`, "--cacert", c.caFile, `https://${WEB}:${tlsPort}/`]);
    t.equal(r.code, 0, r.stderr);
    t.match(r.stdout, /^web /);
  }
  const N_HTTP = 4;
  let httpSent = 0;
  let httpReceived = 0;
  for (let i = 0; i < N_HTTP; i++) {
    const x = await httpExchange(httpPort, BLOG);
    t.match(x.text, /^HTTP\/1\.1 200 /);
    httpSent += x.sent;
    httpReceived += x.received;
  }
  const payloads = [1, 1000, 70_000, 300_000, 5].map((n) => randomBytes(n));
  for (const p of payloads) t.ok((await echoSession(c.echoPort, p)).equals(p), `echo of ${p.length} bytes`);
  const tcpBytes = payloads.reduce((s, p) => s + p.length, 0);

  const after = await scrape(c.admin);
  const total = N_TLS + N_HTTP + payloads.length;
  t.equal(delta(before, after, "capsul_hub_visitors_total"), total, `${total} visitors`);
  t.equal(delta(before, after, "capsul_hub_routing_total", { outcome: "routed" }), total, "all routed");
  for (const o of ["no_route", "cog_offline", "over_limit"]) t.equal(delta(before, after, "capsul_hub_routing_total", { outcome: o }), 0, `${o} unchanged`);
  t.equal(delta(before, after, "capsul_hub_peeks_total", { listener: "tls", outcome: "ok" }), N_TLS);
  t.equal(delta(before, after, "capsul_hub_peeks_total", { listener: "http", outcome: "ok" }), N_HTTP);
  t.equal(delta(before, after, "capsul_hub_connections_total", { cog: "c1", route: "web", kind: "tls" }), N_TLS);
  t.equal(delta(before, after, "capsul_hub_connections_total", { cog: "c1", route: "blog", kind: "http" }), N_HTTP);
  t.equal(delta(before, after, "capsul_hub_connections_total", ECHO), payloads.length);
  // Exact bytes: what the raw sockets wrote and read, byte for byte.
  t.equal(delta(before, after, "capsul_hub_bytes_total", { cog: "c1", route: "blog", kind: "http", direction: "received" }), httpSent);
  t.equal(delta(before, after, "capsul_hub_bytes_total", { cog: "c1", route: "blog", kind: "http", direction: "sent" }), httpReceived);
  t.equal(delta(before, after, "capsul_hub_bytes_total", { ...ECHO, direction: "received" }), tcpBytes);
  t.equal(delta(before, after, "capsul_hub_bytes_total", { ...ECHO, direction: "sent" }), tcpBytes);
  t.ok(delta(before, after, "capsul_hub_bytes_total", { cog: "c1", route: "web", kind: "tls", direction: "sent" }) > 1000, "TLS bytes counted (handshake + page)");
  // One first-byte observation per visitor that got an answer.
  t.equal(after.n("capsul_hub_first_byte_seconds_count", { kind: "tls" }), N_TLS);
  t.equal(after.n("capsul_hub_first_byte_seconds_count", { kind: "http" }), N_HTTP);
  t.equal(after.n("capsul_hub_first_byte_seconds_count", { kind: "tcp" }), payloads.length);
  t.ok(after.n("capsul_hub_first_byte_seconds_sum", { kind: "tls" }) > 0);
  t.equal(after.value("capsul_hub_tunnels"), 1);
  t.equal(after.value("capsul_hub_cog_up", { cog: "c1" }), 1);

  // The cog's own /metrics (cog.listen.admin) saw the same streams and bytes at its end.
  const cogM = await scrape(c.cog.admin!.port);
  t.equal(cogM.value("capsul_cog_tunnel_up"), 1);
  t.equal(cogM.value("capsul_cog_routes", { state: "accepted" }), 3);
  t.equal(cogM.value("capsul_cog_streams_total", { route: "echo" }), payloads.length);
  t.equal(cogM.value("capsul_cog_streams_total", { route: "blog" }), N_HTTP);
  t.equal(cogM.value("capsul_cog_bytes_total", { route: "echo", direction: "to_target" }), tcpBytes);
  t.equal(cogM.value("capsul_cog_bytes_total", { route: "echo", direction: "from_target" }), tcpBytes);
  t.equal(cogM.value("capsul_cog_bytes_total", { route: "blog", direction: "to_target" }), httpSent, "the backend got exactly the visitors' requests");
});

t.test("the cog keeps counting its streams after a reload (the visitor hook survives TunnelClient.reconfigure)", async (t) => {
  const c = await cluster(t);
  const payload = randomBytes(1234);
  t.ok((await echoSession(c.echoPort, payload)).equals(payload));
  const report = c.cog.reload({ ...c.cog.config, targetDialTimeoutMs: c.cog.config.targetDialTimeoutMs + 1000 });
  t.same(report.changed, ["cog.target_dial_timeout"]);
  t.ok((await echoSession(c.echoPort, payload)).equals(payload));
  const cogM = await scrape(c.cog.admin!.port);
  t.equal(cogM.value("capsul_cog_streams_total", { route: "echo" }), 2, "both streams, before and after the reload");
  t.equal(cogM.value("capsul_cog_bytes_total", { route: "echo", direction: "to_target" }), 2 * payload.length);
});

t.test("live connections: counted while open, bytes read from the live sockets at scrape time", async (t) => {
  const c = await cluster(t);
  const before = await scrape(c.admin);
  const socks = await Promise.all([0, 1].map(() => new Promise<net.Socket>((resolve, reject) => {
    const s = net.connect({ port: c.echoPort, host: "127.0.0.1" }, () => s.write(Buffer.alloc(700, 7)));
    let got = 0;
    s.on("data", (d: Buffer) => { got += d.length; if (got === 700) resolve(s); });
    s.on("error", reject);
  })));
  const live = await scrape(c.admin);
  t.equal(live.value("capsul_hub_connections_active", ECHO), 2, "two open");
  t.equal(live.value("capsul_hub_visitors_active"), 2);
  t.equal(delta(before, live, "capsul_hub_bytes_total", { ...ECHO, direction: "received" }), 1400, "bytes of open connections");
  t.equal(delta(before, live, "capsul_hub_bytes_total", { ...ECHO, direction: "sent" }), 1400);
  const cogLive = await scrape(c.cog.admin!.port);
  t.equal(cogLive.value("capsul_cog_streams_active", { route: "echo" }), 2);

  for (const s of socks) s.end();
  await waitFor("the hub to see both visitors close", () => c.hub.visitors.stats.active === 0);
  const closed = await scrape(c.admin);
  t.equal(closed.value("capsul_hub_connections_active", ECHO), 0);
  t.equal(delta(before, closed, "capsul_hub_bytes_total", { ...ECHO, direction: "received" }), 1400, "the same total once closed");
});

t.test("peek outcomes: each bad or silent visitor moves exactly its own counter", async (t) => {
  const c = await cluster(t, { limits: { client_hello_timeout: "400ms", http_header_timeout: "400ms" } });
  const tlsPort = c.hub.ports.tls!;
  const httpPort = c.hub.ports.http!;
  const before = await scrape(c.admin);

  await rawExchange(tlsPort, "GET / HTTP/1.1\r\n\r\n"); // not a handshake record
  // A handshake header declaring 20 KiB: refused before it is read, as too large.
  await rawExchange(tlsPort, Buffer.from([22, 3, 1, 0x40, 0x00, 1, 0x00, 0x50, 0x00]));
  await rawExchange(tlsPort, Buffer.alloc(0)); // silent: the deadline closes it
  await new Promise<void>((resolve) => { // no SNI: node sends none when connecting to an IP
    const s = tls.connect({ host: "127.0.0.1", port: tlsPort, rejectUnauthorized: false });
    s.on("error", () => {});
    s.on("close", () => resolve());
  });
  await new Promise<void>((resolve) => { // connects and hangs up at once
    const s = net.connect({ port: tlsPort, host: "127.0.0.1" }, () => s.end());
    s.on("close", () => resolve());
  });
  t.match(await rawExchange(httpPort, "GET / HTTP/1.0\r\n\r\n"), /^HTTP\/1\.1 404 /, "no Host: 404");
  t.match(await rawExchange(httpPort, "NOT HTTP\r\n\r\n"), /^HTTP\/1\.1 400 /);
  // A head of exactly hub.limits.http_header_max_bytes (16 KiB) with no end is too large for
  // the peek; one of 20 KiB arriving at once is refused by the parser's own cap: too large too.
  const head = `GET / HTTP/1.1\r\nHost: ${BLOG}\r\n`;
  t.match(await rawExchange(httpPort, head + "X-Pad: " + "p".repeat(16 * 1024 - head.length - 7)), /^HTTP\/1\.1 431 /);
  const pad = Array.from({ length: 20 }, (_, i) => `X-Pad-${i}: ${"p".repeat(1000)}\r\n`).join("");
  t.match(await rawExchange(httpPort, head + pad), /^HTTP\/1\.1 4\d\d /);
  t.match(await rawExchange(httpPort, "GET / HTTP/1.1\r\n"), /^HTTP\/1\.1 408 /);
  t.match(await rawExchange(httpPort, "GET / HTTP/1.1\r\nHost: nobody.example\r\n\r\n"), /^HTTP\/1\.1 404 /);

  const want: Record<string, Record<string, number>> = {
    tls: { ok: 0, no_sni: 1, malformed: 1, too_large: 1, timeout: 1, closed: 1 },
    http: { ok: 1, no_host: 1, malformed: 1, too_large: 2, timeout: 1, closed: 0 },
  };
  const after = await waitFor("the hub to count the hang-up", async () => {
    const s = await scrape(c.admin);
    return delta(before, s, "capsul_hub_peeks_total", { listener: "tls", outcome: "closed" }) === 1 ? s : null;
  });
  for (const [listener, outcomes] of Object.entries(want)) {
    for (const [outcome, n] of Object.entries(outcomes)) {
      t.equal(delta(before, after, "capsul_hub_peeks_total", { listener, outcome }), n, `${listener} ${outcome} +${n}`);
    }
  }
  t.equal(delta(before, after, "capsul_hub_routing_total", { outcome: "no_route" }), 3, "no SNI, no Host, unknown Host");
  t.equal(delta(before, after, "capsul_hub_routing_total", { outcome: "routed" }), 0);
});

t.test("cardinality: names nobody routes never become labels", async (t) => {
  const c = await cluster(t);
  const before = await scrape(c.admin);
  const names = Array.from({ length: 12 }, () => `x${randomBytes(6).toString("hex")}.nobody.example`);
  for (const name of names.slice(0, 6)) {
    await new Promise<void>((resolve) => {
      const s = tls.connect({ host: "127.0.0.1", port: c.hub.ports.tls!, servername: name, rejectUnauthorized: false });
      s.on("error", () => {});
      s.on("close", () => resolve());
    });
  }
  for (const name of names.slice(6)) t.match(await rawExchange(c.hub.ports.http!, `GET / HTTP/1.1\r\nHost: ${name}\r\n\r\n`), /404/);
  const after = await scrape(c.admin);
  t.equal(delta(before, after, "capsul_hub_routing_total", { outcome: "no_route" }), names.length, "each was refused and counted");
  t.same([...after.seriesKeys()].sort(), [...before.seriesKeys()].sort(), "no new series");
  const leaked = names.filter((n) => after.text.includes(n) || [...after.labelValues()].some((v) => v.includes(n.split(".")[0]!)));
  t.same(leaked, [], "no visitor-sent name anywhere in /metrics");
});

t.test("tunnels: down, reconnect, and a withdrawn route is reported once more, then forgotten", async (t) => {
  const c = await cluster(t);
  const before = await scrape(c.admin);
  const cogBefore = await scrape(c.cog.admin!.port);
  t.equal(before.value("capsul_hub_tunnel_connects_total"), 1);
  t.equal(before.value("capsul_hub_tunnel_reconnects_total"), 0);
  const reconnected = new Promise<void>((resolve) => c.cog.client.once("connected", () => resolve()));
  c.hub.tunnels.links.get("c1")!.session!.destroy();
  await reconnected;
  const after = await waitFor("the hub to count the new tunnel", async () => {
    const s = await scrape(c.admin);
    return s.value("capsul_hub_tunnel_connects_total") === 2 ? s : null;
  });
  t.equal(delta(before, after, "capsul_hub_tunnel_disconnects_total"), 1);
  t.equal(delta(before, after, "capsul_hub_tunnel_reconnects_total"), 1);
  t.equal(after.value("capsul_hub_tunnels"), 1);
  t.equal(after.value("capsul_hub_cog_up", { cog: "c1" }), 1);
  const cogAfter = await scrape(c.cog.admin!.port);
  t.equal(delta(cogBefore, cogAfter, "capsul_cog_tunnel_connects_total"), 1);
  t.equal(delta(cogBefore, cogAfter, "capsul_cog_tunnel_disconnects_total"), 1);
  t.equal(delta(cogBefore, cogAfter, "capsul_cog_tunnel_reconnects_total"), 1);

  // A route published and withdrawn at run time (as the provisioner does for a VM).
  const routed = new Promise<void>((resolve) => c.cog.client.once("routes", () => resolve()));
  c.cog.client.publish("test", [{ name: "extra", kind: "tcp", target: { host: "127.0.0.1", port: c.echoTarget }, proxyProtocol: "none" }]);
  await routed;
  const st = c.cog.client.status("extra");
  if (st.state !== "accepted") throw new Error(`extra not accepted: ${JSON.stringify(st)}`);
  const extra = { cog: "c1", route: "extra", kind: "tcp" };
  t.equal((await scrape(c.admin)).value("capsul_hub_connections_total", extra), 0, "held, no visitor yet");
  t.same(await echoSession(st.port!, Buffer.from("hi")), Buffer.from("hi"));
  c.cog.client.withdraw("test");
  await waitFor("the hub to release the route", () => !c.hub.router.entriesOf("c1").some((e) => e.route === "extra"));
  await waitFor("the visitor to close", () => c.hub.visitors.stats.active === 0);
  const once = await scrape(c.admin);
  t.equal(once.value("capsul_hub_connections_total", extra), 1, "reported once more after it was withdrawn");
  const gone = await scrape(c.admin);
  t.equal(gone.value("capsul_hub_connections_total", extra), undefined, "then forgotten");
  t.equal(gone.value("capsul_hub_connections_total", ECHO), 0, "the held routes stay");
});

/** Certificate expiry and cog_up, the families read from the state store, on the store `hubExtra` names. */
async function storeFamilies(t: Test, hubExtra: Record<string, unknown> = {}): Promise<void> {
  // hub.admin.cogs_cache 0: every scrape reads the store (the cache has its own test below).
  const c = await cluster(t, { ...hubExtra, admin: { cogs_cache: "0s" } });
  // Two more cogs the store knows: c2 only invited (no certificate), c3 enrolled by nobody and then revoked.
  await createInvite(c.cfg, "c2");
  await createInvite(c.cfg, "c3");
  t.ok(await c.hub.store.revokeCog("c3"));
  const row = (await c.hub.store.listCogs()).find((r) => r.name === "c1")!;
  // Counted on the real store: every family that lists cogs shares one query per scrape, however many cogs.
  const store = c.hub.store;
  const listCogs = store.listCogs.bind(store);
  let queries = 0;
  store.listCogs = () => { queries++; return listCogs(); };
  t.teardown(() => { store.listCogs = listCogs; });
  const s = await scrape(c.admin);
  t.equal(queries, 1, "one listCogs for the whole scrape");
  await scrape(c.admin);
  t.equal(queries, 2, "and a fresh one for the next scrape");
  t.equal(s.value("capsul_hub_cog_up", { cog: "c1" }), 1, "the enrolled cog is up");
  t.equal(s.value("capsul_hub_cog_up", { cog: "c2" }), undefined, "an invited cog is not reported yet");
  t.equal(s.value("capsul_hub_cog_up", { cog: "c3" }), undefined, "nor an invited cog that was then revoked");
  t.equal(s.value("capsul_hub_certificate_expiry_timestamp_seconds", { kind: "cog", name: "c1" }), Math.floor(row.certNotAfter! / 1000));
  t.ok(s.n("capsul_hub_certificate_expiry_timestamp_seconds", { kind: "ca", name: "hub-ca" }) > Date.now() / 1000);
  t.ok(s.n("capsul_hub_certificate_expiry_timestamp_seconds", { kind: "tunnel", name: "hub-tunnel" }) > Date.now() / 1000);
  const off = c.hub.metrics.certificates.register("acme", "www.example.org", () => Date.UTC(2030, 0, 1));
  t.equal((await scrape(c.admin)).value("capsul_hub_certificate_expiry_timestamp_seconds", { kind: "acme", name: "www.example.org" }), 1893456000);
  off();
  t.equal((await scrape(c.admin)).value("capsul_hub_certificate_expiry_timestamp_seconds", { kind: "acme", name: "www.example.org" }), undefined);

  const certPem = fs.readFileSync(path.join(c.dir, "cog-c1", CERT_FILE));
  const cogS = await scrape(c.cog.admin!.port);
  t.equal(cogS.value("capsul_cog_certificate_expiry_timestamp_seconds", { kind: "tunnel", name: "c1" }), Math.floor(Date.parse(new X509Certificate(certPem).validTo) / 1000));
}

t.test("certificate expiry: the hub's, each cog's, and registered ones (the ACME hook)", (t) => storeFamilies(t));

t.test("the same on a PostgreSQL state store", async (t) => {
  const pgc = await startPostgres(t);
  await storeFamilies(t, { store: await pgc.createDatabase(), store_password_file: pgc.passwordFile });
});

t.test("hub.admin.cogs_cache: scrapes, the JSON API and the status page share one store read; the admin API's own writes show at once", async (t) => {
  // An hour, so that nothing here depends on how fast the machine is.
  const c = await cluster(t, { admin: { cogs_cache: "1h" } });
  const store = c.hub.store;
  const listCogs = store.listCogs.bind(store);
  let queries = 0;
  store.listCogs = () => { queries++; return listCogs(); };
  t.teardown(() => { store.listCogs = listCogs; });
  // eslint-disable-next-line @typescript-eslint/no-explicit-any
  const adminJsonOf = async (port: number, p: string): Promise<any> => (await adminJson(port, p)).json;
  const first = await scrape(c.admin);
  await scrape(c.admin);
  const cogs = await adminJsonOf(c.admin, "/v1/cogs");
  t.equal((await adminRequest(c.admin, "/")).status, 200);
  t.equal(queries, 1, "one listCogs for two scrapes, /v1/cogs and the status page");
  t.equal(first.value("capsul_hub_cog_up", { cog: "c1" }), 1);
  t.same(cogs.cogs.map((x: { name: string }) => x.name), ["c1"]);

  // A cog invited behind the hub's back (the CLI, another hub) shows once the cache is old: not yet.
  await createInvite(c.cfg, "c2");
  t.same((await adminJsonOf(c.admin, "/v1/cogs")).cogs.map((x: { name: string }) => x.name), ["c1"], "cached");
  // One invited through the admin API shows at once, and so does the one before it.
  const inv = await adminRequest(c.admin, "/v1/invites", { method: "POST", headers: { "content-type": "application/json" }, body: JSON.stringify({ cog: "c3" }) });
  t.equal(inv.status, 201);
  t.same((await adminJsonOf(c.admin, "/v1/cogs")).cogs.map((x: { name: string }) => x.name), ["c1", "c2", "c3"]);
  t.equal(queries, 2);
  // A revoke through the admin API answers with the revoked cog and leaves the next reads right.
  const rv = await adminRequest(c.admin, "/v1/cogs/c1/revoke", { method: "POST" });
  t.equal(rv.status, 200);
  t.match(JSON.parse(rv.body), { cog: { name: "c1", state: "revoked" } });
  t.equal((await scrape(c.admin)).value("capsul_hub_cog_up", { cog: "c1" }), undefined, "a revoked cog is no longer reported");
  t.equal(queries, 3);
});

t.test("refusals: over the visitor limit, and a cog that is away past its grace", async (t) => {
  const c = await cluster(t, { limits: { max_visitors: 2, grace: "3s" } });
  const before = await scrape(c.admin);
  const held = await Promise.all([0, 1].map(() => new Promise<net.Socket>((resolve, reject) => {
    const s = net.connect({ port: c.echoPort, host: "127.0.0.1" }, () => s.write("x"));
    s.once("data", () => resolve(s));
    s.on("error", reject);
  })));
  const third = await rawExchange(c.echoPort, "y");
  t.equal(third, "", "the third visitor is closed unanswered");
  for (const s of held) s.end();
  await waitFor("the held visitors to close", () => c.hub.visitors.stats.active === 0);

  await c.cog.close();
  await waitFor("the hub to see the tunnel go", () => c.hub.tunnels.links.get("c1")?.session === null);
  const r = await curl(["--resolve", `${WEB}:${c.hub.ports.tls}:127.0.0.1`, "--cacert", c.caFile, `https://${WEB}:${c.hub.ports.tls}/`]);
  t.not(r.code, 0, "the visitor is refused once the grace period is over");
  const after = await scrape(c.admin);
  t.equal(delta(before, after, "capsul_hub_routing_total", { outcome: "over_limit" }), 1);
  t.equal(delta(before, after, "capsul_hub_routing_total", { outcome: "cog_offline" }), 1);
  t.equal(delta(before, after, "capsul_hub_routing_total", { outcome: "routed" }), 2);
  t.equal(after.value("capsul_hub_cog_up", { cog: "c1" }), 0);
  t.equal(after.value("capsul_hub_tunnels"), 0);
});

t.test("tunnel port: strangers held and refused (by cap and by error code), control messages from cogs", async (t) => {
  const PER_IP = 2;
  const c = await cluster(t, { tunnel: { keepalive_interval: "1s", keepalive_timeout: "3s", max_unauthenticated_per_ip: PER_IP, control_hello_timeout: "30s" } });
  const tunnelPort = c.hub.ports.tunnel;
  const before = await scrape(c.admin);
  t.equal(before.value("capsul_hub_control_messages_total", { outcome: "routes_applied" }), 1, "c1's hello carried one route set");
  t.equal(before.value("capsul_hub_tunnels_unauthenticated"), 0);

  // Strangers from 127.0.0.9 that connect and never start TLS: held as unauthenticated up to the cap.
  const stranger = (): { sock: net.Socket; closed: Promise<void> } => {
    const sock = net.connect({ port: tunnelPort, host: "127.0.0.1", localAddress: "127.0.0.9" });
    sock.on("error", () => {});
    t.teardown(() => sock.destroy());
    return { sock, closed: new Promise((resolve) => sock.once("close", () => resolve())) };
  };
  const held = Array.from({ length: PER_IP }, stranger);
  await waitFor("the strangers to be admitted", () => c.hub.tunnels.admission.unauthenticated === PER_IP);
  t.equal((await scrape(c.admin)).value("capsul_hub_tunnels_unauthenticated"), PER_IP, "held strangers are a gauge");
  await stranger().closed;
  const capped = await scrape(c.admin);
  t.equal(delta(before, capped, "capsul_hub_tunnel_refusals_total", { reason: "max_unauthenticated_per_ip" }), 1, "the one over the cap");
  t.equal(delta(before, capped, "capsul_hub_tunnel_refusals_total", { reason: "max_unauthenticated" }), 0);
  for (const h of held) h.sock.destroy();
  await waitFor("the strangers to be gone", () => c.hub.tunnels.admission.unauthenticated === 0);

  // An enrollment with a token the hub never issued, and a hello without a certificate.
  const tuning = cogConfig(c.dir, "stranger", tunnelPort, []).tunnel;
  await t.rejects(enroll({ hub: { host: "127.0.0.1", port: tunnelPort }, token: newInviteToken().token, caFingerprint: c.hub.pki.caFingerprint,
    dataDir: path.join(c.dir, "stranger"), tuning }), { message: /enrollment refused/ });
  const raw = await rawTunnel(t, tunnelPort);
  raw.control.write(encodeMessage({ type: "hello", protocol: TUNNEL_PROTOCOL_VERSION, software: "test", routes: [] }));
  const answer = await within(raw.reader.next(), "the hub's answer to a hello without a certificate", 10_000);
  t.match(answer, { type: "error", code: "auth" });

  // c1 announces a new route set: one more applied.
  const routed = new Promise<void>((resolve) => c.cog.client.once("routes", () => resolve()));
  c.cog.client.publish("test", [{ name: "extra", kind: "tcp", target: { host: "127.0.0.1", port: c.echoTarget }, proxyProtocol: "none" }]);
  await routed;

  const after = await scrape(c.admin);
  t.equal(delta(before, after, "capsul_hub_tunnel_refusals_total", { reason: "enroll" }), 1, "the unknown invite token");
  t.equal(delta(before, after, "capsul_hub_tunnel_refusals_total", { reason: "auth" }), 1, "the hello without a certificate");
  for (const reason of ["version", "revoked", "bad_request"]) t.equal(delta(before, after, "capsul_hub_tunnel_refusals_total", { reason }), 0, `${reason} unchanged`);
  t.equal(delta(before, after, "capsul_hub_control_messages_total", { outcome: "routes_applied" }), 1, "the new route set");
  t.equal(after.value("capsul_hub_control_messages_total", { outcome: "renewal_refused" }), 0);
  t.equal(after.value("capsul_hub_tunnels"), 1, "c1 kept its tunnel throughout");
  t.equal(after.value("capsul_hub_tunnel_connects_total"), 1, "no stranger counts as a tunnel");
});
