/**
 * Failure paths end to end, with the hub and the cogs as real child processes
 * of the `capsul` CLI configured by capsul.yaml files: a cog killed in the
 * middle of a transfer, a hub restart, a revocation, and hostile visitors.
 * Visitors are real sockets and real curl; backends live in this process.
 */
import t, { type Test } from "tap";
import fs from "node:fs";
import net from "node:net";
import path from "node:path";
import { closeServer, httpBackend, listen, tlsBackend, tmpDir } from "./helpers/cluster.js";
import {
  CONNECTED_RE, cogYaml, curlHttp, DOMAIN, echoBackend, enrollCog, hubDoc, httpStatus, listCogs, startCogProc, startHubProc,
  tcpExchange, tcpPortOf, within,
} from "./helpers/hubproc.js";
import { curl, freePortRange, pidAlive, runCli, waitFor, writeYaml } from "./helpers/procs.js";

t.test("a cog killed mid-transfer ends the visitor's connection; other cogs keep serving; it comes back", async (t) => {
  const dir = tmpDir("capsul-fail-a-");
  t.teardown(() => fs.rmSync(dir, { recursive: true, force: true }));
  const pool = await freePortRange(8);
  const hub = await startHubProc(t, writeYaml(path.join(dir, "hub.yaml"), hubDoc(dir, pool.spec)));

  const TOTAL = 200 * 1024 * 1024;
  let backendConns = 0;
  const bulk = net.createServer((sock) => {
    backendConns++;
    sock.on("error", () => {});
    const chunk = Buffer.alloc(64 * 1024, 0x61);
    let sent = 0;
    const pump = (): void => {
      while (sent < TOTAL) {
        sent += chunk.length;
        if (!sock.write(chunk)) { sock.once("drain", pump); return; }
      }
      sock.end();
    };
    pump();
  });
  const bulkPort = await listen(bulk);
  const alphaHttp = await httpBackend("alpha-http");
  const betaHttp = await httpBackend("beta-http");
  t.teardown(async () => { await closeServer(bulk); await alphaHttp.close(); await betaHttp.close(); });

  const alphaHost = `www.alpha.${DOMAIN}`;
  const betaHost = `www.beta.${DOMAIN}`;
  const alphaYaml = cogYaml(dir, "alpha", [
    { name: "site", kind: "http", hostname: alphaHost, target: `127.0.0.1:${alphaHttp.port}` },
    { name: "bulk", kind: "tcp", target: `127.0.0.1:${bulkPort}` },
  ]);
  const betaYaml = cogYaml(dir, "beta", [
    { name: "site", kind: "http", hostname: betaHost, target: `127.0.0.1:${betaHttp.port}` },
  ]);
  await enrollCog(t, hub, "alpha", alphaYaml);
  await enrollCog(t, hub, "beta", betaYaml);
  const alpha = await startCogProc(t, "alpha", alphaYaml);
  await startCogProc(t, "beta", betaYaml);

  const bulkHubPort = await tcpPortOf(hub.yaml, "alpha");
  t.ok(bulkHubPort >= pool.from && bulkHubPort <= pool.to, `bulk route got a pool port (${bulkHubPort})`);

  // The visitor reads 1 MiB, then stops reading: every hop's buffers fill and the transfer is in flight.
  const visitor = net.connect({ port: bulkHubPort, host: "127.0.0.1" });
  let received = 0;
  let ended: "close" | null = null;
  let visitorError: string | null = null;
  let sawEnd = false;
  visitor.on("error", (err: NodeJS.ErrnoException) => { visitorError = err.code ?? err.message; });
  visitor.on("end", () => { sawEnd = true; });
  const closed = new Promise<void>((resolve) => visitor.once("close", () => { ended = "close"; resolve(); }));
  t.teardown(() => { visitor.destroy(); });
  await within(new Promise<void>((resolve) => {
    const onData = (c: Buffer): void => {
      received += c.length;
      if (received >= 1024 * 1024) { visitor.pause(); visitor.off("data", onData); resolve(); }
    };
    visitor.on("data", onData);
  }), "first MiB through the hub");
  t.equal(backendConns, 1, "the bulk backend is streaming to the visitor");

  alpha.kill("SIGKILL");
  const ex = await alpha.waitExit();
  t.equal(ex.signal, "SIGKILL");
  visitor.on("data", (c: Buffer) => { received += c.length; });
  visitor.resume();
  await within(closed, "the visitor's connection ending after the cog died");
  t.equal(ended, "close", `visitor connection ended (error: ${visitorError ?? "none"}, clean end: ${sawEnd})`);
  t.ok(received < TOTAL, `it ended before the full size (${received} of ${TOTAL} bytes)`);

  const b = await curlHttp(hub.ports.http, betaHost);
  t.equal(b.code, 0, b.stderr);
  t.equal(b.body, `beta-http ${betaHost}:${hub.ports.http} /\n`, "the other cog still serves through the same hub");

  // After the grace period alpha's name is not routed anymore.
  await waitFor("alpha's hostname to answer 404 while it is down", async () => (await httpStatus(hub.ports.http, alphaHost)) === "404");

  await startCogProc(t, "alpha-again", alphaYaml);
  const a = await curlHttp(hub.ports.http, alphaHost);
  t.equal(a.code, 0, a.stderr);
  t.equal(a.body, `alpha-http ${alphaHost}:${hub.ports.http} /\n`, "the restarted cog serves again");
  t.equal(await tcpPortOf(hub.yaml, "alpha"), bulkHubPort, "and keeps its TCP port");
  t.ok(hub.proc.alive, "the hub is still running");
});

t.test("hub restart: the cog reconnects by itself; TCP port assignment is stable", async (t) => {
  const dir = tmpDir("capsul-fail-b-");
  t.teardown(() => fs.rmSync(dir, { recursive: true, force: true }));
  const pool = await freePortRange(8);
  const hubYamlPath = path.join(dir, "hub.yaml");
  const first = await startHubProc(t, writeYaml(hubYamlPath, hubDoc(dir, pool.spec)), "hub-1");
  const ports = first.ports;
  // Pin the ports the hub got, so the restarted hub binds the same ones.
  writeYaml(hubYamlPath, hubDoc(dir, pool.spec, ports));

  const web = await httpBackend("gamma-http");
  const echo = await echoBackend("gamma-echo");
  t.teardown(async () => { await web.close(); await echo.close(); });
  const host = `www.gamma.${DOMAIN}`;
  const yaml = cogYaml(dir, "gamma", [
    { name: "site", kind: "http", hostname: host, target: `127.0.0.1:${web.port}` },
    { name: "echo", kind: "tcp", target: `127.0.0.1:${echo.port}` },
  ]);
  await enrollCog(t, first, "gamma", yaml);
  let cog = await startCogProc(t, "gamma", yaml);

  const before = await curlHttp(ports.http, host);
  t.equal(before.code, 0, before.stderr);
  t.equal(before.body, `gamma-http ${host}:${ports.http} /\n`);
  const tcpPort = await tcpPortOf(hubYamlPath, "gamma");
  t.ok(tcpPort >= pool.from && tcpPort <= pool.to, `echo route got a pool port (${tcpPort})`);
  t.equal(await tcpExchange(tcpPort, "one\n"), "gamma-echo\none\n");

  const connectedBefore = cog.matching(CONNECTED_RE).length;
  t.equal(connectedBefore, 1);
  first.proc.kill("SIGTERM");
  const ex = await first.proc.waitExit();
  t.equal(ex.code, 0, "the hub exits 0 on SIGTERM");
  t.equal(await curlHttp(ports.http, host).then((r) => r.code), 7, "nothing listens while the hub is down (curl: couldn't connect)");

  const second = await startHubProc(t, hubYamlPath, "hub-2");
  t.same(second.ports, ports, "the restarted hub listens on the same ports");
  await cog.waitLine(CONNECTED_RE, { from: cog.out.stderr.findIndex((l) => CONNECTED_RE.test(l)) + 1 });
  t.ok(cog.matching(/tunnel to hub failed|reconnecting/).length > 0, "the cog noticed the hub going away and retried");
  const after = await curlHttp(ports.http, host);
  t.equal(after.code, 0, after.stderr);
  t.equal(after.body, `gamma-http ${host}:${ports.http} /\n`, "curl through the restarted hub works");
  t.equal(await tcpPortOf(hubYamlPath, "gamma"), tcpPort, "same TCP port after the hub restart");
  t.equal(await tcpExchange(tcpPort, "two\n"), "gamma-echo\ntwo\n");

  // Now the cog restarts (a clean stop and a new process): the port stays too.
  cog.kill("SIGTERM");
  t.equal((await cog.waitExit()).code, 0, "the cog exits 0 on SIGTERM");
  cog = await startCogProc(t, "gamma-again", yaml);
  t.equal(await tcpPortOf(hubYamlPath, "gamma"), tcpPort, "same TCP port after the cog reconnects");
  t.equal(await tcpExchange(tcpPort, "three\n"), "gamma-echo\nthree\n");
});

t.test("revoke: the live tunnel is dropped, the cog is refused with 'revoked', cogs --json shows it", async (t) => {
  const dir = tmpDir("capsul-fail-c-");
  t.teardown(() => fs.rmSync(dir, { recursive: true, force: true }));
  const pool = await freePortRange(8);
  const hub = await startHubProc(t, writeYaml(path.join(dir, "hub.yaml"), hubDoc(dir, pool.spec)));
  const web = await httpBackend("delta-http");
  t.teardown(() => web.close());
  const host = `www.delta.${DOMAIN}`;
  const yaml = cogYaml(dir, "delta", [{ name: "site", kind: "http", hostname: host, target: `127.0.0.1:${web.port}` }]);
  await enrollCog(t, hub, "delta", yaml);
  const cog = await startCogProc(t, "delta", yaml);
  const ok = await curlHttp(hub.ports.http, host);
  t.equal(ok.body, `delta-http ${host}:${hub.ports.http} /\n`, ok.stderr);
  const online = (await listCogs(hub.yaml)).find((c) => c.name === "delta");
  t.equal(online?.online, true, "online before the revocation");
  t.equal(online?.revoked_at, null);

  const mark = cog.out.stderr.length;
  const rv = await runCli(["hub", "revoke", "delta", "-c", hub.yaml]);
  t.equal(rv.code, 0, rv.stderr);
  t.match(rv.stdout, /Revoked cog "delta"/);

  await hub.proc.waitLine(/dropping cog tunnel cog=delta/);
  await waitFor("delta's hostname to stop routing (404)", async () => (await httpStatus(hub.ports.http, host)) === "404");
  const refused = await cog.waitLine(/refused the tunnel.*revoked/, { from: mark });
  t.match(refused[0], /cog delta is revoked/, "the cog's log says why it is refused");
  t.ok(cog.alive, "the cog keeps running (and retrying) rather than crashing");
  const row = (await listCogs(hub.yaml)).find((c) => c.name === "delta");
  t.type(row?.revoked_at, "string", "capsul hub cogs --json shows it revoked");
  t.equal(row?.status, "revoked");
  t.equal(row?.online, false);
  const table = await runCli(["hub", "cogs", "-c", hub.yaml]);
  t.match(table.stdout, /^delta\s+revoked\s/m);
});

t.test("the hub survives bad visitors while serving others", async (t) => {
  const dir = tmpDir("capsul-fail-d-");
  t.teardown(() => fs.rmSync(dir, { recursive: true, force: true }));
  const pool = await freePortRange(8);
  const hub = await startHubProc(t, writeYaml(path.join(dir, "hub.yaml"), hubDoc(dir, pool.spec)));
  const host = `www.eps.${DOMAIN}`;
  const site = await tlsBackend(dir, host, "eps-tls");
  const web = await httpBackend("eps-http");
  t.teardown(async () => { await site.close(); await web.close(); });
  const yaml = cogYaml(dir, "eps", [
    { name: "site", kind: "tls", hostname: host, target: `127.0.0.1:${site.port}` },
    { name: "site-http", kind: "http", hostname: host, target: `127.0.0.1:${web.port}` },
  ]);
  await enrollCog(t, hub, "eps", yaml);
  await startCogProc(t, "eps", yaml);

  const curlTls = (): ReturnType<typeof curl> =>
    curl(["--resolve", `${host}:${hub.ports.tls}:127.0.0.1`, "--cacert", site.caFile, `https://${host}:${hub.ports.tls}/`]);

  /** Connects, sends `bytes` (then half-closes if `end`), resolves when the hub closes the connection. */
  const misbehave = (port: number, bytes: Buffer, end: boolean): Promise<{ closed: true; answer: Buffer }> =>
    new Promise((resolve) => {
      const chunks: Buffer[] = [];
      // Not half-open: when the hub hangs up, this side closes too and 'close' fires.
      const s = net.connect({ port, host: "127.0.0.1" }, () => {
        if (end) s.end(bytes); else s.write(bytes);
      });
      s.on("data", (c: Buffer) => chunks.push(c));
      s.on("error", () => {});
      s.on("close", () => resolve({ closed: true, answer: Buffer.concat(chunks) }));
    });

  const hello = fs.readFileSync(new URL("./fixtures/clienthello/curl-default.bin", import.meta.url));
  t.equal(hello[0], 0x16, "the fixture is a TLS handshake record");

  // A slow client: the first bytes of a ClientHello, then nothing. The hub must drop it (1s deadline).
  const slow = misbehave(hub.ports.tls, hello.subarray(0, 20), false);

  const garbage = Buffer.alloc(4096);
  for (let i = 0; i < garbage.length; i++) garbage[i] = (i * 131 + 7) & 0xff;
  const garbageTls = await within(misbehave(hub.ports.tls, garbage, false), "hub closing a garbage TLS visitor");
  t.ok(garbageTls.closed, "garbage on the TLS port is closed");
  const garbageHttp = await within(misbehave(hub.ports.http, garbage, false), "hub closing a garbage HTTP visitor");
  t.ok(garbageHttp.closed, "garbage on the HTTP port is closed");
  const truncated = await within(misbehave(hub.ports.tls, hello.subarray(0, Math.floor(hello.length / 2)), true), "hub closing a truncated hello");
  t.ok(truncated.closed, "a truncated ClientHello then FIN is closed");

  // While the slow one is still pending, others are served.
  const during = await curlTls();
  t.equal(during.code, 0, during.stderr);
  t.equal(during.stdout, `eps-tls ${host}:${hub.ports.tls}\n`, "served while a slow hello is pending");
  const slowDone = await within(slow, "hub closing the slow ClientHello");
  t.ok(slowDone.closed, "the slow ClientHello is closed by the hub's deadline");
  t.equal(slowDone.answer.length > 0 ? slowDone.answer[0] : 0x15, 0x15, "nothing but (at most) a TLS alert is sent back");

  // 200 connections that connect and close at once, on both public ports.
  const burst = await within(Promise.all(Array.from({ length: 200 }, (_, i) => new Promise<string>((resolve) => {
    const s = net.connect({ port: i % 2 ? hub.ports.tls : hub.ports.http, host: "127.0.0.1" });
    s.once("connect", () => s.destroy());
    s.once("error", (err: NodeJS.ErrnoException) => resolve(err.code ?? "error"));
    s.once("close", () => resolve("closed"));
  }))), "200 connect-and-close visitors");
  t.equal(burst.filter((r) => r === "closed").length, 200, "all 200 burst connections were accepted and closed");

  const tlsAfter = await curlTls();
  t.equal(tlsAfter.code, 0, tlsAfter.stderr);
  t.equal(tlsAfter.stdout, `eps-tls ${host}:${hub.ports.tls}\n`, "TLS by SNI still works");
  const httpAfter = await curlHttp(hub.ports.http, host);
  t.equal(httpAfter.code, 0, httpAfter.stderr);
  t.equal(httpAfter.body, `eps-http ${host}:${hub.ports.http} /\n`, "HTTP by Host still works");
  t.ok(hub.proc.alive, "the hub process has not exited");
  t.ok(pidAlive(hub.proc.pid), "and its pid is alive");
  t.notMatch(hub.proc.text(), /uncaught|unhandled|TypeError|RangeError/i, "no crash traces in the hub's log");
});
