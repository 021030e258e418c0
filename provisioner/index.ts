import { randomBytes } from "node:crypto";
import fs from "node:fs";
import type { AddressInfo } from "node:net";
import path from "node:path";
import { serve } from "@hono/node-server";
import { Registry } from "prom-client";
import type { HostPort, ProvisionerConfig } from "../config/types.js";
import { RuntimeError } from "../lib/errors.js";
import { type Logger, Masked } from "../lib/log.js";
import type { RouteSink } from "../tunnel-client/routesink.js";
import { buildApi } from "./api.js";
import { BackupManager } from "./backup.js";
import { Store } from "./db.js";
import { ImageCatalogue } from "./images.js";
import { processAlive, procCmdline } from "./qemu.js";
import { MoveManager, type MoveTunnel } from "./move.js";
import type { ExportDeps } from "./vmexport.js";
import type { CogDomains } from "./vmdomains.js";
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
  /** The cog's tunnel, for `capsul vm move` (both ends); without it moves are refused. */
  tunnel?: MoveTunnel;
  /** The cog's registry: the VM metrics join it and /metrics renders all of it. Default: one of its own. */
  registry?: Registry;
  /** The cog's side of VMs' custom domains (proof records, the hub's report); without it `vm show` prints no TXT record. */
  domains?: CogDomains;
}

export interface Provisioner {
  url: string;
  /** <dataDir>/api-token: every API request needs `Authorization: Bearer <its content>`. */
  tokenFile: string;
  /**
   * A reloaded capsul.yaml's provisioner section: every key is taken but `keep` (those the
   * running provisioner read once at start, config/reload.ts), which keep their old value.
   */
  reconfigure(next: ProvisionerConfig, keep: ReadonlySet<keyof ProvisionerConfig>): void;
  close(): Promise<void>;
}

export const TOKEN_FILE = "api-token";
export const LOCK_FILE = "provisioner.pid";

/**
 * The API token in <dataDir>/api-token (0600), created on first start. The API
 * always asks for it, also on loopback (apiguard.ts); `capsul vm`/`capsul image`
 * read it from the same file. A file that others can read is tightened, not
 * trusted as is.
 */
export function loadOrCreateToken(dataDir: string, log: Logger): string {
  const file = path.join(dataDir, TOKEN_FILE);
  try {
    const st = fs.lstatSync(file);
    if (!st.isFile()) throw new RuntimeError(`${file} is not a regular file; remove it and restart`);
    if ((st.mode & 0o077) !== 0) {
      fs.chmodSync(file, 0o600);
      log.warn("api token file was readable by others; now 0600 (consider a new token: delete it and restart)", { file });
    }
    const t = fs.readFileSync(file, "utf8").trim();
    if (t) return t;
  } catch (e) {
    if (e instanceof RuntimeError) throw e;
    /* create it */
  }
  const t = randomBytes(32).toString("base64url");
  fs.rmSync(file, { force: true });
  // wx: never write through a file (or symlink) that appeared meanwhile.
  fs.writeFileSync(file, t + "\n", { mode: 0o600, flag: "wx" });
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
  // One mutable copy that every part reads at use time, so that a reload (reconfigure) reaches them.
  const cfg: ProvisionerConfig = { ...opts.config };
  const log = opts.logger.child("provisioner");
  fs.mkdirSync(cfg.dataDir, { recursive: true, mode: 0o700 });
  // VM disks, the token and the image catalogue live here: nobody else reads it.
  if ((fs.statSync(cfg.dataDir).mode & 0o077) !== 0) {
    fs.chmodSync(cfg.dataDir, 0o700);
    log.warn("data dir was accessible to others; now 0700", { data_dir: cfg.dataDir });
  }
  const unlock = takeLock(cfg.dataDir);
  const store = new Store(path.join(cfg.dataDir, "provisioner.db"));
  const images = new ImageCatalogue(cfg, store, log);
  const reach = { cogName: opts.cogName, hubDomain: opts.hubDomain, hubHost: opts.hubHost };
  const vms = new VmManager(cfg, store, opts.sink, reach, log, opts.domains ?? null);
  const backups = new BackupManager(cfg, store, vms, log.child("backup"));
  const token = loadOrCreateToken(cfg.dataDir, log);
  const closing = new AbortController();
  const archives: ExportDeps = {
    cfg, db: store, vms, images, log: log.child("move"), signal: closing.signal, cogName: opts.cogName, hubDomain: opts.hubDomain,
  };
  const moves = new MoveManager(archives, opts.tunnel ?? null, log.child("move"));

  let server: ReturnType<typeof serve> | undefined;
  let unregisterMetrics = (): void => {};
  try {
    await vms.reconcile();
    const registry = opts.registry ?? new Registry();
    unregisterMetrics = registerVmMetrics(registry, store, vms);
    await backups.start();
    // Port 0 (tests) becomes the kernel's choice: the Host check wants the bound one.
    let boundPort = cfg.listen.port;
    const app = buildApi({ cfg, store, images, vms, backups, archives, moves, log, token, registry, listen: (): HostPort => ({ host: cfg.listen.host, port: boundPort }) });
    server = await new Promise<ReturnType<typeof serve>>((resolve, reject) => {
      const s = serve({ fetch: app.fetch, hostname: cfg.listen.host, port: cfg.listen.port }, (info) => { boundPort = info.port; resolve(s); });
      s.once("error", reject);
    });
  } catch (e) {
    moves.close();
    unregisterMetrics();
    await backups.close();
    await vms.close();
    store.close();
    unlock();
    throw e;
  }
  const addr = server.address() as AddressInfo;
  const host = addr.family === "IPv6" ? `[${addr.address}]` : addr.address;
  const url = `http://${host}:${addr.port}`;
  log.info("provisioner listening", { url, data_dir: cfg.dataDir, token_file: path.join(cfg.dataDir, TOKEN_FILE), token: new Masked(token) });

  let closed: Promise<void> | undefined;
  return {
    url,
    tokenFile: path.join(cfg.dataDir, TOKEN_FILE),
    reconfigure(next, keep) {
      for (const key of Object.keys(next) as (keyof ProvisionerConfig)[]) {
        if (!keep.has(key)) (cfg as unknown as Record<string, unknown>)[key] = next[key];
      }
    },
    close: () => {
      closed ??= (async () => {
        moves.close();
        closing.abort();
        await new Promise<void>((resolve) => {
          server!.close(() => resolve());
          // Keep-alive connections would hold close() open.
          (server as unknown as { closeAllConnections?: () => void }).closeAllConnections?.();
        });
        unregisterMetrics();
        await backups.close();
        await vms.close();
        store.close();
        unlock();
        log.info("provisioner closed; VMs keep running");
      })();
      return closed;
    },
  };
}
