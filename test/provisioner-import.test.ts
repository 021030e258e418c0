/**
 * Defect 1 of issue 8, the image half: POST /v1/images copied any file of the
 * cog (its private key) into a world-readable catalogue, and URL imports
 * followed redirects anywhere (SSRF). Plus the suspected qcow2 data-file hole
 * and qemu-img on untrusted headers without limits. Real provisioner, real
 * HTTP servers: on loopback, and "the internet" in a network namespace of the
 * test's own (helpers/netns.ts). No address outside this machine is ever dialled.
 */
import fs from "node:fs";
import http from "node:http";
import type { AddressInfo } from "node:net";
import path from "node:path";
import t, { type Test } from "tap";
import type { ProvisionerConfig } from "../config/types.js";
import { silentLogger } from "../lib/log.js";
import { startProvisioner } from "../provisioner/index.js";
import { AddressPolicy, parseCidr } from "../provisioner/netguard.js";
import { MemoryRouteSink } from "../tunnel-client/routesink.js";
import { createTestNet } from "./helpers/netns.js";
import { api, authorize, cleanupDataDir, run, tempDataDir, testConfig } from "./helpers/vm.js";

const MIB = 1024 * 1024;
const isError = (r: { body: any }, code: string): boolean => r.body?.error?.code === code && typeof r.body.error.message === "string";

async function provisioner(t: Test, over: Partial<ProvisionerConfig> = {}, dataDir = tempDataDir()) {
  const cfg = testConfig(dataDir, { qemuBinary: "/bin/false", ...over });
  const prov = await startProvisioner({ config: cfg, cogName: "home1", hubDomain: "hub.example", hubHost: "hub.example", sink: new MemoryRouteSink(), logger: silentLogger });
  authorize(prov.url, dataDir);
  return { dataDir, base: prov.url, importDir: cfg.importDir, close: () => prov.close() };
}

/** Every file under `dir` whose content contains `needle`. */
function filesContaining(dir: string, needle: string): string[] {
  const out: string[] = [];
  for (const e of fs.readdirSync(dir, { withFileTypes: true, recursive: true })) {
    const p = path.join(e.parentPath ?? (e as unknown as { path: string }).path, e.name);
    if (e.isFile() && fs.readFileSync(p).includes(needle)) out.push(p);
  }
  return out;
}

t.test("AddressPolicy: the refused blocks, mapped and NAT64 forms, and the allow-list", async (t) => {
  const p = new AddressPolicy();
  const refused = ["127.0.0.1", "127.255.0.9", "0.0.0.0", "10.1.2.3", "172.16.0.1", "172.31.255.255", "192.168.1.1", "100.64.0.1",
    "169.254.169.254", "224.0.0.1", "255.255.255.255", "::", "::1", "fd00::2", "fc00::1", "fe80::1", "ff02::1",
    "::ffff:127.0.0.1", "::ffff:7f00:1", "::ffff:10.0.0.1", "64:ff9b::7f00:1", "64:ff9b::192.168.0.1"];
  const allowed = ["8.8.8.8", "198.51.100.2", "172.32.0.1", "100.128.0.1", "2001:db8::1", "2a00:1450::1", "64:ff9b::808:808"];
  t.ok(refused.length > 0 && allowed.length > 0);
  for (const a of refused) t.type(p.refusal(a), "string", `${a} refused`);
  for (const a of allowed) t.equal(p.refusal(a), null, `${a} allowed`);
  t.equal(p.refusal("169.254.169.254"), "link-local");
  t.equal(p.refusal("100.64.0.1"), "shared (CGNAT)");
  const lan = new AddressPolicy(["192.168.1.0/24", "::1"]);
  t.equal(lan.refusal("192.168.1.7"), null, "allow-listed LAN mirror");
  t.equal(lan.refusal("::1"), null);
  t.type(lan.refusal("192.168.2.7"), "string", "the rest of 192.168/16 stays refused");
  t.same(parseCidr("10.0.0.0/8"), ["10.0.0.0", 8, "ipv4"]);
  t.throws(() => parseCidr("10.0.0.0/33"));
  t.throws(() => parseCidr("example.com/8"));
});

t.test("local sources only from the import dir: no path, symlink or .. reaches the cog's files", async (t) => {
  const p = await provisioner(t);
  t.teardown(async () => { await p.close(); cleanupDataDir(p.dataDir); });
  // Stands for the cog's private key: outside the import dir, only root reads it.
  const secret = path.join(p.dataDir, "cog.key");
  fs.writeFileSync(secret, "-----BEGIN PRIVATE KEY----- capsul-test-secret\n", { mode: 0o600 });
  fs.symlinkSync(secret, path.join(p.importDir, "innocent.raw"));
  fs.symlinkSync(p.dataDir, path.join(p.importDir, "data"));
  const attempts: Array<[string, Record<string, string>]> = [
    ["the key by its path", { source: secret }],
    ["the key through ..", { source: path.join(p.importDir, "..", "cog.key") }],
    ["a symlink in the import dir", { source: path.join(p.importDir, "innocent.raw") }],
    ["a symlinked directory", { source: path.join(p.importDir, "data", "cog.key") }],
    ["the key as a kernel", { kernel: secret, initrd: secret }],
    ["the token as an initrd", { kernel: path.join(p.importDir, "innocent.raw"), initrd: path.join(p.dataDir, "api-token") }],
    ["/etc/shadow", { source: "/etc/shadow" }],
  ];
  for (const [i, [what, fields]] of attempts.entries()) {
    // A name of its own each: every attempt stands alone.
    const r = await api(p.base, "POST", "/v1/images", { name: `stolen${i}`, ...fields });
    t.equal(r.status, 400, `${what}: ${r.text}`);
    t.ok(isError(r, "source_refused"), `${what}: source_refused`);
  }
  t.match((await api(p.base, "POST", "/v1/images", { name: "stolen", source: secret })).body.error.message,
    `outside the import directory ${p.importDir}`, "the refusal says where images must go");
  t.same((await api(p.base, "GET", "/v1/images")).body.images, [], "nothing imported");
  t.same(filesContaining(path.join(p.dataDir, "images"), "capsul-test-secret"), [], "no copy of the key in the catalogue");

  // A real file in the import dir still imports, and what lands in the catalogue is private.
  fs.writeFileSync(path.join(p.importDir, "disk.raw"), Buffer.alloc(MIB, 1));
  const ok = await api(p.base, "POST", "/v1/images", { name: "disk", source: path.join(p.importDir, "disk.raw") });
  t.equal(ok.status, 201, ok.text);
  const imgDir = path.join(p.dataDir, "images");
  t.equal(fs.statSync(imgDir).mode & 0o777, 0o700, "catalogue dir 0700");
  t.equal(fs.statSync(path.join(imgDir, "disk")).mode & 0o777, 0o700, "image dir 0700");
  t.equal(fs.statSync(path.join(imgDir, "disk", "disk.qcow2")).mode & 0o777, 0o400, "image file 0400: read-only, owner only");
  t.equal(fs.statSync(p.importDir).mode & 0o777, 0o700, "import dir created 0700");
});

t.test("a catalogue from before (0755 dirs, 0444 files) is made private at start", async (t) => {
  const dataDir = tempDataDir();
  t.teardown(() => cleanupDataDir(dataDir));
  let p = await provisioner(t, {}, dataDir);
  fs.writeFileSync(path.join(p.importDir, "disk.raw"), Buffer.alloc(MIB, 1));
  t.equal((await api(p.base, "POST", "/v1/images", { name: "disk", source: path.join(p.importDir, "disk.raw") })).status, 201);
  await p.close();
  const imgDir = path.join(dataDir, "images");
  fs.chmodSync(imgDir, 0o755);
  fs.chmodSync(path.join(imgDir, "disk"), 0o755);
  fs.chmodSync(path.join(imgDir, "disk", "disk.qcow2"), 0o444);
  p = await provisioner(t, {}, dataDir);
  t.teardown(() => p.close());
  t.equal(fs.statSync(imgDir).mode & 0o777, 0o700);
  t.equal(fs.statSync(path.join(imgDir, "disk")).mode & 0o777, 0o700);
  t.equal(fs.statSync(path.join(imgDir, "disk", "disk.qcow2")).mode & 0o777, 0o400);
});

t.test("URL imports refuse the cog itself and private targets, also after redirects", async (t) => {
  // "The cog": a loopback server holding something no image import may fetch.
  let hits = 0;
  const cog = http.createServer((req, res) => { hits++; res.end("capsul-loopback-secret"); });
  await new Promise<void>((r) => cog.listen(0, "127.0.0.1", () => r()));
  t.teardown(() => new Promise<void>((r) => cog.close(() => r())));
  const port = (cog.address() as AddressInfo).port;

  // "The internet": a server in a namespace of our own that redirects wherever it is told.
  const net = createTestNet();
  t.teardown(() => net.close());
  await net.serve(`
    const http = require("node:http");
    const [addr, cogUrl] = process.argv.slice(1);
    http.createServer((q, s) => {
      if (q.url === "/to-cog") { s.writeHead(302, { location: cogUrl }); s.end(); return; }
      if (q.url === "/to-localhost") { s.writeHead(301, { location: cogUrl.replace("127.0.0.1", "localhost") }); s.end(); return; }
      if (q.url.startsWith("/loop")) { s.writeHead(307, { location: "/loop" + (Number(q.url.slice(5) || 0) + 1) }); s.end(); return; }
      if (q.url === "/hop") { s.writeHead(302, { location: "/disk.raw" }); s.end(); return; }
      if (q.url === "/disk.raw") { const b = Buffer.alloc(1 << 20, 7); s.writeHead(200, { "content-length": b.length }); s.end(b); return; }
      s.writeHead(404); s.end();
    }).listen(80, addr, () => console.log("LISTENING"));
  `, [net.nsAddr, `http://127.0.0.1:${port}/secret`]);

  const p = await provisioner(t, { importMaxRedirects: 3 });
  t.teardown(async () => { await p.close(); cleanupDataDir(p.dataDir); });
  const inet = `http://${net.nsAddr}`;

  // Direct: every spelling of "this machine". (Private and link-local blocks are
  // in the AddressPolicy test: dialling them from a test would leave the machine
  // if the check were broken.)
  const direct = [`http://127.0.0.1:${port}/secret`, `http://localhost:${port}/secret`, `http://[::1]:${port}/secret`,
    `http://[::ffff:127.0.0.1]:${port}/secret`, `http://0.0.0.0:${port}/secret`, `http://127.1:${port}/secret`];
  for (const [i, url] of direct.entries()) {
    const r = await api(p.base, "POST", "/v1/images", { name: `ssrf${i}`, source: url });
    t.equal(r.status, 400, `${url}: ${r.text}`);
    t.ok(isError(r, "source_refused"), `${url}: source_refused`);
  }
  // After a redirect from an allowed server.
  for (const hop of ["/to-cog", "/to-localhost"]) {
    const r = await api(p.base, "POST", "/v1/images", { name: `redirect${hop.replace(/\W/g, "")}`, source: `${inet}${hop}` });
    t.equal(r.status, 400, `${hop}: ${r.text}`);
    t.ok(isError(r, "source_refused"), `${hop}: source_refused`);
    t.match(r.body.error.message, /loopback/, `${hop}: says why`);
  }
  t.equal(hits, 0, "the loopback server was never reached");
  t.same((await api(p.base, "GET", "/v1/images")).body.images, [], "nothing imported");

  // Redirects are bounded.
  const loop = await api(p.base, "POST", "/v1/images", { name: "loop", source: `${inet}/loop` });
  t.equal(loop.status, 502, loop.text);
  t.match(loop.body.error.message, /more than 3 redirects/);

  // The internet itself is fine, redirects within it too, with no allow-list.
  const good = await api(p.base, "POST", "/v1/images", { name: "net", source: `${inet}/hop` });
  t.equal(good.status, 201, good.text);
  t.equal(good.body.image.files.disk.sha256, (await import("node:crypto")).createHash("sha256").update(Buffer.alloc(MIB, 7)).digest("hex"));
});

t.test("qcow2 images that name another file on the cog are refused: backing file and external data file", async (t) => {
  const p = await provisioner(t);
  t.teardown(async () => { await p.close(); cleanupDataDir(p.dataDir); });
  // The "host file" a VM would read through the image: written by qemu-img create here, never a real one.
  const hostFile = path.join(p.dataDir, "host-file.raw");
  const evil = path.join(p.importDir, "datafile.qcow2");
  const mk = await run("qemu-img", ["create", "-q", "-f", "qcow2", "-o", `data_file=${hostFile},data_file_raw=on`, evil, "1M"]);
  t.equal(mk.code, 0, mk.stderr);
  const info = JSON.parse((await run("qemu-img", ["info", "--output=json", evil])).stdout);
  t.equal(info["format-specific"].data["data-file"], hostFile, "the image really names the host file");
  const r = await api(p.base, "POST", "/v1/images", { name: "evil", source: evil });
  t.equal(r.status, 400, r.text);
  t.ok(isError(r, "image_invalid"));
  t.match(r.body.error.message, /external file/);

  // Formats other than qcow2 and raw are refused by their magic, never parsed.
  const vmdk = path.join(p.importDir, "d.vmdk");
  t.equal((await run("qemu-img", ["create", "-q", "-f", "vmdk", vmdk, "1M"])).code, 0);
  const v = await api(p.base, "POST", "/v1/images", { name: "vmdk", source: vmdk });
  t.ok(isError(v, "image_invalid"));
  t.match(v.body.error.message, /unsupported image format vmdk/);
  t.same((await api(p.base, "GET", "/v1/images")).body.images, []);
});

t.test("qemu-img info on an imported qcow2 runs under prlimit (image_inspect_memory)", async (t) => {
  // qemu-img needs ~64 MiB of address space here: 16 MiB must make it fail, and the refusal names the limit.
  const p = await provisioner(t, { imageInspectMemoryBytes: 16 * MIB });
  t.teardown(async () => { await p.close(); cleanupDataDir(p.dataDir); });
  const img = path.join(p.importDir, "ok.qcow2");
  t.equal((await run("qemu-img", ["create", "-q", "-f", "qcow2", img, "16M"])).code, 0);
  const r = await api(p.base, "POST", "/v1/images", { name: "ok", source: img });
  t.equal(r.status, 400, r.text);
  t.ok(isError(r, "image_invalid"));
  t.match(r.body.error.message, /within its limits \(image_inspect_memory 16777216 bytes/);

  const q = await provisioner(t);
  t.teardown(async () => { await q.close(); cleanupDataDir(q.dataDir); });
  fs.copyFileSync(img, path.join(q.importDir, "ok.qcow2"));
  const fine = await api(q.base, "POST", "/v1/images", { name: "ok", source: path.join(q.importDir, "ok.qcow2") });
  t.equal(fine.status, 201, `the defaults (1GiB, 30s) take a normal image: ${fine.text}`);
});
