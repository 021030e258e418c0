import { randomBytes } from "node:crypto";
import fs from "node:fs";
import type { AddressInfo } from "node:net";
import path from "node:path";
import { serve } from "@hono/node-server";
import { Registry } from "prom-client";
import type { ProvisionerConfig } from "../config/types.js";
import { RuntimeError } from "../lib/errors.js";
import { type Logger, Masked } from "../lib/log.js";
import type { RouteSink } from "../tunnel-client/routesink.js";
import { buildApi } from "./api.js";
import { Store } from "./db.js";
import { ImageCatalogue } from "./images.js";
import { processAlive, procCmdline } from "./qemu.js";
import { registerVmMetrics } from "./metrics.js";
import { VmManager } from "./vms.js";

export { parseProvisionerConfig } from "./config.js";

export interface ProvisionerOptions {
  config: ProvisionerConfig;
  cogName: string;
  hubDomain: string;
  /** Printed in "ssh -p PORT user@hubHost". */
  hubHost: string;
  sink: RouteSink;
  logger: Logger;
  /** The cog's registry: the VM metrics join it and /metrics renders all of it. Default: one of its own. */
  registry?: Registry;
}

export interface Provisioner { url: string; close(): Promise<void> }

export const TOKEN_FILE = "api-token";
export const LOCK_FILE = "provisioner.pid";

export function isLoopback(host: string): boolean {
  return host === "localhost" || host === "::1" || /^127\.\d+\.\d+\.\d+$/.test(host);
}

/** The API token in <dataDir>/api-token, created (0600) on first start. */
export function loadOrCreateToken(dataDir: string): string {
  const file = path.join(dataDir, TOKEN_FILE);
  try {
    const t = fs.readFileSync(file, "utf8").trim();
    if (t) return t;
  } catch { /* create it */ }
  const t = randomBytes(32).toString("base64url");
  fs.writeFileSync(file, t + "\n", { mode: 0o600 });
  return t;
}

/**
 * One provisioner per data dir: a second one would fight the first over the same
 * QEMU processes. The pidfile is stale when its process is gone (kill -9) or is
 * no longer node.
 */
function takeLock(dataDir: string): () => void {
  const file = path.join(dataDir, LOCK_FILE);
  try {
    const pid = Number(fs.readFileSync(file, "utf8").trim());
    if (Number.isInteger(pid) && pid > 1 && pid !== process.pid && processAlive(pid) && /node/.test((procCmdline(pid) ?? [""])[0]!)) {
      throw new RuntimeError(`another provisioner (pid ${pid}) uses ${dataDir}`);
    }
  } catch (e) {
    if (e instanceof RuntimeError) throw e;
  }
  fs.writeFileSync(file, `${process.pid}\n`);
  return () => {
    try {
      if (fs.readFileSync(file, "utf8").trim() === String(process.pid)) fs.rmSync(file);
    } catch { /* already gone */ }
  };
}

export async function startProvisioner(opts: ProvisionerOptions): Promise<Provisioner> {
  const { config: cfg } = opts;
  const log = opts.logger.child("provisioner");
  fs.mkdirSync(cfg.dataDir, { recursive: true, mode: 0o700 });
  const unlock = takeLock(cfg.dataDir);
  const store = new Store(path.join(cfg.dataDir, "provisioner.db"));
  const images = new ImageCatalogue(cfg.dataDir, store, {
    qemuImg: cfg.qemuImgBinary, toolTimeoutMs: cfg.toolTimeoutMs, maxImageBytes: cfg.maxImageBytes, log,
  });
  const reach = { cogName: opts.cogName, hubDomain: opts.hubDomain, hubHost: opts.hubHost };
  const vms = new VmManager(cfg, store, opts.sink, reach, log);
  const token = loadOrCreateToken(cfg.dataDir);
  const requireToken = !isLoopback(cfg.listen.host);

  let server: ReturnType<typeof serve> | undefined;
  let unregisterMetrics = (): void => {};
  try {
    await vms.reconcile();
    const registry = opts.registry ?? new Registry();
    unregisterMetrics = registerVmMetrics(registry, store, vms);
    const app = buildApi({ cfg, store, images, vms, log, token: requireToken ? token : null, registry });
    server = await new Promise<ReturnType<typeof serve>>((resolve, reject) => {
      const s = serve({ fetch: app.fetch, hostname: cfg.listen.host, port: cfg.listen.port }, () => resolve(s));
      s.once("error", reject);
    });
  } catch (e) {
    unregisterMetrics();
    await vms.close();
    store.close();
    unlock();
    throw e;
  }
  const addr = server.address() as AddressInfo;
  const host = addr.family === "IPv6" ? `[${addr.address}]` : addr.address;
  const url = `http://${host}:${addr.port}`;
  log.info("provisioner listening", { url, data_dir: cfg.dataDir, token: requireToken ? new Masked(token) : "not required (loopback)" });

  let closing: Promise<void> | undefined;
  return {
    url,
    close: () => {
      closing ??= (async () => {
        await new Promise<void>((resolve) => {
          server!.close(() => resolve());
          // Keep-alive connections would hold close() open.
          (server as unknown as { closeAllConnections?: () => void }).closeAllConnections?.();
        });
        unregisterMetrics();
        await vms.close();
        store.close();
        unlock();
        log.info("provisioner closed; VMs keep running");
      })();
      return closing;
    },
  };
}
