/**
 * The real `capsul cog` process with a `tls: terminate` route: killed (SIGKILL)
 * while its order waits on the CA's finalize answer, it leaves no certificate
 * file, half-written or otherwise; started again it orders afresh and serves.
 * `capsul cog certs` (table and --json) reports what the data dir holds.
 */
import t from "tap";
import fs from "node:fs";
import path from "node:path";
import { createInvite } from "../gateway/hub.js";
import { enroll } from "../tunnel-client/enroll.js";
import { parseConfig } from "../config/config.js";
import { HUB_DOMAIN, httpBackend, tmpDir } from "./helpers/cluster.js";
import { acmeWorld } from "./helpers/acme.js";
import { AcmeFrontProxy } from "./helpers/pebble.js";
import { curl, runCli, spawnCli, waitFor, writeYaml } from "./helpers/procs.js";

t.test("capsul cog: a crash mid-order leaves nothing half-written; the next start issues; capsul cog certs reports", async (t) => {
  const dir = tmpDir("capsul-acme-cli-");
  const w = await acmeWorld(t, dir);
  const proxy = new AcmeFrontProxy(w.pebble);
  await proxy.start();
  t.teardown(() => proxy.stop());
  const backend = await httpBackend("cli");
  t.teardown(() => backend.close());

  const name = `www.home1.${HUB_DOMAIN}`;
  const dataDir = path.join(dir, "cog-data");
  const doc = {
    cog: {
      data_dir: dataDir,
      hub: `127.0.0.1:${w.hub.ports.tunnel}`,
      routes: [{ name: "www", kind: "tls", hostname: name, target: `127.0.0.1:${backend.port}`, tls: "terminate", redirect_http: true }],
      reconnect: { min_delay: "100ms", max_delay: "500ms" },
      listen: { admin: "127.0.0.1:0" },
      acme: { directory_url: proxy.directoryUrl, ca_bundle: w.pebble.ca.caFile, email: "first@example.org", poll_interval: "100ms", retry_min_delay: "500ms" },
    },
  };
  const file = writeYaml(path.join(dir, "capsul.yaml"), doc);
  const cogCfg = parseConfig(doc).cog!;
  const invite = await createInvite(w.hubCfg, "home1");
  await enroll({ hub: { host: "127.0.0.1", port: w.hub.ports.tunnel }, token: invite.token, caFingerprint: invite.caFingerprint, dataDir, tuning: cogCfg.tunnel });

  const empty = await runCli(["cog", "certs", "-c", file]);
  t.equal(empty.code, 0, empty.stderr);
  t.match(empty.stdout, /^No certificates/, "nothing yet");

  // 1. The CA holds the finalize request: the order is mid-flight when the cog is killed.
  proxy.mode = "hold";
  const c1 = spawnCli(t, "cog-1", ["cog", "-c", file]);
  await c1.waitLine(/ordering a certificate .*name=www\.home1\.hub\.test/);
  await waitFor("the finalize request to be held", () => proxy.seen.some((s) => s.action === "held"));
  c1.kill("SIGKILL");
  await c1.waitExit();
  const certsDir = path.join(dataDir, "acme", "certs");
  const leftovers = fs.existsSync(certsDir) ? fs.readdirSync(certsDir) : [];
  t.same(leftovers, [], "no certificate file, and no temp file, after a crash mid-order");
  const accounts = fs.readdirSync(path.join(dataDir, "acme", "accounts"));
  t.equal(accounts.length, 1);
  const account = JSON.parse(fs.readFileSync(path.join(dataDir, "acme", "accounts", accounts[0]!), "utf8"));
  t.match(account, { directory_url: proxy.directoryUrl, account_url: /^https:\/\//, email: "first@example.org", key_pem: /BEGIN PRIVATE KEY/ }, "the account file is whole");
  const mid = JSON.parse((await runCli(["cog", "certs", "-c", file, "--json"])).stdout) as Record<string, unknown>[];
  t.match(mid, [{ name, serial: null, not_after: null }], "certs shows the name without a certificate");

  // 2. The CA answers again: a new process (with a new contact address) orders afresh and serves.
  proxy.mode = "pass";
  doc.cog.acme.email = "second@example.org";
  writeYaml(file, doc);
  const c2 = spawnCli(t, "cog-2", ["cog", "-c", file]);
  await c2.waitLine(/ACME account contact updated email=second@example\.org/);
  await c2.waitLine(/certificate issued .*name=www\.home1\.hub\.test/);
  const updated = JSON.parse(fs.readFileSync(path.join(dataDir, "acme", "accounts", accounts[0]!), "utf8"));
  t.match(updated, { account_url: account.account_url, email: "second@example.org" }, "the same account, with the new contact");
  t.same(fs.readdirSync(certsDir), [`${name}.json`], "one file: the certificate with its key");
  t.equal(fs.statSync(path.join(certsDir, `${name}.json`)).mode & 0o777, 0o600);

  const tlsPort = w.hub.ports.tls!;
  const r = await curl(["--cacert", w.rootFile, "--resolve", `${name}:${tlsPort}:127.0.0.1`, `https://${name}:${tlsPort}/ok`]);
  t.equal(r.code, 0, r.stderr);
  t.equal(r.stdout, `cli ${name}:${tlsPort} /ok\n`, "served over HTTPS by the restarted cog");

  await waitFor("the status file to say scheduled", async () => {
    const rows = JSON.parse((await runCli(["cog", "certs", "-c", file, "--json"])).stdout) as { state: string }[];
    return rows[0]?.state === "scheduled";
  });
  const json = await runCli(["cog", "certs", "-c", file, "--json"]);
  t.equal(json.code, 0, json.stderr);
  const rows = JSON.parse(json.stdout) as Record<string, unknown>[];
  t.equal(rows.length, 1);
  const row = rows[0]!;
  for (const k of Object.keys(row)) t.match(k, /^[a-z]+(_[a-z]+)*$/, `snake_case key ${k}`);
  const isoTime = /^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z$/;
  t.match(row, {
    name, names: [name], issuer: /^Pebble Intermediate CA/, state: "scheduled", challenge: "http-01", failures: 0, last_error: null,
    not_before: isoTime, not_after: isoTime, renew_at: isoTime, last_issued_at: isoTime, serial: /^[0-9A-F]+$/, directory_url: proxy.directoryUrl,
  });
  const table = await runCli(["cog", "certs", "-c", file]);
  t.equal(table.code, 0, table.stderr);
  t.match(table.stdout, /^NAME\s+ISSUER\s+EXPIRES\s+RENEWAL\s+LAST ERROR$/m);
  t.match(table.stdout, new RegExp(`^${name.replace(/\./g, "\\.")}\\s+Pebble Intermediate CA \\S+\\s+\\d{4}-\\d\\d-\\d\\d \\d\\d:\\d\\d:\\d\\dZ \\(in .+\\)\\s+scheduled, renews in .+\\s+-$`, "m"));
  await c2.stop();
});
