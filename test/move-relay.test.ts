/**
 * The hub's side of `capsul vm move` (gateway/moves.ts) on real tunnels: a real
 * hub, real cogs over mTLS, their real mux streams. No provisioner: each
 * target's move handler is the test's, so it can see every byte the hub lets
 * through. The whole move with QEMU is test/vm-move.test.ts.
 */
import net from "node:net";
import type { Duplex } from "node:stream";
import t, { type Test } from "tap";
import { carriedLines } from "../cli/vmmove.js";
import { challengeName, domainProofValue } from "../protocol/domainproof.js";
import { encodeMessage, MessageReader } from "../protocol/messages.js";
import { checkMoveRequest, type MoveCarried, type MoveOffer, MOVE_RESULT_MAX_BYTES } from "../protocol/move.js";
import { ProtocolError } from "../lib/errors.js";
import type { Cog } from "../tunnel-client/cog.js";
import type { PublishedRoute } from "../tunnel-client/routesink.js";
import { closeServer, cogConfig, enrolledCog, httpBackend, hubConfig, listen, startTestHub, tmpDir } from "./helpers/cluster.js";
import { startDnsStub } from "./helpers/dnsstub.js";
import { freePortRange } from "./helpers/procs.js";
import { until } from "./helpers/rawpeer.js";

t.setTimeout(120_000);

type Msg = Record<string, unknown> & { type: string };

/** Everything a target handler saw: the offer, and the bytes after it. */
interface Seen { offer: MoveOffer | null; bytes: number; ended: boolean }

function recorder(answer: "accept" | "refuse"): { seen: Seen; handler: (s: Duplex, o: MoveOffer, rest: Buffer) => void } {
  const seen: Seen = { offer: null, bytes: 0, ended: false };
  return {
    seen,
    handler: (s, offer, rest) => {
      seen.offer = offer;
      seen.bytes += rest.length;
      s.on("data", (d: Buffer) => { seen.bytes += d.length; });
      s.on("end", () => {
        seen.ended = true;
        if (answer === "accept") s.end(encodeMessage({ type: "move-done", vm: { name: offer.vm, got: seen.bytes } }));
      });
      s.on("error", () => {});
      s.resume(); // the client's header reader leaves the stream paused
      if (answer === "accept") s.write(encodeMessage({ type: "move-accept" }));
      else s.end(encodeMessage({ type: "move-refuse", reason: "not from you" }));
    },
  };
}

/** Bytes pushed through the hub for the throughput comment. */
const RELAY_MEASURE_BYTES = 256 * 1024 * 1024;

const sleep = (ms: number): Promise<void> => new Promise((r) => setTimeout(r, ms));

t.test("a move header's routes and hostnames: optional, deduplicated, normalized; a bad entry is a protocol error", async (t) => {
  const base = { type: "move", to: "cog-b", vm: "web1", bytes: 10 };
  t.same(checkMoveRequest(base), { ...base, routes: [], hostnames: [] }, "a source from before carrying names nothing");
  t.same(checkMoveRequest({ ...base, routes: ["vm-web1-ssh", "vm-web1-ssh"], hostnames: ["Blog.Alice.NET.", "*.Shop.example", "blog.alice.net"] }),
    { ...base, routes: ["vm-web1-ssh"], hostnames: ["blog.alice.net", "*.shop.example"] });
  for (const bad of [{ routes: "vm-web1-ssh" }, { routes: [""] }, { routes: ["x".repeat(65)] }, { routes: [7] }, { hostnames: ["not a name"] }, { hostnames: ["a..b"] }, { hostnames: {} }]) {
    t.throws(() => checkMoveRequest({ ...base, ...bad }), ProtocolError, JSON.stringify(bad));
  }
});

t.test("the hub relays a move only after the target consents, names the sender by its certificate, and refuses the rest", async (t) => {
  const dir = tmpDir();
  const hubCfg = hubConfig(dir, { tunnel: { keepalive_interval: "1s", keepalive_timeout: "3s", move_answer_timeout: "2s", max_moves: 1 } });
  const hub = await startTestHub(hubCfg);
  t.teardown(() => hub.close());
  const a = await enrolledCog(hubCfg, hub, cogConfig(dir, "cog-a", hub.ports.tunnel, []), "cog-a");
  t.teardown(() => a.close());
  const b = await enrolledCog(hubCfg, hub, cogConfig(dir, "cog-b", hub.ports.tunnel, []), "cog-b");
  t.teardown(() => b.close());

  const send = async (header: Msg, payload: Buffer, early: boolean): Promise<{ first: Msg | null; last: Msg | null; stream: Duplex }> => {
    const s = a.client.openMoveStream();
    s.on("error", () => {});
    const reader = new MessageReader<Msg>(s, 4096);
    // An eager (or hostile) source sends the archive with its header, before any consent.
    s.write(early ? Buffer.concat([encodeMessage(header), payload]) : encodeMessage(header));
    const first = await reader.next().catch(() => null);
    if (first?.type === "move-go" && !early) s.end(payload);
    else if (first?.type === "move-go") s.end();
    const last = first?.type === "move-go" ? await reader.next().catch(() => null) : null;
    return { first, last, stream: s };
  };
  const payload = Buffer.alloc(3 * 1024 * 1024, 7);

  await t.test("a target that refuses gets the offer and not one byte of the archive, though the source sent it at once", async (t) => {
    const r = recorder("refuse");
    b.client.setMoveHandler(r.handler);
    const { first } = await send({ type: "move", to: "cog-b", vm: "web1", bytes: payload.length }, payload, true);
    t.equal(first?.type, "move-refused");
    t.match(String(first?.reason), /cog-b refused: not from you/);
    await sleep(300);
    t.same(r.seen.offer, { type: "move-offer", from: "cog-a", vm: "web1", bytes: payload.length }, "the offer names the sender by its certificate");
    t.equal(r.seen.bytes, 0, "no archive byte reached the target");
  });

  await t.test("the sender cannot pose as another cog: `from` is the hub's, whatever the header says", async (t) => {
    const r = recorder("refuse");
    b.client.setMoveHandler(r.handler);
    await send({ type: "move", to: "cog-b", vm: "web1", bytes: 10, from: "cog-c" } as Msg, Buffer.alloc(0), false);
    t.equal(r.seen.offer?.from, "cog-a");
  });

  await t.test("a target that accepts gets the archive in full, and its verdict reaches the source", async (t) => {
    const r = recorder("accept");
    b.client.setMoveHandler(r.handler);
    const { first, last } = await send({ type: "move", to: "cog-b", vm: "web1", bytes: payload.length }, payload, false);
    t.equal(first?.type, "move-go");
    t.equal(last?.type, "move-done");
    t.same(last?.vm, { name: "web1", got: payload.length }, "every byte arrived, once");
  });

  await t.test("bytes an eager source sent before consent are delivered after it, not lost", async (t) => {
    const r = recorder("accept");
    b.client.setMoveHandler(r.handler);
    const small = Buffer.alloc(1000, 1);
    const { first, last } = await send({ type: "move", to: "cog-b", vm: "web1", bytes: small.length }, small, true);
    t.equal(first?.type, "move-go");
    t.same(last?.vm, { name: "web1", got: small.length });
  });

  await t.test("refused by the hub itself: a cog that is not connected, the sender itself, a bad header", async (t) => {
    const off = await send({ type: "move", to: "nobody", vm: "web1", bytes: 10 }, Buffer.alloc(0), false);
    t.equal(off.first?.type, "move-refused");
    t.match(String(off.first?.reason), /cog nobody is not connected to the hub/);
    const self = await send({ type: "move", to: "cog-a", vm: "web1", bytes: 10 }, Buffer.alloc(0), false);
    t.match(String(self.first?.reason), /already on cog cog-a/);
    const bad = await send({ type: "move", to: "../b", vm: "web1", bytes: 10 }, Buffer.alloc(0), false);
    t.equal(bad.first, null, "a malformed header: the stream is reset, nothing relayed");
  });

  await t.test("a target that says nothing: the hub gives up after move_answer_timeout", async (t) => {
    let offered = 0;
    b.client.setMoveHandler((s) => { offered++; s.on("error", () => {}); });
    const { first } = await send({ type: "move", to: "cog-b", vm: "web1", bytes: 10 }, Buffer.alloc(0), false);
    t.equal(offered, 1);
    t.equal(first?.type, "move-refused");
    t.match(String(first?.reason), /did not answer/);
  });

  await t.test("max_moves: a second move while one runs is refused", async (t) => {
    const r = recorder("accept");
    b.client.setMoveHandler(r.handler);
    // The first move is accepted and left open (the source has not ended it).
    const s = a.client.openMoveStream();
    s.on("error", () => {});
    const reader = new MessageReader<Msg>(s, 4096);
    s.write(encodeMessage({ type: "move", to: "cog-b", vm: "web1", bytes: 100 }));
    t.equal((await reader.next())?.type, "move-go");
    const second = await send({ type: "move", to: "cog-b", vm: "web2", bytes: 10 }, Buffer.alloc(0), false);
    t.match(String(second.first?.reason), /too many moves at once \(hub.tunnel.max_moves 1/);
    s.destroy();
    await sleep(300);
    const third = await send({ type: "move", to: "cog-b", vm: "web3", bytes: 4 }, Buffer.alloc(4), false);
    t.equal(third.first?.type, "move-go", "the slot is free again once the first move ended");
  });

  await t.test("a target that never gives its verdict: when the source gives up, the hub resets the target's stream and frees the move", async (t) => {
    let targetClosed = false;
    b.client.setMoveHandler((s) => {
      s.on("error", () => {});
      s.on("close", () => { targetClosed = true; });
      s.resume();
      s.write(encodeMessage({ type: "move-accept" }));
    });
    const s = a.client.openMoveStream();
    s.on("error", () => {});
    const reader = new MessageReader<Msg>(s, 4096);
    s.write(encodeMessage({ type: "move", to: "cog-b", vm: "web1", bytes: 4 }));
    t.equal((await reader.next())?.type, "move-go");
    s.end(Buffer.alloc(4, 1)); // the whole archive, then no verdict comes
    await sleep(300);
    t.notOk(targetClosed, "the hub waits for the verdict while the source does");
    s.destroy(); // what the source's move_verify_timeout does
    await until("the target's stream reset", () => targetClosed);
    b.client.setMoveHandler(recorder("accept").handler);
    const next = await send({ type: "move", to: "cog-b", vm: "web2", bytes: 4 }, Buffer.alloc(4), false);
    t.equal(next.first?.type, "move-go", "the move slot is free again (max_moves 1)");
  });

  await t.test("throughput of a relayed move (a comment, no timing assertion): 256 MiB from cog-a to cog-b", async (t) => {
    const r = recorder("accept");
    b.client.setMoveHandler(r.handler);
    const total = RELAY_MEASURE_BYTES;
    const s = a.client.openMoveStream();
    s.on("error", () => {});
    const reader = new MessageReader<Msg>(s, 4096);
    s.write(encodeMessage({ type: "move", to: "cog-b", vm: "big", bytes: total }));
    t.equal((await reader.next())?.type, "move-go");
    const chunk = Buffer.alloc(256 * 1024, 3);
    const started = process.hrtime.bigint();
    for (let sent = 0; sent < total; sent += chunk.length) {
      if (!s.write(chunk)) await new Promise<void>((res) => s.once("drain", () => res()));
    }
    s.end();
    const done = await reader.next();
    const secs = Number(process.hrtime.bigint() - started) / 1e9;
    t.same(done?.vm, { name: "big", got: total }, "every byte arrived");
    t.comment(`relay throughput cog → hub → cog on loopback: ${(total / 1048576 / secs).toFixed(0)} MiB/s (${total / 1048576} MiB in ${secs.toFixed(2)} s)`);
  });

  await t.test("a cog without a move handler refuses offers", async (t) => {
    b.client.setMoveHandler(null);
    const { first } = await send({ type: "move", to: "cog-b", vm: "web1", bytes: 10 }, Buffer.alloc(0), false);
    t.match(String(first?.reason), /cog-b runs no provisioner/);
  });
});

// ---- what follows a moved VM (gateway/carry.ts) ----

/** Quick DNS re-checks; the defaults are 5s / 30s / 10m / 60s. */
const QUICK_DNS = { lookup_timeout: "500ms", pending_interval: "150ms", recheck_interval: "200ms", error_retry_interval: "200ms" };
const BLOG = "blog.owner.example";
const GRANTED = "www.granted.example";
/** A name the target holds by its own grant. */
const B_OWN = "www.b-own.example";

function tcpRoute(name: string, target: number): PublishedRoute {
  return { name, kind: "tcp", target: { host: "127.0.0.1", port: target }, proxyProtocol: "none" };
}
function httpRoute(name: string, hostname: string, target: number): PublishedRoute {
  return { name, kind: "http", hostname, target: { host: "127.0.0.1", port: target }, proxyProtocol: "none" };
}
const portOf = (cog: Cog, route: string): number | undefined => {
  const st = cog.client.status(route);
  return st.state === "accepted" ? st.port : undefined;
};
const refusalOf = (cog: Cog, route: string): string => {
  const st = cog.client.status(route);
  return st.state === "refused" ? st.reason : "";
};

/** A TCP backend that answers every connection with `tag` and closes. */
async function tagServer(t: Test, tag: string): Promise<number> {
  const server = net.createServer((s) => { s.on("error", () => {}); s.end(tag); });
  const port = await listen(server);
  t.teardown(() => closeServer(server));
  return port;
}

/** What a visitor reads from the hub's TCP port `port` (empty: closed without a word). */
function readPort(port: number): Promise<string> {
  return readPortAt("127.0.0.1", port);
}
function readPortAt(host: string, port: number): Promise<string> {
  return new Promise((resolve) => {
    const s = net.connect({ port, host });
    let out = "";
    s.setEncoding("utf8");
    s.on("data", (c: string) => { out += c; });
    s.on("error", () => resolve(out));
    s.on("close", () => resolve(out));
  });
}

/** One HTTP request by Host through the hub's HTTP port: the whole answer. */
function httpGet(port: number, host: string): Promise<string> {
  return new Promise((resolve) => {
    const s = net.connect({ port, host: "127.0.0.1" }, () => s.write(`GET / HTTP/1.1\r\nHost: ${host}\r\nConnection: close\r\n\r\n`));
    let out = "";
    s.setEncoding("utf8");
    s.on("data", (c: string) => { out += c; });
    s.on("error", () => resolve(out));
    s.on("close", () => resolve(out));
  });
}

/** A target handler that accepts, reads the archive, and answers `verdict` at its end. */
function answering(verdict: "done" | "failed"): (s: Duplex, o: MoveOffer, rest: Buffer) => void {
  return (s, offer) => {
    s.on("error", () => {});
    s.on("data", () => {});
    s.on("end", () => s.end(encodeMessage(verdict === "done" ? { type: "move-done", vm: { name: offer.vm } } : { type: "move-failed", code: "import_failed", reason: "bad disk" })));
    s.resume();
    s.write(encodeMessage({ type: "move-accept" }));
  };
}

/** A whole move from `from`: header (with what to carry), `sent` of `bytes` archive bytes, then the hub's last word. */
async function moveVm(from: Cog, to: string, vm: string, carry: { routes?: string[]; hostnames?: string[] }, bytes = 1000, sent = bytes): Promise<{ first: Msg | null; last: Msg | null }> {
  const s = from.client.openMoveStream();
  s.on("error", () => {});
  const reader = new MessageReader<Msg>(s, MOVE_RESULT_MAX_BYTES);
  s.write(encodeMessage({ type: "move", to, vm, bytes, ...carry }));
  const first = await reader.next().catch(() => null);
  if (first?.type !== "move-go") return { first, last: null };
  s.end(Buffer.alloc(sent, 5));
  return { first, last: await reader.next().catch(() => null) };
}

t.test("on move-done the VM's hub port and DNS-proven name follow it; refused, failed, forged and over-quota moves change nothing", async (t) => {
  const dir = tmpDir();
  const dns = await startDnsStub(t);
  const pool = await freePortRange(10);
  const hubCfg = hubConfig(dir, { listen: { tcp_ports: [pool.spec] }, default_tcp_ports_per_cog: 3, domains: { resolver: dns.address, ...QUICK_DNS } });
  const hub = await startTestHub(hubCfg);
  t.teardown(() => hub.close());
  // cog-a holds a name by the operator's grant too: that one does not follow.
  const a = await enrolledCog(hubCfg, hub, cogConfig(dir, "cog-a", hub.ports.tunnel, []), "cog-a", { hostnames: [GRANTED] });
  t.teardown(() => a.close());
  const b = await enrolledCog(hubCfg, hub, cogConfig(dir, "cog-b", hub.ports.tunnel, []), "cog-b", { hostnames: [B_OWN] });
  t.teardown(() => b.close());
  const m = await enrolledCog(hubCfg, hub, cogConfig(dir, "cog-m", hub.ports.tunnel, []), "cog-m");
  t.teardown(() => m.close());
  const [tagA, tagB] = [await tagServer(t, "from-a"), await tagServer(t, "from-b")];
  const [webA, webB] = [await httpBackend("web-a"), await httpBackend("web-b")];
  t.teardown(() => webA.close());
  t.teardown(() => webB.close());
  const ca = hub.pki.caFingerprint;
  const store = hub.store;

  // web1 runs on cog-a: its SSH port, and blog.owner.example proven by DNS for cog-a.
  await dns.setTxt(challengeName(BLOG), domainProofValue(ca, "cog-a", BLOG));
  a.client.publish("vm:web1", [tcpRoute("vm-web1-ssh", tagA), httpRoute("vm-web1-blog", BLOG, webA.port)]);
  await until("web1's routes on cog-a", () => portOf(a, "vm-web1-ssh") !== undefined && a.client.status("vm-web1-blog").state === "accepted");
  const port = portOf(a, "vm-web1-ssh")!;
  t.equal(await readPort(port), "from-a");
  // Stopped for the move: its routes go, its port assignment and its claim stay cog-a's.
  a.client.withdraw("vm:web1");
  await until("web1's routes withdrawn", () => a.client.status("vm-web1-ssh").state === "pending");
  // The target publishes the imported VM before its verdict reaches the hub: a new port, the name refused.
  b.client.publish("vm:web1", [tcpRoute("vm-web1-ssh", tagB), httpRoute("vm-web1-blog", BLOG, webB.port)]);
  await until("web1's routes on cog-b", () => portOf(b, "vm-web1-ssh") !== undefined && refusalOf(b, "vm-web1-blog") !== "");
  const newPort = portOf(b, "vm-web1-ssh")!;
  t.not(newPort, port, "cog-b got a new port for now");

  await t.test("a refused move and a failed import leave the port and the name with the source", async (t) => {
    b.client.setMoveHandler(recorder("refuse").handler);
    const refused = await moveVm(a, "cog-b", "web1", { routes: ["vm-web1-ssh"], hostnames: [BLOG] });
    t.equal(refused.first?.type, "move-refused");
    b.client.setMoveHandler(answering("failed"));
    const failed = await moveVm(a, "cog-b", "web1", { routes: ["vm-web1-ssh"], hostnames: [BLOG] });
    t.equal(failed.last?.type, "move-failed");
    t.equal(failed.last?.carried, undefined);
    // A target that says done before the whole archive passed the hub imported nothing whole.
    b.client.setMoveHandler(answering("done"));
    const short = await moveVm(a, "cog-b", "web1", { routes: ["vm-web1-ssh"], hostnames: [BLOG] }, 1000, 400);
    t.equal(short.last?.type, "move-done");
    t.equal(short.last?.carried, undefined, "nothing carried for a move whose archive did not pass in full");
    t.same(await store.portOwner(port), { cog: "cog-a", route: "vm-web1-ssh" });
    t.equal(await store.portFor("cog-b", "vm-web1-ssh"), newPort);
    t.same((await store.domainProofsFor(BLOG)).filter((p) => p.state === "verified").map((p) => p.cog), ["cog-a"]);
  });

  await t.test("another cog naming web1's route and name in its header gets none of them", async (t) => {
    b.client.setMoveHandler(answering("done"));
    const forged = await moveVm(m, "cog-b", "web1", { routes: ["vm-web1-ssh"], hostnames: [BLOG] });
    t.equal(forged.last?.type, "move-done");
    const carried = forged.last?.carried as MoveCarried;
    t.same(carried.ports, [{ route: "vm-web1-ssh", port: null, state: "not-held" }]);
    t.equal(carried.hostnames[0]?.state, "needs-proof");
    t.match(String(carried.hostnames[0]?.reason), /cog cog-m held no DNS proof of it; create the DNS record _capsul-challenge\.blog\.owner\.example\. TXT/);
    t.same(carriedLines("web1", "cog-m", "cog-b", carried), [
      "its SSH port is the one cog-b gets from the hub (capsul vm show web1 on cog-b); cog-m held none for it",
      `blog.owner.example: did not follow: cog cog-m held no DNS proof of it; create the DNS record _capsul-challenge.blog.owner.example. TXT "${domainProofValue(ca, "cog-b", BLOG)}" for cog cog-b`,
    ], "what the CLI prints");
    t.same(await store.portOwner(port), { cog: "cog-a", route: "vm-web1-ssh" }, "cog-a's port is untouched");
    t.equal(await store.portFor("cog-b", "vm-web1-ssh"), newPort);
    t.same((await store.domainProofsFor(BLOG)).filter((p) => p.state === "verified").map((p) => p.cog), ["cog-a"], "cog-a's claim is untouched");
  });

  await t.test("move-done: the port and the proven name follow, the target's new port is released, visitors reach the target", async (t) => {
    b.client.setMoveHandler(answering("done"));
    const done = await moveVm(a, "cog-b", "web1", { routes: ["vm-web1-ssh"], hostnames: [BLOG, GRANTED, B_OWN] });
    t.equal(done.last?.type, "move-done");
    const carried = done.last?.carried as MoveCarried;
    t.same(carried.ports, [{ route: "vm-web1-ssh", port, state: "followed" }]);
    t.same(carried.hostnames, [
      { hostname: BLOG, state: "followed" },
      { hostname: GRANTED, state: "needs-grant", reason: "granted to cog cog-a by the hub operator; ask the hub operator to grant it to cog cog-b (hub.cogs in capsul.yaml)" },
      { hostname: B_OWN, state: "granted" },
    ]);
    t.same(carriedLines("web1", "cog-a", "cog-b", carried), [
      `its SSH port is still ${port}: it followed the VM to cog-b`,
      "blog.owner.example: followed (its DNS proof moved to cog-b; keep the TXT record as it is)",
      "www.granted.example: did not follow: granted to cog cog-a by the hub operator; ask the hub operator to grant it to cog cog-b (hub.cogs in capsul.yaml)",
      "www.b-own.example: cog-b holds it by its own grant",
    ], "what the CLI prints");
    t.same((await hub.store.grants("cog-a")).hostnames, [GRANTED], "the operator's grant stays cog-a's");
    t.same(await store.portOwner(port), { cog: "cog-b", route: "vm-web1-ssh" });
    t.equal(await store.portOwner(newPort), undefined, "the port cog-b got meanwhile is free again");
    t.equal(await store.portFor("cog-a", "vm-web1-ssh"), undefined);
    await until("cog-b's route accepted on the old port", () => portOf(b, "vm-web1-ssh") === port);
    t.equal(await readPort(port), "from-b", "the old port reaches the target");
    t.equal(await readPort(newPort), "", "the meanwhile port is closed");
    await until("cog-b's name accepted", () => b.client.status("vm-web1-blog").state === "accepted");
    t.match(await httpGet(hub.ports.http!, BLOG), /web-b/);
    const claim = (await store.domainProofsFor(BLOG)).find((p) => p.cog === "cog-b");
    t.match(claim, { state: "verified", proofCog: "cog-a", value: domainProofValue(ca, "cog-a", BLOG) }, "the claim keeps the owner's record");
    // The re-check keeps finding the record the owner made for cog-a.
    const lookups = hub.domains.lookups;
    await until("two re-checks", () => hub.domains.lookups >= lookups + 2);
    t.equal(b.client.status("vm-web1-blog").state, "accepted", "still routed after re-checks");
    // When the owner's record goes, the name is withdrawn, and cog-b is asked for its own record.
    await dns.clearTxt(challengeName(BLOG));
    await until("the name withdrawn", () => refusalOf(b, "vm-web1-blog") !== "");
    await until("the refusal names cog-b's own record", () => refusalOf(b, "vm-web1-blog").includes(domainProofValue(ca, "cog-b", BLOG)));
  });

  await t.test("a port the target may not hold (its pool limit) stays with the source, and the move says why", async (t) => {
    a.client.publish("vm:web3", [tcpRoute("vm-web3-ssh", tagA)]);
    await until("web3 on cog-a", () => portOf(a, "vm-web3-ssh") !== undefined);
    const p3 = portOf(a, "vm-web3-ssh")!;
    a.client.withdraw("vm:web3");
    b.client.publish("extra", [tcpRoute("x1", tagB), tcpRoute("x2", tagB)]);
    await until("cog-b at its limit of 3", () => portOf(b, "x1") !== undefined && portOf(b, "x2") !== undefined);
    b.client.setMoveHandler(answering("done"));
    const done = await moveVm(a, "cog-b", "web3", { routes: ["vm-web3-ssh"] });
    const carried = done.last?.carried as MoveCarried;
    t.equal(carried.ports[0]?.state, "kept");
    t.match(String(carried.ports[0]?.reason), /cog cog-b already holds 3 hub TCP ports, its limit \(hub\.default_tcp_ports_per_cog: 3\)/);
    t.same(carriedLines("web3", "cog-a", "cog-b", carried), [
      `its SSH port is a new one on cog-b (capsul vm show web3 on cog-b): hub port ${p3} stays with cog-a, because cog cog-b already holds 3 hub TCP ports, its limit (hub.default_tcp_ports_per_cog: 3)`,
    ]);
    t.same(await store.portOwner(p3), { cog: "cog-a", route: "vm-web3-ssh" }, "the port stays with cog-a");
  });
});

t.test("two hub endpoints on one SQLite store: after a move through one, both serve the old port and the proven name for the target", async (t) => {
  const dir = tmpDir();
  const pool = await freePortRange(6);
  const dns = await startDnsStub(t);
  // Each endpoint has its own public TCP listeners: the second on another loopback address.
  const endpoint = (name: string, tcpHost: string) => ({
    endpoint: { name, advertise: "127.0.0.1:0", heartbeat_interval: "100ms", timeout: "1s" }, listen: { tcp_host: tcpHost, tcp_ports: [pool.spec] },
    domains: { resolver: dns.address, ...QUICK_DNS },
  });
  const cfgOne = hubConfig(dir, endpoint("one", "127.0.0.1"));
  const one = await startTestHub(cfgOne);
  t.teardown(() => one.close());
  const two = await startTestHub(hubConfig(dir, endpoint("two", "127.0.0.2")));
  t.teardown(() => two.close());
  const a = await enrolledCog(cfgOne, one, cogConfig(dir, "cog-a", one.ports.tunnel, []), "cog-a");
  t.teardown(() => a.close());
  const b = await enrolledCog(cfgOne, one, cogConfig(dir, "cog-b", one.ports.tunnel, []), "cog-b");
  t.teardown(() => b.close());
  await until("both cogs on both endpoints", () => a.client.connectedEndpoints().length === 2 && b.client.connectedEndpoints().length === 2);
  const [tagA, tagB] = [await tagServer(t, "from-a"), await tagServer(t, "from-b")];
  const [webA, webB] = [await httpBackend("web-a"), await httpBackend("web-b")];
  t.teardown(() => webA.close());
  t.teardown(() => webB.close());
  const onBoth = (port: number, cog: string | undefined): boolean =>
    one.router.lookupPort(port)?.cog === cog && two.router.lookupPort(port)?.cog === cog;
  const nameOnBoth = (cog: string | undefined): boolean =>
    one.router.lookupHost("http", BLOG)?.cog === cog && two.router.lookupHost("http", BLOG)?.cog === cog;

  await dns.setTxt(challengeName(BLOG), domainProofValue(one.pki.caFingerprint, "cog-a", BLOG));
  a.client.publish("vm:web1", [tcpRoute("vm-web1-ssh", tagA), httpRoute("vm-web1-blog", BLOG, webA.port)]);
  await until("web1's port on cog-a", () => portOf(a, "vm-web1-ssh") !== undefined);
  const port = portOf(a, "vm-web1-ssh")!;
  await until("both endpoints route its port and name to cog-a", () => onBoth(port, "cog-a") && nameOnBoth("cog-a"));
  a.client.withdraw("vm:web1");
  await until("withdrawn on both", () => onBoth(port, undefined) && nameOnBoth(undefined));
  b.client.publish("vm:web1", [tcpRoute("vm-web1-ssh", tagB), httpRoute("vm-web1-blog", BLOG, webB.port)]);
  await until("a new port for cog-b", () => portOf(b, "vm-web1-ssh") !== undefined);
  const newPort = portOf(b, "vm-web1-ssh")!;
  await until("both endpoints route the new port to cog-b", () => onBoth(newPort, "cog-b"));
  t.ok(nameOnBoth(undefined), "the name is cog-a's: neither endpoint routes it to cog-b");

  b.client.setMoveHandler(answering("done"));
  const done = await moveVm(a, "cog-b", "web1", { routes: ["vm-web1-ssh"], hostnames: [BLOG] });
  t.same((done.last?.carried as MoveCarried).ports, [{ route: "vm-web1-ssh", port, state: "followed" }]);
  t.same((done.last?.carried as MoveCarried).hostnames, [{ hostname: BLOG, state: "followed" }]);
  await until("both endpoints route the old port and the name to cog-b and the meanwhile port to nobody",
    () => onBoth(port, "cog-b") && onBoth(newPort, undefined) && nameOnBoth("cog-b"));
  t.equal(await readPortAt("127.0.0.1", port), "from-b", "endpoint one's listener reaches the target");
  t.equal(await readPortAt("127.0.0.2", port), "from-b", "endpoint two's listener reaches the target");
  t.equal(await readPortAt("127.0.0.2", newPort), "", "endpoint two closed the meanwhile port");
  t.match(await httpGet(one.ports.http!, BLOG), /web-b/, "endpoint one serves the name from the target");
  t.match(await httpGet(two.ports.http!, BLOG), /web-b/, "endpoint two too");
});
