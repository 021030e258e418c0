/**
 * `capsul vm backup|backups|restore`: clients of the provisioner's backup
 * routes (provisioner/backupapi.ts). Long operations stream progress: on a
 * terminal a line on stderr with bytes, rate and time left; with --json one
 * JSON object per line on stdout, the result last.
 */
import readline from "node:readline/promises";
import type { Command } from "commander";
import { ConfigError, RuntimeError } from "../lib/errors.js";
import { formatBytes } from "../lib/units.js";
import { table } from "./common.js";

export interface VmApiClient {
  call(method: string, p: string, body?: unknown, accept?: string): Promise<Response>;
  /** A request with a body of its own (an archive upload) or none, answered as call() does. */
  raw(method: string, p: string, body: ReadableStream<Uint8Array> | null, headers: Record<string, string>): Promise<Response>;
  json<T = any>(method: string, p: string, body?: unknown): Promise<T>;
}

export interface VmCliContext {
  api(cmd: Command): { api: VmApiClient; opts: { json?: boolean } };
  out(s: string): void;
  /** API statuses that mean "what you asked for is wrong" → exit code 2. */
  usageStatuses: Set<number>;
}

const PHASES: Record<string, string> = {
  backup: "backing up", checksum: "checksum", verify: "verifying", restore: "restoring",
  flatten: "flattening", export: "exporting", import: "importing", move: "moving", upload: "uploading",
};
const BAR_WIDTH = 24;

export function formatEta(sec: number | null): string {
  if (sec === null) return "--";
  if (sec < 60) return `${sec}s`;
  if (sec < 3600) return `${Math.floor(sec / 60)}m${String(sec % 60).padStart(2, "0")}s`;
  return `${Math.floor(sec / 3600)}h${String(Math.floor((sec % 3600) / 60)).padStart(2, "0")}m`;
}

/** One terminal line: phase, bar, percent, bytes, rate, time left. */
export function progressLine(p: { phase: string; bytes: number; total_bytes: number; bytes_per_sec: number; eta_sec: number | null }): string {
  const frac = p.total_bytes > 0 ? Math.min(1, p.bytes / p.total_bytes) : 0;
  const done = Math.round(frac * BAR_WIDTH);
  return `${(PHASES[p.phase] ?? p.phase).padEnd(10)} [${"#".repeat(done)}${" ".repeat(BAR_WIDTH - done)}] ${String(Math.floor(frac * 100)).padStart(3)}% ` +
    `${formatBytes(p.bytes)} / ${formatBytes(p.total_bytes)}  ${formatBytes(p.bytes_per_sec)}/s  ETA ${formatEta(p.eta_sec)}`;
}

/** POSTs and follows the ndjson answer: progress as it comes, then the result (or the error, thrown). */
async function streamed(ctx: VmCliContext, a: VmApiClient, p: string, body: unknown, json: boolean): Promise<any> {
  return followProgress(ctx, await a.call("POST", p, body, "application/x-ndjson"), json);
}

/** Follows an ndjson answer: progress as it comes (a terminal line, or --json lines), then the result (or the error, thrown). */
export async function followProgress(ctx: VmCliContext, res: Response, json: boolean): Promise<any> {
  const tty = process.stderr.isTTY && !json;
  let result: any;
  let buf = "";
  let shown = false;
  for await (const chunk of res.body as unknown as AsyncIterable<Uint8Array>) {
    buf += Buffer.from(chunk).toString("utf8");
    let nl: number;
    while ((nl = buf.indexOf("\n")) >= 0) {
      const line = buf.slice(0, nl);
      buf = buf.slice(nl + 1);
      if (!line.trim()) continue;
      const msg = JSON.parse(line) as any;
      if (msg.progress) {
        if (json) ctx.out(JSON.stringify(msg));
        else if (tty) { process.stderr.write(`\r\x1b[K${progressLine(msg.progress)}`); shown = true; }
        continue;
      }
      result = msg;
    }
  }
  if (shown) process.stderr.write("\n");
  if (!result) throw new RuntimeError("the provisioner closed the connection without an answer");
  if (result.error) {
    const m = `${result.error.message} [${result.error.code}]`;
    throw Object.assign(ctx.usageStatuses.has(result.error.status) ? new ConfigError(m) : new RuntimeError(m), { code: result.error.code });
  }
  return result;
}

const seconds = (ms: number): string => `${(ms / 1000).toFixed(1)} s`;

function describeBackup(b: any): string {
  const kind = b.kind === "full" ? "full" : `incremental on ${b.parent}`;
  const how = b.consistency === "filesystem" ? "filesystems frozen by the guest agent"
    : b.consistency === "stopped" ? "taken from the stopped VM's disk" : "crash-consistent (no guest agent answered)";
  return `backup ${b.id} (${kind}): ${formatBytes(b.bytes)} file, ${formatBytes(b.data_bytes)} read in ${seconds(b.duration_ms)}, ${how}`;
}

async function confirm(question: string): Promise<boolean> {
  const rl = readline.createInterface({ input: process.stdin, output: process.stderr });
  try {
    return /^y(es)?$/i.test((await rl.question(`${question} [y/N] `)).trim());
  } finally {
    rl.close();
  }
}

export function registerBackupCommands(vm: Command, ctx: VmCliContext): void {
  vm.command("backup <name>")
    .description("back up a VM's disk: incremental when its chain is intact, else full")
    .option("--full", "take a full backup (starts a new chain)")
    .action(async (name: string, o: { full?: boolean }, cmd: Command) => {
      const { api: a, opts } = ctx.api(cmd);
      const r = await streamed(ctx, a, `/v1/vms/${encodeURIComponent(name)}/backups`, { full: o.full === true }, !!opts.json);
      ctx.out(opts.json ? JSON.stringify(r) : `${name}: ${describeBackup(r.backup)}${r.backup.kind === "full" ? ` (${r.reason})` : ""}`);
    });

  vm.command("backups <name>")
    .description("list a VM's backups (also of a deleted VM)")
    .action(async (name: string, _o: unknown, cmd: Command) => {
      const { api: a, opts } = ctx.api(cmd);
      const r = await a.json("GET", `/v1/vms/${encodeURIComponent(name)}/backups`);
      if (opts.json) { ctx.out(JSON.stringify(r)); return; }
      if (r.backups.length === 0) { ctx.out(`${name}: no backups (capsul vm backup ${name})`); return; }
      ctx.out(table(["ID", "KIND", "CHAIN", "CREATED", "SIZE", "READ", "TIME", "CONSISTENCY"], r.backups.map((b: any) => [
        b.id, b.kind, b.chain, b.created_at.replace(/\.\d+Z$/, "Z"), formatBytes(b.bytes), formatBytes(b.data_bytes), seconds(b.duration_ms), b.consistency,
      ])));
      if (!r.exists) ctx.out(`(${name} no longer exists: capsul vm restore ${name} --from ID recreates it)`);
    });

  vm.command("restore <name>")
    .description("restore a VM from one of its backups, or a copy of it under a new name")
    .requiredOption("--from <id>", "backup id (capsul vm backups NAME)")
    .option("--as <newname>", "create a new VM with this name instead of replacing NAME's disk")
    .option("--stop", "stop the VM first if it runs (it starts again after the restore)")
    .action(async (name: string, o: { from: string; as?: string; stop?: boolean }, cmd: Command) => {
      const { api: a, opts } = ctx.api(cmd);
      const p = `/v1/vms/${encodeURIComponent(name)}/restore`;
      const body = (stop: boolean): Record<string, unknown> => ({ from: o.from, ...(o.as ? { as: o.as } : {}), stop });
      let r: any;
      try {
        r = await streamed(ctx, a, p, body(o.stop === true), !!opts.json);
      } catch (e) {
        // Consent on a terminal: the API refuses to stop a running VM unless asked to.
        if ((e as { code?: string }).code !== "vm_running" || o.stop || opts.json || !process.stdin.isTTY) throw e;
        if (!(await confirm(`VM ${o.as ?? name} is running; stop it, replace its disk with backup ${o.from} and start it again?`))) {
          throw new RuntimeError("restore cancelled; nothing was changed");
        }
        r = await streamed(ctx, a, p, body(true), !!opts.json);
      }
      ctx.out(opts.json ? JSON.stringify(r) : `${r.vm.name}: restored from backup ${r.backup.id} of ${name} (${r.backup.kind}, ${r.backup.created_at}); ${r.vm.state}`);
    });
}
