import { PassThrough, Readable } from "node:stream";
import type { ReadableStream as WebReadableStream } from "node:stream/web";
import type { Context, Hono } from "hono";
import { answer } from "./backupapi.js";
import { NAME_RE } from "./config.js";
import { badRequest } from "./errors.js";
import type { MoveManager } from "./move.js";
import { type ExportDeps, importArchive, prepareExport, writeArchive } from "./vmexport.js";

/**
 * The archive routes of the provisioner API (README "Moving a capsul"), behind
 * the same guard as every other route:
 *   GET  /v1/vms/:name/export   → the archive (application/x-tar, Content-Length)
 *   POST /v1/vms/import[?as=NEW] ← the archive as the body → 201 {vm, imported}
 *   POST /v1/vms/:name/move     {to: cog, stop?: bool} → 200 {vm, move}
 * The import's body is the archive itself, so it is registered before the
 * body limit (registerArchiveUpload); its size is bounded by max_archive_size
 * through the manifest instead. With `Accept: application/x-ndjson` the POSTs
 * stream {progress} lines and end with the result or {error}.
 */

interface Helpers { jsonBody(c: Context): Promise<unknown>; nameParam(c: Context): string }

export function registerArchiveUpload(app: Hono, d: ExportDeps): void {
  app.post("/v1/vms/import", async (c) => {
    const as = c.req.query("as");
    if (as !== undefined && !NAME_RE.test(as)) throw badRequest("bad_name", "as: must match ^[a-z][a-z0-9-]{0,38}$");
    const body = c.req.raw.body;
    if (!body) throw badRequest("bad_request", "send the archive as the request body (capsul vm import FILE)");
    const src = Readable.fromWeb(body as unknown as WebReadableStream<Uint8Array>);
    return answer(c, 201, async (p) => {
      try {
        return await importArchive(d, src, { as }, p);
      } finally {
        // A refused archive is not read to its end: what is left is discarded, so the client gets the answer.
        src.resume();
      }
    });
  });
}

export function registerArchiveRoutes(app: Hono, d: ExportDeps, moves: MoveManager, h: Helpers): void {
  app.get("/v1/vms/:name/export", async (c) => {
    const name = h.nameParam(c);
    const prep = await prepareExport(d, name);
    const out = new PassThrough();
    void writeArchive(prep, out, "export")
      .then(() => out.end(), (e: Error) => {
        d.log.warn("export cut short", { vm: name, err: e.message });
        out.destroy(e);
      })
      .finally(() => prep.cleanup());
    return new Response(Readable.toWeb(out) as unknown as ReadableStream, {
      status: 200,
      headers: {
        "content-type": "application/x-tar",
        "content-length": String(prep.totalBytes),
        "content-disposition": `attachment; filename="${name}.capsul.tar"`,
      },
    });
  });
  app.post("/v1/vms/:name/move", async (c) => {
    const name = h.nameParam(c);
    const b = await h.jsonBody(c);
    if (typeof b !== "object" || b === null || Array.isArray(b)) throw badRequest("bad_request", "body must be a JSON object");
    const r = b as Record<string, unknown>;
    for (const k of Object.keys(r)) if (k !== "to" && k !== "stop") throw badRequest("bad_request", `unknown field ${JSON.stringify(k)}`);
    if (typeof r.to !== "string" || !/^[a-z][a-z0-9-]{0,38}$/.test(r.to)) throw badRequest("bad_request", "to: the name of the cog to move the VM to");
    if (r.stop !== undefined && typeof r.stop !== "boolean") throw badRequest("bad_request", "stop: true or false");
    return answer(c, 200, (p) => moves.move(name, { to: r.to as string, stop: r.stop === true }, p));
  });
}
