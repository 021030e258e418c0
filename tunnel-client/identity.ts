/**
 * The cog's identity on disk: its private key (made here, never sent), the
 * certificate the hub's CA signed, the CA it pins, and where the hub is.
 */
import fs from "node:fs";
import path from "node:path";
import { RuntimeError } from "../lib/errors.js";
import { writeSecretFile } from "../certs/files.js";

export const KEY_FILE = "cog.key";
export const CERT_FILE = "cog.crt";
export const CA_FILE = "ca.crt";
export const ENROLLMENT_FILE = "enrollment.json";

export interface CogIdentity {
  name: string;
  /** host:port of the hub's tunnel listener, as enrolled. */
  hub: string;
  /** The hub's public domain; VM routes are "<vm>.<cog>.<domain>". */
  hubDomain: string;
  caFingerprint: string;
  keyPem: string;
  certPem: string;
  caPem: string;
}

export function identityExists(dataDir: string): boolean {
  return fs.existsSync(path.join(dataDir, ENROLLMENT_FILE));
}

export function loadIdentity(dataDir: string): CogIdentity {
  const file = (f: string): string => {
    const p = path.join(dataDir, f);
    try {
      return fs.readFileSync(p, "utf8");
    } catch {
      throw new RuntimeError(`this cog is not enrolled (${p} is missing): run capsul cog enroll with the command the hub operator gave you`);
    }
  };
  let meta: { name?: unknown; hub?: unknown; hubDomain?: unknown; caFingerprint?: unknown };
  try {
    meta = JSON.parse(file(ENROLLMENT_FILE));
  } catch (err) {
    if (err instanceof RuntimeError) throw err;
    throw new RuntimeError(`${path.join(dataDir, ENROLLMENT_FILE)} is not valid JSON`);
  }
  if (typeof meta.name !== "string" || typeof meta.hub !== "string" || typeof meta.caFingerprint !== "string") {
    throw new RuntimeError(`${path.join(dataDir, ENROLLMENT_FILE)} is incomplete; enroll again`);
  }
  const hubDomain = typeof meta.hubDomain === "string" ? meta.hubDomain : meta.hub.replace(/:\d+$/, "");
  return { name: meta.name, hub: meta.hub, hubDomain, caFingerprint: meta.caFingerprint, keyPem: file(KEY_FILE), certPem: file(CERT_FILE), caPem: file(CA_FILE) };
}

export async function saveIdentity(dataDir: string, id: CogIdentity): Promise<void> {
  await writeSecretFile(path.join(dataDir, KEY_FILE), id.keyPem);
  await writeSecretFile(path.join(dataDir, CERT_FILE), id.certPem);
  await writeSecretFile(path.join(dataDir, CA_FILE), id.caPem);
  await writeSecretFile(
    path.join(dataDir, ENROLLMENT_FILE),
    JSON.stringify({ name: id.name, hub: id.hub, hubDomain: id.hubDomain, caFingerprint: id.caFingerprint, enrolledAt: new Date().toISOString() }, null, 2) + "\n",
  );
}

/** Replaces the key and certificate after a renewal (the key is new too). */
export async function saveKeyAndCert(dataDir: string, keyPem: string, certPem: string): Promise<void> {
  await writeSecretFile(path.join(dataDir, KEY_FILE), keyPem);
  await writeSecretFile(path.join(dataDir, CERT_FILE), certPem);
}
