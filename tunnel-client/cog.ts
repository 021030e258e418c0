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
import { AcmeManager, type TerminatedName } from "../certs/acme.js";
import { startCogAdmin } from "./admin.js";
import { TunnelClient, type ClientDrainReport } from "./client.js";
import { loadIdentity, type CogIdentity } from "./identity.js";
import { CogMetrics } from "./metrics.js";
import { reloadCog, type CogReloadReport } from "./reload.js";
import { httpSideName, Terminator } from "./terminate.js";

export interface Cog {
  readonly identity: CogIdentity;
  readonly client: TunnelClient;
  readonly metrics: CogMetrics;
  /** cog.listen.admin (/healthz, /metrics), when configured. */
  readonly admin: { port: number; url: string } | null;
  /** Certificates of `tls: terminate` routes (idle while no route terminates). */
  readonly acme: AcmeManager;
  /** The configuration in force: what the cog started with, as later reloads changed it. */
  readonly config: CogConfig;
  /** Applies a new configuration as a difference (./reload.ts); throws, changing nothing, when it cannot. */
  reload(next: CogConfig): CogReloadReport;
  /** Retires the tunnel and waits for open visitor streams up to `graceMs`; close() afterwards cuts the rest. */
  drain(graceMs: number, cutNow?: AbortSignal): Promise<ClientDrainReport>;
  close(): Promise<void>;
}

/**
 * The hostnames the client's routes terminate, and whether the hub accepted what
 * each one's challenge comes in by: the tls route, and for http-01 its http side.
 */
export function terminatedNames(client: TunnelClient, connected: boolean): TerminatedName[] {
  const out: TerminatedName[] = [];
  for (const r of client.routes()) {
    if (!r.terminate || !r.hostname) continue;
    const accepted = (name: string) => client.status(name).state === "accepted";
    const ready = connected && accepted(r.name) && (r.terminate.challenge !== "http-01" || accepted(httpSideName(r.name)));
    out.push({ name: r.hostname, challenge: r.terminate.challenge, ready });
  }
  return out;
}

export interface CogExtras {
  /** Starts side services (the provisioner) once the client exists; returns their close(). */
  start?: (client: TunnelClient, identity: CogIdentity, hub: HostPort, registry: Registry) => Promise<() => Promise<void>>;
  /** A reload: the side services take what they can of the new configuration. */
  reconfigure?: (next: CogConfig) => void;
  /** Where the cog's metrics go: the process's registry (cli/); without it, a registry of the cog's own. */
  registry?: Registry;
}

export async function startCog(cfg: CogConfig, log: Logger, extras: CogExtras = {}): Promise<Cog> {
  const identity = loadIdentity(cfg.dataDir);
  const hub = cfg.hub ?? parseHostPort(identity.hub, "enrollment.json hub");
  const acme = new AcmeManager(cfg.acme, cfg.dataDir, log.child("acme"));
  await acme.start();
  // The live configuration: one mutable top-level copy that the client and the terminator
  // read when they need a value; a reload replaces its sections (./reload.ts).
  const live: CogConfig = { ...cfg };
  // Terminated routes' plaintext connections count in the cog's metrics like passthrough ones.
  const terminator = new Terminator(acme, live, log.child("terminate"), (route, target) => client.emit("visitor", route, target));
  const client = new TunnelClient(live, identity, hub, log.child("tunnel"), cfg.dataDir, terminator);
  // Orders start once the hub has accepted the routes their challenges arrive by.
  acme.setNames(terminatedNames(client, false));
  client.on("routes", () => acme.setNames(terminatedNames(client, true)));
  client.on("disconnected", () => acme.setNames(terminatedNames(client, false)));
  const metrics = new CogMetrics(client, identity.name, cfg.dataDir, extras.registry);
  metrics.watchAcme(acme);
  let admin: AdminServer | null = null;
  let stopExtras = async (): Promise<void> => {};
  try {
    if (cfg.listen.admin) admin = await startCogAdmin(cfg, client, metrics, await loadOrCreateAdminToken(cfg.dataDir), log.child("admin"));
    if (extras.start) stopExtras = await extras.start(client, identity, hub, metrics.registry);
  } catch (err) {
    await admin?.close();
    metrics.close();
    await acme.close();
    terminator.close();
    throw err;
  }
  client.start();
  log.info("cog started", { cog: identity.name, hub: `${hub.host}:${hub.port}`, routes: cfg.routes.length });
  return {
    identity,
    client,
    metrics,
    admin: admin && { port: admin.port, url: admin.url },
    acme,
    config: live,
    reload: (next) => reloadCog({ live, identity, client, acme, terminator, reconfigureExtras: extras.reconfigure }, next),
    drain: (graceMs, cutNow) => client.drain(graceMs, cutNow),
    async close() {
      await admin?.close();
      await stopExtras();
      await client.close();
      metrics.close();
      await acme.close();
      terminator.close();
    },
  };
}
