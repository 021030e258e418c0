/**
 * Moving a capsul (README "Moving a capsul"): two cogs with their own
 * provisioners and data dirs on one real hub, a real QEMU VM under TCG with the
 * tiny test image (it keeps its SSH host keys on its disk per cloud-init
 * instance, as a cloud image does). Export → import between the cogs, the
 * archive attacks, a move the target did not consent to, a move cut halfway,
 * and the move that then works: each time the VM answers SSH through the hub
 * with the same host key and the same data, and the old one is gone.
 */
import { createHash } from "node:crypto";
import fs from "node:fs";
import path from "node:path";
import t, { type Test } from "tap";
import type { ProvisionerConfig } from "../config/types.js";
import { tarHeader, tarPadding, TAR_END } from "../provisioner/archive.js";
import { startProvisioner, type Provisioner } from "../provisioner/index.js";
import type { Cog } from "../tunnel-client/cog.js";
import { capsul, inGuest, jsonLines } from "./helpers/backup.js";
import { jsonStyle } from "./helpers/jsonstyle.js";
import { cogConfig, enrolledCog, HUB_DOMAIN, hubConfig, startTestHub, testLogger, tmpDir } from "./helpers/cluster.js";
import {
  api, authHeader, authorize, cleanupDataDir, importTestImage, run, sshKeypair, sshUntil, tempDataDir, testConfig, waitFor, waitForState,
} from "./helpers/vm.js";

t.setTimeout(30 * 60_000);

/** Random data written in the guest before the export: big enough that a move at move_rate takes a few seconds. */
const DATA_MIB = 48;
/** The kill test slows the move to this, so that it is surely cut halfway. */
const SLOW_MOVE_BYTES_PER_SEC = 8 * 1024 * 1024;

interface Side { name: string; cog: Cog; prov: Provisioner; dataDir: string; cfg: ProvisionerConfig }

async function side(dir: string, hubCfg: Parameters<typeof enrolledCog>[0], hub: Parameters<typeof enrolledCog>[1], name: string, over: Partial<ProvisionerConfig>): Promise<Side> {
  const cog = await enrolledCog(hubCfg, hub, cogConfig(dir, name, hub.ports.tunnel, []), name);
  const dataDir = tempDataDir();
  const cfg = testConfig(dataDir, over);
  const prov = await startProvisioner({
    config: cfg, cogName: name, hubDomain: cog.identity.hubDomain, hubHost: "127.0.0.1", sink: cog.client, tunnel: cog.client, logger: testLogger(`prov-${name}`),
  });
  authorize(prov.url, dataDir);
  return { name, cog, prov, dataDir, cfg };
}

const hubSshPort = (s: Side, vm: string): Promise<number> => waitFor(`the hub port of ${vm} on ${s.name}`, async () => {
  const st = s.cog.client.status(`vm-${vm}-ssh`);
  return st.state === "accepted" ? st.port : undefined;
}, 60_000);

/** The ed25519 host key the VM shows through the hub: the key type and blob of ssh-keyscan's line. */
async function hostKey(port: number): Promise<string> {
  return waitFor(`ssh-keyscan -p ${port}`, async () => {
    const r = await run("ssh-keyscan", ["-T", "20", "-t", "ed25519", "-p", String(port), "127.0.0.1"]);
    const line = r.stdout.split("\n").find((l) => l.includes("ssh-ed25519"));
    return line ? line.split(/\s+/).slice(1, 3).join(" ") : undefined;
  }, 120_000);
}

/** No staging dir of an import or an export is left behind. */
function leftovers(dataDir: string): string[] {
  const out: string[] = [];
  for (const sub of ["incoming", "export"]) {
    const d = path.join(dataDir, sub);
    if (fs.existsSync(d)) out.push(...fs.readdirSync(d).map((f) => `${sub}/${f}`));
  }
  return out;
}

async function importRaw(s: Side, body: Buffer): Promise<{ status: number; body: any }> {
  const res = await fetch(`${s.prov.url}/v1/vms/import`, { method: "POST", headers: { ...authHeader(s.prov.url), "content-type": "application/x-tar" }, body: new Uint8Array(body) });
  return { status: res.status, body: await res.json() };
}

/** A tar of these entries, written with the archive writer (for manifests the test edits). */
function tarOf(entries: { name: string; data: Buffer }[]): Buffer {
  const parts: Buffer[] = [];
  for (const e of entries) parts.push(tarHeader(e.name, e.data.length, 0), e.data, tarPadding(e.data.length));
  return Buffer.concat([...parts, TAR_END]);
}

const sha = (b: Buffer): string => createHash("sha256").update(b).digest("hex");

t.test("export/import and move of a VM between two cogs through the hub", async (t) => {
  const dir = tmpDir();
  const hubCfg = hubConfig(dir, { listen: { tcp_ports: ["22640-22659"] } });
  const hub = await startTestHub(hubCfg);
  t.teardown(() => hub.close());
  const home1 = await side(dir, hubCfg, hub, "home1", {});
  const home2 = await side(dir, hubCfg, hub, "home2", { acceptMovesFrom: ["home1"] });
  for (const s of [home1, home2]) {
    t.teardown(async () => { await s.prov.close(); await s.cog.close(); cleanupDataDir(s.dataDir); });
    await importTestImage(s.prov.url, s.dataDir);
  }
  const { key, pub } = sshKeypair(home1.dataDir);
  const cli = (s: Side, args: string[]) => capsul([...args, "--api", s.prov.url, "--data-dir", s.dataDir]);

  const created = await api(home1.prov.url, "POST", "/v1/vms", { name: "web1", image: "tiny", size: "t1", ssh_keys: [pub] });
  t.equal(created.status, 202, created.text);
  await waitForState(home1.prov.url, "web1", "running");
  const port1 = await hubSshPort(home1, "web1");
  t.equal((await sshUntil(port1, key, "hostname")).trim(), "web1");
  await inGuest(port1, key, "mke2fs -q -F /dev/vda 262144 && mount -t ext4 /dev/vda /mnt/data");
  const out = await inGuest(port1, key, `dd if=/dev/urandom of=/mnt/data/a.bin bs=1048576 count=${DATA_MIB} 2>/dev/null && sha256sum /mnt/data/a.bin`);
  const dataSum = out.trim().split(/\s+/)[0]!;
  const key1 = await hostKey(port1);
  await inGuest(port1, key, "save-hostkeys /mnt/data && umount /mnt/data");
  t.comment(`web1 on home1: host key ${key1.slice(0, 40)}…, a.bin ${dataSum}`);

  /** The VM at `port`: its host key, hostname and a.bin's SHA-256 as the guest computes it. */
  const check = async (t: Test, s: Side, what: string): Promise<void> => {
    await waitForState(s.prov.url, "web1", "running");
    const port = await hubSshPort(s, "web1");
    t.equal((await sshUntil(port, key, "hostname")).trim(), "web1", `${what}: ssh through the hub (port ${port}) reaches it`);
    t.equal(await hostKey(port), key1, `${what}: the same SSH host key`);
    const sum = await inGuest(port, key, "mount -t ext4 /dev/vda /mnt/data && sha256sum /mnt/data/a.bin && umount /mnt/data");
    t.equal(sum.trim().split(/\s+/)[0], dataSum, `${what}: a.bin has the same SHA-256`);
    const view = (await api(s.prov.url, "GET", "/v1/vms/web1")).body.vm;
    t.equal(view.hostname, `web1.${s.name}.${HUB_DOMAIN}`, `${what}: its default hostname is ${s.name}'s`);
  };

  const file = path.join(dir, "web1.capsul.tar");

  await t.test("a running VM is not exported", async (t) => {
    const r = await cli(home1, ["vm", "export", "web1", "-o", file]);
    t.equal(r.code, 1, r.stderr);
    t.match(r.stderr, /VM web1 is running: stop it first \(capsul vm stop web1\); a live export is not supported/);
    t.equal(r.stderr.trim().split("\n").length, 1, "one line");
    t.notOk(fs.existsSync(file), "no file");
    t.same(leftovers(home1.dataDir), []);
  });

  await t.test("export on home1, import on home2: same host key, same data, new hostname", async (t) => {
    t.equal((await api(home1.prov.url, "POST", "/v1/vms/web1/stop")).status, 200);
    const r = await cli(home1, ["vm", "export", "web1", "-o", file, "--json"]);
    t.equal(r.code, 0, r.stderr);
    const { progress, result } = jsonLines(r.stdout);
    // The one --json style of every command (test/cli-json.test.ts, which cannot run export, import or move without a second cog).
    for (const line of r.stdout.trim().split("\n")) t.same(jsonStyle(JSON.parse(line)).problems, [], `vm export --json: ${line.slice(0, 100)}`);
    t.equal(result.exported.bytes, fs.statSync(file).size, "the file is what was sent");
    t.equal(result.exported.sha256, sha(fs.readFileSync(file)));
    t.ok(progress.length > 0 && progress.every((p) => p.phase === "export"), "progress lines");
    t.equal(progress[progress.length - 1].bytes, result.exported.bytes, "the last progress line is the whole");
    const listing = await run("tar", ["tf", file]);
    t.same(listing.stdout.trim().split("\n"), ["manifest.json", "disk.qcow2", "seed/meta-data", "seed/user-data"], "GNU tar reads it");
    const manifest = JSON.parse((await run("tar", ["xOf", file, "manifest.json"])).stdout);
    t.equal(manifest.vm.uuid, created.body.vm.uuid, "the manifest keeps the instance id");
    t.same(leftovers(home1.dataDir), [], "the export's staging dir is gone");

    const i = await cli(home2, ["vm", "import", file]);
    t.equal(i.code, 0, i.stderr);
    t.match(i.stdout, /web1: imported from cog home1 \(web1, .*\); creating; same cloud-init instance \(host keys kept\)/);
    t.match(i.stdout, new RegExp(`hostname: web1.home2.${HUB_DOMAIN.replace(".", "\\.")} \\(was web1.home1`));
    t.equal((await api(home2.prov.url, "GET", "/v1/vms/web1")).body.vm.uuid, created.body.vm.uuid);
    await check(t, home2, "imported on home2");
    t.same(leftovers(home2.dataDir), []);
    t.equal((await cli(home2, ["vm", "import", file])).code, 1, "a second import under the same name is refused");
    t.equal((await api(home2.prov.url, "DELETE", "/v1/vms/web1")).status, 200);
  });

  await t.test("bad archives are refused with one line, leaving nothing behind", async (t) => {
    const good = fs.readFileSync(file);
    const diskAt = 512 + Math.ceil(Number.parseInt(good.subarray(124, 135).toString(), 8) / 512) * 512 + 512;
    const refused = async (what: string, body: Buffer, status: number, code: string, msg: RegExp): Promise<void> => {
      const r = await importRaw(home2, body);
      t.equal(r.status, status, `${what}: ${JSON.stringify(r.body)}`);
      t.equal(r.body.error?.code, code, what);
      t.match(r.body.error?.message, msg, what);
      t.notOk(String(r.body.error?.message).includes("\n"), `${what}: one line`);
      t.equal((await api(home2.prov.url, "GET", "/v1/vms/web1")).status, 404, `${what}: no VM`);
      t.same(leftovers(home2.dataDir), [], `${what}: no staging files`);
    };
    await refused("truncated", good.subarray(0, diskAt + 100_000), 400, "archive_truncated", /the archive ends inside disk.qcow2/);
    const corrupt = Buffer.from(good);
    corrupt[diskAt + 70_000]! ^= 0xff;
    await refused("one flipped byte", corrupt, 400, "archive_corrupt", /disk.qcow2 does not match its SHA-256/);
    await refused("not a tar", Buffer.from("hello"), 400, "archive_truncated", /empty or ends in its first header/);

    // A tar made by GNU tar whose disk is named ../../evil.qcow2 (-P keeps the ../).
    const x = path.join(dir, "x");
    fs.mkdirSync(path.join(x, "a"), { recursive: true });
    t.equal((await run("tar", ["xf", file, "-C", path.join(x, "a")])).code, 0);
    const evil = path.join(x, "evil.tar");
    const mk = await run("tar", ["-C", path.join(x, "a"), "-cPf", evil, "--transform", "s,^disk.qcow2$,../../evil.qcow2,", "manifest.json", "disk.qcow2", "seed/meta-data", "seed/user-data"]);
    t.equal(mk.code, 0, mk.stderr);
    t.match((await run("tar", ["tPf", evil])).stdout, /^\.\.\/\.\.\/evil\.qcow2$/m, "the tar really holds ../../evil.qcow2");
    await refused("a ../ name", fs.readFileSync(evil), 400, "archive_invalid", /archive entry "\.\.\/\.\.\/evil\.qcow2" where disk\.qcow2 belongs/);
    t.notOk(fs.existsSync(path.join(home2.dataDir, "evil.qcow2")), "nothing written where ../../ points");
    t.notOk(fs.existsSync(path.join(home2.dataDir, "incoming", "evil.qcow2")));

    // A symlink where the disk belongs (to a file on the cog).
    const ln = path.join(x, "ln");
    fs.mkdirSync(path.join(ln, "seed"), { recursive: true });
    for (const f of ["manifest.json", "seed/meta-data", "seed/user-data"]) fs.copyFileSync(path.join(x, "a", f), path.join(ln, f));
    fs.symlinkSync("/etc/passwd", path.join(ln, "disk.qcow2"));
    t.equal((await run("tar", ["-C", ln, "-cf", path.join(x, "ln.tar"), "manifest.json", "disk.qcow2", "seed/meta-data", "seed/user-data"])).code, 0);
    await refused("a symlink", fs.readFileSync(path.join(x, "ln.tar")), 400, "archive_invalid", /"disk.qcow2" is not a regular file/);

    // A manifest that declares a disk far over max_archive_size: refused before a byte of it is kept.
    const m = JSON.parse(fs.readFileSync(path.join(x, "a", "manifest.json"), "utf8"));
    const parts = ["disk.qcow2", "seed/meta-data", "seed/user-data"].map((n) => ({ name: n, data: fs.readFileSync(path.join(x, "a", n)) }));
    const huge = { ...m, parts: m.parts.map((p: any, i: number) => (i === 0 ? { ...p, bytes: 50 * 2 ** 40 } : p)) };
    await refused("a 50 TiB declared size", tarOf([{ name: "manifest.json", data: Buffer.from(JSON.stringify(huge)) }, ...parts]), 413, "archive_too_large", /declares \d+ bytes, over this cog's max_archive_size/);

    // An archive of a VM whose image this cog does not have, or has with other files: refused from the manifest, before the disk.
    const other = { ...m, image: { ...m.image, name: "debian" } };
    await refused("an image this cog lacks", tarOf([{ name: "manifest.json", data: Buffer.from(JSON.stringify(other)) }, ...parts]), 409, "image_not_found", /boots image debian, which this cog does not have/);
    const kernel = { ...m, image: { ...m.image, files: { ...m.image.files, kernel: { ...m.image.files.kernel, sha256: "b".repeat(64) } } } };
    await refused("the same image name, other files", tarOf([{ name: "manifest.json", data: Buffer.from(JSON.stringify(kernel)) }, ...parts]), 409, "image_mismatch", /image tiny on this cog differs from the source cog's \(its kernel has another SHA-256\)/);

    // A qcow2 with a backing file on the cog, with a manifest that matches it: checksums do not make it safe.
    const planted = path.join(x, "planted.qcow2");
    t.equal((await run("qemu-img", ["create", "-q", "-f", "qcow2", "-b", "/etc/passwd", "-F", "raw", planted, "64M"])).code, 0);
    const pdata = fs.readFileSync(planted);
    const pm = { ...m, parts: m.parts.map((p: any, i: number) => (i === 0 ? { ...p, bytes: pdata.length, sha256: sha(pdata) } : p)) };
    await refused("a disk with a backing file", tarOf([{ name: "manifest.json", data: Buffer.from(JSON.stringify(pm)) }, { name: "disk.qcow2", data: pdata }, parts[1]!, parts[2]!]), 400, "archive_invalid", /disk.qcow2: image has a backing file/);

    // And the CLI says it in one line.
    fs.writeFileSync(path.join(x, "corrupt.tar"), corrupt);
    const c = await cli(home2, ["vm", "import", path.join(x, "corrupt.tar")]);
    t.equal(c.code, 2, c.stderr);
    t.match(c.stderr.trim(), /disk.qcow2 does not match its SHA-256 in the manifest: the archive is corrupt; nothing was kept \[archive_corrupt\]$/);
    t.equal(c.stderr.trim().split("\n").length, 1, "one line");
  });

  await t.test("a move to a cog that did not consent is refused; the VM stays", async (t) => {
    home2.prov.reconfigure({ ...home2.cfg, acceptMovesFrom: ["someone-else"] }, new Set());
    const r = await cli(home1, ["vm", "move", "web1", "--to", "home2"]);
    t.equal(r.code, 1, r.stderr);
    t.match(r.stderr, /the move was refused: cog home2 refused: cog home2 does not accept VMs from cog home1 \(add it to cog.provisioner.accept_moves_from on home2\); web1 stays on home1/);
    t.equal((await api(home1.prov.url, "GET", "/v1/vms/web1")).body.vm.state, "stopped", "web1 is still on home1, as it was");
    t.equal((await api(home2.prov.url, "GET", "/v1/vms/web1")).status, 404);
    t.same(leftovers(home1.dataDir), []);
    t.same(leftovers(home2.dataDir), []);
    home2.prov.reconfigure(home2.cfg, new Set());
  });

  await t.test("a running VM moves only with --stop", async (t) => {
    t.equal((await api(home1.prov.url, "POST", "/v1/vms/web1/start")).status, 202);
    await waitForState(home1.prov.url, "web1", "running");
    const r = await cli(home1, ["vm", "move", "web1", "--to", "home2"]);
    t.equal(r.code, 1, r.stderr);
    t.match(r.stderr, /VM web1 is running: stop it first, or consent to the move stopping it \(--stop\)/);
    t.equal((await api(home1.prov.url, "GET", "/v1/vms/web1")).body.vm.state, "running");
  });

  await t.test("a move cut halfway (the source's tunnel drops): source intact and running again, target clean", async (t) => {
    home1.prov.reconfigure({ ...home1.cfg, moveBytesPerSec: SLOW_MOVE_BYTES_PER_SEC }, new Set());
    const res = await fetch(`${home1.prov.url}/v1/vms/web1/move`, {
      method: "POST", headers: { ...authHeader(home1.prov.url), "content-type": "application/json", accept: "application/x-ndjson" },
      body: JSON.stringify({ to: "home2", stop: true }),
    });
    let buf = "";
    let cutAt: number | null = null;
    let last: any = null;
    for await (const chunk of res.body as unknown as AsyncIterable<Uint8Array>) {
      buf += Buffer.from(chunk).toString();
      let nl: number;
      while ((nl = buf.indexOf("\n")) >= 0) {
        const msg = JSON.parse(buf.slice(0, nl));
        buf = buf.slice(nl + 1);
        last = msg;
        if (cutAt === null && msg.progress?.phase === "move" && msg.progress.bytes > msg.progress.total_bytes / 3 && msg.progress.bytes < msg.progress.total_bytes) {
          cutAt = msg.progress.bytes;
          // The tunnel drops: what a network cut or a killed hub does to the move.
          for (const l of home1.cog.client.links) l.session?.destroy();
        }
      }
    }
    t.ok(cutAt !== null, `cut after ${cutAt} bytes`);
    t.ok(last?.error, `the move failed: ${JSON.stringify(last)}`);
    t.match(last.error.message, /web1 stays on home1 and runs again/);
    await waitFor("home2 to drop the half import", async () => leftovers(home2.dataDir).length === 0, 60_000);
    t.equal((await api(home2.prov.url, "GET", "/v1/vms/web1")).status, 404, "no VM on home2");
    t.same(leftovers(home1.dataDir), []);
    await waitFor("home1 to reconnect", async () => home1.cog.client.state === "connected", 60_000);
    await check(t, home1, "web1 back on home1 after the cut");
    t.equal(await hubSshPort(home1, "web1"), port1, "a failed move leaves the SSH port with home1");
    t.same(await hub.store.portOwner(port1), { cog: "home1", route: "vm-web1-ssh" });
    home1.prov.reconfigure(home1.cfg, new Set());
  });

  await t.test("the move again: web1 runs on home2 with its host key and data, and is gone from home1", async (t) => {
    const r = await cli(home1, ["vm", "move", "web1", "--to", "home2", "--stop"]);
    t.equal(r.code, 0, r.stderr);
    t.match(r.stdout, /^web1: moved from cog home1 to cog home2 \(.* sent in .* s, .*\/s; \d+ s in all\); .* there; the copy here is deleted$/m);
    t.match(r.stdout, new RegExp(`its default hostname is now web1\\.home2\\.${HUB_DOMAIN.replace(".", "\\.")} \\(was web1\\.home1\\.${HUB_DOMAIN.replace(".", "\\.")}\\)`));
    t.match(r.stdout, new RegExp(`^its SSH port is still ${port1}: it followed the VM to home2$`, "m"));
    t.comment(`move through the hub: ${r.stdout.split("\n")[0]}`);
    t.equal((await api(home1.prov.url, "GET", "/v1/vms/web1")).status, 404, "gone from home1");
    await check(t, home2, "moved to home2");
    t.equal(await hubSshPort(home2, "web1"), port1, "SSH answers through the hub on the same port as before the move");
    t.same(await hub.store.portOwner(port1), { cog: "home2", route: "vm-web1-ssh" }, "the hub assigns that port to home2 now");
    t.same((await hub.store.assignmentsOf("home2")).map((a) => a.port), [port1], "the port home2 got at the import earlier is released");
    await waitFor("the hub to forget web1.home1", async () => hub.router.lookupHost("tls", `web1.home1.${HUB_DOMAIN}`) === undefined, 30_000);
    t.equal(hub.router.lookupHost("tls", `web1.home2.${HUB_DOMAIN}`)?.cog, "home2", "the hub routes the new hostname to home2");
    t.same(leftovers(home1.dataDir), []);
    t.same(leftovers(home2.dataDir), []);
  });
});
