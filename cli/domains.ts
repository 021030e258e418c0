/**
 * `capsul cog domains` and `capsul cog domains add NAME`: custom domains by
 * DNS proof, from the cog's side. `add` prints the exact TXT record to
 * create, computed here from the cog's enrollment (the same function the hub
 * checks with, protocol/domainproof.ts), so it works before the cog runs.
 * The list shows the hub's last report (the running cog keeps it in its data
 * dir) and names added here that no route has announced yet.
 */
import type { Command } from "commander";
import { ConfigError } from "../lib/errors.js";
import { normalizeHostnamePattern } from "../lib/hostname.js";
import type { WireDomainProof } from "../protocol/control.js";
import { challengeName, domainProofValue } from "../protocol/domainproof.js";
import { addDomain, readAddedDomains, readDomainReport } from "../tunnel-client/domains.js";
import { loadIdentity } from "../tunnel-client/identity.js";
import { isoTime, loadConfig, printJson, requireCog, table } from "./common.js";

/** A row of the list: a claim the hub reported, or a name only added here ("unannounced"). */
interface DomainRow extends Omit<WireDomainProof, "state"> { state: WireDomainProof["state"] | "unannounced" }

export function domainRows(dataDir: string): { rows: DomainRow[]; reportedAt: number | null } {
  const report = readDomainReport(dataDir);
  const rows: DomainRow[] = [...(report?.proofs ?? [])];
  const known = new Set(rows.map((r) => r.hostname));
  const added = readAddedDomains(dataDir).filter((h) => !known.has(h));
  if (added.length) {
    const id = loadIdentity(dataDir);
    for (const h of added) {
      rows.push({ hostname: h, record: challengeName(h), value: domainProofValue(id.caFingerprint, id.name, h), state: "unannounced", verifiedAt: null, checkedAt: null, lastError: null });
    }
  }
  rows.sort((a, b) => a.hostname.localeCompare(b.hostname));
  return { rows, reportedAt: report?.receivedAt ?? null };
}

export function domainRowsJson(rows: readonly DomainRow[]): Record<string, unknown>[] {
  return rows.map((r) => ({
    hostname: r.hostname, record: r.record, value: r.value, state: r.state,
    verified_at: isoTime(r.verifiedAt), checked_at: isoTime(r.checkedAt), last_error: r.lastError,
  }));
}

const STATE_TEXT: Record<DomainRow["state"], string> = {
  verified: "proven",
  pending: "waiting for the record",
  lost: "record gone: routes withdrawn",
  unannounced: "no route names it yet",
};

export function domainRowsTable(rows: readonly DomainRow[]): string {
  if (rows.length === 0) return "No custom domains. `capsul cog domains add NAME` prints the DNS record that proves one.";
  return table(["HOSTNAME", "STATE", "TXT RECORD", "VALUE", "LAST ERROR"],
    rows.map((r) => [r.hostname, STATE_TEXT[r.state], r.record, r.value, r.lastError ?? "-"]));
}

/** The record as `capsul cog domains add` and `capsul vm domains add` print it, to paste into a zone. */
export function recordLine(hostname: string, value: string): string {
  return `    ${challengeName(hostname)}.  TXT  "${value}"`;
}

export function registerDomainCommands(cog: Command, configHelp: string): void {
  const configOf = (opts: { config?: string }): string | undefined => opts.config ?? cog.opts<{ config?: string }>().config;
  const domains = cog
    .command("domains")
    .description("list this cog's custom domains (names outside its grants, proven by a DNS TXT record) and where each proof stands")
    .option("-c, --config <file>", configHelp)
    .option("--json", "print JSON (snake_case keys, ISO-8601 times) instead of a table")
    .action((opts: { config?: string; json?: boolean }) => {
      const { cfg, file } = loadConfig(configOf(opts));
      const { rows } = domainRows(requireCog(cfg, file).dataDir);
      process.stdout.write((opts.json ? JSON.stringify(domainRowsJson(rows)) : domainRowsTable(rows)) + "\n");
    });

  domains
    .command("add <name>")
    .description("print the DNS TXT record that proves this cog controls NAME (for *.NAME too), and remember NAME for `capsul cog domains`")
    .option("-c, --config <file>", configHelp)
    .option("--json", "print JSON instead of text")
    .action(async (name: string, opts: { config?: string; json?: boolean }) => {
      // Options the parent `domains` also has land on it (commander): read them there too.
      const parent = domains.opts<{ config?: string; json?: boolean }>();
      opts.json ||= parent.json;
      const pattern = normalizeHostnamePattern(name);
      if (pattern === null) throw new ConfigError(`not a hostname: ${JSON.stringify(name)}`, "NAME");
      // A wildcard's proof lives on its base name.
      const hostname = pattern.startsWith("*.") ? pattern.slice(2) : pattern;
      const { cfg, file } = loadConfig(opts.config ?? parent.config ?? configOf({}));
      const dataDir = requireCog(cfg, file).dataDir;
      const id = loadIdentity(dataDir);
      const value = domainProofValue(id.caFingerprint, id.name, hostname);
      await addDomain(dataDir, hostname);
      if (opts.json) {
        printJson({ hostname, record: challengeName(hostname), type: "TXT", value, cog: id.name });
        return;
      }
      process.stdout.write(
        `To prove that cog "${id.name}" controls ${hostname}${pattern !== hostname ? ` (and so ${pattern})` : ""}, create this DNS record:\n\n` +
        `${recordLine(hostname, value)}\n\n` +
        `Then point ${pattern} at the hub (a CNAME to ${id.hubDomain}, or its address) and name it in a route of this cog.\n` +
        `The hub looks the record up while the cog is connected (every 30s by default, hub.domains.pending_interval);\n` +
        `\`capsul cog domains\` shows where the proof stands. Keep the record: when it disappears the route is withdrawn.\n`,
      );
    });
}
