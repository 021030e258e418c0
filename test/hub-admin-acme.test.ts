/**
 * hub.admin.tls: acme against a real pebble. A real `capsul hub` process gets the
 * certificate of its admin listener for hub.admin.hostname, answering the CA's
 * challenge itself on its own public ports (HTTP-01 on hub.listen.http, TLS-ALPN-01 on
 * hub.listen.tls); curl then reaches /healthz and the token-guarded API over TLS. With
 * the CA unreachable the listener refuses handshakes (one log line per failure, the
 * retries back off) until the CA is back; a renewal swaps the certificate for the next
 * connection while an open one keeps working. And the hub answers challenges only for
 * its admin hostname: a capsul's own challenge on the same ports still reaches the capsul.
 */
import t, { type Test } from "tap";
import fs from "node:fs";
import http from "node:http";
import path from "node:path";
import tls from "node:tls";
import { loadOrCreateHubPki } from "../certs/pki.js";
import { closeServer, cogConfig, enrolledCog, hubConfig, HUB_DOMAIN, listen, startTestHub, tmpDir } from "./helpers/cluster.js";
import { presentedSerial } from "./helpers/acme.js";
import { hubDoc } from "./helpers/hubproc.js";
import { AcmeFrontProxy, startPebble } from "./helpers/pebble.js";
import { curl, freePort, freePortRange, runCli, spawnCli, waitFor, writeYaml, type CliProc } from "./helpers/procs.js";

const ADMIN = `admin.${HUB_DOMAIN}`;
/** A single hub's "hub ready", or a worker's "worker ready" (the primary's "hub ready" names no admin port). */
const ADMIN_PORT_RE = /(?:hub|worker) ready tls=\d+ http=\d+ tunnel=\d+ admin=(\d+)/;

interface AdminHub { proc: CliProc; yaml: string; adminPort: number; dataDir: string }

/** Starts `capsul hub` with its public ports pinned (where pebble validates) and the admin listener on 0.0.0.0 with tls: acme. */
async function startAdminHub(
  t: Test, dir: string, ports: { tls: number; http: number }, acme: Record<string, unknown>, admin: Record<string, unknown> = {}, extra: Record<string, unknown> = {},
): Promise<AdminHub> {
  const pool = await freePortRange(2);
  const doc = hubDoc(dir, pool.spec, { tls: ports.tls, http: ports.http, tunnel: 0 }, {
    // The access log shows which public listener the CA's validator came in by, and that the hub answered it.
    access_log: true,
    admin: { tls: "acme", hostname: ADMIN, ...admin },
    acme: { poll_interval: "100ms", retry_min_delay: "500ms", retry_max_delay: "4s", ...acme },
    ...extra,
  }) as { hub: { listen: Record<string, unknown>; data_dir: string } };
  // Off loopback: the token is asked for (bound on every address; the test only dials 127.0.0.1).
  doc.hub.listen.admin = "0.0.0.0:0";
  const yaml = writeYaml(path.join(dir, "hub.yaml"), doc);
  const proc = spawnCli(t, "hub", ["hub", "-c", yaml]);
  const m = await proc.waitLine(ADMIN_PORT_RE);
  await proc.waitLine(/hub ready/);
  return { proc, yaml, adminPort: Number(m[1]), dataDir: doc.hub.data_dir };
}

/** curl to the admin listener by its hostname, trusting only `rootFile`; `token` sends the bearer token. */
function adminCurl(h: AdminHub, rootFile: string, urlPath: string, token?: string, more: string[] = []) {
  return curl(["-sS", "--cacert", rootFile, "--resolve", `${ADMIN}:${h.adminPort}:127.0.0.1`,
    ...(token ? ["-H", `Authorization: Bearer ${token}`] : []), ...more, `https://${ADMIN}:${h.adminPort}${urlPath}`]);
}

/** The serial of the certificate the admin listener presents now (checked against `caPem`). */
const adminSerial = (port: number, caPem: string): Promise<string> => presentedSerial(port, ADMIN, caPem);

async function issuedBy(t: Test, challenge: "http-01" | "tls-alpn-01"): Promise<void> {
  const dir = tmpDir(`capsul-hub-admin-${challenge}-`);
  const ports = { tls: await freePort(), http: await freePort() };
  const pebble = await startPebble(t, dir, { httpPort: ports.http, tlsPort: ports.tls });
  const rootFile = path.join(dir, "pebble-root.pem");
  fs.writeFileSync(rootFile, await pebble.rootPem());
  const h = await startAdminHub(t, dir, ports, { directory_url: pebble.directoryUrl, ca_bundle: pebble.ca.caFile }, { challenge });
  const issued = await h.proc.waitLine(/certificate issued .*name=admin\.hub\.test.*serial=([0-9A-F]+)/, { timeoutMs: 60_000 });
  t.match(h.proc.matching(/ordering a certificate/)[0], `challenge=${challenge}`, `ordered with ${challenge}`);
  const answered = h.proc.matching(/outcome=acme/);
  t.ok(answered.length >= 1, "the CA's validator was answered by the hub itself");
  for (const l of answered) t.match(l, challenge === "http-01" ? /listener=http .*host=admin\.hub\.test/ : /listener=tls .*host=admin\.hub\.test/, `on its public ${challenge === "http-01" ? "HTTP" : "TLS"} listener, for the admin hostname`);

  const token = fs.readFileSync(path.join(h.dataDir, "admin-token"), "utf8").trim();
  const health = await adminCurl(h, rootFile, "/healthz", token);
  t.equal(health.code, 0, `curl https://${ADMIN}/healthz: ${health.stderr}`);
  t.same(JSON.parse(health.stdout), { status: "ok", tunnels_up: 0 }, "/healthz over TLS with the certificate pebble issued");
  const cogs = await adminCurl(h, rootFile, "/v1/cogs", token);
  t.same(JSON.parse(cogs.stdout), { cogs: [] }, "the token-guarded API answers over TLS");
  const noToken = await adminCurl(h, rootFile, "/v1/cogs", undefined, ["-o", "/dev/null", "-w", "%{http_code}"]);
  t.equal(noToken.stdout, "401", "off loopback the token is still required");
  const origin = `https://${ADMIN}:${h.adminPort}`;
  const sameOrigin = await adminCurl(h, rootFile, "/healthz", token, ["-o", "/dev/null", "-w", "%{http_code}", "-H", `Origin: ${origin}`]);
  t.equal(sameOrigin.stdout, "200", "a GET from the listener's own https:// origin is allowed");
  const post = await adminCurl(h, rootFile, "/v1/cogs/x/revoke", token, ["-o", "/dev/null", "-w", "%{http_code}", "-X", "POST", "-H", `Origin: ${origin}`]);
  t.equal(post.stdout, "403", "a state-changing request with an Origin is refused, over TLS too");
  const plain = await curl(["-sS", "-o", "/dev/null", "--max-time", "5", `http://127.0.0.1:${h.adminPort}/healthz`]);
  t.not(plain.code, 0, "plain HTTP is not served on the admin port");

  const certs = await runCli(["hub", "certs", "--json", "-c", h.yaml]);
  t.equal(certs.code, 0, certs.stderr);
  const [row] = JSON.parse(certs.stdout) as { name: string; serial: string; state: string; challenge: string; not_after: string }[];
  t.equal(row?.name, ADMIN, "capsul hub certs lists the admin certificate");
  t.equal(row?.serial, issued[1], "with the serial the hub logged");
  t.equal(row?.challenge, challenge);
  t.equal(row?.state, "scheduled", "and its renewal scheduled");
  const metrics = await adminCurl(h, rootFile, "/metrics", token);
  const m = /capsul_hub_certificate_expiry_timestamp_seconds\{kind="acme",name="admin\.hub\.test"\} (\d+)/.exec(metrics.stdout);
  t.ok(m, "/metrics exports the admin certificate's expiry");
  t.equal(Number(m?.[1]), Math.floor(Date.parse(row!.not_after) / 1000), "its not_after");
  const mode = fs.statSync(path.join(h.dataDir, "acme", "certs", `${ADMIN}.json`)).mode & 0o777;
  t.equal(mode, 0o600, "the certificate and its key are stored 0600");
}

t.test("HTTP-01: a capsul hub process gets its admin certificate through its own port 80; curl reaches the admin API over TLS", (t) => issuedBy(t, "http-01"));
t.test("TLS-ALPN-01: the same through its own port 443", (t) => issuedBy(t, "tls-alpn-01"));

t.test("the CA unreachable: handshakes refused until the first certificate, retries back off; renewal swaps for the next connection only", async (t) => {
  const dir = tmpDir("capsul-hub-admin-renew-");
  const ports = { tls: await freePort(), http: await freePort() };
  // Long enough for the steps between issuance and renewal, short enough to wait for (renewal at 2/3: ~16 s).
  const pebble = await startPebble(t, dir, { httpPort: ports.http, tlsPort: ports.tls, validitySec: 24 });
  const rootFile = path.join(dir, "pebble-root.pem");
  const rootPem = await pebble.rootPem();
  fs.writeFileSync(rootFile, rootPem);
  const proxy = new AcmeFrontProxy(pebble);
  await proxy.start();
  await proxy.stop();
  t.teardown(() => proxy.stop());

  const h = await startAdminHub(t, dir, ports, { directory_url: proxy.directoryUrl, ca_bundle: pebble.ca.caFile });
  const fail1 = await h.proc.waitLine(/cannot reach the ACME CA .*failures=1 .*nextTryIn=(\S+)/, { timeoutMs: 30_000 });
  const fail2 = await h.proc.waitLine(/cannot reach the ACME CA .*failures=2 .*nextTryIn=(\S+)/, { timeoutMs: 30_000 });
  const ms = (d: string): number => (d.endsWith("ms") ? Number(d.slice(0, -2)) : Number(d.slice(0, -1)) * 1000);
  t.ok(ms(fail2[1]!) > ms(fail1[1]!), `the second retry waits longer (${fail1[1]} then ${fail2[1]})`);
  t.equal(h.proc.matching(/cannot reach the ACME CA/).filter((l) => /failures=1 /.test(l)).length, 1, "one log line per failed order");
  const refused = await curl(["-sS", "--cacert", rootFile, "--max-time", "5", "--resolve", `${ADMIN}:${h.adminPort}:127.0.0.1`, `https://${ADMIN}:${h.adminPort}/healthz`]);
  t.not(refused.code, 0, "no certificate yet: the TLS handshake is refused");
  t.match(refused.stderr, /SSL|TLS|alert/i, "by a TLS alert, not by a plain-HTTP answer");
  t.ok(h.proc.alive, "the hub keeps running");

  await proxy.start();
  const first = await h.proc.waitLine(/certificate issued .*serial=([0-9A-F]+)/, { timeoutMs: 60_000 });
  const token = fs.readFileSync(path.join(h.dataDir, "admin-token"), "utf8").trim();
  t.equal((await adminCurl(h, rootFile, "/healthz", token)).code, 0, "once the CA is back, the listener serves its certificate");
  t.equal(await adminSerial(h.adminPort, rootPem), first[1], "the one the hub logged");

  // A keep-alive connection opened on the first certificate, used across the renewal.
  const kept = tls.connect({ host: "127.0.0.1", port: h.adminPort, servername: ADMIN, ca: rootPem });
  await new Promise<void>((resolve, reject) => { kept.once("secureConnect", () => resolve()); kept.once("error", reject); });
  const keptSerial = kept.getPeerCertificate().serialNumber;
  let keptBuf = "";
  kept.setEncoding("utf8");
  kept.on("data", (c: string) => { keptBuf += c; });
  const ask = async (): Promise<string> => {
    const from = keptBuf.length;
    kept.write(`GET /healthz HTTP/1.1\r\nHost: ${ADMIN}\r\nAuthorization: Bearer ${token}\r\n\r\n`);
    return waitFor("an answer on the kept connection", () => (/\{"status":"ok"[^}]*\}/.test(keptBuf.slice(from)) ? keptBuf.slice(from) : null));
  };
  t.match(await ask(), /200 OK/, "the kept connection works");
  t.equal(keptSerial, first[1]);

  // Used every second while the renewal comes (an idle keep-alive connection is closed after Node's 5 s anyway).
  let second: string | null = null;
  const deadline = Date.now() + 60_000;
  while (second === null) {
    if (Date.now() > deadline) throw new Error("no renewal within 60 s");
    t.match(await ask(), /200 OK/);
    second = h.proc.matching(/certificate issued .*serial=/).map((l) => /serial=([0-9A-F]+)/.exec(l)![1]!).find((s) => s !== first[1]) ?? null;
    if (second === null) await new Promise((r) => setTimeout(r, 1000));
  }
  t.not(second, first[1], "renewed: a new certificate");
  t.equal(await adminSerial(h.adminPort, rootPem), second, "the next connection gets the new certificate");
  t.match(await ask(), /200 OK/, "the connection open across the renewal still works");
  t.equal(kept.getPeerCertificate().serialNumber, first[1], "with the certificate it was made with");
  kept.end();

  // The CA gone when the next renewal is due: one line per failed order, the certificate in hand keeps being served.
  await proxy.stop();
  const failed = await h.proc.waitLine(/cannot reach the ACME CA .*serving="?serial ([0-9A-F]+)/, { timeoutMs: 60_000 });
  t.equal(failed[1], second, "the failure line says which certificate is still served");
  t.equal(await adminSerial(h.adminPort, rootPem), second, "and the listener still serves it");
  t.equal((await adminCurl(h, rootFile, "/healthz", token)).code, 0, "the admin API keeps answering over TLS");
});

t.test("the hub answers ACME challenges only for its admin hostname: a capsul's own reach the capsul", async (t) => {
  const dir = tmpDir("capsul-hub-admin-only-");
  // The CA is unreachable (port 1): the order fails and waits an hour; the challenges below are put in by hand.
  const hubCfg = hubConfig(dir, {
    admin: { tls: "acme", hostname: ADMIN },
    acme: { directory_url: "https://127.0.0.1:1/dir", retry_min_delay: "1h", retry_max_delay: "2h" },
  });
  const hub = await startTestHub(hubCfg);
  t.teardown(() => hub.close());
  const challenges = hub.adminTls.challenges!;
  t.equal(hub.visitors.acmeChallenges, challenges, "the public listeners answer from the hub's own ACME client");

  const site = `site.home1.${HUB_DOMAIN}`;
  const seen: string[] = [];
  const backend = http.createServer((req, res) => { seen.push(`${req.headers.host} ${req.url}`); res.end(`capsul ${req.url}\n`); });
  const backendPort = await listen(backend);
  t.teardown(() => closeServer(backend));
  const sitePki = await loadOrCreateHubPki(path.join(dir, "site"), [site]);
  let siteAlpn = 0;
  const siteTls = tls.createServer({ key: sitePki.hubKeyPem, cert: sitePki.hubCertPem, ALPNProtocols: ["acme-tls/1"] }, (s) => { siteAlpn++; s.end(); });
  const siteTlsPort = await listen(siteTls);
  t.teardown(() => closeServer(siteTls));
  const cog = await enrolledCog(hubCfg, hub, cogConfig(dir, "home1", hub.ports.tunnel, [
    { name: "site", kind: "http", hostname: site, target: `127.0.0.1:${backendPort}` },
    { name: "site-tls", kind: "tls", hostname: site, target: `127.0.0.1:${siteTlsPort}` },
    // A capsul route for the admin name itself: the hub's own challenge still wins there, other paths reach it.
    { name: "admin-name", kind: "http", hostname: ADMIN, target: `127.0.0.1:${backendPort}` },
  ]), "home1", { hostnames: [ADMIN] });
  t.teardown(() => cog.close());

  const adminPki = await loadOrCreateHubPki(path.join(dir, "alpn"), [ADMIN]);
  challenges.addHttp(ADMIN, "tok1", "tok1.hub-key-authorization");
  challenges.addAlpn(ADMIN, adminPki.hubKeyPem, adminPki.hubCertPem);
  const httpPort = hub.ports.http!;
  const ask = (name: string, token: string) => curl(["-sS", "--resolve", `${name}:${httpPort}:127.0.0.1`, `http://${name}:${httpPort}/.well-known/acme-challenge/${token}`]);

  t.equal((await ask(ADMIN, "tok1")).stdout, "tok1.hub-key-authorization", "the admin hostname's token is answered by the hub");
  t.equal((await ask(site, "tok1")).stdout, "capsul /.well-known/acme-challenge/tok1\n", "the same token on a capsul's hostname reaches the capsul");
  t.equal((await ask(ADMIN, "other")).stdout, "capsul /.well-known/acme-challenge/other\n", "a token the hub does not hold passes to the route");
  t.same(seen, [`${site}:${httpPort} /.well-known/acme-challenge/tok1`, `${ADMIN}:${httpPort} /.well-known/acme-challenge/other`], "the capsul saw exactly those two");

  const alpn = (name: string): Promise<{ alpn: string | false; san: string }> => new Promise((resolve, reject) => {
    const s = tls.connect({ host: "127.0.0.1", port: hub.ports.tls!, servername: name, ALPNProtocols: ["acme-tls/1"], rejectUnauthorized: false }, () => {
      const out = { alpn: s.alpnProtocol ?? false, san: s.getPeerCertificate().subjectaltname ?? "" };
      s.end();
      resolve(out);
    });
    s.on("error", reject);
  });
  const onAdmin = await alpn(ADMIN);
  t.equal(onAdmin.alpn, "acme-tls/1", "an acme-tls/1 handshake for the admin hostname is answered by the hub");
  t.match(onAdmin.san, `DNS:${ADMIN}`, "with the challenge certificate");
  t.equal(siteAlpn, 0);
  const onSite = await alpn(site);
  t.match(onSite.san, `DNS:${site}`, "for a capsul's hostname the capsul's own TLS server answers");
  await waitFor("the capsul's TLS server to count the handshake", () => siteAlpn === 1);
  t.equal(siteAlpn, 1, "and only that one reached the capsul");

  challenges.removeHttp(ADMIN, "tok1");
  challenges.removeAlpn(ADMIN);
  t.equal((await ask(ADMIN, "tok1")).stdout, "capsul /.well-known/acme-challenge/tok1\n", "a closed challenge is no longer answered");
});

t.test("hub.workers: 2: worker 1 orders, every worker answers the challenge and serves the certificate", async (t) => {
  const dir = tmpDir("capsul-hub-admin-workers-");
  const ports = { tls: await freePort(), http: await freePort() };
  const pebble = await startPebble(t, dir, { httpPort: ports.http, tlsPort: ports.tls });
  const rootFile = path.join(dir, "pebble-root.pem");
  fs.writeFileSync(rootFile, await pebble.rootPem());
  // A dead worker stays dead for the rest of the test.
  const h = await startAdminHub(t, dir, ports, { directory_url: pebble.directoryUrl, ca_bundle: pebble.ca.caFile }, {}, {
    workers: 2, worker: { restart_min_delay: "5m", restart_max_delay: "10m" },
  });
  const issued = await h.proc.waitLine(/certificate issued .*serial=([0-9A-F]+)/, { timeoutMs: 60_000 });
  t.equal(h.proc.matching(/ordering a certificate/).length, 1, "one worker ordered, once");
  t.match(h.proc.matching(/ordering a certificate/)[0], /\[hub\/w1\/acme\]/, "worker 1");
  const answered = h.proc.matching(/outcome=acme/).map((l) => /\[hub\/(w\d)\/access\]/.exec(l)?.[1]);
  t.ok(answered.length >= 1, "the validator was answered");
  // Which worker the kernel hands each validation to is its choice: with no share, one landing on worker 2 fails the order.
  t.comment(`validation requests answered by: ${answered.join(", ")}`);
  const token = fs.readFileSync(path.join(h.dataDir, "admin-token"), "utf8").trim();
  const rootPem = fs.readFileSync(rootFile, "utf8");
  // Worker 1 logs "issued" a moment before it hands the certificate on: wait until eight connections in a row have it.
  await waitFor("eight connections in a row with the new certificate", async () => {
    for (let i = 0; i < 8; i++) if (await adminSerial(h.adminPort, rootPem).catch(() => null) !== issued[1]) return false;
    return true;
  }, { timeoutMs: 10_000 });
  for (let i = 0; i < 8; i++) {
    t.equal(await adminSerial(h.adminPort, rootPem), issued[1], `connection ${i + 1}: whichever worker accepts it serves the new certificate`);
  }

  // Worker 2 started before the certificate existed: with worker 1 gone, it alone serves what worker 1 sent it.
  const stats = JSON.parse(fs.readFileSync(path.join(h.dataDir, "hub-workers.json"), "utf8")) as { workers: { worker: number; pid: number }[] };
  const w1 = stats.workers.find((w) => w.worker === 1)!.pid;
  process.kill(w1, "SIGKILL");
  await h.proc.waitLine(/worker died; starting it again .*worker=1/);
  const health = await adminCurl(h, rootFile, "/healthz", token);
  t.equal(health.code, 0, `curl through worker 2: ${health.stderr}`);
  t.match(health.stdout, /"status":"ok"/, "worker 2 serves the admin API over TLS with the certificate worker 1 got");
  t.equal(await adminSerial(h.adminPort, rootPem), issued[1], "the same certificate");
  const metrics = await adminCurl(h, rootFile, "/metrics", token);
  t.match(metrics.stdout, /capsul_hub_certificate_expiry_timestamp_seconds\{kind="acme",name="admin\.hub\.test"\} \d+/, "and exports its expiry");
});

t.test("off loopback without TLS: one warning line at start; tls and hub.acme changes wait for a restart", async (t) => {
  const dir = tmpDir("capsul-hub-admin-plain-");
  const pool = await freePortRange(2);
  const doc = hubDoc(dir, pool.spec) as { hub: { listen: Record<string, unknown> } };
  doc.hub.listen.admin = "0.0.0.0:0";
  const yaml = writeYaml(path.join(dir, "hub.yaml"), doc);
  const proc = spawnCli(t, "hub", ["hub", "-c", yaml]);
  await proc.waitLine(/hub ready/);
  const warned = proc.matching(/admin listener is off loopback without TLS/);
  t.equal(warned.length, 1, "one warning line");
  t.match(warned[0], /WARN/);
  t.match(warned[0], /hub\.admin\.tls/, "it names the key that fixes it");

  // Loopback: nothing crosses a network, no warning.
  const quiet = tmpDir("capsul-hub-admin-loopback-");
  const proc2 = spawnCli(t, "hub2", ["hub", "-c", writeYaml(path.join(quiet, "hub.yaml"), hubDoc(quiet, (await freePortRange(2)).spec))]);
  await proc2.waitLine(/hub ready/);
  t.equal(proc2.matching(/without TLS/).length, 0, "no warning on loopback");

  const certs = await runCli(["hub", "certs", "-c", yaml]);
  t.equal(certs.code, 0, certs.stderr);
  t.match(certs.stdout, /^No certificates\. hub\.admin\.tls: acme/, "capsul hub certs says how to get one");

  // A reload that turns TLS on is refused, naming the key; the hub keeps serving as before.
  writeYaml(yaml, { hub: { ...doc.hub, admin: { tls: "acme", hostname: ADMIN } } });
  const r = await runCli(["hub", "reload", "-c", yaml]);
  t.not(r.code, 0, "capsul hub reload reports the refusal");
  t.match(r.stderr + r.stdout, /hub\.admin\.tls: cannot change while capsul hub runs/);
  t.ok(proc.alive, "the hub keeps running");
});

t.test("tls: files: the operator's certificate and key; a key that does not match is one line and no start", async (t) => {
  const dir = tmpDir("capsul-hub-admin-files-");
  const own = await loadOrCreateHubPki(path.join(dir, "own-ca"), [ADMIN]);
  const other = await loadOrCreateHubPki(path.join(dir, "other-ca"), [ADMIN]);
  const f = (name: string, text: string): string => { fs.writeFileSync(path.join(dir, name), text, { mode: 0o600 }); return path.join(dir, name); };
  const caFile = f("ca.pem", own.caCertPem);
  const certFile = f("admin.crt", own.hubCertPem);
  const keyFile = f("admin.key", own.hubKeyPem);
  const wrongKey = f("wrong.key", other.hubKeyPem);

  const write = (name: string, key: string): string => {
    const doc = hubDoc(dir, "20000-20001", undefined, { admin: { tls: "files", cert_file: certFile, key_file: key } }) as { hub: { listen: Record<string, unknown>; data_dir: string } };
    doc.hub.data_dir = path.join(dir, name);
    return writeYaml(path.join(dir, `${name}.yaml`), doc);
  };
  const proc = spawnCli(t, "hub", ["hub", "-c", write("good", keyFile)]);
  const m = await proc.waitLine(ADMIN_PORT_RE);
  const port = Number(m[1]);
  const r = await curl(["-sS", "--cacert", caFile, "--resolve", `${ADMIN}:${port}:127.0.0.1`, `https://${ADMIN}:${port}/healthz`]);
  t.equal(r.code, 0, r.stderr);
  t.match(r.stdout, /"status":"ok"/, "the admin listener serves the operator's certificate");
  t.equal(proc.matching(/without TLS/).length, 0);

  const listed = await runCli(["hub", "certs", "--json", "-c", path.join(dir, "good.yaml")]);
  t.equal(listed.code, 0, listed.stderr);
  const [fileRow] = JSON.parse(listed.stdout) as { name: string; serial: string; state: string }[];
  t.equal(fileRow?.name, ADMIN, "capsul hub certs lists the operator's certificate");
  t.equal(fileRow?.state, "file", "as one capsul does not renew");
  const table = await runCli(["hub", "certs", "-c", path.join(dir, "good.yaml")]);
  t.match(table.stdout, /admin\.hub\.test .*file \(not renewed by capsul\)/);

  const bad = spawnCli(t, "hub-bad", ["hub", "-c", write("bad", wrongKey)]);
  const exit = await bad.waitExit();
  t.not(exit.code, 0, "a key that does not match the certificate: the hub does not start");
  const said = bad.matching(/hub\.admin\.cert_file/);
  t.equal(said.length, 1, "one line says so");
  t.match(said[0], /do not make a certificate/);
});

t.test("hub.workers: 2: an open TLS-ALPN-01 challenge is answered by every worker, and replayed to a worker that restarts mid-order", async (t) => {
  const dir = tmpDir("capsul-hub-admin-replay-");
  const ports = { tls: await freePort(), http: await freePort() };
  const pebble = await startPebble(t, dir, { httpPort: ports.http, tlsPort: ports.tls });
  // The proxy holds the "validate now" request: the challenge stays open as long as the order may last.
  const proxy = new AcmeFrontProxy(pebble);
  proxy.mode = "hold";
  proxy.holdPath = /^\/chalZ\//;
  await proxy.start();
  t.teardown(() => proxy.stop());
  const h = await startAdminHub(t, dir, ports, {
    directory_url: proxy.directoryUrl, ca_bundle: pebble.ca.caFile, request_timeout: "2m", order_timeout: "3m",
  }, { challenge: "tls-alpn-01" }, { workers: 2, worker: { restart_min_delay: "10s", restart_max_delay: "10s" } });
  await waitFor("the challenge to be open (its validation held)", () => proxy.seen.some((s) => s.action === "held"), { timeoutMs: 30_000 });

  const handshake = (): Promise<{ alpn: string | false; san: string }> => new Promise((resolve, reject) => {
    const s = tls.connect({ host: "127.0.0.1", port: ports.tls, servername: ADMIN, ALPNProtocols: ["acme-tls/1"], rejectUnauthorized: false }, () => {
      const out = { alpn: s.alpnProtocol ?? false, san: s.getPeerCertificate().subjectaltname ?? "" };
      s.end();
      resolve(out);
    });
    s.on("error", reject);
  });
  const handshakes = async (what: string): Promise<void> => {
    for (let i = 0; i < 10; i++) {
      const got = await handshake();
      t.equal(got.alpn, "acme-tls/1", `${what}, handshake ${i + 1}: answered with acme-tls/1`);
      t.equal(got.san, `DNS:${ADMIN}`, "and the challenge certificate");
    }
  };
  await handshakes("both workers");

  const stats = JSON.parse(fs.readFileSync(path.join(h.dataDir, "hub-workers.json"), "utf8")) as { workers: { worker: number; pid: number }[] };
  process.kill(stats.workers.find((w) => w.worker === 2)!.pid, "SIGKILL");
  await h.proc.waitLine(/worker died; starting it again .*worker=2/);
  await waitFor("worker 2 ready again", () => h.proc.matching(/worker ready worker=2/).length >= 2, { timeoutMs: 30_000 });
  await handshakes("after worker 2 restarted");
  t.equal(h.proc.matching(/ordering a certificate/).length, 1, "still the one order, in worker 1");

  // Worker 1 dies mid-order: its open challenge is withdrawn from worker 2 (it orders afresh when it is back, 10 s on).
  const w1 = (JSON.parse(fs.readFileSync(path.join(h.dataDir, "hub-workers.json"), "utf8")) as typeof stats).workers.find((w) => w.worker === 1)!.pid;
  process.kill(w1, "SIGKILL");
  await h.proc.waitLine(/worker died; starting it again .*worker=1/);
  const refused = await waitFor("worker 2 to drop the dead order's challenge", () => handshake().then(() => null, (err: Error) => err.message), { timeoutMs: 5_000, intervalMs: 100 });
  t.match(refused, /unrecognized name/, "an acme-tls/1 handshake for the admin name is no longer answered (no route for it)");
});
