import fs from "node:fs";
import http from "node:http";
import path from "node:path";
import t from "tap";
import { createLogger } from "../lib/log.js";
import { startProvisioner } from "../provisioner/index.js";
import { MemoryRouteSink } from "../tunnel-client/routesink.js";
import { backups, backupTestConfig } from "./helpers/backup.js";
import { api, authHeader, authorize, cleanupDataDir, importTestImage, sshKeypair, tempDataDir, waitFor } from "./helpers/vm.js";

t.setTimeout(15 * 60_000);

/**
 * The schedule backs up every running VM whose newest backup is older than
 * its interval, by itself; a VM whose backup fails is retried only after
 * retry_after, not at every check. And the backup routes sit behind the same
 * guard as every other route.
 */
t.test("schedule, retry_after, and the API guard", async (t) => {
  const dataDir = tempDataDir();
  const lines: string[] = [];
  // The shortest interval (1m): each VM gets its first backup at the first check; none gets a second within this test.
  const cfg = backupTestConfig(dataDir, { schedule: "1m", check_interval: "200ms", agent_timeout: "500ms", retry_after: "1h" });
  // VM "bad" has a backup directory whose manifest cannot be read: its scheduled backup fails.
  fs.mkdirSync(path.join(cfg.backups.dir, "bad"), { recursive: true });
  fs.writeFileSync(path.join(cfg.backups.dir, "bad", "manifest.json"), "garbage");
  const prov = await startProvisioner({
    config: cfg, cogName: "home1", hubDomain: "hub.example", hubHost: "hub.example", sink: new MemoryRouteSink(),
    logger: createLogger({ level: "info", write: (l) => lines.push(l) }),
  });
  t.teardown(async () => { await prov.close(); cleanupDataDir(dataDir); });
  authorize(prov.url, dataDir);
  const { pub } = sshKeypair(dataDir);
  await importTestImage(prov.url, dataDir);
  for (const name of ["good", "bad"]) {
    t.equal((await api(prov.url, "POST", "/v1/vms", { name, image: "tiny", size: "t1", ssh_keys: [pub] })).status, 202);
  }
  const first = await waitFor("a scheduled backup of good", async () => (await backups(prov.url, "good"))[0]);
  t.equal(first.kind, "full");
  await waitFor("the failure of bad logged", async () => lines.some((l) => /scheduled backup failed; retrying later vm=bad/.test(l)));
  t.ok(lines.some((l) => /backup done vm=good id=1 kind=full .*scheduled=true/.test(l)), "logged as scheduled");
  t.match(lines.find((l) => /scheduled backup failed/.test(l)), /err="backup manifest .* is unreadable/, "the log says why");
  // Many checks later: no second backup (interval 1m), no retry of bad (retry_after 1h).
  const checksBefore = lines.length;
  await new Promise((r) => setTimeout(r, 3000));
  t.equal((await backups(prov.url, "good")).length, 1, "good: one backup per interval");
  t.equal(lines.filter((l) => /scheduled backup failed/.test(l)).length, 1, "bad: not retried before retry_after");
  t.ok(lines.length - checksBefore < 5, "checks with nothing due log nothing");

  // The guard: no token, a browser's Origin, a rebinding Host, for each backup route.
  const routes: Array<[string, string, unknown]> = [
    ["GET", "/v1/vms/good/backups", undefined], ["POST", "/v1/vms/good/backups", {}], ["POST", "/v1/vms/good/restore", { from: "1", as: "x" }],
  ];
  t.ok(routes.length > 0);
  const url = new URL(prov.url);
  for (const [method, p, body] of routes) {
    // node:http, not fetch: fetch would not send a Host of our choosing.
    const send = (headers: Record<string, string>): Promise<number> => new Promise((resolve, reject) => {
      const data = body === undefined ? "" : JSON.stringify(body);
      const req = http.request({ host: url.hostname, port: Number(url.port), method, path: p, headers: { "content-type": "application/json", "content-length": String(data.length), ...headers } }, (res) => {
        res.resume();
        resolve(res.statusCode ?? 0);
      });
      req.once("error", reject);
      req.end(data);
    });
    t.equal(await send({}), 401, `${method} ${p} without the token`);
    t.equal(await send({ ...authHeader(prov.url), origin: "https://evil.example" }), 403, `${method} ${p} from a web page`);
    t.equal(await send({ ...authHeader(prov.url), host: "evil.example" }), 421, `${method} ${p} under another name`);
  }
  t.equal((await backups(prov.url, "good")).length, 1, "none of them took a backup");
  t.equal((await api(prov.url, "GET", "/v1/vms/x")).status, 404, "nor restored one");
});
