import { createHash } from "node:crypto";
import fs from "node:fs";
import http from "node:http";
import type { AddressInfo } from "node:net";
import path from "node:path";
import t, { type Test } from "tap";
import { silentLogger } from "../lib/log.js";
import { Store } from "../provisioner/db.js";
import { startProvisioner } from "../provisioner/index.js";
import { MemoryRouteSink } from "../tunnel-client/routesink.js";
import { addDomain, forgetDomain, readAddedDomains } from "../tunnel-client/domains.js";
import { challengeName, domainProofValue } from "../protocol/domainproof.js";
import type { CogDomains } from "../provisioner/vmdomains.js";
import { api, authHeader, authorize, cleanupDataDir, run, sshKeypair, tempDataDir, testConfig, waitFor } from "./helpers/vm.js";

// No VM boots here: QEMU is /bin/false, so every start fails fast and cheaply.
const MIB = 1024 * 1024;

async function setup(t: Test, over: Parameters<typeof testConfig>[1] = {}, domains?: CogDomains) {
  const dataDir = tempDataDir();
  const sink = new MemoryRouteSink();
  const cfg = testConfig(dataDir, {
    qemuBinary: "/bin/false",
    hostMemoryBytes: 512 * MIB,
    sizes: { ...testConfig(dataDir).sizes, big: { vcpus: 1, memoryBytes: 1024 * MIB, diskBytes: 1024 * MIB, diskIopsPerSec: 0, diskBytesPerSec: 0 } },
    ...over,
  });
  const prov = await startProvisioner({ config: cfg, cogName: "home1", hubDomain: "hub.example", hubHost: "hub.example", sink, logger: silentLogger, domains });
  t.teardown(async () => { await prov.close(); cleanupDataDir(dataDir); });
  authorize(prov.url, dataDir);
  const { pub } = sshKeypair(dataDir);
  // A tiny raw "disk" is enough for everything that does not boot.
  const raw = path.join(cfg.importDir, "disk.raw");
  fs.writeFileSync(raw, Buffer.alloc(MIB, 0));
  return { dataDir, base: prov.url, pub, raw, sink, importDir: cfg.importDir };
}

function postOwnConnection(url: string, body: string, headers: Record<string, string>): Promise<{ status: number; body: any }> {
  return new Promise((resolve, reject) => {
    const req = http.request(url, { method: "POST", agent: false, headers: { ...headers, "content-type": "application/json", "content-length": Buffer.byteLength(body) } }, (res) => {
      let text = "";
      res.on("data", (d: Buffer) => { text += d.toString(); });
      res.on("end", () => resolve({ status: res.statusCode ?? 0, body: JSON.parse(text) }));
    });
    // The server may close while we still write: that is the point.
    req.on("error", (e) => { if (!req.writableEnded) reject(e); });
    req.end(body);
  });
}

const isError = (r: { body: any }, code: string): boolean => r.body?.error?.code === code && typeof r.body.error.message === "string";

t.test("bad VM requests are clear 4xx JSON errors and leave nothing behind", async (t) => {
  const { dataDir, base, pub, raw } = await setup(t);
  t.equal((await api(base, "POST", "/v1/images", { name: "disk", source: raw })).status, 201);
  const ok = { name: "vm1", image: "disk", size: "t1", ssh_keys: [pub] };
  const cases: Array<[string, unknown, number, string, Record<string, string>?]> = [
    ["bad JSON", "{not json", 400, "bad_json"],
    ["wrong content type", JSON.stringify(ok), 415, "bad_content_type", { "content-type": "text/plain" }],
    ["array body", [], 400, "bad_request"],
    ["null body", "null", 400, "bad_request"],
    ["unknown field", { ...ok, cpus: 4 }, 400, "bad_request"],
    ["upper-case name", { ...ok, name: "Web" }, 400, "bad_name"],
    ["name with a path", { ...ok, name: "../etc" }, 400, "bad_name"],
    ["name like an option", { ...ok, name: "-daemonize" }, 400, "bad_name"],
    ["name too long", { ...ok, name: "a".repeat(40) }, 400, "bad_name"],
    ["name not a string", { ...ok, name: 7 }, 400, "bad_name"],
    ["unknown image", { ...ok, image: "nope" }, 400, "image_not_found"],
    ["unknown size", { ...ok, size: "f9-z" }, 400, "size_not_found"],
    ["no keys", { ...ok, ssh_keys: [] }, 400, "bad_ssh_key"],
    ["keys not a list", { ...ok, ssh_keys: pub }, 400, "bad_ssh_key"],
    ["garbage key", { ...ok, ssh_keys: ["hello"] }, 400, "bad_ssh_key"],
    ["key with bad base64", { ...ok, ssh_keys: ["ssh-ed25519 !!!!"] }, 400, "bad_ssh_key"],
    ["key with a newline (cloud-config injection)", { ...ok, ssh_keys: [`${pub}\nruncmd: [reboot]`] }, 400, "bad_ssh_key"],
    ["key with a quote", { ...ok, ssh_keys: [`${pub.split(" ").slice(0, 2).join(" ")} a"b`] }, 400, "bad_ssh_key"],
    ["key type does not match data", { ...ok, ssh_keys: [pub.replace("ssh-ed25519", "ssh-rsa")] }, 400, "bad_ssh_key"],
    ["too many keys", { ...ok, ssh_keys: Array(33).fill(pub) }, 400, "bad_ssh_key"],
    ["more memory than the host", { ...ok, size: "big" }, 409, "memory_overcommit"],
    ["number body", "42", 400, "bad_request"],
    ["string body", '"vm1"', 400, "bad_request"],
    ["name as object", { ...ok, name: { x: 1 } }, 400, "bad_name"],
    ["image as list", { ...ok, image: ["disk"] }, 400, "bad_request"],
    ["size empty", { ...ok, size: "" }, 400, "bad_request"],
    ["https mode unknown", { ...ok, https: "both" }, 400, "bad_request"],
    ["https mode not a string", { ...ok, https: true }, 400, "bad_request"],
    ["keys not strings", { ...ok, ssh_keys: [1, null] }, 400, "bad_ssh_key"],
    ["empty object", {}, 400, "bad_name"],
    ["deeply nested", "[".repeat(5000) + "]".repeat(5000), 400, "bad_request"],
    ["prototype pollution attempt", '{"__proto__": {"x": 1}, "name": "vm9"}', 400, "bad_request"],
  ];
  for (const [what, body, status, code, headers] of cases) {
    const r = await api(base, "POST", "/v1/vms", body, headers);
    t.equal(r.status, status, `${what}: ${r.text}`);
    t.ok(isError(r, code), `${what}: code ${code}`);
  }
  // Oversize: the server answers before reading the body and closes the
  // connection, so this one goes on its own connection (agent: false).
  const big = await postOwnConnection(`${base}/v1/vms`, JSON.stringify({ ...ok, pad: "x".repeat(200_000) }), authHeader(base));
  t.equal(big.status, 413);
  t.ok(isError(big, "body_too_large"));
  t.same((await api(base, "GET", "/v1/vms")).body.vms, [], "no VM recorded");
  t.same(fs.readdirSync(path.join(dataDir, "vms")), [], "no run dir left");

  // A good request, then the same name again.
  const c = await api(base, "POST", "/v1/vms", ok);
  t.equal(c.status, 202, c.text);
  t.equal(c.body.vm.https, "passthrough", "the default HTTPS mode");
  const dup = await api(base, "POST", "/v1/vms", ok);
  t.equal(dup.status, 409);
  t.ok(isError(dup, "vm_exists"));
  // QEMU is /bin/false: the start fails, the VM says why.
  const failed = await waitFor("vm1 in error", async () => {
    const r = await api(base, "GET", "/v1/vms/vm1");
    return r.body.vm.state === "error" ? r.body.vm : undefined;
  }, 30_000);
  t.match(failed.message, /false/);
  t.match((await api(base, "GET", "/v1/drift")).body.drift, [{ vm: "vm1", kind: "not-running" }]);

  // Paths and lifecycle on bad targets.
  t.ok(isError(await api(base, "GET", "/v1/vms/BAD"), "bad_name"));
  t.equal((await api(base, "GET", "/v1/vms/nope")).status, 404);
  t.ok(isError(await api(base, "POST", "/v1/vms/nope/stop"), "vm_not_found"));
  t.ok(isError(await api(base, "POST", "/v1/vms/vm1/reboot"), "vm_not_running"));
  t.ok(isError(await api(base, "POST", "/v1/vms/vm1/io-limits", { iops: -1, bps: 0 }), "bad_request"));
  t.ok(isError(await api(base, "GET", "/v1/nothing"), "not_found"));

  // An image in use cannot be deleted; once the VM is gone it can.
  const inUse = await api(base, "DELETE", "/v1/images/disk");
  t.equal(inUse.status, 409);
  t.ok(isError(inUse, "image_in_use"));
  t.equal((await api(base, "DELETE", "/v1/vms/vm1")).status, 200);
  t.notOk(fs.existsSync(path.join(dataDir, "vms", "vm1")));
  // --https terminate is recorded and shown (one VM at a time fits this cog's memory).
  const term = await api(base, "POST", "/v1/vms", { ...ok, name: "vm2", https: "terminate" });
  t.equal(term.status, 202, term.text);
  t.equal(term.body.vm.https, "terminate");
  t.equal((await api(base, "GET", "/v1/vms/vm2")).body.vm.https, "terminate", "kept");
  t.equal((await api(base, "DELETE", "/v1/vms/vm2")).status, 200);
  t.equal((await api(base, "DELETE", "/v1/images/disk")).status, 200);
  t.notOk(fs.existsSync(path.join(dataDir, "images", "disk")));

  // Sizes and memory accounting are visible.
  const sizes = (await api(base, "GET", "/v1/sizes")).body;
  t.match(sizes.sizes, [{ name: "f1-s", vcpus: 1, memory_bytes: 512 * MIB }]);
  t.equal(sizes.memory.limit_bytes, 512 * MIB);
});

t.test("qemu-img failing: a 500 JSON error, nothing half-created", async (t) => {
  const dir = tempDataDir();
  t.teardown(() => fs.rmSync(dir, { recursive: true, force: true }));
  const fake = path.join(dir, "qemu-img");
  // Real qemu-img for `info`/`convert` (image import), failure for `create` (the VM disk).
  fs.writeFileSync(fake, `#!/bin/sh\nif [ "$1" = create ]; then echo "qemu-img: simulated: No space left on device" >&2; exit 1; fi\nexec qemu-img "$@"\n`, { mode: 0o755 });
  const { dataDir, base, pub, raw } = await setup(t, { qemuImgBinary: fake });
  t.equal((await api(base, "POST", "/v1/images", { name: "disk", source: raw })).status, 201);
  const r = await api(base, "POST", "/v1/vms", { name: "vm1", image: "disk", size: "t1", ssh_keys: [pub] });
  t.equal(r.status, 500, r.text);
  t.ok(isError(r, "disk_create_failed"));
  t.match(r.body.error.message, /No space left on device/);
  t.same((await api(base, "GET", "/v1/vms")).body.vms, [], "no VM recorded");
  t.same(fs.readdirSync(path.join(dataDir, "vms")), [], "no run dir left");
  t.equal((await api(base, "DELETE", "/v1/images/disk")).status, 200, "image not held by a half-created VM");
});

t.test("image import: raw → qcow2, checksums, URLs, progress, bad sources", async (t) => {
  // The download below comes from a loopback server: allowed here explicitly
  // (import_allowed_cidrs); "image import attacks" shows the default refuses it.
  const { dataDir, base, raw, importDir } = await setup(t, { importAllowedCidrs: ["127.0.0.0/8"] });
  const sha = createHash("sha256").update(fs.readFileSync(raw)).digest("hex");

  const imp = await api(base, "POST", "/v1/images", { name: "raw1", source: raw, sha256: sha });
  t.equal(imp.status, 201, imp.text);
  t.equal(imp.body.image.format, "qcow2");
  t.equal(imp.body.image.files.disk.sha256, sha);
  const info = await run("qemu-img", ["info", "--output=json", path.join(dataDir, "images", "raw1", "disk.qcow2")]);
  t.equal(JSON.parse(info.stdout).format, "qcow2", "raw was converted to qcow2");
  t.equal(fs.statSync(path.join(dataDir, "images", "raw1", "disk.qcow2")).mode & 0o222, 0, "base image is read-only");

  const bad = await api(base, "POST", "/v1/images", { name: "raw2", source: raw, sha256: "0".repeat(64) });
  t.equal(bad.status, 400);
  t.ok(isError(bad, "checksum_mismatch"));
  t.same(fs.readdirSync(path.join(dataDir, "images")).sort(), ["raw1"], "nothing left of the failed import");
  t.same((await api(base, "GET", "/v1/images")).body.images.map((i: any) => i.name), ["raw1"]);

  t.ok(isError(await api(base, "POST", "/v1/images", { name: "raw1", source: raw }), "image_exists"));
  t.ok(isError(await api(base, "POST", "/v1/images", { name: "x", source: "relative/path" }), "bad_source"));
  t.ok(isError(await api(base, "POST", "/v1/images", { name: "x", source: path.join(importDir, "nonexistent") }), "bad_source"));
  fs.mkdirSync(path.join(importDir, "subdir"));
  t.ok(isError(await api(base, "POST", "/v1/images", { name: "x", source: path.join(importDir, "subdir") }), "bad_source"));
  t.ok(isError(await api(base, "POST", "/v1/images", { name: "x", source: "/nonexistent/disk" }), "source_refused"));
  t.ok(isError(await api(base, "POST", "/v1/images", { name: "x", source: dataDir }), "source_refused"));
  t.ok(isError(await api(base, "POST", "/v1/images", { name: "x" }), "bad_request"));
  t.ok(isError(await api(base, "POST", "/v1/images", { name: "x", source: raw, sha256: "abc" }), "bad_checksum"));
  t.ok(isError(await api(base, "POST", "/v1/images", { name: "X", source: raw }), "bad_name"));
  // A qcow2 that names a backing file could read any file on the cog.
  const evil = path.join(importDir, "evil.qcow2");
  await run("qemu-img", ["create", "-q", "-f", "qcow2", "-F", "raw", "-b", "/etc/hostname", evil]);
  t.ok(isError(await api(base, "POST", "/v1/images", { name: "evil", source: evil }), "image_invalid"));

  // Download over HTTP (loopback) with NDJSON progress.
  const big = path.join(dataDir, "big.raw");
  fs.writeFileSync(big, Buffer.alloc(3 * MIB, 1));
  const srv = http.createServer((req, res) => {
    if (req.url === "/big.raw") { res.setHeader("content-length", 3 * MIB); fs.createReadStream(big).pipe(res); return; }
    res.statusCode = 404;
    res.end();
  });
  await new Promise<void>((r) => srv.listen(0, "127.0.0.1", () => r()));
  t.teardown(() => new Promise<void>((r) => srv.close(() => r())));
  const url = `http://127.0.0.1:${(srv.address() as AddressInfo).port}`;
  const res = await fetch(`${base}/v1/images`, {
    method: "POST", headers: { ...authHeader(base), "content-type": "application/json", accept: "application/x-ndjson" },
    body: JSON.stringify({ name: "dl", source: `${url}/big.raw` }),
  });
  const lines = (await res.text()).trim().split("\n").map((l) => JSON.parse(l));
  t.ok(lines.some((l) => l.progress?.bytes === 3 * MIB && l.progress.total_bytes === 3 * MIB), "progress reported");
  t.equal(lines.at(-1).image?.name, "dl", "last line is the image");
  const missing = await api(base, "POST", "/v1/images", { name: "dl2", source: `${url}/nope` });
  t.equal(missing.status, 502);
  t.ok(isError(missing, "download_failed"));
});

t.test("state from before run-time disk limits were stored opens, migrates, and keeps its VMs", async (t) => {
  const dataDir = tempDataDir();
  t.teardown(() => cleanupDataDir(dataDir));
  const file = path.join(dataDir, "old.db");
  // Schema version 1, as an earlier capsul left it, with one VM.
  const { default: Database } = await import("better-sqlite3");
  const old = new Database(file);
  old.exec(`CREATE TABLE vms (name TEXT PRIMARY KEY, uuid TEXT NOT NULL UNIQUE, image TEXT NOT NULL, size TEXT NOT NULL,
    ssh_keys TEXT NOT NULL, desired TEXT NOT NULL, state TEXT NOT NULL, message TEXT, accel TEXT,
    port_ssh INTEGER, port_http INTEGER, port_https INTEGER, created_at TEXT NOT NULL, updated_at TEXT NOT NULL);
    CREATE TABLE images (name TEXT PRIMARY KEY, format TEXT NOT NULL, files TEXT NOT NULL, cmdline TEXT,
    ssh_user TEXT NOT NULL, created_at TEXT NOT NULL);
    INSERT INTO vms VALUES ('web1', 'u-1', 'tiny', 'f1-s', '[]', 'running', 'running', NULL, 'tcg', 2201, 2202, 2203, 't0', 't0');
    PRAGMA user_version = 1;`);
  old.close();
  const store = new Store(file);
  t.teardown(() => store.close());
  t.equal(store.db.pragma("user_version", { simple: true }), 4, "migrated");
  const v = store.getVm("web1")!;
  t.same([v.uuid, v.state, v.ports], ["u-1", "running", { ssh: 2201, http: 2202, https: 2203 }], "the VM is intact");
  t.equal(v.ioLimits, null, "no run-time limits: the size's apply");
  t.equal(v.https, "passthrough", "a VM from before --https passes TLS through, as it did");
  t.same(v.domains, [], "a VM from before custom domains has none");
  store.updateVm("web1", { domains: ["blog.alice.net"] });
  t.same(store.getVm("web1")!.domains, ["blog.alice.net"], "domains are stored");
  store.updateVm("web1", { ioLimits: { iops: 100, bps: 0 } });
  t.same(store.getVm("web1")!.ioLimits, { iops: 100, bps: 0 }, "stored (0 = unlimited)");
  store.updateVm("web1", { state: "stopped" });
  t.same(store.getVm("web1")!.ioLimits, { iops: 100, bps: 0 }, "other updates leave them alone");
});

t.test("the memory check counts QEMU's own memory (vm_memory_overhead) for every VM that should run", async (t) => {
  // 512 MiB host; t1 VMs are 160 MiB. With 90 MiB of QEMU overhead each, two fit and a third does not.
  const { base, pub, raw } = await setup(t, { vmMemoryOverheadBytes: 90 * MIB });
  t.equal((await api(base, "POST", "/v1/images", { name: "disk", source: raw })).status, 201);
  const mk = (name: string) => api(base, "POST", "/v1/vms", { name, image: "disk", size: "t1", ssh_keys: [pub] });
  t.equal((await mk("vm1")).status, 202, "160 + 90 MiB fits in 512");
  t.equal((await mk("vm2")).status, 202, "2 x 250 MiB = 500 MiB fits");
  const third = await mk("vm3");
  t.equal(third.status, 409, "a third would need 750 MiB");
  t.ok(isError(third, "memory_overcommit"));
  t.match(third.body.error.message, /VMs would need 750 MiB \(their sizes \+ vm_memory_overhead 90 MiB each\), the limit is 512 MiB/);
  const sizes = await api(base, "GET", "/v1/sizes");
  t.equal(sizes.body.memory.committed_bytes, 2 * 250 * MIB, "committed memory includes the overhead");
});

t.test("max_vms holds against concurrent creates (the check and the insert do not straddle an await)", async (t) => {
  // A qcow2 image: create awaits `qemu-img info` for its virtual size before recording the VM.
  const { base, pub, raw } = await setup(t, { maxVms: 2, hostMemoryBytes: 64 * 1024 * MIB });
  t.equal((await api(base, "POST", "/v1/images", { name: "disk", source: raw })).status, 201);
  const names = ["a1", "a2", "a3", "a4", "a5", "a6", "a7", "a8"];
  const rs = await Promise.all(names.map((name) => api(base, "POST", "/v1/vms", { name, image: "disk", size: "t1", ssh_keys: [pub] })));
  t.equal(rs.filter((r) => r.status === 202).length, 2, `two created: ${rs.map((r) => r.status).join(",")}`);
  t.equal(rs.filter((r) => r.status === 409 && isError(r, "too_many_vms")).length, names.length - 2, "the rest refused: too_many_vms");
  t.equal((await api(base, "GET", "/v1/vms")).body.vms.length, 2, "two recorded");
  // The same name twice at once: one wins, the other is a clear 409.
  const { body } = await api(base, "GET", "/v1/vms");
  for (const v of body.vms) t.equal((await api(base, "DELETE", `/v1/vms/${v.name}`)).status, 200);
  const dup = await Promise.all([1, 2, 3].map(() => api(base, "POST", "/v1/vms", { name: "same", image: "disk", size: "t1", ssh_keys: [pub] })));
  t.same(dup.map((r) => r.status).sort(), [202, 409, 409], dup.map((r) => r.text).join(" "));
  t.ok(dup.filter((r) => r.status === 409).every((r) => isError(r, "vm_exists")));
});

t.test("VM custom domains: checked on create and on add/remove, with the TXT record to create; the cog's list follows", async (t) => {
  // The cog's side as cli/provision.ts wires it: the proof value of its enrollment, its domains-added.json.
  const cogDir = tempDataDir();
  t.teardown(() => fs.rmSync(cogDir, { recursive: true, force: true }));
  const ca = "sha256:" + "ab".repeat(32);
  const cog: CogDomains = {
    proof: (h) => ({ record: challengeName(h), value: domainProofValue(ca, "home1", h) }),
    report: () => [],
    remember: async (h) => { await addDomain(cogDir, h); },
    forget: async (h) => { await forgetDomain(cogDir, h); },
    // As cli/provision.ts answers from cog.routes: this cog's capsul.yaml routes www.alice.net itself.
    cogRoute: (h) => (h === "www.alice.net" ? "site" : null),
  };
  const { base, pub, raw } = await setup(t, { hostMemoryBytes: 4096 * MIB, maxDomainsPerVm: 3 }, cog);
  t.equal((await api(base, "POST", "/v1/images", { name: "disk", source: raw })).status, 201);
  const ok = { name: "vm1", image: "disk", size: "t1", ssh_keys: [pub] };
  const bad: Array<[string, unknown, number, string, RegExp]> = [
    ["domains not a list", "blog.alice.net", 400, "bad_domain", /domains: a list of hostnames/],
    ["a wildcard", ["*.alice.net"], 400, "bad_domain", /wildcard/],
    ["not a hostname", ["blog alice.net"], 400, "bad_domain", /domains\[0\]: not a hostname/],
    ["a non-ASCII name", ["blog.\u212Alice.net"], 400, "bad_domain", /not a hostname/],
    ["a single label", ["localhost"], 400, "bad_domain", /single label/],
    ["not a string", [42], 400, "bad_domain", /domains\[0\]: a hostname/],
    ["twice (after normalising)", ["blog.alice.net", "Blog.Alice.NET."], 400, "duplicate_domain", /blog.alice.net is given twice/],
    ["its own default hostname", ["vm1.home1.hub.example"], 400, "duplicate_domain", /default hostname already/],
    ["over max_domains_per_vm", ["a.x.net", "b.x.net", "c.x.net", "d.x.net"], 400, "too_many_domains", /at most 3 per VM \(cog.provisioner.max_domains_per_vm\)/],
  ];
  for (const [what, domains, status, code, msg] of bad) {
    const r = await api(base, "POST", "/v1/vms", { ...ok, domains });
    t.equal(r.status, status, `${what}: ${r.text}`);
    t.ok(isError(r, code), `${what}: code ${code}`);
    t.match(r.body.error?.message, msg, `${what}: says why`);
  }
  t.same((await api(base, "GET", "/v1/vms")).body.vms, [], "no VM recorded by a refused create");

  const c = await api(base, "POST", "/v1/vms", { ...ok, domains: ["Blog.Alice.NET.", "www.home1.hub.example"] });
  t.equal(c.status, 202, c.text);
  const [blog, www] = c.body.vm.domains;
  t.match(blog, { hostname: "blog.alice.net", url: "https://blog.alice.net/", state: String },
    "normalised (lower case, no trailing dot)");
  t.same(blog.proof, { record: "_capsul-challenge.blog.alice.net", type: "TXT", value: domainProofValue(ca, "home1", "blog.alice.net") },
    "the TXT record capsul cog domains add prints for this cog");
  t.equal(www.proof, null, "a name under the hub's domain is the operator's to grant: no TXT record");
  t.same(readAddedDomains(cogDir), ["blog.alice.net"], "capsul cog domains lists the name that needs a proof");
  // QEMU is /bin/false: the VM never runs, so nothing is published and vm show says so.
  await waitFor("vm1 in error", async () => (await api(base, "GET", "/v1/vms/vm1")).body.vm.state === "error", 30_000);
  t.match((await api(base, "GET", "/v1/vms/vm1/domains")).body, { vm: "vm1", domains: [{ hostname: "blog.alice.net", state: "not-published" }, { hostname: "www.home1.hub.example" }] });

  t.equal((await api(base, "POST", "/v1/vms", { ...ok, name: "vm2" })).status, 202);
  const add: Array<[string, string, unknown, number, string, RegExp]> = [
    ["another VM's domain", "vm2", { domain: "blog.alice.net" }, 409, "domain_taken", /already a domain of VM vm1 on this cog/],
    ["another VM's default hostname", "vm2", { domain: "vm1.home1.hub.example" }, 409, "domain_taken", /default hostname of VM vm1/],
    ["a capsul.yaml route's hostname", "vm2", { domain: "www.alice.net" }, 409, "domain_taken", /hostname of route site in this cog's capsul.yaml/],
    ["the same one again", "vm1", { domain: "BLOG.alice.net" }, 400, "duplicate_domain", /given twice/],
    ["a bad hostname", "vm1", { domain: "-x.alice.net" }, 400, "bad_domain", /not a hostname/],
    ["no domain", "vm1", {}, 400, "bad_domain", /domain: a hostname/],
    ["an unknown field", "vm1", { domain: "x.alice.net", force: true }, 400, "bad_request", /unknown field "force"/],
    ["an unknown VM", "nope", { domain: "x.alice.net" }, 404, "vm_not_found", /no VM named/],
  ];
  for (const [what, vm, body, status, code, msg] of add) {
    const r = await api(base, "POST", `/v1/vms/${vm}/domains`, body);
    t.equal(r.status, status, `add ${what}: ${r.text}`);
    t.ok(isError(r, code), `add ${what}: code ${code}`);
    t.match(r.body.error?.message, msg, `add ${what}: says why`);
  }
  const added = await api(base, "POST", "/v1/vms/vm1/domains", { domain: "shop.alice.net" });
  t.equal(added.status, 201, added.text);
  t.match(added.body, { vm: "vm1", domain: { hostname: "shop.alice.net", proof: { record: "_capsul-challenge.shop.alice.net" } } });
  const full = await api(base, "POST", "/v1/vms/vm1/domains", { domain: "more.alice.net" });
  t.equal(full.status, 409, full.text);
  t.ok(isError(full, "too_many_domains"));
  t.match(full.body.error.message, /at most 3 per VM \(cog.provisioner.max_domains_per_vm\)/);
  t.same((await api(base, "GET", "/v1/vms/vm1")).body.vm.domains.map((d: { hostname: string }) => d.hostname),
    ["blog.alice.net", "www.home1.hub.example", "shop.alice.net"], "a refused add changed nothing");

  const missing = await api(base, "DELETE", "/v1/vms/vm1/domains/nope.alice.net");
  t.equal(missing.status, 404);
  t.ok(isError(missing, "domain_not_found"));
  const rm = await api(base, "DELETE", "/v1/vms/vm1/domains/blog.alice.net");
  t.equal(rm.status, 200, rm.text);
  t.same(rm.body, { vm: "vm1", removed: "blog.alice.net" });
  t.same(readAddedDomains(cogDir), ["shop.alice.net"], "a removed name leaves capsul cog domains");
  const moved = await api(base, "POST", "/v1/vms/vm2/domains", { domain: "blog.alice.net" });
  t.equal(moved.status, 201, `once vm1 let go of it, vm2 may have it: ${moved.text}`);
  t.equal((await api(base, "DELETE", "/v1/vms/vm2")).status, 200);
  t.same(readAddedDomains(cogDir), ["shop.alice.net"], "deleting a VM forgets its domains too");
});

t.test("a VM's custom domains travel in its export archive; an import keeps those no other VM here has", async (t) => {
  const { base, pub, raw } = await setup(t, { hostMemoryBytes: 4096 * MIB });
  t.equal((await api(base, "POST", "/v1/images", { name: "disk", source: raw })).status, 201);
  const c = await api(base, "POST", "/v1/vms", { name: "vm1", image: "disk", size: "t1", ssh_keys: [pub], https: "terminate", domains: ["blog.alice.net", "shop.alice.net"] });
  t.equal(c.status, 202, c.text);
  await waitFor("vm1 in error", async () => (await api(base, "GET", "/v1/vms/vm1")).body.vm.state === "error", 30_000);
  t.equal((await api(base, "POST", "/v1/vms/vm1/stop")).status, 200);
  const exported = await fetch(`${base}/v1/vms/vm1/export`, { headers: authHeader(base) });
  t.equal(exported.status, 200);
  const archive = Buffer.from(await exported.arrayBuffer());
  const manifest = JSON.parse(archive.subarray(512, 512 + parseInt(archive.subarray(124, 136).toString("ascii").trim(), 8)).toString("utf8"));
  t.same(manifest.vm.domains, ["blog.alice.net", "shop.alice.net"], "the manifest carries the domains");
  t.equal(manifest.vm.routes.length, 7, "and names their routes (https + http per domain) with the default three");

  const importAs = (as: string) => fetch(`${base}/v1/vms/import?as=${as}`, {
    method: "POST", headers: { ...authHeader(base), "content-type": "application/x-tar" }, body: archive,
  }).then(async (r) => ({ status: r.status, body: await r.json() as any }));
  // vm1 still holds both names on this cog: the copy gets none, and the answer says why.
  const copy = await importAs("vm2");
  t.equal(copy.status, 201, JSON.stringify(copy.body));
  t.same(copy.body.vm.domains, [], "no domain is taken from the VM that has it");
  t.same(copy.body.imported.domains_dropped, [
    { domain: "blog.alice.net", why: "VM vm1 on this cog has it" }, { domain: "shop.alice.net", why: "VM vm1 on this cog has it" },
  ]);
  t.equal((await api(base, "DELETE", "/v1/vms/vm2")).status, 200);
  t.equal((await api(base, "DELETE", "/v1/vms/vm1")).status, 200);
  // As on another cog: nothing holds them, so the imported VM keeps them (and its https mode).
  const kept = await importAs("vm3");
  t.equal(kept.status, 201, JSON.stringify(kept.body));
  t.same(kept.body.vm.domains.map((d: { hostname: string }) => d.hostname), ["blog.alice.net", "shop.alice.net"], "the import keeps the domains");
  t.equal(kept.body.vm.https, "terminate");
  t.same(kept.body.imported.domains_dropped, []);
});
