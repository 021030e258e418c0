/**
 * `capsul vm …` and `capsul image …`: a client of the provisioner's HTTP API
 * (provisioner/api.ts). Tables for people, --json for scripts. Exit codes:
 * 0 ok, 1 runtime failure, 2 usage (a request the provisioner refused as bad).
 */
import fs from "node:fs";
import os from "node:os";
import path from "node:path";
import { type Command, Option } from "commander";
import { loadConfigFile } from "../config/config.js";
import { ConfigError, RuntimeError } from "../lib/errors.js";
import { findConfig, printJson, table } from "./common.js";
import { formatBytes, parseDurationMs } from "../lib/units.js";
import { clock, readyLine, WAIT_UNTIL, waitReady, type WaitUntil } from "./vmwait.js";
import { registerBackupCommands } from "./vmbackup.js";
import { registerMoveCommands } from "./vmmove.js";
import { describeDomains, proofInstructions, registerDomainsCommand } from "./vmdomains.js";

export const DEFAULT_API_URL = "http://127.0.0.1:7480";
export const DEFAULT_PROVISIONER_DATA_DIR = "/var/lib/capsul/provisioner";
/** A create/stop/start through the API must answer within this (stop waits for the guest to power off). */
export const API_REQUEST_TIMEOUT_MS = 5 * 60_000;
/**
 * `--wait`: how long to wait for the VM to be ready (`--timeout`). The Debian 12
 * image finished cloud-init after ~210 s under TCG on a busy 2-core machine;
 * this leaves room for a slower one. The provisioner never gives up on a
 * booting VM itself (a slow boot is not an error while QEMU runs).
 */
export const WAIT_TIMEOUT_MS = 20 * 60_000;

interface GlobalOpts { api: string; dataDir: string; config?: string; json?: boolean }

/** API statuses that mean "what you asked for is wrong" → exit code 2. */
const USAGE_STATUSES = new Set([400, 413, 415]);

/** The answer, or its error as one line (exit 2 for USAGE_STATUSES, else 1); an ndjson answer carries its errors inline. */
async function checked(res: Response): Promise<Response> {
  if (res.ok || res.headers.get("content-type")?.includes("ndjson")) return res;
  const text = await res.text();
  let msg = text.trim() || res.statusText;
  try {
    const j = JSON.parse(text) as { error?: { code?: string; message?: string } };
    if (j.error?.message) msg = `${j.error.message} [${j.error.code}]`;
  } catch { /* not JSON */ }
  if (USAGE_STATUSES.has(res.status)) throw new ConfigError(msg);
  throw new RuntimeError(msg);
}

class Api {
  constructor(private readonly base: string, private readonly token: string) {}

  async call(method: string, p: string, body?: unknown, accept = "application/json"): Promise<Response> {
    const headers: Record<string, string> = { accept, authorization: `Bearer ${this.token}` };
    if (body !== undefined) headers["content-type"] = "application/json";
    let res: Response;
    try {
      res = await fetch(this.base + p, {
        method, headers, body: body === undefined ? undefined : JSON.stringify(body), signal: AbortSignal.timeout(API_REQUEST_TIMEOUT_MS),
      });
    } catch (e) {
      const why = (e as { cause?: { code?: string } }).cause?.code ?? (e as Error).message;
      throw new RuntimeError(`cannot reach the provisioner at ${this.base} (${why}); is \`capsul cog\` running with cog.provisioner?`);
    }
    return checked(res);
  }

  async raw(method: string, p: string, body: ReadableStream<Uint8Array> | null, headers: Record<string, string>): Promise<Response> {
    let res: Response;
    try {
      res = await fetch(this.base + p, {
        method, headers: { authorization: `Bearer ${this.token}`, ...headers }, body, duplex: "half",
      } as RequestInit);
    } catch (e) {
      const why = (e as { cause?: { code?: string; message?: string } }).cause?.message ?? (e as Error).message;
      throw new RuntimeError(`cannot reach the provisioner at ${this.base} (${why}); is \`capsul cog\` running with cog.provisioner?`);
    }
    return checked(res);
  }

  async json<T = any>(method: string, p: string, body?: unknown): Promise<T> {
    return (await (await this.call(method, p, body)).json()) as T;
  }
}

/**
 * The provisioner always wants its bearer token (provisioner/apiguard.ts):
 * CAPSUL_API_TOKEN, else <data dir>/api-token (the name provisioner/index.ts
 * TOKEN_FILE gives it; not imported, so that the CLI never loads QEMU code).
 */
function readToken(dataDir: string): string {
  if (process.env.CAPSUL_API_TOKEN) return process.env.CAPSUL_API_TOKEN.trim();
  const file = path.join(dataDir, "api-token");
  let why: string;
  try {
    const t = fs.readFileSync(file, "utf8").trim();
    if (t) return t;
    why = "empty";
  } catch (e) {
    why = (e as NodeJS.ErrnoException).code ?? (e as Error).message;
  }
  throw new ConfigError(`cannot read the provisioner API token ${file} (${why}): run as the cog's user, ` +
    "point --data-dir or -c capsul.yaml at the provisioner's data dir, or set CAPSUL_API_TOKEN");
}

/**
 * --api and --data-dir not given: take them from cog.provisioner of capsul.yaml
 * (-c FILE, or the default locations when one exists).
 */
function fromConfig(cmd: Command, opts: GlobalOpts): GlobalOpts {
  const group = cmd.parent!;
  const explicit = (k: string): boolean => group.getOptionValueSource(k) !== "default";
  if (explicit("api") && explicit("dataDir")) return opts;
  let file: string;
  try {
    file = findConfig(opts.config);
  } catch (e) {
    if (opts.config) throw e;
    return opts; // no capsul.yaml: the defaults stand
  }
  const p = loadConfigFile(path.resolve(file)).cog?.provisioner;
  if (!p) {
    if (opts.config) throw new ConfigError(`${file} has no cog.provisioner section`);
    return opts;
  }
  const host = p.listen.host === "0.0.0.0" ? "127.0.0.1" : p.listen.host === "::" ? "::1" : p.listen.host;
  return {
    ...opts,
    api: explicit("api") ? opts.api : `http://${host.includes(":") ? `[${host}]` : host}:${p.listen.port}`,
    dataDir: explicit("dataDir") ? opts.dataDir : p.dataDir,
  };
}

function api(cmd: Command): { api: Api; opts: GlobalOpts } {
  const opts = fromConfig(cmd, cmd.optsWithGlobals<GlobalOpts>());
  const base = opts.api.replace(/\/+$/, "");
  if (!/^https?:\/\//.test(base)) throw new ConfigError(`--api: not an http(s) URL: ${opts.api}`);
  return { api: new Api(base, readToken(opts.dataDir)), opts };
}

const out = (s: string): void => { process.stdout.write(s.endsWith("\n") ? s : s + "\n"); };

function describeVm(vm: any): string {
  const lines: Array<[string, string]> = [
    ["name", vm.name], ["state", `${vm.state}${vm.desired !== (vm.state === "stopped" ? "stopped" : "running") ? ` (should be ${vm.desired})` : ""}`],
    ["image", vm.image], ["size", `${vm.size} (${vm.vcpus} vCPU, ${formatBytes(vm.memory_bytes ?? 0)} RAM, ${formatBytes(vm.disk_bytes ?? 0)} disk)`],
    ["accel", vm.accel ? `${vm.accel}${vm.accel_reason ? ` (${vm.accel_reason})` : ""}` : "-"],
    ["url", vm.url],
    ["https", vm.https === "terminate" ? "terminate (the cog holds the certificate; plain HTTP to the VM's port 80)" : "passthrough (the VM holds its certificate)"],
    ["ssh", vm.ssh_command ?? "(waiting for the hub to assign a port)"],
    ...describeDomains(vm.domains),
  ];
  if (vm.boot) lines.push(["boot", describeBoot(vm.boot)]);
  if (vm.local) lines.push(["ssh (on this cog)", vm.local.ssh_command], ["http (on this cog)", `http://${vm.local.http}/`], ["https (on this cog)", `https://${vm.local.https}/`]);
  if (vm.message) lines.push(["message", vm.message]);
  lines.push(["uuid", vm.uuid], ["created", vm.created_at]);
  const w = Math.max(...lines.map(([k]) => k.length));
  // A value of several lines (a domain's TXT record) continues under the value column.
  return lines.map(([k, v]) => `${(k ? k + ":" : "").padEnd(w + 1)} ${v.replace(/\n/g, `\n${" ".repeat(w + 2)}`)}`).join("\n");
}

function describeBoot(b: { started_at: string | null; ssh_at: string | null; cloud_init: string | null; cloud_init_done_at: string | null }): string {
  if (!b.started_at) return b.cloud_init ? `cloud-init ${b.cloud_init}` : "-";
  const since = (at: string): string => clock(Date.parse(at) - Date.parse(b.started_at!));
  const parts = [`started ${b.started_at}`];
  parts.push(b.ssh_at ? `ssh after ${since(b.ssh_at)}` : "no ssh yet");
  if (b.cloud_init === "done") parts.push(`cloud-init done after ${since(b.cloud_init_done_at!)}`);
  else if (b.cloud_init) parts.push(`cloud-init ${b.cloud_init}`);
  return parts.join(", ");
}

function readKeys(specs: string[]): string[] {
  const keys: string[] = [];
  for (const s of specs) {
    if (/^(ssh-|ecdsa-|sk-)/.test(s)) { keys.push(s.trim()); continue; }
    let text: string;
    try { text = fs.readFileSync(s, "utf8"); } catch { throw new ConfigError(`--ssh-key ${s}: not a key and not a readable file`); }
    for (const l of text.split("\n")) if (l.trim() && !l.startsWith("#")) keys.push(l.trim());
  }
  return keys;
}

function defaultKeyFiles(): string[] {
  const dir = path.join(os.homedir(), ".ssh");
  return ["id_ed25519.pub", "id_ecdsa.pub", "id_rsa.pub"].map((f) => path.join(dir, f)).filter((f) => fs.existsSync(f)).slice(0, 1);
}

const getVm = (a: Api) => async (name: string): Promise<any> => (await a.json("GET", `/v1/vms/${encodeURIComponent(name)}`)).vm;

function progressBar(bytes: number, total: number | null): string {
  if (!total) return `${formatBytes(bytes)}`;
  const width = 30;
  const done = Math.min(width, Math.round((bytes / total) * width));
  return `[${"#".repeat(done)}${" ".repeat(width - done)}] ${Math.floor((bytes / total) * 100)}% ${formatBytes(bytes)} / ${formatBytes(total)}`;
}

const resolveSource = (s: string): string => (/^https?:\/\//.test(s) ? s : path.resolve(s));

export function registerVmCommands(program: Command): void {
  const common = (c: Command): Command => c
    .addOption(new Option("--api <url>", "provisioner API").env("CAPSUL_API").default(DEFAULT_API_URL))
    .addOption(new Option("--data-dir <dir>", "provisioner data dir (for its api-token)").env("CAPSUL_PROVISIONER_DATA_DIR").default(DEFAULT_PROVISIONER_DATA_DIR))
    .option("-c, --config <file>", "capsul.yaml to take --api and --data-dir from (cog.provisioner)")
    .option("--json", "print JSON instead of text");

  const vm = common(program.command("vm").description("create and manage VMs (capsuls) on this cog"));
  const waitOptions = (c: Command): Command => c
    .addOption(new Option("--wait [until]", "wait until the VM is ready: ssh answers and cloud-init has finished (ready), or ssh answers (ssh)")
      .choices(WAIT_UNTIL).preset("ready"))
    .option("--timeout <duration>", `how long --wait waits (default ${WAIT_TIMEOUT_MS / 60_000}m)`);
  const waitOpts = (o: { wait?: WaitUntil | true; timeout?: string }, json: boolean): { until: WaitUntil; timeoutMs: number; json: boolean } => ({
    until: o.wait === true || o.wait === undefined ? "ready" : o.wait,
    timeoutMs: o.timeout === undefined ? WAIT_TIMEOUT_MS : parseDurationMs(o.timeout, "--timeout"),
    json,
  });

  type WaitFlags = { wait?: WaitUntil | true; timeout?: string };
  waitOptions(vm.command("create <name>")
    .description("create a VM and boot it")
    .requiredOption("--image <image>", "image name (capsul image list)")
    .option("--size <size>", "size (GET /v1/sizes)", "f1-s")
    .option("--ssh-key <key-or-file>", "OpenSSH public key or a file of them (repeatable; default ~/.ssh/id_*.pub)", (v: string, acc: string[]) => [...acc, v], [] as string[])
    .option("--https <mode>", "passthrough: the VM holds its own certificate (TLS reaches its port 443); terminate: the cog gets one by ACME and sends plain HTTP to the VM's port 80", "passthrough")
    .option("--domain <hostname>", "a custom domain of the VM, published like its default hostname (repeatable; outside the cog's grants it needs the DNS TXT record printed)",
      (v: string, acc: string[]) => [...acc, v], [] as string[]))
    .action(async (name: string, o: { image: string; size: string; sshKey: string[]; https: string; domain: string[] } & WaitFlags, cmd: Command) => {
      if (o.https !== "passthrough" && o.https !== "terminate") throw new ConfigError(`--https: expected terminate or passthrough, got ${JSON.stringify(o.https)}`);
      const { api: a, opts } = api(cmd);
      const wait = o.wait ? waitOpts(o, Boolean(opts.json)) : null;
      const files = o.sshKey.length ? o.sshKey : defaultKeyFiles();
      if (files.length === 0) throw new ConfigError("no SSH key: pass --ssh-key FILE (none in ~/.ssh)");
      const body: Record<string, unknown> = { name, image: o.image, size: o.size, ssh_keys: readKeys(files), https: o.https };
      if (o.domain.length) body.domains = o.domain;
      const { vm: v } = await a.json("POST", "/v1/vms", body);
      const how = proofInstructions(v.domains ?? []);
      if (!wait) { if (opts.json) printJson(v); else out(`${name}: ${v.state} (capsul vm show ${name})${how ? `\n\n${how}` : ""}`); return; }
      const r = await waitReady(getVm(a), name, wait);
      if (opts.json) printJson(r.vm); else out(`${readyLine(name, r.vm, r.elapsedMs)}\n${describeVm(r.vm)}${how ? `\n\n${how}` : ""}`);
    });

  vm.command("list").description("list VMs").action(async (_o: unknown, cmd: Command) => {
    const { api: a, opts } = api(cmd);
    const { vms } = await a.json("GET", "/v1/vms");
    if (opts.json) { printJson(vms); return; }
    if (vms.length === 0) { out("no VMs (capsul vm create NAME --image IMAGE)"); return; }
    out(table(["NAME", "STATE", "SIZE", "IMAGE", "SSH", "URL"],
      vms.map((v: any) => [v.name, v.state, v.size, v.image, v.ssh_command ?? v.local?.ssh_command ?? "-", v.url])));
  });

  vm.command("show <name>").description("show a VM and how to reach it").action(async (name: string, _o: unknown, cmd: Command) => {
    const { api: a, opts } = api(cmd);
    const { vm: v } = await a.json("GET", `/v1/vms/${encodeURIComponent(name)}`);
    if (opts.json) printJson(v); else out(describeVm(v));
  });

  waitOptions(vm.command("start <name>").description("boot a stopped VM"))
    .action(async (name: string, o: WaitFlags, cmd: Command) => {
      const { api: a, opts } = api(cmd);
      const wait = o.wait ? waitOpts(o, Boolean(opts.json)) : null;
      let { vm: v } = await a.json("POST", `/v1/vms/${encodeURIComponent(name)}/start`);
      let line = `${name}: ${v.state}`;
      if (wait) {
        const r = await waitReady(getVm(a), name, wait);
        v = r.vm;
        line = readyLine(name, v, r.elapsedMs);
      }
      if (opts.json) printJson(v); else out(line);
    });

  vm.command("stop <name>")
    .description("power a VM off: the ACPI power button, QEMU quit after stop_timeout")
    .option("--force", "quit QEMU at once (pulls the plug: the guest may lose writes)")
    .action(async (name: string, o: { force?: boolean }, cmd: Command) => {
      const { api: a, opts } = api(cmd);
      const r = await a.json("POST", `/v1/vms/${encodeURIComponent(name)}/stop`, o.force ? { force: true } : undefined);
      if (opts.json) { printJson(r); return; }
      const how = !r.stop ? "was not running" : r.stop.graceful ? `the guest powered off in ${clock(r.stop.took_ms)}`
        : o.force ? "QEMU quit (--force)" : (r.vm.message ?? "QEMU quit");
      out(`${name}: ${r.vm.state} (${how})`);
    });

  waitOptions(vm.command("reboot <name>")
    .description("reboot a VM: ctrl-alt-delete, a hard reset after reboot_timeout")
    .option("--force", "hard reset at once (the guest may lose writes)"))
    .action(async (name: string, o: { force?: boolean } & WaitFlags, cmd: Command) => {
      const { api: a, opts } = api(cmd);
      const wait = o.wait ? waitOpts(o, Boolean(opts.json)) : null;
      const r = await a.json("POST", `/v1/vms/${encodeURIComponent(name)}/reboot`, o.force ? { force: true } : undefined);
      const how = r.reboot.graceful ? `the guest rebooted in ${clock(r.reboot.took_ms)}` : o.force ? "reset (--force)" : (r.vm.message ?? "reset");
      let line = `${name}: ${r.vm.state} (${how})`;
      if (wait) {
        const w = await waitReady(getVm(a), name, wait);
        r.vm = w.vm;
        line += `\n${readyLine(name, w.vm, w.elapsedMs)}`;
      }
      if (opts.json) printJson(r); else out(line);
    });

  vm.command("delete <name>").description("delete a VM and its disk").action(async (name: string, _o: unknown, cmd: Command) => {
    const { api: a, opts } = api(cmd);
    const r = await a.json("DELETE", `/v1/vms/${encodeURIComponent(name)}`);
    if (opts.json) printJson(r); else out(`${name}: deleted`);
  });

  vm.command("console <name>").description("print the tail of a VM's serial console").action(async (name: string, _o: unknown, cmd: Command) => {
    const { api: a, opts } = api(cmd);
    const text = await (await a.call("GET", `/v1/vms/${encodeURIComponent(name)}/console`, undefined, "text/plain")).text();
    if (opts.json) printJson({ vm: name, console: text }); else process.stdout.write(text);
  });

  registerBackupCommands(vm, { api, out, usageStatuses: USAGE_STATUSES });
  registerMoveCommands(vm, { api, out, usageStatuses: USAGE_STATUSES });
  registerDomainsCommand(vm, { api, out, usageStatuses: USAGE_STATUSES });

  const image = common(program.command("image").description("manage the VM image catalogue of this cog"));

  image.command("import [source]")
    .description("import a qcow2 or raw disk (path on this cog or http(s) URL), or --kernel/--initrd")
    .requiredOption("--name <name>", "image name")
    .option("--sha256 <hex>", "expected sha256 of the source (or of --kernel)")
    .option("--kernel <file>", "kernel (instead of a disk image)")
    .option("--initrd <file>", "initrd (with --kernel)")
    .option("--initrd-sha256 <hex>", "expected sha256 of --initrd")
    .option("--cmdline <cmdline>", "kernel command line (with --kernel)")
    .option("--ssh-user <user>", "user to ssh in as (default root)")
    .action(async (source: string | undefined, o: Record<string, string | undefined>, cmd: Command) => {
      const { api: a, opts } = api(cmd);
      if (!source && !(o.kernel && o.initrd)) throw new ConfigError("give a SOURCE (disk image) or --kernel and --initrd");
      const body: Record<string, string> = { name: o.name! };
      if (source) body.source = resolveSource(source);
      if (o.kernel) body.kernel = resolveSource(o.kernel);
      if (o.initrd) body.initrd = resolveSource(o.initrd);
      for (const [k, v] of [["sha256", o.sha256], ["initrd_sha256", o.initrdSha256], ["cmdline", o.cmdline], ["ssh_user", o.sshUser]]) if (v) body[k!] = v;
      const res = await a.call("POST", "/v1/images", body, "application/x-ndjson");
      const tty = process.stderr.isTTY && !opts.json;
      let result: any;
      let buf = "";
      for await (const chunk of res.body as unknown as AsyncIterable<Uint8Array>) {
        buf += Buffer.from(chunk).toString("utf8");
        let nl: number;
        while ((nl = buf.indexOf("\n")) >= 0) {
          const msg = JSON.parse(buf.slice(0, nl)) as any;
          buf = buf.slice(nl + 1);
          if (msg.progress && tty) process.stderr.write(`\r${path.basename(msg.progress.file)} ${progressBar(msg.progress.bytes, msg.progress.total_bytes)}`);
          if (msg.image || msg.error) result = msg;
        }
      }
      if (tty) process.stderr.write("\n");
      if (!result) throw new RuntimeError("import: the provisioner closed the connection without an answer");
      if (result.error) {
        const m = `${result.error.message} [${result.error.code}]`;
        throw USAGE_STATUSES.has(result.error.status) ? new ConfigError(m) : new RuntimeError(m);
      }
      if (opts.json) printJson(result.image); else out(`${result.image.name}: imported (${result.image.format})`);
    });

  image.command("list").description("list images").action(async (_o: unknown, cmd: Command) => {
    const { api: a, opts } = api(cmd);
    const { images } = await a.json("GET", "/v1/images");
    if (opts.json) { printJson(images); return; }
    if (images.length === 0) { out("no images (capsul image import FILE --name NAME)"); return; }
    out(table(["NAME", "FORMAT", "SIZE", "SHA256", "USED BY"], images.map((i: any) => {
      const files = Object.values(i.files) as Array<{ sha256: string; bytes: number }>;
      return [i.name, i.format, formatBytes(files.reduce((s, f) => s + f.bytes, 0)), files[0]!.sha256.slice(0, 16), String(i.used_by)];
    })));
  });

  image.command("delete <name>").description("delete an unused image").action(async (name: string, _o: unknown, cmd: Command) => {
    const { api: a, opts } = api(cmd);
    const r = await a.json("DELETE", `/v1/images/${encodeURIComponent(name)}`);
    if (opts.json) printJson(r); else out(`${name}: deleted`);
  });
}
