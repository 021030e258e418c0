import type { Context, Hono } from "hono";
import { stream } from "hono/streaming";
import type { BackupManager } from "./backup.js";
import { badRequest, ProvisionerError } from "./errors.js";
import type { Progress, ProgressFn } from "./progress.js";
import { validateRestoreRequest } from "./restore.js";

/**
 * The backup routes of the provisioner API (api.ts registers them behind the
 * same guard as every other route):
 *   GET  /v1/vms/:name/backups   the VM's backups (also of a deleted VM)
 *   POST /v1/vms/:name/backups   {full?: bool} → 201 {backup, reason}
 *   POST /v1/vms/:name/restore   {from: id, as?: name, stop?: bool} → 200 {vm, backup}
 * With `Accept: application/x-ndjson` the POSTs stream {progress} lines and end
 * with one line {backup…}/{vm…} or {error: {code, message, status}}.
 */

interface Helpers { jsonBody(c: Context): Promise<unknown>; nameParam(c: Context): string }

export function progressLine(p: Progress): string {
  return JSON.stringify({ progress: { phase: p.phase, bytes: p.bytes, total_bytes: p.totalBytes, bytes_per_sec: p.bytesPerSec, eta_sec: p.etaSec } }) + "\n";
}

/** Runs `op` answering JSON (`status` on success), or as ndjson with progress when the client asks for it. */
export function answer(c: Context, status: 200 | 201, op: (onProgress?: ProgressFn) => Promise<Record<string, unknown>>): Response | Promise<Response> {
  if (!/application\/x-ndjson/.test(c.req.header("accept") ?? "")) {
    return op().then((r) => c.json(r, status));
  }
  c.header("content-type", "application/x-ndjson");
  return stream(c, async (s) => {
    let last = Promise.resolve();
    const send = (line: string): void => { last = last.then(() => s.write(line)).then(() => undefined, () => undefined); };
    try {
      const r = await op((p) => send(progressLine(p)));
      send(JSON.stringify(r) + "\n");
    } catch (e) {
      const err = e instanceof ProvisionerError ? { code: e.code, message: e.message, status: e.status } : { code: "internal", message: String(e), status: 500 };
      send(JSON.stringify({ error: err }) + "\n");
    }
    await last;
  });
}

export function registerBackupRoutes(app: Hono, backups: BackupManager, h: Helpers): void {
  app.get("/v1/vms/:name/backups", async (c) => c.json(await backups.list(h.nameParam(c))));
  app.post("/v1/vms/:name/backups", async (c) => {
    const name = h.nameParam(c);
    // An empty body is {}: `curl -X POST` takes a backup.
    const raw = (c.req.header("content-length") ?? "0") === "0" && !c.req.header("transfer-encoding") ? {} : await h.jsonBody(c);
    if (typeof raw !== "object" || raw === null || Array.isArray(raw)) throw badRequest("bad_request", "body must be a JSON object");
    const b = raw as Record<string, unknown>;
    for (const k of Object.keys(b)) if (k !== "full") throw badRequest("bad_request", `unknown field ${JSON.stringify(k)}`);
    if (b.full !== undefined && typeof b.full !== "boolean") throw badRequest("bad_request", "full: true or false");
    return answer(c, 201, (p) => backups.backup(name, { full: b.full === true }, p));
  });
  app.post("/v1/vms/:name/restore", async (c) => {
    const name = h.nameParam(c);
    const req = validateRestoreRequest(await h.jsonBody(c));
    return answer(c, 200, (p) => backups.restore(name, req, p));
  });
}
