import fs from "node:fs";
import net from "node:net";
import os from "node:os";
import path from "node:path";
import t, { type Test } from "tap";
import { planIncremental, type BitmapInfo } from "../provisioner/backupjob.js";
import {
  BackupStore, chainOf, chainRoots, type BackupRecord, type Manifest, MANIFEST_FILE, parseManifest, pruneList,
} from "../provisioner/backupstore.js";
import { GuestAgent, GUEST_AGENT_MAX_REPLY_BYTES } from "../provisioner/guestagent.js";

const SHA = "0".repeat(64);
const vmInfo = { uuid: "u1", image: "tiny", size: "t1", sshKeys: ["ssh-ed25519 AAAA x"] };

function rec(seq: number, parent: number | null): BackupRecord {
  return {
    id: String(seq), seq, kind: parent === null ? "full" : "incremental", parent: parent === null ? null : String(parent),
    file: `${String(seq).padStart(4, "0")}-${parent === null ? "full" : "inc"}.qcow2`, createdAt: new Date(seq * 1000).toISOString(),
    durationMs: 1, bytes: 1, dataBytes: 1, virtualBytes: 1, sha256: SHA, consistency: "crash", online: true, vm: vmInfo,
  };
}

const manifest = (backups: BackupRecord[], nextSeq = 100): Manifest => ({ version: 1, vm: "web", nextSeq, resetReason: null, backups });

t.test("manifest: what is not capsul's is refused whole", async (t) => {
  const good = manifest([rec(1, null), rec(2, 1), rec(3, 2)]);
  t.same(parseManifest(JSON.stringify(good), "web").backups.map((b) => b.id), ["1", "2", "3"]);
  const cases: Array<[string, (m: any) => void, RegExp]> = [
    ["a file outside the directory", (m) => { m.backups[0].file = "../../vms/other/disk.qcow2"; }, /bad file/],
    ["an absolute file", (m) => { m.backups[0].file = "/etc/shadow.qcow2"; }, /bad file/],
    ["a file that is not qcow2", (m) => { m.backups[0].file = "manifest.json"; }, /bad file/],
    ["another VM's manifest", (m) => { m.vm = "other"; }, /belongs to VM "other"/],
    ["a newer version", (m) => { m.version = 2; }, /version 2/],
    ["a parent that comes later", (m) => { m.backups[1].parent = "3"; }, /parent 3 is not an earlier backup/],
    ["an incremental without parent", (m) => { m.backups[1].parent = null; }, /bad parent/],
    ["a full with a parent", (m) => { m.backups[0].parent = "2"; }, /bad parent/],
    ["a repeated id", (m) => { m.backups[2] = { ...m.backups[1] }; }, /twice/],
    ["a sequence number not below nextSeq", (m) => { m.nextSeq = 3; }, /not below nextSeq/],
    ["an id that is not its seq", (m) => { m.backups[0].id = "7"; }, /bad id/],
    ["a bad sha256", (m) => { m.backups[0].sha256 = "xyz"; }, /sha256/],
    ["a bad consistency", (m) => { m.backups[0].consistency = "perfect"; }, /bad consistency/],
    ["negative sizes", (m) => { m.backups[0].bytes = -1; }, /bad sizes/],
    ["no vm info", (m) => { delete m.backups[0].vm; }, /bad vm/],
  ];
  t.ok(cases.length > 0);
  for (const [what, change, re] of cases) {
    const m = JSON.parse(JSON.stringify(good));
    change(m);
    t.throws(() => parseManifest(JSON.stringify(m), "web"), re, what);
  }
  t.throws(() => parseManifest("null", "web"), /not an object/);
});

t.test("store: a missing manifest is empty, a broken one an error; saves are atomic", async (t) => {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), "cbk-"));
  t.teardown(() => fs.rmSync(dir, { recursive: true, force: true }));
  const s = new BackupStore(dir);
  t.same((await s.load("web")).backups, []);
  await s.save(manifest([rec(1, null)], 2));
  t.equal(fs.statSync(path.join(dir, "web")).mode & 0o777, 0o700, "the VM's backup dir is private");
  t.same((await s.load("web")).backups.map((b) => b.id), ["1"]);
  t.notOk(fs.existsSync(path.join(dir, "web", `${MANIFEST_FILE}.tmp`)));
  fs.writeFileSync(path.join(dir, "web", MANIFEST_FILE), "{");
  await t.rejects(s.load("web"), { code: "backup_manifest_corrupt", message: /is unreadable .*fix or move it away/ });
  await s.save(manifest([rec(1, null)], 4));
  for (const f of ["0001-full.qcow2", "0002-inc.qcow2.part", "0003-inc.qcow2", "notes.txt"]) fs.writeFileSync(path.join(dir, "web", f), "x");
  t.same(await s.removeUnfinished(await s.load("web")), ["0002-inc.qcow2.part", "0003-inc.qcow2"], "partial and unrecorded backups go");
  t.ok(fs.existsSync(path.join(dir, "web", "0001-full.qcow2")), "recorded backups stay");
  t.ok(fs.existsSync(path.join(dir, "web", "notes.txt")), "and files that are not capsul's");
});

t.test("chains and retention", async (t) => {
  const m = manifest([rec(1, null), rec(2, 1), rec(3, null), rec(4, 3), rec(5, 4), rec(6, null)]);
  t.same(chainOf(m, "5").map((b) => b.id), ["3", "4", "5"]);
  t.same(chainOf(m, "1").map((b) => b.id), ["1"]);
  t.same([...chainRoots(m)], [["1", "1"], ["2", "1"], ["3", "3"], ["4", "3"], ["5", "3"], ["6", "6"]]);
  t.throws(() => chainOf(m, "9"), { code: "backup_not_found" });
  t.throws(() => chainOf(m, "1/../2"), { code: "bad_backup_id" });
  t.same(pruneList(m, 2).map((b) => b.id), ["1", "2"], "keep_full 2: the oldest chain goes whole");
  t.same(pruneList(m, 1).map((b) => b.id), ["1", "2", "3", "4", "5"]);
  t.same(pruneList(m, 3), []);
  const broken = manifest([rec(3, null), rec(4, 3)]);
  broken.backups = broken.backups.filter((b) => b.id !== "3");
  t.throws(() => chainOf(broken, "4"), { code: "backup_chain_broken" });
});

t.test("planIncremental: every reason a chain cannot go on", async (t) => {
  const bm = (name: string, o: Partial<BitmapInfo> = {}): BitmapInfo => ({
    name, recording: false, persistent: true, busy: false, inconsistent: false, count: 0, ...o,
  });
  t.same(planIncremental([bm("capsul-bk-5", { recording: true })], 5), { ok: true, merge: ["capsul-bk-5"] });
  t.same(planIncremental([bm("capsul-bk-7", { recording: true }), bm("capsul-bk-5"), bm("capsul-bk-3"), bm("other")], 5),
    { ok: true, merge: ["capsul-bk-5", "capsul-bk-7"] }, "an unrecorded backup's bitmap is merged in; older and foreign ones ignored");
  t.match(planIncremental([], 5), { ok: false, reason: /no bitmap capsul-bk-5/ });
  t.match(planIncremental([bm("capsul-bk-6", { recording: true })], 5), { ok: false, reason: /no bitmap capsul-bk-5/ });
  t.match(planIncremental([bm("capsul-bk-5", { inconsistent: true })], 5), { ok: false, reason: /inconsistent/ });
  t.match(planIncremental([bm("capsul-bk-5"), bm("capsul-bk-6", { inconsistent: true })], 5), { ok: false, reason: /capsul-bk-6 is inconsistent/ });
  t.match(planIncremental([bm("capsul-bk-5")], 5), { ok: false, reason: /no longer records/ });
  t.match(planIncremental([bm("capsul-bk-5", { recording: true, busy: true })], 5), { ok: false, reason: /in use/ });
});

/** qemu-ga's resync marker: a raw 0xFF byte (never valid UTF-8). */
const FF = Buffer.from([0xff]);

/** A unix socket standing in for QEMU's end of the guest agent's port, answering as `agent` says. */
async function fakeAgent(t: Test, agent: (line: string, sock: net.Socket) => void): Promise<string> {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), "cga-"));
  const file = path.join(dir, "qga.sock");
  const open = new Set<net.Socket>();
  const srv = net.createServer((sock) => {
    open.add(sock);
    let buf = "";
    sock.on("data", (d) => {
      buf += d.toString();
      let nl: number;
      while ((nl = buf.indexOf("\n")) >= 0) { agent(buf.slice(0, nl), sock); buf = buf.slice(nl + 1); }
    });
    sock.on("error", () => undefined);
  });
  await new Promise<void>((r) => srv.listen(file, r));
  t.teardown(() => { for (const s of open) s.destroy(); srv.close(); fs.rmSync(dir, { recursive: true, force: true }); });
  return file;
}

t.test("guest agent: a working one, stale lines, and hostile ones", async (t) => {
  // A working agent that first sends lines a previous client left unread.
  const ok = await fakeAgent(t, (line, sock) => {
    const m = JSON.parse(line) as { execute: string; arguments?: { id?: number } };
    if (m.execute === "guest-sync-delimited") {
      sock.write(Buffer.concat([Buffer.from('{"return": 1}\n{"return": {}}\n'), FF, Buffer.from(`{"return": 4}\n{"return": ${m.arguments!.id}}\n`)]));
    }
    else if (m.execute === "guest-ping") sock.write('{"return": {}}\n');
    else if (m.execute === "guest-fsfreeze-freeze") sock.write('{"return": 2}\n');
    else if (m.execute === "guest-fsfreeze-thaw") sock.write('{"return": 2}\n');
    else if (m.execute === "guest-fsfreeze-status") sock.write('{"return": "thawed"}\n');
  });
  let ga = await GuestAgent.open(ok, 2000);
  t.ok(ga);
  t.equal(await ga!.ping(5000), true, "resynchronised past the stale lines");
  t.equal(await ga!.freeze(5000), 2);
  t.equal(await ga!.frozen(5000), false);
  t.equal(await ga!.thaw(5000), 2);
  ga!.close();

  t.equal(await GuestAgent.open(path.join(os.tmpdir(), "no-such-agent.sock"), 500), null, "no socket: no agent");

  const silent = await fakeAgent(t, () => undefined);
  ga = await GuestAgent.open(silent, 2000);
  t.equal(await ga!.ping(300), false, "a guest without an agent never answers: false at the deadline");
  ga!.close();

  // Garbage without a line end after the sync marker: capped, not buffered without end.
  const flood = await fakeAgent(t, (_l, sock) => { sock.write(Buffer.concat([FF, Buffer.alloc(GUEST_AGENT_MAX_REPLY_BYTES + 10, 0x41)])); });
  ga = await GuestAgent.open(flood, 2000);
  await t.rejects(ga!.execute("guest-ping", undefined, 120_000), { code: "agent_bad_reply", message: /over 65536 bytes without a line end/ },
    "an oversized reply ends the conversation at once");
  ga!.close();
  ga = await GuestAgent.open(flood, 2000);
  t.equal(await ga!.ping(5000), false, "and is no answer to a ping");
  ga!.close();

  // Answers that parse but lie: freeze must return a number; errors become clear messages.
  const liar = await fakeAgent(t, (line, sock) => {
    const m = JSON.parse(line) as { execute: string; arguments?: { id?: number } };
    if (m.execute === "guest-sync-delimited") sock.write(Buffer.concat([FF, Buffer.from(`{"return": ${m.arguments!.id}}\n`)]));
    else if (m.execute === "guest-ping") sock.write('{"return": {}}\n');
    else if (m.execute === "guest-fsfreeze-freeze") sock.write('{"return": "all of them"}\n');
    else sock.write('{"error": {"class": "GenericError", "desc": "nope"}}\n');
  });
  ga = await GuestAgent.open(liar, 2000);
  t.equal(await ga!.ping(5000), true);
  await t.rejects(ga!.freeze(5000), { code: "agent_bad_reply" });
  await t.rejects(ga!.thaw(5000), { code: "agent_error", message: /guest-fsfreeze-thaw: nope/ });
  ga!.close();
});
