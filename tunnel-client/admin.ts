/**
 * The cog's admin listener (cog.listen.admin): /healthz and /metrics, behind the same
 * gates as the hub's (lib/adminhttp.ts). A cog with a provisioner serves both on the
 * provisioner's API listener instead, unless cog.listen.admin is set as well.
 */
import type { CogConfig } from "../config/types.js";
import { gatedApp, isLoopbackHost, serveAdmin, type AdminServer } from "../lib/adminhttp.js";
import { isWildcardAddress } from "../lib/hostname.js";
import type { Logger } from "../lib/log.js";
import type { TunnelClient } from "./client.js";
import type { CogMetrics } from "./metrics.js";

/** GET-only: no body is ever read, so any body over this is refused (413) unread. */
const COG_ADMIN_MAX_BODY_BYTES = 0;

export async function startCogAdmin(cfg: CogConfig, client: TunnelClient, metrics: CogMetrics, token: string, log: Logger): Promise<AdminServer> {
  const listen = cfg.listen.admin!;
  const app = gatedApp({
    hostNames: isWildcardAddress(listen.host) ? [] : [listen.host],
    token: isLoopbackHost(listen.host) ? null : token,
    maxBodyBytes: COG_ADMIN_MAX_BODY_BYTES,
    realm: "capsul cog",
  });
  app.get("/healthz", (c) => c.json({ status: "ok", tunnel: client.state }));
  app.get("/metrics", async (c) => c.body(await metrics.registry.metrics(), 200, { "content-type": metrics.registry.contentType }));
  const server = await serveAdmin(app, listen, cfg.admin, log);
  log.info("admin listener ready", {
    url: server.url, token: isLoopbackHost(listen.host) ? "not required (loopback)" : `required (${cfg.dataDir}/admin-token)`,
  });
  return server;
}
