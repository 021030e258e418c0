/**
 * `capsul vm domains NAME [add|remove DOMAIN]` and the domain lines of `vm show`
 * and `vm create --domain`: clients of provisioner/domainsapi.ts. A domain outside
 * the cog's grants is routed once DNS proves the cog controls it; these print the
 * exact TXT record, the same line `capsul cog domains add` prints (cli/domains.ts).
 */
import type { Command } from "commander";
import { ConfigError } from "../lib/errors.js";
import { printJson, table } from "./common.js";
import { recordLine } from "./domains.js";
import type { VmCliContext } from "./vmbackup.js";

/** A domain as the API returns it (provisioner/routes.ts vmDomainsView). */
export interface DomainView {
  hostname: string; url: string; state: string; reason: string | null;
  proof: { record: string; type: string; value: string } | null;
}

const STATE_TEXT: Record<string, string> = {
  "accepted": "accepted",
  "waiting-for-dns-proof": "waiting for the DNS proof",
  "refused": "refused",
  "pending": "waiting for the hub's answer",
  "not-published": "not published (the VM is not running)",
};

export function domainStateText(d: DomainView): string {
  const s = STATE_TEXT[d.state] ?? d.state;
  return d.state === "refused" && d.reason ? `${s}: ${d.reason}` : s;
}

/** What to do about a domain that is not routed yet: the TXT record when one is missing. */
export function proofHint(d: DomainView): string | null {
  if (!d.proof || d.state === "accepted") return null;
  return `create this DNS record (and point ${d.hostname} at the hub):\n${recordLine(d.hostname, d.proof.value)}`;
}

/** `vm show`'s lines for the domains: one per domain, its record under it while it waits. */
export function describeDomains(domains: DomainView[] | undefined): Array<[string, string]> {
  const lines: Array<[string, string]> = [];
  for (const d of domains ?? []) {
    lines.push(["domain", `${d.url} ${domainStateText(d)}`]);
    if (d.state === "waiting-for-dns-proof" || d.state === "not-published" || d.state === "pending") {
      const hint = proofHint(d);
      if (hint) lines.push(["", hint]);
    }
  }
  return lines;
}

/** After `vm create --domain` and `vm domains add`: the record to create for each name that needs one. */
export function proofInstructions(domains: DomainView[]): string {
  const need = domains.filter((d) => d.proof && d.state !== "accepted");
  if (need.length === 0) return "";
  return need.map((d) =>
    `To prove that this cog controls ${d.hostname}, create this DNS record:\n\n${recordLine(d.hostname, d.proof!.value)}\n\n` +
    `Then point ${d.hostname} at the hub (a CNAME to the hub's domain, or its address). The hub looks the record up while the cog is\n` +
    `connected; \`capsul vm show\` says where the proof stands. Keep the record: when it disappears the name stops routing.`).join("\n\n");
}

export function registerDomainsCommand(vm: Command, ctx: VmCliContext): void {
  vm.command("domains <name> [action] [domain]")
    .description("list a VM's custom domains and where each stands; `add DOMAIN` or `remove DOMAIN` changes them (a running VM's routes follow at once)")
    .action(async (name: string, action: string | undefined, domain: string | undefined, _o: unknown, cmd: Command) => {
      const { api: a, opts } = ctx.api(cmd);
      const vmPath = `/v1/vms/${encodeURIComponent(name)}/domains`;
      if (action === undefined) {
        const r = await a.json("GET", vmPath);
        if (opts.json) { printJson(r); return; }
        const ds = r.domains as DomainView[];
        if (ds.length === 0) { ctx.out(`${name} has no custom domains (capsul vm domains ${name} add DOMAIN)`); return; }
        ctx.out(table(["DOMAIN", "STATE", "TXT RECORD", "VALUE"], ds.map((d) => [d.hostname, domainStateText(d), d.proof?.record ?? "-", d.proof?.value ?? "-"])));
        return;
      }
      if (action !== "add" && action !== "remove") throw new ConfigError(`vm domains: expected add or remove, got ${JSON.stringify(action)}`);
      if (!domain) throw new ConfigError(`vm domains ${name} ${action}: give the DOMAIN`);
      if (action === "add") {
        const r = await a.json("POST", vmPath, { domain });
        if (opts.json) { printJson(r); return; }
        const d = r.domain as DomainView;
        ctx.out(`${name}: domain ${d.hostname} added (${domainStateText(d)})`);
        const how = proofInstructions([d]);
        if (how) ctx.out(how);
        return;
      }
      const r = await a.json("DELETE", `${vmPath}/${encodeURIComponent(domain)}`);
      if (opts.json) printJson(r); else ctx.out(`${name}: domain ${r.removed} removed; its routes are withdrawn`);
    });
}
