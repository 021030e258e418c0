/**
 * Per-cog visitor limits on a real hub with real cogs over loopback (issue 9 "Limits";
 * gateway/quotas.ts): a cog's tunnel carries at most max_streams visitor streams and a
 * route at most max_connections_per_route connections; the visitor over either is refused
 * as if the cog were offline (HTTP 503, TLS unrecognized_name alert), counted, and logged
 * once per cog or route per refusal_log_interval, while other cogs and routes are served.
 */
import t, { type Test } from "tap";
import net from "node:net";
import tls from "node:tls";
import fs from "node:fs";
import type { HubConfig } from "../config/types.js";
import { startHub, type Hub } from "../gateway/hub.js";
import { createLogger } from "../lib/log.js";
import { closeServer, cogConfig, enrolledCog, HUB_DOMAIN, hubConfig, listen, tlsBackend, tmpDir } from "./helpers/cluster.js";

/** How often the test looks at the hub while waiting for a condition (never a timing assertion). */
const POLL_MS = 50;

async function until(what: string, cond: () => boolean, maxMs = 30_000): Promise<void> {
  for (let waited = 0; !cond(); waited += POLL_MS) {
    if (waited > maxMs) throw new Error(`timed out waiting for ${what}`);
    await new Promise((r) => setTimeout(r, POLL_MS));
  }
}

/**
 * HTTP backend: `GET /hold` is read and never answered (the connection, and its stream
 * through the hub, stays open); anything else gets "ok" at once.
 */
async function holdBackend(): Promise<{ port: number; close(): Promise<void> }> {
  const server = net.createServer((sock) => {
    sock.on("error", () => {});
    let head = "";
    sock.on("data", (d: Buffer) => {
      head += d.toString("latin1");
      if (!head.includes("\r\n\r\n") || head.startsWith("GET /hold ")) return;
      sock.end("HTTP/1.1 200 OK\r\nContent-Length: 2\r\nConnection: close\r\n\r\nok");
    });
  });
  const port = await listen(server);
  return { port, close: () => closeServer(server) };
}

/** Sends a request for `path` on `host`; resolves with what came back once the hub or backend closed. */
function get(port: number, host: string, path: string): { sock: net.Socket; answer: Promise<string> } {
  const sock = net.connect({ port, host: "127.0.0.1" });
  const got: Buffer[] = [];
  sock.on("data", (d: Buffer) => got.push(d));
  sock.on("error", () => {});
  sock.once("connect", () => sock.write(`GET ${path} HTTP/1.1\r\nHost: ${host}\r\n\r\n`));
  return { sock, answer: new Promise((resolve) => sock.once("close", () => resolve(Buffer.concat(got).toString("latin1")))) };
}

/** A TLS handshake for `servername` through the hub; resolves with the error, or "ok" if the handshake completed. */
function handshake(port: number, servername: string, ca: string): Promise<string> {
  return new Promise((resolve) => {
    const s = tls.connect({ port, host: "127.0.0.1", servername, ca });
    s.once("secureConnect", () => { s.destroy(); resolve("ok"); });
    s.once("error", (err) => resolve(err.message));
  });
}

interface Cluster { hub: Hub; hubCfg: HubConfig; lines: string[]; caFile: string }

/** A hub with cogs "qa" (http routes a and b, tls route s) and "qb" (http route c). */
async function cluster(t: Test, limits: Record<string, unknown>, cogs: unknown[] = []): Promise<Cluster> {
  const dir = tmpDir();
  const hubCfg = hubConfig(dir, { limits: { refusal_log_interval: "1h", ...limits }, cogs });
  const lines: string[] = [];
  const hub = await startHub(hubCfg, createLogger({ level: "info", write: (l) => lines.push(l) }));
  t.teardown(() => hub.close());
  const backend = await holdBackend();
  t.teardown(() => backend.close());
  const site = await tlsBackend(dir, `s.qa.${HUB_DOMAIN}`, "s");
  t.teardown(() => site.close());
  const target = `127.0.0.1:${backend.port}`;
  const qa = await enrolledCog(hubCfg, hub, cogConfig(dir, "qa", hub.ports.tunnel, [
    { name: "a", kind: "http", hostname: `a.qa.${HUB_DOMAIN}`, target },
    { name: "b", kind: "http", hostname: `b.qa.${HUB_DOMAIN}`, target },
    { name: "s", kind: "tls", hostname: `s.qa.${HUB_DOMAIN}`, target: `127.0.0.1:${site.port}` },
  ]), "qa");
  t.teardown(() => qa.close());
  const qb = await enrolledCog(hubCfg, hub, cogConfig(dir, "qb", hub.ports.tunnel, [
    { name: "c", kind: "http", hostname: `c.qb.${HUB_DOMAIN}`, target },
  ]), "qb");
  t.teardown(() => qb.close());
  t.teardown(() => fs.rmSync(dir, { recursive: true, force: true }));
  return { hub, hubCfg, lines, caFile: fs.readFileSync(site.caFile, "utf8") };
}

const A = `a.qa.${HUB_DOMAIN}`;
const B = `b.qa.${HUB_DOMAIN}`;
const S = `s.qa.${HUB_DOMAIN}`;
const C = `c.qb.${HUB_DOMAIN}`;

t.test("max_streams (hub.cogs[].limits): the cog's visitor over it is refused like an offline cog, other cogs are served", async (t) => {
  const { hub, lines, caFile } = await cluster(t, {}, [{ name: "qa", limits: { max_streams: 2 } }]);
  const port = hub.ports.http!;
  const held = [get(port, A, "/hold"), get(port, B, "/hold")];
  await until("both held visitors to have streams", () => hub.visitors.quotas.of("qa").streams === 2);

  const over = await get(port, A, "/").answer;
  t.match(over, /^HTTP\/1\.1 503 Service Unavailable\r\n/, "an HTTP visitor over the cog's streams gets a 503");
  t.match(over, /is busy/);
  t.equal(hub.visitors.stats.overCogStreams, 1, "counted");

  // The TLS listener answers the same refusal with its "cog offline" alert.
  t.match(await handshake(hub.ports.tls!, S, caFile), /unrecognized name/i, "a TLS visitor over it gets the unrecognized_name alert");
  t.equal(hub.visitors.stats.overCogStreams, 2, "counted too");
  t.equal(hub.visitors.stats.cogOffline, 0, "not as offline");

  t.match(await get(port, C, "/").answer, /^HTTP\/1\.1 200 OK\r\n[\s\S]*ok$/, "another cog's visitor is served meanwhile");
  const logged = lines.filter((l) => l.includes("its cog carries as many visitor streams as it may"));
  t.equal(logged.length, 1, "two refusals, one log line (refusal_log_interval)");
  t.match(logged[0], /cog=qa/);
  t.match(logged[0], /key=hub\.cogs\[0\]\.limits\.max_streams/);
  t.match(logged[0], /limit=2/);

  // A stream slot comes back when its visitor leaves.
  held[0]!.sock.destroy();
  await until("the stream slot to be given back", () => hub.visitors.quotas.of("qa").streams === 1);
  t.match(await get(port, A, "/").answer, /^HTTP\/1\.1 200 OK/, "the cog's visitors are served again");
  t.equal(await handshake(hub.ports.tls!, S, caFile), "ok", "TLS too");
  held[1]!.sock.destroy();
  await until("every stream slot back", () => hub.visitors.quotas.of("qa").streams === 0);
});

t.test("max_connections_per_route: the route's visitor over it is refused, the cog's other routes are served", async (t) => {
  const { hub, lines, hubCfg } = await cluster(t, { max_connections_per_route: 2 });
  t.equal(hubCfg.limits.maxStreamsPerCog, 5000, "the cog's stream cap is far away");
  const port = hub.ports.http!;
  const held = [get(port, A, "/hold"), get(port, A, "/hold")];
  const entryA = hub.router.lookupHost("http", A)!;
  await until("both held visitors to have streams", () => hub.visitors.quotas.of("qa").streams === 2);
  t.equal(hub.visitors.quotas.routeConnections(entryA), 2);

  for (let i = 0; i < 3; i++) {
    t.match(await get(port, A, "/").answer, /^HTTP\/1\.1 503 Service Unavailable\r\n/, `visitor ${i + 3} of route a gets a 503`);
  }
  t.equal(hub.visitors.stats.overRouteConnections, 3, "counted");
  t.equal(hub.visitors.stats.overCogStreams, 0, "by the route's cap, not the cog's");
  t.match(await get(port, B, "/").answer, /^HTTP\/1\.1 200 OK/, "route b of the same cog is served");
  const logged = lines.filter((l) => l.includes("its route has as many connections open as it may"));
  t.equal(logged.length, 1, "three refusals, one log line");
  t.match(logged[0], /route=a/);
  t.match(logged[0], /key=hub\.limits\.max_connections_per_route/);

  for (const h of held) h.sock.destroy();
  await until("the route's slots to be given back", () => hub.visitors.quotas.routeConnections(entryA) === 0);
  t.match(await get(port, A, "/").answer, /^HTTP\/1\.1 200 OK/, "route a is served again");
  await until("every stream slot back", () => hub.visitors.quotas.of("qa").streams === 0);
  t.equal(hub.visitors.quotas.routeConnections(entryA), 0);
});

t.test("a reload that sets a cog's max_streams applies to its next visitors, live ones keep their slots", async (t) => {
  const { hub, hubCfg } = await cluster(t, {}, [{ name: "qa" }]);
  const port = hub.ports.http!;
  const held = [get(port, A, "/hold"), get(port, B, "/hold")];
  t.teardown(() => held.forEach((h) => h.sock.destroy()));
  await until("both held visitors to have streams", () => hub.visitors.quotas.of("qa").streams === 2);
  const next: HubConfig = { ...hubCfg, cogs: hubCfg.cogs.map((g) => (g.name === "qa" ? { ...g, limits: { ...g.limits, maxStreams: 2 } } : g)) };
  t.same((await hub.reload(next)).changed, ["hub.cogs[].limits"]);
  t.match(await get(port, A, "/").answer, /^HTTP\/1\.1 503 Service Unavailable\r\n/, "the cog's third visitor is over its new cap");
  t.equal(hub.visitors.quotas.of("qa").streams, 2, "the two live visitors kept their slots");
  t.match(await get(port, C, "/").answer, /^HTTP\/1\.1 200 OK/, "another cog is not affected");
});
