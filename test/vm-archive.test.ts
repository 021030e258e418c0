/**
 * The VM archive's tar and manifest checks (provisioner/archive.ts, vmexport.ts)
 * against real GNU tar: what capsul writes, tar reads; what tar writes that a VM
 * archive may not hold (links, directories, long names through pax headers),
 * capsul refuses. The whole export/import with QEMU is test/vm-move.test.ts.
 */
import fs from "node:fs";
import path from "node:path";
import { Readable } from "node:stream";
import t from "tap";
import { ExactReader, parseTarHeader, TAR_BLOCK_BYTES, TAR_END, tarHeader, tarLength, tarPadding } from "../provisioner/archive.js";
import { validateManifest } from "../provisioner/vmexport.js";
import { tmpDir } from "./helpers/cluster.js";
import { run } from "./helpers/vm.js";

const sha = "a".repeat(64);
const manifest = (over: Record<string, unknown> = {}): Record<string, unknown> => ({
  format: "capsul-vm-archive", version: 1, created_at: "2026-11-30T00:00:00.000Z", source_cog: "home1",
  vm: { name: "web1", uuid: "c2ba6b73-2e25-4267-8afe-89625f7ff9c0", size: "t1", ssh_keys: ["ssh-ed25519 AAAA x"], ssh_user: "root", hostname: "web1.home1.hub.test", routes: [] },
  image: { name: "tiny", format: "kernel", files: { kernel: { sha256: sha, bytes: 1 } } },
  disk: { format: "qcow2", virtual_bytes: 1024, flattened: true },
  parts: [{ name: "disk.qcow2", bytes: 10, sha256: sha }, { name: "seed/meta-data", bytes: 1, sha256: sha }, { name: "seed/user-data", bytes: 1, sha256: sha }],
  ...over,
});

t.test("what the writer makes, GNU tar lists and extracts byte for byte", async (t) => {
  const dir = tmpDir("capsul-archive-");
  t.teardown(() => fs.rmSync(dir, { recursive: true, force: true }));
  const data = Buffer.from("hello, capsul\n");
  const tar = Buffer.concat([tarHeader("seed/user-data", data.length, 1764460800), data, tarPadding(data.length), TAR_END]);
  t.equal(tar.length, tarLength([data.length]));
  fs.writeFileSync(path.join(dir, "a.tar"), tar);
  const list = await run("tar", ["tvf", path.join(dir, "a.tar")]);
  t.equal(list.code, 0, list.stderr);
  t.match(list.stdout, /-rw------- .* 14 2025-11-30 .*seed\/user-data/);
  t.equal((await run("tar", ["xOf", path.join(dir, "a.tar"), "seed/user-data"])).stdout, data.toString());
});

t.test("sizes past ustar's 8 GiB are written base-256 and read back", async (t) => {
  const big = 400 * 2 ** 30;
  t.same(parseTarHeader(tarHeader("disk.qcow2", big, 0)), { name: "disk.qcow2", bytes: big });
  t.same(parseTarHeader(tarHeader("disk.qcow2", 8 * 2 ** 30 - 1, 0)), { name: "disk.qcow2", bytes: 8 * 2 ** 30 - 1 });
});

t.test("headers that are not a plain file of capsul's, refused", async (t) => {
  const h = tarHeader("disk.qcow2", 10, 0);
  const flipped = Buffer.from(h);
  flipped[5] ^= 1;
  t.throws(() => parseTarHeader(flipped), /tar header checksum mismatch/);
  t.equal(parseTarHeader(Buffer.alloc(TAR_BLOCK_BYTES)), null, "a zero block is the end");

  const dir = tmpDir("capsul-archive-");
  t.teardown(() => fs.rmSync(dir, { recursive: true, force: true }));
  fs.symlinkSync("/etc/passwd", path.join(dir, "disk.qcow2"));
  fs.mkdirSync(path.join(dir, "seed"));
  const first = async (args: string[]): Promise<Buffer> => {
    t.equal((await run("tar", ["-C", dir, "-cf", path.join(dir, "x.tar"), ...args])).code, 0);
    return fs.readFileSync(path.join(dir, "x.tar")).subarray(0, TAR_BLOCK_BYTES);
  };
  await t.rejects(async () => parseTarHeader(await first(["disk.qcow2"])), /"disk.qcow2" is not a regular file \(type 2\)/, "a symlink");
  await t.rejects(async () => parseTarHeader(await first(["seed"])), /"seed\/" is not a regular file \(type 5\)/, "a directory");
  fs.writeFileSync(path.join(dir, "x".repeat(120)), "x");
  await t.rejects(async () => parseTarHeader(await first(["--format=pax", "x".repeat(120)])), /is not a regular file \(type x\)/, "a pax extended header");
});

t.test("ExactReader: exact reads across chunks, null at an early end", async (t) => {
  const src = Readable.from([Buffer.from("abc"), Buffer.from("defgh"), Buffer.from("i")]);
  const r = new ExactReader(src);
  t.same(await r.exact(4), Buffer.from("abcd"));
  t.same(await r.some(2), Buffer.from("ef"), "some: at most what was asked");
  t.equal(await r.exact(4), null, "only three bytes were left");
  const zeros = new ExactReader(Readable.from([Buffer.alloc(1000)]));
  t.ok(await zeros.atEnd(), "zero padding is the end");
  const junk = new ExactReader(Readable.from([Buffer.from([0, 0, 1])]));
  t.notOk(await junk.atEnd(), "data after the end is not");
});

t.test("manifest checks: names, order, numbers, limits", async (t) => {
  t.ok(validateManifest(manifest(), 2 ** 40, 32));
  const bad: [Record<string, unknown>, RegExp][] = [
    [{ format: "zip" }, /format is not capsul-vm-archive/],
    [{ version: 2 }, /version 2; this capsul reads version 1: upgrade it/],
    [{ vm: { ...(manifest().vm as object), name: "../web1" } }, /vm.name is not a VM name/],
    [{ vm: { ...(manifest().vm as object), ssh_keys: ["a\nb"] } }, /vm.ssh_keys: at most 32 one-line keys/],
    [{ parts: [{ name: "../../evil", bytes: 1, sha256: sha }, ...(manifest().parts as unknown[]).slice(1)] }, /parts\[0\]: must be disk.qcow2/],
    [{ parts: (manifest().parts as unknown[]).slice(0, 2) }, /parts: exactly disk.qcow2, seed\/meta-data, seed\/user-data/],
    [{ parts: [{ name: "disk.qcow2", bytes: -1, sha256: sha }, ...(manifest().parts as unknown[]).slice(1)] }, /parts\[0\]: bytes and sha256 required/],
    [{ image: { name: "tiny", files: { kernel: { sha256: "nope", bytes: 1 } } } }, /image.files.kernel: sha256 and bytes required/],
  ];
  // Custom domains: absent in archives from before them (accepted above); when there, exact normalised hostnames.
  const vmWith = (domains: unknown): Record<string, unknown> => ({ vm: { ...(manifest().vm as object), domains } });
  t.same(validateManifest(manifest(vmWith(["blog.alice.net"])), 2 ** 40, 32).vm.domains, ["blog.alice.net"]);
  bad.push(
    [vmWith("blog.alice.net"), /vm.domains: a list of at most 1000 hostnames/],
    [vmWith(Array(1001).fill("a.example")), /vm.domains: a list of at most 1000 hostnames/],
    [vmWith(["*.alice.net"]), /vm.domains\[0\]: .*wildcard/],
    [vmWith(["blog.alice.net", "bad host"]), /vm.domains\[1\]: not a hostname/],
    [vmWith(["Blog.Alice.net"]), /vm.domains\[0\]: not in normal form/],
    [vmWith([7]), /vm.domains\[0\]: a hostname/],
  );
  for (const [over, msg] of bad) t.throws(() => validateManifest(manifest(over), 2 ** 40, 32), msg);
  t.throws(() => validateManifest(manifest(), 11, 32), { code: "archive_too_large", message: /declares 12 bytes, over this cog's max_archive_size \(11\)/ });
  t.throws(() => validateManifest(manifest({ vm: { ...(manifest().vm as object), ssh_keys: ["k1", "k2"] } }), 2 ** 40, 1), /at most 1 one-line keys/);
});
