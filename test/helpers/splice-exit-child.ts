/**
 * Run by test/splice-exit.test.ts in a process of its own: the visitor <-> hub half of
 * a splice, with a real tunnel (two MuxSessions over loopback TCP). The cog sends FIN
 * on the stream; the hub's splice passes it on (visitor socket end(), a TCP shutdown
 * that libuv runs on its next loop turn) and, before that turn, the tunnel dies, so
 * the splice aborts the visitor socket it has just ended. Then everything is closed
 * and the process must exit by itself. Prints one line per event on stdout.
 */
import { once } from "node:events";
import net from "node:net";
import { MuxSession, type MuxStream } from "../../protocol/mux.js";
import { splice } from "../../protocol/splice.js";

const say = (line: string): void => { process.stdout.write(line + "\n"); };

async function connectedPair(): Promise<{ ours: net.Socket; theirs: net.Socket }> {
  const srv = net.createServer({ allowHalfOpen: true });
  srv.listen(0, "127.0.0.1");
  await once(srv, "listening");
  const accepted = once(srv, "connection") as Promise<[net.Socket]>;
  const theirs = net.connect({ port: (srv.address() as net.AddressInfo).port, host: "127.0.0.1", allowHalfOpen: true });
  const [ours] = await accepted;
  await once(theirs, "connect");
  srv.close();
  return { ours, theirs };
}

// visitor ---- front (hub side, `ours`) [splice] hub stream ==tunnel== cog stream
const front = await connectedPair();
const tunnel = await connectedPair();
const hubSession = new MuxSession(tunnel.ours, { role: "client" });
const cogSession = new MuxSession(tunnel.theirs, { role: "server" });
hubSession.on("error", () => {});
cogSession.on("error", () => {});
front.theirs.on("error", () => {});
front.theirs.resume();
front.theirs.on("close", () => say("visitor closed"));
front.ours.on("error", (err: NodeJS.ErrnoException) => say(`front error ${err.code} ${err.syscall ?? ""}`.trim()));
front.ours.on("close", () => say("front closed"));

const hubStream: MuxStream = hubSession.open();
hubStream.on("error", () => {});
splice(front.ours, hubStream, (err) => say(`splice closed${err ? ` (${err.message})` : ""}`));
hubStream.once("end", () => {
  // Splice's own 'end' listener ran first: front.ours.end() has queued its shutdown.
  say(`stream end: front writableEnded=${front.ours.writableEnded} writableFinished=${front.ours.writableFinished}`);
  tunnel.ours.destroy(new Error("tunnel lost"));
});
hubStream.write("hello");
const [cogStream] = (await once(cogSession, "stream")) as [MuxStream];
cogStream.on("error", () => {});
cogStream.resume();
cogStream.end(); // FIN towards the hub

// Without the fix 'close' never comes: the reset failed (EINVAL) and the handle leaked.
await new Promise((resolve) => front.ours.once("close", resolve).once("error", resolve));
cogSession.destroy();
tunnel.theirs.destroy();
front.theirs.destroy();
say("done, waiting to exit");
