import t from "tap";
import { execFileSync } from "node:child_process";
import { X509Certificate } from "node:crypto";
import { readFile, stat, unlink, writeFile } from "node:fs/promises";
import { join } from "node:path";
import { RuntimeError } from "../lib/errors.js";
import { readPem, writeSecretFile } from "../certs/files.js";
import {
  CA_VALIDITY_MS, HUB_CERT_VALIDITY_MS, certFingerprint, certInfo, createKeyAndCsr, loadOrCreateHubPki,
} from "../certs/pki.js";

const NAMES = ["hub.example.com", "203.0.113.7", "2001:db8::1"];

function hasOpenssl(): boolean {
  try { execFileSync("openssl", ["version"], { stdio: "ignore" }); return true; } catch { return false; }
}

async function mode(path: string): Promise<number> {
  return (await stat(path)).mode & 0o777;
}

t.test("first start creates the CA and hub cert; reload keeps them", async (t) => {
  const dataDir = t.testdir();
  const pki = await loadOrCreateHubPki(dataDir, NAMES);
  const dir = join(dataDir, "pki");

  t.match(pki.caFingerprint, /^sha256:[0-9a-f]{64}$/);
  t.equal(pki.caFingerprint, certFingerprint(pki.caCertPem));
  t.equal(await mode(dir), 0o700, "pki dir 0700");
  for (const f of ["ca.key", "hub.key", "ca.crt", "hub.crt"]) t.equal(await mode(join(dir, f)), 0o600, `${f} 0600`);
  t.equal(await readFile(join(dir, "ca.crt"), "utf8"), pki.caCertPem);
  t.equal(await readFile(join(dir, "hub.key"), "utf8"), pki.hubKeyPem);
  t.match(pki.hubKeyPem, /^-----BEGIN PRIVATE KEY-----/, "PKCS#8 PEM");

  const ca = new X509Certificate(pki.caCertPem);
  const hub = new X509Certificate(pki.hubCertPem);
  t.ok(ca.ca, "CA cert is a CA");
  t.equal(certInfo(pki.caCertPem).commonName, "capsul hub CA hub.example.com");
  t.ok(ca.verify(ca.publicKey), "CA is self-signed");
  t.ok(hub.checkIssued(ca), "hub cert issued by the CA");
  t.ok(hub.verify(ca.publicKey), "hub cert signature verifies with the CA key");
  t.notOk(hub.ca);
  t.same(hub.keyUsage, ["1.3.6.1.5.5.7.3.1"], "serverAuth only");
  t.equal(certInfo(pki.hubCertPem).issuerCommonName, "capsul hub CA hub.example.com");

  t.equal(hub.checkHost("hub.example.com"), "hub.example.com");
  t.equal(hub.checkHost("localhost"), "localhost");
  t.equal(hub.checkIP("203.0.113.7"), "203.0.113.7");
  t.equal(hub.checkIP("127.0.0.1"), "127.0.0.1");
  t.ok(hub.checkIP("::1"), "::1 in SAN");
  t.ok(hub.checkIP("2001:db8::1"), "IPv6 literal in SAN");
  t.equal(hub.checkHost("other.example.com"), undefined);

  const hubInfo = certInfo(pki.hubCertPem);
  const lifetime = hubInfo.notAfter.getTime() - hubInfo.notBefore.getTime();
  t.equal(lifetime, HUB_CERT_VALIDITY_MS);
  const caInfo = certInfo(pki.caCertPem);
  t.equal(caInfo.notAfter.getTime() - caInfo.notBefore.getTime(), CA_VALIDITY_MS);

  const again = await loadOrCreateHubPki(dataDir, NAMES);
  t.equal(again.caFingerprint, pki.caFingerprint, "same CA after reload");
  t.equal(again.hubCertPem, pki.hubCertPem, "hub cert not re-issued when nothing changed");
  t.equal(again.hubKeyPem, pki.hubKeyPem);
  t.equal(again.caKeyPem, pki.caKeyPem);

  const sameOrder = await loadOrCreateHubPki(dataDir, ["2001:0db8:0:0::1", "HUB.example.com."]);
  t.equal(sameOrder.hubCertPem, pki.hubCertPem, "a subset of the names, spelled differently, keeps the cert");
});

t.test("openssl agrees: CA constraints and the chain", { skip: !hasOpenssl() && "no openssl" }, async (t) => {
  const dataDir = t.testdir();
  await loadOrCreateHubPki(dataDir, NAMES);
  const dir = join(dataDir, "pki");
  const caText = execFileSync("openssl", ["x509", "-in", join(dir, "ca.crt"), "-noout", "-text"], { encoding: "utf8" });
  t.match(caText, /CA:TRUE, pathlen:0/);
  t.match(caText, /Certificate Sign, CRL Sign/);
  t.match(caText, /ASN1 OID: prime256v1/);
  const hubText = execFileSync("openssl", ["x509", "-in", join(dir, "hub.crt"), "-noout", "-text"], { encoding: "utf8" });
  t.match(hubText, /TLS Web Server Authentication/);
  t.match(hubText, /CA:FALSE/);
  const out = execFileSync("openssl", ["verify", "-purpose", "sslserver", "-CAfile", join(dir, "ca.crt"), join(dir, "hub.crt")], { encoding: "utf8" });
  t.match(out, /: OK/);
});

t.test("changing the names re-issues the hub cert, keeps the CA", async (t) => {
  const dataDir = t.testdir();
  const first = await loadOrCreateHubPki(dataDir, NAMES);
  const second = await loadOrCreateHubPki(dataDir, [...NAMES, "tunnel.example.net"]);
  t.equal(second.caFingerprint, first.caFingerprint, "CA unchanged");
  t.equal(second.caKeyPem, first.caKeyPem);
  t.not(second.hubCertPem, first.hubCertPem, "hub cert re-issued");
  const hub = new X509Certificate(second.hubCertPem);
  t.equal(hub.checkHost("tunnel.example.net"), "tunnel.example.net");
  t.equal(hub.checkHost("hub.example.com"), "hub.example.com");
  t.ok(hub.verify(new X509Certificate(first.caCertPem).publicKey), "new hub cert signed by the same CA");
  t.equal(await readFile(join(dataDir, "pki", "hub.crt"), "utf8"), second.hubCertPem, "written to disk");
  const third = await loadOrCreateHubPki(dataDir, [...NAMES, "tunnel.example.net"]);
  t.equal(third.hubCertPem, second.hubCertPem, "stable afterwards");
});

t.test("a hub cert expiring within 30 days is re-issued", async (t) => {
  const dataDir = t.testdir();
  const realNow = Date.now;
  // Pretend the PKI was created 380 days ago: its 397-day hub cert has 17 days left.
  const past = realNow() - 380 * 86_400_000;
  Date.now = () => past;
  let old;
  try {
    old = await loadOrCreateHubPki(dataDir, NAMES);
  } finally {
    Date.now = realNow;
  }
  const renewed = await loadOrCreateHubPki(dataDir, NAMES);
  t.equal(renewed.caFingerprint, old.caFingerprint, "CA unchanged");
  t.not(renewed.hubCertPem, old.hubCertPem, "hub cert re-issued");
  t.ok(certInfo(renewed.hubCertPem).notAfter.getTime() > realNow() + 390 * 86_400_000);
});

t.test("a hub cert that does not match its key is re-issued", async (t) => {
  const dataDir = t.testdir();
  const first = await loadOrCreateHubPki(dataDir, NAMES);
  const { keyPem } = await createKeyAndCsr("stray");
  await writeFile(join(dataDir, "pki", "hub.key"), keyPem);
  const second = await loadOrCreateHubPki(dataDir, NAMES);
  t.not(second.hubCertPem, first.hubCertPem);
  t.equal(second.caFingerprint, first.caFingerprint);
});

t.test("a half-present CA is an error, never silently replaced", async (t) => {
  const dataDir = t.testdir();
  const first = await loadOrCreateHubPki(dataDir, NAMES);
  await unlink(join(dataDir, "pki", "ca.key"));
  await t.rejects(loadOrCreateHubPki(dataDir, NAMES), RuntimeError);
  await t.rejects(loadOrCreateHubPki(dataDir, NAMES), { message: /ca\.key is missing/ });
  t.equal(await readFile(join(dataDir, "pki", "ca.crt"), "utf8"), first.caCertPem, "CA cert untouched");
});

t.test("files: writeSecretFile and readPem", async (t) => {
  const dir = t.testdir();
  const path = join(dir, "deep", "nested", "x.key");
  await writeSecretFile(path, "-----BEGIN PRIVATE KEY-----\nabc\n-----END PRIVATE KEY-----\n");
  t.equal(await mode(path), 0o600);
  t.equal(await mode(join(dir, "deep", "nested")), 0o700, "created dir is 0700");
  await writeSecretFile(path, "-----BEGIN CERTIFICATE-----\nxyz\n-----END CERTIFICATE-----\n");
  t.match(await readPem(path), /BEGIN CERTIFICATE/, "overwritten");
  t.equal(await mode(path), 0o600);
  const missing = join(dir, "nope.crt");
  await t.rejects(readPem(missing), { name: "RuntimeError", message: new RegExp(`${missing}.*file not found`) });
  const notPem = join(dir, "junk.crt");
  await writeFile(notPem, "hello");
  await t.rejects(readPem(notPem), { message: /junk\.crt is not a PEM file/ });
});
