/**
 * The hub's internal CA (DESIGN "The tunnel", "Enrollment"). The CA signs the
 * hub's tunnel certificate (serverAuth) and every cog's client certificate
 * (clientAuth); a cog's identity is the CN the CA put in its certificate.
 *
 * Node's crypto parses, fingerprints and verifies; @peculiar/x509 builds
 * certificates and CSRs (Node has no certificate builder). Keys are ECDSA
 * P-256, stored as PKCS#8 PEM, which Node's TLS reads directly.
 */
import "reflect-metadata";
import * as x509 from "@peculiar/x509";
import { X509Certificate, createHash, createPrivateKey, createPublicKey, randomBytes, type webcrypto } from "node:crypto";
import { access } from "node:fs/promises";
import { isIP } from "node:net";
import type { TLSSocket } from "node:tls";
import { join } from "node:path";
import { AuthError, ConfigError, RuntimeError } from "../lib/errors.js";
import { ensureSecretDir, readPem, writeSecretFile } from "./files.js";

x509.cryptoProvider.set(globalThis.crypto);

export const CA_VALIDITY_MS = 10 * 365 * 86_400_000;
/** 397 days: the longest lifetime browsers accept, a familiar ceiling for a server cert. */
export const HUB_CERT_VALIDITY_MS = 397 * 86_400_000;
/** Re-issue the hub cert at start-up when it expires within this window. */
export const HUB_CERT_RENEW_BEFORE_MS = 30 * 86_400_000;
/** notBefore is set this far in the past so a peer whose clock runs a little slow accepts a fresh cert. */
export const CLOCK_SKEW_BACKDATE_MS = 5 * 60_000;
/** Cog names as in config/types.ts HubCogGrant.name. */
export const COG_NAME_RE = /^[a-z][a-z0-9-]{0,38}$/;
/**
 * A cog renews its certificate over the tunnel once less than this fraction of its
 * lifetime is left (30 of 90 days by default); the hub signs no earlier. One rule for
 * both ends: renewalDueAt().
 */
export const CERT_RENEW_REMAINING_RATIO = 1 / 3;
/** Names the hub cert always carries so local tools and tests can dial it. */
export const HUB_DEFAULT_NAMES: readonly string[] = ["localhost", "127.0.0.1", "::1"];

const PKI_DIR = "pki";
const CA_CERT_FILE = "ca.crt";
const CA_KEY_FILE = "ca.key";
const HUB_CERT_FILE = "hub.crt";
const HUB_KEY_FILE = "hub.key";

const EC_KEY_ALG = { name: "ECDSA", namedCurve: "P-256" } as const;
const SIGNING_ALG = { name: "ECDSA", hash: "SHA-256" } as const;
const OID_SERVER_AUTH = "1.3.6.1.5.5.7.3.1";

export interface HubPki {
  caCertPem: string;
  caKeyPem: string;
  hubCertPem: string;
  hubKeyPem: string;
  /** "sha256:<64 lowercase hex>" of the CA cert DER; what `capsul cog enroll --ca-fingerprint` pins. */
  caFingerprint: string;
}

// ---------------------------------------------------------------- keys

const subtle = globalThis.crypto.subtle;

async function newKeyPair(): Promise<{ keys: webcrypto.CryptoKeyPair; keyPem: string }> {
  const keys = (await subtle.generateKey(EC_KEY_ALG, true, ["sign", "verify"])) as webcrypto.CryptoKeyPair;
  const pkcs8 = Buffer.from(await subtle.exportKey("pkcs8", keys.privateKey));
  const keyPem = createPrivateKey({ key: pkcs8, format: "der", type: "pkcs8" }).export({ type: "pkcs8", format: "pem" }) as string;
  return { keys, keyPem };
}

/** Imports a P-256 private key PEM (PKCS#8 or SEC1) as a WebCrypto signing key. */
async function importSigningKey(keyPem: string, what: string): Promise<webcrypto.CryptoKey> {
  const key = createPrivateKey(keyPem);
  if (key.asymmetricKeyType !== "ec" || key.asymmetricKeyDetails?.namedCurve !== "prime256v1") {
    throw new RuntimeError(`${what} is not an ECDSA P-256 key`);
  }
  const pkcs8 = key.export({ type: "pkcs8", format: "der" });
  return subtle.importKey("pkcs8", pkcs8, EC_KEY_ALG, false, ["sign"]);
}

function keyMatchesCert(keyPem: string, certPem: string): boolean {
  const fromKey = createPublicKey(createPrivateKey(keyPem)).export({ type: "spki", format: "der" });
  const fromCert = new X509Certificate(certPem).publicKey.export({ type: "spki", format: "der" });
  return fromKey.equals(fromCert);
}

// ---------------------------------------------------------------- names

/**
 * Lower-cases DNS names and writes IP literals in one canonical form, so that
 * "::1" in the config and "0:0:0:0:0:0:0:1" read back from a SAN compare equal.
 */
function canonicalName(name: string): { type: "dns" | "ip"; value: string } {
  const n = name.trim();
  const v = isIP(n);
  if (v === 4) return { type: "ip", value: n };
  if (v === 6) return { type: "ip", value: new URL(`http://[${n}]/`).hostname.slice(1, -1) };
  // RFC 5280 §4.2.1.6: dNSName is an IA5String in "preferred name syntax"; a leading "*." is tolerated.
  if (!/^(\*\.)?[a-z0-9]([a-z0-9-]*[a-z0-9])?(\.[a-z0-9]([a-z0-9-]*[a-z0-9])?)*\.?$/i.test(n)) {
    throw new ConfigError(`hub name ${JSON.stringify(name)} is neither a DNS name nor an IP literal`);
  }
  return { type: "dns", value: n.toLowerCase().replace(/\.$/, "") };
}

function hubSanNames(hubNames: string[]): { type: "dns" | "ip"; value: string }[] {
  const seen = new Set<string>();
  const out: { type: "dns" | "ip"; value: string }[] = [];
  for (const raw of [...hubNames, ...HUB_DEFAULT_NAMES]) {
    const c = canonicalName(raw);
    const key = `${c.type}:${c.value}`;
    if (!seen.has(key)) { seen.add(key); out.push(c); }
  }
  return out;
}

function certSanNames(certPem: string): Set<string> {
  const ext = new x509.X509Certificate(certPem).getExtension(x509.SubjectAlternativeNameExtension);
  const out = new Set<string>();
  for (const item of ext?.names.items ?? []) {
    if (item.type !== "dns" && item.type !== "ip") continue;
    try {
      const c = canonicalName(item.value);
      out.add(`${c.type}:${c.value}`);
    } catch { /* a name we would never issue; cannot match a wanted one */ }
  }
  return out;
}

// ---------------------------------------------------------------- building

/** PEM text ending in a newline, so that cert + CA concatenate into a valid chain file. */
function pem(obj: { toString(format: "pem"): string }): string {
  const text = obj.toString("pem");
  return text.endsWith("\n") ? text : text + "\n";
}

function cnName(commonName: string): x509.JsonName {
  return [{ CN: [commonName] }];
}

async function createCa(domain: string): Promise<{ certPem: string; keyPem: string }> {
  const { keys, keyPem } = await newKeyPair();
  const notBefore = new Date(Date.now() - CLOCK_SKEW_BACKDATE_MS);
  const cert = await x509.X509CertificateGenerator.createSelfSigned({
    serialNumber: randomSerialHex(),
    name: cnName(`capsul hub CA ${domain}`),
    notBefore,
    notAfter: new Date(notBefore.getTime() + CA_VALIDITY_MS),
    keys,
    signingAlgorithm: SIGNING_ALG,
    extensions: [
      // pathlen 0: this CA signs leaves only, never another CA.
      new x509.BasicConstraintsExtension(true, 0, true),
      new x509.KeyUsagesExtension(x509.KeyUsageFlags.keyCertSign | x509.KeyUsageFlags.cRLSign, true),
      await x509.SubjectKeyIdentifierExtension.create(keys.publicKey),
    ],
  });
  return { certPem: pem(cert), keyPem };
}

/** Signs a leaf certificate with the CA. */
async function issueLeaf(
  pki: Pick<HubPki, "caCertPem" | "caKeyPem">,
  p: { commonName: string; publicKey: x509.PublicKeyType; notBefore: Date; notAfter: Date; extensions: x509.Extension[] },
): Promise<string> {
  const ca = new x509.X509Certificate(pki.caCertPem);
  const signingKey = await importSigningKey(pki.caKeyPem, "the CA key");
  const cert = await x509.X509CertificateGenerator.create({
    serialNumber: randomSerialHex(),
    // The issuer is the CA's subject byte for byte, as chain building compares them.
    issuer: ca.subjectName,
    subject: cnName(p.commonName),
    notBefore: p.notBefore,
    notAfter: p.notAfter,
    publicKey: p.publicKey,
    signingKey,
    signingAlgorithm: SIGNING_ALG,
    extensions: [
      new x509.BasicConstraintsExtension(false, undefined, true),
      new x509.KeyUsagesExtension(x509.KeyUsageFlags.digitalSignature, true),
      ...p.extensions,
      await x509.SubjectKeyIdentifierExtension.create(p.publicKey),
      await x509.AuthorityKeyIdentifierExtension.create(ca.publicKey),
    ],
  });
  return pem(cert);
}

/** 128 random bits; the generator strips leading zero bytes and keeps the INTEGER positive. */
function randomSerialHex(): string {
  return randomBytes(16).toString("hex");
}

async function issueHubCert(pki: Pick<HubPki, "caCertPem" | "caKeyPem">, names: { type: "dns" | "ip"; value: string }[]): Promise<{ certPem: string; keyPem: string }> {
  const { keys, keyPem } = await newKeyPair();
  const notBefore = new Date(Date.now() - CLOCK_SKEW_BACKDATE_MS);
  const certPem = await issueLeaf(pki, {
    commonName: names[0]!.value,
    publicKey: keys.publicKey,
    notBefore,
    notAfter: new Date(notBefore.getTime() + HUB_CERT_VALIDITY_MS),
    extensions: [
      new x509.ExtendedKeyUsageExtension([x509.ExtendedKeyUsage.serverAuth], false),
      new x509.SubjectAlternativeNameExtension(names, false),
    ],
  });
  return { certPem, keyPem };
}

// ---------------------------------------------------------------- the hub's PKI

async function exists(path: string): Promise<boolean> {
  try { await access(path); return true; } catch { return false; }
}

/**
 * Loads dataDir/pki, creating the CA and the hub cert on first start.
 * The CA is never replaced silently: every enrolled cog trusts it, so a
 * half-present CA (cert without key or the reverse) is an error to fix by hand.
 * The hub cert is re-issued (new key, same CA) when a wanted name is missing
 * from its SAN, it expires within HUB_CERT_RENEW_BEFORE_MS, or it no longer
 * matches its key or the CA.
 */
export async function loadOrCreateHubPki(dataDir: string, hubNames: string[]): Promise<HubPki> {
  const dir = join(dataDir, PKI_DIR);
  await ensureSecretDir(dir);
  const caCertPath = join(dir, CA_CERT_FILE);
  const caKeyPath = join(dir, CA_KEY_FILE);
  const hubCertPath = join(dir, HUB_CERT_FILE);
  const hubKeyPath = join(dir, HUB_KEY_FILE);
  const names = hubSanNames(hubNames);

  let caCertPem: string;
  let caKeyPem: string;
  const [haveCaCert, haveCaKey] = await Promise.all([exists(caCertPath), exists(caKeyPath)]);
  if (!haveCaCert && !haveCaKey) {
    ({ certPem: caCertPem, keyPem: caKeyPem } = await createCa(names[0]!.value));
    // Key first: a crash in between leaves a key without cert, which the check below reports.
    await writeSecretFile(caKeyPath, caKeyPem);
    await writeSecretFile(caCertPath, caCertPem);
  } else if (haveCaCert !== haveCaKey) {
    const missing = haveCaCert ? caKeyPath : caCertPath;
    throw new RuntimeError(
      `hub CA is incomplete: ${missing} is missing. Refusing to create a new CA, because every enrolled cog trusts the old one; ` +
      `restore the file, or delete both ${CA_CERT_FILE} and ${CA_KEY_FILE} to start over (all cogs must then re-enroll)`,
    );
  } else {
    caCertPem = await readPem(caCertPath);
    caKeyPem = await readPem(caKeyPath);
    const ca = new X509Certificate(caCertPem);
    if (!ca.ca) throw new RuntimeError(`${caCertPath} is not a CA certificate`);
    if (!keyMatchesCert(caKeyPem, caCertPem)) throw new RuntimeError(`${caKeyPath} is not the key of ${caCertPath}`);
    const caNotAfter = new x509.X509Certificate(caCertPem).notAfter;
    if (caNotAfter.getTime() <= Date.now()) {
      throw new RuntimeError(`hub CA ${caCertPath} expired on ${caNotAfter.toISOString()}; a new CA means every cog must re-enroll`);
    }
  }

  let hubCertPem: string | undefined;
  let hubKeyPem: string | undefined;
  if ((await exists(hubCertPath)) && (await exists(hubKeyPath))) {
    const certPem = await readPem(hubCertPath);
    const keyPem = await readPem(hubKeyPath);
    if (hubCertUsable(certPem, keyPem, caCertPem, names)) {
      hubCertPem = certPem;
      hubKeyPem = keyPem;
    }
  }
  if (hubCertPem === undefined || hubKeyPem === undefined) {
    ({ certPem: hubCertPem, keyPem: hubKeyPem } = await issueHubCert({ caCertPem, caKeyPem }, names));
    await writeSecretFile(hubKeyPath, hubKeyPem);
    await writeSecretFile(hubCertPath, hubCertPem);
  }

  return { caCertPem, caKeyPem, hubCertPem, hubKeyPem, caFingerprint: certFingerprint(caCertPem) };
}

function hubCertUsable(certPem: string, keyPem: string, caCertPem: string, names: { type: string; value: string }[]): boolean {
  try {
    const cert = new X509Certificate(certPem);
    const ca = new X509Certificate(caCertPem);
    if (!cert.checkIssued(ca) || !cert.verify(ca.publicKey)) return false;
    if (!keyMatchesCert(keyPem, certPem)) return false;
    if (new x509.X509Certificate(certPem).notAfter.getTime() - Date.now() < HUB_CERT_RENEW_BEFORE_MS) return false;
    const have = certSanNames(certPem);
    return names.every((n) => have.has(`${n.type}:${n.value}`));
  } catch {
    return false; // unparsable: re-issue
  }
}

// ---------------------------------------------------------------- cogs

/**
 * Signs a cog's CSR. Only the CSR's public key is used: the subject and any
 * requested extensions are ignored, the CN is `cogName` (the identity the hub
 * checked via the invite token), and the usages are fixed to clientAuth.
 */
export async function signCogCsr(
  pki: HubPki,
  csrPem: string,
  cogName: string,
  opts: { validityMs: number; notBefore?: Date },
): Promise<{ certPem: string; serial: string; notAfter: Date }> {
  if (!COG_NAME_RE.test(cogName)) throw new RuntimeError(`invalid cog name ${JSON.stringify(cogName)} (want ${COG_NAME_RE.source})`);
  if (!(opts.validityMs > 0)) throw new RuntimeError(`certificate validity must be positive, got ${opts.validityMs} ms`);
  let csr: x509.Pkcs10CertificateRequest;
  try {
    csr = new x509.Pkcs10CertificateRequest(csrPem);
  } catch (err) {
    throw new AuthError("CSR is not a valid PKCS#10 certificate request", { cause: err });
  }
  let selfSigned = false;
  try { selfSigned = await csr.verify(); } catch { /* unsupported or malformed signature: refused below */ }
  if (!selfSigned) throw new AuthError("CSR signature does not verify: it was altered or not signed by its own key");
  const pub = createPublicKey({ key: Buffer.from(csr.publicKey.rawData), format: "der", type: "spki" });
  if (pub.asymmetricKeyType !== "ec" || pub.asymmetricKeyDetails?.namedCurve !== "prime256v1") {
    throw new AuthError(`CSR key must be ECDSA P-256, got ${pub.asymmetricKeyType} ${pub.asymmetricKeyDetails?.namedCurve ?? ""}`.trim());
  }
  const start = opts.notBefore?.getTime() ?? Date.now();
  const notBefore = opts.notBefore ?? new Date(start - CLOCK_SKEW_BACKDATE_MS);
  const certPem = await issueLeaf(pki, {
    commonName: cogName,
    publicKey: csr.publicKey,
    notBefore,
    notAfter: new Date(start + opts.validityMs),
    extensions: [new x509.ExtendedKeyUsageExtension([x509.ExtendedKeyUsage.clientAuth], false)],
  });
  const info = certInfo(certPem);
  return { certPem, serial: info.serial, notAfter: info.notAfter };
}

/** When a certificate valid from notBefore to notAfter is due for renewal (ms since the epoch). */
export function renewalDueAt(notBefore: Date, notAfter: Date): number {
  const life = notAfter.getTime() - notBefore.getTime();
  return notAfter.getTime() - life * CERT_RENEW_REMAINING_RATIO;
}

/** A fresh P-256 key (PKCS#8 PEM) and a CSR for it; runs on the cog, the key never leaves it. */
export async function createKeyAndCsr(commonName: string): Promise<{ keyPem: string; csrPem: string }> {
  const { keys, keyPem } = await newKeyPair();
  const csr = await x509.Pkcs10CertificateRequestGenerator.create({
    name: cnName(commonName),
    keys,
    signingAlgorithm: SIGNING_ALG,
  });
  return { keyPem, csrPem: pem(csr) };
}

// ---------------------------------------------------------------- inspection

/** "sha256:<64 lowercase hex>" of the certificate's DER. Accepts PEM or DER. */
export function certFingerprint(cert: string | Buffer): string {
  return "sha256:" + createHash("sha256").update(new X509Certificate(cert).raw).digest("hex");
}

/**
 * Normalizes a fingerprint as a user may paste it ("sha256:AB:CD…", "sha256:abcd…")
 * to "sha256:<64 lowercase hex>". Throws AuthError when it is not one.
 */
export function parseFingerprint(fp: string): string {
  const m = /^sha256:((?:[0-9a-f]{2}:?){31}[0-9a-f]{2})$/i.exec(fp.trim());
  if (!m) throw new AuthError(`malformed CA fingerprint ${JSON.stringify(fp)}: want "sha256:" and 64 hex digits`);
  return "sha256:" + m[1]!.replace(/:/g, "").toLowerCase();
}

export function certInfo(certPem: string): { commonName: string; serial: string; notBefore: Date; notAfter: Date; issuerCommonName: string } {
  let cert: x509.X509Certificate;
  try {
    cert = new x509.X509Certificate(certPem);
  } catch (err) {
    throw new RuntimeError("not an X.509 certificate", { cause: err });
  }
  return {
    commonName: cert.subjectName.getField("CN")[0] ?? "",
    serial: cert.serialNumber.toLowerCase(),
    notBefore: cert.notBefore,
    notAfter: cert.notAfter,
    issuerCommonName: cert.issuerName.getField("CN")[0] ?? "",
  };
}

/**
 * The cog's check of the hub during enrollment, when it cannot yet use the
 * CA as a trust anchor: the TLS connection is made with rejectUnauthorized:false
 * and the hub's chain is checked here instead. The CA must be the pinned one
 * (by fingerprint), the peer cert must be signed by it, be a serverAuth leaf
 * (so another cog's client cert cannot pose as the hub), and both must be in
 * their validity period. Throws AuthError naming the first failed check.
 */
export function verifyPinnedChain(peerCertDer: Buffer, caCertDer: Buffer, expectedCaFingerprint: string): void {
  const expected = parseFingerprint(expectedCaFingerprint);
  let peer: X509Certificate;
  let ca: X509Certificate;
  try {
    peer = new X509Certificate(peerCertDer);
    ca = new X509Certificate(caCertDer);
  } catch (err) {
    throw new AuthError("hub sent an unparsable certificate", { cause: err });
  }
  const actual = certFingerprint(caCertDer);
  if (actual !== expected) {
    throw new AuthError(`hub CA fingerprint mismatch: expected ${expected}, hub presented ${actual}`);
  }
  if (!ca.ca) throw new AuthError("the pinned certificate is not a CA certificate");
  if (!peer.checkIssued(ca) || !peer.verify(ca.publicKey)) {
    throw new AuthError(`hub certificate (CN ${certInfo(peer.toString()).commonName}) is not signed by the pinned CA ${expected}`);
  }
  if (peer.ca || !(peer.keyUsage ?? []).includes(OID_SERVER_AUTH)) {
    throw new AuthError("hub certificate is not a server certificate (no serverAuth usage)");
  }
  const now = Date.now();
  for (const [what, c] of [["hub certificate", peer], ["hub CA", ca]] as const) {
    const { notBefore, notAfter } = certInfo(c.toString());
    if (now > notAfter.getTime()) throw new AuthError(`${what} expired on ${notAfter.toISOString()}`);
    if (now < notBefore.getTime()) throw new AuthError(`${what} is not valid before ${notBefore.toISOString()} (check the clocks)`);
  }
}

/**
 * The hub's reading of a cog's client certificate on a TLS socket accepted with
 * requestCert:true, rejectUnauthorized:false. Node reports a missing client
 * cert as UNABLE_TO_GET_ISSUER_CERT, which misleads; this says what happened.
 * `serial` is lower-case hex as the handshake reports it: compare serials after
 * gateway/issuance.ts normSerial (leading zero bytes are not significant).
 */
export function peerAuthResult(socket: TLSSocket):
  | { ok: true; cogName: string; serial: string; notBefore: Date; notAfter: Date }
  | { ok: false; reason: string; code?: string } {
  const peer = socket.getPeerCertificate();
  if (!peer || Object.keys(peer).length === 0 || !peer.raw) {
    return { ok: false, reason: "no client certificate presented" };
  }
  if (!socket.authorized) {
    const code = String(socket.authorizationError ?? "UNKNOWN");
    const why: Record<string, string> = {
      CERT_HAS_EXPIRED: "client certificate has expired",
      CERT_NOT_YET_VALID: "client certificate is not yet valid (check the clocks)",
      UNABLE_TO_VERIFY_LEAF_SIGNATURE: "client certificate is not signed by this hub's CA",
      UNABLE_TO_GET_ISSUER_CERT_LOCALLY: "client certificate is not signed by this hub's CA",
      UNABLE_TO_GET_ISSUER_CERT: "client certificate is not signed by this hub's CA",
      CERT_SIGNATURE_FAILURE: "client certificate signature is invalid",
      DEPTH_ZERO_SELF_SIGNED_CERT: "client certificate is self-signed",
      INVALID_PURPOSE: "client certificate is not for client authentication",
    };
    return { ok: false, code, reason: `${why[code] ?? "client certificate rejected"} (${code})` };
  }
  // What the handshake already decoded: re-encoding peer.raw as PEM and parsing it again with
  // @peculiar/x509 was 42% of the hub's CPU per tunnel setup (issue 12, 7 ms per tunnel).
  const cn = peer.subject?.CN;
  let out: { ok: true; cogName: string; serial: string; notBefore: Date; notAfter: Date };
  const notBefore = new Date(peer.valid_from);
  const notAfter = new Date(peer.valid_to);
  if (typeof cn === "string" && typeof peer.serialNumber === "string" && !Number.isNaN(notBefore.getTime()) && !Number.isNaN(notAfter.getTime())) {
    out = { ok: true, cogName: cn, serial: peer.serialNumber.toLowerCase(), notBefore, notAfter };
  } else {
    // Several CNs, or a date OpenSSL prints in a form Date cannot read: the full parse decides.
    const info = certInfo(new X509Certificate(peer.raw).toString());
    out = { ok: true, cogName: info.commonName, serial: info.serial, notBefore: info.notBefore, notAfter: info.notAfter };
  }
  // OpenSSL checked the validity period during the full handshake only: a session resumed from
  // a ticket (TLS 1.3 PSK) keeps that verdict however old it is, so the dates are checked here,
  // on every connection, and a ticket never outlives its certificate.
  const now = Date.now();
  if (now > out.notAfter.getTime()) return { ok: false, code: "CERT_HAS_EXPIRED", reason: `client certificate has expired (CERT_HAS_EXPIRED, on ${out.notAfter.toISOString()})` };
  if (now < out.notBefore.getTime()) return { ok: false, code: "CERT_NOT_YET_VALID", reason: "client certificate is not yet valid (check the clocks) (CERT_NOT_YET_VALID)" };
  return out;
}
