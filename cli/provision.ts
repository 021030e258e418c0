/**
 * Wires the provisioner into `capsul cog` when cog.provisioner is configured.
 * Loaded lazily so a cog without VMs never loads QEMU code.
 */
import type { CogConfig, CogRoute } from "../config/types.js";
import type { Logger } from "../lib/log.js";
import type { CogExtras } from "../tunnel-client/cog.js";
import type { Provisioner } from "../provisioner/index.js";
import { PROVISIONER_START_ONLY_FIELDS } from "../config/reload.js";
import { challengeName, domainProofValue } from "../protocol/domainproof.js";
import { addDomain, forgetDomain, readDomainReport } from "../tunnel-client/domains.js";
import type { CogDomains } from "../provisioner/vmdomains.js";

/**
 * A VM's custom domains through the cog's own domain machinery: the proof value of
 * its enrollment (what `capsul cog domains add` prints), the hub's last report (the
 * running cog saves it in its data dir), and the `capsul cog domains` list. A name a
 * route in capsul.yaml names stays on that list when a VM lets go of it. `routes()`:
 * the cog's routes as configured now (a reload may change them).
 */
function cogDomains(dataDir: string, routes: () => readonly CogRoute[], identity: { name: string; caFingerprint: string }, log: Logger, release: () => void): CogDomains {
  return {
    proof: (hostname) => ({ record: challengeName(hostname), value: domainProofValue(identity.caFingerprint, identity.name, hostname) }),
    report: () => {
      try {
        return readDomainReport(dataDir)?.proofs ?? [];
      } catch (e) {
        log.warn("cannot read the hub's custom-domain report", { err: (e as Error).message });
        return [];
      }
    },
    remember: async (hostname) => { await addDomain(dataDir, hostname); },
    forget: async (hostname) => {
      if (routes().some((r) => r.hostname === hostname)) return;
      await forgetDomain(dataDir, hostname);
      release(); // the hub deletes the cog's claim on it (a `domains-release`), now or after the next welcome
    },
    cogRoute: (hostname) => routes().find((r) => r.hostname === hostname)?.name ?? null,
  };
}

export function provisionerExtras(cfg: CogConfig, log: Logger): CogExtras {
  const pcfg = cfg.provisioner;
  if (!pcfg) return {};
  let running: Provisioner | null = null;
  let routes = cfg.routes;
  return {
    reconfigure(next) {
      routes = next.routes;
      if (running && next.provisioner) running.reconfigure(next.provisioner, PROVISIONER_START_ONLY_FIELDS);
    },
    async start(client, identity, hub, registry) {
      const mod = await import("../provisioner/index.js");
      const p = await mod.startProvisioner({
        config: pcfg,
        cogName: identity.name,
        hubDomain: identity.hubDomain,
        hubHost: hub.host,
        sink: client,
        tunnel: client,
        logger: log.child("provisioner"),
        registry,
        domains: cogDomains(cfg.dataDir, () => routes, identity, log, () => client.releaseDomains()),
      });
      running = p;
      log.info("provisioner API ready", { url: p.url });
      return () => p.close();
    },
  };
}
