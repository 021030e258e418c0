/**
 * Grants that overlap another cog's are refused (issue 8, defect 5), and
 * `invite --tcp-ports` is checked against the pool and the hub's own ports
 * (issue 8, suspected item). The takeover is tried end to end: a real hub,
 * real cogs, a visitor with curl; the refusals through the real CLI.
 */
import t from "tap";
import fs from "node:fs";
import path from "node:path";
import { createInvite } from "../gateway/hub.js";
import { ConfigError } from "../lib/errors.js";
import { patternsOverlap } from "../lib/hostname.js";
import { enroll } from "../tunnel-client/enroll.js";
import {
  cogConfig, enrolledCog, HUB_DOMAIN, httpBackend, hubConfig, startConnectedCog, startTestHub, tmpDir,
} from "./helpers/cluster.js";
import { curl, lines, runCli, spawnCli, writeYaml } from "./helpers/procs.js";

/** How long `capsul hub` may run before a test that expects it to refuse to start gives up on it. */
const REFUSE_START_WAIT_MS = 20_000;

t.test("a cog cannot be granted a name inside another cog's default namespace, so visitors keep reaching alice", async (t) => {
  const dir = tmpDir();
  const hubCfg = hubConfig(dir);
  const hub = await startTestHub(hubCfg);
  t.teardown(() => hub.close());
  const aliceBack = await httpBackend("alice");
  t.teardown(() => aliceBack.close());
  const evilBack = await httpBackend("evil");
  t.teardown(() => evilBack.close());
  const alice = await enrolledCog(hubCfg, hub, cogConfig(dir, "alice", hub.ports.tunnel, [
    { name: "shops", kind: "http", hostname: `*.alice.${HUB_DOMAIN}`, target: `127.0.0.1:${aliceBack.port}` },
  ]), "alice");
  t.teardown(() => alice.close());

  // The attack: a grant covering every cog, plus an exact name under alice's wildcard (an exact name beats a wildcard).
  for (const pattern of [`*.${HUB_DOMAIN}`, `shop.alice.${HUB_DOMAIN}`]) {
    await t.rejects(createInvite(hubCfg, "evil", { hostnames: [pattern] }),
      { name: "ConfigError", message: new RegExp(`^--hostname: "${pattern.replace(/[.*]/g, "\\$&")}" overlaps "(\\*\\.)?alice\\.${HUB_DOMAIN}" of cog alice \\(its default grant\\)`) },
      `invite --hostname ${pattern} is refused`);
  }
  t.same(await hub.store.grants("evil"), { hostnames: [], tcp: [] }, "nothing was stored");
  t.equal(await hub.store.getCog("evil"), undefined, "no invite either");

  // Enrolled anyway (with its default grant only), evil cannot announce the name.
  const inv = await createInvite(hubCfg, "evil");
  const evilCfg = cogConfig(dir, "evil", hub.ports.tunnel, [
    { name: "steal", kind: "http", hostname: `shop.alice.${HUB_DOMAIN}`, target: `127.0.0.1:${evilBack.port}` },
  ]);
  await enroll({ hub: { host: "127.0.0.1", port: hub.ports.tunnel }, token: inv.token, caFingerprint: inv.caFingerprint, dataDir: evilCfg.dataDir, tuning: evilCfg.tunnel });
  const evil = await startConnectedCog(evilCfg, "evil");
  t.teardown(() => evil.close());
  const st = evil.client.status("steal");
  t.match(st.state === "refused" ? st.reason : st.state, /is not granted to cog evil/);

  const host = `shop.alice.${HUB_DOMAIN}`;
  const r = await curl(["--resolve", `${host}:${hub.ports.http}:127.0.0.1`, `http://${host}:${hub.ports.http}/cart`]);
  t.equal(r.stdout, `alice ${host}:${hub.ports.http} /cart\n`, "the visitor reaches alice's backend");
});

t.test("createInvite checks a cog's own grants only against other cogs", async (t) => {
  const dir = tmpDir();
  const hubCfg = hubConfig(dir);
  await createInvite(hubCfg, "alice");
  // Overlapping its own default grant is fine.
  await createInvite(hubCfg, "alice", { hostnames: [`shop.alice.${HUB_DOMAIN}`, "*.alice.example.org", "www.alice.example.org"] });
  await t.rejects(createInvite(hubCfg, "bob", { hostnames: ["a.www.alice.example.org", "*.example.org"] }), ConfigError);
  await t.rejects(createInvite(hubCfg, "bob", { hostnames: ["*.example.org"] }), { message: /"\*\.example\.org" overlaps "\*\.alice\.example\.org" of cog alice \(granted by capsul hub invite\).*capsul hub ungrant alice \*\.alice\.example\.org/ });
});

t.test("the CLI: overlapping grants and bad --tcp-ports are refused with exit 2 and one line; the hub refuses to start on a conflicting capsul.yaml", async (t) => {
  const dir = tmpDir("capsul-grants-");
  t.teardown(() => fs.rmSync(dir, { recursive: true, force: true }));
  const dataDir = path.join(dir, "hub");
  // Hubs started from these files bind loopback ephemeral ports only; invites never bind, so the main file names 7443.
  const base = { data_dir: dataDir, domain: "hub3.test", listen: { tls: "127.0.0.1:0", http: "127.0.0.1:0", tunnel: "127.0.0.1:0", tcp_host: "127.0.0.1", tcp_ports: ["20000-20009"], admin: "127.0.0.1:0" } };
  const yaml = writeYaml(path.join(dir, "hub.yaml"), { hub: { ...base, listen: { ...base.listen, tunnel: "0.0.0.0:7443", admin: "127.0.0.1:7444" }, cogs: [{ name: "dora", tcp_ports: ["20008-20009"] }] } });
  const ok = async (args: string[]): Promise<void> => {
    const r = await runCli([...args, "-c", yaml]);
    t.equal(r.code, 0, `capsul ${args.join(" ")}: ${r.stderr}`);
  };
  const refused = async (args: string[], re: RegExp, file = yaml): Promise<void> => {
    const r = await runCli([...args, "-c", file], { timeoutMs: REFUSE_START_WAIT_MS });
    t.equal(r.code, 2, `capsul ${args.join(" ")} exits 2`);
    t.equal(lines(r.stderr).length, 1, `one line: ${JSON.stringify(r.stderr)}`);
    t.match(r.stderr, re, `capsul ${args.join(" ")}`);
  };

  await ok(["hub", "invite", "alice"]);
  await refused(["hub", "invite", "evil", "--hostname", "*.hub3.test"], /^capsul: config error: --hostname: "\*\.hub3\.test" overlaps "(alice|dora)\.hub3\.test" of cog (alice|dora) \(its default grant\)/);
  await refused(["hub", "invite", "evil", "--hostname", "shop.alice.hub3.test"], /overlaps "\*\.alice\.hub3\.test" of cog alice \(its default grant\)/);
  await ok(["hub", "invite", "alice", "--hostname", "shop.alice.hub3.test"]);
  // A new cog's default grants are checked too.
  await ok(["hub", "invite", "mallory", "--hostname", "*.shop.hub3.test"]);
  await refused(["hub", "invite", "shop"], /the default grant "\*\.shop\.hub3\.test" of cog shop overlaps "\*\.shop\.hub3\.test" of cog mallory \(granted by capsul hub invite\)/);

  // --tcp-ports: the hub's own ports, the pool, other cogs' grants and assignments.
  await refused(["hub", "invite", "tcp1", "--tcp-ports", "7440-7450"], /--tcp-ports: 7440-7450 includes port 7443, the hub's own hub\.listen\.tunnel listener/);
  await refused(["hub", "invite", "tcp1", "--tcp-ports", "7444"], /--tcp-ports: 7444 includes port 7444, the hub's own hub\.listen\.admin listener/);
  await refused(["hub", "invite", "tcp1", "--tcp-ports", "30000-30001"], /--tcp-ports: 30000-30001 is not inside the hub's TCP port pool hub\.listen\.tcp_ports \(20000-20009\)/);
  await ok(["hub", "invite", "bert", "--tcp-ports", "20000-20004"]);
  await refused(["hub", "invite", "tcp1", "--tcp-ports", "20004-20005"], /20004-20005 overlaps "20000-20004" of cog bert \(granted by capsul hub invite\)/);
  await refused(["hub", "invite", "tcp1", "--tcp-ports", "20009"], /20009 overlaps "20008-20009" of cog dora \(hub\.cogs\[0\]\.tcp_ports\[0\] in capsul\.yaml\)/);
  await ok(["hub", "invite", "bert", "--tcp-ports", "20003-20005"]);

  const cogs = JSON.parse((await runCli(["hub", "cogs", "--json", "-c", yaml])).stdout) as Array<{ name: string }>;
  t.same(cogs.map((c) => c.name), ["alice", "bert", "mallory"], "refused invites stored nothing");
  const grants = JSON.parse((await runCli(["hub", "grants", "--json", "-c", yaml])).stdout) as Array<{ cog: string; kind: string; value: string; from: string }>;
  t.same(grants.filter((g) => g.cog === "bert" && g.kind === "tcp").map((g) => g.value), ["20000-20004", "20003-20005"]);
  t.same(grants.find((g) => g.cog === "dora" && g.kind === "tcp"), { cog: "dora", kind: "tcp", value: "20008-20009", from: "hub.cogs[0].tcp_ports[0]" });
  t.same(grants.find((g) => g.value === "*.alice.hub3.test"), { cog: "alice", kind: "hostname", value: "*.alice.hub3.test", from: "default" });

  // capsul.yaml granting what stored grants or known cogs' defaults hold: the hub does not start.
  const wide = writeYaml(path.join(dir, "wide.yaml"), { hub: { ...base, cogs: [{ name: "web", hostnames: ["*.hub3.test"] }] } });
  await refused(["hub"], /^capsul: config error: hub\.cogs\[0\]\.hostnames\[0\]: "\*\.hub3\.test" overlaps "[^"]*alice\.hub3\.test" of cog alice/, wide);
  const under = writeYaml(path.join(dir, "under.yaml"), { hub: { ...base, cogs: [{ name: "web", hostnames: ["x.shop.hub3.test"] }] } });
  await refused(["hub"], /hub\.cogs\[0\]\.hostnames\[0\]: "x\.shop\.hub3\.test" overlaps "\*\.shop\.hub3\.test" of cog mallory \(granted by capsul hub invite\).*capsul hub ungrant mallory \*\.shop\.hub3\.test/, under);
  const ports = writeYaml(path.join(dir, "ports.yaml"), { hub: { ...base, cogs: [{ name: "web", tcp_ports: ["20005"] }] } });
  await refused(["hub"], /hub\.cogs\[0\]\.tcp_ports\[0\]: "20005" overlaps "20003-20005" of cog bert/, ports);

  // Removing the stored grant lets that hub start.
  const un = await runCli(["hub", "ungrant", "mallory", "*.shop.hub3.test", "-c", yaml]);
  t.equal(un.code, 0, un.stderr);
  const unAgain = await runCli(["hub", "ungrant", "mallory", "*.shop.hub3.test", "-c", yaml]);
  t.equal(unAgain.code, 2);
  t.match(unAgain.stderr, /cog mallory has no stored grant "\*\.shop\.hub3\.test"/);
  const started = spawnCli(t, "hub", ["hub", "-c", under]);
  await started.waitLine(/hub ready/);
  await started.stop();
});

t.test("the indexed default-grant check finds exactly what checking every cog's default grant would", async (t) => {
  const dir = tmpDir();
  const hubCfg = hubConfig(dir);
  const cogs = ["alice", "bob", "c1", "hub"];
  for (const c of cogs) await createInvite(hubCfg, c);
  const patterns = [
    "*.hub.test", "hub.test", "test.example", "alice.hub.test", "*.alice.hub.test", "x.alice.hub.test",
    "*.x.alice.hub.test", "a.b.c1.hub.test", "*.bob.hub.test", "bob.hub.test.example", "*.hub.hub.test", "hub.hub.test",
    "*.xhub.test", "alice.xhub.test", "*.nobody.hub.test", "nobody.hub.test", "*.example.org",
  ];
  t.ok(patterns.length > 0);
  for (const pattern of patterns) {
    // Carol's own grants never clash with each other, so carol may collect every pattern that passes.
    const brute = cogs.filter((c) => [`${c}.${HUB_DOMAIN}`, `*.${c}.${HUB_DOMAIN}`].some((d) => patternsOverlap(d, pattern)));
    const refused = await createInvite(hubCfg, "carol", { hostnames: [pattern] }).then(() => null, (err: Error) => err);
    if (brute.length === 0) {
      t.equal(refused, null, `${pattern} overlaps no cog's default grant`);
    } else {
      t.ok(refused instanceof ConfigError, `${pattern} overlaps the default grant of ${brute.join(", ")}`);
      t.match(refused?.message ?? "", new RegExp(`of cog (${brute.join("|")}) \\(its default grant\\)`));
    }
  }
});
