/**
 * Logs as an operator gets them (lib/log.ts, README "Logs"): real `capsul hub` and
 * `capsul cog` processes whose stderr is a pipe, so JSON lines by default; the text
 * format on demand; CAPSUL_LOG / CAPSUL_LOG_FORMAT over capsul.yaml; tunnel events,
 * refused visitors and the access log as parsed fields; and no secret a process was
 * given (an invite token, the store password) in any of its lines, in either format.
 */
import t, { type Test } from "tap";
import fs from "node:fs";
import net from "node:net";
import path from "node:path";
import { createLogger, Masked } from "../lib/log.js";
import { httpBackend, tmpDir } from "./helpers/cluster.js";
import { cogDoc, DOMAIN, hubDoc, httpGet } from "./helpers/opsprocs.js";
import { startPostgres } from "./helpers/pgcluster.js";
import { childEnv, freePortRange, runCli, spawnCli, writeYaml, type CliProc, type RunResult } from "./helpers/procs.js";

async function waitForFile(file: string): Promise<void> {
  while (!fs.existsSync(file)) await new Promise((r) => setTimeout(r, 50));
}

const ISO_RE = /^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z$/;
type Line = Record<string, unknown>;

/** The environment of a process that logs as a service would: no CAPSUL_LOG_FORMAT (childEnv sets text). */
function envWith(vars: Record<string, string | undefined>): NodeJS.ProcessEnv {
  const env = childEnv();
  delete env.CAPSUL_LOG_FORMAT;
  delete env.CAPSUL_LOG;
  for (const [k, v] of Object.entries(vars)) if (v !== undefined) env[k] = v;
  return env;
}

/** Every stderr line of `proc` parsed as JSON: a line that is not JSON fails the test. */
function jsonLines(t: Test, proc: CliProc): Line[] {
  return proc.out.stderr.filter((l) => l !== "").map((l) => {
    try {
      return JSON.parse(l) as Line;
    } catch {
      t.fail(`${proc.name}: not a JSON line: ${l}`);
      return {};
    }
  });
}

/** Waits for the JSON line of `proc` whose msg is `msg` (and whose fields match `where`). */
async function waitJson(t: Test, proc: CliProc, msg: string, where: (l: Line) => boolean = () => true): Promise<Line> {
  const quoted = JSON.stringify(msg).slice(1, -1).replace(/[.*+?^${}()|[\]\\]/g, "\\$&");
  for (let from = 0; ;) {
    await proc.waitLine(new RegExp(`"msg":"${quoted}"`), { from });
    const all = proc.out.stderr;
    for (let i = from; i < all.length; i++) {
      if (!all[i]!.includes(`"msg":"${JSON.stringify(msg).slice(1, -1)}"`)) continue;
      const l = JSON.parse(all[i]!) as Line;
      if (l.msg === msg && where(l)) return l;
    }
    from = all.length;
    t.comment(`${proc.name}: a "${msg}" line, not yet the one wanted`);
  }
}

t.test("logger: both formats carry the same fields; secrets masked by name, in URLs and as Masked", async (t) => {
  const lines: string[] = [];
  const secretFields = { token: "tok-SECRET1", password: "pw-SECRET2", authorization: "Bearer b-SECRET3", private_key: "-----BEGIN PRIVATE KEY-----SECRET4" };
  for (const format of ["json", "text"] as const) {
    const log = createLogger({ level: "debug", format, write: (l) => lines.push(l) }).child("hub").child("store");
    log.info("100% of %s sent", { ...secretFields, store: "postgres://capsul:pw-SECRET5@db/capsul", held: new Masked("m-SECRET6"), n: 3, s: "a b", nil: null, gone: undefined });
    log.debug("debug line");
  }
  const [j, jd, x, xd] = lines;
  const o = JSON.parse(j!) as Line;
  t.match(o, { level: "info", component: "hub/store", msg: "100% of %s sent", n: 3, s: "a b", nil: null });
  t.match(o.time, ISO_RE);
  t.same([o.token, o.password, o.authorization, o.private_key, o.held], ["MASKED", "MASKED", "MASKED", "MASKED", "MASKED"]);
  t.equal(o.store, "postgres://capsul:MASKED@db/capsul", "a URL keeps all but its password");
  t.notOk("gone" in o, "an undefined field is left out");
  t.match(JSON.parse(jd!), { level: "debug", msg: "debug line" });
  t.match(x, new RegExp(`^\\S+Z INFO  \\[hub/store\\] 100% of %s sent token=MASKED password=MASKED authorization=MASKED private_key=MASKED store=postgres://capsul:MASKED@db/capsul held=MASKED n=3 s="a b" nil=null$`));
  t.match(xd, /^\S+Z DEBUG \[hub\/store\] debug line$/);
  t.notOk(lines.join("\n").includes("SECRET"), "no secret in either format");

  const few: string[] = [];
  createLogger({ level: "warn", write: (l) => few.push(l) }).info("dropped");
  t.same(few, [], "below the level: nothing");
});

t.test("a real hub and cog on pipes: JSON lines with level, time, component, msg and fields; tunnel events, refusals, access log", async (t) => {
  const dir = tmpDir("capsul-logs-");
  t.teardown(() => fs.rmSync(dir, { recursive: true, force: true }));
  const pool = await freePortRange(2);
  const web = await httpBackend("logs-web");
  t.teardown(() => web.close());
  const env = envWith({});
  // The access log is off by default; a reload turns it on below.
  const hubYaml = writeYaml(path.join(dir, "hub.yaml"), hubDoc(dir, { pool: pool.spec }));
  const hub = spawnCli(t, "hub", ["hub", "-c", hubYaml], { env });
  const ready = await waitJson(t, hub, "hub ready");
  t.match(ready, { level: "info", component: "hub", tls: Number, http: Number, tunnel: Number, ca: String });
  t.match(ready.time, ISO_RE);
  t.same(Object.keys(ready).slice(0, 3), ["level", "time", "component"], "level, time, component first");

  const host = `web.home1.${DOMAIN}`;
  const cogYaml = writeYaml(path.join(dir, "cog.yaml"), cogDoc(dir, "home1", [{ name: "web", kind: "http", hostname: host, target: `127.0.0.1:${web.port}` }]));
  const inv = await runCli(["hub", "invite", "home1", "--json", "-c", hubYaml], { env });
  t.equal(inv.code, 0, inv.stderr);
  const invite = JSON.parse(inv.stdout) as { token: string; ca_fingerprint: string };
  const en = await runCli(["cog", "enroll", "--hub", `127.0.0.1:${ready.tunnel}`, "--token", invite.token, "--ca-fingerprint", invite.ca_fingerprint, "-c", cogYaml], { env });
  t.equal(en.code, 0, en.stderr);
  await waitJson(t, hub, "cog enrolled", (l) => l.cog === "home1" && l.component === "hub/tunnel");

  const cog = spawnCli(t, "cog", ["cog", "-c", cogYaml], { env });
  const up = await waitJson(t, cog, "connected to hub");
  t.match(up, { level: "info", component: "cog/tunnel", cog: "home1", routes: 1 });
  const attached = await waitJson(t, hub, "cog connected", (l) => l.cog === "home1");
  t.match(attached, { level: "info", component: "hub/tunnel", routes: 1, refused: 0, remote: "127.0.0.1" });

  // Off by default: a visitor gets no access line.
  t.equal((await httpGet(Number(ready.http), host)).status, "200");
  writeYaml(hubYaml, hubDoc(dir, { pool: pool.spec, hub: { access_log: true } })); // listen ports 0 as before: unchanged
  hub.kill("SIGHUP");
  t.match(await waitJson(t, hub, "configuration reloaded"), { changed: /\bhub\.access_log\b/ });
  t.same(jsonLines(t, hub).filter((l) => l.component === "hub/access"), [], "no access line while hub.access_log was off");

  // On (after the reload): a visitor through the tunnel gets one access line when its connection ends.
  const got = await httpGet(Number(ready.http), host);
  t.equal(got.status, "200");
  t.match(got.body, /^logs-web /);
  const access = await waitJson(t, hub, "visitor", (l) => l.outcome === "ok");
  t.match(access, { level: "info", component: "hub/access", source: "127.0.0.1", listener: "http", host, cog: "home1", route: "web", duration_ms: Number });
  t.ok((access.in_bytes as number) > 0 && (access.out_bytes as number) > got.body.length, `bytes both ways: in ${access.in_bytes}, out ${access.out_bytes}`);

  // A visitor nobody routes: refused (a refusal line) and an access line saying so.
  const stray = await httpGet(Number(ready.http), `nobody.${DOMAIN}`);
  t.equal(stray.status, "404");
  const refusal = await waitJson(t, hub, "visitor refused: no route");
  t.match(refusal, { level: "info", component: "hub/visitor", source: "127.0.0.1", listener: "http", host: `nobody.${DOMAIN}` });
  t.match(await waitJson(t, hub, "visitor", (l) => l.outcome === "no-route"), { listener: "http", host: `nobody.${DOMAIN}` });
  t.notOk(jsonLines(t, hub).some((l) => l.msg === "visitor" && "cog" in l && l.outcome === "no-route"), "no cog on an unrouted line");

  // Plain text on the TLS port: not a ClientHello, cut, and the access line says so.
  await new Promise<void>((resolve) => {
    const s = net.connect(Number(ready.tls), "127.0.0.1", () => s.write("GET / HTTP/1.1\r\nHost: x\r\n\r\n"));
    s.on("error", () => {});
    s.on("close", () => resolve());
  });
  t.match(await waitJson(t, hub, "visitor", (l) => l.outcome === "bad-hello"), { listener: "tls", source: "127.0.0.1", in_bytes: Number });

  // Detach: the cog process dies; the hub says so, with a reason.
  cog.kill("SIGKILL");
  await cog.exited;
  const gone = await waitJson(t, hub, "cog disconnected", (l) => l.cog === "home1");
  t.match(gone, { level: "info", component: "hub/tunnel", reason: String, connected_ms: Number });

  // Every line of every process was one JSON object.
  for (const p of [hub, cog]) for (const l of jsonLines(t, p)) t.match(l, { level: /^(debug|info|warn|error)$/, time: ISO_RE, msg: String });
  hub.kill("SIGTERM");
  t.equal((await hub.waitExit()).code, 0);
});

t.test("CAPSUL_LOG and CAPSUL_LOG_FORMAT override capsul.yaml; a bad value is a one-line config error", async (t) => {
  const dir = tmpDir("capsul-logs-env-");
  t.teardown(() => fs.rmSync(dir, { recursive: true, force: true }));
  const pool = await freePortRange(2);
  // The file asks for error and json: "hub ready" (info) would not be printed, and not as text.
  const yaml = writeYaml(path.join(dir, "hub.yaml"), { ...hubDoc(dir, { pool: pool.spec }), log: { level: "error", format: "json" } });
  const hub = spawnCli(t, "hub", ["hub", "-c", yaml], { env: envWith({ CAPSUL_LOG: "info", CAPSUL_LOG_FORMAT: "text" }) });
  await hub.waitLine(/^\S+Z INFO  \[hub\] hub ready tls=\d+ http=\d+ tunnel=\d+/);
  hub.kill("SIGTERM");
  await hub.waitExit();
  t.same(hub.matching(/^\{/), [], "no JSON line");

  // The file alone: error level, so a hub that starts and stops prints nothing at all.
  const quiet = spawnCli(t, "hub-quiet", ["hub", "-c", yaml], { env: envWith({}) });
  await waitForFile(path.join(dir, "hub", "hub.pid"));
  quiet.kill("SIGTERM");
  t.equal((await quiet.waitExit()).code, 0);
  t.same(quiet.out.stderr.filter((l) => l !== ""), [], "log.level: error in the file, no CAPSUL_LOG: nothing below error");

  for (const [name, value] of [["CAPSUL_LOG", "verbose"], ["CAPSUL_LOG_FORMAT", "xml"]] as const) {
    const r: RunResult = await runCli(["hub", "-c", yaml], { env: envWith({ [name]: value }) });
    t.equal(r.code, 2, `${name}=${value}: exit 2`);
    t.match(r.stderr, new RegExp(`^capsul: config error: ${name}="${value}" is not one of [a-z, ]+\\n$`));
  }
});

t.test("no secret a process was given reaches its log, in either format (invite token, store password)", async (t) => {
  const pgc = await startPostgres(t);
  for (const format of ["json", "text"] as const) {
    const dir = tmpDir(`capsul-logs-secret-${format}-`);
    t.teardown(() => fs.rmSync(dir, { recursive: true, force: true }));
    const pool = await freePortRange(2);
    const env = envWith({ CAPSUL_LOG: "debug", CAPSUL_LOG_FORMAT: format });
    const url = await pgc.createDatabase();
    const hubYaml = writeYaml(path.join(dir, "hub.yaml"), hubDoc(dir, { pool: pool.spec, hub: { store: url, store_password_file: pgc.passwordFile, access_log: true } }));
    const hub = spawnCli(t, `hub-${format}`, ["hub", "-c", hubYaml], { env });
    const tunnelPort = Number((await hub.waitLine(format === "json" ? /"tunnel":(\d+).*"msg":"hub ready"/ : /hub ready .*tunnel=(\d+)/))[1]);
    t.match(hub.text(), /postgres:\/\/capsul@/, "the store is named (without its password)");

    const runs: RunResult[] = [];
    const cli = async (args: string[]): Promise<RunResult> => {
      const r = await runCli(args, { env });
      runs.push(r);
      return r;
    };
    const inv = await runCli(["hub", "invite", "home1", "--json", "-c", hubYaml], { env });
    t.equal(inv.code, 0, inv.stderr);
    t.notOk(inv.stderr.includes(JSON.parse(inv.stdout).token), "invite: the token is on stdout (for the operator), not in the log");
    const invite = JSON.parse(inv.stdout) as { token: string; ca_fingerprint: string };
    const cogYaml = writeYaml(path.join(dir, "cog.yaml"), cogDoc(dir, "home1", []));
    // A wrong token first (the hub refuses it and logs the refusal), then the right one.
    const wrongToken = `${invite.token.slice(0, -4)}${invite.token.endsWith("AAAA") ? "BBBB" : "AAAA"}`;
    const bad = await cli(["cog", "enroll", "--hub", `127.0.0.1:${tunnelPort}`, "--token", wrongToken, "--ca-fingerprint", invite.ca_fingerprint, "-c", cogYaml]);
    t.not(bad.code, 0, "a wrong token is refused");
    await hub.waitLine(/tunnel refused/);
    const en = await cli(["cog", "enroll", "--hub", `127.0.0.1:${tunnelPort}`, "--token", invite.token, "--ca-fingerprint", invite.ca_fingerprint, "-c", cogYaml]);
    t.equal(en.code, 0, en.stderr);
    const cog = spawnCli(t, `cog-${format}`, ["cog", "-c", cogYaml], { env });
    await cog.waitLine(/connected to hub/);
    await hub.waitLine(/cog connected/);
    cog.kill("SIGTERM");
    await cog.waitExit();
    hub.kill("SIGTERM");
    await hub.waitExit();

    const stderrOf = [hub, cog].map((p) => p.text() + p.text("stdout")).join("\n") + runs.map((r) => r.stderr + r.stdout).join("\n");
    t.ok(hub.out.stderr.length > 10 && cog.out.stderr.length > 3, `${format}: the logs hold lines (${hub.out.stderr.length} hub, ${cog.out.stderr.length} cog)`);
    if (format === "json") t.ok(hub.out.stderr.every((l) => l === "" || l.startsWith("{")), "json lines");
    else t.ok(hub.out.stderr.every((l) => l === "" || /^\S+Z (DEBUG|INFO |WARN |ERROR) /.test(l)), "text lines");
    for (const [what, secret] of [["invite token", invite.token], ["refused token", wrongToken], ["store password", pgc.password]] as const) {
      t.notOk(stderrOf.includes(secret), `${format}: the ${what} is in no log`);
    }
  }
});
