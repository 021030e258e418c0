/**
 * gateway/listeners.ts on real sockets: moving a listener keeps the connections it
 * accepted, a move to the same port on another host (which cannot be bound twice)
 * works and can be undone, and a move that cannot bind changes nothing.
 */
import t from "tap";
import net from "node:net";
import { Listener, TcpListeners } from "../gateway/listeners.js";
import { RuntimeError } from "../lib/errors.js";
import { silentLogger } from "../lib/log.js";
import { closeServer, listen } from "./helpers/cluster.js";
import { freePort, probePort } from "./helpers/procs.js";

/** A listener whose servers echo, after greeting with their generation (1 for the first server made, 2 for the next...). */
function echoListener(key = "hub.listen.http"): { l: Listener; made(): number } {
  let generation = 0;
  const l = new Listener(key, () => {
    const g = ++generation;
    return net.createServer((s) => { s.on("error", () => {}); s.write(`${g}\n`); s.pipe(s); });
  }, silentLogger);
  return { l, made: () => generation };
}

/** Every client socket, closed at the end so that the servers' connections end too. */
const clients = new Set<net.Socket>();
t.teardown(() => { for (const s of clients) s.destroy(); });

/** Connects and resolves with the greeting line and the socket. */
function connect(port: number, host = "127.0.0.1"): Promise<{ greeting: string; sock: net.Socket }> {
  return new Promise((resolve, reject) => {
    const sock = net.connect({ port, host });
    clients.add(sock);
    sock.once("error", reject);
    sock.once("data", (c: Buffer) => resolve({ greeting: c.toString().trim(), sock }));
  });
}

function echo(sock: net.Socket, text: string): Promise<string> {
  return new Promise((resolve) => {
    sock.once("data", (c: Buffer) => resolve(c.toString()));
    sock.write(text);
  });
}

t.test("a move to another port: the old socket stops accepting, its connection carries on", async (t) => {
  const { l } = echoListener();
  await l.open({ host: "127.0.0.1", port: 0 });
  const oldPort = l.port!;
  const old = await connect(oldPort);
  t.equal(old.greeting, "1");
  const change = await l.prepare({ host: "127.0.0.1", port: 0 });
  t.equal(l.port, oldPort, "nothing changes before commit");
  t.equal((await connect(oldPort)).greeting, "1", "the old socket still accepts before commit");
  change.commit();
  const newPort = l.port!;
  t.not(newPort, oldPort);
  t.equal(await probePort(oldPort), "ECONNREFUSED", "the old port is closed");
  t.equal((await connect(newPort)).greeting, "2", "the new socket accepts");
  t.equal(await echo(old.sock, "still here"), "still here", "the connection the old socket accepted carries on");
  old.sock.destroy();
  l.stop();
  t.equal(await probePort(newPort), "ECONNREFUSED", "stop() stops accepting");
});

t.test("the same port on another host (127.0.0.1 to 0.0.0.0): commit and undo", async (t) => {
  const port = await freePort();
  const { l, made } = echoListener();
  await l.open({ host: "127.0.0.1", port });
  const old = await connect(port);
  t.equal(old.greeting, "1");
  // 0.0.0.0:P cannot be bound while 127.0.0.1:P listens (EADDRINUSE): the old one goes first.
  const undo = await l.prepare({ host: "0.0.0.0", port });
  await undo.undo();
  t.same(l.address, { host: "127.0.0.1", port }, "undo: back on the old address");
  t.equal((await connect(port)).greeting, String(made()), "accepting again there (the newest socket)");
  const change = await l.prepare({ host: "0.0.0.0", port });
  change.commit();
  t.same(l.address, { host: "0.0.0.0", port });
  t.equal((await connect(port)).greeting, String(made()), "the wildcard socket accepts");
  t.equal(await echo(old.sock, "ping"), "ping", "the first connection survived both moves");
  old.sock.destroy();
  l.stop();
});

t.test("a move that cannot bind throws a RuntimeError naming the key and changes nothing", async (t) => {
  const taken = net.createServer();
  const takenPort = await listen(taken);
  t.teardown(() => closeServer(taken));
  const { l } = echoListener("hub.listen.tls");
  await l.open({ host: "127.0.0.1", port: 0 });
  const port = l.port!;
  await t.rejects(l.prepare({ host: "127.0.0.1", port: takenPort }),
    new RuntimeError(`hub.listen.tls: cannot listen on 127.0.0.1:${takenPort}: EADDRINUSE`));
  t.equal(l.port, port);
  t.equal((await connect(port)).greeting, "1", "the old socket still accepts");
  await t.rejects(new Listener("hub.listen.http", () => net.createServer(), silentLogger).open({ host: "127.0.0.1", port: takenPort }),
    new RuntimeError(`hub.listen.http: cannot listen on 127.0.0.1:${takenPort}: EADDRINUSE`), "the first bind too");
  l.stop();
});

t.test("TcpListeners.prepareHost moves every port or none", async (t) => {
  const seen: number[] = [];
  const tcp = new TcpListeners("127.0.0.1", (s, port) => { seen.push(port); s.destroy(); }, silentLogger);
  const [a, b] = [await freePort(), await freePort()];
  await tcp.open(a);
  await tcp.open(b);
  t.same(tcp.ports.sort(), [a, b].sort());
  // 127.0.0.2 is loopback too; someone holds port b there, so the move cannot be whole.
  const blocker = net.createServer();
  await new Promise<void>((resolve) => blocker.listen(b, "127.0.0.2", resolve));
  await t.rejects(tcp.prepareHost("127.0.0.2"), { message: new RegExp(`cannot listen on 127\\.0\\.0\\.2:${b}: EADDRINUSE`) });
  await closeServer(blocker);
  for (const p of [a, b]) t.equal(await probePort(p), "connected", `port ${p} still accepts on the old host`);
  const change = await tcp.prepareHost("127.0.0.2");
  change.commit();
  for (const p of [a, b]) {
    t.equal(await probePort(p), "ECONNREFUSED", `port ${p} left 127.0.0.1`);
    const s = net.connect({ port: p, host: "127.0.0.2" });
    await new Promise<void>((resolve, reject) => { s.once("connect", () => resolve()); s.once("error", reject); });
    s.destroy();
  }
  await tcp.open(a); // already open: nothing new
  tcp.stopAll();
  await t.rejects(tcp.open(a), { message: "the hub is shutting down" }, "no port opens once draining");
  t.ok(seen.length >= 4, "every connection reached the handler with its port");
});
