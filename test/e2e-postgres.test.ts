/**
 * A real hub on PostgreSQL, end to end, every part a real child process of
 * the `capsul` CLI: the hub (hub.store: postgres://…, the password in
 * hub.store_password_file), `capsul hub invite|cogs|ports|revoke`, `capsul
 * cog enroll` and `capsul cog`, against a throwaway PostgreSQL cluster.
 * Enrollment, HTTP and TCP routes, the TCP port kept across a hub restart,
 * and a revoke written by the CLI process reaching the hub by notification
 * (its SQLite-style poll is set to an hour, so nothing else could deliver it).
 * No process ever prints the password.
 */
import t from "tap";
import fs from "node:fs";
import path from "node:path";
import { httpBackend, tmpDir } from "./helpers/cluster.js";
import {
  CONNECTED_RE, cogYaml, curlHttp, DOMAIN, echoBackend, enrollCog, hubDoc, httpStatus, listCogs, startCogProc, startHubProc,
  tcpExchange, tcpPortOf, type RunningHub,
} from "./helpers/hubproc.js";
import { startPostgres } from "./helpers/pgcluster.js";
import { freePortRange, runCli, waitFor, writeYaml, type CliProc, type RunResult } from "./helpers/procs.js";

const pgc = await startPostgres(t);

t.test("hub on PostgreSQL: enroll, routes, TCP port kept across a restart, a CLI revoke drops the tunnel by notification", async (t) => {
  const dir = tmpDir("capsul-e2e-pg-");
  t.teardown(() => fs.rmSync(dir, { recursive: true, force: true }));
  const url = await pgc.createDatabase();
  const pool = await freePortRange(8);
  const store = {
    store: url,
    store_password_file: pgc.passwordFile,
    // An hour between SQLite-style polls: on PostgreSQL only the notification can be this quick.
    tunnel: { keepalive_interval: "1s", keepalive_timeout: "3s", revocation_poll_interval: "1h" },
  };
  const hubYaml = path.join(dir, "hub.yaml");
  const cliRuns: RunResult[] = [];
  const procs: CliProc[] = [];
  const cli = async (args: string[]): Promise<RunResult> => {
    const r = await runCli([...args, "-c", hubYaml, "--verbose"]);
    cliRuns.push(r);
    return r;
  };

  const first: RunningHub = await startHubProc(t, writeYaml(hubYaml, hubDoc(dir, pool.spec, undefined, store)), "hub-1");
  procs.push(first.proc);
  t.match(first.proc.text(), /hub ready .* store="?postgres:\/\/capsul@\/capsul_\d+_\d+\?host=\//, "the hub says where its state is");
  writeYaml(hubYaml, hubDoc(dir, pool.spec, first.ports, store)); // the restarted hub binds the same ports

  const web = await httpBackend("pg-http");
  const echo = await echoBackend("pg-echo");
  t.teardown(async () => { await web.close(); await echo.close(); });
  const host = `www.omega.${DOMAIN}`;
  const yaml = cogYaml(dir, "omega", [
    { name: "site", kind: "http", hostname: host, target: `127.0.0.1:${web.port}` },
    { name: "echo", kind: "tcp", target: `127.0.0.1:${echo.port}` },
  ]);
  await enrollCog(t, first, "omega", yaml);
  const cog = await startCogProc(t, "omega", yaml);
  procs.push(cog);

  const served = await curlHttp(first.ports.http, host);
  t.equal(served.body, `pg-http ${host}:${first.ports.http} /\n`, served.stderr);
  const tcpPort = await waitFor("the cog's status in PostgreSQL", async () => {
    try { return await tcpPortOf(hubYaml, "omega"); } catch { return 0; }
  });
  t.ok(tcpPort >= pool.from && tcpPort <= pool.to, `a pool port (${tcpPort})`);
  t.equal(await tcpExchange(tcpPort, "one\n"), "pg-echo\none\n");
  const ports = await cli(["hub", "ports", "--json"]);
  t.equal(ports.code, 0, ports.stderr);
  t.same((JSON.parse(ports.stdout) as Array<{ port: number; cog: string; route: string; live: boolean }>).map((r) => [r.port, r.cog, r.route, r.live]),
    [[tcpPort, "omega", "echo", true]], "capsul hub ports reads the assignment from PostgreSQL");

  // The hub restarts: everything it knows is in PostgreSQL, nothing in its data dir but the CA.
  first.proc.kill("SIGTERM");
  t.equal((await first.proc.waitExit()).code, 0);
  t.same(fs.readdirSync(path.join(dir, "hub")).filter((f) => f.startsWith("hub.db")), [], "no SQLite file was made");
  const second = await startHubProc(t, hubYaml, "hub-2");
  procs.push(second.proc);
  await cog.waitLine(CONNECTED_RE, { from: cog.out.stderr.findIndex((l) => CONNECTED_RE.test(l)) + 1 });
  t.equal((await curlHttp(second.ports.http, host)).body, `pg-http ${host}:${second.ports.http} /\n`, "served through the restarted hub");
  t.equal(await waitFor("the status after the restart", async () => {
    const row = (await listCogs(hubYaml)).find((c) => c.name === "omega");
    return row?.online ? tcpPortOf(hubYaml, "omega") : 0;
  }), tcpPort, "the same TCP port after the hub restart");
  t.equal(await tcpExchange(tcpPort, "two\n"), "pg-echo\ntwo\n");

  // The operator revokes from another process; the hub hears of it from PostgreSQL.
  const mark = second.proc.out.stderr.length;
  const rv = await cli(["hub", "revoke", "omega"]);
  t.equal(rv.code, 0, rv.stderr);
  t.match(rv.stdout, /Revoked cog "omega"\. A running hub drops its tunnel at once \(PostgreSQL notifies every hub\)\./);
  const dropped = await second.proc.waitLine(/^(\S+) WARN .*dropping cog tunnel cog=omega reason="revoked by the operator"/, { from: mark });
  const revokedAt = (await listCogs(hubYaml)).find((c) => c.name === "omega")?.revoked_at;
  t.type(revokedAt, "string");
  t.comment(`revoke committed → hub dropped the tunnel: ${Date.parse(dropped[1]!) - Date.parse(revokedAt!)} ms (hub.tunnel.revocation_poll_interval: 1h)`);
  await waitFor("the hostname to stop routing (404)", async () => (await httpStatus(second.ports.http, host)) === "404");
  await cog.waitLine(/refused the tunnel.*cog omega is revoked/);

  const everything = [...procs.flatMap((p) => [p.text("stderr"), p.text("stdout")]), ...cliRuns.flatMap((r) => [r.stdout, r.stderr])].join("\n");
  t.ok(everything.length > 1000, `${everything.length} characters of output looked at`);
  t.notOk(everything.includes(pgc.password), "no process printed the store password");
});

t.test("a hub whose PostgreSQL password is wrong stops with one line that names the store, not the password", async (t) => {
  const dir = tmpDir("capsul-e2e-pg-");
  t.teardown(() => fs.rmSync(dir, { recursive: true, force: true }));
  const url = await pgc.createDatabase();
  const pwFile = path.join(dir, "wrong-password");
  const wrong = `not-${pgc.password}`;
  fs.writeFileSync(pwFile, wrong + "\n");
  const yaml = writeYaml(path.join(dir, "hub.yaml"), hubDoc(dir, "20000-20001", undefined, { store: url, store_password_file: pwFile }));
  const r = await runCli(["hub", "-c", yaml]);
  t.equal(r.code, 1);
  t.equal(r.stderr.trim().split("\n").length, 1, r.stderr);
  t.match(r.stderr, /^capsul: state store postgres:\/\/capsul@\/capsul_\d+_\d+\?host=\S+: password authentication failed for user "capsul"/);
  t.notOk(r.stderr.includes(wrong) || r.stdout.includes(wrong), "the password it tried is not printed");
  const env = await runCli(["hub", "cogs", "-c", writeYaml(path.join(dir, "env.yaml"), hubDoc(dir, "20000-20001", undefined, { store: url }))]);
  t.equal(env.code, 1, "no password at all: refused too");
  t.match(env.stderr, /^capsul: state store postgres:\/\/\S+: the server asks for a password: put it in hub\.store_password_file or CAPSUL_STORE_PASSWORD\n$/);
});
