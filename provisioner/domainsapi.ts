import type { Context, Hono } from "hono";
import { badRequest, notFound } from "./errors.js";
import { parseVmDomain } from "./vmdomains.js";
import type { VmManager } from "./vms.js";

/**
 * The custom-domain routes of the provisioner API (api.ts registers them behind
 * the same guard as every other route):
 *   GET    /v1/vms/:name/domains            {vm, domains: [{hostname, state, reason, proof}]}
 *   POST   /v1/vms/:name/domains            {domain} → 201 {vm, domain}
 *   DELETE /v1/vms/:name/domains/:domain    → 200 {vm, removed}
 * `proof` is the TXT record that proves the cog controls the name (null under the
 * hub's domain, which only the hub operator grants): the same record
 * `capsul cog domains add` prints. A running VM's routes are published again at once.
 */

interface Helpers { jsonBody(c: Context): Promise<unknown>; nameParam(c: Context): string }

function domainsOf(vms: VmManager, name: string): Record<string, unknown>[] {
  return vms.get(name).domains as Record<string, unknown>[];
}

export function registerDomainRoutes(app: Hono, vms: VmManager, h: Helpers): void {
  app.get("/v1/vms/:name/domains", (c) => {
    const name = h.nameParam(c);
    return c.json({ vm: name, domains: domainsOf(vms, name) });
  });
  app.post("/v1/vms/:name/domains", async (c) => {
    const name = h.nameParam(c);
    const b = await h.jsonBody(c);
    if (typeof b !== "object" || b === null || Array.isArray(b)) throw badRequest("bad_request", "body: {domain: hostname}");
    for (const k of Object.keys(b)) if (k !== "domain") throw badRequest("bad_request", `unknown field ${JSON.stringify(k)} (only domain)`);
    const domain = parseVmDomain((b as { domain?: unknown }).domain, "domain");
    const v = await vms.setDomainsWith(name, (have) => [...have, domain]);
    const view = domainsOf(vms, v.name).find((d) => d.hostname === domain);
    return c.json({ vm: v.name, domain: view }, 201);
  });
  app.delete("/v1/vms/:name/domains/:domain", async (c) => {
    const name = h.nameParam(c);
    const domain = parseVmDomain(decodeURIComponent(c.req.param("domain") ?? ""), "domain");
    const v = await vms.setDomainsWith(name, (have) => {
      if (!have.includes(domain)) throw notFound("domain_not_found", `VM ${name} has no domain ${domain} (capsul vm domains ${name})`);
      return have.filter((d) => d !== domain);
    });
    return c.json({ vm: v.name, removed: domain });
  });
}
