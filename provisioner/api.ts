import { Hono, type Context } from "hono";
import { bodyLimit } from "hono/body-limit";
import { Registry } from "prom-client";
import { stream } from "hono/streaming";
import type { ContentfulStatusCode } from "hono/utils/http-status";
import type { HostPort, ProvisionerConfig } from "../config/types.js";
import type { Logger } from "../lib/log.js";
import { NAME_RE } from "./config.js";
import type { ImageRecord, Store } from "./db.js";
import { apiGuard } from "./apiguard.js";
import type { BackupManager } from "./backup.js";
import { registerBackupRoutes } from "./backupapi.js";
import { registerDomainRoutes } from "./domainsapi.js";
import { registerArchiveRoutes, registerArchiveUpload } from "./exportapi.js";
import type { MoveManager } from "./move.js";
import type { ExportDeps } from "./vmexport.js";
import { badRequest, ProvisionerError } from "./errors.js";
import { type ImageCatalogue, validateImportRequest } from "./images.js";
import { registerVmMetrics } from "./metrics.js";
import { powerView } from "./power.js";
import { validateCreateRequest } from "./requests.js";
import type { VmManager } from "./vms.js";

/**
 * The provisioner's HTTP API. Every error is JSON {error: {code, message}}
 * with a stable code; a bad body is always a 4xx, never a 500.
 */

export interface ApiDeps {
  cfg: ProvisionerConfig;
  store: Store;
  images: ImageCatalogue;
  vms: VmManager;
  backups: BackupManager;
  /** Export, import and move of VMs (vmexport.ts, move.ts). */
  archives: ExportDeps;
  moves: MoveManager;
  log: Logger;
  /** Bearer token (<dataDir>/api-token); required on every request. */
  token: string;
  /** The address the API listens on, as bound (see apiguard.ts hostAllowed). */
  listen: () => HostPort;
  /** The cog's registry, with the VM metrics on it (startProvisioner); without it, one of the API's own. */
  registry?: Registry;
}

function errorResponse(c: Context, e: unknown, log: Logger): Response {
  if (e instanceof ProvisionerError) {
    if (e.status >= 500) log.error("request failed", { method: c.req.method, path: c.req.path, code: e.code, err: e.message });
    return c.json({ error: { code: e.code, message: e.message } }, e.status as ContentfulStatusCode);
  }
  log.error("internal error", { method: c.req.method, path: c.req.path, err: (e as Error)?.stack ?? String(e) });
  return c.json({ error: { code: "internal", message: `internal error: ${(e as Error)?.message ?? String(e)}` } }, 500);
}

async function jsonBody(c: Context): Promise<unknown> {
  const type = c.req.header("content-type") ?? "";
  if (!/^application\/json\b/i.test(type)) throw new ProvisionerError("bad_content_type", "send Content-Type: application/json", 415);
  const text = await c.req.text();
  try {
    return JSON.parse(text) as unknown;
  } catch (e) {
    throw badRequest("bad_json", `body is not valid JSON: ${(e as Error).message}`);
  }
}

/**
 * Body of stop and reboot: none (graceful), or {"force": true} for the hard way
 * at once (power.ts). Anything else is refused, so a typo never means "force".
 */
async function powerBody(c: Context): Promise<{ force: boolean }> {
  if ((await c.req.text()).trim() === "") return { force: false };
  const b = await jsonBody(c);
  if (!b || typeof b !== "object" || Array.isArray(b)) throw badRequest("bad_request", "body: {force: boolean} or none");
  for (const k of Object.keys(b)) if (k !== "force") throw badRequest("bad_request", `body: unknown key ${JSON.stringify(k)} (only force)`);
  const force = (b as { force?: unknown }).force;
  if (force !== undefined && typeof force !== "boolean") throw badRequest("bad_request", "force: must be true or false");
  return { force: force === true };
}

function nameParam(c: Context): string {
  const name = c.req.param("name") ?? "";
  if (!NAME_RE.test(name)) throw badRequest("bad_name", "name: must match ^[a-z][a-z0-9-]{0,38}$");
  return name;
}

function imageView(i: ImageRecord, store: Store): Record<string, unknown> {
  const files: Record<string, { sha256: string; bytes: number }> = {};
  for (const [k, f] of Object.entries(i.files)) files[k] = { sha256: f.sha256, bytes: f.bytes };
  return {
    name: i.name, format: i.format, files, cmdline: i.cmdline, ssh_user: i.sshUser, created_at: i.createdAt,
    used_by: store.countVmsUsingImage(i.name),
  };
}

export function buildApi(d: ApiDeps): Hono {
  const app = new Hono();
  const { vms, images, store, log, cfg } = d;

  app.onError((e, c) => errorResponse(c, e, log));
  app.notFound((c) => c.json({ error: { code: "not_found", message: `no route ${c.req.method} ${c.req.path}` } }, 404));

  app.use("*", apiGuard({ token: d.token, listen: d.listen, log }));
  // Before the body limit: the body is a whole VM archive, bounded by max_archive_size instead.
  registerArchiveUpload(app, d.archives);
  app.use("*", bodyLimit({
    maxSize: cfg.maxRequestBodyBytes,
    onError: (c) => c.json({ error: { code: "body_too_large", message: `request body over ${cfg.maxRequestBodyBytes} bytes` } }, 413),
  }));

  app.get("/v1/vms", (c) => c.json({ vms: vms.list() }));
  app.post("/v1/vms", async (c) => {
    const req = validateCreateRequest(await jsonBody(c), cfg.maxSshKeys, cfg.maxDomainsPerVm);
    return c.json({ vm: await vms.create(req) }, 202);
  });
  app.get("/v1/vms/:name", (c) => c.json({ vm: vms.get(nameParam(c)) }));
  app.post("/v1/vms/:name/start", async (c) => c.json({ vm: await vms.start(nameParam(c)) }, 202));
  app.post("/v1/vms/:name/stop", async (c) => {
    const name = nameParam(c);
    const r = await vms.stop(name, (await powerBody(c)).force);
    return c.json({ vm: r.vm, stop: r.outcome ? powerView(r.outcome) : null });
  });
  app.post("/v1/vms/:name/reboot", async (c) => {
    const name = nameParam(c);
    const r = await vms.reboot(name, (await powerBody(c)).force);
    return c.json({ vm: r.vm, reboot: powerView(r.outcome) }, 202);
  });
  app.post("/v1/vms/:name/io-limits", async (c) => {
    const name = nameParam(c);
    const b = await jsonBody(c) as Record<string, unknown> | null;
    const ok = (v: unknown): v is number => typeof v === "number" && Number.isInteger(v) && v >= 0 && v <= 1e12;
    if (!b || typeof b !== "object" || !ok(b.iops) || !ok(b.bps)) throw badRequest("bad_request", "body: {iops: int ≥ 0, bps: int ≥ 0} (0 = unlimited)");
    await vms.setIoLimits(name, b.iops, b.bps);
    return c.json({ vm: vms.get(name), io_limits: { iops: b.iops, bps: b.bps } });
  });
  app.delete("/v1/vms/:name", async (c) => {
    const name = nameParam(c);
    await vms.delete(name);
    return c.json({ deleted: name });
  });
  app.get("/v1/vms/:name/console", async (c) => c.text(await vms.consoleTail(nameParam(c))));
  registerBackupRoutes(app, d.backups, { jsonBody, nameParam });
  registerDomainRoutes(app, vms, { jsonBody, nameParam });
  registerArchiveRoutes(app, d.archives, d.moves, { jsonBody, nameParam });

  app.get("/v1/images", (c) => c.json({ images: images.list().map((i) => imageView(i, store)) }));
  app.get("/v1/images/:name", (c) => c.json({ image: imageView(images.get(nameParam(c)), store) }));
  app.post("/v1/images", async (c) => {
    const req = validateImportRequest(await jsonBody(c));
    if (!/application\/x-ndjson/.test(c.req.header("accept") ?? "")) {
      return c.json({ image: imageView(await images.import(req), store) }, 201);
    }
    // Progress as newline-delimited JSON; the last line is {image} or {error}.
    c.header("content-type", "application/x-ndjson");
    return stream(c, async (s) => {
      let last = Promise.resolve();
      try {
        const img = await images.import(req, (p) => {
          last = last.then(() => s.write(JSON.stringify({ progress: { file: p.file, bytes: p.bytes, total_bytes: p.totalBytes } }) + "\n")).then(() => undefined);
        });
        await last;
        await s.write(JSON.stringify({ image: imageView(img, store) }) + "\n");
      } catch (e) {
        await last.catch(() => undefined);
        const err = e instanceof ProvisionerError ? { code: e.code, message: e.message, status: e.status } : { code: "internal", message: String(e), status: 500 };
        await s.write(JSON.stringify({ error: err }) + "\n");
      }
    });
  });
  app.delete("/v1/images/:name", async (c) => {
    const name = nameParam(c);
    await images.delete(name);
    return c.json({ deleted: name });
  });

  app.get("/v1/sizes", (c) => c.json({
    sizes: Object.entries(cfg.sizes).map(([name, s]) => ({
      name, vcpus: s.vcpus, memory_bytes: s.memoryBytes, disk_bytes: s.diskBytes,
      disk_iops: s.diskIopsPerSec, disk_bytes_per_sec: s.diskBytesPerSec,
    })),
    memory: { host_bytes: vms.hostMemoryBytes(), limit_bytes: vms.memoryLimitBytes(), committed_bytes: vms.committedMemoryBytes() },
  }));
  app.get("/v1/drift", (c) => c.json({ drift: vms.drift(), resolved: vms.resolved }));
  // The cog's /healthz and /metrics live here when there is a provisioner (cog.listen.admin is then off by default).
  // Both sit behind apiGuard like every route: /metrics names VMs and their use, and /healthz
  // stays with them so the listener has one rule (a probe reads the 0600 token as Prometheus must).
  const registry = d.registry ?? new Registry();
  if (!d.registry) registerVmMetrics(registry, store, vms);
  app.get("/healthz", (c) => c.json({ status: "ok" }));
  app.get("/metrics", async (c) => c.body(await registry.metrics(), 200, { "content-type": registry.contentType }));
  return app;
}
