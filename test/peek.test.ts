import t from "tap";
import { readFileSync } from "node:fs";
import { createServer, connect, type AddressInfo, type Server, type Socket } from "node:net";
import { dirname, join } from "node:path";
import { fileURLToPath } from "node:url";
import { setTimeout as sleep } from "node:timers/promises";
import { parseClientHello } from "../gateway/clienthello.js";
import { parseHttpHead } from "../gateway/httphost.js";
import { peek, PEEK_MAX_BYTES, PEEK_TIMEOUT_MS } from "../gateway/peek.js";

const FIXTURES = join(dirname(fileURLToPath(import.meta.url)), "fixtures", "clienthello");
const manifest: { file: string; sni: string | null; alpn: string[] }[] = JSON.parse(readFileSync(join(FIXTURES, "fixtures.json"), "utf8"));
const fixture = manifest.find((f) => f.sni !== null && f.alpn.length > 0)!;
const hello = readFileSync(join(FIXTURES, fixture.file));

/** A loopback server whose accepted sockets are handed out in order. Closed by the test teardown. */
async function loopback(t: { teardown: (fn: () => void) => void }, opts: { pauseOnConnect?: boolean } = {}) {
  const queue: Socket[] = [];
  const waiters: ((s: Socket) => void)[] = [];
  const open = new Set<Socket>();
  const server: Server = createServer({ pauseOnConnect: opts.pauseOnConnect ?? false, allowHalfOpen: true }, (s) => {
    open.add(s);
    const w = waiters.shift();
    if (w) w(s);
    else queue.push(s);
  });
  await new Promise<void>((resolve) => server.listen(0, "127.0.0.1", resolve));
  const port = (server.address() as AddressInfo).port;
  t.teardown(() => {
    for (const s of open) s.destroy();
    server.close();
  });
  return {
    /** Connects a client and returns both ends. */
    async pair(): Promise<{ client: Socket; server: Socket }> {
      const client = connect({ port, host: "127.0.0.1", noDelay: true, allowHalfOpen: true });
      client.on("error", () => {});
      open.add(client);
      const server = await new Promise<Socket>((resolve) => {
        const s = queue.shift();
        if (s) resolve(s);
        else waiters.push(resolve);
      });
      await new Promise<void>((resolve) => (client.connecting ? client.once("connect", () => resolve()) : resolve()));
      return { client, server };
    },
  };
}

function readAll(socket: Socket): Promise<Buffer> {
  return new Promise((resolve) => {
    const chunks: Buffer[] = [];
    socket.on("data", (c: Buffer) => chunks.push(c));
    socket.once("end", () => resolve(Buffer.concat(chunks)));
    // peek() leaves the socket explicitly paused: a 'data' listener alone does not resume it.
    socket.resume();
  });
}

t.test("defaults are named constants", async (t) => {
  t.equal(PEEK_TIMEOUT_MS, 5000);
  t.ok(PEEK_MAX_BYTES > 16 * 1024);
});

t.test("ClientHello arriving one byte per write", async (t) => {
  const { pair } = await loopback(t);
  const { client, server } = await pair();
  const listenersBefore = server.listenerCount("data") + server.listenerCount("error") + server.listenerCount("end");
  const outcome = peek(server, parseClientHello, { timeoutMs: 30_000, maxBytes: PEEK_MAX_BYTES });
  for (const byte of hello) {
    client.write(Buffer.from([byte]));
    await sleep(1);
  }
  const r = await outcome;
  t.equal(r.kind, "ok");
  if (r.kind !== "ok") return;
  t.equal(r.value.sni, fixture.sni);
  t.same(r.value.alpn, fixture.alpn);
  t.equal(r.value.consumed, hello.length);
  t.same(r.bytes, hello, "bytes are exactly what was read");
  t.ok(server.isPaused(), "socket left paused");
  t.equal(server.listenerCount("data") + server.listenerCount("error") + server.listenerCount("end"), listenersBefore, "listeners removed");
});

t.test("a hello dripped one byte per segment in one-byte records: a few parser calls, not one per byte", async (t) => {
  // The fixture's handshake message, re-framed one byte per TLS record (6 wire bytes per byte):
  // the most a client can make a parser re-read. It used to cost one full parse per segment.
  const payload: Buffer[] = [];
  for (let off = 0; off < hello.length; off += 5 + hello.readUInt16BE(off + 3)) {
    payload.push(hello.subarray(off + 5, off + 5 + hello.readUInt16BE(off + 3)));
  }
  const msg = Buffer.concat(payload);
  const drip = Buffer.concat([...msg].map((b) => Buffer.from([22, 3, 1, 0, 1, b])));
  const lb = await loopback(t);
  const { client, server } = await lb.pair();
  let calls = 0;
  const outcome = peek(server, (b) => { calls++; return parseClientHello(b); }, { timeoutMs: 60_000 });
  let chunks = 0;
  server.on("data", () => { chunks++; });
  for (let i = 0; i < drip.length; i++) {
    client.write(drip.subarray(i, i + 1));
    await new Promise((r) => setImmediate(r));
  }
  const r = await outcome;
  t.equal(r.kind, "ok", "the dripped hello is recognised");
  if (r.kind === "ok") t.equal(r.value.sni, fixture.sni);
  t.equal(r.bytes.length, drip.length, "every byte kept");
  t.ok(r.bytes.equals(drip), "in order");
  t.ok(chunks > 100, `the bytes arrived in ${chunks} separate reads`);
  t.ok(calls <= 100, `${calls} parser calls for ${drip.length} bytes in ${chunks} reads`);
});

t.test("nothing is lost: bytes after the hello stay readable, half-close survives", async (t) => {
  const { pair } = await loopback(t);
  const { client, server } = await pair();
  const outcome = peek(server, parseClientHello, { timeoutMs: 30_000, maxBytes: PEEK_MAX_BYTES });
  // The hello and the first bytes after it in one write, so they likely share a chunk.
  const after1 = Buffer.from("EARLY-DATA-IN-SAME-SEGMENT");
  client.write(Buffer.concat([hello, after1]));
  const r = await outcome;
  t.equal(r.kind, "ok");
  // More data after the peek finished, then FIN; nothing is read until we resume.
  const after2 = Buffer.alloc(256 * 1024, 0x61);
  client.end(after2);
  await sleep(20); // give the bytes time to arrive while the socket is paused (not a timing assertion)
  const rest = readAll(server); // attaching 'data' resumes the socket
  const all = Buffer.concat([r.bytes, await rest]);
  t.equal(all.length, hello.length + after1.length + after2.length, "every byte accounted for");
  t.same(all, Buffer.concat([hello, after1, after2]));
  // Half-close: the client has sent FIN but still reads our reply.
  const reply = readAll(client);
  server.end("REPLY");
  t.equal((await reply).toString(), "REPLY");
});

t.test("slow client: timeout outcome with the partial bytes", async (t) => {
  const { pair } = await loopback(t);
  const { client, server } = await pair();
  const outcome = peek(server, parseClientHello, { timeoutMs: 100, maxBytes: PEEK_MAX_BYTES });
  client.write(hello.subarray(0, 10));
  const r = await outcome;
  t.equal(r.kind, "timeout");
  t.same(r.bytes, hello.subarray(0, 10));
  t.ok(server.isPaused());
  t.notOk(server.destroyed, "peek never destroys; the caller decides");
});

t.test("silent client: timeout with no bytes", async (t) => {
  const { pair } = await loopback(t);
  const { server } = await pair();
  const r = await peek(server, parseClientHello, { timeoutMs: 50, maxBytes: PEEK_MAX_BYTES });
  t.same(r, { kind: "timeout", bytes: Buffer.alloc(0) });
});

t.test("too large: cap reached without an answer", async (t) => {
  const { pair } = await loopback(t);
  const { client, server } = await pair();
  const outcome = peek(server, (b) => parseHttpHead(b, 1 << 20), { timeoutMs: 30_000, maxBytes: 1000 });
  client.write("GET / HTTP/1.1\r\nHost: a.example\r\n");
  for (let i = 0; i < 10; i++) client.write(`X-Pad-${i}: ${"p".repeat(200)}\r\n`);
  const r = await outcome;
  t.equal(r.kind, "too-large");
  t.ok(r.bytes.length >= 1000);
});

t.test("invalid bytes: invalid outcome with reason and bytes", async (t) => {
  const { pair } = await loopback(t);
  const { client, server } = await pair();
  const outcome = peek(server, parseClientHello, { timeoutMs: 30_000, maxBytes: PEEK_MAX_BYTES });
  client.write("GET / HTTP/1.1\r\nHost: wrong.port\r\n\r\n");
  const r = await outcome;
  t.equal(r.kind, "invalid");
  if (r.kind === "invalid") t.match(r.reason, /not a handshake record/);
  t.equal(r.bytes.subarray(0, 3).toString(), "GET");
});

t.test("client closes early: closed outcome", async (t) => {
  const { pair } = await loopback(t);
  const { client, server } = await pair();
  const outcome = peek(server, parseClientHello, { timeoutMs: 30_000, maxBytes: PEEK_MAX_BYTES });
  client.end(hello.subarray(0, 50));
  const r = await outcome;
  t.equal(r.kind, "closed");
  t.same(r.bytes, hello.subarray(0, 50));
});

t.test("connection reset during the peek: closed outcome, no uncaught error", async (t) => {
  const { pair } = await loopback(t);
  const { client, server } = await pair();
  const outcome = peek(server, parseClientHello, { timeoutMs: 30_000, maxBytes: PEEK_MAX_BYTES });
  client.write(hello.subarray(0, 5));
  await sleep(10);
  client.resetAndDestroy();
  const r = await outcome;
  t.equal(r.kind, "closed");
});

t.test("already closed socket: closed at once", async (t) => {
  const { pair } = await loopback(t);
  const { server } = await pair();
  server.destroy();
  t.same(await peek(server, parseClientHello, { timeoutMs: 30_000, maxBytes: PEEK_MAX_BYTES }), { kind: "closed", bytes: Buffer.alloc(0) });
});

t.test("socket accepted paused (pauseOnConnect) and HTTP parser", async (t) => {
  const { pair } = await loopback(t, { pauseOnConnect: true });
  const { client, server } = await pair();
  const head = "GET /.well-known/acme-challenge/tok HTTP/1.1\r\nHost: VM.example\r\n\r\n";
  client.write(head + "body");
  const r = await peek(server, parseHttpHead, { timeoutMs: 30_000, maxBytes: 16384 });
  t.equal(r.kind, "ok");
  if (r.kind !== "ok") return;
  t.equal(r.value.host, "vm.example");
  t.equal(r.value.path, "/.well-known/acme-challenge/tok");
  t.equal(r.value.headLength, head.length);
});

t.test("a throwing parser becomes an invalid outcome", async (t) => {
  const { pair } = await loopback(t);
  const { client, server } = await pair();
  const outcome = peek(
    server,
    (): { type: "need-more" } => {
      throw new Error("boom");
    },
    { timeoutMs: 30_000, maxBytes: 100 },
  );
  client.write("x");
  const r = await outcome;
  t.match(r, { kind: "invalid", reason: /parser threw: boom/ });
});

t.test("many concurrent peeks, each with its own timer", async (t) => {
  const { pair } = await loopback(t);
  const N = 50;
  const pairs = await Promise.all(Array.from({ length: N }, () => pair()));
  const outcomes = pairs.map(({ server }) => peek(server, parseClientHello, { timeoutMs: 30_000, maxBytes: PEEK_MAX_BYTES }));
  // Half of them send the hello in two pieces, the others never finish and close.
  pairs.forEach(({ client }, i) => {
    if (i % 2 === 0) {
      client.write(hello.subarray(0, 7));
      client.write(hello.subarray(7));
    } else {
      client.end(hello.subarray(0, 7));
    }
  });
  const results = await Promise.all(outcomes);
  t.equal(results.filter((r) => r.kind === "ok").length, N / 2);
  t.equal(results.filter((r) => r.kind === "closed").length, N / 2);
});
