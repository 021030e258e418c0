/**
 * The hub's state store, one test body run against both implementations:
 * SQLite (a real hub.db in a temp dir) and PostgreSQL (a real throwaway
 * cluster, test/helpers/pgcluster.ts). "Another process" is a second store
 * opened on the same file or database: its own connection(s), as
 * `capsul hub …` or a second hub has. What only one dialect has (SQLite's
 * legacy files, PostgreSQL's notification connection) is at the end.
 */
import t, { type Test } from "tap";
import Database from "better-sqlite3";
import fs from "node:fs";
import path from "node:path";
import { parseConfig } from "../config/config.js";
import type { HubConfig } from "../config/types.js";
import { openHubStore } from "../gateway/store/index.js";
import { MIGRATIONS, SCHEMA_VERSION } from "../gateway/store/schema.js";
import { SqliteHubStore } from "../gateway/store/sqlite.js";
import type { DomainProofRow, HubStore, StoreOps } from "../gateway/store/types.js";
import { silentLogger } from "../lib/log.js";
import { HUB_DOMAIN, tmpDir } from "./helpers/cluster.js";
import { startPostgres } from "./helpers/pgcluster.js";
import { databaseOf, storeBackends } from "./helpers/stores.js";
import { capturingLogger, until, within } from "./helpers/rawpeer.js";

/** Deadline for a revocation to reach a watcher (a failure, not a measurement). */
const NOTICE_WAIT_MS = 10_000;

const pgc = await startPostgres(t);
const backends = storeBackends(pgc);

async function open(t: Test, cfg: HubConfig): Promise<HubStore> {
  const s = await openHubStore(cfg, silentLogger);
  t.teardown(() => s.close());
  return s;
}

/** A promise and its resolver: lets a test hold a transaction open at a chosen point. */
function gate(): { wait: Promise<void>; open(): void } {
  let open!: () => void;
  const wait = new Promise<void>((r) => { open = r; });
  return { wait, open };
}

for (const b of backends) {
  t.test(b.name, async (t) => {
    t.test("a new store is at the latest schema; opening it again migrates nothing", async (t) => {
      const { cfg, raw } = await b.fresh(t);
      const a = await open(t, cfg);
      t.equal(a.dialect, b.name);
      await a.ensureCog("one");
      const again = await open(t, cfg);
      t.same(await again.cogNames(), ["one"], "same data, second connection");
      await raw(`INSERT INTO schema_version (version, applied_at) VALUES (${SCHEMA_VERSION + 1}, 0)`);
      await t.rejects(openHubStore(cfg, silentLogger), { message: new RegExp(`has schema version ${SCHEMA_VERSION + 1}, newer than this capsul \\(${SCHEMA_VERSION}\\); upgrade capsul`) });
    });

    t.test("cogs, certificates and their problems", async (t) => {
      const s = await open(t, (await b.fresh(t)).cfg);
      t.equal(await s.certProblem("ghost", "01"), "cog ghost is unknown to this hub");
      await s.ensureCog("alpha", 1000);
      await s.ensureCog("alpha", 2000);
      t.same(await s.getCog("alpha"), { name: "alpha", createdAt: 1000, revokedAt: null }, "ensureCog keeps the first");
      t.equal(await s.certProblem("alpha", "aa"), "certificate aa was not issued by this hub's records");
      const later = Date.UTC(2100, 0, 1); // past 2^31 ms and 2^32 s: BIGINT on both
      await s.recordCert("alpha", "aa", later, 5000);
      await s.recordCert("alpha", "bb", later + 1, 6000);
      await s.ensureCog("beta");
      await s.recordCert("beta", "cc", later, 5000);
      t.equal(await s.certProblem("alpha", "aa"), null);
      t.equal(await s.certProblem("alpha", "cc"), "certificate cc belongs to another cog");
      t.equal(await s.newerCertIssuedAt("alpha", "aa"), 6000, "aa was renewed by bb");
      t.equal(await s.newerCertIssuedAt("alpha", "bb"), null);
      t.same((await s.certsOf("alpha")).map((c) => [c.serial, c.notAfter, c.issuedAt, c.revoked]), [["aa", later, 5000, false], ["bb", later + 1, 6000, false]]);

      await s.markOnline("alpha", "192.0.2.1:5000", ["http:w.alpha.hub.test", "tcp:20001"], 7000);
      let list = await s.listCogs();
      t.same(list.map((c) => [c.name, c.online, c.lastSeen, c.remote, c.routes, c.certNotAfter]), [
        ["alpha", true, 7000, "192.0.2.1:5000", ["http:w.alpha.hub.test", "tcp:20001"], later + 1],
        ["beta", false, null, null, [], later],
      ]);
      await s.markOffline("alpha", 8000);
      await s.markOnline("beta", "x", []);
      await s.markAllOffline();
      list = await s.listCogs();
      t.same(list.map((c) => [c.name, c.online, c.lastSeen]), [["alpha", false, 8000], ["beta", false, list[1]!.lastSeen]]);
    });

    t.test("revoking: certificates, open invites, the log every hub follows; a new invite lifts only the cog's revocation", async (t) => {
      const s = await open(t, (await b.fresh(t)).cfg);
      t.equal(await s.revokeCog("nobody"), false, "unknown cog");
      t.equal(await s.lastRevocationSeq(), 0);
      await s.addInvite("gone", "h1", Date.now() + 60_000);
      t.same(await s.useInvite("h1"), { cog: "gone" });
      await s.recordCert("gone", "s1", Date.now() + 60_000);
      await s.addInvite("gone", "h2", Date.now() + 60_000);
      t.equal(await s.revokeCog("gone", 4242), true);
      t.equal(await s.certProblem("gone", "s1"), "cog gone is revoked");
      t.same([...(await s.revokedCogs())], ["gone"]);
      t.same(await s.checkInvite("h2"), { problem: "unknown invite token" }, "its unused invite is gone");
      t.same(await s.revocationsSince(0), [{ seq: 1, cog: "gone", revokedAt: 4242 }]);
      await s.ensureCog("other");
      t.equal(await s.revokeCog("other"), true);
      t.equal(await s.revokeCog("gone"), true, "again: still known");
      t.same((await s.revocationsSince(1)).map((r) => [r.seq, r.cog]), [[2, "other"], [3, "gone"]], "numbered in order");
      t.equal(await s.lastRevocationSeq(), 3);

      await s.addInvite("gone", "h3", Date.now() + 60_000);
      t.equal((await s.getCog("gone"))!.revokedAt, null, "re-invited");
      t.equal(await s.certProblem("gone", "s1"), "certificate s1 is revoked", "the old certificate stays revoked");
    });

    t.test("invites: unknown, expired, used once even when many try at once from two connections", async (t) => {
      const { cfg } = await b.fresh(t);
      const s = await open(t, cfg);
      const other = await open(t, cfg);
      await s.addInvite("inv", "tok", 10_000, 1_000);
      t.same(await s.checkInvite("nope", 2_000), { problem: "unknown invite token" });
      t.same(await s.checkInvite("tok", 10_000), { problem: "this invite token has expired; ask the hub operator for a new one" });
      t.same(await s.useInvite("tok", 10_000), { problem: "this invite token has expired; ask the hub operator for a new one" }, "not used past expiry");
      t.same(await s.checkInvite("tok", 2_000), { cog: "inv" }, "checking consumes nothing");
      const tries = await Promise.all(Array.from({ length: 12 }, (_, i) => (i % 2 ? other : s).useInvite("tok", 2_000 + i)));
      t.equal(tries.filter((r) => "cog" in r).length, 1, "exactly one enrollment gets it");
      t.ok(tries.filter((r) => "problem" in r).every((r) => "problem" in r && r.problem === "this invite token was already used"), "the rest are told why");
      t.same(await s.checkInvite("tok", 3_000), { problem: "this invite token was already used" });
    });

    t.test("grants", async (t) => {
      const s = await open(t, (await b.fresh(t)).cfg);
      await s.addGrant("a", "hostname", "*.shop.example");
      await s.addGrant("a", "hostname", "*.shop.example");
      await s.addGrant("a", "tcp", "20000-20009");
      await s.addGrant("b", "hostname", "b.example");
      t.same(await s.grants("a"), { hostnames: ["*.shop.example"], tcp: ["20000-20009"] });
      t.same(await s.allGrants("hostname"), [{ cog: "a", kind: "hostname", value: "*.shop.example" }, { cog: "b", kind: "hostname", value: "b.example" }]);
      t.equal((await s.allGrants()).length, 3);
      t.equal(await s.removeGrant("a", "tcp", "20000-20009"), true);
      t.equal(await s.removeGrant("a", "tcp", "20000-20009"), false);
      await s.addGrant("a", "hostname", "x");
      await t.rejects(s.addGrant("a", "bogus" as "tcp", "x"), "the kind is checked by the schema");
    });

    t.test("TCP port assignments", async (t) => {
      const s = await open(t, (await b.fresh(t)).cfg);
      await s.assignPort("a", "ssh", 20001, 100);
      await s.assignPort("a", "web", 20002, 200);
      await s.assignPort("b", "ssh", 20005, 300);
      await t.rejects(s.assignPort("b", "other", 20001), "a port has one owner");
      await t.rejects(s.assignPort("a", "ssh", 20003), "a route has one port");
      t.equal(await s.portFor("a", "ssh"), 20001);
      t.equal(await s.portFor("a", "nope"), undefined);
      t.same(await s.portOwner(20005), { cog: "b", route: "ssh" });
      t.same((await s.assignmentsIn(20000, 20002)).map((a) => a.port), [20001, 20002]);
      t.same(await s.assignmentsOf("a"), [{ port: 20001, cog: "a", route: "ssh", assignedAt: 100 }, { port: 20002, cog: "a", route: "web", assignedAt: 200 }]);
      await s.touchPort(20002, 999);
      t.equal((await s.allAssignments()).find((a) => a.port === 20002)!.assignedAt, 999);
      await s.moveAssignment(20002, "a", "ssh", 1000);
      t.same(await s.assignmentsOf("a"), [{ port: 20002, cog: "a", route: "ssh", assignedAt: 1000 }], "ssh took web's port and dropped its own");
      await t.rejects(s.moveAssignment(20005, "a", "x"), { message: "hub port 20005 is not assigned to cog a" });
      t.same(await s.assignmentsOf("a"), [{ port: 20002, cog: "a", route: "ssh", assignedAt: 1000 }], "a failed move changes nothing");
      await s.reassignPort("a", "ssh", 20003, 1100);
      t.same(await s.portOwner(20003), { cog: "a", route: "ssh" });
      t.equal(await s.portOwner(20002), undefined);
      await s.releasePort("a", "ssh");
      t.same((await s.releasePortNumber(20005)), { port: 20005, cog: "b", route: "ssh", assignedAt: 300 });
      t.equal(await s.releasePortNumber(20005), undefined);
      t.same(await s.allAssignments(), []);
    });

    t.test("transactions: all or nothing; nested ones join; the store waits for an open one", async (t) => {
      const s = await open(t, (await b.fresh(t)).cfg);
      await t.rejects(s.transaction(["ports"], async (tx) => {
        await tx.assignPort("a", "one", 20001);
        await tx.transaction(["certs"], async (inner) => { await inner.ensureCog("a"); });
        throw new Error("changed my mind");
      }), { message: "changed my mind" });
      t.same(await s.allAssignments(), [], "rolled back");
      t.same(await s.cogNames(), [], "the nested part too");

      const held = gate();
      const order: string[] = [];
      const first = s.transaction(["ports"], async (tx) => {
        await tx.assignPort("a", "one", 20001);
        order.push("first wrote");
        await held.wait;
        order.push("first commits");
      });
      await until("the first transaction to write", () => order.length === 1);
      const outside = s.portOwner(20001).then((o) => { order.push(`outside read ${o?.route ?? "nothing"}`); });
      const second = s.transaction(["ports"], async (tx) => { order.push(`second read ${(await tx.portOwner(20001))?.route ?? "nothing"}`); });
      await new Promise((r) => setImmediate(r));
      held.open();
      await Promise.all([first, outside, second]);
      t.equal(order[0], "first wrote");
      t.equal(order[1], "first commits", "nothing ran inside the open transaction");
      t.ok(order.includes("second read one"), `the second transaction saw the first's port: ${order.join(", ")}`);
      // SQLite's one write lock has no order; PostgreSQL's advisory locks must be taken in TX_LOCK_ORDER.
      if (b.name === "postgres") await t.rejects(s.transaction(["certs"], (tx) => tx.transaction(["ports"], async () => {})), { message: /store lock ports taken after a later one/ });
    });

    t.test("the ports lock serialises two connections choosing a free port", async (t) => {
      const { cfg } = await b.fresh(t);
      const [one, two] = [await open(t, cfg), await open(t, cfg)];
      // Each picks the lowest port nobody holds, then assigns it: without the lock both pick 20000.
      const pick = async (s: HubStore, cog: string): Promise<number> => s.transaction(["ports"], async (tx: StoreOps) => {
        const taken = new Set((await tx.assignmentsIn(20000, 20099)).map((a) => a.port));
        let port = 20000;
        while (taken.has(port)) port++;
        await new Promise((r) => setTimeout(r, 5)); // what a slow decision looks like: others get to run
        await tx.assignPort(cog, "ssh", port);
        return port;
      });
      const ports = await Promise.all(Array.from({ length: 6 }, (_, i) => pick(i % 2 ? two : one, `cog${i}`)));
      t.same([...ports].sort(), [20000, 20001, 20002, 20003, 20004, 20005], "six cogs, six ports");
    });

    t.test("routes, endpoints and tunnels, domain proofs", async (t) => {
      const s = await open(t, (await b.fresh(t)).cfg);
      await s.saveRoutes("a", [{ route: "web", kind: "http", hostname: "w.a.hub.test", port: null }, { route: "ssh", kind: "tcp", hostname: null, port: 20001 }]);
      await s.saveRoutes("b", [{ route: "site", kind: "tls", hostname: "b.example", port: null }]);
      t.same(await s.routesOf("a"), [{ route: "ssh", kind: "tcp", hostname: null, port: 20001 }, { route: "web", kind: "http", hostname: "w.a.hub.test", port: null }]);
      await s.saveRoutes("a", [{ route: "web", kind: "http", hostname: "w.a.hub.test", port: null }]);
      t.same((await s.allRoutes()).map((r) => `${r.cog}/${r.route}`), ["a/web", "b/site"], "a set replaces the last one");

      await s.registerEndpoint("hub-a", "198.51.100.1:7443", "a.hub.test", 1000, 1000);
      await s.registerEndpoint("hub-b", "198.51.100.2:7443", "b.hub.test", 1000, 1000);
      t.equal(await s.heartbeatEndpoint("hub-a", 1000, 5000), true);
      t.equal(await s.heartbeatEndpoint("hub-z", 1000, 5000), false, "not registered");
      t.equal(await s.heartbeatEndpoint("hub-b", 999, 5000), false, "another process's row of that name (started at another time)");
      t.same((await s.liveEndpoints(4000)).map((e) => [e.name, e.tunnelAddress, e.serverName, e.startedAt, e.heartbeatAt]),
        [["hub-a", "198.51.100.1:7443", "a.hub.test", 1000, 5000]]);
      t.same(await s.getEndpoint("hub-b"), { name: "hub-b", tunnelAddress: "198.51.100.2:7443", serverName: "b.hub.test", startedAt: 1000, heartbeatAt: 1000 });
      await s.recordTunnel("a", "hub-a", "192.0.2.7:4000", 5100);
      await s.recordTunnel("a", "hub-b", "192.0.2.7:4001", 5100);
      await s.recordTunnel("a", "hub-a", "192.0.2.7:4002", 5200);
      t.same(await s.tunnelsOf("a"), [{ cog: "a", endpoint: "hub-a", remote: "192.0.2.7:4002", connectedAt: 5200 }, { cog: "a", endpoint: "hub-b", remote: "192.0.2.7:4001", connectedAt: 5100 }]);
      await s.ensureCog("a", 1);
      t.same((await s.listCogs()).map((c) => [c.name, c.online, c.endpoints]), [["a", true, ["hub-a", "hub-b"]]], "capsul hub cogs sees the tunnels");
      t.same(await s.reapEndpoints(4000), ["hub-b"], "hub-b's last stamp is older than the cut");
      t.same(await s.tunnelsOf("a"), [{ cog: "a", endpoint: "hub-a", remote: "192.0.2.7:4002", connectedAt: 5200 }], "a reaped endpoint's tunnel rows go with it");
      t.equal(await s.getEndpoint("hub-b"), undefined);
      await s.recordTunnel("c", "hub-a", "192.0.2.9:1", 5300);
      t.same((await s.tunnelsTo("hub-a")).map((r) => r.cog), ["a", "c"]);
      await s.clearTunnel("c", "hub-a");
      t.same((await s.tunnelsTo("hub-a")).map((r) => r.cog), ["a"]);
      await s.registerEndpoint("hub-b", "198.51.100.2:7443", "b.hub.test", 6000, 6000);
      await s.removeEndpoint("hub-a");
      t.same(await s.tunnelsOf("a"), [], "an endpoint's tunnels go with it");
      t.same((await s.listCogs()).map((c) => [c.name, c.online, c.endpoints]), [["a", false, []]]);
      t.same((await s.liveEndpoints(0)).map((e) => e.name), ["hub-b"]);

      const row = (over: Partial<DomainProofRow>): DomainProofRow => ({
        cog: "a", hostname: "blog.alice.net", value: "v1", state: "pending", createdAt: 100, verifiedAt: null, checkedAt: null, lastError: null, proofCog: null, misses: 0, ...over,
      });
      t.equal(await s.putDomainProof("a", "blog.alice.net", "v1", 100), true);
      t.same(await s.domainProofsFor("blog.alice.net"), [row({})]);
      t.equal(await s.markDomainProofChecked("a", "blog.alice.net", "missing", "no TXT record", 200), "pending", "never found: still pending");
      t.same(await s.domainProofsFor("blog.alice.net"), [row({ checkedAt: 200, lastError: "no TXT record" })]);
      t.equal(await s.markDomainProofChecked("a", "blog.alice.net", "found", null, 300), "verified");
      t.equal(await s.putDomainProof("a", "blog.alice.net", "v1", 350), false, "the same claim again changes nothing");
      t.same(await s.domainProofsOf("a"), [row({ state: "verified", verifiedAt: 300, checkedAt: 300 })]);
      t.equal(await s.markDomainProofChecked("a", "blog.alice.net", "no-answer", "timed out", 400), "verified", "no answer keeps the state");
      t.same(await s.domainProofsOf("a"), [row({ state: "verified", verifiedAt: 300, checkedAt: 400, lastError: "timed out" })]);
      // hub.domains.missing_before_withdraw: a proven claim is lost at the 3rd miss in a row, not before.
      t.equal(await s.markDomainProofChecked("a", "blog.alice.net", "missing", "no TXT record", 410, 3), "verified", "one miss of three");
      t.equal(await s.markDomainProofChecked("a", "blog.alice.net", "missing", "no TXT record", 420, 3), "verified", "two");
      t.equal((await s.domainProofsOf("a"))[0]?.misses, 2);
      t.equal(await s.markDomainProofChecked("a", "blog.alice.net", "found", null, 430, 3), "verified", "found again");
      t.same(await s.domainProofsOf("a"), [row({ state: "verified", verifiedAt: 430, checkedAt: 430 })], "found: the count starts over");
      for (const at of [440, 450]) await s.markDomainProofChecked("a", "blog.alice.net", "missing", "no TXT record", at, 3);
      t.equal(await s.markDomainProofChecked("a", "blog.alice.net", "no-answer", "timed out", 455, 3), "verified", "no answer is not a miss");
      t.equal(await s.markDomainProofChecked("a", "blog.alice.net", "missing", "no TXT record", 460, 3), "lost", "the third miss in a row");
      t.same(await s.domainProofsOf("a"), [row({ state: "lost", verifiedAt: 430, checkedAt: 460, lastError: "no TXT record", misses: 3 })]);
      await s.markDomainProofChecked("a", "blog.alice.net", "found", null, 300);
      t.equal(await s.markDomainProofChecked("a", "blog.alice.net", "missing", "no TXT record", 500), "lost", "proven, then gone");
      t.equal(await s.putDomainProof("b", "blog.alice.net", "v2", 600), true, "another cog may claim the same name");
      t.same((await s.domainProofsFor("blog.alice.net")).map((p) => [p.cog, p.state]), [["a", "lost"], ["b", "pending"]]);
      t.same((await s.allDomainProofs()).map((p) => p.cog), ["a", "b"]);
      t.equal(await s.putDomainProof("a", "blog.alice.net", "v3", 700), true, "a new value (another hub CA) starts over");
      t.same(await s.domainProofsOf("a"), [row({ value: "v3", createdAt: 700 })]);
      t.equal(await s.markDomainProofChecked("z", "blog.alice.net", "found", null, 800), undefined, "no such claim");
      t.equal(await s.removeDomainProof("a", "shop.alice.net"), false);
      t.equal(await s.removeDomainProof("b", "blog.alice.net"), true);
      t.same((await s.domainProofsFor("blog.alice.net")).map((p) => p.cog), ["a"], "only b's claim went");

      // A moved VM's proven name follows it (gateway/carry.ts): only a verified claim of the source.
      t.equal(await s.carryDomainProof("a", "b", "blog.alice.net"), false, "a pending claim does not follow");
      await s.markDomainProofChecked("a", "blog.alice.net", "found", null, 900);
      await s.putDomainProof("b", "blog.alice.net", "vb", 950);
      t.equal(await s.carryDomainProof("c", "b", "blog.alice.net"), false, "a cog without a claim carries nothing");
      t.equal(await s.carryDomainProof("a", "b", "blog.alice.net"), true);
      t.same(await s.domainProofsFor("blog.alice.net"), [row({ cog: "b", value: "v3", createdAt: 700, state: "verified", verifiedAt: 900, checkedAt: 900, proofCog: "a" })],
        "the claim is b's now, with a's value, state and place; b's own pending claim gave way");
      t.equal(await s.carryDomainProof("b", "c", "blog.alice.net"), true);
      t.equal((await s.domainProofsOf("c"))[0]?.proofCog, "a", "moved again, it still names the cog its value is for");
      t.equal(await s.putDomainProof("c", "blog.alice.net", "vc", 1000), true, "the cog's own value replaces it");
      t.same(await s.domainProofsOf("c"), [row({ cog: "c", value: "vc", createdAt: 1000 })], "as a new pending claim of its own");
    });

    t.test("a moved VM's TCP port follows it: one transaction, the target's meanwhile port released", async (t) => {
      const s = await open(t, (await b.fresh(t)).cfg);
      await s.assignPort("a", "vm-web1-ssh", 20001, 100);
      await s.assignPort("b", "vm-web1-ssh", 20007, 200);
      await s.assignPort("c", "other", 20009, 300);
      t.equal(await s.carryPort("c", "b", "vm-web1-ssh"), undefined, "a cog holding no port for the route carries nothing");
      t.equal(await s.carryPort("a", "b", "other"), undefined, "nor one naming another cog's route");
      t.same(await s.allAssignments(), [
        { port: 20001, cog: "a", route: "vm-web1-ssh", assignedAt: 100 }, { port: 20007, cog: "b", route: "vm-web1-ssh", assignedAt: 200 },
        { port: 20009, cog: "c", route: "other", assignedAt: 300 },
      ]);
      t.same(await s.carryPort("a", "b", "vm-web1-ssh", 400), { port: 20001, released: 20007 });
      t.same(await s.allAssignments(), [{ port: 20001, cog: "b", route: "vm-web1-ssh", assignedAt: 400 }, { port: 20009, cog: "c", route: "other", assignedAt: 300 }]);
      t.same(await s.carryPort("b", "a", "vm-web1-ssh", 500), { port: 20001, released: null }, "and back, to a cog that got none meanwhile");
      t.same(await s.portOwner(20001), { cog: "a", route: "vm-web1-ssh" });
      // Inside a transaction that fails afterwards, nothing of it stays.
      await t.rejects(s.transaction(["ports"], async (tx) => {
        await tx.carryPort("a", "b", "vm-web1-ssh");
        throw new Error("later step failed");
      }), { message: "later step failed" });
      t.same(await s.portOwner(20001), { cog: "a", route: "vm-web1-ssh" }, "rolled back");
    });

    t.test("a revoke by another connection, or by this one, reaches the watcher", async (t) => {
      const { cfg } = await b.fresh(t);
      const s = await open(t, cfg);
      const cli = await open(t, cfg); // `capsul hub revoke` in another process
      await s.ensureCog("early");
      await s.revokeCog("early"); // before the watch: not news to it
      await s.ensureCog("far");
      await s.ensureCog("near");
      const seen: string[][] = [];
      let notify = (): void => {};
      // SQLite polls (20 ms); PostgreSQL is notified, so an hour between retries proves it needs no poll.
      const watch = await s.watchRevocations((cogs) => { seen.push(cogs); notify(); }, b.name === "sqlite" ? 20 : 3_600_000);
      t.teardown(() => watch.close());
      const next = (): Promise<void> => new Promise((r) => { notify = r; });

      let got = next();
      t.ok(await cli.revokeCog("far"));
      await within(got, "the other connection's revoke", NOTICE_WAIT_MS);
      t.same(seen, [["far"]]);
      got = next();
      t.ok(await s.revokeCog("near"));
      await within(got, "our own revoke", NOTICE_WAIT_MS);
      t.ok(seen.flat().includes("near"), `then near: ${JSON.stringify(seen)}`);
      t.notOk(seen.flat().includes("early"), "never what was revoked before the watch started");
      await watch.close();
    });
  });
}

t.test("sqlite: a hub.db from before the version table (user_version 1) migrates and keeps its data; an older capsul refuses the result", async (t) => {
  const dir = tmpDir("capsul-store-legacy-");
  t.teardown(() => fs.rmSync(dir, { recursive: true, force: true }));
  const file = path.join(dir, "hub.db");
  const old = new Database(file);
  old.exec(MIGRATIONS[0] as string);
  old.prepare("INSERT INTO cogs (name, created_at, revoked_at) VALUES ('kept', 1, NULL)").run();
  old.prepare("INSERT INTO tcp_ports (port, cog, route, assigned_at) VALUES (20001, 'kept', 'ssh', 2)").run();
  old.pragma("user_version = 1");
  old.close();
  const s = await SqliteHubStore.open(dir, { busyTimeoutMs: 1000 }, silentLogger);
  t.teardown(() => s.close());
  t.same(await s.cogNames(), ["kept"]);
  t.same(await s.portOwner(20001), { cog: "kept", route: "ssh" });
  t.equal(await s.revokeCog("kept"), true, "the new tables are there");
  t.same((s.db.prepare("SELECT version FROM schema_version ORDER BY version").all() as Array<{ version: number }>).map((r) => r.version), MIGRATIONS.map((_, i) => i + 1));
  t.equal(s.db.pragma("user_version", { simple: true }), SCHEMA_VERSION, "what capsul before the version table checks, and refuses as newer");
});

t.test("sqlite: migration 3 carries custom-domain proofs of schema 2 over (one row per hostname and cog from then on)", async (t) => {
  const dir = tmpDir("capsul-store-v2-");
  t.teardown(() => fs.rmSync(dir, { recursive: true, force: true }));
  const old = new Database(path.join(dir, "hub.db"));
  old.exec(MIGRATIONS[0] as string);
  old.exec(MIGRATIONS[1] as string);
  old.exec("CREATE TABLE schema_version (version INTEGER PRIMARY KEY, applied_at BIGINT NOT NULL); INSERT INTO schema_version VALUES (1, 0), (2, 0)");
  old.prepare("INSERT INTO domain_proofs (hostname, cog, value, created_at, verified_at, checked_at) VALUES ('blog.alice.net', 'a', 'v', 1, 2, 2), ('x.example', 'b', 'w', 3, NULL, NULL)").run();
  old.close();
  const s = await SqliteHubStore.open(dir, { busyTimeoutMs: 1000 }, silentLogger);
  t.teardown(() => s.close());
  t.same((await s.allDomainProofs()).map((p) => [p.hostname, p.cog, p.state, p.verifiedAt]), [["blog.alice.net", "a", "verified", 2], ["x.example", "b", "pending", null]]);
  t.equal(await s.putDomainProof("b", "blog.alice.net", "v2", 5), true, "a second cog's claim on the same name fits now");
});

t.test("sqlite: statements are prepared once", async (t) => {
  const dir = tmpDir("capsul-store-stmts-");
  t.teardown(() => fs.rmSync(dir, { recursive: true, force: true }));
  const s = await SqliteHubStore.open(dir, { busyTimeoutMs: 1000 }, silentLogger);
  t.teardown(() => s.close());
  let prepared = 0;
  const prepare = s.db.prepare.bind(s.db);
  s.db.prepare = ((sql: string) => { prepared++; return prepare(sql); }) as typeof s.db.prepare;
  for (let i = 0; i < 50; i++) await s.certProblem("x", "y");
  t.equal(prepared, 1, "one prepare for fifty lookups of an unknown cog");
});

t.test("postgres: the password comes from the file or the environment, never from or into capsul.yaml or a log", async (t) => {
  const url = await pgc.createDatabase();
  const dir = tmpDir("capsul-store-pw-");
  t.teardown(() => fs.rmSync(dir, { recursive: true, force: true }));
  const viaEnv = parseConfig({ hub: { data_dir: dir, domain: HUB_DOMAIN, store: url } }).hub!;
  const before = process.env.CAPSUL_STORE_PASSWORD;
  t.teardown(() => { if (before === undefined) delete process.env.CAPSUL_STORE_PASSWORD; else process.env.CAPSUL_STORE_PASSWORD = before; });

  process.env.CAPSUL_STORE_PASSWORD = pgc.password;
  const { log, lines } = capturingLogger("store");
  const s = await openHubStore(viaEnv, log);
  await s.ensureCog("pw");
  t.notMatch(s.location, pgc.password);
  t.match(s.location, /^postgres:\/\/capsul@\/capsul_\d+_\d+\?host=\//);
  await s.close();

  process.env.CAPSUL_STORE_PASSWORD = "wrong-" + pgc.password;
  const err = await openHubStore(viaEnv, log).then(() => null, (e: Error) => e);
  t.match(err?.message, /^state store postgres:\/\/capsul@.*password authentication failed for user "capsul"/, "refused, said in one line");
  t.notMatch(err?.message ?? "", pgc.password);
  delete process.env.CAPSUL_STORE_PASSWORD;

  const missing = parseConfig({ hub: { data_dir: dir, domain: HUB_DOMAIN, store: url, store_password_file: path.join(dir, "nope") } }).hub!;
  await t.rejects(openHubStore(missing, log), { message: `hub.store_password_file: cannot read ${path.join(dir, "nope")}: ENOENT` });
  for (const l of lines) t.notMatch(l, pgc.password, "no log line holds the password");
});

t.test("postgres: a lost notification connection comes back and catches up on what it missed", async (t) => {
  const url = await pgc.createDatabase();
  const dir = tmpDir("capsul-store-listen-");
  t.teardown(() => fs.rmSync(dir, { recursive: true, force: true }));
  const cfg = parseConfig({ hub: { data_dir: dir, domain: HUB_DOMAIN, store: url, store_password_file: pgc.passwordFile } }).hub!;
  const { log, lines } = capturingLogger("store");
  const s = await openHubStore(cfg, log);
  t.teardown(() => s.close());
  const cli = await open(t, cfg);
  await s.ensureCog("missed");
  const seen: string[] = [];
  const watch = await s.watchRevocations((cogs) => seen.push(...cogs), 50);
  t.teardown(() => watch.close());
  const db = databaseOf(url);
  const admin = await pgc.admin(db);
  t.teardown(() => admin.end());
  // The server ends the listening connection (a restart, a failover, an idle-session killer)...
  const killed = await admin.query("SELECT pg_terminate_backend(pid) AS ok FROM pg_stat_activity WHERE datname = $1 AND query LIKE 'LISTEN%'", [db]);
  t.equal(killed.rowCount, 1, "the listener was found and ended");
  // ...and a revoke lands before it is back: nobody is listening for its notification.
  await cli.revokeCog("missed");
  await until("the missed revocation delivered", () => seen.includes("missed"));
  t.ok(lines.some((l) => /lost the state store's revocation listener; reconnecting/.test(l)), "the loss is logged");
});
