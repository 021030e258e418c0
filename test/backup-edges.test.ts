import { createHash } from "node:crypto";
import fs from "node:fs";
import path from "node:path";
import t, { type Test } from "tap";
import { HELPER_DIR } from "../provisioner/backuphelper.js";
import { processAlive, readPidFile } from "../provisioner/qemu.js";
import { backups, backupTestConfig, capsul } from "./helpers/backup.js";
import { killHard, startChild, stopChild, type ChildProvisioner } from "./helpers/vmchild.js";
import { api, authHeader, cleanupDataDir, importTestImage, run, sshKeypair, TEST_SIZE, tempDataDir, waitFor } from "./helpers/vm.js";

t.setTimeout(30 * 60_000);

const MIB = 1024 * 1024;
const K64 = 65536;

/** qemu-io on a disk; `-U` shares it with a running QEMU (reads only). Fails the test on any error or pattern mismatch. */
async function qio(t: Test, disk: string, cmds: string[], readOnly = false): Promise<void> {
  const args = readOnly ? ["-r", "-U"] : [];
  for (const c of cmds) args.push("-c", c);
  const r = await run("qemu-io", [...args, "-f", "qcow2", disk]);
  t.equal(r.code, 0, `qemu-io ${cmds.join("; ")}: ${r.stderr}`);
  t.notMatch(r.stdout, /Pattern verification failed|error/i, `qemu-io ${cmds.join("; ")}`);
}

const sha = (file: string): string => createHash("sha256").update(fs.readFileSync(file)).digest("hex");

/**
 * Backups of a stopped VM (no guest needed: the disk is written with qemu-io
 * between backups, so every incremental has an exact size), retention, restores
 * into the same VM and under a new name, a kill -9 of the provisioner during a
 * backup, and every bad input: a missing, corrupt or planted backup changes
 * nothing.
 */
t.test("retention, restore, kill -9 during a backup, bad input", async (t) => {
  const dataDir = tempDataDir();
  const routes = path.join(dataDir, "routes.json");
  // A 64 MiB disk read at 16 MiB/s: a full backup takes ~4 s, long enough to be caught running.
  const e1 = { ...TEST_SIZE, diskBytes: 64 * MIB };
  const cfg = backupTestConfig(dataDir, { keep_full: 2, keep_incremental: 1, rate_limit: "16MiB" }, {
    sizes: { ...backupTestConfig(dataDir).sizes, e1 }, stopTimeoutMs: 3000,
  });
  let child: ChildProvisioner | undefined;
  t.teardown(async () => { if (child) await stopChild(child); cleanupDataDir(dataDir); });
  child = await startChild(cfg, routes);
  const base = (): string => child!.url;
  const { pub } = sshKeypair(dataDir);
  await importTestImage(base(), dataDir);
  t.equal((await api(base(), "POST", "/v1/vms", { name: "src", image: "tiny", size: "e1", ssh_keys: [pub] })).status, 202);
  t.equal((await api(base(), "POST", "/v1/vms/src/stop")).status, 200);
  const disk = path.join(dataDir, "vms", "src", "disk.qcow2");
  const bdir = path.join(dataDir, "backups", "src");
  const backup = async (body: unknown = {}): Promise<any> => {
    const r = await api(base(), "POST", "/v1/vms/src/backups", body);
    t.equal(r.status, 201, r.text);
    return r.body;
  };

  // 1. Offline backups; each incremental holds exactly what qemu-io wrote.
  await qio(t, disk, ["write -P 0x11 0 1M"]);
  let r = await backup();
  const b1 = r.backup;
  t.match(b1, { kind: "full", online: false, consistency: "stopped", virtual_bytes: 64 * MIB });
  t.equal(r.reason, "first backup of this VM");
  await qio(t, disk, ["write -P 0x22 1M 64k"]);
  const b2 = (await backup()).backup;
  t.match(b2, { kind: "incremental", parent: b1.id, data_bytes: K64 }, "exactly the 64 KiB written since");
  await qio(t, disk, ["write -P 0x33 2M 64k"]);
  r = await backup();
  const b3 = r.backup;
  t.equal(b3.kind, "full", "keep_incremental 1: the chain is full, a new one starts");
  t.match(r.reason, /has 1 incrementals \(keep_incremental\)/);
  await qio(t, disk, ["write -P 0x44 3M 64k"]);
  const b4 = (await backup()).backup;
  t.match(b4, { kind: "incremental", parent: b3.id, data_bytes: K64 });

  // 2. Two at once: one runs, the other is refused. The one that ran is a full (chain of b3 is full) and prunes b1's chain.
  const [x, y] = await Promise.all([api(base(), "POST", "/v1/vms/src/backups", {}), api(base(), "POST", "/v1/vms/src/backups", {})]);
  t.same([x.status, y.status].sort(), [201, 409], "one backup per VM at a time");
  const busy = x.status === 409 ? x : y;
  t.equal(busy.body.error.code, "backup_busy");
  const b5 = (x.status === 201 ? x : y).body.backup;
  t.equal(b5.kind, "full");
  let list = await backups(base(), "src");
  t.same(list.map((b) => b.id), [b3.id, b4.id, b5.id], "keep_full 2: the oldest chain is gone");
  t.same(list.map((b) => b.chain), [b3.id, b3.id, b5.id]);
  t.notOk(fs.existsSync(path.join(bdir, b1.file)), "its files too");
  t.notOk(fs.existsSync(path.join(bdir, b2.file)));
  t.match(child.stderr(), /backups pruned vm=src ids=1,2 keep_full=2/);

  // 3. Restore a copy from the incremental b4: the chain b3 + b4, flattened.
  r = await api(base(), "POST", "/v1/vms/src/restore", { from: b4.id, as: "copy" });
  t.equal(r.status, 200, r.text);
  t.equal(r.body.vm.name, "copy");
  const copyDisk = path.join(dataDir, "vms", "copy", "disk.qcow2");
  await qio(t, copyDisk, ["read -P 0x11 0 1M", "read -P 0x22 1M 64k", "read -P 0x33 2M 64k", "read -P 0x44 3M 64k", "read -P 0 4M 1M"], true);
  const info = JSON.parse((await run("qemu-img", ["info", "-U", "--output=json", copyDisk])).stdout);
  t.equal(info["backing-filename"], undefined, "a standalone disk: no backing file");
  t.equal(info["virtual-size"], 64 * MIB);
  t.equal((await api(base(), "DELETE", "/v1/vms/copy")).status, 200);

  // 4. Restore the stopped VM itself from b3: 0x44 (written after b3) is gone; the next backup is full, and says why.
  r = await api(base(), "POST", "/v1/vms/src/restore", { from: b3.id });
  t.equal(r.status, 200, r.text);
  await qio(t, disk, ["read -P 0x33 2M 64k", "read -P 0 3M 64k"], true);
  r = await backup();
  t.equal(r.backup.kind, "full");
  t.match(r.reason, new RegExp(`^the disk was restored from backup ${b3.id} at `));
  t.match(child.stderr(), /backup chain broken; taking a full backup vm=src reason="the disk was restored/);
  t.same((await backups(base(), "src")).map((b) => b.id), [b5.id, r.backup.id], "b3's chain pruned in turn");

  // 5. A VM that should run: no restore without consent; with it, stopped, restored (from b5: 0x44 is back), started again.
  t.equal((await api(base(), "POST", "/v1/vms/src/start")).status, 202);
  const before = sha(disk);
  r = await api(base(), "POST", "/v1/vms/src/restore", { from: b5.id });
  t.equal(r.status, 409);
  t.equal(r.body.error.code, "vm_running");
  t.match(r.body.error.message, /VM src is running: stop it first, or consent .*--stop/);
  let c = await capsul(["vm", "restore", "src", "--from", b5.id, "--api", base(), "--data-dir", dataDir]);
  t.equal(c.code, 1, "no terminal to ask on: refused");
  t.match(c.stderr, /^capsul: VM src is running: .*\[vm_running\]\n$/);
  t.equal(sha(disk), before, "the disk was not touched");
  c = await capsul(["vm", "restore", "src", "--from", b5.id, "--stop", "--api", base(), "--data-dir", dataDir]);
  t.equal(c.code, 0, c.stderr);
  t.match(c.stdout, new RegExp(`^src: restored from backup ${b5.id} of src \\(full`));
  const v = (await api(base(), "GET", "/v1/vms/src")).body.vm;
  t.equal(v.desired, "running", "started again");
  t.not(v.state, "error", v.message ?? "");
  await qio(t, disk, ["read -P 0x44 3M 64k"], true);
  t.equal((await api(base(), "POST", "/v1/vms/src/stop")).status, 200);
  const b6 = (await backup()).backup;
  t.equal(b6.kind, "full", "restored: a new chain");

  // 6. kill -9 of the provisioner while a backup runs: the next provisioner quits the helper QEMU
  //    (bitmaps stored), removes the partial file, and the next backup is an intact incremental.
  await qio(t, disk, ["write -P 0x55 8M 4M"]);
  const pending = fetch(`${base()}/v1/vms/src/backups`, {
    method: "POST", headers: { ...authHeader(base()), "content-type": "application/json" }, body: JSON.stringify({ full: true }),
  }).catch(() => null);
  await waitFor("a backup being written", async () => fs.readdirSync(bdir).some((f) => f.endsWith(".part")), 60_000);
  const helperPid = readPidFile(path.join(dataDir, HELPER_DIR, "src.pid"));
  t.ok(helperPid && processAlive(helperPid), "a helper QEMU holds the stopped VM's disk");
  await killHard(child);
  await pending;
  t.ok(processAlive(helperPid!), "it outlives the provisioner");
  child = await startChild(cfg, routes);
  t.match(child.stderr(), /quit a backup QEMU left by an earlier provisioner vm=src/);
  t.notOk(processAlive(helperPid!), "and is gone");
  r = await backup();
  t.match(child.stderr(), /removed unfinished backup files vm=src files=\d+-full\.qcow2\.part/);
  t.equal(r.backup.kind, "incremental", "the interrupted backup's bitmap was merged: still incremental");
  t.equal(r.backup.parent, b6.id);
  t.ok(r.backup.data_bytes >= 4 * MIB, "and it holds the 4 MiB written before");
  const b7 = r.backup;
  r = await api(base(), "POST", "/v1/vms/src/restore", { from: b7.id, as: "check" });
  t.equal(r.status, 200, r.text);
  await qio(t, path.join(dataDir, "vms", "check", "disk.qcow2"), ["read -P 0x55 8M 4M", "read -P 0x44 3M 64k"], true);

  // 7. Bad input: clear errors, nothing touched.
  const vmsBefore = (await api(base(), "GET", "/v1/vms")).body.vms.map((x: any) => x.name);
  const manifest = path.join(bdir, "manifest.json");
  const manifestBefore = fs.readFileSync(manifest, "utf8");
  const expectErr = async (method: string, p: string, body: unknown, status: number, code: RegExp, headers: Record<string, string> = {}): Promise<void> => {
    const res = await api(base(), method, p, body, headers);
    t.equal(res.status, status, `${method} ${p} ${JSON.stringify(body)}: ${res.text}`);
    t.match(res.body?.error?.code, code);
  };
  await expectErr("POST", "/v1/vms/src/restore", { from: "999" }, 404, /^backup_not_found$/);
  await expectErr("POST", "/v1/vms/src/restore", { from: "../1" }, 400, /^bad_backup_id$/);
  await expectErr("POST", "/v1/vms/src/restore", { from: b7.id, as: "Bad!" }, 400, /^bad_name$/);
  await expectErr("POST", "/v1/vms/src/restore", { from: b7.id, as: "src2", extra: 1 }, 400, /^bad_request$/);
  await expectErr("POST", "/v1/vms/src/restore", {}, 400, /^bad_request$/);
  await expectErr("POST", "/v1/vms/ghost/restore", { from: "1" }, 404, /^backup_not_found$/);
  await expectErr("POST", "/v1/vms/ghost/backups", {}, 404, /^vm_not_found$/);
  await expectErr("GET", "/v1/vms/ghost/backups", undefined, 404, /^vm_not_found$/);
  await expectErr("POST", "/v1/vms/src/backups", { full: "yes" }, 400, /^bad_request$/);
  await expectErr("POST", "/v1/vms/src/backups", { fast: true }, 400, /^bad_request$/);
  await expectErr("POST", "/v1/vms/src/backups", "{nope", 400, /^bad_json$/);
  await expectErr("POST", "/v1/vms/src/backups", "{}", 415, /^bad_content_type$/, { "content-type": "text/plain" });
  await expectErr("POST", "/v1/vms/src/restore", { from: b7.id, as: "check" }, 409, /^vm_exists$/);
  c = await capsul(["vm", "restore", "src", "--from", "999", "--api", base(), "--data-dir", dataDir]);
  t.equal(c.code, 1);
  t.match(c.stderr, /^capsul: VM src has no backup 999 \(capsul vm backups src\) \[backup_not_found\]\n$/);
  c = await capsul(["vm", "restore", "src", "--from", "x1", "--api", base(), "--data-dir", dataDir]);
  t.equal(c.code, 2, "a malformed id is a usage error");

  // A corrupt backup file (same size, one byte flipped): refused before anything changes.
  const f5 = path.join(bdir, b6.file);
  const good = fs.readFileSync(f5);
  const bad = Buffer.from(good);
  bad[Math.floor(bad.length / 2)] ^= 0xff;
  fs.writeFileSync(f5, bad);
  await expectErr("POST", "/v1/vms/src/restore", { from: b7.id, as: "fromcorrupt" }, 409, /^backup_corrupt$/);
  r = await api(base(), "POST", "/v1/vms/src/restore", { from: b7.id, as: "fromcorrupt" }, { accept: "application/x-ndjson" });
  t.match(r.text.trim().split("\n").pop(), /"code":"backup_corrupt".*does not match its SHA-256/, "the streamed answer ends with the error");
  t.notOk(fs.existsSync(path.join(dataDir, "vms", "fromcorrupt")), "no run dir");
  t.same(fs.readdirSync(path.join(dataDir, "restore")), [], "no half-restored disk");
  fs.writeFileSync(f5, good);

  // A missing file: refused; and the next backup knows the chain is broken.
  fs.renameSync(path.join(bdir, b7.file), path.join(bdir, "moved-away"));
  await expectErr("POST", "/v1/vms/src/restore", { from: b7.id, as: "frommissing" }, 409, /^backup_corrupt$/);
  t.same((await api(base(), "GET", "/v1/vms")).body.vms.map((x: any) => x.name), vmsBefore, "no VM created");
  t.equal(fs.readFileSync(manifest, "utf8"), manifestBefore, "the manifest is as it was");
  r = await backup();
  t.equal(r.backup.kind, "full");
  t.match(r.reason, new RegExp(`backup file ${b7.file} is missing`));
  fs.renameSync(path.join(bdir, "moved-away"), path.join(bdir, b7.file));

  // A manifest that points outside its directory (at another VM's disk, with that disk's real SHA-256) is refused whole.
  const planted = JSON.parse(fs.readFileSync(manifest, "utf8"));
  planted.backups[0].file = "../../vms/src/disk.qcow2";
  planted.backups[0].sha256 = sha(disk);
  planted.backups[0].bytes = fs.statSync(disk).size;
  const honest = fs.readFileSync(manifest);
  fs.writeFileSync(manifest, JSON.stringify(planted));
  await expectErr("GET", "/v1/vms/src/backups", undefined, 500, /^backup_manifest_corrupt$/);
  await expectErr("POST", "/v1/vms/src/restore", { from: planted.backups[0].id, as: "stolen" }, 500, /^backup_manifest_corrupt$/);
  t.notOk(fs.existsSync(path.join(dataDir, "vms", "stolen")));
  // Garbage: a clear error, and no backup is taken into a directory whose manifest cannot be read.
  fs.writeFileSync(manifest, "{ not json");
  const files = fs.readdirSync(bdir).sort();
  r = await api(base(), "POST", "/v1/vms/src/backups", {});
  t.equal(r.status, 500);
  t.match(r.body.error.message, /backup manifest .*manifest\.json is unreadable .*fix or move it away/);
  t.same(fs.readdirSync(bdir).sort(), files, "no file written");
  fs.writeFileSync(manifest, honest);
  t.equal((await backups(base(), "src")).length > 0, true, "readable again");
});
