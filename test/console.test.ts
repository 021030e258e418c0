/**
 * provisioner/console.ts: the VM's console socket to console.log. When QEMU exits, its last
 * words ("reboot: Power down") can still be in the socket when the provisioner sees the exit;
 * closeAtEnd() reads them to the socket's end before closing (a CI run of
 * debian-lifecycle once read a console ending in "reboot: Power do").
 */
import fs from "node:fs";
import net from "node:net";
import os from "node:os";
import path from "node:path";
import t from "tap";
import { ConsoleLog } from "../provisioner/console.js";

const LAST_WORDS = "[   49.510294] reboot: Power down\r\n";
const MAX_BYTES = 1 << 20;

/** A stand-in for QEMU's console chardev: a unix socket server that says `text` and exits. */
async function qemuConsole(t: Tap.Test): Promise<{ sock: string; sayAndExit: (text: string) => Promise<void>; peerClosed: () => Promise<void> }> {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), "capsul-console-"));
  t.teardown(() => fs.rmSync(dir, { recursive: true, force: true }));
  const sock = path.join(dir, "con.sock");
  let peer: net.Socket | null = null;
  const connected = new Promise<void>((resolve) => {
    const server = net.createServer((s) => { peer = s; s.on("error", () => {}); s.resume(); resolve(); });
    server.listen(sock);
    t.teardown(() => server.close());
  });
  return {
    sock,
    sayAndExit: async (text: string) => {
      await connected;
      // Written and the socket ended before the test's next step runs: the bytes sit in the
      // kernel's buffer, as QEMU's do when its exit is noticed.
      await new Promise<void>((resolve) => peer!.end(text, resolve));
    },
    /** Resolves when the provisioner's side hung up. */
    peerClosed: async () => {
      await connected;
      if (!peer!.destroyed) await new Promise<void>((resolve) => peer!.once("close", () => resolve()));
    },
  };
}

t.test("closeAtEnd keeps QEMU's last words", async (t) => {
  const q = await qemuConsole(t);
  const file = path.join(path.dirname(q.sock), "console.log");
  const log = new ConsoleLog(file, MAX_BYTES);
  await log.attach(q.sock);
  await q.sayAndExit(LAST_WORDS);
  // close() at this very moment (what the provisioner did) leaves console.log empty: the
  // bytes are still in the socket (checked by hand, 15 runs of 15).
  await log.closeAtEnd(5_000);
  t.equal(fs.readFileSync(file, "utf8"), LAST_WORDS, "the whole last line is in console.log");
});

t.test("closeAtEnd gives up after its timeout when the socket never ends", async (t) => {
  const q = await qemuConsole(t);
  const file = path.join(path.dirname(q.sock), "console.log");
  const log = new ConsoleLog(file, MAX_BYTES);
  await log.attach(q.sock);
  await log.closeAtEnd(200); // QEMU never ends the socket: this must still return
  await q.peerClosed();
  t.pass("it returned and hung up its side of the socket");
  log.write(Buffer.from("after close\n"));
  t.equal(fs.readFileSync(file, "utf8"), "", "nothing is written once closed");
});
