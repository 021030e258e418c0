/**
 * Certificate renewal over the tunnel against attacks and races (issue 8,
 * defect 4). A certificate signed right after `capsul hub revoke` once came out
 * unrevoked, and a later `hub invite` of the same name made the hub welcome it.
 * The hub now re-checks the cog and the presented certificate before and after
 * signing, signs only when renewal is due (the cog's own schedule), and at most
 * once per certificate within hub.tunnel.renew_min_interval. Real hub, raw
 * tunnel peers with real certificates, and a real cog for what it logs.
 */
import t, { type Test } from "tap";
import fs from "node:fs";
import path from "node:path";
import { parseConfig } from "../config/config.js";
import type { HubConfig } from "../config/types.js";
import { createInvite, startHub, type Hub } from "../gateway/hub.js";
import { openHubStore } from "../gateway/store/index.js";
import { silentLogger } from "../lib/log.js";
import { certInfo, createKeyAndCsr } from "../certs/pki.js";
import { encodeMessage } from "../protocol/messages.js";
import { TUNNEL_PROTOCOL_VERSION, type HubMessage } from "../protocol/control.js";
import { startCog } from "../tunnel-client/cog.js";
import { CERT_FILE, KEY_FILE, saveIdentity } from "../tunnel-client/identity.js";
import { cogConfig, HUB_DOMAIN, tmpDir } from "./helpers/cluster.js";
import { capturingLogger, cogIdentity, helloTunnel, rawTunnel, until, within, type Identity, type RawTunnel } from "./helpers/rawpeer.js";

const HOUR_MS = 3_600_000;
/** 3 h of life with 2.5 h gone: less than a third left, so renewal is due. */
const DUE = { validityMs: 3 * HOUR_MS, notBefore: new Date(Date.now() - 2.5 * HOUR_MS) };

async function setup(t: Test, tunnel: Record<string, unknown> = {}): Promise<{ dir: string; cfg: HubConfig; hub: Hub; lines: string[] }> {
  const dir = tmpDir("capsul-renew-");
  t.teardown(() => fs.rmSync(dir, { recursive: true, force: true }));
  const cfg = parseConfig({
    hub: {
      data_dir: path.join(dir, "hub"), domain: HUB_DOMAIN,
      listen: { tls: "127.0.0.1:0", http: "127.0.0.1:0", tunnel: "127.0.0.1:0", tcp_host: "127.0.0.1", admin: "127.0.0.1:0" },
      tunnel: { keepalive_interval: "1s", keepalive_timeout: "3s", ...tunnel },
    },
  }).hub!;
  const { log, lines } = capturingLogger("hub");
  const hub = await startHub(cfg, log);
  t.teardown(() => hub.close());
  return { dir, cfg, hub, lines };
}

/**
 * The next message that answers the peer: the hub also tells every welcomed cog where its
 * custom-domain claims stand (a `domains` message, gateway/control.ts), which is no answer.
 */
async function answerOf(reader: RawTunnel["reader"]): Promise<HubMessage | null> {
  for (;;) {
    const m = await reader.next();
    if (m?.type !== "domains") return m;
  }
}

async function renew(raw: RawTunnel, name: string): Promise<HubMessage | null> {
  const { csrPem } = await createKeyAndCsr(name);
  raw.control.write(encodeMessage({ type: "renew", csr: csrPem }));
  return within(answerOf(raw.reader), "the hub's answer to renew", 20_000);
}

async function liveCerts(hub: Hub, cog: string): Promise<number> {
  return (await hub.store.certsOf(cog)).filter((c) => !c.revoked).length;
}

async function allCerts(hub: Hub, cog: string): Promise<number> {
  return (await hub.store.certsOf(cog)).length;
}

t.test("a renewal right after `hub revoke` is refused, and a later invite of the name brings nothing back", async (t) => {
  // The revocation poll would drop the tunnel within 500 ms; an hour leaves the race window wide open.
  const { cfg, hub } = await setup(t, { revocation_poll_interval: "1h" });
  const id = await cogIdentity(cfg, hub, "ghost", DUE);
  const raw = await helloTunnel(t, hub.ports.tunnel, id);
  const cli = await openHubStore(cfg, silentLogger); // what `capsul hub revoke ghost` does, from another process
  t.teardown(() => cli.close());
  t.ok(await cli.revokeCog("ghost"));

  const answer = await renew(raw, "ghost");
  t.equal(answer?.type, "error", "no certificate");
  t.equal(answer?.type === "error" && answer.code, "revoked");
  t.match(answer?.type === "error" ? answer.message : "", /hub refused the renewal: cog ghost is revoked/);
  await within(new Promise<void>((r) => (raw.session.closed ? r() : raw.session.once("close", () => r()))), "the hub dropping the tunnel", 10_000);
  t.notOk(hub.tunnels.links.has("ghost"), "dropped at once");
  t.equal(await allCerts(hub, "ghost"), 1, "no certificate was recorded");

  // `hub invite ghost` lifts the cog's revocation, never its certificates'.
  await createInvite(cfg, "ghost");
  t.equal(await liveCerts(hub, "ghost"), 0, "no unrevoked certificate for ghost");
  const again = await rawTunnel(t, hub.ports.tunnel, id);
  again.control.write(encodeMessage({ type: "hello", protocol: TUNNEL_PROTOCOL_VERSION, software: "test", routes: [] }));
  const refused = await within(answerOf(again.reader), "the hub's answer", 10_000);
  t.equal(refused?.type === "error" && refused.code, "revoked", "the old certificate stays refused");
});

t.test("renewal before it is due is refused with a reason; the tunnel stays up", async (t) => {
  const { cfg, hub } = await setup(t);
  const id = await cogIdentity(cfg, hub, "early"); // 90 days, just issued
  const raw = await helloTunnel(t, hub.ports.tunnel, id);
  const answer = await renew(raw, "early");
  t.equal(answer?.type === "error" && answer.code, "renew");
  t.match(answer?.type === "error" ? answer.message : "",
    /^renewal refused: this certificate is valid until \S+; the hub renews it once less than a third of its lifetime is left, from \S+ \(check this cog's clock\)$/);
  t.equal(await allCerts(hub, "early"), 1, "nothing signed");
  raw.control.write(encodeMessage({ type: "routes", routes: [{ name: "w", kind: "http", hostname: `w.early.${HUB_DOMAIN}` }] }));
  const res = await within(answerOf(raw.reader), "routes-result", 10_000);
  t.equal(res?.type, "routes-result", "the tunnel still works");
});

t.test("a certificate is renewed once: again on the same or another tunnel is refused within renew_min_interval", async (t) => {
  const { cfg, hub } = await setup(t);
  const id = await cogIdentity(cfg, hub, "twice", DUE);
  const raw = await helloTunnel(t, hub.ports.tunnel, id);
  const first = await renew(raw, "twice");
  t.equal(first?.type, "renewed");
  t.equal(await allCerts(hub, "twice"), 2);

  const second = await renew(raw, "twice");
  t.equal(second?.type === "error" && second.code, "renew");
  t.match(second?.type === "error" ? second.message : "", /renewal refused: this certificate was already renewed at \S+; use the newer certificate, or renew this one again after \S+ \(hub\.tunnel\.renew_min_interval\)/);

  const other = await helloTunnel(t, hub.ports.tunnel, id); // replaces the first tunnel
  const third = await renew(other, "twice");
  t.equal(third?.type === "error" && third.code, "renew", "another tunnel with the same certificate: refused too");
  t.equal(await allCerts(hub, "twice"), 2, "one renewal in all");
});

t.test("two tunnels renewing the same certificate at once get one certificate between them", async (t) => {
  const { cfg, hub } = await setup(t);
  const id: Identity = await cogIdentity(cfg, hub, "racer", DUE);
  // Two tunnels of one cog: the second replaces the first, but both control streams are read until then.
  const a = await rawTunnel(t, hub.ports.tunnel, id);
  const b = await rawTunnel(t, hub.ports.tunnel, id);
  const { csrPem } = await createKeyAndCsr("racer");
  const hello = encodeMessage({ type: "hello", protocol: TUNNEL_PROTOCOL_VERSION, software: "test", routes: [] });
  const renewMsg = encodeMessage({ type: "renew", csr: csrPem });
  // Each sends hello and renew together: b's hello replaces a's tunnel, perhaps while a's renewal is being signed.
  a.control.write(Buffer.concat([hello, renewMsg]));
  b.control.write(Buffer.concat([hello, renewMsg]));
  const answers = await within(readAll(b), "b's welcome and renewal answer", 20_000);
  t.equal(answers[0]?.type, "welcome");
  t.ok(answers[1]?.type === "renewed" || (answers[1]?.type === "error" && answers[1].code === "renew"), `b: ${JSON.stringify(answers[1]).slice(0, 120)}`);
  await until("no renewal being signed", () => hub.tunnels.issuance.renewalsInFlight === 0);
  t.equal(await allCerts(hub, "racer"), 2, "exactly one renewal recorded");
});

/** The first two messages on a raw tunnel. */
async function readAll(raw: RawTunnel): Promise<(HubMessage | null)[]> {
  return [await answerOf(raw.reader), await answerOf(raw.reader)];
}

t.test("a cog that lost its renewed certificate asks again and logs the hub's refusal", async (t) => {
  const { dir, cfg, hub } = await setup(t);
  const id = await cogIdentity(cfg, hub, "forgetful", DUE);
  const cogCfg = cogConfig(dir, "forgetful", hub.ports.tunnel, []);
  const identity = {
    name: "forgetful", hub: `127.0.0.1:${hub.ports.tunnel}`, hubDomain: HUB_DOMAIN, caFingerprint: hub.pki.caFingerprint,
    keyPem: id.keyPem, certPem: id.certPem, caPem: hub.pki.caCertPem,
  };
  await saveIdentity(cogCfg.dataDir, identity);
  const certFile = path.join(cogCfg.dataDir, CERT_FILE);

  const first = await startCog(cogCfg, capturingLogger("cog").log);
  await until("the renewed certificate on disk", () => fs.readFileSync(certFile, "utf8") !== id.certPem);
  await first.close();
  t.not(certInfo(fs.readFileSync(certFile, "utf8")).serial, certInfo(id.certPem).serial, "renewed once");

  // The disk loses the new certificate (a restore from backup): the cog comes back with the old one.
  await saveIdentity(cogCfg.dataDir, identity);
  t.equal(fs.readFileSync(path.join(cogCfg.dataDir, KEY_FILE), "utf8"), id.keyPem);
  const { log, lines } = capturingLogger("cog");
  const second = await startCog(cogCfg, log);
  t.teardown(() => second.close());
  await until("the refusal in the cog's log", () => lines.some((l) => /renewal refused: this certificate was already renewed/.test(l)));
  t.ok(lines.some((l) => /ERROR +\[cog\/tunnel\] renewal refused: .* code=renew/.test(l)), "logged with the hub's code");
  t.equal(await allCerts(hub, "forgetful"), 2, "no second renewal");
  t.equal(second.client.state, "connected", "and the cog stays connected with the certificate it has");
});
