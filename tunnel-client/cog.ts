/**
 * `capsul cog`: the tunnel client plus, when configured, the provisioner,
 * wired together through the RouteSink so neither imports the other.
 */
import type { CogConfig, HostPort } from "../config/types.js";
import type { Logger } from "../lib/log.js";
import { parseHostPort } from "../lib/hostname.js";
import { TunnelClient } from "./client.js";
import { loadIdentity, type CogIdentity } from "./identity.js";

export interface Cog {
  readonly identity: CogIdentity;
  readonly client: TunnelClient;
  close(): Promise<void>;
}

export interface CogExtras {
  /** Starts side services (the provisioner) once the client exists; returns their close(). */
  start?: (client: TunnelClient, identity: CogIdentity, hub: HostPort) => Promise<() => Promise<void>>;
}

export async function startCog(cfg: CogConfig, log: Logger, extras: CogExtras = {}): Promise<Cog> {
  const identity = loadIdentity(cfg.dataDir);
  const hub = cfg.hub ?? parseHostPort(identity.hub, "enrollment.json hub");
  const client = new TunnelClient(cfg, identity, hub, log.child("tunnel"));
  const stopExtras = extras.start ? await extras.start(client, identity, hub) : async () => {};
  client.start();
  log.info("cog started", { cog: identity.name, hub: `${hub.host}:${hub.port}`, routes: cfg.routes.length });
  return {
    identity,
    client,
    async close() {
      await stopExtras();
      await client.close();
    },
  };
}
