/**
 * Certificate renewal over the authenticated tunnel: a cog whose certificate
 * has less than a third of its life left asks for a new one after the welcome,
 * stores it with its new key, and the next tunnel uses it.
 */
import fs from "node:fs";
import path from "node:path";
import t from "tap";
import { certInfo, createKeyAndCsr, signCogCsr } from "../certs/pki.js";
import { createInvite } from "../gateway/hub.js";
import type { SqliteHubStore } from "../gateway/store/sqlite.js";
import { CERT_FILE, KEY_FILE, saveIdentity } from "../tunnel-client/identity.js";
import { cogConfig, HUB_DOMAIN, hubConfig, startConnectedCog, startTestHub, tmpDir } from "./helpers/cluster.js";

const HOUR_MS = 3_600_000;

async function until(what: string, ok: () => boolean, timeoutMs = 30_000): Promise<void> {
  const deadline = Date.now() + timeoutMs;
  while (!ok()) {
    if (Date.now() > deadline) throw new Error(`timed out waiting for ${what}`);
    await new Promise((resolve) => setTimeout(resolve, 50));
  }
}

t.test("a cog near the end of its certificate's life renews it over the tunnel", async (t) => {
  const dir = tmpDir();
  const hubCfg = hubConfig(dir);
  const hub = await startTestHub(hubCfg);
  t.teardown(() => hub.close());
  await createInvite(hubCfg, "ren");
  // 3 h of life, 2.5 h of it gone: under a third left.
  const { keyPem, csrPem } = await createKeyAndCsr("ren");
  const old = await signCogCsr(hub.pki, csrPem, "ren", { validityMs: 3 * HOUR_MS, notBefore: new Date(Date.now() - 2.5 * HOUR_MS) });
  await hub.store.recordCert("ren", old.serial.replace(/^0+/, ""), old.notAfter.getTime());
  const cfg = cogConfig(dir, "ren", hub.ports.tunnel, []);
  await saveIdentity(cfg.dataDir, {
    name: "ren", hub: `127.0.0.1:${hub.ports.tunnel}`, hubDomain: HUB_DOMAIN, caFingerprint: hub.pki.caFingerprint,
    keyPem, certPem: old.certPem, caPem: hub.pki.caCertPem,
  });

  const cog = await startConnectedCog(cfg, "ren");
  t.teardown(() => cog.close());
  const certFile = path.join(cfg.dataDir, CERT_FILE);
  await until("the renewed certificate on disk", () => fs.readFileSync(certFile, "utf8") !== old.certPem);
  const renewed = certInfo(fs.readFileSync(certFile, "utf8"));
  t.equal(renewed.commonName, "ren");
  t.not(renewed.serial, certInfo(old.certPem).serial, "a new certificate");
  t.ok(renewed.notAfter.getTime() - Date.now() > 80 * 24 * HOUR_MS, "with the hub's full cog certificate lifetime");
  t.not(fs.readFileSync(path.join(cfg.dataDir, KEY_FILE), "utf8"), keyPem, "and a new key, made on the cog");

  // The next tunnel authenticates with the new certificate: the old one no longer would.
  (hub.store as SqliteHubStore).db.prepare("UPDATE certs SET revoked = 1 WHERE serial = ?").run(old.serial.replace(/^0+/, ""));
  const again = new Promise<void>((resolve) => cog.client.once("connected", () => resolve()));
  hub.tunnels.links.get("ren")!.session!.destroy();
  await again;
  t.equal(await hub.store.certProblem("ren", renewed.serial.replace(/^0+/, "")), null, "the hub knows the new certificate");
  t.ok(hub.tunnels.links.get("ren")?.session, "reconnected with it");
});
