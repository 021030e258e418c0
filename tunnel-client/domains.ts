/**
 * The cog's view of its custom-domain claims (issue 10, "Bring your own
 * domain"), kept in its data dir for `capsul cog domains`:
 * - domains.json: the hub's last `domains` report (written by the running
 *   cog each time the hub sends one), with when it arrived;
 * - domains-added.json: names given to `capsul cog domains add`, so the list
 *   shows them before any route names them;
 * - domains-release.json: names the cog gave up whose claims the hub has not
 *   released yet. Sent in a `domains-release` at once if a tunnel is up, else after
 *   the next welcome; a name leaves the file when the hub's report no longer lists it.
 * Written with writeSecretFile (temp + rename): a reader never sees half a file.
 */
import fs from "node:fs";
import path from "node:path";
import { writeSecretFile } from "../certs/files.js";
import type { WireDomainProof } from "../protocol/control.js";
import { RuntimeError } from "../lib/errors.js";

export const DOMAINS_REPORT_FILE = "domains.json";
export const DOMAINS_ADDED_FILE = "domains-added.json";
export const DOMAINS_RELEASE_FILE = "domains-release.json";

export interface DomainReport { receivedAt: number; proofs: WireDomainProof[] }

export async function saveDomainReport(dataDir: string, proofs: WireDomainProof[], now = Date.now()): Promise<void> {
  await writeSecretFile(path.join(dataDir, DOMAINS_REPORT_FILE), JSON.stringify({ receivedAt: now, proofs } satisfies DomainReport, null, 2) + "\n");
}

function readJson(file: string): unknown {
  let text: string;
  try {
    text = fs.readFileSync(file, "utf8");
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code === "ENOENT") return undefined;
    throw new RuntimeError(`cannot read ${file}: ${(err as Error).message}`);
  }
  try {
    return JSON.parse(text);
  } catch {
    throw new RuntimeError(`${file} is not valid JSON; delete it, the cog writes it again when the hub next reports`);
  }
}

/** The hub's last report, or null if none arrived yet. */
export function readDomainReport(dataDir: string): DomainReport | null {
  const v = readJson(path.join(dataDir, DOMAINS_REPORT_FILE)) as Partial<DomainReport> | undefined;
  if (!v) return null;
  if (typeof v.receivedAt !== "number" || !Array.isArray(v.proofs)) throw new RuntimeError(`${path.join(dataDir, DOMAINS_REPORT_FILE)} is malformed`);
  return { receivedAt: v.receivedAt, proofs: v.proofs };
}

export function readAddedDomains(dataDir: string): string[] {
  const v = readJson(path.join(dataDir, DOMAINS_ADDED_FILE));
  return Array.isArray(v) ? v.filter((x): x is string => typeof x === "string") : [];
}

/** Remembers a name given to `capsul cog domains add`; false if it was already there. */
export async function addDomain(dataDir: string, hostname: string): Promise<boolean> {
  const have = readAddedDomains(dataDir);
  if (have.includes(hostname)) return false;
  await writeSecretFile(path.join(dataDir, DOMAINS_ADDED_FILE), JSON.stringify([...have, hostname].sort(), null, 2) + "\n");
  return true;
}

/**
 * Forgets a name remembered by addDomain (a VM's domain was removed) and marks it for
 * release at the hub (readReleases); false if it was not on the list.
 */
export async function forgetDomain(dataDir: string, hostname: string): Promise<boolean> {
  const release = readReleases(dataDir);
  if (!release.includes(hostname)) await writeReleases(dataDir, [...release, hostname]);
  const have = readAddedDomains(dataDir);
  if (!have.includes(hostname)) return false;
  await writeSecretFile(path.join(dataDir, DOMAINS_ADDED_FILE), JSON.stringify(have.filter((h) => h !== hostname), null, 2) + "\n");
  return true;
}

/** Names given up whose claims the hub may still hold. */
export function readReleases(dataDir: string): string[] {
  const v = readJson(path.join(dataDir, DOMAINS_RELEASE_FILE));
  return Array.isArray(v) ? v.filter((x): x is string => typeof x === "string") : [];
}

async function writeReleases(dataDir: string, names: string[]): Promise<void> {
  await writeSecretFile(path.join(dataDir, DOMAINS_RELEASE_FILE), JSON.stringify([...names].sort(), null, 2) + "\n");
}

/**
 * The hub reported the cog's claims: a name marked for release that the report no longer
 * lists (a wildcard's claim is on its base) is released, and leaves the file. Returns what is left.
 */
export async function settleReleases(dataDir: string, proofs: readonly WireDomainProof[]): Promise<string[]> {
  const release = readReleases(dataDir);
  const claimed = new Set(proofs.map((p) => p.hostname));
  const left = release.filter((h) => claimed.has(h.startsWith("*.") ? h.slice(2) : h));
  if (left.length !== release.length) await writeReleases(dataDir, left);
  return left;
}
