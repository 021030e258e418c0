/**
 * The real Debian 12 cloud image (scripts/build-debian-image.sh, built once per
 * machine and cached) boots under TCG with the seed the provisioner generates
 * (provisioner/seed.ts) and does what `capsul image import --ssh-user` promises:
 * the named user (not the image's default "debian") exists with the seeded key
 * and passwordless sudo, sudo is silent (no "unable to resolve host"), the
 * hostname is the VM's name, cloud-init finishes without an error, and the
 * image's default user keeps working. QEMU is run directly here, with the
 * provisioner's disk and seed layout; the provisioner and hub path comes later.
 */
import { spawn, type ChildProcess } from "node:child_process";
import { randomUUID } from "node:crypto";
import fs from "node:fs";
import path from "node:path";
import t from "tap";
import { buildSeedIso, SEED_SUDO_RULE, seedFiles } from "../provisioner/seed.js";
import { DEBIAN_IMAGE_BUILD_TIMEOUT_MS, debianImage } from "./helpers/debianimage.js";
import { freePort, runProgram } from "./helpers/procs.js";
import { sshKeypair } from "./helpers/vm.js";

/** Debian reaches SSH in 80–130 s under TCG on a quiet machine; 142–247 s here under load 12–20. */
const DEBIAN_SSH_DEADLINE_MS = 15 * 60_000;
/** cloud-init's final stage runs on after sshd answers. */
const CLOUD_INIT_DEADLINE_MS = 10 * 60_000;
const SSH_COMMAND_TIMEOUT_MS = 120_000;
const SSH_RETRY_MS = 5_000;
const GENISOIMAGE_TIMEOUT_MS = 60_000;
/** f1-s, the smallest capsul: 512 MiB, 10 GiB disk. */
const VM_MEMORY_MIB = 512;
const VM_DISK = "10G";
/** The overlay is 10 GiB; the image's partition is 2 GiB until cloud-init's growpart grows it. */
const GROWN_PARTITION_MIN_BYTES = 8 * 1024 ** 3;

const NAME = "deb-web1";
const SSH_USER = "alice"; // not the image's default user ("debian")
const IMAGE_DEFAULT_USER = "debian";

t.setTimeout(DEBIAN_IMAGE_BUILD_TIMEOUT_MS + DEBIAN_SSH_DEADLINE_MS + CLOUD_INIT_DEADLINE_MS + 5 * 60_000);

const img = await debianImage();
if (img.builtNowMs !== null) t.comment(`built the Debian image (${img.key}) in ${Math.round(img.builtNowMs / 1000)} s`);

const dir = fs.mkdtempSync(path.join("/tmp", "cpd-"));
let qemu: ChildProcess | null = null;
t.teardown(() => {
  qemu?.kill("SIGKILL");
  fs.rmSync(dir, { recursive: true, force: true });
});

const { key, pub } = sshKeypair(dir);
const files = {
  disk: path.join(dir, "disk.qcow2"),
  seed: path.join(dir, "seed.iso"),
  console: path.join(dir, "console.log"),
};
await buildSeedIso(files.seed, { name: NAME, uuid: randomUUID(), sshKeys: [pub], sshUser: SSH_USER }, "genisoimage", GENISOIMAGE_TIMEOUT_MS);
const mk = await runProgram("qemu-img", ["create", "-q", "-f", "qcow2", "-b", img.path, "-F", "qcow2", files.disk, VM_DISK]);
if (mk.code !== 0) throw new Error(`qemu-img create: ${mk.stderr}`);

const port = await freePort();
// What the provisioner's argv does for a qcow2 image, minus QMP and daemonizing:
// q35 + SeaBIOS, the disk and the cidata seed as virtio disks, user networking.
qemu = spawn("qemu-system-x86_64", [
  "-machine", "q35,accel=tcg", "-cpu", "qemu64", "-m", String(VM_MEMORY_MIB), "-smp", "1",
  "-nodefaults", "-no-user-config", "-display", "none",
  "-chardev", `file,id=console,path=${files.console}`, "-serial", "chardev:console",
  "-drive", `if=none,id=disk0,file=${files.disk},format=qcow2,discard=unmap,detect-zeroes=unmap`,
  "-device", "virtio-blk-pci,drive=disk0",
  "-drive", `if=none,id=seed,file=${files.seed},format=raw,readonly=on`,
  "-device", "virtio-blk-pci,drive=seed",
  "-netdev", `user,id=net0,hostfwd=tcp:127.0.0.1:${port}-:22`,
  "-device", "virtio-net-pci,netdev=net0,romfile=",
  "-device", "virtio-rng-pci",
], { stdio: ["ignore", "ignore", "pipe"] });
let qemuStderr = "";
qemu.stderr!.on("data", (d: Buffer) => { qemuStderr += d.toString(); });
const bootStarted = Date.now();

function consoleTail(): string {
  try { return fs.readFileSync(files.console, "utf8").split("\n").slice(-30).join("\n"); } catch { return "(no console log)"; }
}

function ssh(user: string, cmd: string, timeoutMs = SSH_COMMAND_TIMEOUT_MS) {
  return runProgram("ssh", [
    "-o", "StrictHostKeyChecking=no", "-o", "UserKnownHostsFile=/dev/null", "-o", "BatchMode=yes",
    "-o", "ConnectTimeout=30", "-o", "LogLevel=ERROR", "-p", String(port), "-i", key, `${user}@127.0.0.1`, cmd,
  ], timeoutMs);
}

// Until sshd lets the seeded user in; a QEMU that exits ends the wait at once.
for (let last = "";;) {
  if (qemu.exitCode !== null || qemu.signalCode !== null) {
    throw new Error(`QEMU exited (${qemu.exitCode ?? qemu.signalCode}): ${qemuStderr}\nconsole:\n${consoleTail()}`);
  }
  if (Date.now() - bootStarted > DEBIAN_SSH_DEADLINE_MS) {
    throw new Error(`no ssh as ${SSH_USER} within ${DEBIAN_SSH_DEADLINE_MS} ms (last: ${last})\nconsole:\n${consoleTail()}`);
  }
  const r = await ssh(SSH_USER, "true");
  if (r.code === 0) break;
  last = r.stderr.trim();
  await new Promise((resolve) => setTimeout(resolve, SSH_RETRY_MS));
}
t.comment(`boot to ssh as ${SSH_USER}: ${Math.round((Date.now() - bootStarted) / 1000)} s under TCG`);

t.test(`--ssh-user ${SSH_USER}: created by the seed, with the key and silent passwordless sudo`, async (t) => {
  const id = await ssh(SSH_USER, "id -un");
  t.equal(id.code, 0, id.stderr);
  t.equal(id.stdout.trim(), SSH_USER);
  const sudo = await ssh(SSH_USER, "sudo -n true");
  t.equal(sudo.code, 0, `sudo -n true exits 0 (${sudo.stderr.trim()})`);
  t.equal(sudo.stdout + sudo.stderr, "", "sudo prints nothing (no 'unable to resolve host')");
  const whoami = await ssh(SSH_USER, "sudo -n id -u");
  t.equal(whoami.stdout.trim(), "0", "sudo runs as root");
});

t.test("hostname is the VM's name and resolves (manage_etc_hosts)", async (t) => {
  const h = await ssh(SSH_USER, "hostname");
  t.equal(h.stdout.trim(), NAME);
  const g = await ssh(SSH_USER, `getent hosts ${NAME}`);
  t.equal(g.code, 0, "getent finds the hostname");
  t.match(g.stdout, /^127\.0\.1\.1\s/, "from cloud-init's /etc/hosts");
});

t.test("cloud-init finishes without an error", async (t) => {
  const r = await ssh(SSH_USER, "cloud-init status --wait --long", CLOUD_INIT_DEADLINE_MS);
  t.match(r.stdout, /^status: done$/m, `cloud-init status (${r.stdout.trim()} ${r.stderr.trim()})`);
  t.comment(`boot to cloud-init done: ${Math.round((Date.now() - bootStarted) / 1000)} s under TCG`);
});

t.test("the image's default user keeps working", async (t) => {
  const id = await ssh(IMAGE_DEFAULT_USER, "id -un && sudo -n true");
  t.equal(id.code, 0, id.stderr);
  t.equal(id.stdout.trim(), IMAGE_DEFAULT_USER);
  t.equal(id.stderr, "");
});

t.test("root gets no login when ssh_user is not root", async (t) => {
  // cloud-init's disable_root: the key is behind a command that refuses (exit 142).
  const r = await ssh("root", "echo logged-in");
  t.not(r.code, 0);
  t.notMatch(r.stdout, /logged-in/);
});

t.test("the root partition grew to the VM's disk (growpart)", async (t) => {
  const r = await ssh(SSH_USER, "lsblk -bndo SIZE /dev/vda1");
  t.equal(r.code, 0, r.stderr);
  t.ok(Number(r.stdout.trim()) >= GROWN_PARTITION_MIN_BYTES, `vda1 is ${r.stdout.trim()} bytes`);
});

/**
 * The guest's own cloud-init reads every seed variant the provisioner writes:
 * its schema validates each, and its user normaliser (the code that decides
 * which accounts to create), given the image's config with the seed merged
 * over it as cloud-init merges them, gives the expected accounts. That covers
 * ssh_user naming the image's default user, which must merge into that one
 * account, without booting a second VM.
 */
t.test("the guest's cloud-init reads each seed variant as intended", async (t) => {
  const program = [
    "import base64, glob, json, sys, yaml",
    "from cloudinit import helpers, util",
    "from cloudinit.config.schema import get_schema, validate_cloudconfig_schema",
    "from cloudinit.distros import fetch, ug_util",
    "base = util.read_conf('/etc/cloud/cloud.cfg')",
    "for f in sorted(glob.glob('/etc/cloud/cloud.cfg.d/*.cfg')): base = util.mergemanydict([util.read_conf(f), base])",
    "sysinfo = base['system_info']",
    "distro = fetch(sysinfo['distro'])(sysinfo['distro'], sysinfo, helpers.Paths({}))",
    "out = {}",
    "for name, text in json.loads(base64.b64decode(sys.argv[1])).items():",
    "    ud = yaml.safe_load(text)",
    "    try:",
    "        validate_cloudconfig_schema(ud, get_schema(), strict=True)",
    "        err = None",
    "    except Exception as e:",
    "        err = str(e)",
    "    cfg = util.mergemanydict([ud, base])",
    "    users, _ = ug_util.normalize_users_groups(cfg, distro)",
    "    out[name] = {'schema_error': err, 'users': users, 'disable_root': cfg.get('disable_root')}",
    "print(json.dumps(out))",
  ].join("\n");
  const b64 = (s: string): string => Buffer.from(s).toString("base64");
  const put = await ssh(SSH_USER, `echo ${b64(program)} | base64 -d > /tmp/seedcheck.py`);
  t.equal(put.code, 0, put.stderr);
  const seeds: Record<string, string> = {};
  for (const u of [SSH_USER, IMAGE_DEFAULT_USER, "root"]) {
    seeds[u] = seedFiles({ name: NAME, uuid: randomUUID(), sshKeys: [pub], sshUser: u }).userData;
  }
  const r = await ssh(SSH_USER, `python3 /tmp/seedcheck.py ${b64(JSON.stringify(seeds))}`);
  t.equal(r.code, 0, r.stderr);
  const got = JSON.parse(r.stdout) as Record<string, { schema_error: string | null; users: Record<string, any>; disable_root: unknown }>;
  for (const u of Object.keys(seeds)) t.equal(got[u]!.schema_error, null, `the ${u} seed passes cloud-init's schema`);

  const named = got[SSH_USER]!;
  t.same(Object.keys(named.users).sort(), [IMAGE_DEFAULT_USER, SSH_USER].sort(), `${SSH_USER}: the default user and the named one`);
  t.equal(named.users[SSH_USER].sudo, SEED_SUDO_RULE);
  t.same(named.users[SSH_USER].ssh_authorized_keys, [pub]);
  t.notOk(named.users[SSH_USER].default, "the named user is not the default one");
  t.ok(named.users[IMAGE_DEFAULT_USER].default);
  t.equal(named.disable_root, true, "root stays closed");

  const dflt = got[IMAGE_DEFAULT_USER]!;
  t.same(Object.keys(dflt.users), [IMAGE_DEFAULT_USER], `${IMAGE_DEFAULT_USER}: one account, the entry merged into the default user`);
  t.ok(dflt.users[IMAGE_DEFAULT_USER].default);
  t.same(dflt.users[IMAGE_DEFAULT_USER].ssh_authorized_keys, [pub]);
  t.match(JSON.stringify(dflt.users[IMAGE_DEFAULT_USER].sudo), /NOPASSWD:ALL/);

  const root = got.root!;
  t.same(Object.keys(root.users), [IMAGE_DEFAULT_USER], "root: the image's own users, nothing added");
  t.equal(root.disable_root, false, "root takes the keys");
});
