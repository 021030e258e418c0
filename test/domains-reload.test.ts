/**
 * hub.domains under a reload (SIGHUP / capsul hub reload): turning custom
 * domains off withdraws a proven name's route at once, turning them on again
 * brings it back, without the cog doing anything. Real hub and cog, real DNS
 * from pebble-challtestsrv.
 */
import t from "tap";
import fs from "node:fs";
import { cogConfig, enrolledCog, httpBackend, hubConfig, tmpDir } from "./helpers/cluster.js";
import { startDnsStub } from "./helpers/dnsstub.js";
import { capturingLogger, until } from "./helpers/rawpeer.js";
import { startHub } from "../gateway/hub.js";
import { challengeName, domainProofValue } from "../protocol/domainproof.js";

t.test("a reload of hub.domains re-applies every cog's routes", async (t) => {
  const dir = tmpDir("capsul-domains-reload-");
  t.teardown(() => fs.rmSync(dir, { recursive: true, force: true }));
  const dns = await startDnsStub(t);
  const quick = { resolver: dns.address, lookup_timeout: "500ms", pending_interval: "150ms", recheck_interval: "200ms", error_retry_interval: "200ms" };
  const hubCfg = hubConfig(dir, { domains: quick });
  const hub = await startHub(hubCfg, capturingLogger("hub").log);
  t.teardown(() => hub.close());
  const backend = await httpBackend("site");
  t.teardown(() => backend.close());
  await dns.setTxt(challengeName("www.example.com"), domainProofValue(hub.pki.caFingerprint, "erin", "www.example.com"));
  const erinCfg = cogConfig(dir, "erin", hub.ports.tunnel, [{ name: "www", kind: "http", hostname: "www.example.com", target: `127.0.0.1:${backend.port}` }]);
  const erin = await enrolledCog(hubCfg, hub, erinCfg, "erin");
  t.teardown(() => erin.close());
  await until("www accepted", () => erin.client.status("www").state === "accepted");

  const off = await hub.reload(hubConfig(dir, { domains: { ...quick, enabled: false } }));
  t.same(off.changed, ["hub.domains"]);
  await until("www withdrawn", () => erin.client.status("www").state === "refused");
  const st = erin.client.status("www");
  t.equal(st.state === "refused" ? st.reason : "", "hostname www.example.com is not granted to cog erin");
  t.equal(hub.router.lookupHost("http", "www.example.com"), undefined);

  await hub.reload(hubConfig(dir, { domains: quick }));
  await until("www back", () => erin.client.status("www").state === "accepted");
  t.equal(hub.router.lookupHost("http", "www.example.com")?.cog, "erin");
});
