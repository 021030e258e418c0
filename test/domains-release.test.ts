/**
 * A custom-domain claim the cog gives up is released at the hub (`domains-release`,
 * protocol/PROTOCOL.md): real hub and cogs on loopback, DNS from pebble-challtestsrv
 * (test/helpers/dnsstub.ts), the cog's real data dir, `capsul hub domains` through the
 * real CLI; the attacks through a raw tunnel with a real cog certificate.
 */
import t from "tap";
import fs from "node:fs";
import path from "node:path";
import { cogConfig, enrolledCog, httpBackend, hubConfig, startConnectedCog, tmpDir } from "./helpers/cluster.js";
import { startDnsStub } from "./helpers/dnsstub.js";
import { domainsHub, QUICK_DOMAINS } from "./helpers/domainshub.js";
import { capturingLogger, cogIdentity, helloTunnel, until, within } from "./helpers/rawpeer.js";
import { runCli, waitFor } from "./helpers/procs.js";
import { startHub } from "../gateway/hub.js";
import { encodeMessage } from "../protocol/messages.js";
import { challengeName, domainProofValue } from "../protocol/domainproof.js";
import { DOMAINS_RELEASE_MAX } from "../protocol/control.js";
import { forgetDomain, readReleases } from "../tunnel-client/domains.js";
import type { Cog } from "../tunnel-client/cog.js";


function refusal(cog: Cog, route: string): string {
  const st = cog.client.status(route);
  return st.state === "refused" ? st.reason : "";
}

/** What cli/provision.ts does when a VM lets go of a name: withdraw its routes, forget the name, release it. */
async function vmLetsGo(cog: Cog, dataDir: string, owner: string, hostname: string): Promise<void> {
  cog.client.withdraw(owner);
  await forgetDomain(dataDir, hostname);
  cog.client.releaseDomains();
}

t.test("a name the cog gives up: its claim leaves the store and capsul hub domains, the claim limit frees up, a held-back cog takes the name at once", async (t) => {
  const { dir, dns, hubLog, hubCfg, hub } = await domainsHub(t, "capsul-release-", { max_claims_per_cog: 1 });
  const backend = await httpBackend("rel");
  t.teardown(() => backend.close());
  const target = `127.0.0.1:${backend.port}`;

  const aliceCfg = cogConfig(dir, "alice", hub.ports.tunnel, []);
  const alice = await enrolledCog(hubCfg, hub, aliceCfg, "alice");
  t.teardown(() => alice.close());
  alice.client.publish("vm:web", [{ name: "web", kind: "http", hostname: "web.rel.example", target }]);
  await until("alice's claim", () => refusal(alice, "web").includes("create the DNS record _capsul-challenge.web.rel.example."));
  await dns.setTxt(challengeName("web.rel.example"), domainProofValue(hub.pki.caFingerprint, "alice", "web.rel.example"));
  await until("web accepted", () => alice.client.status("web").state === "accepted");
  // At hub.domains.max_claims_per_cog (1): a second name is refused without a claim.
  alice.client.publish("vm:two", [{ name: "two", kind: "http", hostname: "two.rel.example", target }]);
  await until("two refused at the limit", () => refusal(alice, "two").includes("cog alice already claims 1 names by DNS"));

  // Bob publishes his record too, but alice's claim came first.
  const bob = await enrolledCog(hubCfg, hub, cogConfig(dir, "bob", hub.ports.tunnel, [{ name: "site", kind: "http", hostname: "web.rel.example", target }]), "bob");
  t.teardown(() => bob.close());
  await dns.setTxt(challengeName("web.rel.example"), domainProofValue(hub.pki.caFingerprint, "bob", "web.rel.example"));
  await waitFor("bob's claim proven", async () => (await hub.store.domainProofsFor("web.rel.example")).find((p) => p.cog === "bob")?.state === "verified");
  t.match(refusal(bob, "site"), "is held by cog alice");

  await vmLetsGo(alice, aliceCfg.dataDir, "vm:web", "web.rel.example");
  await waitFor("alice's claim gone", async () => !(await hub.store.domainProofsOf("alice")).some((p) => p.hostname === "web.rel.example"));
  await until("bob's site accepted", () => bob.client.status("site").state === "accepted");
  t.same((await hub.store.domainProofsFor("web.rel.example")).map((p) => [p.cog, p.state]), [["bob", "verified"]], "bob's claim untouched");
  // The freed slot: two.rel.example is claimed now (its refusal names the record, not the limit).
  await until("two claimed", () => refusal(alice, "two").includes("create the DNS record _capsul-challenge.two.rel.example."));
  await until("the release settled on the cog", () => readReleases(aliceCfg.dataDir).length === 0);

  const hubYaml = path.join(dir, "hub.yaml");
  fs.writeFileSync(hubYaml, `hub:\n  data_dir: ${hubCfg.dataDir}\n  domain: hub.test\n`);
  const listed = JSON.parse((await runCli(["hub", "domains", "--json", "-c", hubYaml])).stdout) as Array<{ hostname: string; cog: string }>;
  t.same(listed.map((r) => [r.hostname, r.cog]).sort(), [["two.rel.example", "alice"], ["web.rel.example", "bob"]]);
});

t.test("a name given up while the cog is offline is released after its next welcome", async (t) => {
  const { dir, dns, hubLog, hubCfg, hub } = await domainsHub(t, "capsul-release-offline-");
  const cfg = cogConfig(dir, "carol", hub.ports.tunnel, []);
  const carol = await enrolledCog(hubCfg, hub, cfg, "carol");
  carol.client.publish("vm:x", [{ name: "x", kind: "http", hostname: "x.off.example", target: "127.0.0.1:9" }]);
  await until("carol's claim", () => refusal(carol, "x").includes("_capsul-challenge.x.off.example."));
  await carol.close();
  await forgetDomain(cfg.dataDir, "x.off.example");
  t.same(readReleases(cfg.dataDir), ["x.off.example"], "marked for release");
  t.equal((await hub.store.domainProofsOf("carol")).length, 1, "the hub still holds the claim");
  const again = await startConnectedCog(cfg, "carol");
  t.teardown(() => again.close());
  await waitFor("carol's claim gone", async () => (await hub.store.domainProofsOf("carol")).length === 0);
  await until("the mark settled", () => readReleases(cfg.dataDir).length === 0);
});

t.test("attacks: a release of another cog's claim changes nothing; a malformed or oversized release drops that tunnel with one log line", async (t) => {
  const { dir, dns, hubLog, hubCfg, hub } = await domainsHub(t, "capsul-release-attack-");
  const backend = await httpBackend("alice");
  t.teardown(() => backend.close());
  const alice = await enrolledCog(hubCfg, hub, cogConfig(dir, "alice", hub.ports.tunnel, [
    { name: "web", kind: "http", hostname: "web.att.example", target: `127.0.0.1:${backend.port}` },
  ]), "alice");
  t.teardown(() => alice.close());
  await dns.setTxt(challengeName("web.att.example"), domainProofValue(hub.pki.caFingerprint, "alice", "web.att.example"));
  await until("web accepted", () => alice.client.status("web").state === "accepted");
  const before = await hub.store.domainProofsFor("web.att.example");

  const mallory = await cogIdentity(hubCfg, hub, "mallory");
  const m = await helloTunnel(t, hub.ports.tunnel, mallory);
  m.control.write(encodeMessage({ type: "domains-release", hostnames: ["web.att.example", "*.att.example", "WEB.ATT.EXAMPLE"] }));
  // Messages are handled in order: the answer to this route set comes after the release was.
  m.control.write(encodeMessage({ type: "routes", routes: [] }));
  for (;;) {
    const r = await within(m.reader.next(), "mallory's routes-result", 10_000);
    t.ok(r, "mallory's tunnel stays up");
    if (r?.type === "routes-result") break;
  }
  t.same(await hub.store.domainProofsFor("web.att.example"), before, "alice's claim untouched");
  t.equal(alice.client.status("web").state, "accepted");

  const bad: Array<[unknown, string]> = [
    ["web.att.example", "domains-release.hostnames must be a list"],
    [Array.from({ length: DOMAINS_RELEASE_MAX + 1 }, (_, i) => `n${i}.att.example`), `at most ${DOMAINS_RELEASE_MAX} in one message`],
    [["x".repeat(300)], "domains-release.hostnames[0] is not a hostname"],
  ];
  for (const [hostnames, why] of bad) {
    const raw = await helloTunnel(t, hub.ports.tunnel, mallory);
    raw.control.write(encodeMessage({ type: "domains-release", hostnames }));
    await within(new Promise((resolve) => raw.session.once("close", resolve)), "the hub dropping the tunnel", 10_000);
    await until(`a log line: ${why}`, () => hubLog.lines.some((l) => l.includes("tunnel control failed") && l.includes(why)));
    t.equal(hubLog.lines.filter((l) => l.includes(why)).length, 1, `one line: ${why}`);
  }
  t.same(await hub.store.domainProofsFor("web.att.example"), before, "still untouched");
  t.equal(alice.client.status("web").state, "accepted", "the hub still serves alice");
});
