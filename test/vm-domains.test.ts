/**
 * A capsul with its own domain and `--https terminate`, on a booted VM: a real
 * `capsul hub` and `capsul cog` (child processes of the CLI, enrolled by invite +
 * enroll), the cog's provisioner running the tiny busybox VM under QEMU TCG,
 * pebble issuing by HTTP-01 through the hub's port 80, and Debian's
 * pebble-challtestsrv as the DNS the hub looks the TXT proof up in.
 *
 * `capsul vm create web1 --https terminate --domain blog.alice.test` prints the
 * TXT record; until it exists the domain is refused and `vm show` says so and
 * prints it; then both names get a certificate from pebble and curl, trusting
 * only pebble's root, gets the page served by busybox httpd inside the VM for
 * each; `vm domains web1 remove` withdraws the name. One VM boot for all of it.
 */
import t from "tap";
import fs from "node:fs";
import path from "node:path";
import { tmpDir } from "./helpers/cluster.js";
import { startDnsStub } from "./helpers/dnsstub.js";
import { DOMAIN, enrollCog, hubDoc, startCogProc, startHubProc } from "./helpers/hubproc.js";
import { startPebble } from "./helpers/pebble.js";
import { curl, freePortRange, runCli, waitFor, writeYaml } from "./helpers/procs.js";
import { testImage } from "./helpers/testimage.js";
import { cleanupDataDir, intoImportDir, sshKeypair, tempDataDir, VM_BOOT_DEADLINE_MS } from "./helpers/vm.js";

t.setTimeout(15 * 60_000);

/** A CLI step against the VM: bounded generously (TCG on a loaded 2-core machine). */
const STEP_MS = 5 * 60_000;
/** Hub lookups of the TXT proof, quickly for a test (defaults 5s / 30s / 10m / 60s). */
const QUICK_LOOKUPS = { lookup_timeout: "500ms", pending_interval: "200ms", recheck_interval: "500ms", error_retry_interval: "500ms" };

t.test("vm create --https terminate --domain: the TXT record, refused until DNS proves it, then HTTPS from inside the VM for both names; remove withdraws it", async (t) => {
  const dir = tmpDir("capsul-vmdom-");
  t.teardown(() => fs.rmSync(dir, { recursive: true, force: true }));
  const provDir = tempDataDir();
  t.teardown(() => cleanupDataDir(provDir));

  const dns = await startDnsStub(t);
  const pool = await freePortRange(2);
  const hubYaml = writeYaml(path.join(dir, "hub.yaml"), hubDoc(dir, pool.spec, undefined, { domains: { resolver: dns.address, ...QUICK_LOOKUPS } }));
  const hub = await startHubProc(t, hubYaml);
  // pebble validates HTTP-01 by dialling the hub's HTTP listener, for every name (its DNS answers 127.0.0.1).
  const pebble = await startPebble(t, dir, { httpPort: hub.ports.http, tlsPort: hub.ports.tls });
  const rootFile = path.join(dir, "pebble-root.pem");
  fs.writeFileSync(rootFile, await pebble.rootPem());

  const provPort = (await freePortRange(1, 33000, 34000)).from;
  const cogSite = { name: "site", kind: "http", hostname: "www.alice.test", target: "127.0.0.1:9" };
  const cogDoc = (routes: unknown[]) => ({
    cog: {
      data_dir: path.join(dir, "cog"),
      // A site of the cog's own, never dialled: its hostname is not a VM's to take.
      routes,
      reconnect: { min_delay: "100ms", max_delay: "500ms" },
      tunnel: { keepalive_interval: "1s", keepalive_timeout: "3s" },
      listen: { admin: "127.0.0.1:0" },
      acme: { directory_url: pebble.directoryUrl, ca_bundle: pebble.ca.caFile, poll_interval: "100ms", retry_min_delay: "500ms", retry_max_delay: "2s" },
      provisioner: { listen: `127.0.0.1:${provPort}`, data_dir: provDir, accel: "tcg", sizes: { t1: { vcpus: 1, memory: "160MiB", disk: "1GiB" } } },
    },
  });
  const cogYaml = writeYaml(path.join(dir, "cog.yaml"), cogDoc([cogSite]));
  await enrollCog(t, hub, "home1", cogYaml);
  const cog = await startCogProc(t, "home1", cogYaml);
  const c = ["-c", cogYaml];
  const cli = (args: string[]) => runCli([...args, ...c], { timeoutMs: STEP_MS });
  const show = async (): Promise<any> => {
    const r = await cli(["vm", "show", "web1", "--json"]);
    if (r.code !== 0) throw new Error(`vm show: ${r.stderr}`);
    return JSON.parse(r.stdout);
  };
  await waitFor("the provisioner to answer", async () => (await cli(["image", "list", "--json"])).code === 0, { timeoutMs: 60_000 });
  const img = await testImage();
  const imported = await cli(["image", "import", "--name", "tiny", "--kernel", intoImportDir(provDir, img.kernel, "k"),
    "--initrd", intoImportDir(provDir, img.initrd, "i"), "--cmdline", img.cmdline]);
  t.equal(imported.code, 0, imported.stderr);

  // Create: terminate, one custom domain; the CLI prints the record that proves it.
  const custom = "blog.alice.test";
  const web1 = `web1.home1.${DOMAIN}`;
  const { pub } = sshKeypair(provDir);
  const created = await cli(["vm", "create", "web1", "--image", "tiny", "--size", "t1", "--ssh-key", pub, "--https", "terminate", "--domain", custom, "--wait", "ssh"]);
  t.equal(created.code, 0, created.code === 0 ? "vm create --wait ssh" : `vm create: ${created.stderr}\n${cog.text()}`);
  const record = /_capsul-challenge\.blog\.alice\.test\.\s+TXT\s+"([a-z2-7]{52})"/.exec(created.stdout);
  t.ok(record, record ? "vm create prints the TXT record to create" : `no TXT record in: ${created.stdout}`);
  const value = record![1]!;
  // The same record `capsul cog domains` and `capsul cog domains add` give for this cog.
  const listed = JSON.parse((await cli(["cog", "domains", "--json"])).stdout) as Array<{ hostname: string; record: string; value: string }>;
  t.match(listed, [{ hostname: custom, record: `_capsul-challenge.${custom}`, value }], "capsul cog domains lists the VM's domain with the same value");
  const cogAdd = JSON.parse((await cli(["cog", "domains", "add", custom, "--json"])).stdout) as { value: string };
  t.equal(cogAdd.value, value, "capsul cog domains add prints the same value");

  // No TXT record yet: the hub refuses the name, and vm show says why and what to create.
  const waiting = await waitFor("the hub to refuse the custom domain for want of its proof", async () => {
    const v = await show();
    return v.domains?.[0]?.state === "waiting-for-dns-proof" ? v : null;
  }, { timeoutMs: 60_000 });
  t.match(waiting.domains[0], { hostname: custom, proof: { record: `_capsul-challenge.${custom}`, type: "TXT", value } });
  t.match(waiting.domains[0].reason, /_capsul-challenge\.blog\.alice\.test/, "the reason names the record");
  const shownText = await cli(["vm", "show", "web1"]);
  t.match(shownText.stdout, /domain:\s+https:\/\/blog\.alice\.test\/ waiting for the DNS proof/, "vm show: the domain waits for its proof");
  const printsRecord = shownText.stdout.includes(`_capsul-challenge.${custom}.  TXT  "${value}"`);
  t.ok(printsRecord, printsRecord ? "vm show prints the record" : `no record in vm show: ${shownText.stdout}`);
  const tlsPort = hub.ports.tls;
  const httpPort = hub.ports.http;
  const https = (name: string) => curl(["--cacert", rootFile, "--resolve", `${name}:${tlsPort}:127.0.0.1`, `https://${name}:${tlsPort}/`]);
  const refused = await https(custom);
  t.not(refused.code, 0, "no HTTPS for the custom domain before its proof");

  // The default hostname: a certificate by HTTP-01 through the hub, then the VM's own page over HTTPS.
  const certOf = async (name: string): Promise<any> => {
    const r = await cli(["cog", "certs", "--json"]);
    return (JSON.parse(r.stdout) as Array<{ name: string; serial: string | null; state: string }>).find((x) => x.name === name && x.serial && x.state !== "issuing");
  };
  const cert1 = await waitFor(`a certificate for ${web1}`, () => certOf(web1), { timeoutMs: VM_BOOT_DEADLINE_MS });
  t.match(cert1, { names: [web1], issuer: /Pebble/, challenge: "http-01" });
  const page1 = await waitFor(`HTTPS to ${web1}`, async () => { const r = await https(web1); return r.code === 0 ? r : null; }, { timeoutMs: 60_000 });
  t.equal(page1.stdout.trim(), "web1", "curl --cacert <pebble root> gets index.html from busybox httpd inside the VM");

  // The TXT record appears: the hub proves the claim, routes the name, pebble issues for it.
  await dns.setTxt(`_capsul-challenge.${custom}`, value);
  await waitFor("the custom domain accepted", async () => (await show()).domains?.[0]?.state === "accepted", { timeoutMs: 60_000 });
  const cert2 = await waitFor(`a certificate for ${custom}`, () => certOf(custom), { timeoutMs: 120_000 });
  t.match(cert2, { names: [custom], issuer: /Pebble/, challenge: "http-01" });
  const page2 = await waitFor(`HTTPS to ${custom}`, async () => { const r = await https(custom); return r.code === 0 ? r : null; }, { timeoutMs: 60_000 });
  t.equal(page2.stdout.trim(), "web1", "the custom domain reaches the same VM over HTTPS, terminated on the cog");
  t.match((await cli(["vm", "show", "web1"])).stdout, /domain:\s+https:\/\/blog\.alice\.test\/ accepted/);
  const plain = await curl(["--resolve", `${custom}:${httpPort}:127.0.0.1`, `http://${custom}:${httpPort}/`]);
  t.equal(plain.stdout.trim(), "web1", "http:// of the custom domain reaches the VM's port 80 too");

  // The cog restarts (the VM keeps running): the provisioner re-adopts it and publishes the domain again from its record.
  await cog.stop();
  const cog2 = await startCogProc(t, "home1", cogYaml);
  await waitFor("the custom domain accepted again after the restart", async () => (await show()).domains?.[0]?.state === "accepted", { timeoutMs: 60_000 });
  const page3 = await waitFor(`HTTPS to ${custom} after the restart`, async () => { const r = await https(custom); return r.code === 0 ? r : null; }, { timeoutMs: 60_000 });
  t.equal(page3.stdout.trim(), "web1", "the re-adopted VM answers on its custom domain");
  t.match(cog2.text(), /re-adopted running vm vm=web1/, "the VM was re-adopted, not rebooted");

  // A name the cog's capsul.yaml routes is refused, in one line.
  const taken = await cli(["vm", "domains", "web1", "add", "www.alice.test"]);
  t.equal(taken.code, 1);
  t.equal(taken.stderr, "capsul: www.alice.test is the hostname of route site in this cog's capsul.yaml [domain_taken]\n");
  // Also a route added by a reload of capsul.yaml.
  writeYaml(cogYaml, cogDoc([cogSite, { name: "shop", kind: "http", hostname: "shop.alice.test", target: "127.0.0.1:9" }]));
  const reloaded = await cli(["cog", "reload"]);
  t.equal(reloaded.code, 0, reloaded.stderr);
  const taken2 = await cli(["vm", "domains", "web1", "add", "shop.alice.test"]);
  t.equal(taken2.stderr, "capsul: shop.alice.test is the hostname of route shop in this cog's capsul.yaml [domain_taken]\n", "the reloaded routes count");

  // Remove: the routes go, the name no longer reaches the VM; the default hostname stays.
  const removed = await cli(["vm", "domains", "web1", "remove", custom, "--json"]);
  t.equal(removed.code, 0, removed.stderr);
  t.same(JSON.parse(removed.stdout), { vm: "web1", removed: custom });
  const status404 = async (): Promise<string> =>
    (await curl(["-o", "/dev/null", "-w", "%{http_code}", "--resolve", `${custom}:${httpPort}:127.0.0.1`, `http://${custom}:${httpPort}/`])).stdout;
  await waitFor("the hub to withdraw the custom domain", async () => (await status404()) === "404", { timeoutMs: 30_000 });
  t.not((await https(custom)).code, 0, "no HTTPS for the removed domain");
  t.same((await show()).domains, [], "vm show lists no domain");
  t.equal((await https(web1)).stdout.trim(), "web1", "the default hostname still serves");
  // The cog told the hub (domains-release): its claim is gone, `capsul hub domains` no longer lists it.
  const claimed = async (): Promise<boolean> => {
    const r = await runCli(["hub", "domains", "--json", "-c", hubYaml]);
    return r.code === 0 && !(JSON.parse(r.stdout) as Array<{ hostname: string }>).some((c) => c.hostname === custom);
  };
  await waitFor("the hub to release the cog's claim", claimed, { timeoutMs: 30_000 });
});
