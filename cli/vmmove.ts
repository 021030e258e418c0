/**
 * `capsul vm export|import|move` (README "Moving a capsul"): clients of the
 * archive routes (provisioner/exportapi.ts). Progress as for backups: a line on
 * stderr on a terminal (bytes, rate, time left), JSON lines with --json.
 */
import { createHash } from "node:crypto";
import fs from "node:fs";
import fsp from "node:fs/promises";
import path from "node:path";
import { Readable } from "node:stream";
import type { Command } from "commander";
import { ConfigError, RuntimeError } from "../lib/errors.js";
import { formatBytes } from "../lib/units.js";
import { type Progress, ProgressMeter, type ProgressPhase } from "../provisioner/progress.js";
import { followProgress, progressLine, type VmCliContext } from "./vmbackup.js";

/** Progress the CLI measures itself (an export's download): shown as the provisioner's is. */
function localProgress(ctx: VmCliContext, phase: ProgressPhase, json: boolean): { meter: ProgressMeter; done(): void } {
  const tty = process.stderr.isTTY && !json;
  let shown = false;
  const meter = new ProgressMeter(phase, (p: Progress) => {
    const line = { phase: p.phase, bytes: p.bytes, total_bytes: p.totalBytes, bytes_per_sec: p.bytesPerSec, eta_sec: p.etaSec };
    if (json) ctx.out(JSON.stringify({ progress: line }));
    else if (tty) { process.stderr.write(`\r\x1b[K${progressLine(line)}`); shown = true; }
  });
  return { meter, done: () => { if (shown) process.stderr.write("\n"); } };
}

const rate = (bytes: number, ms: number): string => (ms > 0 ? `${formatBytes(Math.round(bytes / (ms / 1000)))}/s` : "--");

export function registerMoveCommands(vm: Command, ctx: VmCliContext): void {
  vm.command("export <name>")
    .description("write a stopped VM to one archive (disk, seed, manifest with SHA-256 of every part)")
    .option("-o, --output <file>", "archive file (default NAME.capsul.tar; never overwritten)")
    .action(async (name: string, o: { output?: string }, cmd: Command) => {
      const { api: a, opts } = ctx.api(cmd);
      const file = path.resolve(o.output ?? `${name}.capsul.tar`);
      if (fs.existsSync(file)) throw new ConfigError(`${file} exists; pick another -o FILE`);
      const started = Date.now();
      const res = await a.raw("GET", `/v1/vms/${encodeURIComponent(name)}/export`, null, {});
      const total = Number(res.headers.get("content-length") ?? 0);
      const part = `${file}.part`;
      const out = fs.createWriteStream(part, { flags: "wx", mode: 0o600 });
      const { meter, done } = localProgress(ctx, "export", !!opts.json);
      const hash = createHash("sha256");
      let bytes = 0;
      try {
        for await (const chunk of res.body as unknown as AsyncIterable<Uint8Array>) {
          hash.update(chunk);
          bytes += chunk.length;
          meter.update(bytes, total);
          if (!out.write(chunk)) await new Promise<void>((r) => out.once("drain", () => r()));
        }
        await new Promise<void>((resolve, reject) => out.end((e?: Error | null) => (e ? reject(e) : resolve())));
        if (bytes !== total) throw new RuntimeError(`the provisioner sent ${bytes} of ${total} bytes; the export was cut short`);
        meter.update(bytes, total, true);
        await fsp.rename(part, file);
      } catch (e) {
        out.destroy();
        await fsp.rm(part, { force: true });
        throw e instanceof RuntimeError ? e : new RuntimeError(`export of ${name} failed: ${(e as Error).message}`);
      } finally {
        done();
      }
      const sha256 = hash.digest("hex");
      const ms = Date.now() - started;
      ctx.out(opts.json ? JSON.stringify({ exported: { vm: name, file, bytes, sha256, duration_ms: ms } })
        : `${name}: exported to ${file} (${formatBytes(bytes)} in ${(ms / 1000).toFixed(1)} s, ${rate(bytes, ms)}; sha256 ${sha256})`);
    });

  vm.command("import <file>")
    .description("recreate a VM from an archive (capsul vm export), checking every part's SHA-256")
    .option("--as <newname>", "create it under this name instead of the archive's")
    .action(async (file: string, o: { as?: string }, cmd: Command) => {
      const { api: a, opts } = ctx.api(cmd);
      let size: number;
      try { size = (await fsp.stat(file)).size; } catch (e) { throw new ConfigError(`cannot read ${file}: ${(e as NodeJS.ErrnoException).code ?? (e as Error).message}`); }
      const body = Readable.toWeb(fs.createReadStream(file)) as unknown as ReadableStream<Uint8Array>;
      const q = o.as ? `?as=${encodeURIComponent(o.as)}` : "";
      const res = await a.raw("POST", `/v1/vms/import${q}`, body, {
        accept: "application/x-ndjson", "content-type": "application/x-tar", "content-length": String(size),
      });
      const r = await followProgress(ctx, res, !!opts.json);
      if (opts.json) { ctx.out(JSON.stringify(r)); return; }
      const i = r.imported;
      ctx.out(`${r.vm.name}: imported from cog ${i.from_cog} (${i.from_name}, ${formatBytes(i.bytes)}); ${r.vm.state}; ` +
        `${i.same_instance ? "same cloud-init instance (host keys kept)" : "a new cloud-init instance (another VM here has its instance id)"}`);
      ctx.out(`hostname: ${r.vm.hostname}${i.from_hostname && i.from_hostname !== r.vm.hostname ? ` (was ${i.from_hostname})` : ""}`);
      for (const d of r.vm.domains ?? []) ctx.out(`domain: ${d.hostname} (capsul vm show ${r.vm.name} says where its proof stands)`);
      for (const d of i.domains_dropped ?? []) ctx.out(`domain dropped: ${d.domain} (${d.why})`);
    });

  vm.command("move <name>")
    .description("move a VM to another cog through the hub (the target must list this cog in accept_moves_from)")
    .requiredOption("--to <cog>", "the cog to move it to")
    .option("--stop", "stop the VM first if it runs (it runs again on the target)")
    .action(async (name: string, o: { to: string; stop?: boolean }, cmd: Command) => {
      const { api: a, opts } = ctx.api(cmd);
      const res = await a.call("POST", `/v1/vms/${encodeURIComponent(name)}/move`, { to: o.to, stop: o.stop === true }, "application/x-ndjson");
      const r = await followProgress(ctx, res, !!opts.json);
      if (opts.json) { ctx.out(JSON.stringify(r)); return; }
      const m = r.move;
      ctx.out(`${name}: moved from cog ${m.from_cog} to cog ${m.to_cog} (${formatBytes(m.bytes)} sent in ${(m.send_ms / 1000).toFixed(1)} s, ` +
        `${m.bytes_per_sec ? `${formatBytes(m.bytes_per_sec)}/s` : "--"}; ${(m.duration_ms / 1000).toFixed(0)} s in all); ${r.vm.state ?? "starting"} there; the copy here is deleted`);
      if (m.hostname_after && m.hostname_after !== m.hostname_before) {
        ctx.out(`its default hostname is now ${m.hostname_after} (was ${m.hostname_before})`);
      }
      for (const line of carriedLines(name, m.from_cog, m.to_cog, m.carried)) ctx.out(line);
    });
}

interface CarriedJson {
  ports: Array<{ route: string | null; port: number | null; state: string | null; reason: string | null }>;
  hostnames: Array<{ hostname: string | null; state: string | null; reason: string | null }>;
}

/** One line per TCP route and custom hostname: what followed the VM to its new cog, and what it needs if not. */
export function carriedLines(name: string, from: string, to: string, c: CarriedJson | null | undefined): string[] {
  const where = `capsul vm show ${name} on ${to}`;
  if (!c) return [`its SSH port is the one ${to} gets from the hub (${where}); the hub did not carry ports or names (an older hub)`];
  const out: string[] = [];
  if (c.ports.length === 0) out.push(`its SSH port is the one ${to} gets from the hub (${where})`);
  for (const p of c.ports) {
    const what = p.route?.endsWith("-ssh") ? "its SSH port" : `the hub port of route ${p.route}`;
    if (p.state === "followed") out.push(`${what} is still ${p.port}: it followed the VM to ${to}`);
    else if (p.state === "not-held") out.push(`${what} is the one ${to} gets from the hub (${where}); ${from} held none for it`);
    else out.push(`${what} is a new one on ${to} (${where}): hub port ${p.port ?? "?"} stays with ${from}, because ${p.reason ?? "the hub said no"}`);
  }
  for (const h of c.hostnames) {
    if (h.state === "followed") out.push(`${h.hostname}: followed (its DNS proof moved to ${to}; keep the TXT record as it is)`);
    else if (h.state === "granted") out.push(`${h.hostname}: ${to} holds it by its own grant`);
    else out.push(`${h.hostname}: did not follow: ${h.reason ?? "the hub said no"}`);
  }
  return out;
}

