/**
 * gateway/oslimits.ts: the hub warns at start when the open-file limit cannot hold what
 * hub.limits.max_visitors and hub.tunnel.max_unauthenticated allow, or when
 * net.core.somaxconn caps hub.limits.listen_backlog. Checked on a real `capsul hub` process
 * started under prlimit(1), and on the parser with /proc texts of other machines.
 */
import t from "tap";
import { spawn } from "node:child_process";
import fs from "node:fs";
import os from "node:os";
import path from "node:path";
import { parseConfig } from "../config/config.js";
import { hubFdsNeeded, HUB_FD_MARGIN, openFileLimit, osLimitWarnings } from "../gateway/oslimits.js";
import { childEnv, CLI, writeYaml } from "./helpers/procs.js";

const READY_RE = /hub ready tls=\d+/;
const NOFILE_RE = /the open-file limit is below/;

function limitsText(soft: string, hard: string): string {
  return [
    "Limit                     Soft Limit           Hard Limit           Units     ",
    "Max cpu time              unlimited            unlimited            seconds   ",
    `Max open files            ${soft.padEnd(21)}${hard.padEnd(21)}files     `,
    "",
  ].join("\n");
}

t.test("osLimitWarnings reads /proc/self/limits and net.core.somaxconn", async (t) => {
  const cfg = parseConfig({ hub: { domain: "hub.example.net" } }).hub!;
  t.equal(hubFdsNeeded(cfg), 20_000 + 512 + HUB_FD_MARGIN, "max_visitors + max_unauthenticated + the margin");
  const proc = (files: string, somaxconn: string) => (p: string) => (p === "/proc/self/limits" ? limitsText(files, files) : p === "/proc/sys/net/core/somaxconn" ? `${somaxconn}\n` : null);
  t.same(osLimitWarnings(cfg, proc("524288", "4096")), [], "a systemd unit's LimitNOFILE=524288 and Linux's default somaxconn: nothing to say");
  t.same(osLimitWarnings(cfg, proc("unlimited", "65535")), []);
  const low = osLimitWarnings(cfg, proc("1024", "128"));
  t.equal(low.length, 2);
  t.match(low[0]!.msg, NOFILE_RE);
  t.same(low[0]!.fields, { openFiles: 1024, needed: hubFdsNeeded(cfg) });
  t.match(low[1]!.msg, /net\.core\.somaxconn/);
  t.same(low[1]!.fields, { somaxconn: 128, listenBacklog: 4096 });
  t.same(osLimitWarnings(cfg, () => null), [], "no /proc (not Linux): nothing checked");
  const own = openFileLimit();
  t.ok(own !== null && own > 0, `this process's soft limit is read from /proc: ${own}`);
});

/** Starts `capsul hub` under `prlimit --nofile=N:N`, returns its stderr up to "hub ready" plus the next lines, then stops it. */
async function hubUnder(nofile: number, maxVisitors: number): Promise<string> {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), "capsul-test-"));
  try {
    const yaml = writeYaml(path.join(dir, "capsul.yaml"), {
      hub: {
        data_dir: path.join(dir, "data"), domain: "capsul.test",
        listen: { tls: "127.0.0.1:0", http: "127.0.0.1:0", tunnel: "127.0.0.1:0", admin: "127.0.0.1:0" },
        limits: { max_visitors: maxVisitors, listen_backlog: 128 },
      },
    });
    const child = spawn("prlimit", [`--nofile=${nofile}:${nofile}`, "--", process.execPath, CLI, "hub", "-c", yaml], {
      stdio: ["ignore", "pipe", "pipe"], env: childEnv(),
    });
    let err = "";
    child.stdout.on("data", (d: Buffer) => { err += d.toString(); });
    child.stderr.on("data", (d: Buffer) => { err += d.toString(); });
    // The warnings follow "hub ready" in the same turn; wait for the ready line, then for the process to be stopped.
    await new Promise<void>((resolve, reject) => {
      const timer = setTimeout(() => reject(new Error(`capsul hub did not get ready: ${err}`)), 30_000);
      const check = (): void => {
        if (READY_RE.test(err)) { clearTimeout(timer); resolve(); }
      };
      child.stdout.on("data", check);
      child.stderr.on("data", check);
      child.once("exit", (code) => { clearTimeout(timer); reject(new Error(`capsul hub exited (${code}): ${err}`)); });
    });
    child.removeAllListeners("exit");
    const exited = new Promise((resolve) => child.once("close", resolve));
    child.kill("SIGTERM");
    await exited;
    return err;
  } finally {
    fs.rmSync(dir, { recursive: true, force: true });
  }
}

t.test("a real hub under a low open-file limit says so at start, and not under a sufficient one", async (t) => {
  const low = await hubUnder(2048, 20_000);
  t.match(low, NOFILE_RE, "2048 descriptors for 20000 visitors: warned");
  t.match(low, /openFiles=2048/);
  t.match(low, new RegExp(`needed=${20_000 + 512 + HUB_FD_MARGIN}`));
  const enough = await hubUnder(4096, 1_000);
  t.notMatch(enough, NOFILE_RE, "4096 descriptors for 1000 visitors: nothing to say");
  t.match(enough, READY_RE);
});
