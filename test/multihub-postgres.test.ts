/**
 * Several hubs on one PostgreSQL (issue 12), every part a real child process
 * of the `capsul` CLI: hub A, hub B (and later C) share the store and the CA
 * (B and C get a copy of A's pki/ directory, as the README says), each on its
 * own loopback address (127.0.0.1, .2, .3) so that they can all bind the same
 * TCP port numbers, as hubs on different machines would. Two cogs enrolled
 * once, each dialing A as its bootstrap address.
 *
 * - every cog holds a tunnel to both hubs (`capsul hub cogs --json` endpoints);
 * - the same hostname and the same TCP port answer on both hubs;
 * - kill -9 of A while a transfer runs through each hub ends only A's: B's
 *   completes with the right SHA-256; B reaps A's endpoint (and its tunnel rows);
 * - A restarted while cog alpha is stopped (SIGSTOP): a visitor for alpha's
 *   route on A is held (the known route from the store) and served once alpha
 *   is resumed and redials; both cogs reconnect to A;
 * - a revoke from A's side drops the cog's tunnel on B (notified; B's poll is
 *   an hour) — the delay is measured and printed;
 * - hub C started while the cogs run is dialed by them without a restart.
 */
import t, { type Test } from "tap";
import fs from "node:fs";
import path from "node:path";
import { bulkBackend, BulkReader } from "./helpers/bulk.js";
import { httpBackend, tmpDir } from "./helpers/cluster.js";
import { CONNECTED_RE, cogYaml, DOMAIN, listCogs, READY_RE, type CogRow } from "./helpers/hubproc.js";
import { startPostgres } from "./helpers/pgcluster.js";
import { curl, freePortRange, runCli, spawnCli, waitFor, writeYaml, type CliProc } from "./helpers/procs.js";

const pgc = await startPostgres(t);

/** Bytes each bulk download carries: big enough that a paused reader leaves most of it in flight. */
const BULK_BYTES = 48 * 1024 * 1024;
/** What a visitor reads before it pauses, so that the transfer is mid-way when hub A is killed. */
const READ_BEFORE_PAUSE_BYTES = 1024 * 1024;

interface Hub { name: string; addr: string; yaml: string; proc: CliProc; ports: { tls: number; http: number; tunnel: number } }

function hubYaml(dir: string, name: string, addr: string, pool: string, url: string, ports = { tls: 0, http: 0, tunnel: 0 }): string {
  return writeYaml(path.join(dir, `${name}.yaml`), {
    hub: {
      data_dir: path.join(dir, name),
      domain: DOMAIN,
      store: url,
      store_password_file: pgc.passwordFile,
      listen: {
        tls: `${addr}:${ports.tls}`, http: `${addr}:${ports.http}`, tunnel: `${addr}:${ports.tunnel}`,
        tcp_host: addr, tcp_ports: [pool], admin: `${addr}:0`,
      },
      limits: { grace: "10s", client_hello_timeout: "1s", http_header_timeout: "1s" },
      // An hour between SQLite-style polls: only PostgreSQL's notification can drop a revoked cog quickly.
      tunnel: { keepalive_interval: "1s", keepalive_timeout: "3s", revocation_poll_interval: "1h" },
      endpoint: { name, advertise: `${addr}:0`, heartbeat_interval: "500ms", timeout: "2s" },
    },
  });
}

async function startHub(t: Test, dir: string, name: string, addr: string, pool: string, url: string, ports?: Hub["ports"]): Promise<Hub> {
  const yaml = hubYaml(dir, name, addr, pool, url, ports);
  const proc = spawnCli(t, name, ["hub", "-c", yaml]);
  const m = await proc.waitLine(READY_RE);
  const bound = { tls: Number(m[1]), http: Number(m[2]), tunnel: Number(m[3]) };
  // A restart binds the same ports, and advertises the same address.
  hubYaml(dir, name, addr, pool, url, bound);
  return { name, addr, yaml, proc, ports: bound };
}

async function curlVia(hub: Hub, host: string): Promise<{ code: number | null; body: string; stderr: string }> {
  const r = await curl(["--resolve", `${host}:${hub.ports.http}:${hub.addr}`, `http://${host}:${hub.ports.http}/`]);
  return { code: r.code, body: r.stdout, stderr: r.stderr };
}


const endpointsOf = async (yaml: string, cog: string): Promise<string[]> => ((await listCogs(yaml)).find((c) => c.name === cog)?.endpoints ?? []);

t.test("two hubs on one PostgreSQL: cogs on both, a hub killed, restarted, a revoke across hubs, a third hub", async (t) => {
  const dir = tmpDir("capsul-multihub-");
  t.teardown(() => fs.rmSync(dir, { recursive: true, force: true }));
  const url = await pgc.createDatabase();
  const pool = await freePortRange(8);

  const a = await startHub(t, dir, "hub-a", "127.0.0.1", pool.spec, url);
  // The second hub shares the CA: the operator copies pki/ (it issues its own hub certificate from it).
  fs.cpSync(path.join(dir, "hub-a", "pki"), path.join(dir, "hub-b", "pki"), { recursive: true });
  const b = await startHub(t, dir, "hub-b", "127.0.0.2", pool.spec, url);
  t.equal(fs.readFileSync(path.join(dir, "hub-b", "pki", "ca.crt"), "utf8"), fs.readFileSync(path.join(dir, "hub-a", "pki", "ca.crt"), "utf8"), "one CA");

  const web = await httpBackend("mh-http");
  const bulk = await bulkBackend(BULK_BYTES, 12);
  t.teardown(async () => { await web.close(); await bulk.close(); });
  const cogs: Record<string, { yaml: string; proc: CliProc; host: string }> = {};
  for (const name of ["alpha", "beta"]) {
    const host = `www.${name}.${DOMAIN}`;
    const yaml = cogYaml(dir, name, [
      { name: "site", kind: "http", hostname: host, target: `127.0.0.1:${web.port}` },
      { name: "bulk", kind: "tcp", target: `127.0.0.1:${bulk.port}` },
    ]);
    const inv = await runCli(["hub", "invite", name, "--json", "-c", a.yaml]);
    t.equal(inv.code, 0, inv.stderr);
    const invite = JSON.parse(inv.stdout) as { token: string; ca_fingerprint: string };
    const en = await runCli(["cog", "enroll", "--hub", `127.0.0.1:${a.ports.tunnel}`, "--token", invite.token, "--ca-fingerprint", invite.ca_fingerprint, "-c", yaml]);
    t.equal(en.code, 0, en.stderr);
    const proc = spawnCli(t, `cog-${name}`, ["cog", "-c", yaml]);
    await proc.waitLine(CONNECTED_RE);
    cogs[name] = { yaml, proc, host };
  }

  // Every cog dials B from the list A's welcome gave it.
  for (const name of ["alpha", "beta"]) {
    t.same(await waitFor(`${name} on both hubs`, async () => {
      const eps = await endpointsOf(a.yaml, name);
      return eps.length === 2 ? eps : null;
    }), ["hub-a", "hub-b"], `${name} has a tunnel to each hub`);
    await cogs[name]!.proc.waitLine(/connected to hub hub=127\.0\.0\.2:\d+ endpoint=hub-b/);
  }
  const rows: CogRow[] = await listCogs(b.yaml);
  const bulkPort = (cog: string): number => Number(rows.find((c) => c.name === cog)!.routes.find((r) => r.startsWith("tcp:"))!.slice(4));
  const alphaPort = bulkPort("alpha");
  t.ok(alphaPort >= pool.from && alphaPort <= pool.to, `alpha's bulk route holds pool port ${alphaPort}`);

  for (const hub of [a, b]) {
    const got = await waitFor(`alpha's hostname on ${hub.name}`, async () => {
      const r = await curlVia(hub, cogs.alpha!.host);
      return r.body.startsWith("mh-http") ? r : null;
    });
    t.equal(got.body, `mh-http ${cogs.alpha!.host}:${hub.ports.http} /\n`, `the hostname answers on ${hub.name}`);
  }
  // The same TCP port on both hubs: each hub's listener on its own address, both to alpha.
  const onA = new BulkReader(alphaPort, a.addr);
  const onB = new BulkReader(alphaPort, b.addr);
  await Promise.all([onA.pauseAfter(READ_BEFORE_PAUSE_BYTES), onB.pauseAfter(READ_BEFORE_PAUSE_BYTES)]);
  t.pass(`port ${alphaPort} answers on ${a.addr} and ${b.addr}; both transfers are under way`);

  // kill -9 of A mid-transfer: only A's visitor notices.
  a.proc.kill("SIGKILL");
  await a.proc.waitExit();
  onA.resume();
  onB.resume();
  const [resA, resB] = await Promise.all([onA.done, onB.done]);
  t.ok(resA.bytes < BULK_BYTES, `A's visitor ended early (${resA.bytes} of ${BULK_BYTES} bytes)`);
  t.equal(resB.bytes, BULK_BYTES, "B's visitor got every byte");
  t.equal(resB.sha256, bulk.sha256, "B's transfer is intact (SHA-256)");
  t.equal((await curlVia(b, cogs.beta!.host)).body, `mh-http ${cogs.beta!.host}:${b.ports.http} /\n`, "B keeps serving");
  for (const name of ["alpha", "beta"]) {
    t.same(await waitFor(`A's tunnel rows reaped for ${name}`, async () => {
      const eps = await endpointsOf(b.yaml, name);
      return eps.length === 1 ? eps : null;
    }), ["hub-b"], `${name}: B reaped dead A's tunnel row`);
  }

  // A comes back while alpha is frozen: a visitor of alpha on A waits for it instead of a 404.
  cogs.alpha!.proc.child.kill("SIGSTOP");
  let stopped = true;
  t.teardown(() => { if (stopped) cogs.alpha!.proc.child.kill("SIGCONT"); });
  const a2 = await startHub(t, dir, "hub-a", "127.0.0.1", pool.spec, url, a.ports);
  t.match(a2.proc.text(), /known routes held for their cogs cogs=2 routes=4/, "A restored both cogs' routes from the store");
  const held = curlVia(a2, cogs.alpha!.host);
  await a2.proc.waitLine(/endpoint registered/);
  cogs.alpha!.proc.child.kill("SIGCONT");
  stopped = false;
  const heldRes = await held;
  t.equal(heldRes.body, `mh-http ${cogs.alpha!.host}:${a2.ports.http} /\n`, `the visitor was held until alpha was back, then served (${heldRes.stderr.trim()})`);
  for (const name of ["alpha", "beta"]) {
    t.same(await waitFor(`${name} back on A`, async () => {
      const eps = await endpointsOf(a2.yaml, name);
      return eps.length === 2 ? eps : null;
    }), ["hub-a", "hub-b"], `${name} reconnected to the restarted A`);
  }

  // A revoke from A's side: B drops beta's tunnel on PostgreSQL's notification.
  const markB = b.proc.out.stderr.length;
  const rv = await runCli(["hub", "revoke", "beta", "-c", a2.yaml]);
  t.equal(rv.code, 0, rv.stderr);
  const droppedB = await b.proc.waitLine(/^(\S+) WARN .*dropping cog tunnel cog=beta reason="revoked by the operator"/, { from: markB });
  const revokedAt = (await listCogs(a2.yaml)).find((c) => c.name === "beta")?.revoked_at;
  t.type(revokedAt, "string");
  t.comment(`revoke committed → hub B dropped beta's tunnel: ${Date.parse(droppedB[1]!) - Date.parse(revokedAt!)} ms (B's revocation_poll_interval: 1h)`);
  await a2.proc.waitLine(/dropping cog tunnel cog=beta/);

  // A third hub while the cogs run: alpha dials it from the pushed list, no restart.
  const markAlpha = cogs.alpha!.proc.out.stderr.length;
  fs.cpSync(path.join(dir, "hub-a", "pki"), path.join(dir, "hub-c", "pki"), { recursive: true });
  const c = await startHub(t, dir, "hub-c", "127.0.0.3", pool.spec, url);
  await cogs.alpha!.proc.waitLine(/new hub endpoint: dialing it endpoint=hub-c/, { from: markAlpha });
  t.same(await waitFor("alpha on three hubs", async () => {
    const eps = await endpointsOf(c.yaml, "alpha");
    return eps.length === 3 ? eps : null;
  }), ["hub-a", "hub-b", "hub-c"], "alpha dialed the new endpoint");
  t.equal((await waitFor("alpha's hostname on C", async () => {
    const r = await curlVia(c, cogs.alpha!.host);
    return r.body.startsWith("mh-http") ? r : null;
  })).body, `mh-http ${cogs.alpha!.host}:${c.ports.http} /\n`, "served through C's own tunnel");
  const text = await runCli(["hub", "cogs", "-c", c.yaml]);
  t.match(text.stdout, /alpha\s+online\s+now\s+hub-a,hub-b,hub-c\s/, "capsul hub cogs shows the endpoints per cog");
  t.equal(cogs.alpha!.proc.matching(/connected to hub/).length >= 4, true, "alpha's log shows its tunnels");
});
