/**
 * Bad paths of renewal, each on a cog that already holds a certificate and
 * must renew it at once (renew_at 0.01): the CA unreachable (its port closed),
 * the challenge failing (the name resolves where the CA's validator finds no
 * hub), the CA rate-limiting (429 + Retry-After from a proxy in front of pebble).
 * Each failure is one clear log line; the old certificate keeps being served;
 * retries back off (and wait out Retry-After); nothing crashes, the tunnel stays up.
 */
import t from "tap";
import type { Test } from "tap";
import fs from "node:fs";
import path from "node:path";
import { cogConfig, enrolledCog, httpBackend, HUB_DOMAIN, startConnectedCog, tmpDir } from "./helpers/cluster.js";
import { acmeKeys, acmeWorld, presentedSerial, row, waitIssued, type AcmeWorld } from "./helpers/acme.js";
import { AcmeFrontProxy } from "./helpers/pebble.js";
import { waitFor } from "./helpers/procs.js";
import { createLogger } from "../lib/log.js";
import { terminatedNames } from "../tunnel-client/cog.js";
import type { CertRow } from "../certs/acme.js";
import type { CogConfig } from "../config/types.js";

interface Failing { lines: string[]; failures: CertRow[]; serial: string; name: string; cog: Awaited<ReturnType<typeof startConnectedCog>>; cfg: CogConfig }

/**
 * Issues a certificate for `site.<cogName>` through the proxy, stops that cog,
 * runs `inject`, and starts the cog again with renewal due at once; returns the
 * running cog, its log lines and a row per failed order (as each failure happened).
 */
async function renewalFailing(t: Test, w: AcmeWorld, proxy: AcmeFrontProxy, cogName: string, inject: () => Promise<void>): Promise<Failing> {
  const backend = await httpBackend("site");
  t.teardown(() => backend.close());
  const name = `site.${cogName}.${HUB_DOMAIN}`;
  const routes = [{ name: "site", kind: "tls", hostname: name, target: `127.0.0.1:${backend.port}`, tls: "terminate" }];
  const first = cogConfig(w.dir, cogName, w.hub.ports.tunnel, routes, {}, acmeKeys(proxy.directoryUrl, w.pebble.ca.caFile));
  const cog1 = await enrolledCog(w.hubCfg, w.hub, first, cogName);
  const issued = await waitIssued(cog1, name);
  await cog1.close();

  await inject();
  const lines: string[] = [];
  const log = createLogger({ level: "debug", component: cogName, write: (l) => lines.push(l) });
  const again = cogConfig(w.dir, cogName, w.hub.ports.tunnel, routes, {},
    acmeKeys(proxy.directoryUrl, w.pebble.ca.caFile, { renew_at: 0.01, retry_min_delay: "200ms", retry_max_delay: "1h" }));
  const failures: CertRow[] = [];
  const cog = await startConnectedCog(again, cogName, log);
  cog.acme.on("failed", () => failures.push(row(cog, name)!));
  t.teardown(() => cog.close());
  return { lines, failures, serial: issued.serial!, name, cog, cfg: again };
}

/** Waits for `n` failed orders; on timeout the error carries the cog's log, to see why. */
async function failuresAtLeast(f: Failing, n: number): Promise<void> {
  try {
    await waitFor(`${n} failed renewals`, () => f.failures.length >= n);
  } catch (err) {
    throw new Error(`${(err as Error).message}; the cog logged:\n${f.lines.join("\n")}`);
  }
}

const VALIDITY_SEC = 120;

/** Each failure's wait: next attempt minus the moment it failed. */
const waits = (rows: CertRow[]) => rows.map((r) => Date.parse(r.nextAttemptAt!) - Date.parse(r.lastErrorAt!));

t.test("renewal failures: one log line each, the old certificate keeps serving, retries back off", async (t) => {
  const dir = tmpDir("capsul-acme-fail-");
  // Two-minute certificates: renew_at 0.01 then puts the renewal within 1.2 s of issuance
  // (1% of pebble's default five years would be 18 days, jitter or not).
  const w = await acmeWorld(t, dir, { validitySec: VALIDITY_SEC });
  const rootPem = await w.pebble.rootPem();
  const proxy = new AcmeFrontProxy(w.pebble);
  await proxy.start();
  t.teardown(() => proxy.stop());
  const tlsPort = w.hub.ports.tls!;

  await t.test("the CA is unreachable", async (t) => {
    const f = await renewalFailing(t, w, proxy, "down", () => proxy.stop());
    t.teardown(() => proxy.start());
    await failuresAtLeast(f, 3);
    const lines = f.lines.filter((l) => / WARN .*cannot reach the ACME CA/.test(l));
    t.ok(lines.length >= 3, `one warning per failure (${lines.length})`);
    for (const l of lines.slice(0, 3)) {
      t.match(l, `name=${f.name}`);
      t.match(l, /error="cannot reach the ACME CA at https:\/\/127\.0\.0\.1:\d+\/dir: connect ECONNREFUSED/);
      t.match(l, /nextTryIn=\S+/);
      t.match(l, `serving="serial ${f.serial} until`);
    }
    t.equal(f.lines.filter((l) => / (WARN|ERROR) /.test(l)).length, lines.length, "and no other warnings");
    const [d1, d2, d3] = waits(f.failures);
    t.ok(d1! < d2! && d2! < d3!, `the waits grow: ${d1} < ${d2} < ${d3} ms`);
    t.equal(f.failures[0]!.lastErrorKind, "unreachable");
    t.equal(await presentedSerial(tlsPort, f.name, rootPem), f.serial, "the old certificate is still served");
    t.ok(f.cog.client.connected, "the cog is still connected to the hub");
  });

  await t.test("the challenge fails", async (t) => {
    const f = await renewalFailing(t, w, proxy, "wrong", async () => {
      // The name now resolves where no hub listens: the validator's connection is refused.
      await w.pebble.setA(`site.wrong.${HUB_DOMAIN}`, ["127.0.0.2"]);
      // And a new account: pebble 2.4 reuses an account's valid authorization 1% of the time
      // even with PEBBLE_AUTHZREUSE=0 (it compares rand.Intn(100) <= 0), which would let an
      // order skip the challenge under test.
      fs.rmSync(path.join(w.dir, "cog-wrong", "acme", "accounts"), { recursive: true });
    });
    await failuresAtLeast(f, 2);
    const lines = f.lines.filter((l) => / WARN .*could not validate the challenge/.test(l));
    t.ok(lines.length >= 2, `one warning per failure (${lines.length})`);
    t.match(lines[0], /error="the CA could not validate the challenge: .*127\.0\.0\.2/, "it says what the CA's validator saw");
    t.equal(f.failures[0]!.lastErrorKind, "challenge");
    const [d1, d2] = waits(f.failures);
    t.ok(d1! < d2!, `the waits grow: ${d1} < ${d2} ms`);
    t.equal(await presentedSerial(tlsPort, f.name, rootPem), f.serial, "the old certificate is still served");
  });

  await t.test("one order at a time per name, however often the routes are announced", async (t) => {
    const backend = await httpBackend("one");
    t.teardown(() => backend.close());
    const name = `site.one.${HUB_DOMAIN}`;
    const lines: string[] = [];
    proxy.mode = "hold"; // the CA never answers finalize: the first order stays in flight
    t.teardown(() => { proxy.mode = "pass"; });
    const cfg = cogConfig(w.dir, "one", w.hub.ports.tunnel, [{ name: "site", kind: "tls", hostname: name, target: `127.0.0.1:${backend.port}`, tls: "terminate" }],
      {}, acmeKeys(proxy.directoryUrl, w.pebble.ca.caFile));
    const cog = await enrolledCog(w.hubCfg, w.hub, cfg, "one", { log: createLogger({ level: "info", write: (l) => lines.push(l) }) });
    t.teardown(() => cog.close());
    await waitFor("the finalize request to be held", () => proxy.seen.some((s) => s.action === "held"));
    // What every route answer from the hub does; ordering is decided synchronously in it.
    for (let i = 0; i < 5; i++) cog.acme.setNames(terminatedNames(cog.client, true));
    t.equal(lines.filter((l) => l.includes("ordering a certificate") && l.includes(`name=${name}`)).length, 1, "one order in flight, no second one");
    t.equal(row(cog, name)!.state, "issuing");
  });

  await t.test("the CA rate-limits: Retry-After is honoured, also across a restart", async (t) => {
    proxy.retryAfterSec = 3600;
    const f = await renewalFailing(t, w, proxy, "busy", async () => { proxy.mode = "rate-limit"; });
    t.teardown(() => { proxy.mode = "pass"; });
    await failuresAtLeast(f, 1);
    const r = f.failures[0]!;
    t.equal(r.lastErrorKind, "rate-limited");
    t.ok(waits([r])[0]! >= 3_599_000, `the next try waits out Retry-After: ${r.nextAttemptAt} after ${r.lastErrorAt}`);
    const lines = f.lines.filter((l) => / WARN .*rate-limits/.test(l));
    t.equal(lines.length, 1, "one warning");
    t.match(lines[0], /retryAfter=1h/);
    t.match(lines[0], /too many new orders recently/);
    t.equal(proxy.seen.filter((s) => s.action === "429").length, 1, "one refused order so far");
    t.equal(await presentedSerial(tlsPort, f.name, rootPem), f.serial, "the old certificate is still served");
    // The wait survives a restart: the next cog does not ask before the hour is up.
    await f.cog.close();
    const next = await startConnectedCog(f.cfg, "busy");
    t.teardown(() => next.close());
    const after = row(next, f.name)!;
    t.equal(after.state, "retrying");
    t.equal(after.nextAttemptAt, r.nextAttemptAt, "the restarted cog keeps the CA's time");
    t.equal(proxy.seen.filter((s) => s.action === "429").length, 1, "and asks nothing meanwhile");
  });
});
