/**
 * TLS termination on the cog, the edges, without a CA: certificates are seeded
 * into the cog's data dir (as a previous run would have left them, made here by
 * a local CA) and the ACME directory is unreachable. Real hub, real cog, real
 * curl. A visitor before any certificate exists, a visitor who stalls after its
 * ClientHello, targets that are down (spliced and HSTS routes), challenge paths
 * nobody opened, unreadable and mismatched stored files, a missing CA bundle.
 */
import t from "tap";
import { createHash, randomBytes } from "node:crypto";
import fs from "node:fs";
import http from "node:http";
import net from "node:net";
import path from "node:path";
import tls from "node:tls";
import { AcmeManager } from "../certs/acme.js";
import { AcmeStore } from "../certs/acme-store.js";
import { loadOrCreateHubPki } from "../certs/pki.js";
import { RuntimeError } from "../lib/errors.js";
import { createLogger, silentLogger } from "../lib/log.js";
import { parseConfig } from "../config/config.js";
import { closeServer, cogConfig, enrolledCog, httpBackend, HUB_DOMAIN, hubConfig, listen, startTestHub, tmpDir } from "./helpers/cluster.js";
import { curl, freePort, waitFor } from "./helpers/procs.js";

const NOWHERE = "https://127.0.0.1:1/dir";
/** Enough to fill the mux window (256 KiB..8 MiB) and several TLS records both ways. */
const SEND_BYTES = 3 * 1024 * 1024;
const REPLY_BYTES = 2 * 1024 * 1024;

/** The first bytes a real TLS client sends for `servername`: its ClientHello, caught by a plain TCP server. */
async function captureClientHello(servername: string): Promise<Buffer> {
  let resolveHello!: (b: Buffer) => void;
  const got = new Promise<Buffer>((r) => { resolveHello = r; });
  const server = net.createServer((s) => s.once("data", (b: Buffer) => { resolveHello(b); s.destroy(); }));
  const port = await listen(server);
  const c = tls.connect({ host: "127.0.0.1", port, servername, rejectUnauthorized: false });
  c.on("error", () => {});
  const hello = await got;
  await closeServer(server);
  return hello;
}

t.test("terminated routes: seeded certificates, no certificate yet, stalled handshakes, dead targets, stray challenge paths", async (t) => {
  const dir = tmpDir("capsul-term-edges-");
  const hubCfg = hubConfig(dir);
  const hub = await startTestHub(hubCfg);
  t.teardown(() => hub.close());
  const backend = await httpBackend("edge");
  t.teardown(() => backend.close());
  const dead = await freePort();

  const n = (label: string) => `${label}.home1.${HUB_DOMAIN}`;
  const seededNames = [n("seeded"), n("down"), n("hstsdown"), n("redir"), n("echo"), n("hsts")];
  // An HTTP target that echoes request bodies, and upgrades to a raw echo (as a WebSocket would).
  const web = http.createServer((req, res) => {
    const chunks: Buffer[] = [];
    req.on("data", (c: Buffer) => chunks.push(c));
    req.on("end", () => res.end(`${req.method} ${req.url} ${Buffer.concat(chunks).length} ${createHash("sha256").update(Buffer.concat(chunks)).digest("hex")}\n`));
  });
  web.on("upgrade", (req: http.IncomingMessage, sock: net.Socket, head: Buffer) => {
    sock.write(`HTTP/1.1 101 Switching Protocols\r\nUpgrade: ${req.headers.upgrade}\r\nConnection: Upgrade\r\n\r\n`);
    if (head.length) sock.write(head);
    sock.pipe(sock);
  });
  const webPort = await listen(web);
  t.teardown(() => closeServer(web));
  // A TCP target that reads until the visitor's FIN, then answers with what it got and closes.
  const echo = net.createServer({ allowHalfOpen: true }, (s) => {
    const hash = createHash("sha256");
    let bytes = 0;
    s.on("data", (c: Buffer) => { hash.update(c); bytes += c.length; });
    s.on("end", () => {
      const reply = Buffer.alloc(REPLY_BYTES, 7);
      s.end(Buffer.concat([Buffer.from(`${bytes} ${hash.digest("hex")}\n`), reply]));
    });
    s.on("error", () => {});
  });
  const echoPort = await listen(echo);
  t.teardown(() => closeServer(echo));
  const pki = await loadOrCreateHubPki(path.join(dir, "local-ca"), seededNames);
  const caFile = path.join(dir, "local-ca.crt");
  fs.writeFileSync(caFile, pki.caCertPem);

  const cfg = cogConfig(dir, "home1", hub.ports.tunnel, [
    { name: "seeded", kind: "tls", hostname: n("seeded"), target: `127.0.0.1:${backend.port}`, tls: "terminate" },
    { name: "nocert", kind: "tls", hostname: n("nocert"), target: `127.0.0.1:${backend.port}`, tls: "terminate" },
    { name: "down", kind: "tls", hostname: n("down"), target: `127.0.0.1:${dead}`, tls: "terminate" },
    { name: "hstsdown", kind: "tls", hostname: n("hstsdown"), target: `127.0.0.1:${dead}`, tls: "terminate", hsts: "1h" },
    { name: "redir", kind: "tls", hostname: n("redir"), target: `127.0.0.1:${backend.port}`, tls: "terminate", redirect_http: true },
    { name: "echo", kind: "tls", hostname: n("echo"), target: `127.0.0.1:${echoPort}`, tls: "terminate", proxy_protocol: "none" },
    { name: "hsts", kind: "tls", hostname: n("hsts"), target: `127.0.0.1:${webPort}`, tls: "terminate", hsts: true },
    { name: "broken", kind: "tls", hostname: n("broken"), target: `127.0.0.1:${backend.port}`, tls: "terminate" },
    { name: "mismatch", kind: "tls", hostname: n("mismatch"), target: `127.0.0.1:${backend.port}`, tls: "terminate" },
  ], {}, { acme: { directory_url: NOWHERE, retry_min_delay: "1h", retry_max_delay: "2h" }, terminate: { handshake_timeout: "300ms" } });

  // What an earlier run left: certificates for four names, an unreadable file, a key that is not the
  // certificate's, and a temp file of a write a crash interrupted.
  const store = new AcmeStore(cfg.dataDir);
  for (const name of seededNames) {
    await store.saveCert({ name, directoryUrl: NOWHERE, keyPem: pki.hubKeyPem, chainPem: pki.hubCertPem, issuedAt: new Date().toISOString() });
  }
  const other = await loadOrCreateHubPki(path.join(dir, "other-ca"), [n("mismatch")]);
  await store.saveCert({ name: n("mismatch"), directoryUrl: NOWHERE, keyPem: pki.hubKeyPem, chainPem: other.hubCertPem, issuedAt: "" });
  fs.writeFileSync(store.certFile(n("broken")), "{ not json");
  fs.writeFileSync(path.join(path.dirname(store.certFile(n("seeded"))), `.${n("seeded")}.json.123.abcdef.tmp`), "{\"half\":");

  const lines: string[] = [];
  const cog = await enrolledCog(hubCfg, hub, cfg, "home1", { log: createLogger({ level: "debug", write: (l) => lines.push(l) }) });
  t.teardown(() => cog.close());
  const tlsPort = hub.ports.tls!;
  const httpPort = hub.ports.http!;
  const https = (name: string, p = "/", extra: string[] = []) =>
    curl(["-D", "-", "--cacert", caFile, "--resolve", `${name}:${tlsPort}:127.0.0.1`, ...extra, `https://${name}:${tlsPort}${p}`]);

  await t.test("a stored certificate is served at once, with no order", async (t) => {
    const r = await https(n("seeded"), "/s");
    t.equal(r.code, 0, r.stderr);
    t.match(r.stdout, `edge ${n("seeded")}:${tlsPort} /s`);
    const row = cog.acme.list().find((x) => x.name === n("seeded"))!;
    t.equal(row.state, "scheduled");
    t.notOk(lines.some((l) => l.includes("ordering a certificate") && l.includes(`name=${n("seeded")}`)), "nothing ordered for it");
  });

  await t.test("a TCP target behind termination: megabytes both ways, half-close kept end to end", async (t) => {
    const payload = randomBytes(SEND_BYTES);
    const got: Buffer[] = [];
    await new Promise<void>((resolve, reject) => {
      const s = tls.connect({ host: "127.0.0.1", port: tlsPort, servername: n("echo"), ca: pki.caCertPem, allowHalfOpen: true }, () => {
        s.end(payload); // FIN (close_notify) after the last byte; the answer comes after it
      });
      s.on("data", (c: Buffer) => got.push(c));
      s.on("end", () => resolve());
      s.on("error", reject);
    });
    const all = Buffer.concat(got);
    const nl = all.indexOf(10);
    t.equal(all.subarray(0, nl).toString(), `${SEND_BYTES} ${createHash("sha256").update(payload).digest("hex")}`, "the target got every byte, then the FIN");
    t.equal(all.length - nl - 1, REPLY_BYTES, "and its whole answer, sent after the visitor's FIN, arrived");
  });

  await t.test("with HSTS (an HTTP proxy on the TLS side): request bodies, keep-alive and upgrades pass", async (t) => {
    const bodyFile = path.join(dir, "body.bin");
    const body = randomBytes(SEND_BYTES);
    fs.writeFileSync(bodyFile, body);
    const r = await https(n("hsts"), "/up", ["--data-binary", `@${bodyFile}`, "-H", "Content-Type: application/octet-stream"]);
    t.equal(r.code, 0, r.stderr);
    t.match(r.stdout, `POST /up ${SEND_BYTES} ${createHash("sha256").update(body).digest("hex")}`, "a 3 MiB POST body arrives whole");
    t.match(r.stdout, /^strict-transport-security: max-age=31536000\r?$/im);
    // Two requests on one connection.
    const two = await curl(["-s", "--cacert", caFile, "--resolve", `${n("hsts")}:${tlsPort}:127.0.0.1`,
      `https://${n("hsts")}:${tlsPort}/a`, `https://${n("hsts")}:${tlsPort}/b`, "-w", "%{num_connects}\n"]);
    t.match(two.stdout, /^GET \/a 0 [0-9a-f]+\n1\nGET \/b 0 [0-9a-f]+\n0\n$/, "the second request reused the connection");
    // An upgrade: the head goes through, then raw bytes both ways.
    const echoed = await new Promise<string>((resolve, reject) => {
      const s = tls.connect({ host: "127.0.0.1", port: tlsPort, servername: n("hsts"), ca: pki.caCertPem }, () => {
        s.write(`GET /ws HTTP/1.1\r\nHost: ${n("hsts")}\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\r\n`);
      });
      let got = "";
      s.setEncoding("utf8");
      s.on("data", (c: string) => {
        got += c;
        if (got.includes("\r\n\r\n") && !got.includes("ping")) s.write("ping");
        if (got.endsWith("ping")) { s.end(); resolve(got); }
      });
      s.on("error", reject);
    });
    t.match(echoed, /^HTTP\/1.1 101 Switching Protocols\r\n/, "101 from the target");
    t.ok(echoed.endsWith("\r\n\r\nping"), "then raw bytes echoed through");
  });

  await t.test("unreadable and mismatched files are set aside with a warning; a crash's temp file is ignored", async (t) => {
    t.ok(lines.some((l) => / WARN .*ignoring an unreadable certificate file/.test(l) && l.includes(`${n("broken")}.json`)), "broken file warned about");
    t.ok(lines.some((l) => / WARN .*does not load/.test(l) && l.includes(`name=${n("mismatch")}`)), "a key that is not the certificate's is never served");
    t.notOk(lines.some((l) => l.includes(".tmp")), "the temp file is not even mentioned");
    await waitFor("orders for the names without a usable certificate", () => ["nocert", "broken", "mismatch"].every((l) =>
      lines.some((x) => x.includes("ordering a certificate") && x.includes(`name=${n(l)}`))));
    const r = await https(n("mismatch"));
    t.not(r.code, 0, "no certificate is served for it");
  });

  await t.test("a visitor before any certificate exists gets a TLS alert, and the cog carries on", async (t) => {
    const r = await https(n("nocert"));
    t.not(r.code, 0);
    t.match(r.stderr, /alert internal error/i, `curl: ${r.stderr.trim()}`);
    const again = await https(n("seeded"));
    t.equal(again.code, 0, "other names are unaffected");
  });

  await t.test("a visitor who stalls after the ClientHello is dropped after handshake_timeout", async (t) => {
    const hello = await captureClientHello(n("seeded"));
    const s = net.connect({ host: "127.0.0.1", port: tlsPort });
    let closed = false;
    let answered = 0;
    s.on("data", (b: Buffer) => { answered += b.length; });
    s.on("error", () => {});
    s.on("close", () => { closed = true; });
    s.write(hello);
    await waitFor("the stalled connection to be closed", () => closed, { timeoutMs: 15_000 });
    t.ok(answered > 0, "the cog did answer the ClientHello (ServerHello...) before giving up");
    t.ok(closed, "closed");
  });

  await t.test("a dead target: the spliced route closes, the HSTS route answers 502", async (t) => {
    const spliced = await https(n("down"));
    t.not(spliced.code, 0, "no answer on a spliced route whose target is down");
    t.ok(lines.some((l) => / WARN .*target unreachable/.test(l) && l.includes("route=down")), "logged");
    const proxied = await https(n("hstsdown"));
    t.equal(proxied.code, 0, proxied.stderr);
    t.match(proxied.stdout, /^HTTP\/1.1 502 /m);
    t.match(proxied.stdout, /^strict-transport-security: max-age=3600\r?$/im, "HSTS of the route's duration (1h)");
  });

  await t.test("challenge paths nobody opened are not answered: redirected or passed on", async (t) => {
    const ask = (name: string, p: string) => curl(["-D", "-", "-o", "/dev/null", "--resolve", `${name}:${httpPort}:127.0.0.1`, `http://${name}:${httpPort}${p}`]);
    const r = await ask(n("redir"), "/.well-known/acme-challenge/nosuchtoken");
    t.match(r.stdout, /^HTTP\/1.1 308 /m, "an unknown token on a redirecting route is redirected like any path");
    const p = await curl(["--path-as-is", "--resolve", `${n("seeded")}:${httpPort}:127.0.0.1`, `http://${n("seeded")}:${httpPort}/.well-known/acme-challenge/x/../../etc`]);
    t.match(p.stdout, `edge ${n("seeded")}:${httpPort} /.well-known/acme-challenge/x/../../etc`, "and passed to the target where the route does not redirect");
  });
});

t.test("a CA bundle that cannot be read stops the cog with one line naming the key", async (t) => {
  const dir = tmpDir("capsul-acme-bundle-");
  const missing = path.join(dir, "nope.pem");
  const cfg = parseConfig({ cog: { data_dir: dir, acme: { ca_bundle: missing } } }).cog!;
  const m = new AcmeManager(cfg.acme, cfg.dataDir, silentLogger);
  await t.rejects(m.start(), new RuntimeError(`cannot read cog.acme.ca_bundle ${missing}: ENOENT`));
  fs.writeFileSync(missing, "not a certificate\n");
  await t.rejects(new AcmeManager(cfg.acme, cfg.dataDir, silentLogger).start(), { message: /holds no PEM certificate/ });
});
