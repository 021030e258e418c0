/**
 * TLS 1.3 session resumption of cog tunnels (issue 12: a restarted hub resumes its cogs'
 * sessions instead of ~2 ms full mTLS handshakes). Real TLS on loopback, real key files,
 * real hubs restarted on the same data dir and port:
 * - a resumed session still shows the hub the cog's certificate (identity, serial), and one
 *   whose certificate expired since the ticket was issued is refused;
 * - tickets are bound to the CA (the session id context);
 * - the ticket key file: 0600, shared, a corrupt one gets one log line and a fresh key,
 *   rotation moves every process sharing the file to the new key;
 * - a revoked cog's resumption is refused after a restart while another cog resumes; a cog
 *   whose ticket is unknown (file deleted, corrupt) or older than
 *   hub.tunnel.session_ticket_lifetime falls back to a full handshake; a cog refreshes its
 *   ticket (cog.tunnel.session_refresh) so that a long-lived tunnel still resumes;
 * - a resuming ClientHello still names the worker in its SNI (gateway/workers.ts peeks it).
 */
import t from "tap";
import fs from "node:fs";
import net from "node:net";
import path from "node:path";
import tls from "node:tls";
import { once } from "node:events";
import { randomBytes } from "node:crypto";
import { createKeyAndCsr, loadOrCreateHubPki, peerAuthResult, signCogCsr, type HubPki } from "../certs/pki.js";
import { startHub, type Hub } from "../gateway/hub.js";
import { openHubStore } from "../gateway/store/index.js";
import { TICKET_KEY_BYTES, TICKET_KEY_FILE, TicketKeys, tunnelSessionIdContext } from "../gateway/ticketkeys.js";
import { parseClientHello } from "../gateway/clienthello.js";
import { silentLogger, type Logger } from "../lib/log.js";
import { cogConfig, enrolledCog, hubConfig, tmpDir } from "./helpers/cluster.js";
import { waitFor } from "./helpers/procs.js";

interface Line { level: string; msg: string; fields: Record<string, unknown> }

/** A Logger that keeps every line (all components), for assertions on what the hub said. */
function recorder(lines: Line[]): Logger {
  const at = (level: string) => (msg: string, fields: Record<string, unknown> = {}) => { lines.push({ level, msg, fields }); };
  const log: Logger = { debug: at("debug"), info: at("info"), warn: at("warn"), error: at("error"), child: () => log };
  return log;
}

function sleep(ms: number): Promise<void> {
  return new Promise((resolve) => setTimeout(resolve, ms));
}

/** A TLS server set up like the hub's tunnel server (gateway/tunnels.ts makeTlsServer), reporting what it saw. */
async function hubLike(t: Tap.Test, pki: HubPki, ticketKeys: Buffer, sessionIdContext = tunnelSessionIdContext(pki.caCertPem)) {
  const seen: Array<{ reused: boolean; authorized: boolean; result: ReturnType<typeof peerAuthResult> }> = [];
  const server = tls.createServer({
    key: pki.hubKeyPem, cert: pki.hubCertPem + "\n" + pki.caCertPem, ca: pki.caCertPem,
    requestCert: true, rejectUnauthorized: false, minVersion: "TLSv1.3",
    ticketKeys, sessionTimeout: 3600, sessionIdContext,
  }, (sock) => {
    seen.push({ reused: sock.isSessionReused(), authorized: sock.authorized, result: peerAuthResult(sock) });
    sock.on("error", () => {});
    sock.end("bye");
  });
  server.listen(0, "127.0.0.1");
  await once(server, "listening");
  t.teardown(() => new Promise<void>((resolve) => server.close(() => resolve())));
  return { port: (server.address() as net.AddressInfo).port, seen };
}

/** Dials like the cog (tunnel-client/dial.ts), offering `session`; resolves with the ticket the hub sent (if any) once the hub closed. */
async function dial(port: number, pki: HubPki, cog: { key: string; cert: string }, session?: Buffer): Promise<{ reused: boolean; ticket: Buffer | null }> {
  const sock = tls.connect({
    host: "127.0.0.1", port, minVersion: "TLSv1.3", ca: pki.caCertPem, key: cog.key, cert: cog.cert, session,
    checkServerIdentity: () => undefined,
  });
  let ticket: Buffer | null = null;
  sock.on("session", (s: Buffer) => { ticket = s; });
  sock.on("data", () => {});
  await once(sock, "secureConnect");
  const reused = sock.isSessionReused();
  await once(sock, "end");
  sock.end();
  return { reused, ticket };
}

t.test("a resumed session carries the cog's certificate; once it has expired the resumption is refused", async (t) => {
  const dir = tmpDir("capsul-resume-");
  t.teardown(() => fs.rmSync(dir, { recursive: true, force: true }));
  const pki = await loadOrCreateHubPki(dir, ["localhost", "127.0.0.1"]);
  const { keyPem, csrPem } = await createKeyAndCsr("brief");
  // Valid from a minute ago until 3 s from now (X.509 dates have whole seconds).
  const notAfterMs = Math.ceil((Date.now() + 3_000) / 1000) * 1000;
  const { certPem } = await signCogCsr(pki, csrPem, "brief", { notBefore: new Date(notAfterMs - 63_000), validityMs: 63_000 });
  const cog = { key: keyPem, cert: certPem };
  const hub = await hubLike(t, pki, randomBytes(TICKET_KEY_BYTES));

  const full = await dial(hub.port, pki, cog);
  t.equal(full.reused, false);
  t.ok(full.ticket, "the hub sent a session ticket");
  const first = hub.seen[0]!;
  t.equal(first.reused, false);
  t.ok(first.result.ok && first.result.cogName === "brief", "full handshake: the cog is named by its certificate");

  const again = await dial(hub.port, pki, cog, full.ticket!);
  t.equal(again.reused, true, "the cog resumed");
  const resumed = hub.seen[1]!;
  t.equal(resumed.reused, true, "the hub resumed");
  t.same(resumed.result, first.result, "a resumed session shows the same certificate: name, serial, validity");

  await sleep(notAfterMs + 1_100 - Date.now());
  const late = await dial(hub.port, pki, cog, full.ticket!);
  t.equal(late.reused, true, "the ticket is still accepted by TLS (lifetime 1 h)…");
  const expired = hub.seen[2]!;
  t.equal(expired.reused, true);
  t.equal(expired.authorized, true, "…and OpenSSL keeps the verdict of the full handshake");
  t.same(expired.result.ok ? "ok" : [expired.result.code, /has expired/.test(expired.result.reason)], ["CERT_HAS_EXPIRED", true],
    "but the hub's check refuses the expired certificate");
});

t.test("tickets are bound to the CA: another CA's server (same ticket key) does a full handshake", async (t) => {
  const dir = tmpDir("capsul-resume-");
  t.teardown(() => fs.rmSync(dir, { recursive: true, force: true }));
  const pki = await loadOrCreateHubPki(dir, ["localhost", "127.0.0.1"]);
  const { keyPem, csrPem } = await createKeyAndCsr("bound");
  const { certPem } = await signCogCsr(pki, csrPem, "bound", { validityMs: 86_400_000 });
  const cog = { key: keyPem, cert: certPem };
  const key = randomBytes(TICKET_KEY_BYTES);
  const one = await hubLike(t, pki, key);
  const { ticket } = await dial(one.port, pki, cog);
  t.equal((await dial(one.port, pki, cog, ticket!)).reused, true, "same CA: resumed");
  // A tampered ticket (one byte of its sealed part flipped, as a man in the middle or a
  // forger would send it): the hub's HMAC check fails, the handshake is a full one.
  const probe = tls.connect({ host: "127.0.0.1", port: one.port, ca: pki.caCertPem, key: keyPem, cert: certPem, session: ticket!, checkServerIdentity: () => undefined });
  probe.on("data", () => {});
  await once(probe, "secureConnect");
  const raw = probe.getTLSTicket()!;
  probe.destroy();
  const at = ticket!.indexOf(raw);
  t.ok(at > 0, "the ticket sits inside the saved session");
  const forged = Buffer.from(ticket!);
  forged[at + raw.length - 40]! ^= 0x01;
  t.equal((await dial(one.port, pki, cog, forged)).reused, false, "tampered ticket: full handshake");
  t.ok(one.seen.at(-1)!.result.ok, "and the full handshake connects on the certificate");
  const other = await hubLike(t, pki, key, tunnelSessionIdContext("-----BEGIN CERTIFICATE-----\nanother CA\n"));
  t.equal((await dial(other.port, pki, cog, ticket!)).reused, false, "another CA: full handshake");
  t.equal(other.seen[0]!.reused, false);
  t.ok(other.seen[0]!.result.ok, "and the full handshake connects");
});

t.test("the ticket key file: 0600, shared, corrupt → one log line and a fresh key, rotation reaches every process", async (t) => {
  const dir = tmpDir("capsul-ticketkeys-");
  t.teardown(() => fs.rmSync(dir, { recursive: true, force: true }));
  const file = path.join(dir, TICKET_KEY_FILE);
  const lines: Line[] = [];
  const a = new TicketKeys(dir, () => 3_600_000, recorder(lines), () => {});
  const key = await a.load();
  a.close();
  t.equal(key.length, TICKET_KEY_BYTES);
  t.equal(fs.statSync(file).mode & 0o777, 0o600, "the key file is 0600");
  t.same(fs.readFileSync(file), key, "the key is what the file holds");
  const b = new TicketKeys(dir, () => 3_600_000, recorder(lines), () => {});
  t.same(await b.load(), key, "another process (a restarted hub, a worker) loads the same key");
  b.close();

  for (const bad of [Buffer.alloc(0), randomBytes(10), randomBytes(TICKET_KEY_BYTES + 1)]) {
    fs.writeFileSync(file, bad);
    lines.length = 0;
    const c = new TicketKeys(dir, () => 3_600_000, recorder(lines), () => {});
    const fresh = await c.load();
    c.close();
    t.equal(fresh.length, TICKET_KEY_BYTES, `a ${bad.length}-byte file: a fresh key`);
    t.notSame(fresh, key);
    t.same(fs.readFileSync(file), fresh, "written to the file");
    t.equal(fs.statSync(file).mode & 0o777, 0o600);
    const warned = lines.filter((l) => l.level === "warn");
    t.equal(warned.length, 1, "one warning");
    t.match(warned[0]?.msg, /session ticket key file is corrupt/);
    t.equal(warned[0]?.fields.bytes, bad.length);
  }

  // A directory where the file should be: it cannot be replaced; one error line, and the
  // process goes on with a key of its own (its tickets open only in itself).
  fs.rmSync(file);
  fs.mkdirSync(file);
  lines.length = 0;
  const d = new TicketKeys(dir, () => 3_600_000, recorder(lines), () => {});
  t.equal((await d.load()).length, TICKET_KEY_BYTES, "an unwritable key file: a key in memory");
  d.close();
  t.match(lines.filter((l) => l.level === "error").map((l) => l.msg), ["session ticket key not saved"]);
  fs.rmSync(file, { recursive: true });
  fs.writeFileSync(file, key, { mode: 0o600 });

  // Rotation: a short period; both "processes" end up on a new, common key.
  const start = fs.readFileSync(file);
  const changes: Array<{ who: string; key: Buffer }> = [];
  const rotationMs = 400;
  const p = new TicketKeys(dir, () => rotationMs, silentLogger, (k) => changes.push({ who: "p", key: k }));
  const q = new TicketKeys(dir, () => rotationMs, silentLogger, (k) => changes.push({ who: "q", key: k }));
  t.teardown(() => { p.close(); q.close(); });
  await p.load();
  await q.load();
  await waitFor("both processes to take a rotated key", () => {
    const now = fs.readFileSync(file);
    const last = (who: string) => changes.filter((c) => c.who === who).at(-1)?.key;
    return !now.equals(start) && last("p")?.equals(now) && last("q")?.equals(now) ? true : null;
  });
  t.pass("a rotated key reached both processes and the file");
});

/**
 * A hub on a fresh data dir whose restarts keep its tunnel port (the cogs dial it again),
 * with everything it logs since the last restart in `lines`.
 */
async function restartableHub(t: Tap.Test, prefix: string, tunnel: Record<string, string> = {}) {
  const dir = tmpDir(prefix);
  t.teardown(() => fs.rmSync(dir, { recursive: true, force: true }));
  const tun = { keepalive_interval: "1s", keepalive_timeout: "3s", ...tunnel };
  const cfg0 = hubConfig(dir, { tunnel: tun });
  const lines: Line[] = [];
  let hub: Hub = await startHub(cfg0, recorder(lines));
  t.teardown(() => hub.close());
  const port = hub.ports.tunnel;
  const cfg = hubConfig(dir, { tunnel: tun, listen: { tunnel: `127.0.0.1:${port}` } });
  return {
    dir, cfg0, cfg, port, lines,
    get hub(): Hub { return hub; },
    /** An enrolled cog dialing this hub, closed at the test's end. */
    async cog(name: string, tunnelKeys: Record<string, unknown> = {}) {
      const c = await enrolledCog(cfg0, hub, cogConfig(dir, name, port, [], tunnelKeys), name);
      t.teardown(() => c.close());
      return c;
    },
    connected: (cog: string) => lines.find((l) => l.msg === "cog connected" && l.fields.cog === cog),
    /** Restarts the hub on the same data dir and port; `between` runs while it is down. */
    async restart(between: () => Promise<void> | void = () => {}) {
      await hub.close();
      await between();
      lines.length = 0;
      hub = await startHub(cfg, recorder(lines));
    },
  };
}

t.test("after a hub restart cogs resume; a revoked cog's resumption is refused; an unknown ticket falls back to a full handshake", async (t) => {
  const h = await restartableHub(t, "capsul-resume-hub-");
  const { cfg, cfg0, lines, connected, restart } = h;
  const keep = await h.cog("keep");
  const gone = await h.cog("gone");
  t.equal(h.hub.tunnels.counts.handshakes.resumed, 0, "first connections: full handshakes");
  t.equal(fs.statSync(path.join(cfg0.dataDir, TICKET_KEY_FILE)).mode & 0o777, 0o600, "the hub's ticket key file is 0600");

  // 1. Revoke "gone" while the hub is down; both cogs come back with their tickets.
  await restart(async () => {
    const store = await openHubStore(cfg, silentLogger); // what `capsul hub revoke gone` does
    t.ok(await store.revokeCog("gone"));
    await store.close();
  });
  await waitFor("keep back on the restarted hub", () => connected("keep"));
  t.equal(connected("keep")!.fields.resumed, true, "keep resumed its session");
  const refusal = await waitFor("gone's tunnel refused", () => lines.find((l) => l.msg === "tunnel refused"));
  t.equal(refusal.fields.resumed, true, "gone offered its ticket and the TLS session was resumed…");
  t.match(String(refusal.fields.reason), /revoked/, "…and the tunnel refused all the same: revoked");
  t.notOk(h.hub.tunnels.links.get("gone")?.session, "gone has no tunnel");
  t.ok(h.hub.tunnels.links.get("keep")?.session, "keep has its tunnel");
  t.ok(h.hub.tunnels.counts.handshakes.resumed >= 2, "both handshakes were resumed");
  t.ok(h.hub.tunnels.counts.refused.revoked >= 1);
  await gone.close();

  // 2. The key file deleted: keep's ticket is unknown, it does a full handshake and connects.
  await restart(() => fs.rmSync(path.join(cfg.dataDir, TICKET_KEY_FILE)));
  await waitFor("keep back after the key file was deleted", () => connected("keep"));
  t.equal(connected("keep")!.fields.resumed, false, "unknown ticket: full handshake");
  t.equal(h.hub.tunnels.counts.handshakes.full, 1);

  // 3. A corrupt key file: one line, a fresh key, a full handshake again.
  await restart(() => fs.writeFileSync(path.join(cfg.dataDir, TICKET_KEY_FILE), "not a key"));
  await waitFor("keep back after the key file was corrupted", () => connected("keep"));
  t.equal(connected("keep")!.fields.resumed, false, "corrupt file, fresh key: full handshake");
  t.equal(lines.filter((l) => /session ticket key file is corrupt/.test(l.msg)).length, 1, "one log line about the file");

  // 4. That fresh key was saved: the next restart resumes again.
  await restart();
  await waitFor("keep back once more", () => connected("keep"));
  t.equal(connected("keep")!.fields.resumed, true, "the fresh key survived the restart");
});

t.test("a ticket older than hub.tunnel.session_ticket_lifetime gets a full handshake", async (t) => {
  const h = await restartableHub(t, "capsul-resume-life-", { session_ticket_lifetime: "1s", session_ticket_rotation: "1h" });
  await h.cog("late");
  await h.restart(() => sleep(2_100)); // past the ticket's 1 s (OpenSSL counts whole seconds)
  const back = await waitFor("the cog back", () => h.connected("late"));
  t.equal(back.fields.resumed, false, "expired ticket: full handshake");
  t.equal(h.hub.tunnels.counts.handshakes.resumed, 0);
});

t.test("a cog refreshes its ticket while its tunnel is up: a hub restarted after the first ticket expired still resumes", async (t) => {
  const h = await restartableHub(t, "capsul-resume-refresh-", { session_ticket_lifetime: "5s", session_ticket_rotation: "1h" });
  const { lines } = h;
  await h.cog("fresh", { session_refresh: "1s" });
  lines.length = 0; // what the hub says from here on: the refreshes
  // Enrollment and the tunnel are two full handshakes; then one per refresh (about every
  // second). Six refreshes: the tunnel's own ticket (5 s) has expired by then.
  await waitFor("six ticket refreshes", () => h.hub.tunnels.counts.handshakes.full >= 8 || null, { timeoutMs: 60_000 });
  t.ok(h.hub.tunnels.links.get("fresh")?.session, "the tunnel stayed up through the refreshes");
  t.same(lines.filter((l) => l.level === "warn" || l.level === "error").map((l) => [l.msg, l.fields]), [], "the side connections made the hub say nothing");
  await h.restart();
  const back = await waitFor("the cog back", () => h.connected("fresh"));
  t.equal(back.fields.resumed, true, "resumed with a refreshed ticket");
});

t.test("a resuming ClientHello still carries the server name the primary routes workers by", async (t) => {
  const dir = tmpDir("capsul-resume-sni-");
  t.teardown(() => fs.rmSync(dir, { recursive: true, force: true }));
  const pki = await loadOrCreateHubPki(dir, ["localhost", "127.0.0.1"]);
  const { keyPem, csrPem } = await createKeyAndCsr("sni");
  const { certPem } = await signCogCsr(pki, csrPem, "sni", { validityMs: 86_400_000 });
  const hub = await hubLike(t, pki, randomBytes(TICKET_KEY_BYTES));
  const servername = "w2.hub.test";
  const first = tls.connect({ host: "127.0.0.1", port: hub.port, servername, ca: pki.caCertPem, key: keyPem, cert: certPem, checkServerIdentity: () => undefined });
  let ticket: Buffer | null = null;
  first.on("session", (s: Buffer) => { ticket = s; });
  first.on("data", () => {});
  await once(first, "end");
  first.end();
  t.ok(ticket, "a ticket");
  // A raw listener in place of the primary: the resuming ClientHello as it arrives.
  const raw = net.createServer();
  raw.listen(0, "127.0.0.1");
  await once(raw, "listening");
  t.teardown(() => raw.close());
  const got = new Promise<Buffer>((resolve) => raw.once("connection", (s) => {
    const chunks: Buffer[] = [];
    s.on("data", (c: Buffer) => {
      chunks.push(c);
      const all = Buffer.concat(chunks);
      if (parseClientHello(all).type !== "need-more") { resolve(all); s.destroy(); }
    });
  }));
  const second = tls.connect({ host: "127.0.0.1", port: (raw.address() as net.AddressInfo).port, servername, session: ticket!, ca: pki.caCertPem, key: keyPem, cert: certPem });
  second.on("error", () => {});
  const hello = await got;
  second.destroy();
  const parsed = parseClientHello(hello);
  t.equal(parsed.type === "ok" && parsed.sni, servername, "the worker's name is in the SNI");
  // pre_shared_key (extension 41, RFC 8446 §4.2.11) holds the ticket: the hello is a resumption.
  t.ok(extension(hello, 41), "the hello offers the ticket (pre_shared_key)");
  // psk_key_exchange_modes (45): only psk_dhe_ke (1), so a resumed tunnel still runs a fresh
  // ECDHE and a stolen ticket key does not open recorded traffic.
  t.same(extension(hello, 45), Buffer.from([1, 1]), "psk_dhe_ke only");
});

/** The data of extension `type` in a single-record ClientHello, or null (walks the structure of RFC 8446 §4.1.2). */
function extension(rec: Buffer, type: number): Buffer | null {
  let i = 5 + 4 + 2 + 32; // record header, handshake header, legacy_version, random
  i += 1 + rec[i]!; // legacy_session_id
  i += 2 + rec.readUInt16BE(i); // cipher_suites
  i += 1 + rec[i]!; // legacy_compression_methods
  const end = i + 2 + rec.readUInt16BE(i);
  i += 2;
  while (i + 4 <= end) {
    const len = rec.readUInt16BE(i + 2);
    if (rec.readUInt16BE(i) === type) return rec.subarray(i + 4, i + 4 + len);
    i += 4 + len;
  }
  return null;
}
