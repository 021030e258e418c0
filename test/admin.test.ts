/**
 * The hub's admin listener over real sockets: the JSON API (cogs, invites that enroll a
 * real cog, revoke that drops a live tunnel), and every way in a stranger or a web page
 * might try: a foreign Host (DNS rebinding), an Origin on state-changing calls, no or a
 * wrong token off loopback, oversized and chunked bodies, a slow request, too many
 * connections. Also the token file, a real `capsul hub` process's /metrics, and the
 * cog's /healthz and /metrics on the provisioner's listener.
 */
import t, { type Test } from "tap";
import fs from "node:fs";
import net from "node:net";
import path from "node:path";
import { Gauge, Registry } from "prom-client";
import * as C from "../config/config.js";
import { ADMIN_TOKEN_FILE } from "../certs/admintoken.js";
import { ADMIN_MAX_CONNECTIONS, ADMIN_MAX_REQUEST_BODY_BYTES, ADMIN_REQUEST_TIMEOUT_MS } from "../lib/adminhttp.js";
import { STATUS_PAGE_HEADERS, STATUS_REFRESH_MS } from "../gateway/statuspage.js";
import type { Hub } from "../gateway/hub.js";
import { silentLogger } from "../lib/log.js";
import { startProvisioner } from "../provisioner/index.js";
import { MemoryRouteSink } from "../tunnel-client/routesink.js";
import { enroll } from "../tunnel-client/enroll.js";
import { startCog, type Cog } from "../tunnel-client/cog.js";
import { cogConfig, enrolledCog, httpBackend, HUB_DOMAIN, hubConfig, startTestHub, tmpDir } from "./helpers/cluster.js";
import { spawnCli, writeYaml } from "./helpers/procs.js";
import { cleanupDataDir, tempDataDir, testConfig } from "./helpers/vm.js";
import { adminJson, adminRequest, scrape } from "./helpers/adminclient.js";
import { jsonStyle } from "./helpers/jsonstyle.js";
import { startPostgres } from "./helpers/pgcluster.js";

const BLOG = `blog.c1.${HUB_DOMAIN}`;
const ISO = /^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z$/;
type Json = Record<string, any>; // eslint-disable-line @typescript-eslint/no-explicit-any

interface Setup { dir: string; hub: Hub; cog: Cog; port: number }

async function setup(t: Test, hubExtra: Record<string, unknown> = {}): Promise<Setup> {
  const dir = tmpDir("capsul-admin-");
  t.teardown(() => fs.rmSync(dir, { recursive: true, force: true }));
  const hubCfg = hubConfig(dir, hubExtra);
  const hub = await startTestHub(hubCfg);
  t.teardown(() => hub.close());
  const blog = await httpBackend("blog");
  t.teardown(() => blog.close());
  const cog = await enrolledCog(hubCfg, hub, cogConfig(dir, "c1", hub.ports.tunnel, [
    { name: "blog", kind: "http", hostname: BLOG, target: `127.0.0.1:${blog.port}` },
  ]), "c1");
  t.teardown(() => cog.close());
  return { dir, hub, cog, port: hub.ports.admin! };
}

/** Every key of every object in `v`, recursively. */
function keysOf(v: unknown, out = new Set<string>()): Set<string> {
  if (Array.isArray(v)) for (const x of v) keysOf(x, out);
  else if (v && typeof v === "object") for (const [k, x] of Object.entries(v)) { out.add(k); keysOf(x, out); }
  return out;
}

const stillOnline = async (s: Setup): Promise<boolean> => !!s.hub.tunnels.links.get("c1")?.session && !(await s.hub.store.revokedCogs()).has("c1");

/** The JSON style of every `--json` (test/helpers/jsonstyle.ts): snake_case, instants as ISO under `_at` keys. */
function styleOk(t: Test, json: unknown, what: string): void {
  t.same(jsonStyle(json).problems, [], `${what}: snake_case keys, ISO instants under _at keys`);
}

t.test("defaults agree with config/config.ts", async (t) => {
  t.equal(ADMIN_REQUEST_TIMEOUT_MS, C.DEFAULT_ADMIN_REQUEST_TIMEOUT_MS);
  t.equal(ADMIN_MAX_CONNECTIONS, C.DEFAULT_ADMIN_MAX_CONNECTIONS);
  t.equal(ADMIN_MAX_REQUEST_BODY_BYTES, C.DEFAULT_ADMIN_MAX_REQUEST_BODY_BYTES);
  t.equal(STATUS_REFRESH_MS, C.DEFAULT_STATUS_REFRESH_MS);
});

/** The JSON API on a hub whose state store is what `hubExtra` says (SQLite by default). */
async function jsonApi(t: Test, hubExtra: Record<string, unknown> = {}): Promise<void> {
  const s = await setup(t, hubExtra);
  const health = await adminJson<Json>(s.port, "/healthz");
  t.same(health, { status: 200, json: { status: "ok", tunnels_up: 1 } });

  const st = await adminJson<Json>(s.port, "/v1/status");
  t.equal(st.status, 200);
  const bad = [...keysOf(st.json)].filter((k) => !/^[a-z][a-z0-9_]*$/.test(k));
  t.same(bad, [], "every key is snake_case");
  styleOk(t, st.json, "/v1/status");
  t.match(st.json.hub, { domain: HUB_DOMAIN, started_at: ISO, generated_at: ISO });
  const c1 = st.json.cogs.find((c: Json) => c.name === "c1");
  t.match(c1, { state: "online", online: true, state_changed_at: ISO, address: /^127\.0\.0\.1:\d+$/, cert_expires_at: ISO, revoked_at: null, streams: 0 });
  t.equal(c1.cert_expires_at, new Date((await s.hub.store.listCogs())[0]!.certNotAfter!).toISOString());
  t.match(c1.routes, [{ name: "blog", kind: "http", hostname: BLOG, held: true, connections_active: 0, connections_total: 0, bytes: { received: 0, sent: 0 } }]);

  const cogs = await adminJson<Json>(s.port, "/v1/cogs");
  styleOk(t, cogs.json, "/v1/cogs");
  t.same(cogs.json.cogs.map((c: Json) => c.name), ["c1"]);
  t.same((await adminJson<Json>(s.port, "/v1/cogs/c1")).json.cog, cogs.json.cogs[0]);
  t.match(await adminJson<Json>(s.port, "/v1/cogs/nope"), { status: 404, json: { error: { code: "no_such_cog" } } });
  t.match(await adminJson<Json>(s.port, "/v1/cogs/Bad!Name"), { status: 404 });
  t.match(await adminJson<Json>(s.port, "/v1/nothing"), { status: 404, json: { error: { code: "not_found" } } });

  // An invite through the API, used by a real cog that then serves a granted name.
  const post = (body: string, type = "application/json") =>
    adminJson<Json>(s.port, "/v1/invites", { method: "POST", headers: { "content-type": type }, body });
  const inv = await post(JSON.stringify({ cog: "c2", hostnames: ["*.extra.example"], ttl: "1h" }));
  t.equal(inv.status, 201);
  styleOk(t, inv.json, "POST /v1/invites");
  t.match(inv.json.invite, { cog: "c2", expires_at: ISO, ca_fingerprint: s.hub.pki.caFingerprint });
  // The test config's public tunnel address is hub.test:0 (its tunnel listener asked for port 0).
  t.equal(inv.json.invite.command, `capsul cog enroll --hub ${HUB_DOMAIN}:0 --token ${inv.json.invite.token} --ca-fingerprint ${s.hub.pki.caFingerprint}`);
  const c2cfg = cogConfig(s.dir, "c2", s.hub.ports.tunnel, [{ name: "x", kind: "http", hostname: "a.extra.example", target: "127.0.0.1:9" }]);
  await enroll({ hub: { host: "127.0.0.1", port: s.hub.ports.tunnel }, token: inv.json.invite.token, caFingerprint: inv.json.invite.ca_fingerprint, dataDir: c2cfg.dataDir, tuning: c2cfg.tunnel });
  const c2 = await startCog(c2cfg, silentLogger);
  t.teardown(() => c2.close());
  const routes = await new Promise<Json>((resolve) => c2.client.once("routes", resolve));
  t.match(routes, { accepted: [{ name: "x", hostname: "a.extra.example" }], refused: [] }, "the invite's hostname grant holds");
  const listed = await adminJson<Json>(s.port, "/v1/invites");
  styleOk(t, listed.json, "/v1/invites");
  const invites = listed.json.invites as Json[];
  t.match(invites.find((i) => i.cog === "c2"), { state: "used", created_at: ISO, expires_at: ISO, used_at: ISO });
  t.notOk(JSON.stringify(invites).includes(inv.json.invite.token), "tokens are never listed");

  // Bad requests name the field.
  t.match(await post(JSON.stringify({ cog: "Bad" })), { status: 400, json: { error: { message: /^cog: / } } });
  t.match(await post(JSON.stringify({ cog: "c3", ttl: "soon" })), { status: 400, json: { error: { message: /^ttl: / } } });
  t.match(await post(JSON.stringify({ cog: "c3", hostnames: ["no spaces"] })), { status: 400, json: { error: { message: /^hostnames\[0\]: / } } });
  t.match(await post(JSON.stringify({ cog: "c3", tcp_ports: ["9-1"] })), { status: 400, json: { error: { message: /^tcp_ports\[0\]: / } } });
  t.match(await post(JSON.stringify({ cog: "c3", extra: 1 })), { status: 400, json: { error: { message: "extra: unknown key" } } });
  t.match(await post("{not json"), { status: 400, json: { error: { code: "bad_json" } } });
  t.match(await post(JSON.stringify({ cog: "c3" }), "text/plain"), { status: 415 });
  // Grants createInvite refuses (they overlap another cog's): 400 with its reason, nothing stored.
  const taken = await post(JSON.stringify({ cog: "c3", hostnames: ["b.extra.example"] }));
  t.equal(taken.status, 400, "a hostname inside c2's grant");
  t.match(taken.json.error, { code: "bad_request", message: /"b\.extra\.example" overlaps "\*\.extra\.example" of cog c2 \(granted by capsul hub invite\)/ });
  const theirs = await post(JSON.stringify({ cog: "c3", hostnames: [`shop.c1.${HUB_DOMAIN}`] }));
  t.equal(theirs.status, 400, "a hostname under c1's default grant");
  t.match(theirs.json.error.message, /overlaps "\*\.c1\.hub\.test" of cog c1 \(its default grant\)/);
  t.notOk(await s.hub.store.getCog("c3"), "no bad request created anything");
  t.notOk((await adminJson<Json>(s.port, "/v1/invites")).json.invites.some((i: Json) => i.cog === "c3"), "no invite stored for a refused grant");

  // Revoke: the tunnel is gone when the answer arrives, not at the next revocation poll.
  const down = new Promise<void>((resolve) => c2.client.once("disconnected", () => resolve()));
  const rv = await adminJson<Json>(s.port, "/v1/cogs/c2/revoke", { method: "POST" });
  t.equal(rv.status, 200);
  t.match(rv.json.cog, { name: "c2", state: "revoked", online: false, revoked_at: ISO, state_changed_at: rv.json.cog.revoked_at });
  styleOk(t, rv.json, "POST /v1/cogs/c2/revoke");
  t.notOk(s.hub.tunnels.links.has("c2"), "its tunnel is dropped at once");
  await down;
  t.ok((await s.hub.store.revokedCogs()).has("c2"), "revoked in the store");
  t.match((await adminJson<Json>(s.port, "/v1/cogs/c2")).json.cog, { state: "revoked", online: false });
  t.match(await adminJson<Json>(s.port, "/v1/cogs/nope/revoke", { method: "POST" }), { status: 404 });
  t.notOk(await s.hub.store.getCog("nope"), "revoking an unknown cog creates nothing");
  t.ok(await stillOnline(s), "the other cog is untouched");
}

t.test("JSON API: cogs, invites that enroll a real cog, revoke that drops its tunnel at once", (t) => jsonApi(t));

t.test("JSON API on a PostgreSQL state store: the same, through hub.store", async (t) => {
  const pgc = await startPostgres(t);
  // The revocation poll at an hour: the tunnel can only be gone through the admin API's own drop or the notification.
  await jsonApi(t, {
    store: await pgc.createDatabase(), store_password_file: pgc.passwordFile,
    tunnel: { keepalive_interval: "1s", keepalive_timeout: "3s", revocation_poll_interval: "1h" },
  });
});

t.test("a foreign Host is refused on every path (DNS rebinding); IP literals, localhost and the domain are not", async (t) => {
  const s = await setup(t);
  for (const p of ["/", "/metrics", "/healthz", "/v1/status", "/v1/cogs"]) {
    const r = await adminRequest(s.port, p, { headers: { host: `evil.example:${s.port}` } });
    t.equal(r.status, 403, `GET ${p}`);
    t.match(JSON.parse(r.body), { error: { code: "bad_host" } });
    t.notMatch(r.body, /c1|capsul_hub/, "nothing about the hub in the answer");
  }
  const rv = await adminRequest(s.port, "/v1/cogs/c1/revoke", { method: "POST", headers: { host: `evil.example:${s.port}` } });
  t.equal(rv.status, 403);
  t.ok(await stillOnline(s), "the cog was not revoked");
  for (const host of ["evil.example", "127.0.0.1.evil.example", "a b", "", `${HUB_DOMAIN}.evil.example`]) {
    // @hono/node-server answers 400 itself to a Host it cannot make a URL of ("a b"); the gate answers 403.
    const status = (await adminRequest(s.port, "/healthz", { headers: { host } })).status;
    t.ok(status === 403 || (status === 400 && /\s/.test(host)), `Host ${JSON.stringify(host)}: ${status}`);
  }
  for (const host of [`127.0.0.1:${s.port}`, `localhost:${s.port}`, `[::1]:${s.port}`, `${HUB_DOMAIN}:${s.port}`, `${HUB_DOMAIN}.:${s.port}`, "127.0.0.1"]) {
    t.equal((await adminRequest(s.port, "/healthz", { headers: { host } })).status, 200, `Host ${host}`);
  }
});

t.test("requests from web pages (an Origin) are refused for state-changing calls", async (t) => {
  const s = await setup(t);
  const own = `http://127.0.0.1:${s.port}`;
  for (const origin of [own, "http://evil.example", "null"]) {
    const r = await adminRequest(s.port, "/v1/cogs/c1/revoke", { method: "POST", headers: { origin } });
    t.equal(r.status, 403, `revoke with Origin ${origin}`);
    t.match(JSON.parse(r.body), { error: { code: "browser_request" } });
    const i = await adminRequest(s.port, "/v1/invites", { method: "POST", headers: { origin, "content-type": "application/json" }, body: '{"cog":"c9"}' });
    t.equal(i.status, 403, `invite with Origin ${origin}`);
  }
  t.ok(await stillOnline(s), "not revoked");
  t.notOk(await s.hub.store.getCog("c9"), "no invite made");
  t.equal((await adminRequest(s.port, "/v1/status", { headers: { origin: "http://evil.example" } })).status, 403, "a cross-origin read too");
  t.equal((await adminRequest(s.port, "/v1/status", { headers: { origin: own } })).status, 200, "a same-origin GET is fine");
  t.equal((await adminRequest(s.port, "/v1/cogs/c1/revoke", { method: "POST" })).status, 200, "without an Origin, revoke works");
});

t.test("bodies over hub.admin.max_request_body are refused, declared or chunked; slow and surplus connections are cut", async (t) => {
  const s = await setup(t, { admin: { max_request_body: "1KiB", request_timeout: "500ms", max_connections: 3 } });
  const body = JSON.stringify({ cog: "c5", hostnames: Array.from({ length: 60 }, (_, i) => `h${i}.example.org`) });
  t.ok(body.length > 1024);
  const declared = await adminRequest(s.port, "/v1/invites", { method: "POST", headers: { "content-type": "application/json" }, body });
  t.equal(declared.status, 413);
  t.match(JSON.parse(declared.body), { error: { code: "body_too_large" } });
  const chunked = await adminRequest(s.port, "/v1/invites", { method: "POST", headers: { "content-type": "application/json" }, body, chunked: true });
  t.equal(chunked.status, 413, "a chunked body is cut while it streams");
  t.notOk(await s.hub.store.getCog("c5"), "nothing was created");
  const small = await adminRequest(s.port, "/v1/invites", { method: "POST", headers: { "content-type": "application/json" }, body: JSON.stringify({ cog: "c5" }) });
  t.equal(small.status, 201, "a body under the limit passes");

  // Three slow clients: one full request each (its answer proves the listener holds the
  // connection), then a second request whose head never ends: 408 and closed (request_timeout).
  const slow = (): Promise<{ answered: Promise<void>; closed: Promise<string> }> => new Promise((resolveStarted) => {
    let text = "";
    let answered!: () => void;
    const answeredP = new Promise<void>((r) => { answered = r; });
    const closed = new Promise<string>((resolveClosed) => {
      const sock = net.connect({ port: s.port, host: "127.0.0.1" }, () => sock.write(`GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n`));
      sock.on("data", (d: Buffer) => {
        const first = text === "";
        text += d.toString("latin1");
        if (first) { sock.write(`GET /metrics HTTP/1.1\r\nHost: 127.0.0.1\r\n`); answered(); }
      });
      sock.on("error", () => {});
      sock.on("close", () => resolveClosed(text));
    });
    resolveStarted({ answered: answeredP, closed });
  });
  const slows = await Promise.all([slow(), slow(), slow()]);
  await Promise.all(slows.map((x) => x.answered));
  // Past max_connections (3): a fourth connection is closed without an answer.
  const fourth = await new Promise<string>((resolve) => {
    const sock = net.connect({ port: s.port, host: "127.0.0.1" }, () => setImmediate(() => sock.write(`GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n`)));
    let text = "";
    sock.on("data", (d: Buffer) => { text += d.toString("latin1"); });
    sock.on("error", () => {});
    sock.on("close", () => resolve(text));
  });
  t.equal(fourth, "", "the fourth connection is closed unanswered");
  for (const text of await Promise.all(slows.map((x) => x.closed))) {
    t.match(text, /^HTTP\/1\.1 200 [\s\S]*HTTP\/1\.1 408 /, "the slow request timed out");
  }
  t.equal((await adminRequest(s.port, "/healthz")).status, 200, "and the listener serves again");
});

t.test("off loopback the token is required: bearer, or basic auth's password for a browser", async (t) => {
  const s = await setup(t, { listen: { admin: "0.0.0.0:0" } });
  const file = path.join(s.dir, "hub", ADMIN_TOKEN_FILE);
  t.equal(fs.statSync(file).mode & 0o777, 0o600, "the token file is 0600");
  const token = fs.readFileSync(file, "utf8").trim();
  t.match(token, /^[A-Za-z0-9_-]{43}$/);
  for (const p of ["/", "/metrics", "/healthz", "/v1/status"]) {
    const r = await adminRequest(s.port, p);
    t.equal(r.status, 401, `GET ${p} without a token`);
    t.match(r.headers["www-authenticate"], /^Basic realm="capsul hub hub\.test"/);
    t.notMatch(r.body, /c1|capsul_hub/);
  }
  const wrong = [`Bearer ${token}x`, `Bearer ${token.slice(1)}`, "Bearer", `Basic ${Buffer.from(`admin:${token}x`).toString("base64")}`, `Basic ${Buffer.from(token).toString("base64")}`, token];
  for (const authorization of wrong) t.equal((await adminRequest(s.port, "/v1/status", { headers: { authorization } })).status, 401, `Authorization: ${authorization.slice(0, 12)}…`);
  t.equal((await adminRequest(s.port, "/v1/cogs/c1/revoke", { method: "POST" })).status, 401);
  t.ok(await stillOnline(s), "not revoked without the token");

  const bearer = { authorization: `Bearer ${token}` };
  t.match((await scrape(s.port, bearer)).value("capsul_hub_tunnels"), 1, "Bearer works");
  const page = await adminRequest(s.port, "/", { headers: { authorization: `Basic ${Buffer.from(`anyone:${token}`).toString("base64")}` } });
  t.equal(page.status, 200, "basic auth with the token as password works");
  t.match(page.headers["content-type"], /^text\/html/);
  t.equal((await adminRequest(s.port, "/healthz", { headers: { ...bearer, host: "evil.example" } })).status, 403, "the Host check still applies");
  t.equal((await adminRequest(s.port, "/v1/cogs/c1/revoke", { method: "POST", headers: { ...bearer, origin: "http://x.example" } })).status, 403, "and the Origin check");
  t.ok(await stillOnline(s));
});

t.test("the token file: made once and kept; a hub refuses one others can read", async (t) => {
  const dir = tmpDir("capsul-admin-token-");
  t.teardown(() => fs.rmSync(dir, { recursive: true, force: true }));
  const cfg = hubConfig(dir);
  const h1 = await startTestHub(cfg);
  await h1.close();
  const file = path.join(cfg.dataDir, ADMIN_TOKEN_FILE);
  const first = fs.readFileSync(file, "utf8");
  const h2 = await startTestHub(cfg);
  await h2.close();
  t.equal(fs.readFileSync(file, "utf8"), first, "the same token after a restart");
  fs.chmodSync(file, 0o644);
  await t.rejects(startTestHub(cfg), { message: `${file} is readable by other users (mode 644); run chmod 600 ${file}` });
});

t.test("a `capsul hub` process: /metrics is the process's one registry, with the default Node metrics", async (t) => {
  const dir = tmpDir("capsul-admin-cli-");
  t.teardown(() => fs.rmSync(dir, { recursive: true, force: true }));
  const yaml = writeYaml(path.join(dir, "capsul.yaml"), {
    hub: { data_dir: path.join(dir, "hub"), domain: HUB_DOMAIN, listen: { tls: "127.0.0.1:0", http: "127.0.0.1:0", tunnel: "127.0.0.1:0", admin: "127.0.0.1:0" } },
  });
  const hub = spawnCli(t, "hub", ["hub", "-c", yaml]);
  const m = await hub.waitLine(/hub ready .* admin=(\d+)/);
  const port = Number(m[1]);
  t.match(hub.text(), /admin listener ready url=http:\/\/127\.0\.0\.1:\d+ token="not required \(loopback\)"/);
  const sc = await scrape(port);
  for (const name of ["process_cpu_user_seconds_total", "process_resident_memory_bytes", "nodejs_eventloop_lag_seconds", "nodejs_heap_size_used_bytes"]) {
    t.ok(sc.families.has(name), `default metric ${name}`);
  }
  t.equal(sc.value("capsul_hub_visitors_total"), 0);
  t.equal(sc.value("capsul_hub_tunnels"), 0);
  hub.kill("SIGTERM");
  t.same(await hub.waitExit(), { code: 0, signal: null });
});

t.test("the cog's /healthz and /metrics: on the provisioner's listener, from the cog's registry, behind the API's guard", async (t) => {
  const dataDir = tempDataDir();
  const registry = new Registry();
  new Gauge({ name: "capsul_cog_tunnel_up", help: "stands in for the cog's families", registers: [registry] }).set(1);
  const prov = await startProvisioner({
    config: testConfig(dataDir, { qemuBinary: "/bin/false" }), cogName: "home1", hubDomain: "hub.example", hubHost: "hub.example",
    sink: new MemoryRouteSink(), logger: silentLogger, registry,
  });
  t.teardown(async () => { await prov.close(); cleanupDataDir(dataDir); });
  const port = Number(new URL(prov.url).port);
  // The provisioner's listener has one rule for every path (provisioner/apiguard.ts): the
  // token even on loopback, a Host naming the listen address, no Origin.
  const bearer = { authorization: `Bearer ${fs.readFileSync(prov.tokenFile, "utf8").trim()}` };
  for (const p of ["/healthz", "/metrics"]) {
    const refusals: Array<[string, Record<string, string>, number, string]> = [
      ["no token", {}, 401, "unauthorized"],
      ["a wrong token", { authorization: "Bearer " + "x".repeat(bearer.authorization.length - 7) }, 401, "unauthorized"],
      ["DNS rebinding", { ...bearer, host: `rebind.attacker.example:${port}` }, 421, "wrong_host"],
      ["a web page", { ...bearer, origin: "https://evil.example" }, 403, "browser_request_refused"],
    ];
    for (const [what, headers, status, code] of refusals) {
      const r = await adminRequest(port, p, { headers });
      t.equal(r.status, status, `${p}, ${what}`);
      t.equal((JSON.parse(r.body) as Json).error?.code, code, `${p}, ${what}: code`);
      t.notMatch(r.body, /capsul_/, `${p}, ${what}: no metrics leak`);
    }
  }
  t.same(await adminJson(port, "/healthz", { headers: bearer }), { status: 200, json: { status: "ok" } });
  const sc = await scrape(port, bearer);
  t.equal(sc.value("capsul_cog_tunnel_up"), 1, "the cog's registry");
  t.ok(sc.value("capsul_memory_limit_bytes")! > 0, "with the VM metrics on it");
  t.ok(sc.families.has("capsul_vm_state"));
  await prov.close();
  t.notOk((await registry.metrics()).includes("capsul_memory_limit_bytes"), "closing the provisioner takes its families off the registry");
});

t.test("the cog's own admin listener (cog.listen.admin), when there is no provisioner", async (t) => {
  const s = await setup(t);
  t.ok(s.cog.admin, "the test cogs have one on an ephemeral port");
  t.same(await adminJson(s.cog.admin!.port, "/healthz"), { status: 200, json: { status: "ok", tunnel: "connected" } });
  t.equal((await adminRequest(s.cog.admin!.port, "/healthz", { headers: { host: "evil.example" } })).status, 403, "same Host gate");
  t.equal((await adminRequest(s.cog.admin!.port, "/v1/status")).status, 404, "nothing but /healthz and /metrics");
  t.equal((await adminRequest(s.cog.admin!.port, "/metrics", { method: "POST", body: "x" })).status, 413, "no body is read");
  t.equal(STATUS_PAGE_HEADERS["content-security-policy"]!.includes("default-src 'none'"), true);
});
