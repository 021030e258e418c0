/**
 * `capsul cog`: the tunnel client plus, when configured, the provisioner,
 * wired together through the RouteSink so neither imports the other.
 */
import type { Registry } from "prom-client";
import type { CogConfig, HostPort } from "../config/types.js";
import type { Logger } from "../lib/log.js";
import { parseHostPort } from "../lib/hostname.js";
import type { AdminServer } from "../lib/adminhttp.js";
import { loadOrCreateAdminToken } from "../certs/admintoken.js";
import { startCogAdmin } from "./admin.js";
import { TunnelClient } from "./client.js";
import { loadIdentity, type CogIdentity } from "./identity.js";
import { CogMetrics } from "./metrics.js";

export interface Cog {
  readonly identity: CogIdentity;
  readonly client: TunnelClient;
  readonly metrics: CogMetrics;
  /** cog.listen.admin (/healthz, /metrics), when configured. */
  readonly admin: { port: number; url: string } | null;
  close(): Promise<void>;
}

export interface CogExtras {
  /** Starts side services (the provisioner) once the client exists; returns their close(). */
  start?: (client: TunnelClient, identity: CogIdentity, hub: HostPort, registry: Registry) => Promise<() => Promise<void>>;
  /** Where the cog's metrics go: the process's registry (cli/); without it, a registry of the cog's own. */
  registry?: Registry;
}

export async function startCog(cfg: CogConfig, log: Logger, extras: CogExtras = {}): Promise<Cog> {
  const identity = loadIdentity(cfg.dataDir);
  const hub = cfg.hub ?? parseHostPort(identity.hub, "enrollment.json hub");
  const client = new TunnelClient(cfg, identity, hub, log.child("tunnel"));
  const metrics = new CogMetrics(client, identity.name, cfg.dataDir, extras.registry);
  let admin: AdminServer | null = null;
  let stopExtras = async (): Promise<void> => {};
  try {
    if (cfg.listen.admin) admin = await startCogAdmin(cfg, client, metrics, await loadOrCreateAdminToken(cfg.dataDir), log.child("admin"));
    if (extras.start) stopExtras = await extras.start(client, identity, hub, metrics.registry);
  } catch (err) {
    await admin?.close();
    metrics.close();
    throw err;
  }
  client.start();
  log.info("cog started", { cog: identity.name, hub: `${hub.host}:${hub.port}`, routes: cfg.routes.length });
  return {
    identity,
    client,
    metrics,
    admin: admin && { port: admin.port, url: admin.url },
    async close() {
      await admin?.close();
      await stopExtras();
      await client.close();
      metrics.close();
    },
  };
}
