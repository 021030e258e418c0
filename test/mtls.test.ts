/**
 * Real mutual TLS 1.3 over loopback with the certificates certs/pki.ts makes:
 * the hub accepts with requestCert:true, rejectUnauthorized:false and judges the
 * client certificate itself; the cog either trusts the CA (normal tunnel) or,
 * while enrolling, pins it by fingerprint with verifyPinnedChain.
 */
import t from "tap";
import { once } from "node:events";
import { mkdtemp, readFile, rm } from "node:fs/promises";
import type { AddressInfo } from "node:net";
import { tmpdir } from "node:os";
import { join } from "node:path";
import tls from "node:tls";
import * as x509 from "@peculiar/x509";
import { AuthError } from "../lib/errors.js";
import {
  type HubPki, certInfo, createKeyAndCsr, loadOrCreateHubPki, peerAuthResult, signCogCsr, verifyPinnedChain,
} from "../certs/pki.js";

const DAY_MS = 86_400_000;

async function tmpDir(t: Tap.Test): Promise<string> {
  const dir = await mkdtemp(join(tmpdir(), "capsul-mtls-"));
  t.teardown(() => rm(dir, { recursive: true, force: true }));
  return dir;
}

interface ServerSeen {
  authorized: boolean;
  authorizationError: string | undefined;
  protocol: string | null;
  result: ReturnType<typeof peerAuthResult>;
}

/** A hub tunnel listener on 127.0.0.1:0. `cert` defaults to hub cert + CA, the chain the hub should serve. */
async function startHub(t: Tap.Test, pki: HubPki, cert = pki.hubCertPem + pki.caCertPem, key = pki.hubKeyPem) {
  const seen: ServerSeen[] = [];
  const waiters: ((s: ServerSeen) => void)[] = [];
  const server = tls.createServer({
    cert, key, ca: pki.caCertPem,
    requestCert: true, rejectUnauthorized: false, minVersion: "TLSv1.3",
  }, (socket) => {
    const s: ServerSeen = {
      authorized: socket.authorized,
      authorizationError: socket.authorizationError === undefined ? undefined : String(socket.authorizationError),
      protocol: socket.getProtocol(),
      result: peerAuthResult(socket),
    };
    const w = waiters.shift();
    if (w) w(s); else seen.push(s);
    socket.on("error", () => {});
    socket.end(s.result.ok ? `hello ${s.result.cogName}` : "denied");
  });
  server.listen(0, "127.0.0.1");
  await once(server, "listening");
  t.teardown(() => new Promise<void>((resolve) => server.close(() => resolve())));
  const port = (server.address() as AddressInfo).port;
  const next = (): Promise<ServerSeen> => {
    const s = seen.shift();
    return s ? Promise.resolve(s) : new Promise((resolve) => waiters.push(resolve));
  };
  return { port, next };
}

/** Connects, reads until the hub closes, returns what the client saw. */
async function dial(port: number, opts: tls.ConnectionOptions): Promise<{ reply: string; socket: tls.TLSSocket }> {
  const socket = tls.connect({ host: "127.0.0.1", port, minVersion: "TLSv1.3", ...opts });
  const chunks: Buffer[] = [];
  socket.on("data", (c: Buffer) => chunks.push(c));
  await once(socket, "secureConnect");
  await once(socket, "end");
  socket.end();
  return { reply: Buffer.concat(chunks).toString(), socket };
}

async function cogCert(pki: HubPki, name: string, opts: { validityMs: number; notBefore?: Date } = { validityMs: 90 * DAY_MS }) {
  const { keyPem, csrPem } = await createKeyAndCsr(name);
  const { certPem } = await signCogCsr(pki, csrPem, name, opts);
  return { key: keyPem, cert: certPem };
}

t.test("mutual TLS between hub and cog", async (t) => {
  const pki = await loadOrCreateHubPki(await tmpDir(t), ["hub.test"]);
  const hub = await startHub(t, pki);

  t.test("good cog cert: authorized, CN is the cog name", async (t) => {
    const cog = await cogCert(pki, "home1");
    const client = await dial(hub.port, { ...cog, ca: pki.caCertPem, servername: "hub.test" });
    const s = await hub.next();
    t.equal(s.protocol, "TLSv1.3");
    t.equal(s.authorized, true);
    const info = certInfo(cog.cert);
    t.same(s.result, { ok: true, cogName: "home1", serial: info.serial, notBefore: info.notBefore, notAfter: info.notAfter });
    t.equal(client.reply, "hello home1");
    t.equal(client.socket.authorized, true, "cog verified the hub cert against the CA and the name");
  });

  t.test("the identity read from the handshake is the full parse's, for many certificates", async (t) => {
    // peerAuthResult takes CN, serial and validity from getPeerCertificate() (no re-parse);
    // certInfo parses the PEM with @peculiar/x509. Random serials cover high-bit and short ones.
    for (let i = 0; i < 12; i++) {
      const cog = await cogCert(pki, `many${i}`, { validityMs: (i + 1) * DAY_MS });
      await dial(hub.port, { ...cog, ca: pki.caCertPem, servername: "hub.test" });
      const s = await hub.next();
      const info = certInfo(cog.cert);
      t.same(s.result, { ok: true, cogName: `many${i}`, serial: info.serial, notBefore: info.notBefore, notAfter: info.notAfter }, `cert ${i} (serial ${info.serial})`);
    }
  });

  t.test("a certificate with two CNs: the first names the cog, as the full parse reads it", async (t) => {
    // Our CA never issues one; a CA key used elsewhere could. The handshake reports the CNs
    // as an array, and peerAuthResult must then fall back to the full parse, not fail open.
    const { keyPem } = await createKeyAndCsr("x");
    const subtle = globalThis.crypto.subtle;
    const alg = { name: "ECDSA", namedCurve: "P-256" } as const;
    const der = (p: string): Buffer => Buffer.from(p.replace(/-----[^-]+-----|\s/g, ""), "base64");
    const caKey = await subtle.importKey("pkcs8", der(pki.caKeyPem), alg, false, ["sign"]);
    const priv = await subtle.importKey("pkcs8", der(keyPem), alg, true, ["sign"]);
    const jwk = await subtle.exportKey("jwk", priv);
    const pub = await subtle.importKey("jwk", { kty: jwk.kty, crv: jwk.crv, x: jwk.x, y: jwk.y }, alg, true, ["verify"]);
    const ca = new x509.X509Certificate(pki.caCertPem);
    const cert = await x509.X509CertificateGenerator.create({
      serialNumber: "0a1b2c3d4e5f",
      issuer: ca.subjectName,
      subject: [{ CN: ["home3"] }, { CN: ["other"] }],
      notBefore: new Date(Date.now() - 60_000),
      notAfter: new Date(Date.now() + DAY_MS),
      publicKey: pub,
      signingKey: caKey,
      signingAlgorithm: { name: "ECDSA", hash: "SHA-256" },
      extensions: [new x509.ExtendedKeyUsageExtension([x509.ExtendedKeyUsage.clientAuth], false)],
    });
    const certPem = cert.toString("pem");
    await dial(hub.port, { key: keyPem, cert: certPem, ca: pki.caCertPem, servername: "hub.test" });
    const s = await hub.next();
    t.equal(s.authorized, true);
    const info = certInfo(certPem);
    t.equal(info.commonName, "home3");
    t.same(s.result, { ok: true, cogName: "home3", serial: info.serial, notBefore: info.notBefore, notAfter: info.notAfter });
  });

  t.test("the cog also accepts the hub by IP literal and localhost", async (t) => {
    const cog = await cogCert(pki, "home1");
    const byIp = await dial(hub.port, { ...cog, ca: pki.caCertPem }); // identity checked against 127.0.0.1
    t.equal(byIp.socket.authorized, true);
    t.ok((await hub.next()).authorized);
    const byName = await dial(hub.port, { ...cog, ca: pki.caCertPem, servername: "localhost" });
    t.equal(byName.socket.authorized, true);
    t.ok((await hub.next()).authorized);
  });

  t.test("no client cert: not authorized, with a clear reason", async (t) => {
    const client = await dial(hub.port, { ca: pki.caCertPem, servername: "hub.test" });
    const s = await hub.next();
    t.equal(s.authorized, false);
    t.ok(s.authorizationError, `node reports ${s.authorizationError}`);
    t.same(s.result, { ok: false, reason: "no client certificate presented" });
    t.equal(client.reply, "denied");
  });

  t.test("cert from another CA: not authorized", async (t) => {
    // Same hub names, so the rogue CA even has the same subject name as ours.
    const rogueSameName = await loadOrCreateHubPki(await tmpDir(t), ["hub.test"]);
    const rogueOtherName = await loadOrCreateHubPki(await tmpDir(t), ["evil.test"]);
    for (const rogue of [rogueSameName, rogueOtherName]) {
      const cog = await cogCert(rogue, "home1");
      const client = await dial(hub.port, { ...cog, ca: pki.caCertPem, servername: "hub.test" });
      const s = await hub.next();
      t.equal(s.authorized, false);
      t.match(s.authorizationError, /^(UNABLE_TO_VERIFY_LEAF_SIGNATURE|UNABLE_TO_GET_ISSUER_CERT_LOCALLY|CERT_SIGNATURE_FAILURE)$/, `node reports ${s.authorizationError}`);
      t.notOk(s.result.ok);
      if (!s.result.ok) t.match(s.result.reason, /not signed by this hub's CA|signature is invalid/);
      t.equal(client.reply, "denied");
    }
  });

  t.test("expired cog cert: CERT_HAS_EXPIRED", async (t) => {
    const cog = await cogCert(pki, "home1", { validityMs: 3_600_000, notBefore: new Date(Date.now() - 2 * 3_600_000) });
    t.ok(certInfo(cog.cert).notAfter.getTime() < Date.now(), "cert is in the past");
    const client = await dial(hub.port, { ...cog, ca: pki.caCertPem, servername: "hub.test" });
    const s = await hub.next();
    t.equal(s.authorized, false);
    t.equal(s.authorizationError, "CERT_HAS_EXPIRED");
    t.same(s.result, { ok: false, code: "CERT_HAS_EXPIRED", reason: "client certificate has expired (CERT_HAS_EXPIRED)" });
    t.equal(client.reply, "denied");
  });

  t.test("the hub's own server cert cannot be used as a client cert", async (t) => {
    const client = await dial(hub.port, { cert: pki.hubCertPem, key: pki.hubKeyPem, ca: pki.caCertPem, servername: "hub.test" });
    const s = await hub.next();
    t.equal(s.authorized, false);
    t.equal(s.authorizationError, "INVALID_PURPOSE", "serverAuth-only EKU refused for client auth");
    t.equal(client.reply, "denied");
  });
});

t.test("enrollment: the cog pins the CA by fingerprint", async (t) => {
  const pki = await loadOrCreateHubPki(await tmpDir(t), ["hub.test"]);

  /**
   * What `capsul cog enroll` sees: it connects without a trust anchor, then checks
   * the chain itself. Node links `issuerCertificate` only to a sent cert that
   * really issued the leaf, so `ca` is missing when the hub's chain is broken.
   */
  async function presented(port: number): Promise<{ peer: Buffer; ca: Buffer | undefined }> {
    const { socket } = await dial(port, { rejectUnauthorized: false, servername: "hub.test" });
    const peer = socket.getPeerCertificate(true);
    const issuer = peer.issuerCertificate as tls.DetailedPeerCertificate | undefined;
    return { peer: peer.raw, ca: issuer && issuer !== peer ? issuer.raw : undefined };
  }

  t.test("the right fingerprint passes, a wrong one is refused", async (t) => {
    const hub = await startHub(t, pki);
    const { peer, ca } = await presented(hub.port);
    await hub.next();
    if (!ca) throw new Error("hub did not send its CA in the chain");
    t.doesNotThrow(() => verifyPinnedChain(peer, ca, pki.caFingerprint));
    t.doesNotThrow(() => verifyPinnedChain(peer, ca, pki.caFingerprint.toUpperCase().replace("SHA256", "sha256")), "case-insensitive");
    const wrong = "sha256:" + "0".repeat(64);
    t.throws(() => verifyPinnedChain(peer, ca, wrong), AuthError);
    t.throws(() => verifyPinnedChain(peer, ca, wrong), { message: /fingerprint mismatch/ });
    t.throws(() => verifyPinnedChain(peer, ca, "sha1:abcd"), { name: "AuthError", message: /malformed CA fingerprint/ });
  });

  t.test("a hub cert from another CA is refused, whatever CA it shows", async (t) => {
    const rogue = await loadOrCreateHubPki(await tmpDir(t), ["hub.test"]);
    // A man in the middle with its own CA: the fingerprint gives it away.
    const mitmOwnCa = await startHub(t, rogue);
    const a = await presented(mitmOwnCa.port);
    await mitmOwnCa.next();
    t.ok(a.ca);
    t.throws(() => verifyPinnedChain(a.peer, a.ca!, pki.caFingerprint), { name: "AuthError", message: /fingerprint mismatch/ });
    // One that serves the genuine (public) CA cert next to its own leaf: Node does not
    // even link it as the issuer, and checked against that CA the signature gives it away.
    const mitmRealCa = await startHub(t, rogue, rogue.hubCertPem + pki.caCertPem);
    const b = await presented(mitmRealCa.port);
    await mitmRealCa.next();
    t.equal(b.ca, undefined, "no issuer linked");
    const realCaDer = pemBody(pki.caCertPem);
    t.throws(() => verifyPinnedChain(b.peer, realCaDer, pki.caFingerprint), { name: "AuthError", message: /not signed by the pinned CA/ });
  });

  t.test("another cog's client cert cannot pose as the hub", async (t) => {
    const cog = await cogCert(pki, "mallory");
    const mitm = await startHub(t, pki, cog.cert + pki.caCertPem, cog.key);
    const c = await presented(mitm.port);
    await mitm.next();
    t.ok(c.ca);
    t.throws(() => verifyPinnedChain(c.peer, c.ca!, pki.caFingerprint), { name: "AuthError", message: /not a server certificate/ });
  });

  t.test("an expired hub cert is refused", async (t) => {
    const dataDir = await tmpDir(t);
    const realNow = Date.now;
    const past = realNow() - 400 * DAY_MS; // the 397-day hub cert is 3 days past its end
    Date.now = () => past;
    let old: HubPki;
    try {
      old = await loadOrCreateHubPki(dataDir, ["hub.test"]);
    } finally {
      Date.now = realNow;
    }
    const hubCrt = await readFile(join(dataDir, "pki", "hub.crt"), "utf8");
    const hub = await startHub(t, old, hubCrt + old.caCertPem, old.hubKeyPem);
    const { peer, ca } = await presented(hub.port);
    await hub.next();
    t.ok(ca);
    t.throws(() => verifyPinnedChain(peer, ca!, old.caFingerprint), { name: "AuthError", message: /hub certificate expired on/ });
  });
});

t.test("signCogCsr", async (t) => {
  const pki = await loadOrCreateHubPki(await tmpDir(t), ["hub.test"]);

  t.test("ignores the CSR subject: CN is forced to the cog name", async (t) => {
    const { csrPem } = await createKeyAndCsr("admin");
    const { certPem, serial, notAfter } = await signCogCsr(pki, csrPem, "home2", { validityMs: 10 * DAY_MS });
    const info = certInfo(certPem);
    t.equal(info.commonName, "home2");
    t.equal(info.issuerCommonName, "capsul hub CA hub.test");
    t.equal(info.serial, serial);
    t.match(serial, /^[0-9a-f]{2,32}$/);
    t.same(info.notAfter, notAfter);
    t.ok(Math.abs(notAfter.getTime() - (Date.now() + 10 * DAY_MS)) < 60_000);
    const serials = new Set<string>([serial]);
    for (let i = 0; i < 20; i++) serials.add((await signCogCsr(pki, csrPem, "home2", { validityMs: DAY_MS })).serial);
    t.equal(serials.size, 21, "serials are random");
  });

  t.test("a CSR with a broken signature is refused", async (t) => {
    const { csrPem } = await createKeyAndCsr("victim-name");
    const der = pemBody(csrPem);
    // The ECDSA signature's last byte: the DER stays well-formed, the signature does not verify.
    const badSig = Buffer.from(der);
    badSig[badSig.length - 1] ^= 0x01;
    await t.rejects(signCogCsr(pki, toPem(badSig), "home1", { validityMs: DAY_MS }), { name: "AuthError", message: /signature does not verify/ });
    // An altered subject, signature untouched.
    const badSubject = Buffer.from(der);
    const at = badSubject.indexOf("victim-name");
    t.ok(at > 0);
    badSubject[at] = "V".charCodeAt(0);
    await t.rejects(signCogCsr(pki, toPem(badSubject), "home1", { validityMs: DAY_MS }), AuthError);
    await t.rejects(signCogCsr(pki, "not a csr", "home1", { validityMs: DAY_MS }), { name: "AuthError", message: /not a valid PKCS#10/ });
  });

  t.test("refuses a bad cog name", async (t) => {
    const { csrPem } = await createKeyAndCsr("x");
    await t.rejects(signCogCsr(pki, csrPem, "Bad Name", { validityMs: DAY_MS }), { name: "RuntimeError", message: /invalid cog name/ });
  });
});

function pemBody(pem: string): Buffer {
  return Buffer.from(pem.replace(/-----(BEGIN|END) [A-Z ]+-----/g, "").replace(/\s+/g, ""), "base64");
}

function toPem(der: Buffer): string {
  const b64 = der.toString("base64").replace(/.{64}/g, "$&\n");
  return `-----BEGIN CERTIFICATE REQUEST-----\n${b64}\n-----END CERTIFICATE REQUEST-----\n`;
}
