/**
 * Where the cog keeps what ACME gave it, under `<cog data_dir>/acme/`:
 *
 *   accounts/<ca host>-<hash>.json  one per directory URL: the account key and URL
 *   certs/<hostname>.json           the certificate chain AND its private key, together
 *   status.json                     renewal state per name (failures, next attempt, last error)
 *
 * Every file is written with certs/files.ts writeSecretFile (mode 0600, temp +
 * fsync + rename). A certificate and its key live in ONE file so that a crash
 * can never leave a new key beside an old certificate: a reader sees either the
 * old pair or the new pair. An order in progress writes nothing at all (its key
 * is in memory until the certificate is downloaded), so a crash mid-order leaves
 * the previous certificate, or nothing, and the next start begins a new order.
 */
import { createHash, X509Certificate } from "node:crypto";
import fs from "node:fs";
import path from "node:path";
import { writeSecretFile } from "./files.js";

export const ACME_DIR = "acme";
export const ACCOUNTS_DIR = "accounts";
export const CERTS_DIR = "certs";
export const STATUS_FILE = "status.json";

export interface StoredAccount {
  directoryUrl: string;
  keyPem: string;
  /** The account's URL once registered (RFC 8555 §7.3: the "kid" of later requests). */
  accountUrl: string | null;
  /** The contact address the CA has for it (null: none). */
  email: string | null;
}

export interface StoredCert {
  /** The hostname, as routed (lower-case A-labels). */
  name: string;
  directoryUrl: string;
  keyPem: string;
  /** Leaf first, then the intermediates the CA sent. */
  chainPem: string;
  issuedAt: string;
}

/** What `capsul cog certs` and the scheduler need to know about a certificate. */
export interface CertFacts {
  names: string[];
  issuer: string;
  notBefore: Date;
  notAfter: Date;
  serial: string;
}

export type RenewalState =
  /** An order is running now. */
  | "issuing"
  /** The certificate is good; renewal is due at renewAt. */
  | "scheduled"
  /** The last order failed; the next is due at nextAttemptAt. */
  | "retrying"
  /** A route wants the name, but the hub has not (yet) accepted the routes the challenge needs. */
  | "waiting"
  /** On disk, but no route terminates this name any more: kept, not renewed. */
  | "unused"
  /** The operator's own (hub.admin.tls: files): capsul serves it and never renews it. */
  | "file";

/** Per name, what survives a restart besides the certificate: so a Retry-After is still honoured after one. */
export interface NameStatus {
  state: RenewalState;
  challenge: string | null;
  failures: number;
  renewAt: string | null;
  nextAttemptAt: string | null;
  lastError: string | null;
  lastErrorKind: string | null;
  lastErrorAt: string | null;
  lastIssuedAt: string | null;
}

export interface StatusFile { updatedAt: string; names: Record<string, NameStatus> }

/** Reads the facts of the leaf certificate (the first PEM block of a chain). */
export function certFacts(chainPem: string): CertFacts {
  const leaf = new X509Certificate(chainPem);
  const names = (leaf.subjectAltName ?? "").split(/,\s*/).filter((s) => s.startsWith("DNS:")).map((s) => s.slice(4));
  const cn = /(?:^|\n)CN=([^\n]*)/.exec(leaf.issuer)?.[1] ?? leaf.issuer.replace(/\n/g, ", ");
  return { names, issuer: cn, notBefore: new Date(leaf.validFrom), notAfter: new Date(leaf.validTo), serial: leaf.serialNumber };
}

/** A file name for one directory URL: readable host, plus a hash so two paths on one host differ. */
export function accountFileName(directoryUrl: string): string {
  const host = new URL(directoryUrl).host.replace(/[^a-zA-Z0-9.-]/g, "_");
  return `${host}-${createHash("sha256").update(directoryUrl).digest("hex").slice(0, 12)}.json`;
}

function readJson(file: string): unknown {
  return JSON.parse(fs.readFileSync(file, "utf8"));
}

function isObj(v: unknown): v is Record<string, unknown> {
  return typeof v === "object" && v !== null && !Array.isArray(v);
}

/** Hostnames are [a-z0-9.-] after normalisation; anything else never names a file here. */
const SAFE_NAME = /^[a-z0-9][a-z0-9.-]{0,252}$/;

export class AcmeStore {
  readonly root: string;
  /** Status writes are chained so that an older snapshot can never be renamed over a newer one. */
  private statusWrite: Promise<void> = Promise.resolve();

  constructor(dataDir: string) {
    this.root = path.join(dataDir, ACME_DIR);
  }

  certFile(name: string): string {
    if (!SAFE_NAME.test(name)) throw new Error(`not a hostname: ${JSON.stringify(name)}`);
    return path.join(this.root, CERTS_DIR, `${name}.json`);
  }

  loadAccount(directoryUrl: string): StoredAccount | null {
    const file = path.join(this.root, ACCOUNTS_DIR, accountFileName(directoryUrl));
    if (!fs.existsSync(file)) return null;
    const v = readJson(file);
    if (!isObj(v) || typeof v.key_pem !== "string" || v.directory_url !== directoryUrl) {
      throw new Error(`${file} is not an ACME account file for ${directoryUrl}`);
    }
    return { directoryUrl, keyPem: v.key_pem, accountUrl: str(v.account_url), email: str(v.email) };
  }

  async saveAccount(a: StoredAccount): Promise<void> {
    const file = path.join(this.root, ACCOUNTS_DIR, accountFileName(a.directoryUrl));
    await writeSecretFile(file, JSON.stringify({ directory_url: a.directoryUrl, account_url: a.accountUrl, email: a.email, key_pem: a.keyPem }, null, 2) + "\n");
  }

  /**
   * Every stored certificate. A file that cannot be read or parsed is reported in
   * `bad` (with why) and otherwise ignored: the name is then simply issued again.
   */
  loadCerts(): { certs: StoredCert[]; bad: { file: string; reason: string }[] } {
    const dir = path.join(this.root, CERTS_DIR);
    const certs: StoredCert[] = [];
    const bad: { file: string; reason: string }[] = [];
    let entries: string[];
    try {
      entries = fs.readdirSync(dir);
    } catch {
      return { certs, bad };
    }
    for (const f of entries.sort()) {
      // Temp files of writeSecretFile start with "."; a crash can leave one behind, never a half-written .json.
      if (!f.endsWith(".json") || f.startsWith(".")) continue;
      const file = path.join(dir, f);
      try {
        const v = readJson(file);
        if (!isObj(v) || typeof v.name !== "string" || typeof v.key_pem !== "string" || typeof v.chain_pem !== "string"
          || typeof v.directory_url !== "string" || `${v.name}.json` !== f) {
          throw new Error("missing fields");
        }
        certFacts(v.chain_pem);
        certs.push({ name: v.name, directoryUrl: v.directory_url, keyPem: v.key_pem, chainPem: v.chain_pem, issuedAt: String(v.issued_at ?? "") });
      } catch (err) {
        bad.push({ file, reason: (err as Error).message });
      }
    }
    return { certs, bad };
  }

  async saveCert(c: StoredCert): Promise<void> {
    await writeSecretFile(this.certFile(c.name), JSON.stringify({
      name: c.name, directory_url: c.directoryUrl, issued_at: c.issuedAt, chain_pem: c.chainPem, key_pem: c.keyPem,
    }, null, 2) + "\n");
  }

  loadStatus(): StatusFile {
    const file = path.join(this.root, STATUS_FILE);
    try {
      const v = readJson(file);
      if (isObj(v) && isObj(v.names)) {
        const names: Record<string, NameStatus> = {};
        for (const [name, s] of Object.entries(v.names)) if (isObj(s)) names[name] = statusFromJson(s);
        return { updatedAt: String(v.updated_at ?? ""), names };
      }
    } catch {
      // Missing or unreadable: start from nothing; it only holds retry timing.
    }
    return { updatedAt: "", names: {} };
  }

  /** Queues a write of `s`; resolves when it (and every earlier one) is on disk, rejects if it failed. */
  saveStatus(s: StatusFile): Promise<void> {
    const text = JSON.stringify({ updated_at: s.updatedAt, names: Object.fromEntries(Object.entries(s.names).map(([n, v]) => [n, statusToJson(v)])) }, null, 2) + "\n";
    const file = path.join(this.root, STATUS_FILE);
    this.statusWrite = this.statusWrite.catch(() => {}).then(() => writeSecretFile(file, text));
    return this.statusWrite;
  }

  /** Waits for the status writes queued so far (their failures were reported to whoever queued them). */
  async flush(): Promise<void> {
    await this.statusWrite.catch(() => {});
  }
}

function str(v: unknown): string | null {
  return typeof v === "string" ? v : null;
}

function statusFromJson(s: Record<string, unknown>): NameStatus {
  const states: RenewalState[] = ["issuing", "scheduled", "retrying", "waiting", "unused"];
  return {
    state: states.includes(s.state as RenewalState) ? s.state as RenewalState : "waiting",
    challenge: str(s.challenge),
    failures: typeof s.failures === "number" && Number.isInteger(s.failures) && s.failures >= 0 ? s.failures : 0,
    renewAt: str(s.renew_at),
    nextAttemptAt: str(s.next_attempt_at),
    lastError: str(s.last_error),
    lastErrorKind: str(s.last_error_kind),
    lastErrorAt: str(s.last_error_at),
    lastIssuedAt: str(s.last_issued_at),
  };
}

function statusToJson(s: NameStatus): Record<string, unknown> {
  return {
    state: s.state, challenge: s.challenge, failures: s.failures, renew_at: s.renewAt, next_attempt_at: s.nextAttemptAt,
    last_error: s.lastError, last_error_kind: s.lastErrorKind, last_error_at: s.lastErrorAt, last_issued_at: s.lastIssuedAt,
  };
}
