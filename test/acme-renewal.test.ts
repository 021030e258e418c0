/**
 * Renewal with real short-lived certificates: pebble issues 20-second
 * certificates, the cog renews at two thirds of that, keeps serving, does not
 * drop a connection that is open across the renewal (it keeps the certificate
 * it was handshaken with), and the next connection is handed the new one. The cog's
 * /metrics exports each certificate's expiry and follows the renewal.
 */
import t from "tap";
import http from "node:http";
import tls from "node:tls";
import { closeServer, cogConfig, enrolledCog, HUB_DOMAIN, listen, tmpDir } from "./helpers/cluster.js";
import { acmeKeys, acmeWorld, presentedSerial, waitIssued } from "./helpers/acme.js";
import { scrape } from "./helpers/adminclient.js";

/** pebble's certificate lifetime here: long enough for the steps before the renewal, short enough to wait for it. */
const VALIDITY_SEC = 20;

/** One keep-alive HTTPS connection through the hub on which requests are sent one after another. */
class KeptConnection {
  private buf = "";
  private waiting: ((text: string) => void) | null = null;
  readonly sock: tls.TLSSocket;
  closed = false;

  constructor(port: number, private readonly name: string, caPem: string) {
    this.sock = tls.connect({ host: "127.0.0.1", port, servername: name, ca: caPem });
    this.sock.setEncoding("utf8");
    this.sock.on("data", (c: string) => { this.buf += c; this.check(); });
    this.sock.on("close", () => { this.closed = true; });
    this.sock.on("error", () => {});
  }

  ready(): Promise<void> {
    return new Promise((resolve, reject) => {
      this.sock.once("secureConnect", () => resolve());
      this.sock.once("error", reject);
    });
  }

  private check(): void {
    const end = this.buf.indexOf("\n", this.buf.indexOf("\r\n\r\n") + 4);
    if (this.buf.includes("\r\n\r\n") && end > 0 && this.waiting) {
      const text = this.buf.slice(0, end + 1);
      this.buf = this.buf.slice(end + 1);
      const w = this.waiting;
      this.waiting = null;
      w(text);
    }
  }

  get(path: string): Promise<string> {
    return new Promise((resolve, reject) => {
      if (this.closed) { reject(new Error("connection closed")); return; }
      this.waiting = resolve;
      this.sock.once("close", () => reject(new Error("connection closed before the answer")));
      this.sock.write(`GET ${path} HTTP/1.1\r\nHost: ${this.name}\r\n\r\n`);
    });
  }
}

t.test("short-lived certificates are renewed; an open connection survives, the next one gets the new certificate", async (t) => {
  const dir = tmpDir("capsul-acme-renew-");
  const w = await acmeWorld(t, dir, { validitySec: VALIDITY_SEC });
  const rootPem = await w.pebble.rootPem();
  // A backend that keeps connections for as long as the test needs (Node's default is 5 s).
  const conns = new Set<number>();
  const backend = http.createServer((req, res) => {
    conns.add(req.socket.remotePort ?? 0);
    res.end(`backend ${req.url} via ${req.socket.remotePort}\n`);
  });
  backend.keepAliveTimeout = 120_000;
  const backendPort = await listen(backend);
  t.teardown(() => closeServer(backend));

  const name = `site.home1.${HUB_DOMAIN}`;
  const cfg = cogConfig(dir, "home1", w.hub.ports.tunnel, [
    { name: "site", kind: "tls", hostname: name, target: `127.0.0.1:${backendPort}`, tls: "terminate", challenge: "tls-alpn-01" },
  ], {}, acmeKeys(w.pebble.directoryUrl, w.pebble.ca.caFile));
  const cog = await enrolledCog(w.hubCfg, w.hub, cfg, "home1");
  t.teardown(() => cog.close());

  const first = await waitIssued(cog, name);
  // The ACME manager's certificates reach the cog's /metrics through certificates.register().
  const expiry = async (): Promise<number | undefined> =>
    (await scrape(cog.admin!.port)).value("capsul_cog_certificate_expiry_timestamp_seconds", { kind: "acme", name });
  t.equal(await expiry(), Math.floor(Date.parse(first.notAfter!) / 1000), "the first certificate's expiry is exported");
  const lifetimeMs = Date.parse(first.notAfter!) - Date.parse(first.notBefore!);
  t.ok(lifetimeMs <= (VALIDITY_SEC + 1) * 1000, `pebble issued a short certificate (${lifetimeMs} ms)`);
  const renewAt = Date.parse(first.renewAt!);
  const lifeStart = Date.parse(first.notBefore!);
  t.ok(renewAt > lifeStart + lifetimeMs * 0.6 && renewAt <= lifeStart + lifetimeMs * (2 / 3) + 1000, "renewal is planned at two thirds of the lifetime, less jitter");

  const tlsPort = w.hub.ports.tls!;
  const kept = new KeptConnection(tlsPort, name, rootPem);
  await kept.ready();
  t.equal(kept.sock.getPeerCertificate().serialNumber, first.serial, "the open connection was handshaken with the first certificate");
  const a = await kept.get("/before");
  t.match(a, /^HTTP\/1.1 200/);
  t.match(a, "backend /before via");

  const second = await waitIssued(cog, name, { notSerial: first.serial, timeoutMs: VALIDITY_SEC * 3 * 1000 });
  t.not(second.serial, first.serial, "a new certificate was issued before the first expired");
  t.ok(Date.parse(second.lastIssuedAt!) < Date.parse(first.notAfter!), "renewed before the old one expired");
  t.equal(await expiry(), Math.floor(Date.parse(second.notAfter!) / 1000), "the exported expiry moved with the renewal");
  t.ok(Date.parse(second.notAfter!) > Date.parse(first.notAfter!), "(to a later time)");

  t.notOk(kept.closed, "the connection open across the renewal was not dropped");
  const b = await kept.get("/after");
  t.match(b, "backend /after via", "and still carries requests");
  t.equal(kept.sock.getPeerCertificate().serialNumber, first.serial, "it keeps the certificate it was handshaken with");
  t.equal(conns.size, 1, "both requests went over the same backend connection");

  t.equal(await presentedSerial(tlsPort, name, rootPem), second.serial, "the next connection is handed the new certificate");
  kept.sock.end();
});
