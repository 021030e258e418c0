/**
 * End to end through a real hub and real cogs on loopback, with real curl as
 * the visitor: two hostnames on two cogs through one hub port (SNI), plain
 * HTTP by Host, raw TCP by port with PROXY v1/v2, half-close, refusals.
 */
import t from "tap";
import { execFile } from "node:child_process";
import net from "node:net";
import { promisify } from "node:util";
import {
  cogConfig, enrolledCog, httpBackend, HUB_DOMAIN, hubConfig, listen, closeServer, startTestHub, tlsBackend, tmpDir,
} from "./helpers/cluster.js";
import { parseProxyHeader } from "../protocol/proxyproto.js";
import { createInvite } from "../gateway/hub.js";

const execFileP = promisify(execFile);

async function curl(args: string[]): Promise<{ code: number; stdout: string; stderr: string }> {
  try {
    const { stdout, stderr } = await execFileP("curl", ["-sS", "--max-time", "20", ...args]);
    return { code: 0, stdout, stderr };
  } catch (err) {
    const e = err as { code?: number; stdout?: string; stderr?: string };
    return { code: typeof e.code === "number" ? e.code : -1, stdout: e.stdout ?? "", stderr: e.stderr ?? "" };
  }
}

/** A TCP backend that reads a PROXY header, answers "src=ADDR:PORT" and then echoes until the visitor ends. */
async function proxyEchoBackend(): Promise<{ port: number; close(): Promise<void> }> {
  const server = net.createServer({ allowHalfOpen: true }, (sock) => {
    sock.on("error", () => {});
    let buf = Buffer.alloc(0);
    const onData = (chunk: Buffer): void => {
      buf = Buffer.concat([buf, chunk]);
      const r = parseProxyHeader(buf);
      if (r.type === "need-more") return;
      sock.off("data", onData);
      if (r.type !== "ok") { sock.end(`invalid ${r.reason}\n`); return; }
      sock.write(`v${r.version} src=${r.src?.address}:${r.src?.port} dst=${r.dst?.address}:${r.dst?.port}\n`);
      const rest = buf.subarray(r.headerLength);
      if (rest.length) sock.write(rest);
      sock.pipe(sock);
    };
    sock.on("data", onData);
  });
  const port = await listen(server);
  return { port, close: () => closeServer(server) };
}

/** Connects, sends `payload`, half-closes, and collects everything until the server closes. */
function tcpExchange(port: number, payload: string): Promise<{ text: string; localPort: number }> {
  return new Promise((resolve, reject) => {
    const chunks: Buffer[] = [];
    const s = net.connect({ port, host: "127.0.0.1", allowHalfOpen: true }, () => {
      s.write(payload);
      s.end();
    });
    let localPort = 0;
    s.on("connect", () => { localPort = s.localPort ?? 0; });
    s.on("data", (c: Buffer) => chunks.push(c));
    s.on("error", reject);
    s.on("close", () => resolve({ text: Buffer.concat(chunks).toString(), localPort }));
  });
}

t.test("two cogs, one hub: SNI, Host and TCP routing with PROXY headers", async (t) => {
  const dir = tmpDir();
  const hubCfg = hubConfig(dir, { listen: { tcp_ports: ["21000-21049"] } });
  const hub = await startTestHub(hubCfg);
  t.teardown(() => hub.close());

  const aliceHost = `www.alice.${HUB_DOMAIN}`;
  const bobHost = `www.bob.${HUB_DOMAIN}`;
  const aTls = await tlsBackend(dir, aliceHost, "alice-tls");
  const bTls = await tlsBackend(dir, bobHost, "bob-tls");
  const aHttp = await httpBackend("alice-http");
  const echo1 = await proxyEchoBackend();
  const echo2 = await proxyEchoBackend();
  t.teardown(async () => { for (const b of [aTls, bTls, aHttp, echo1, echo2]) await b.close(); });

  const alice = await enrolledCog(hubCfg, hub, cogConfig(dir, "alice", hub.ports.tunnel, [
    { name: "site", kind: "tls", hostname: aliceHost, target: `127.0.0.1:${aTls.port}` },
    { name: "site-http", kind: "http", hostname: aliceHost, target: `127.0.0.1:${aHttp.port}` },
    { name: "ssh1", kind: "tcp", target: `127.0.0.1:${echo1.port}`, proxy_protocol: "v1" },
    { name: "ssh2", kind: "tcp", target: `127.0.0.1:${echo2.port}`, proxy_protocol: "v2" },
  ]), "alice");
  t.teardown(() => alice.close());
  const bob = await enrolledCog(hubCfg, hub, cogConfig(dir, "bob", hub.ports.tunnel, [
    { name: "site", kind: "tls", hostname: bobHost, target: `127.0.0.1:${bTls.port}` },
    // Not bob's to take: refused with a reason, alice keeps it.
    { name: "steal", kind: "tls", hostname: `evil.alice.${HUB_DOMAIN}`, target: `127.0.0.1:${bTls.port}` },
  ]), "bob");
  t.teardown(() => bob.close());

  const tlsPort = hub.ports.tls!;
  const httpPort = hub.ports.http!;

  await t.test("each hostname reaches its own cog's TLS backend through one hub port", async (t) => {
    const a = await curl(["--resolve", `${aliceHost}:${tlsPort}:127.0.0.1`, "--cacert", aTls.caFile, `https://${aliceHost}:${tlsPort}/`]);
    t.equal(a.code, 0, a.stderr);
    t.equal(a.stdout, `alice-tls ${aliceHost}:${tlsPort}\n`);
    const b = await curl(["--resolve", `${bobHost}:${tlsPort}:127.0.0.1`, "--cacert", bTls.caFile, `https://${bobHost}:${tlsPort}/`]);
    t.equal(b.code, 0, b.stderr);
    t.equal(b.stdout, `bob-tls ${bobHost}:${tlsPort}\n`);
  });

  await t.test("plain HTTP is routed by Host header", async (t) => {
    const r = await curl(["--resolve", `${aliceHost}:${httpPort}:127.0.0.1`, `http://${aliceHost}:${httpPort}/path?q=1`]);
    t.equal(r.code, 0, r.stderr);
    t.equal(r.stdout, `alice-http ${aliceHost}:${httpPort} /path?q=1\n`);
  });

  await t.test("ownership: a cog cannot announce another cog's hostname", async (t) => {
    const st = bob.client.status("steal");
    t.equal(st.state, "refused");
    t.match(st.state === "refused" ? st.reason : "", /not granted to cog bob/);
    t.equal(hub.router.lookupHost("tls", `evil.alice.${HUB_DOMAIN}`), undefined);
  });

  await t.test("raw TCP by port with PROXY v1 and v2 carrying the visitor's address; half-close kept", async (t) => {
    for (const [route, version] of [["ssh1", 1], ["ssh2", 2]] as const) {
      const st = alice.client.status(route);
      t.equal(st.state, "accepted", route);
      const port = st.state === "accepted" ? st.port! : 0;
      t.ok(port >= 21000 && port <= 21049, `${route} got a hub port from the pool (${port})`);
      // The visitor sends, then half-closes, and still reads the whole echo.
      const { text, localPort } = await tcpExchange(port, "ping through the tunnel\n");
      t.equal(text, `v${version} src=127.0.0.1:${localPort} dst=127.0.0.1:${port}\nping through the tunnel\n`, route);
    }
  });

  await t.test("no route: TLS alert, HTTP 404", async (t) => {
    const unknown = `nope.${HUB_DOMAIN}`;
    const r = await curl(["--resolve", `${unknown}:${tlsPort}:127.0.0.1`, "-k", `https://${unknown}:${tlsPort}/`]);
    t.not(r.code, 0);
    t.match(r.stderr, /unrecognized name/i);
    const h = await curl(["-o", "/dev/null", "-w", "%{http_code}", "--resolve", `${unknown}:${httpPort}:127.0.0.1`, `http://${unknown}:${httpPort}/`]);
    t.equal(h.stdout, "404");
  });
});

t.test("a hostname granted to two cogs goes to the first; the second is refused", async (t) => {
  const dir = tmpDir();
  const hubCfg = hubConfig(dir);
  const hub = await startTestHub(hubCfg);
  t.teardown(() => hub.close());
  const shared = "shop.example.org";
  const back = await httpBackend("first");
  t.teardown(() => back.close());
  const one = await enrolledCog(hubCfg, hub, cogConfig(dir, "one", hub.ports.tunnel, [
    { name: "shop", kind: "http", hostname: shared, target: `127.0.0.1:${back.port}` },
  ]), "one", { hostnames: [shared] });
  t.teardown(() => one.close());
  // `capsul hub invite` refuses the overlapping grant (test/grants.test.ts)...
  await t.rejects(createInvite(hubCfg, "two", { hostnames: [shared] }), { name: "ConfigError", message: /overlaps "shop\.example\.org" of cog one/ });
  // ...so it is stored directly, as in a hub.db written before that check: the router still lets only one cog hold it.
  await hub.store.addGrant("two", "hostname", shared);
  const two = await enrolledCog(hubCfg, hub, cogConfig(dir, "two", hub.ports.tunnel, [
    { name: "shop", kind: "http", hostname: shared, target: `127.0.0.1:${back.port}` },
  ]), "two");
  t.teardown(() => two.close());
  t.same(one.client.status("shop"), { state: "accepted", port: undefined });
  const st = two.client.status("shop");
  t.equal(st.state, "refused");
  t.match(st.state === "refused" ? st.reason : "", /held by cog one/);
  t.equal(hub.router.lookupHost("http", shared)?.cog, "one");
});

t.test("a visitor arriving while its cog reconnects is held for the grace period, then served", async (t) => {
  const dir = tmpDir();
  const hubCfg = hubConfig(dir, { limits: { grace: "30s" } });
  const hub = await startTestHub(hubCfg);
  t.teardown(() => hub.close());
  const host = `app.gina.${HUB_DOMAIN}`;
  const back = await httpBackend("gina");
  t.teardown(() => back.close());
  const cog = await enrolledCog(hubCfg, hub, cogConfig(dir, "gina", hub.ports.tunnel, [
    { name: "app", kind: "http", hostname: host, target: `127.0.0.1:${back.port}` },
  ]), "gina");
  t.teardown(() => cog.close());
  const reconnected = new Promise<void>((resolve) => cog.client.once("connected", () => resolve()));
  // Cut the tunnel from the hub's side, as a network drop would.
  hub.tunnels.links.get("gina")!.session!.destroy();
  t.equal(hub.tunnels.links.get("gina")?.session, null, "the cog is away, its routes held");
  const r = await curl(["--resolve", `${host}:${hub.ports.http}:127.0.0.1`, `http://${host}:${hub.ports.http}/held`]);
  await reconnected;
  t.equal(r.code, 0, r.stderr);
  t.equal(r.stdout, `gina ${host}:${hub.ports.http} /held\n`);
});

t.test("tcp ports: a cog cannot take a port granted to another cog", async (t) => {
  const dir = tmpDir();
  const hubCfg = hubConfig(dir, {
    listen: { tcp_ports: ["21100-21119"] },
    cogs: [{ name: "owner", tcp_ports: ["21100-21104"] }, { name: "other", tcp_ports: ["21105-21109"] }],
  });
  const hub = await startTestHub(hubCfg);
  t.teardown(() => hub.close());
  const echo = await proxyEchoBackend();
  t.teardown(() => echo.close());
  const owner = await enrolledCog(hubCfg, hub, cogConfig(dir, "owner", hub.ports.tunnel, [
    { name: "ssh", kind: "tcp", target: `127.0.0.1:${echo.port}`, proxy_protocol: "v1" },
  ]), "owner");
  t.teardown(() => owner.close());
  const other = await enrolledCog(hubCfg, hub, cogConfig(dir, "other", hub.ports.tunnel, [
    { name: "grab", kind: "tcp", port: 21100, target: `127.0.0.1:${echo.port}` },
    { name: "mine", kind: "tcp", port: 21107, target: `127.0.0.1:${echo.port}` },
  ]), "other");
  t.teardown(() => other.close());
  t.same(owner.client.status("ssh"), { state: "accepted", port: 21100 }, "first port of the owner's own grant");
  const grab = other.client.status("grab");
  t.equal(grab.state, "refused");
  t.match(grab.state === "refused" ? grab.reason : "", /hub port 21100 is not granted to cog other/);
  t.same(other.client.status("mine"), { state: "accepted", port: 21107 });
  t.equal(hub.router.lookupPort(21100)?.cog, "owner");
});

t.test("tcp port assignments outlive withdrawn routes and are reclaimed longest-unused first", async (t) => {
  const dir = tmpDir();
  const hubCfg = hubConfig(dir, { listen: { tcp_ports: ["21200-21201"] } });
  const hub = await startTestHub(hubCfg);
  t.teardown(() => hub.close());
  const echo = await proxyEchoBackend();
  t.teardown(() => echo.close());
  const cog = await enrolledCog(hubCfg, hub, cogConfig(dir, "pat", hub.ports.tunnel, []), "pat");
  t.teardown(() => cog.close());
  const route = (name: string) => ({ name, kind: "tcp" as const, target: { host: "127.0.0.1", port: echo.port }, proxyProtocol: "v1" as const });
  const answered = (): Promise<void> => new Promise((resolve) => cog.client.once("routes", () => resolve()));
  const portOf = (name: string): number | undefined => {
    const st = cog.client.status(name);
    return st.state === "accepted" ? st.port : undefined;
  };

  let next = answered();
  cog.client.publish("vm:a", [route("a-ssh")]);
  await next;
  next = answered();
  cog.client.publish("vm:b", [route("b-ssh")]);
  await next;
  t.equal(portOf("a-ssh"), 21200);
  t.equal(portOf("b-ssh"), 21201);

  // Stop and start "a": same port.
  next = answered();
  cog.client.withdraw("vm:a");
  await next;
  t.equal(hub.router.lookupPort(21200), undefined, "withdrawn route no longer served");
  next = answered();
  cog.client.publish("vm:a", [route("a-ssh")]);
  await next;
  t.equal(portOf("a-ssh"), 21200, "the port came back with the route");

  // Pool dry: a new route takes the longest-unused assignment (b's, withdrawn first), not a's.
  next = answered();
  cog.client.withdraw("vm:b");
  await next;
  await new Promise((resolve) => setTimeout(resolve, 5)); // distinct millisecond stamps
  next = answered();
  cog.client.withdraw("vm:a");
  await next;
  next = answered();
  cog.client.publish("vm:c", [route("c-ssh")]);
  await next;
  t.equal(portOf("c-ssh"), 21201);
  next = answered();
  cog.client.publish("vm:a", [route("a-ssh")]);
  await next;
  t.equal(portOf("a-ssh"), 21200, "a's assignment survived");
  const { text } = await tcpExchange(21201, "x\n");
  t.match(text, /^v1 src=127\.0\.0\.1:\d+ dst=127\.0\.0\.1:21201\nx\n$/, "the reclaimed port serves its new route");
});
