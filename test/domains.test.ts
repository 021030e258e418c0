/**
 * Custom domains by DNS proof, end to end: a real hub and real cogs on
 * loopback, real DNS from Debian's pebble-challtestsrv (TXT records set and
 * cleared through its management API), the hub's lookups through node:dns at
 * hub.domains.resolver, visitors over real TCP, and the real CLI for
 * `capsul cog domains`.
 */
import t from "tap";
import fs from "node:fs";
import net from "node:net";
import path from "node:path";
import { cogConfig, enrolledCog, httpBackend, hubConfig, tmpDir } from "./helpers/cluster.js";
import { DnsRelay, startDnsStub } from "./helpers/dnsstub.js";
import { domainsHub, QUICK_DOMAINS } from "./helpers/domainshub.js";
import { capturingLogger, until } from "./helpers/rawpeer.js";
import { runCli, waitFor } from "./helpers/procs.js";
import { createInvite, startHub } from "../gateway/hub.js";
import { challengeName, domainProofValue } from "../protocol/domainproof.js";
import type { Cog } from "../tunnel-client/cog.js";

/** Quick lookups for tests; the defaults are 5s / 30s / 10m / 60s. */

/** One HTTP/1.1 request on a fresh connection to the hub's HTTP port; resolves the whole answer. */
function get(port: number, host: string, urlPath = "/"): Promise<string> {
  return new Promise((resolve, reject) => {
    const s = net.connect({ port, host: "127.0.0.1" }, () => s.write(`GET ${urlPath} HTTP/1.1\r\nHost: ${host}\r\nConnection: close\r\n\r\n`));
    let out = "";
    s.setEncoding("utf8");
    s.on("data", (c: string) => { out += c; });
    s.on("error", reject);
    s.on("close", () => resolve(out));
  });
}

/** A keep-alive visitor: one connection, several requests, each answer read by its Content-Length. */
class KeepAlive {
  private buf = "";
  private waiting: (() => void) | null = null;
  constructor(private readonly s: net.Socket) {
    s.setEncoding("utf8");
    s.on("data", (c: string) => { this.buf += c; this.waiting?.(); });
    s.on("close", () => this.waiting?.());
  }
  static open(port: number): Promise<KeepAlive> {
    return new Promise((resolve, reject) => {
      const s = net.connect({ port, host: "127.0.0.1" }, () => resolve(new KeepAlive(s)));
      s.once("error", reject);
    });
  }
  async request(host: string, urlPath: string): Promise<string> {
    this.s.write(`GET ${urlPath} HTTP/1.1\r\nHost: ${host}\r\n\r\n`);
    for (;;) {
      const head = this.buf.indexOf("\r\n\r\n");
      const len = /content-length: (\d+)/i.exec(this.buf.slice(0, head));
      if (head >= 0 && len && this.buf.length >= head + 4 + Number(len[1])) {
        const end = head + 4 + Number(len[1]);
        const answer = this.buf.slice(0, end);
        this.buf = this.buf.slice(end);
        return answer;
      }
      if (this.s.destroyed) throw new Error(`connection closed; got ${JSON.stringify(this.buf)}`);
      await new Promise<void>((resolve) => { this.waiting = resolve; });
      this.waiting = null;
    }
  }
  close(): void { this.s.destroy(); }
}

function refusal(cog: Cog, route: string): string {
  const st = cog.client.status(route);
  return st.state === "refused" ? st.reason : "";
}

t.test("a custom domain: refused without the TXT record, routed with it, withdrawn when it goes; another cog is refused; a wildcard needs its base", async (t) => {
  const { dir, dns, hubLog, hubCfg, hub } = await domainsHub(t, "capsul-domains-");
  const backend = await httpBackend("alice-blog");
  const bobBackend = await httpBackend("bob-site");
  t.teardown(async () => { await backend.close(); await bobBackend.close(); });
  const httpPort = hub.ports.http!;

  const aliceCfg = cogConfig(dir, "alice", hub.ports.tunnel, [
    { name: "blog", kind: "http", hostname: "blog.alice.example", target: `127.0.0.1:${backend.port}` },
    { name: "shop", kind: "http", hostname: "*.shop.example", target: `127.0.0.1:${backend.port}` },
  ]);
  const alice = await enrolledCog(hubCfg, hub, aliceCfg, "alice");
  t.teardown(() => alice.close());
  const value = domainProofValue(hub.pki.caFingerprint, "alice", "blog.alice.example");

  // 1. Without the record: refused, and the refusal names the exact record to create.
  t.match(refusal(alice, "blog"), `is not granted to cog alice; to prove you control blog.alice.example, create the DNS record _capsul-challenge.blog.alice.example. TXT "${value}"`);
  t.match(refusal(alice, "shop"), `a wildcard needs the proof on shop.example`);
  t.match(alice.client.status("blog"), { state: "refused", code: "domain_unproven" }, "the refusal's code says it too (protocol/control.ts RefusedRoute)");
  t.match(refusal(alice, "shop"), `_capsul-challenge.shop.example. TXT "${domainProofValue(hub.pki.caFingerprint, "alice", "shop.example")}"`);
  t.match(await get(httpPort, "blog.alice.example"), /^HTTP\/1\.1 404/, "no route: the hub's 404");

  // The CLI prints the same record, computed from the cog's enrollment alone, and lists the claim.
  const cfgFile = path.join(dir, "alice.yaml");
  fs.writeFileSync(cfgFile, `cog:\n  data_dir: ${aliceCfg.dataDir}\n`);
  const add = await runCli(["cog", "domains", "add", "blog.alice.example", "-c", cfgFile]);
  t.equal(add.code, 0, add.stderr);
  t.match(add.stdout, `_capsul-challenge.blog.alice.example.  TXT  "${value}"`);
  const addJson = await runCli(["cog", "domains", "add", "*.extra.example", "--json", "-c", cfgFile]);
  t.same(JSON.parse(addJson.stdout), { hostname: "extra.example", record: "_capsul-challenge.extra.example", type: "TXT", value: domainProofValue(hub.pki.caFingerprint, "alice", "extra.example"), cog: "alice" }, "a wildcard's record is on its base name");
  await until("the hub's report in the cog's data dir", () => fs.existsSync(path.join(aliceCfg.dataDir, "domains.json")));
  const listed = JSON.parse((await runCli(["cog", "domains", "--json", "-c", cfgFile])).stdout) as Array<{ hostname: string; state: string; value: string }>;
  t.same(listed.map((r) => [r.hostname, r.state]), [["blog.alice.example", "pending"], ["extra.example", "unannounced"], ["shop.example", "pending"]]);
  t.equal(listed[0]!.value, value);

  // 2. With the record: the route comes up by itself, and a visitor reaches the backend by that name.
  await dns.setTxt(challengeName("blog.alice.example"), value);
  await until("blog accepted", () => alice.client.status("blog").state === "accepted");
  t.match(await get(httpPort, "blog.alice.example", "/hello"), /alice-blog blog\.alice\.example \/hello/);
  await until("the verified report", () => fs.readFileSync(path.join(aliceCfg.dataDir, "domains.json"), "utf8").includes('"verified"'));
  t.match((await runCli(["cog", "domains", "-c", cfgFile])).stdout, /blog\.alice\.example\s+proven/);

  // A record for another name (or with another cog's value) proves nothing.
  await dns.setTxt(challengeName("shop.example"), domainProofValue(hub.pki.caFingerprint, "bob", "shop.example"));
  await waitFor("a lookup of shop.example", async () => (await hub.store.domainProofsOf("alice")).find((p) => p.hostname === "shop.example")?.lastError?.includes("does not hold this cog's value (1 other value there)"));
  t.equal(alice.client.status("shop").state, "refused", "another cog's value does not prove it for alice");
  // 3. The wildcard's proof on its base name brings *.shop.example up.
  await dns.setTxt(challengeName("shop.example"), domainProofValue(hub.pki.caFingerprint, "alice", "shop.example"));
  await until("shop accepted", () => alice.client.status("shop").state === "accepted");
  t.match(await get(httpPort, "cart.shop.example"), /alice-blog cart\.shop\.example/);

  // 4. Another cog: refused while alice holds the name, even with its own record published.
  const bobCfg = cogConfig(dir, "bob", hub.ports.tunnel, [
    { name: "site", kind: "http", hostname: "blog.alice.example", target: `127.0.0.1:${bobBackend.port}` },
    { name: "grab", kind: "http", hostname: "*.alice.example", target: `127.0.0.1:${bobBackend.port}` },
  ]);
  const bob = await enrolledCog(hubCfg, hub, bobCfg, "bob");
  t.teardown(() => bob.close());
  t.match(refusal(bob, "site"), "is held by cog alice (proven by DNS on blog.alice.example)");
  t.match(refusal(bob, "grab"), "is held by cog alice");
  t.notOk("code" in bob.client.status("site"), "held by another cog: no DNS record would help, no domain_unproven code");
  // The owner publishes bob's value too (challtestsrv keeps both): bob's claim is proven, but alice's came first.
  await dns.setTxt(challengeName("blog.alice.example"), domainProofValue(hub.pki.caFingerprint, "bob", "blog.alice.example"));
  await waitFor("bob's claim proven", async () => (await hub.store.domainProofsFor("blog.alice.example")).find((p) => p.cog === "bob")?.state === "verified");
  t.equal(alice.client.status("blog").state, "accepted", "alice keeps the name");
  t.match(refusal(bob, "site"), "is held by cog alice");
  t.match(await get(httpPort, "blog.alice.example"), /alice-blog/, "still alice's");
  // Nor does the operator grant a name a cog has proven: the invite is refused with one line naming the cog.
  await t.rejects(createInvite(hubCfg, "carol", { hostnames: ["blog.alice.example"] }), {
    message: "--hostname: \"blog.alice.example\" overlaps blog.alice.example, proven by DNS by cog alice; remove that claim first with: capsul hub domains remove blog.alice.example --cog alice",
  });
  await t.rejects(createInvite(hubCfg, "carol", { hostnames: ["*.shop.example"] }), { message: /overlaps shop\.example, proven by DNS by cog alice/ }, "a wildcard under a proven name");
  t.equal((await hub.store.getCog("carol")), undefined, "nothing of the refused invite was stored");
  // A name under another cog's grant is never taken by a proof.
  const grabDefault = cogConfig(dir, "mallory", hub.ports.tunnel, [{ name: "steal", kind: "http", hostname: "www.alice.hub.test", target: `127.0.0.1:${bobBackend.port}` }]);
  const mallory = await enrolledCog(hubCfg, hub, grabDefault, "mallory");
  t.teardown(() => mallory.close());
  t.match(refusal(mallory, "steal"), "names under the hub's domain hub.test are granted by the hub operator only");

  // 5. The record disappears: the route is withdrawn. A visitor already connected finishes; a new one is refused.
  const live = await KeepAlive.open(httpPort);
  t.teardown(() => live.close());
  t.match(await live.request("blog.alice.example", "/first"), /alice-blog blog\.alice\.example \/first/);
  await dns.clearTxt(challengeName("blog.alice.example"));
  await until("blog withdrawn", () => alice.client.status("blog").state === "refused");
  t.match(refusal(alice, "blog"), "the record was there before and is gone now");
  t.ok(hubLog.lines.some((l) => l.includes("custom domain proof gone") && l.includes("blog.alice.example")), "one log line says why");
  t.match(await get(httpPort, "blog.alice.example"), /^HTTP\/1\.1 404/, "a new visitor is refused");
  t.match(await live.request("blog.alice.example", "/second"), /alice-blog blog\.alice\.example \/second/, "the live visitor's connection still works");
  t.match(await get(httpPort, "x.shop.example"), /alice-blog/, "the other proof is untouched");

  // And back: the record again brings the route up again.
  await dns.setTxt(challengeName("blog.alice.example"), value);
  await until("blog back", () => alice.client.status("blog").state === "accepted");
  t.match(await get(httpPort, "blog.alice.example"), /alice-blog/);
  const rows = await hub.store.domainProofsOf("alice");
  t.same(rows.map((r) => [r.hostname, r.state]), [["blog.alice.example", "verified"], ["shop.example", "verified"]]);

  // The operator lists the claims and removes one (capsul hub domains).
  const hubYaml = path.join(dir, "hub.yaml");
  fs.writeFileSync(hubYaml, `hub:\n  data_dir: ${hubCfg.dataDir}\n  domain: hub.test\n`);
  const listedAll = JSON.parse((await runCli(["hub", "domains", "--json", "-c", hubYaml])).stdout) as Array<Record<string, unknown>>;
  t.same(listedAll.map((r) => [r.hostname, r.cog]), [["alice.example", "bob"], ["blog.alice.example", "alice"], ["blog.alice.example", "bob"], ["shop.example", "alice"]]);
  t.match(listedAll[1], { state: "verified", record: "_capsul-challenge.blog.alice.example", value, proven_for: "alice" });
  t.match((await runCli(["hub", "domains", "-c", hubYaml])).stdout, /blog\.alice\.example\s+alice\s+proven\s+alice/);
  const ambiguous = await runCli(["hub", "domains", "remove", "blog.alice.example", "-c", hubYaml]);
  t.equal(ambiguous.code, 2, "two cogs claim it: whose?");
  t.match(ambiguous.stderr, /^capsul: config error: 2 cogs claim blog\.alice\.example \(alice: verified, bob: \w+\); say whose with --cog$/m);
  const nobody = await runCli(["hub", "domains", "remove", "blog.alice.example", "--cog", "carol", "-c", hubYaml]);
  t.equal(nobody.code, 2);
  t.match(nobody.stderr, /no cog named carol claims blog\.alice\.example/);
  const removed = await runCli(["hub", "domains", "remove", "blog.alice.example", "--cog", "bob", "--json", "-c", hubYaml]);
  t.equal(removed.code, 0, removed.stderr);
  t.match(JSON.parse(removed.stdout), { removed: { hostname: "blog.alice.example", cog: "bob" } });
  t.same((await hub.store.domainProofsFor("blog.alice.example")).map((p) => p.cog), ["alice"], "only bob's claim went");
  // A proven claim removed while its cog is connected: the running hub re-applies the cog's routes
  // at its next sweep, so the name is claimed anew and must be proven again (it is: the record stands).
  const removedAt = Date.now();
  const rmShop = await runCli(["hub", "domains", "remove", "shop.example", "-c", hubYaml]);
  t.equal(rmShop.code, 0, rmShop.stderr);
  t.match(rmShop.stdout, /^Removed cog alice's claim on shop\.example \(proven\)\. The running hub applies it within hub\.domains\.pending_interval/);
  await waitFor("a new claim on shop.example, proven again", async () => {
    const c = (await hub.store.domainProofsFor("shop.example"))[0];
    return c && c.createdAt >= removedAt && c.state === "verified";
  });
  await until("shop accepted again", () => alice.client.status("shop").state === "accepted");
});

t.test("a resolver that never answers: one log line, the proof keeps its state, lookups retry, nothing crashes", async (t) => {
  const dir = tmpDir("capsul-domains-timeout-");
  t.teardown(() => fs.rmSync(dir, { recursive: true, force: true }));
  const dns = await startDnsStub(t);
  const relay = new DnsRelay(dns.port);
  await relay.start(t);
  const hubLog = capturingLogger("hub");
  const hubCfg = hubConfig(dir, { domains: { resolver: relay.address, ...QUICK_DOMAINS } });
  const hub = await startHub(hubCfg, hubLog.log);
  t.teardown(() => hub.close());
  const backend = await httpBackend("site");
  t.teardown(() => backend.close());
  await dns.setTxt(challengeName("www.example.org"), domainProofValue(hub.pki.caFingerprint, "carol", "www.example.org"));
  const carolCfg = cogConfig(dir, "carol", hub.ports.tunnel, [{ name: "www", kind: "http", hostname: "www.example.org", target: `127.0.0.1:${backend.port}` }]);
  const carol = await enrolledCog(hubCfg, hub, carolCfg, "carol");
  t.teardown(() => carol.close());
  await until("www accepted", () => carol.client.status("www").state === "accepted");

  relay.mode = "drop";
  const before = hub.domains.lookups;
  const dropped = relay.dropped;
  await until("three lookups into the void", () => relay.dropped >= dropped + 3 && hub.domains.lookups >= before + 3);
  const noAnswer = hubLog.lines.filter((l) => l.includes("custom domain lookup got no answer"));
  t.equal(noAnswer.length, 1, "one log line for a resolver that stays silent, not one per try");
  t.match(noAnswer[0], `DNS lookup of _capsul-challenge.www.example.org timed out after 500ms (${relay.address})`);
  t.match(noAnswer[0], "www.example.org stays verified");
  t.equal(carol.client.status("www").state, "accepted", "the route stays up");
  t.match(await get(hub.ports.http!, "www.example.org"), /site www\.example\.org/);
  t.equal((await hub.store.domainProofsOf("carol"))[0]!.state, "verified");

  // Answers again: the record is gone now, and that is acted on.
  await dns.clearTxt(challengeName("www.example.org"));
  relay.mode = "pass";
  await until("www withdrawn", () => carol.client.status("www").state === "refused");
  t.ok(hubLog.lines.some((l) => l.includes("custom domain lookups answered again")));
  t.match(await get(hub.ports.http!, "www.example.org"), /^HTTP\/1\.1 404/);
});

t.test("hub.domains.enabled: false: only grants count", async (t) => {
  const { dir, dns, hubLog, hubCfg, hub } = await domainsHub(t, "capsul-domains-off-", { enabled: false });
  await dns.setTxt(challengeName("www.example.net"), domainProofValue(hub.pki.caFingerprint, "dave", "www.example.net"));
  const daveCfg = cogConfig(dir, "dave", hub.ports.tunnel, [{ name: "www", kind: "http", hostname: "www.example.net", target: "127.0.0.1:9" }]);
  const dave = await enrolledCog(hubCfg, hub, daveCfg, "dave");
  t.teardown(() => dave.close());
  t.equal(refusal(dave, "www"), "hostname www.example.net is not granted to cog dave");
  t.same(await hub.store.domainProofsOf("dave"), [], "no claim stored");
});

t.test("a cog announcing many names it does not own: claims stop at hub.domains.max_claims_per_cog", async (t) => {
  const { dir, dns, hubLog, hubCfg, hub } = await domainsHub(t, "capsul-domains-flood-", { max_claims_per_cog: 3 });
  const names = ["a", "b", "c", "d", "e"].map((l) => `${l}.flood.example`);
  const routes = names.map((h, i) => ({ name: `r${i}`, kind: "http", hostname: h, target: "127.0.0.1:9" }));
  const fran = await enrolledCog(hubCfg, hub, cogConfig(dir, "fran", hub.ports.tunnel, routes), "fran");
  t.teardown(() => fran.close());
  for (const i of [0, 1, 2]) t.match(refusal(fran, `r${i}`), `create the DNS record _capsul-challenge.${names[i]}.`);
  for (const i of [3, 4]) t.match(refusal(fran, `r${i}`), "cog fran already claims 3 names by DNS, its limit (hub.domains.max_claims_per_cog: 3)");
  t.same((await hub.store.domainProofsOf("fran")).map((p) => p.hostname), names.slice(0, 3), "nothing stored past the limit");
});

t.test("a proven name whose record goes missing keeps its route until hub.domains.missing_before_withdraw lookups in a row miss it", async (t) => {
  // Re-checks every 200 ms, a missing record asked again every 150 ms: withdrawn at the 4th miss.
  const { dir, dns, hubLog, hubCfg, hub } = await domainsHub(t, "capsul-domains-grace-", { missing_before_withdraw: 4 });
  const backend = await httpBackend("gina-site");
  t.teardown(() => backend.close());
  const gina = await enrolledCog(hubCfg, hub, cogConfig(dir, "gina", hub.ports.tunnel, [
    { name: "site", kind: "http", hostname: "gina.example", target: `127.0.0.1:${backend.port}` },
  ]), "gina");
  t.teardown(() => gina.close());
  await dns.setTxt(challengeName("gina.example"), domainProofValue(hub.pki.caFingerprint, "gina", "gina.example"));
  await until("site accepted", () => gina.client.status("site").state === "accepted");

  await dns.clearTxt(challengeName("gina.example"));
  const claim = async () => (await hub.store.domainProofsFor("gina.example"))[0]!;
  await waitFor("three misses in a row", async () => (await claim()).misses >= 3);
  t.equal(gina.client.status("site").state, "accepted", "three misses of four: still routed");
  t.match(await get(hub.ports.http!, "gina.example"), /gina-site/, "and visitors still reach it");
  t.ok(hubLog.lines.some((l) => l.includes("custom domain record missing") && l.includes("stays routed until 4 lookups in a row miss it")), "a log line says why it is still routed");
  await until("site withdrawn at the fourth", () => gina.client.status("site").state === "refused");
  t.match(await claim(), { state: "lost", misses: 4 });
  t.match(await get(hub.ports.http!, "gina.example"), /^HTTP\/1\.1 404/);
});
