/**
 * Enrollment and tunnel authentication failures, against a real in-process hub
 * on loopback: a wrong CA pin, reused and expired invite tokens, and cogs
 * whose certificate is from another CA, expired, or missing altogether.
 * Each refusal must say why, where the operator of the cog will see it.
 */
import t, { type Test } from "tap";
import fs from "node:fs";
import path from "node:path";
import { cogConfig, hubConfig, tmpDir } from "./helpers/cluster.js";
import { waitFor } from "./helpers/procs.js";
import { createInvite, startHub, type Hub } from "../gateway/hub.js";
import { enroll } from "../tunnel-client/enroll.js";
import { startCog } from "../tunnel-client/cog.js";
import { saveIdentity } from "../tunnel-client/identity.js";
import { dialHub } from "../tunnel-client/dial.js";
import { createKeyAndCsr, loadOrCreateHubPki, signCogCsr, certInfo } from "../certs/pki.js";
import { createLogger, type Logger } from "../lib/log.js";
import { encodeMessage, MessageReader } from "../protocol/messages.js";
import { TUNNEL_PROTOCOL_VERSION, type HubMessage } from "../protocol/control.js";
import type { HubConfig } from "../config/types.js";

/** A logger that keeps every line (and echoes them with CAPSUL_TEST_LOG=1). */
function capturingLogger(name: string): { log: Logger; lines: string[] } {
  const lines: string[] = [];
  const log = createLogger({ level: "debug", component: name, write: (l) => { lines.push(l); if (process.env.CAPSUL_TEST_LOG) process.stderr.write(l + "\n"); } });
  return { log, lines };
}

/** Files under `dir` (recursively); empty when it does not exist. */
function filesUnder(dir: string): string[] {
  if (!fs.existsSync(dir)) return [];
  return (fs.readdirSync(dir, { recursive: true }) as string[]).filter((f) => fs.statSync(path.join(dir, f)).isFile());
}

async function setup(t: Test): Promise<{ dir: string; hubCfg: HubConfig; hub: Hub; hubLines: string[] }> {
  const dir = tmpDir("capsul-enroll-");
  t.teardown(() => fs.rmSync(dir, { recursive: true, force: true }));
  const hubCfg = hubConfig(dir);
  const { log, lines } = capturingLogger("hub");
  const hub = await startHub(hubCfg, log);
  t.teardown(() => hub.close());
  return { dir, hubCfg, hub, hubLines: lines };
}

const tuning = (dir: string): ReturnType<typeof cogConfig>["tunnel"] => cogConfig(dir, "x", 1, []).tunnel;

t.test("a wrong CA fingerprint fails enrollment, stores nothing, and does not spend the token", async (t) => {
  const { dir, hubCfg, hub } = await setup(t);
  const invite = await createInvite(hubCfg, "pinned");
  const dataDir = path.join(dir, "cog-pinned");
  const wrong = "sha256:" + "ab".repeat(32);
  t.not(wrong, invite.caFingerprint);
  await t.rejects(
    enroll({ hub: { host: "127.0.0.1", port: hub.ports.tunnel }, token: invite.token, caFingerprint: wrong, dataDir, tuning: tuning(dir) }),
    { message: /fingerprint mismatch: expected sha256:(ab){32}, hub presented sha256:[0-9a-f]{64}/ },
  );
  t.same(filesUnder(dataDir), [], "nothing stored");
  // The token never left the cog: the right pin still works with it.
  const id = await enroll({ hub: { host: "127.0.0.1", port: hub.ports.tunnel }, token: invite.token, caFingerprint: invite.caFingerprint, dataDir, tuning: tuning(dir) });
  t.equal(id.name, "pinned");
  t.ok(filesUnder(dataDir).includes("cog.crt"), "the good enrollment stored a certificate");
});

t.test("an invite token works once", async (t) => {
  const { dir, hubCfg, hub } = await setup(t);
  const invite = await createInvite(hubCfg, "once");
  const hubAddr = { host: "127.0.0.1", port: hub.ports.tunnel };
  const first = await enroll({ hub: hubAddr, token: invite.token, caFingerprint: invite.caFingerprint, dataDir: path.join(dir, "a"), tuning: tuning(dir) });
  t.equal(first.name, "once");
  const second = path.join(dir, "b");
  await t.rejects(
    enroll({ hub: hubAddr, token: invite.token, caFingerprint: invite.caFingerprint, dataDir: second, tuning: tuning(dir) }),
    { name: "AuthError", message: /enrollment refused: .*already used/ },
  );
  t.same(filesUnder(second), [], "the refused enrollment stored nothing");
  await t.rejects(
    enroll({ hub: hubAddr, token: "not-a-real-token", caFingerprint: invite.caFingerprint, dataDir: second, tuning: tuning(dir) }),
    { message: /unknown invite token/ },
  );
});

t.test("an expired invite is refused", async (t) => {
  const { dir, hubCfg, hub } = await setup(t);
  const invite = await createInvite(hubCfg, "late", { ttlMs: 1 });
  await waitFor("the invite to expire", () => Date.now() > invite.expiresAt.getTime(), { intervalMs: 5 });
  const dataDir = path.join(dir, "late");
  await t.rejects(
    enroll({ hub: { host: "127.0.0.1", port: hub.ports.tunnel }, token: invite.token, caFingerprint: invite.caFingerprint, dataDir, tuning: tuning(dir) }),
    { name: "AuthError", message: /expired/ },
  );
  t.same(filesUnder(dataDir), []);
});

/**
 * Starts a cog with a hand-made identity (a certificate the hub did not issue
 * properly) and waits until the hub's refusal reaches the cog's log.
 */
async function refusedCog(t: Test, dir: string, hub: Hub, name: string, certPem: string, keyPem: string, reason: RegExp): Promise<string[]> {
  const cfg = cogConfig(dir, name, hub.ports.tunnel, []);
  await saveIdentity(cfg.dataDir, {
    name, hub: `127.0.0.1:${hub.ports.tunnel}`, hubDomain: "hub.test", caFingerprint: hub.pki.caFingerprint,
    keyPem, certPem, caPem: hub.pki.caCertPem,
  });
  const { log, lines } = capturingLogger(`cog-${name}`);
  const cog = await startCog(cfg, log);
  t.teardown(() => cog.close());
  let connected = false;
  cog.client.on("connected", () => { connected = true; });
  const line = await waitFor(`the refusal in cog ${name}'s log`, () => lines.find((l) => reason.test(l)));
  t.match(line, /ERROR .*hub refused the tunnel: .* code=auth/, "logged as an error with the hub's code");
  t.equal(connected, false, "never connected");
  t.not(cog.client.state, "connected");
  t.equal(lines.filter((l) => /connected to hub/.test(l)).length, 0, "no 'connected to hub' line");
  return lines;
}

t.test("a cog certificate from another CA is refused with a clear reason", async (t) => {
  const { dir, hub, hubLines } = await setup(t);
  const other = await loadOrCreateHubPki(path.join(dir, "other-ca"), ["other.test"]);
  t.not(other.caFingerprint, hub.pki.caFingerprint);
  const { keyPem, csrPem } = await createKeyAndCsr("mallory");
  const signed = await signCogCsr(other, csrPem, "mallory", { validityMs: 86_400_000 });
  await refusedCog(t, dir, hub, "mallory", signed.certPem, keyPem, /not signed by this hub's CA/);
  t.ok(hubLines.some((l) => /tunnel refused .*not signed by this hub's CA/.test(l)), "the hub's log says why too");
});

t.test("an expired cog certificate is refused with a clear reason", async (t) => {
  const { dir, hubCfg, hub, hubLines } = await setup(t);
  await createInvite(hubCfg, "oldie"); // the hub knows the name; the certificate is what is wrong
  const { keyPem, csrPem } = await createKeyAndCsr("oldie");
  const signed = await signCogCsr(hub.pki, csrPem, "oldie", { validityMs: 60_000, notBefore: new Date(Date.now() - 2 * 3_600_000) });
  t.ok(certInfo(signed.certPem).notAfter.getTime() < Date.now(), "the certificate is already expired");
  await refusedCog(t, dir, hub, "oldie", signed.certPem, keyPem, /client certificate has expired/);
  t.ok(hubLines.some((l) => /tunnel refused .*client certificate has expired/.test(l)), "the hub's log says why too");
});

t.test("a tunnel dial with no client certificate is refused", async (t) => {
  const { dir, hub } = await setup(t);
  const { socket, session } = await dialHub({ hub: { host: "127.0.0.1", port: hub.ports.tunnel }, tuning: tuning(dir), caPem: hub.pki.caCertPem });
  t.teardown(() => { session.destroy(); socket.destroy(); });
  session.on("error", () => {});
  const control = session.open();
  control.on("error", () => {});
  const reader = new MessageReader<HubMessage>(control);
  control.write(encodeMessage({ type: "hello", protocol: TUNNEL_PROTOCOL_VERSION, software: "test", routes: [] }));
  const answer = await reader.next();
  t.equal(answer?.type, "error");
  t.equal(answer?.type === "error" ? answer.code : undefined, "auth");
  t.match(answer?.type === "error" ? answer.message : "", /no client certificate/);
  await waitFor("the hub to drop the connection", () => session.closed);
});

t.test("a bad CSR is refused and leaves the invite token usable", async (t) => {
  const { dir, hubCfg, hub } = await setup(t);
  const invite = await createInvite(hubCfg, "careful");
  const { csrPem } = await createKeyAndCsr("careful");
  // The CSR's signature no longer matches its content (one byte of the base64 body changed).
  const lines = csrPem.trim().split("\n");
  const mid = Math.floor(lines.length / 2);
  lines[mid] = lines[mid]!.slice(0, 10) + (lines[mid]![10] === "A" ? "B" : "A") + lines[mid]!.slice(11);
  const badCsrs = [lines.join("\n") + "\n", "not a CSR at all"];
  for (const csr of badCsrs) {
    const { socket, session } = await dialHub({ hub: { host: "127.0.0.1", port: hub.ports.tunnel }, tuning: tuning(dir) });
    t.teardown(() => { session.destroy(); socket.destroy(); });
    session.on("error", () => {});
    const control = session.open();
    control.on("error", () => {});
    const reader = new MessageReader<HubMessage>(control);
    control.write(encodeMessage({ type: "enroll", protocol: TUNNEL_PROTOCOL_VERSION, token: invite.token, csr }));
    const answer = await reader.next();
    t.equal(answer?.type === "error" && answer.code, "enroll");
    t.match(answer?.type === "error" ? answer.message : "", /^enrollment refused: CSR (signature does not verify|is not a valid PKCS#10)/);
  }
  t.equal((await hub.store.certsOf("careful")).length, 0, "nothing signed");
  // The token still works with a good CSR.
  const id = await enroll({ hub: { host: "127.0.0.1", port: hub.ports.tunnel }, token: invite.token, caFingerprint: invite.caFingerprint, dataDir: path.join(dir, "careful"), tuning: tuning(dir) });
  t.equal(id.name, "careful");
  await t.rejects(
    enroll({ hub: { host: "127.0.0.1", port: hub.ports.tunnel }, token: invite.token, caFingerprint: invite.caFingerprint, dataDir: path.join(dir, "careful2"), tuning: tuning(dir) }),
    { message: /already used/ }, "and is spent by that enrollment",
  );
});
