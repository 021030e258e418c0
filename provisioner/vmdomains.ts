/**
 * Custom domains of a VM (issue 10, "Bring your own domain" for a capsul made
 * by the provisioner): `capsul vm create --domain`, `capsul vm domains [add|remove]`.
 *
 * A VM's domain is published exactly like its default hostname (routes.ts
 * vmRoutes: same https mode, same ports). The provisioner claims nothing at the
 * hub itself: announcing the route is the claim (gateway/domains.ts decides it),
 * and the hub's answer plus its `domains` report (the cog keeps the last one)
 * say where the claim stands. What the provisioner needs from the cog for that
 * comes through CogDomains, so it never imports the tunnel.
 *
 * Rules checked here, each with its own error: a valid exact hostname (no
 * wildcard: the cog's ACME answers HTTP-01/TLS-ALPN-01 only, and a wildcard
 * certificate needs DNS-01), not the VM's own default hostname nor another VM's,
 * not twice on one VM, not on another VM of this cog nor a route of its capsul.yaml,
 * at most max_domains_per_vm.
 */
import { normalizeHostname } from "../lib/hostname.js";
import { REFUSAL_DOMAIN_UNPROVEN, type WireDomainProof } from "../protocol/control.js";
import { badRequest, conflict } from "./errors.js";
import type { VmRecord } from "./db.js";
import type { RouteStatus } from "../tunnel-client/routesink.js";
import { type Reach, vmHostname } from "./routes.js";

/** What the provisioner asks of the cog about custom domains (cli/provision.ts wires it to the cog's identity and data dir). */
export interface CogDomains {
  /** The TXT record that proves this cog controls `hostname` (protocol/domainproof.ts, as `capsul cog domains add` prints it). */
  proof(hostname: string): { record: string; value: string };
  /** The hub's last report on this cog's claims (tunnel-client/domains.ts); [] before the first. */
  report(): WireDomainProof[];
  /** Lists `hostname` in `capsul cog domains` (domains-added.json) before any route of the VM announced it. */
  remember(hostname: string): Promise<void>;
  /** Takes `hostname` off that list, unless a route in capsul.yaml names it (then `capsul cog domains` keeps it). */
  forget(hostname: string): Promise<void>;
  /** The name of a route in the cog's capsul.yaml for exactly `hostname`, if any: a VM may not take that name too. */
  cogRoute(hostname: string): string | null;
}

/** A domain's state as `capsul vm show` prints it. */
export type DomainState = "accepted" | "waiting-for-dns-proof" | "refused" | "pending" | "not-published";

/** Normalises one requested domain or says in one line why it cannot be one. */
export function parseVmDomain(raw: unknown, field: string): string {
  if (typeof raw !== "string" || raw.length === 0) throw badRequest("bad_domain", `${field}: a hostname (string) is required`);
  if (raw.startsWith("*.")) {
    throw badRequest("bad_domain", `${field}: ${JSON.stringify(raw)} is a wildcard; a VM's domains are exact names (its certificate comes by HTTP-01, which cannot issue wildcards)`);
  }
  const h = normalizeHostname(raw);
  if (h === null) throw badRequest("bad_domain", `${field}: not a hostname: ${JSON.stringify(raw)} (letters, digits, dashes and dots, at most 253 characters)`);
  if (!h.includes(".")) throw badRequest("bad_domain", `${field}: ${JSON.stringify(h)} is a single label; give a full name such as blog.example.net`);
  return h;
}

/**
 * Checks `domains` (already normalised) for VM `vm` against the VM itself and the
 * other VMs of this cog: duplicates, default hostnames, another VM's domains, the limit.
 */
export function checkVmDomains(
  vm: string, domains: readonly string[], others: readonly VmRecord[], r: Reach, maxPerVm: number, cog: CogDomains | null = null,
): void {
  if (domains.length > maxPerVm) {
    throw conflict("too_many_domains", `VM ${vm} would have ${domains.length} domains; at most ${maxPerVm} per VM (cog.provisioner.max_domains_per_vm)`);
  }
  const seen = new Set<string>();
  for (const d of domains) {
    if (seen.has(d)) throw badRequest("duplicate_domain", `${d} is given twice for VM ${vm}`);
    seen.add(d);
    if (d === vmHostname(vm, r)) throw badRequest("duplicate_domain", `${d} is VM ${vm}'s default hostname already; it needs no domain entry`);
    const route = cog?.cogRoute(d);
    if (route) throw conflict("domain_taken", `${d} is the hostname of route ${route} in this cog's capsul.yaml`);
    for (const o of others) {
      if (o.name === vm) continue;
      if (d === vmHostname(o.name, r)) throw conflict("domain_taken", `${d} is the default hostname of VM ${o.name} on this cog`);
      if (o.domains.includes(d)) throw conflict("domain_taken", `${d} is already a domain of VM ${o.name} on this cog (capsul vm domains ${o.name} remove ${d} first)`);
    }
  }
}

/**
 * The domains an imported VM can keep on this cog: those no other VM here has (as a
 * domain or as its default hostname) and that are not its own new default hostname.
 * The rest are dropped, each with why, and the import says so (vmexport.ts).
 */
export function domainsFreeFor(vm: string, domains: readonly string[], others: readonly VmRecord[], r: Reach): { kept: string[]; dropped: Array<{ domain: string; why: string }> } {
  const kept: string[] = [];
  const dropped: Array<{ domain: string; why: string }> = [];
  for (const d of domains) {
    if (kept.includes(d)) continue;
    if (d === vmHostname(vm, r)) { dropped.push({ domain: d, why: `it is the VM's default hostname here` }); continue; }
    const holder = others.find((o) => o.name !== vm && (o.domains.includes(d) || d === vmHostname(o.name, r)));
    if (holder) { dropped.push({ domain: d, why: `VM ${holder.name} on this cog has it` }); continue; }
    kept.push(d);
  }
  return { kept, dropped };
}

/** True for names the hub operator grants (at or under the hub's domain): no DNS proof can claim those. */
export function operatorGranted(hostname: string, r: Reach): boolean {
  const d = r.hubDomain.toLowerCase();
  return hostname === d || hostname.endsWith(`.${d}`);
}

/** The proof a domain needs, or null for names under the hub's domain (granted by the operator, or never). */
export function proofFor(hostname: string, r: Reach, cog: CogDomains | null): { record: string; type: "TXT"; value: string } | null {
  if (!cog || operatorGranted(hostname, r)) return null;
  const p = cog.proof(hostname);
  return { record: p.record, type: "TXT", value: p.value };
}

/**
 * One domain's state from the hub's answer on its TLS route and the hub's claim report:
 * accepted; refused while the claim waits for its TXT record (or lost it); refused for another
 * reason (another cog holds it, under the hub's domain…); pending (no answer yet); or not
 * published at all (the VM does not run).
 */
export function domainState(hostname: string, route: RouteStatus | null, report: readonly WireDomainProof[]): { state: DomainState; reason: string | null } {
  if (route === null) return { state: "not-published", reason: "the VM is not running: its routes are published when it starts" };
  if (route.state === "accepted") return { state: "accepted", reason: null };
  if (route.state === "pending") return { state: "pending", reason: "waiting for the hub's answer" };
  const claim = report.find((p) => p.hostname === hostname);
  // The hub's code says it; a hub before RefusedRoute.code only says it in the text.
  const unproven = route.code !== undefined ? route.code === REFUSAL_DOMAIN_UNPROVEN : /create the DNS record/.test(route.reason);
  if (claim?.state !== "verified" && unproven) {
    return { state: "waiting-for-dns-proof", reason: claim?.lastError ?? route.reason };
  }
  return { state: "refused", reason: route.reason };
}
