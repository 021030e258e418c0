/**
 * Issue 9 "Limits": "2,000 connections from one source that send nothing do not delay a
 * second source's handshakes", on a real hub with a real cog over loopback sockets.
 *
 * An attacker process (test/helpers/silent-holder.ts) opens 2,000 TCP connections from
 * 127.0.0.2 to the hub's TLS port, all at once, and sends nothing. While they arrive and
 * while they are held, 127.0.0.3 completes TLS handshakes through the hub and the cog with
 * a TLS backend and reads its answer. Twice: with the default per-source caps (the hub
 * holds 64 of them un-peeked and closes the rest at accept, hub.limits.max_unpeeked_per_ip),
 * and with the caps raised so that the hub holds all 2,000 (each with its ClientHello
 * deadline running). The assertions are on completion and on the listener's accept queue
 * (it must hold the whole burst: hub.limits.listen_backlog), never on timing; the handshake
 * times are printed for the record.
 *
 * What it found: the public listeners' backlog of 1,024 overflowed under the burst (Linux
 * counted ~800 ListenOverflows per run), and a connection of any source arriving then waits
 * for a SYN-ACK retry a second later; now 4,096 (configurable). In-process attackers are
 * not used: the test's own 2,000 connect() calls would stall the hub's event loop, which is
 * the test's cost, not the hub's.
 *
 * File descriptors: each side holds ~2,000 (the attacker's ends in the child, the hub's
 * here). Node raises its soft RLIMIT_NOFILE to the hard limit at start; if that is still too
 * low the test raises it with prlimit(1) (root only; the child inherits it) or fails saying why.
 */
import t, { type Test } from "tap";
import { execFileSync, spawn, type ChildProcess } from "node:child_process";
import fs from "node:fs";
import path from "node:path";
import tls from "node:tls";
import { fileURLToPath } from "node:url";
import { startHub, type Hub } from "../gateway/hub.js";
import { cogConfig, enrolledCog, HUB_DOMAIN, hubConfig, testLogger, tlsBackend, tmpDir } from "./helpers/cluster.js";

const SILENT = 2_000;
const HANDSHAKES = 20;
const ATTACKER = "127.0.0.2";
const VISITOR = "127.0.0.3";
/** The hub's end of every silent connection, the handshakes, the cog and tap: with room to spare (also for the child). */
const FDS_NEEDED = SILENT + 1_000;
const SITE = `s.flood.${HUB_DOMAIN}`;
const POLL_MS = 50;
const HERE = path.dirname(fileURLToPath(import.meta.url));

async function until(what: string, cond: () => boolean, maxMs = 60_000): Promise<void> {
  for (let waited = 0; !cond(); waited += POLL_MS) {
    if (waited > maxMs) throw new Error(`timed out waiting for ${what}`);
    await new Promise((r) => setTimeout(r, POLL_MS));
  }
}

/** The soft open-file limit of this process (/proc/self/limits). */
function openFileLimit(): number {
  const line = fs.readFileSync("/proc/self/limits", "utf8").split("\n").find((l) => l.startsWith("Max open files"));
  const soft = line?.split(/\s{2,}/)[1];
  return soft === "unlimited" ? Infinity : Number(soft);
}

/** Makes sure this process may open `need` descriptors; null, or why it cannot. */
function ensureOpenFiles(need: number): string | null {
  if (openFileLimit() >= need) return null;
  try {
    execFileSync("prlimit", ["--pid", String(process.pid), `--nofile=${need}:${need}`], { stdio: "pipe" });
  } catch (err) {
    return `RLIMIT_NOFILE is ${openFileLimit()}, ${need} needed, and prlimit could not raise it: ${(err as Error).message.split("\n")[0]}`;
  }
  return openFileLimit() >= need ? null : `RLIMIT_NOFILE is still ${openFileLimit()} after prlimit, ${need} needed`;
}

/** The attacker, a child process (test/helpers/silent-holder.ts): SILENT connections from ATTACKER, opened at once. */
class Holder {
  private readonly child: ChildProcess;
  private out = "";
  private waiters: Array<{ re: RegExp; resolve(m: RegExpExecArray): void }> = [];

  constructor(port: number) {
    const loader = process.execArgv.filter((a) => a.includes("@tapjs/typescript"));
    this.child = spawn(process.execPath, [...loader, path.join(HERE, "helpers", "silent-holder.ts"), String(port), String(SILENT), ATTACKER], {
      stdio: ["pipe", "pipe", "inherit"],
    });
    this.child.stdout!.setEncoding("utf8");
    this.child.stdout!.on("data", (d: string) => {
      this.out += d;
      this.waiters = this.waiters.filter((w) => {
        const m = w.re.exec(this.out);
        if (m) w.resolve(m);
        return !m;
      });
    });
  }

  /** The next output line matching `re` (its match). */
  line(re: RegExp): Promise<RegExpExecArray> {
    const m = re.exec(this.out);
    if (m) return Promise.resolve(m);
    return new Promise((resolve, reject) => {
      this.waiters.push({ re, resolve });
      this.child.once("exit", (code) => reject(new Error(`silent-holder exited (${code}) before printing ${re}`)));
    });
  }

  /** Connections the attacker still holds open. */
  async open(): Promise<number> {
    this.out = "";
    this.child.stdin!.write("count\n");
    return Number((await this.line(/open (\d+)\n/))[1]);
  }

  stop(): Promise<void> {
    if (this.child.exitCode !== null) return Promise.resolve();
    return new Promise((resolve) => {
      this.child.once("exit", () => resolve());
      this.child.stdin!.end();
    });
  }
}

/** One visitor from VISITOR: TLS handshake (SNI routed by the hub, certificate of the backend), a request, its answer. */
function visit(port: number, ca: string): Promise<{ answer: string; handshakeMs: number }> {
  return new Promise((resolve, reject) => {
    const t0 = performance.now();
    let handshakeMs = 0;
    const s = tls.connect({ port, host: "127.0.0.1", localAddress: VISITOR, servername: SITE, ca });
    let answer = "";
    s.once("secureConnect", () => {
      handshakeMs = performance.now() - t0;
      s.write(`GET / HTTP/1.1\r\nHost: ${SITE}\r\nConnection: close\r\n\r\n`);
    });
    s.on("data", (d: Buffer) => { answer += d.toString("latin1"); });
    s.once("end", () => resolve({ answer, handshakeMs }));
    s.once("error", reject);
  });
}

async function flood(t: Test, limits: Record<string, unknown>, held: number): Promise<void> {
  const dir = tmpDir();
  t.teardown(() => fs.rmSync(dir, { recursive: true, force: true }));
  // The silent connections must outlive the test's handshakes: ClientHello deadline 60s.
  const hubCfg = hubConfig(dir, { limits: { client_hello_timeout: "60s", refusal_log_interval: "1h", ...limits } });
  const hub: Hub = await startHub(hubCfg, testLogger("hub"));
  t.teardown(() => hub.close());
  const site = await tlsBackend(dir, SITE, "site");
  t.teardown(() => site.close());
  const cog = await enrolledCog(hubCfg, hub, cogConfig(dir, "flood", hub.ports.tunnel, [
    { name: "s", kind: "tls", hostname: SITE, target: `127.0.0.1:${site.port}` },
  ]), "flood");
  t.teardown(() => cog.close());
  const ca = fs.readFileSync(site.caFile, "utf8");
  const port = hub.ports.tls!;
  // The accept queue must hold the whole flood: with Linux's 1024 the 2,000 overflowed it, and
  // a second source's connection arriving then was dropped too and retried a second later.
  // For a listening socket ss(8) shows the queue's size (min(backlog, somaxconn)) as Send-Q.
  const ss = execFileSync("ss", ["-Hltn", `sport = :${port}`], { encoding: "utf8" }).trim().split(/\s+/);
  t.ok(Number(ss[2]) >= SILENT, `the TLS listener queues up to ${ss[2]} connections (hub.limits.listen_backlog ${hubCfg.limits.listenBacklog}), the whole flood`);

  // Handshakes while the 2,000 arrive, then while they are held.
  const holder = new Holder(port);
  t.teardown(() => holder.stop());
  const during: number[] = [];
  let arriving = true;
  const settled = holder.line(/settled (\d+)\n/).finally(() => { arriving = false; });
  while (arriving) {
    const v = await visit(port, ca);
    t.match(v.answer, /^HTTP\/1\.1 200 OK\r\n/, `a handshake from ${VISITOR} while the silent connections arrive completed`);
    during.push(v.handshakeMs);
  }
  await settled;
  t.comment(`handshakes from ${VISITOR} while the ${SILENT} arrived: ${during.map((ms) => ms.toFixed(0)).join(", ")} ms`);
  const st = hub.visitors.stats;
  await until("the hub to have taken every silent connection", () => st.active + st.overUnpeekedLimit + st.overSourceLimit >= SILENT);
  t.equal(hub.visitors.sources.openFrom(ATTACKER), held, `the hub holds ${held} silent connections from ${ATTACKER}`);
  t.equal(st.overUnpeekedLimit, SILENT - held, `and closed the other ${SILENT - held} at accept (max_unpeeked_per_ip)`);
  t.equal(st.peekTimeout, 0, "none has reached its ClientHello deadline");
  let attackerOpen = -1;
  for (let waited = 0; (attackerOpen = await holder.open()) !== held && waited < 30_000; waited += POLL_MS) {
    await new Promise((r) => setTimeout(r, POLL_MS));
  }
  t.equal(attackerOpen, held, `the attacker sees ${held} of its connections open, the others closed by the hub`);

  const times: number[] = [];
  for (let i = 0; i < HANDSHAKES; i++) {
    const v = await visit(port, ca);
    t.match(v.answer, /^HTTP\/1\.1 200 OK\r\n[\s\S]*site s\.flood\.hub\.test/, `handshake ${i + 1} from ${VISITOR} completed and reached the backend`);
    times.push(v.handshakeMs);
  }
  times.sort((a, b) => a - b);
  t.comment(`handshakes from ${VISITOR} with ${held} silent connections held: median ${times[HANDSHAKES >> 1]!.toFixed(1)} ms, max ${times[HANDSHAKES - 1]!.toFixed(1)} ms`);
  t.equal(st.routed, HANDSHAKES + during.length, "every one routed");
  t.equal(hub.visitors.sources.openFrom(ATTACKER), held, "the silent connections were held the whole time");
  t.equal(st.peekTimeout, 0);
  t.equal(await holder.open(), held, `the attacker's side sees ${held} still open`);
}

t.test("2,000 silent connections from one source do not stop a second source's TLS handshakes", async (t) => {
  const why = ensureOpenFiles(FDS_NEEDED);
  if (why !== null) {
    t.fail(why);
    return;
  }
  t.test("default caps: the hub holds 64 (max_unpeeked_per_ip), closes the rest at accept", async (t) => {
    await flood(t, {}, 64);
  });
  t.test("caps raised: the hub holds all 2,000 un-peeked", async (t) => {
    await flood(t, { max_visitors_per_ip: 4 * SILENT, max_unpeeked_per_ip: 4 * SILENT }, SILENT);
  });
});
