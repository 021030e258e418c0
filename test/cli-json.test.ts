/**
 * One JSON style for every `capsul` command that prints (README "Commands"): with
 * --json, stdout is one line of JSON, keys are snake_case, instants are ISO-8601 UTC
 * strings under keys ending in `_at`. The command list comes from the real command
 * tree (cli/program.ts), so a new command that prints without --json, or has --json
 * and no run here, fails this test. Every command runs for real against a hub and a
 * cog that are child processes, so the rows carry real instants, routes and ports.
 */
import t from "tap";
import { defaultEndpointName } from "../config/endpoint.js";
import fs from "node:fs";
import path from "node:path";
import type { Command } from "commander";
import { buildProgram } from "../cli/program.js";
import { tmpDir } from "./helpers/cluster.js";
import { jsonStyle } from "./helpers/jsonstyle.js";
import { freePortRange, lines, runCli, spawnCli, waitFor, writeYaml, type RunResult } from "./helpers/procs.js";

const DOMAIN = "hub.test";
const READY_RE = /hub ready tls=(\d+) http=(\d+) tunnel=(\d+)/;
const CONNECTED_RE = /\[cog\/tunnel\] connected to hub/;

/** Commands that print nothing on stdout: they run until stopped and log to stderr. */
const NO_STDOUT: Record<string, string> = {
  "hub": "runs the hub; its log goes to stderr",
  "cog": "runs the cog; its log goes to stderr",
};
/**
 * cli/vm.ts is being reworked together with the provisioner's networking and auth
 * (issue 9); its commands join this test when that lands. Listed by prefix, and the
 * exact commands found under them are checked below, so the exemption cannot grow.
 */
const PENDING_PREFIXES = ["vm", "image"];
const PENDING_COMMANDS = [
  "image delete", "image import", "image list",
  "vm backup", "vm backups", "vm console", "vm create", "vm delete", "vm list", "vm reboot", "vm restore", "vm show", "vm start", "vm stop",
];

interface Found { path: string; hasJson: boolean; hasAction: boolean }

function commandTree(cmd: Command, prefix: string[] = []): Found[] {
  const out: Found[] = [];
  for (const c of cmd.commands) {
    const p = [...prefix, c.name()];
    // commander keeps the action on a private field; a command without one only prints its help.
    const hasAction = (c as unknown as { _actionHandler: unknown })._actionHandler != null;
    out.push({ path: p.join(" "), hasJson: c.options.some((o) => o.long === "--json"), hasAction });
    out.push(...commandTree(c, p));
  }
  return out;
}

t.test("the style check catches what it is for", async (t) => {
  // `hub cogs --json` and `hub invite --json` as they were printed before this convention.
  const before = jsonStyle([{ name: "a", createdAt: 1764500000000, revokedAt: null, certNotAfter: 1796000000000, online: false, lastSeen: 1764500000000, remote: null, routes: [] }]);
  t.ok(before.problems.some((p) => /\$\[0\]\.createdAt: key is not snake_case/.test(p)), before.problems.join("\n"));
  t.ok(before.problems.some((p) => /\$\[0\]\.certNotAfter: .*epoch milliseconds/.test(p)));
  t.ok(jsonStyle({ caFingerprint: "sha256:00", expiresAt: "2026-01-01T00:00:00.000Z" }).problems.length >= 2);
  t.match(jsonStyle({ expires_at: 1764500000000 }).problems, [/expires_at: 1764500000000 is not an ISO-8601 UTC instant/]);
  t.match(jsonStyle({ expires_at: "2026-01-01 00:00" }).problems, [/not an ISO-8601 UTC instant/]);
  t.match(jsonStyle({ last_seen: "2026-01-01T00:00:00.000Z" }).problems, [/last_seen: names an instant/, /last_seen: an ISO-8601 instant under a key that does not end in _at/]);
  t.match(jsonStyle({ when: 1764500000000 }).problems, [/looks like epoch milliseconds/]);
  t.same(jsonStyle({ size_bytes: 2e12, files: { disk: { bytes: 2e12 } }, tunnel_dropped_within_ms: 5000, revoked_at: null }).problems, []);
  const good = jsonStyle([{ name: "x", last_seen_at: "2026-01-01T00:00:00.000Z", routes: ["tcp:20000"], nested: { cert_expires_at: "2027-01-01T00:00:00.000Z" } }]);
  t.same(good, { problems: [], instants: 2 });
});

t.test("every command that prints has --json, and its JSON has the one style", async (t) => {
  const tree = commandTree(buildProgram());
  t.ok(tree.length > 10, `the command tree was read (${tree.length} commands)`);
  const pending = tree.filter((c) => PENDING_PREFIXES.includes(c.path.split(" ")[0]!) && c.hasAction).map((c) => c.path).sort();
  t.same(pending, PENDING_COMMANDS, "the cli/vm.ts commands left to a later change are exactly these");

  const dir = tmpDir("capsul-json-");
  t.teardown(() => fs.rmSync(dir, { recursive: true, force: true }));
  const pool = await freePortRange(4);
  const hubYaml = writeYaml(path.join(dir, "hub.yaml"), {
    hub: {
      data_dir: path.join(dir, "hub"), domain: DOMAIN,
      listen: { tls: "127.0.0.1:0", http: "127.0.0.1:0", tunnel: "127.0.0.1:0", tcp_host: "127.0.0.1", tcp_ports: [pool.spec] },
      domains: { enabled: false }, // no lookups through the system resolver, which is off loopback
    },
  });
  const cogYaml = writeYaml(path.join(dir, "cog.yaml"), {
    cog: {
      data_dir: path.join(dir, "cog"),
      // Targets are never dialled here: announcing is enough for the hub to list routes and assign a port.
      routes: [
        { name: "ssh", kind: "tcp", target: "127.0.0.1:9" },
        { name: "site", kind: "http", hostname: `www.home1.${DOMAIN}`, target: "127.0.0.1:9" },
      ],
    },
  });
  const hub = spawnCli(t, "hub", ["hub", "-c", hubYaml]);
  const ready = await hub.waitLine(READY_RE);
  const tunnel = Number(ready[3]);

  const outputs = new Map<string, RunResult>();
  const run = async (cmd: string, args: string[]): Promise<unknown> => {
    const r = await runCli([...cmd.split(" "), ...args, "--json"]);
    outputs.set(cmd, r);
    t.equal(r.code, 0, `capsul ${cmd} --json exits 0: ${r.stderr}`);
    return JSON.parse(lines(r.stdout)[0] ?? "null");
  };

  const invite = await run("hub invite", ["home1", "--hostname", "blog.example.org", "-c", hubYaml]) as { token: string; ca_fingerprint: string; expires_at: string };
  const enrolled = await run("cog enroll", ["--hub", `127.0.0.1:${tunnel}`, "--token", invite.token, "--ca-fingerprint", invite.ca_fingerprint, "-c", cogYaml]) as { cog: string };
  t.equal(enrolled.cog, "home1");
  const cog = spawnCli(t, "cog", ["cog", "-c", cogYaml]);
  await cog.waitLine(CONNECTED_RE);
  // The hub writes an online cog's accepted routes into SQLite right after the hello.
  await waitFor("the hub to list home1's tcp route", async () => {
    const r = await runCli(["hub", "cogs", "--json", "-c", hubYaml]);
    return (JSON.parse(r.stdout) as Array<{ routes: string[] }>)[0]?.routes.some((x) => x.startsWith("tcp:"));
  });

  // The running hub and cog answer a reload (nothing changed) with what they did.
  const reloaded = await run("hub reload", ["-c", hubYaml]) as { changed: string[]; reloaded_at: string };
  t.same(reloaded.changed, []);
  await run("cog reload", ["-c", cogYaml]);
  await run("config check", ["-c", hubYaml]);
  t.same(await run("cog certs", ["-c", cogYaml]), [], "no tls: terminate route, no certificate");
  const cogs = await run("hub cogs", ["-c", hubYaml]) as Array<{ name: string; online: boolean; endpoints: string[]; last_seen_at: string; cert_expires_at: string; routes: string[] }>;
  t.equal(cogs[0]?.online, true);
  t.same(cogs[0]?.endpoints, [defaultEndpointName()], "connected to the one hub, by its default endpoint name");
  t.ok(Date.parse(cogs[0]!.cert_expires_at) > Date.now(), "cert_expires_at is a real future instant");
  const ports = await run("hub ports", ["-c", hubYaml]) as Array<{ port: number; live: boolean; assigned_at: string }>;
  t.equal(ports[0]?.live, true);
  t.same(await run("cog certs", ["-c", cogYaml]), [], "no tls: terminate route, no certificate");
  const added = await run("cog domains add", ["blog.example.net", "-c", cogYaml]) as { record: string };
  t.equal(added.record, "_capsul-challenge.blog.example.net");
  t.match(await run("cog domains", ["-c", cogYaml]), [{ hostname: "blog.example.net", state: "unannounced", checked_at: null }]);
  await run("hub grants", ["-c", hubYaml]);
  await run("hub ungrant", ["home1", "blog.example.org", "-c", hubYaml]);
  await run("hub ports release", [String(ports[0]!.port), "--force", "-c", hubYaml]);
  const revoked = await run("hub revoke", ["home1", "-c", hubYaml]) as { revoked_at: string };
  t.ok(Date.parse(revoked.revoked_at) <= Date.now());
  await cog.stop();
  await hub.stop();

  // The demo runs until stopped: take its one line of JSON, then SIGTERM it.
  const demo = spawnCli(t, "demo", ["demo", "--json"]);
  const line = await demo.waitLine(/^\{/, { stream: "stdout" });
  await demo.stop();
  t.equal(demo.exit?.code, 0, "the demo stops cleanly");
  outputs.set("demo", { code: demo.exit?.code ?? null, signal: null, stdout: `${line.input}\n`, stderr: demo.text() });

  let instants = 0;
  for (const c of tree) {
    if (!c.hasAction || PENDING_PREFIXES.includes(c.path.split(" ")[0]!)) continue;
    if (c.path in NO_STDOUT) {
      t.notOk(c.hasJson, `capsul ${c.path} prints nothing on stdout (${NO_STDOUT[c.path]}), so it has no --json`);
      continue;
    }
    t.ok(c.hasJson, `capsul ${c.path} prints, so it has --json (or belongs in NO_STDOUT with why)`);
    const r = outputs.get(c.path);
    if (!r) {
      t.fail(`capsul ${c.path} has --json but this test does not run it: add it above`);
      continue;
    }
    t.equal(lines(r.stdout).length, 1, `capsul ${c.path} --json prints one line: ${r.stdout}`);
    const style = jsonStyle(JSON.parse(r.stdout));
    t.same(style.problems, [], `capsul ${c.path} --json: ${r.stdout.trim()}`);
    instants += style.instants;
  }
  // invite (expires_at), enroll and cogs (cert_expires_at, last_seen_at, created_at), ports (assigned_at), revoke (revoked_at), reloads (reloaded_at)
  t.ok(instants >= 8, `instants were checked, not skipped (${instants})`);
});
