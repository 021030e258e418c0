/**
 * Reload of a running hub and cog (SIGHUP, `capsul hub reload`, `capsul cog reload`),
 * with both as real `capsul` processes: a 256 MiB transfer held in flight through the
 * hub survives reloads that add and remove other routes (grants on the hub, routes on
 * the cog), move the HTTP and tunnel listeners, lower a limit and move the cog to the
 * new tunnel address; it is checked by SHA-256. Files that do not parse, and changes a
 * running process cannot take, keep the old configuration and say why.
 */
import t from "tap";
import { spawnSync } from "node:child_process";
import fs from "node:fs";
import http from "node:http";
import net from "node:net";
import path from "node:path";
import { bulkBackend, BulkReader } from "./helpers/bulk.js";
import { closeServer, httpBackend, listen, tmpDir } from "./helpers/cluster.js";
import {
  cogDoc, DOMAIN, enrollCog, hubDoc, httpGet, REFUSED_RE, RELOADED_RE, startCogProc, startHubProc, writeDoc, CONNECTED_RE,
} from "./helpers/opsprocs.js";
import { freePort, freePortRange, lines, probePort, runCli, waitFor } from "./helpers/procs.js";

const MiB = 1024 * 1024;
const LIMITS = { grace: "1s", client_hello_timeout: "2s", http_header_timeout: "2s" };

/** An HTTP backend answering `tag host`, whose kept-alive connections stay open for a minute (not Node's 5 s). */
async function keepAliveBackend(tag: string): Promise<{ port: number; close(): Promise<void> }> {
  const server = http.createServer((req, res) => res.end(`${tag} ${req.headers.host}\n`));
  server.keepAliveTimeout = 60_000;
  const port = await listen(server);
  return { port, close: () => closeServer(server) };
}

/** Sends one GET on `sock` and resolves with the response body (Content-Length framed). */
function getOn(sock: net.Socket, host: string): Promise<string> {
  return new Promise((resolve, reject) => {
    let buf = "";
    const onData = (c: Buffer): void => {
      buf += c.toString("latin1");
      const head = buf.indexOf("\r\n\r\n");
      if (head < 0) return;
      const len = Number(/content-length: (\d+)/i.exec(buf.slice(0, head))?.[1] ?? "-1");
      if (len >= 0 && buf.length >= head + 4 + len) {
        sock.off("data", onData);
        resolve(buf.slice(head + 4, head + 4 + len));
      }
    };
    sock.on("data", onData);
    sock.once("error", reject);
    sock.write(`GET / HTTP/1.1\r\nHost: ${host}\r\n\r\n`);
  });
}

t.test("a 256 MiB transfer in flight survives hub and cog reloads that add and remove routes, move listeners and the cog", async (t) => {
  const dir = tmpDir("capsul-reload-");
  t.teardown(() => fs.rmSync(dir, { recursive: true, force: true }));
  const pool = await freePortRange(4);
  const bulk = await bulkBackend(256 * MiB);
  const [b, c, d] = await Promise.all([httpBackend("B"), httpBackend("C"), keepAliveBackend("D")]);
  t.teardown(async () => { await bulk.close(); await b.close(); await c.close(); await d.close(); });

  const B = "b.example.test";
  const C = "c.example.test";
  const D = `d.home1.${DOMAIN}`;
  const hubYaml = path.join(dir, "hub.yaml");
  const hubWith = (hub: Record<string, unknown>) => writeDoc(hubYaml, hubDoc(dir, { pool: pool.spec, hub }));
  hubWith({ cogs: [{ name: "home1", hostnames: [B] }] });
  const hub = await startHubProc(t, hubYaml);
  const bulkRoute = { name: "bulk", kind: "tcp", port: pool.from, target: `127.0.0.1:${bulk.port}` };
  const routeB = { name: "b", kind: "http", hostname: B, target: `127.0.0.1:${b.port}` };
  const routeC = { name: "c", kind: "http", hostname: C, target: `127.0.0.1:${c.port}` };
  const routeD = { name: "d", kind: "http", hostname: D, target: `127.0.0.1:${d.port}` };
  const cogYaml = path.join(dir, "cog.yaml");
  writeDoc(cogYaml, cogDoc(dir, "home1", [bulkRoute, routeB, routeC]));
  await enrollCog(t, hub, "home1", cogYaml);
  const cog = await startCogProc(t, "home1", cogYaml);
  const httpPort = hub.ports.http;

  t.match((await httpGet(httpPort, B)).body, /^B /, "route b answers: b.example.test is granted");
  t.equal((await httpGet(httpPort, C)).status, "404", "route c is refused: c.example.test is not granted");

  const reader = new BulkReader(pool.from);
  t.teardown(() => reader.destroy());
  await reader.pauseAfter(16 * MiB);
  t.equal(bulk.connections, 1, "the transfer is in flight");

  // 1. SIGHUP: the grant moves from b.example.test to c.example.test.
  let from = hub.proc.out.stderr.length;
  hubWith({ cogs: [{ name: "home1", hostnames: [C] }] });
  hub.proc.kill("SIGHUP");
  const reloaded = await hub.proc.waitLine(RELOADED_RE, { from });
  t.match(reloaded[0], /changed=hub\.cogs/, "the hub names what changed");
  t.match((await httpGet(httpPort, C)).body, /^C /, "the newly granted route answers at once (the cog's routes were applied again)");
  t.equal((await httpGet(httpPort, B)).status, "404", "the route no longer granted is withdrawn");
  await cog.waitLine(/hub refused route route=b reason="hostname b\.example\.test is not granted to cog home1"/);

  // 2. capsul cog reload: route d added, route c removed.
  writeDoc(cogYaml, cogDoc(dir, "home1", [bulkRoute, routeB, routeD]));
  const cr = await runCli(["cog", "reload", "-c", cogYaml]);
  t.equal(cr.code, 0, `capsul cog reload: ${cr.stderr}`);
  t.match(cr.stdout, /^capsul cog \(pid \d+\) reloaded .*cog\.yaml: changed: cog\.routes\.$/m);
  await waitFor("route d answering", async () => /^D /.test((await httpGet(httpPort, D)).body));
  t.equal((await httpGet(httpPort, C)).status, "404", "the removed route no longer answers");

  // 3. capsul hub reload: the HTTP listener moves; a kept-alive connection on the old one carries on.
  const kept = net.connect({ port: httpPort, host: "127.0.0.1" });
  t.teardown(() => kept.destroy());
  t.match(await getOn(kept, D), /^D /, "a kept-alive visitor on the old HTTP port");
  const newHttp = await freePort();
  hubWith({ cogs: [{ name: "home1", hostnames: [C] }], listen: { http: `127.0.0.1:${newHttp}` } });
  const hr = await runCli(["hub", "reload", "-c", hubYaml]);
  t.equal(hr.code, 0, `capsul hub reload: ${hr.stderr}`);
  t.match(hr.stdout, /reloaded .*hub\.yaml: changed: hub\.listen\.http\.$/m);
  t.equal(await probePort(httpPort), "ECONNREFUSED", "the old HTTP port takes no new visitors");
  t.match((await httpGet(newHttp, D)).body, /^D /, "the new HTTP port answers");
  t.match(await getOn(kept, D), /^D /, "the kept-alive connection accepted by the old listener still works");

  // 4. A limit applies to new connections only: max_visitors 1 while two visitors are open.
  from = hub.proc.out.stderr.length;
  hubWith({ cogs: [{ name: "home1", hostnames: [C] }], listen: { http: `127.0.0.1:${newHttp}` }, limits: { ...LIMITS, max_visitors: 1 } });
  hub.proc.kill("SIGHUP");
  t.match((await hub.proc.waitLine(RELOADED_RE, { from }))[0], /changed=hub\.limits/);
  t.not((await httpGet(newHttp, D)).status, "200", "a new visitor over max_visitors is refused");
  t.match(await getOn(kept, D), /^D /, "the visitors already open are not");

  // 5. The tunnel listener moves (hub), then the cog follows it (cog.hub): it dials the new
  //    address at once, while the transfer stays on the old tunnel.
  const newTunnel = await freePort();
  const hubDocNow = { cogs: [{ name: "home1", hostnames: [C] }], listen: { http: `127.0.0.1:${newHttp}`, tunnel: `127.0.0.1:${newTunnel}` } };
  hubWith(hubDocNow);
  const tr = await runCli(["hub", "reload", "-c", hubYaml]);
  t.equal(tr.code, 0, `capsul hub reload: ${tr.stderr}`);
  // public_tunnel_address follows the tunnel port when it is not set.
  // The endpoint cogs are told to dial follows public_tunnel_address too (hub.endpoint.advertise defaults to it).
  t.match(tr.stdout, /changed: hub\.public_tunnel_address, hub\.limits, hub\.endpoint, hub\.listen\.tunnel\./, "limits back to the defaults, tunnel listener and endpoint moved");
  t.equal(await probePort(hub.ports.tunnel), "ECONNREFUSED", "the old tunnel port takes no new tunnels");
  const cogFrom = cog.out.stderr.length;
  writeDoc(cogYaml, cogDoc(dir, "home1", [bulkRoute, routeB, routeD], { hub: `127.0.0.1:${newTunnel}` }));
  const mr = await runCli(["cog", "reload", "-c", cogYaml]);
  t.equal(mr.code, 0, `capsul cog reload: ${mr.stderr}`);
  t.match(mr.stdout, /changed: cog\.hub\./);
  await cog.waitLine(/hub address changed: dialing the new one; open streams stay on the old tunnel .*streams=2/, { from: cogFrom }); // the transfer and the kept-alive visitor
  await cog.waitLine(CONNECTED_RE, { from: cogFrom });
  await waitFor("route d through the new tunnel", async () => /^D /.test((await httpGet(newHttp, D)).body));
  t.match(await getOn(kept, D), /^D /, "the kept-alive connection (the other stream on the old tunnel) still works");

  // The transfer: resumed, complete and intact.
  reader.resume();
  const res = await reader.done;
  t.equal(res.error, null, "no error on the transfer");
  t.equal(res.bytes, 256 * MiB, "every byte arrived");
  t.equal(res.sha256, bulk.sha256, "SHA-256 matches what the backend sent");
  t.equal(bulk.connections, 1, "one backend connection: the transfer was never restarted");
  t.ok(hub.proc.alive && cog.alive, "hub and cog still run");
  t.equal(hub.proc.matching(/reload refused/).length, 0, "no reload was refused");
});

t.test("a file that does not load, or a change a running process cannot take, keeps the running configuration and says why", async (t) => {
  const dir = tmpDir("capsul-reload-bad-");
  t.teardown(() => fs.rmSync(dir, { recursive: true, force: true }));
  const pool = await freePortRange(2);
  const site = await httpBackend("SITE");
  t.teardown(() => site.close());
  const hubYaml = path.join(dir, "hub.yaml");
  const good = hubDoc(dir, { pool: pool.spec });
  writeDoc(hubYaml, good);
  const hub = await startHubProc(t, hubYaml);
  const SITE = `www.home1.${DOMAIN}`;
  const cogYaml = writeDoc(path.join(dir, "cog.yaml"), cogDoc(dir, "home1", [{ name: "site", kind: "http", hostname: SITE, target: `127.0.0.1:${site.port}` }]));
  await enrollCog(t, hub, "home1", cogYaml);
  await startCogProc(t, "home1", cogYaml);
  t.match((await httpGet(hub.ports.http, SITE)).body, /^SITE /);

  // Files that do not load: the hub logs the very line `capsul hub -c FILE` prints when it refuses to start.
  const broken: [string, string][] = [
    ["a bad value", fs.readFileSync(hubYaml, "utf8").replace(/grace: 1s/, "grace: soon")],
    ["a YAML syntax error", "hub:\n  domain: [hub.test\n"],
    ["an unknown key", fs.readFileSync(hubYaml, "utf8").replace(/  limits:/, "  limts:")],
    ["no hub section", "cog: {}\n"],
  ];
  for (const [what, text] of broken) {
    fs.writeFileSync(hubYaml, text);
    const start = await runCli(["hub", "-c", hubYaml]);
    t.equal(start.code, 2, `${what}: capsul hub refuses to start`);
    const line = lines(start.stderr)[0]!;
    t.match(line, /^capsul: config error: /, `${what}: ${line}`);
    const from = hub.proc.out.stderr.length;
    hub.proc.kill("SIGHUP");
    const m = await hub.proc.waitLine(REFUSED_RE, { from });
    t.equal(m[1], line, `${what}: the running hub logs the same line`);
    t.match((await httpGet(hub.ports.http, SITE)).body, /^SITE /, `${what}: the hub keeps serving`);
    const cli = await runCli(["hub", "reload", "-c", hubYaml]);
    t.equal(cli.code, 2, `${what}: capsul hub reload exits 2`);
    t.equal(lines(cli.stderr)[0], line, `${what}: capsul hub reload prints the same line and signals nothing`);
  }

  // Keys a running hub cannot take: refused as a whole, naming the key.
  writeDoc(hubYaml, { hub: { ...(good.hub as object), domain: "other.test" } });
  const dom = await runCli(["hub", "reload", "-c", hubYaml]);
  t.equal(dom.code, 2, "a new domain is refused");
  t.match(dom.stderr, /^capsul: config error: the running hub \(pid \d+\) refused the reload and keeps its configuration: hub\.domain: cannot change while capsul hub runs/);
  let from = hub.proc.out.stderr.length;
  writeDoc(hubYaml, { hub: { ...(good.hub as object), data_dir: path.join(dir, "elsewhere") } });
  hub.proc.kill("SIGHUP");
  t.match((await hub.proc.waitLine(REFUSED_RE, { from }))[1], /^capsul: config error: hub\.data_dir: cannot change while capsul hub runs/);
  t.notOk(fs.existsSync(path.join(dir, "elsewhere")), "nothing was made in the new data dir");

  // Grants that overlap another cog's stored grant: the start-up consistency check refuses the reload.
  writeDoc(hubYaml, good);
  const inv = await runCli(["hub", "invite", "other", "--hostname", "shop.example.test", "-c", hubYaml]);
  t.equal(inv.code, 0, inv.stderr);
  writeDoc(hubYaml, { hub: { ...(good.hub as object), cogs: [{ name: "home1", hostnames: ["*.example.test"] }] } });
  const clash = await runCli(["hub", "reload", "-c", hubYaml]);
  t.equal(clash.code, 2, "overlapping grants are refused");
  t.match(clash.stderr, /refused the reload .*"\*\.example\.test" overlaps "shop\.example\.test" of cog other \(granted by capsul hub invite\)/);

  // A listener that cannot bind: refused (runtime error, exit 1); nothing else changed.
  const taken = net.createServer();
  const takenPort = await listen(taken);
  t.teardown(() => closeServer(taken));
  writeDoc(hubYaml, { hub: { ...(good.hub as object), listen: { ...((good.hub as { listen: object }).listen), http: `127.0.0.1:${takenPort}` }, limits: { ...LIMITS, max_visitors: 5 } } });
  const bind = await runCli(["hub", "reload", "-c", hubYaml]);
  t.equal(bind.code, 1, "a listener that cannot bind fails the reload");
  t.match(bind.stderr, new RegExp(`refused the reload .*hub\\.listen\\.http: cannot listen on 127\\.0\\.0\\.1:${takenPort}: EADDRINUSE`));
  t.match((await httpGet(hub.ports.http, SITE)).body, /^SITE /, "the old HTTP listener still serves");

  // Back to a good file: the reload goes through, and only then.
  from = hub.proc.out.stderr.length;
  writeDoc(hubYaml, good);
  const ok = await runCli(["hub", "reload", "-c", hubYaml]);
  t.equal(ok.code, 0, ok.stderr);
  t.match(ok.stdout, /nothing changed\./, "every refused reload changed nothing");
  t.ok(hub.proc.alive, "the hub never stopped");
  t.equal(hub.proc.matching(/reload refused/, "stderr", from).length, 0);
});

t.test("cog reload: provisioner and ACME keys apply, or are named as waiting for a restart; the provisioner's data dir is refused", async (t) => {
  const dir = tmpDir("capsul-rl-prov-");
  t.teardown(() => fs.rmSync(dir, { recursive: true, force: true }));
  const pool = await freePortRange(2);
  const hubYaml = writeDoc(path.join(dir, "hub.yaml"), hubDoc(dir, { pool: pool.spec }));
  const hub = await startHubProc(t, hubYaml);
  const provDir = path.join(dir, "prov");
  const prov = (extra: Record<string, unknown> = {}) => ({ listen: "127.0.0.1:0", data_dir: provDir, accel: "tcg", ...extra });
  const cogYaml = path.join(dir, "cog.yaml");
  writeDoc(cogYaml, cogDoc(dir, "home1", [], { provisioner: prov() }));
  await enrollCog(t, hub, "home1", cogYaml);
  const cog = await startCogProc(t, "home1", cogYaml);
  const url = (await cog.waitLine(/provisioner API ready url=(\S+)/))[1]!;
  const token = fs.readFileSync(path.join(provDir, "api-token"), "utf8").trim();
  const sizes = async (): Promise<string[]> => {
    const res = await fetch(`${url}/v1/sizes`, { headers: { authorization: `Bearer ${token}` } });
    t.equal(res.status, 200);
    return ((await res.json()) as { sizes: { name: string }[] }).sizes.map((x) => x.name);
  };
  t.notOk((await sizes()).includes("t1-tiny"));

  // A new size applies at once; a new API address, the ACME account's contact and the log level wait for a restart.
  const from = cog.out.stderr.length;
  writeDoc(cogYaml, cogDoc(dir, "home1", [], {
    provisioner: prov({ listen: "127.0.0.1:1", sizes: { "t1-tiny": { vcpus: 1, memory: "256MiB", disk: "1GiB" } } }),
    acme: { email: "ops@example.org", retry_min_delay: "1m" },
  }));
  fs.appendFileSync(cogYaml, "log:\n  level: debug\n");
  const r = await runCli(["cog", "reload", "-c", cogYaml]);
  t.equal(r.code, 0, r.stderr);
  t.same(lines(r.stdout).slice(1), [
    "cog.acme.email takes effect when capsul cog restarts.",
    "cog.provisioner.listen takes effect when capsul cog restarts.",
    "log.level takes effect when capsul cog restarts.",
  ]);
  t.match(lines(r.stdout)[0], /changed: cog\.provisioner, cog\.acme, log\.level\.$/);
  t.ok((await sizes()).includes("t1-tiny"), "the new size is offered by the running provisioner, on its old address");
  for (const key of ["cog.acme.email", "cog.provisioner.listen", "log.level"]) {
    t.equal(cog.matching(new RegExp(`WARN .*${key.replace(/\./g, "\\.")} changed: it takes effect when capsul cog restarts`), "stderr", from).length, 1, `the log names ${key}`);
  }
  // Reloaded again unchanged: the keys still waiting are named again.
  const again = await runCli(["cog", "reload", "-c", cogYaml, "--json"]);
  t.equal(again.code, 0, again.stderr);
  const j = JSON.parse(again.stdout) as { changed: string[]; restart_needed: string[]; pid: number };
  t.same(j.restart_needed, ["cog.acme.email", "cog.provisioner.listen", "log.level"]);
  t.equal(j.pid, cog.pid);

  writeDoc(cogYaml, cogDoc(dir, "home1", [], { provisioner: prov({ data_dir: path.join(dir, "prov2") }) }));
  const moved = await runCli(["cog", "reload", "-c", cogYaml]);
  t.equal(moved.code, 2);
  t.match(moved.stderr, /refused the reload and keeps its configuration: cog\.provisioner\.data_dir: cannot change while capsul cog runs/);
  writeDoc(cogYaml, cogDoc(dir, "home1", []));
  const off = await runCli(["cog", "reload", "-c", cogYaml]);
  t.equal(off.code, 0, off.stderr);
  t.match(off.stdout, /^cog\.provisioner takes effect when capsul cog restarts\.$/m, "turning the provisioner off waits for a restart");
  t.ok((await sizes()).length > 0, "the provisioner still serves");
});

t.test("capsul hub reload and capsul cog reload with no process running", async (t) => {
  const dir = tmpDir("capsul-reload-none-");
  t.teardown(() => fs.rmSync(dir, { recursive: true, force: true }));
  const hubYaml = writeDoc(path.join(dir, "hub.yaml"), hubDoc(dir, { pool: "20000-20001" }));
  const none = await runCli(["hub", "reload", "-c", hubYaml]);
  t.equal(none.code, 1);
  t.equal(lines(none.stderr)[0], `capsul: no running capsul hub found: ${path.join(dir, "hub", "hub.pid")} does not exist (is capsul hub running with hub.data_dir ${path.join(dir, "hub")}?)`);

  // A pidfile left behind by a process that is gone (exited and reaped).
  const dead = spawnSync("true").pid!;
  const cogYaml = writeDoc(path.join(dir, "cog.yaml"), cogDoc(dir, "x", []));
  fs.mkdirSync(path.join(dir, "cog-x"), { recursive: true });
  fs.writeFileSync(path.join(dir, "cog-x", "cog.pid"), `${dead}\n`);
  const stale = await runCli(["cog", "reload", "-c", cogYaml]);
  t.equal(stale.code, 1);
  t.match(lines(stale.stderr)[0], new RegExp(`^capsul: no running capsul cog found: process ${dead} from .*cog\\.pid is gone \\(a stale pidfile`));

  // A live process that is not a capsul cog (here: this test) is never signalled.
  fs.writeFileSync(path.join(dir, "cog-x", "cog.pid"), `${process.pid}\n`);
  const other = await runCli(["cog", "reload", "-c", cogYaml]);
  t.equal(other.code, 1);
  t.match(other.stderr, /a stale pidfile/);
});
