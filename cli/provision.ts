/**
 * Wires the provisioner into `capsul cog` when cog.provisioner is configured.
 * Loaded lazily so a cog without VMs never loads QEMU code.
 */
import type { CogConfig } from "../config/types.js";
import type { Logger } from "../lib/log.js";
import type { CogExtras } from "../tunnel-client/cog.js";
import type { Provisioner } from "../provisioner/index.js";
import { PROVISIONER_START_ONLY_FIELDS } from "../config/reload.js";

export function provisionerExtras(cfg: CogConfig, log: Logger): CogExtras {
  const pcfg = cfg.provisioner;
  if (!pcfg) return {};
  let running: Provisioner | null = null;
  return {
    reconfigure(next) {
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
      });
      running = p;
      log.info("provisioner API ready", { url: p.url });
      return () => p.close();
    },
  };
}
