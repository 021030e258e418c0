import fs from "node:fs";
import path from "node:path";
import { fileURLToPath } from "node:url";
import t from "tap";
import { isQemuOf } from "../provisioner/qemu.js";
import { backups, backupTestConfig, capsul, guestSums, inGuest, jsonLines, writeGuestFile } from "./helpers/backup.js";
import { killHard, startChild, stopChild, type ChildProvisioner } from "./helpers/vmchild.js";
import { api, authHeader, cleanupDataDir, importTestImage, run, sshKeypair, sshUntil, tempDataDir, waitFor, waitForState } from "./helpers/vm.js";

t.setTimeout(40 * 60_000);

/**
 * The whole life of a backup chain on a real VM (TCG): a filesystem on the
 * VM's disk, files with known SHA-256, full and incremental backups (frozen
 * by the guest agent), kill -9 of the provisioner between backups, a crash of
 * QEMU (the chain breaks: the next backup is full, and the log says why), a
 * backup of the stopped VM, then the VM destroyed and restored.
 */
t.test("backup, kill -9, crash, offline backup, destroy, restore", async (t) => {
  const dataDir = tempDataDir();
  const routes = path.join(dataDir, "routes.json");
  // Full backups read the whole 1 GiB disk at 256 MiB/s: ~4 s, long enough to kill the provisioner during one.
  const cfg = backupTestConfig(dataDir, { rate_limit: "256MiB" });
  let child: ChildProvisioner | undefined;
  t.teardown(async () => { if (child) await stopChild(child); cleanupDataDir(dataDir); });
  child = await startChild(cfg, routes);
  const { key, pub } = sshKeypair(dataDir);
  await importTestImage(child.url, dataDir);
  t.equal((await api(child.url, "POST", "/v1/vms", { name: "data", image: "tiny", size: "t1", ssh_keys: [pub] })).status, 202);
  const vm = await waitForState(child.url, "data", "running");
  const port = Number(vm.local.ssh.split(":")[1]);
  await sshUntil(port, key, "echo ok");
  // ext2 (mounted by the ext4 driver): no journal, so only the agent's freeze flushes what is written.
  await inGuest(port, key, "mke2fs -q -F /dev/vda 65536 && mount -t ext4 /dev/vda /mnt/data");
  const sums: Record<string, string> = {};
  sums["a.bin"] = await writeGuestFile(port, key, "a.bin", 2048);
  const g = () => ["--api", child!.url, "--data-dir", dataDir];

  // 1. Full backup, through the CLI with --json: progress lines, then the backup.
  let r = await capsul(["vm", "backup", "data", "--json", ...g()]);
  t.equal(r.code, 0, r.stderr);
  let out = jsonLines(r.stdout);
  const full = out.result.backup;
  t.equal(full.kind, "full");
  t.equal(full.consistency, "filesystem", "the guest agent froze the filesystem");
  t.equal(full.online, true);
  t.ok(out.progress.some((p) => p.phase === "backup" && p.total_bytes === 1024 * 1024 * 1024), "progress of the job, over the whole disk");
  t.ok(out.progress.every((p) => typeof p.bytes_per_sec === "number" && "eta_sec" in p), "progress has a rate and an ETA");
  t.notOk(fs.existsSync(path.join(dataDir, "vms", "data", "fsfreeze")), "thawed: no freeze marker left");
  t.equal((await inGuest(port, key, "touch /mnt/data/thawed && echo ok")).trim(), "ok", "the guest writes again");

  // 2. Incremental: only what changed.
  sums["b.bin"] = await writeGuestFile(port, key, "b.bin", 1024);
  r = await capsul(["vm", "backup", "data", "--json", ...g()]);
  t.equal(r.code, 0, r.stderr);
  const inc1 = jsonLines(r.stdout).result.backup;
  t.equal(inc1.kind, "incremental");
  t.equal(inc1.parent, full.id);
  t.ok(inc1.bytes < full.bytes, `incremental ${inc1.bytes} B < full ${full.bytes} B`);
  t.ok(inc1.data_bytes >= 1024 * 1024 && inc1.data_bytes < full.data_bytes, `read ${inc1.data_bytes} B: b.bin and metadata`);
  t.comment(`full: ${full.bytes} B file, ${full.data_bytes} B read, ${full.duration_ms} ms; incremental: ${inc1.bytes} B, ${inc1.data_bytes} B read, ${inc1.duration_ms} ms`);

  // 3. kill -9 the provisioner: QEMU and its bitmaps live on; the next backup is incremental and correct.
  await killHard(child);
  child = await startChild(cfg, routes);
  await waitForState(child.url, "data", "running");
  sums["c.bin"] = await writeGuestFile(port, key, "c.bin", 512);
  let res = await api(child.url, "POST", "/v1/vms/data/backups", {});
  t.equal(res.status, 201, res.text);
  const inc2 = res.body.backup;
  t.equal(inc2.kind, "incremental", "the chain survived the provisioner's kill -9");
  t.equal(inc2.parent, inc1.id);

  // 3b. kill -9 the provisioner *during* a (full) backup, once its job runs (a progress line came):
  //     the next provisioner cancels the job and removes the target QEMU still holds, and the
  //     chain goes on, the interrupted backup's bitmap merged in (the final restore checks every file).
  sums["c2.bin"] = await writeGuestFile(port, key, "c2.bin", 256);
  const streaming = await fetch(`${child.url}/v1/vms/data/backups`, {
    method: "POST", body: JSON.stringify({ full: true }), headers: { ...authHeader(child.url), "content-type": "application/json", accept: "application/x-ndjson" },
  });
  const reader = streaming.body!.getReader();
  let seen = "";
  while (!/"phase":"backup"/.test(seen)) {
    const { value, done } = await reader.read();
    if (done) break;
    seen += Buffer.from(value).toString();
  }
  t.match(seen, /"progress":\{"phase":"backup"/, "the job runs");
  await killHard(child);
  await reader.cancel().catch(() => undefined);
  child = await startChild(cfg, routes);
  res = await api(child.url, "POST", "/v1/vms/data/backups", {});
  t.equal(res.status, 201, res.text);
  t.equal(res.body.backup.kind, "incremental");
  t.equal(res.body.backup.parent, inc2.id, "on the last recorded backup");
  t.match(child.stderr(), /cleaned what an interrupted backup left in QEMU vm=data items="?job capsul-bk-job-\d+,node capsul-bk-target-\d+/);
  t.match(child.stderr(), /removed unfinished backup files vm=data files=\d+-full\.qcow2\.part/);
  const inc2b = res.body.backup;

  // 4. A hostile guest agent (garbage on its port, no line end): crash-consistent, still a backup.
  await inGuest(port, key, "sync; kill $(cat /run/qemu-ga.pid); for p in /sys/class/virtio-ports/*; do " +
    "[ \"$(cat $p/name)\" = org.qemu.guest_agent.0 ] && (while :; do printf '%01000d' 0; done >/dev/${p##*/} 2>/dev/null &) ; done; true");
  res = await api(child.url, "POST", "/v1/vms/data/backups", {});
  t.equal(res.status, 201, res.text);
  const inc3 = res.body.backup;
  t.equal(inc3.kind, "incremental");
  t.equal(inc3.parent, inc2b.id);
  t.equal(inc3.consistency, "crash", "no agent answer: crash-consistent");

  // 5. QEMU dies (kill -9): the bitmaps were never stored; the next backup is full, and the log says why.
  const pid = (await api(child.url, "GET", "/v1/vms/data")).body.vm.pid as number;
  process.kill(pid, "SIGKILL");
  await waitFor("QEMU gone", async () => !isQemuOf(pid, vm.uuid), 30_000);
  await waitFor("the crashed VM restarted", async () => {
    const v = (await api(child!.url, "GET", "/v1/vms/data")).body.vm;
    return v.state === "running" && v.pid !== pid;
  });
  await sshUntil(port, key, "echo ok");
  await inGuest(port, key, "mount -t ext4 /dev/vda /mnt/data");
  t.same(await guestSums(port, key), sums, "the files synced before the crash are there");
  sums["d.bin"] = await writeGuestFile(port, key, "d.bin", 256);
  res = await api(child.url, "POST", "/v1/vms/data/backups", {});
  t.equal(res.status, 201, res.text);
  const full2 = res.body.backup;
  t.equal(full2.kind, "full", "chain broken by the crash: full");
  t.match(res.body.reason, /bitmap capsul-bk-\d+|inconsistent/);
  t.match(child.stderr(), /backup chain broken; taking a full backup vm=data reason=".*(no bitmap|inconsistent)/, "a log line says why");

  // 6. Stopped VM: its bitmap was stored at the clean exit; an offline incremental.
  await inGuest(port, key, "sync; umount /mnt/data");
  t.equal((await api(child.url, "POST", "/v1/vms/data/stop")).status, 200);
  res = await api(child.url, "POST", "/v1/vms/data/backups", {});
  t.equal(res.status, 201, res.text);
  const off = res.body.backup;
  t.equal(off.kind, "incremental", "bitmap survived the clean QEMU exit");
  t.equal(off.online, false);
  t.equal(off.consistency, "stopped");
  t.equal(off.parent, full2.id);

  r = await capsul(["vm", "backups", "data", ...g()]);
  t.equal(r.code, 0, r.stderr);
  t.match(r.stdout, /^ID\s+KIND\s+CHAIN\s+CREATED\s+SIZE\s+READ\s+TIME\s+CONSISTENCY\n/);
  t.equal(r.stdout.trim().split("\n").length, 8, "seven backups listed");

  // On a terminal (script(1) gives the CLI a pty): a progress line with bytes, rate and ETA, redrawn in place.
  const loader = process.execArgv.filter((a) => a.includes("@tapjs/typescript")).join(" ");
  const cli = path.join(path.dirname(fileURLToPath(import.meta.url)), "helpers", "vm-cli.ts");
  const tty = await run("script", ["-qec", `${process.execPath} ${loader} ${cli} vm backup data --api ${child.url} --data-dir ${dataDir}`, "/dev/null"], 300_000);
  t.equal(tty.code, 0, tty.stdout);
  t.match(tty.stdout, /\r\x1b\[K(backing up|checksum) +\[[# ]+\] +\d+% [\d.]+ \w+ \/ [\d.]+ \w+ {2}[\d.]+ \w+\/s {2}ETA \S+/, "progress on the terminal");
  t.match(tty.stdout, /data: backup \d+ \(incremental on \d+\): .* read in [\d.]+ s, taken from the stopped VM's disk/);

  // 7. Destroy the VM; restore it from the last incremental: every file, bit for bit.
  t.equal((await api(child.url, "DELETE", "/v1/vms/data")).status, 200);
  r = await capsul(["vm", "backups", "data", ...g()]);
  t.match(r.stdout, /data no longer exists/);
  r = await capsul(["vm", "restore", "data", "--from", off.id, "--json", ...g()]);
  t.equal(r.code, 0, r.stderr);
  out = jsonLines(r.stdout);
  t.equal(out.result.vm.name, "data");
  t.equal(out.result.vm.uuid, vm.uuid, "recreated under its own name: the same uuid");
  t.ok(out.progress.some((p) => p.phase === "verify") && out.progress.some((p) => p.phase === "restore"), "verify and restore progress");
  const back = await waitForState(child.url, "data", "running");
  const port2 = Number(back.local.ssh.split(":")[1]);
  await sshUntil(port2, key, "echo ok");
  await inGuest(port2, key, "mount -t ext4 /dev/vda /mnt/data");
  t.same(await guestSums(port2, key), sums, "a, b, c and d with their SHA-256");

  // 8. A copy under a new name from the first incremental: a and b only.
  r = await capsul(["vm", "restore", "data", "--from", inc1.id, "--as", "copy", ...g()]);
  t.equal(r.code, 0, r.stderr);
  t.match(r.stdout, /^copy: restored from backup \d+ of data \(incremental/);
  const copy = await waitForState(child.url, "copy", "running");
  t.not(copy.uuid, vm.uuid, "a copy gets a uuid of its own");
  const port3 = Number(copy.local.ssh.split(":")[1]);
  await sshUntil(port3, key, "echo ok");
  await inGuest(port3, key, "mount -t ext4 /dev/vda /mnt/data");
  t.same(await guestSums(port3, key), { "a.bin": sums["a.bin"], "b.bin": sums["b.bin"] }, "the state of the first incremental");

  // 9. The restored VM's next backup starts a new chain, and says why.
  res = await api(child.url, "POST", "/v1/vms/data/backups", {});
  t.equal(res.status, 201, res.text);
  t.equal(res.body.backup.kind, "full");
  t.match(res.body.reason, /restored from backup/);
  t.equal((await backups(child.url, "copy")).length, 0, "the copy's backups are its own");
});
