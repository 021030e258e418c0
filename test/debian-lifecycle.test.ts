/**
 * The real Debian 12 image (scripts/build-debian-image.sh, cached by
 * test/helpers/debianimage.ts) as a person runs it: through the `capsul` CLI,
 * a provisioner on a real cog, and a real hub, under TCG.
 *
 * - `capsul image import … --ssh-user alice`, `capsul vm create … --wait`:
 *   the wait covers cloud-init (boot.ts reads its end from the console), with
 *   progress lines while it waits;
 * - accel auto with no kernel in the catalogue and none in /boot (a
 *   container): the KVM probe boots the VM's own disk (accel.ts) and decides;
 * - ssh as alice on the TCP port the hub assigned, `sudo -n true` silent, the
 *   hostname set; HTTP (by Host) and HTTPS (by SNI) reach servers in the VM;
 * - `capsul vm reboot` is clean: ctrl-alt-delete, systemd's reboot, and the
 *   next boot's console has no "recovery required" (a hard reset's did);
 * - `capsul vm stop` is clean: the power button, systemd-logind's power-off.
 */
import fs from "node:fs";
import path from "node:path";
import t from "tap";
import { createLogger } from "../lib/log.js";
import { kvmDevice } from "../provisioner/accel.js";
import { LINUX_BANNER } from "../provisioner/boot.js";
import { startProvisioner } from "../provisioner/index.js";
import { cogConfig, enrolledCog, HUB_DOMAIN, hubConfig, startTestHub, tmpDir } from "./helpers/cluster.js";
import { DEBIAN_IMAGE_BUILD_TIMEOUT_MS, debianImage } from "./helpers/debianimage.js";
import { lines, runCli } from "./helpers/procs.js";
import { api, authorize, cleanupDataDir, intoImportDir, run, sshKeypair, tempDataDir, testConfig, waitFor } from "./helpers/vm.js";

/** Boot to cloud-init done took 208 s here under load ~14 with QEMU run directly; the hub and pasta add little. */
const CREATE_WAIT_TIMEOUT_MS = 20 * 60_000;
/** A clean reboot reset after 13 s, the second boot answered ssh ~90 s later (TCG, load ~14). */
const REBOOT_WAIT_TIMEOUT_MS = 15 * 60_000;
/** The power-off took 23 s under TCG. */
const STOP_TIMEOUT_MS = 5 * 60_000;
const SSH_COMMAND_TIMEOUT_MS = 120_000;
/** The console of two boots up to ssh is ~100 KiB; the checks need both. */
const CONSOLE_TAIL_BYTES = 512 * 1024;
const IMAGE_IMPORT_TIMEOUT_MS = 10 * 60_000;

const NAME = "deb1";
const SSH_USER = "alice";

t.setTimeout(DEBIAN_IMAGE_BUILD_TIMEOUT_MS + CREATE_WAIT_TIMEOUT_MS + REBOOT_WAIT_TIMEOUT_MS + STOP_TIMEOUT_MS + 15 * 60_000);

const fileStarted = Date.now();
const img = await debianImage();
if (img.builtNowMs !== null) t.comment(`built the Debian image (${img.key}) in ${Math.round(img.builtNowMs / 1000)} s`);

const dir = tmpDir();
const hubCfg = hubConfig(dir, { listen: { tcp_ports: ["22200-22219"] } });
const hub = await startTestHub(hubCfg);
t.teardown(() => hub.close());
const cog = await enrolledCog(hubCfg, hub, cogConfig(dir, "home1", hub.ports.tunnel, []), "home1");
t.teardown(() => cog.close());

const dataDir = tempDataDir();
const logs: string[] = [];
const prov = await startProvisioner({
  // accel auto: the catalogue will hold no kernel image, and containers have no /boot kernel.
  config: testConfig(dataDir, { accel: "auto", kvmProbeTimeoutMs: 30_000, consoleTailBytes: CONSOLE_TAIL_BYTES, stopTimeoutMs: STOP_TIMEOUT_MS }),
  cogName: cog.identity.name, hubDomain: cog.identity.hubDomain, hubHost: "127.0.0.1", sink: cog.client,
  logger: createLogger({ level: "info", write: (l) => { logs.push(l); if (process.env.CAPSUL_TEST_LOG) process.stderr.write(`${l}\n`); } }),
});
t.teardown(async () => { await prov.close(); cleanupDataDir(dataDir); fs.rmSync(dir, { recursive: true, force: true }); });
authorize(prov.url, dataDir);
const g = ["--api", prov.url, "--data-dir", dataDir];
const { key } = sshKeypair(dataDir);
const host = `${NAME}.home1.${HUB_DOMAIN}`;

let sshPort = 0;
function ssh(cmd: string): Promise<{ code: number; stdout: string; stderr: string }> {
  return run("ssh", [
    "-o", "StrictHostKeyChecking=no", "-o", "UserKnownHostsFile=/dev/null", "-o", "BatchMode=yes",
    "-o", "ConnectTimeout=30", "-o", "LogLevel=ERROR", "-p", String(sshPort), "-i", key, `${SSH_USER}@127.0.0.1`, cmd,
  ], SSH_COMMAND_TIMEOUT_MS);
}
async function consoleText(): Promise<string> {
  const r = await api(prov.url, "GET", `/v1/vms/${NAME}/console`);
  return r.text;
}

t.test("import the image, create the VM and wait for cloud-init, through the CLI", async (t) => {
  const imported = await runCli(["image", "import", intoImportDir(dataDir, img.path, "debian-12.qcow2"), "--name", "debian", "--ssh-user", SSH_USER, "--json", ...g],
    { timeoutMs: IMAGE_IMPORT_TIMEOUT_MS });
  t.equal(imported.code, 0, imported.stderr);
  t.equal(JSON.parse(imported.stdout).ssh_user, SSH_USER);

  const r = await runCli(["vm", "create", NAME, "--image", "debian", "--size", "f1-s", "--ssh-key", `${key}.pub`, "--wait", "--json", ...g],
    { timeoutMs: CREATE_WAIT_TIMEOUT_MS });
  t.equal(r.code, 0, `${r.stderr}\nconsole:\n${(await consoleText()).slice(-3000)}`);
  t.equal(lines(r.stdout).length, 1, "one line of JSON on stdout");
  const vm = JSON.parse(r.stdout);
  t.equal(vm.state, "running");
  t.equal(vm.boot.cloud_init, "done", "--wait waited for cloud-init's final message");
  t.equal(vm.message, null);
  const at = (k: string): number => Date.parse(vm.boot[k]) - Date.parse(vm.boot.started_at);
  t.comment(`time to ssh: ${Math.round(at("ssh_at") / 1000)} s, to cloud-init done: ${Math.round(at("cloud_init_done_at") / 1000)} s (${vm.accel})`);
  t.ok(at("cloud_init_done_at") >= at("ssh_at"), "cloud-init finished after sshd came up");

  // Progress on stderr (not a terminal here): JSON lines as the state changed.
  const progress = lines(r.stderr).map((l) => JSON.parse(l) as { state: string; cloud_init: string | null; elapsed_ms: number });
  t.ok(progress.some((p) => p.state === "starting"), "seen starting");
  t.ok(progress.some((p) => p.state === "running" && p.cloud_init === "running"), "seen ssh up while cloud-init still ran");
  t.same(progress[progress.length - 1]!.cloud_init, "done");

  // The KVM probe ran with the VM's own disk: no kernel in the catalogue, none in /boot here.
  const dev = kvmDevice();
  if (dev.usable) {
    t.match(vm.accel_reason, /^accel auto: KVM probe with the disk of image debian: /, "the probe ran, with the VM's disk");
    t.equal(vm.accel === "kvm", /: Linux banner after /.test(vm.accel_reason), "its outcome decided");
    t.ok(logs.some((l) => /accel auto: probing KVM/.test(l) && /the disk of image debian/.test(l)), "the probe was logged");
  } else {
    t.match(vm.accel_reason, /cannot be opened/);
  }
  t.comment(`accel: ${vm.accel} (${vm.accel_reason})`);
});

t.test(`ssh as ${SSH_USER} through the hub's TCP port; sudo, hostname, cloud-init`, async (t) => {
  sshPort = await waitFor("the hub to assign the ssh port", async () => {
    const st = cog.client.status(`vm-${NAME}-ssh`);
    return st.state === "accepted" ? st.port : undefined;
  }, 60_000);
  t.ok(sshPort >= 22200 && sshPort <= 22219, `hub port ${sshPort}`);
  const shown = (await api(prov.url, "GET", `/v1/vms/${NAME}`)).body.vm;
  t.equal(shown.ssh_command, `ssh -p ${sshPort} ${SSH_USER}@127.0.0.1`, "vm show prints the command that works");

  const id = await ssh("id -un; hostname");
  t.equal(id.code, 0, id.stderr);
  t.same(id.stdout.trim().split("\n"), [SSH_USER, NAME], "logged in as alice on deb1");
  const sudo = await ssh("sudo -n true");
  t.equal(sudo.code, 0, sudo.stderr);
  t.equal(sudo.stdout + sudo.stderr, "", "sudo is silent (no 'unable to resolve host')");
  const ci = await ssh("cloud-init status");
  t.match(ci.stdout, /^status: done$/m, "cloud-init had finished when --wait returned");
});

t.test("HTTP by Host and HTTPS by SNI through the hub reach the VM", async (t) => {
  t.equal(hub.router.lookupHost("tls", host)?.cog, "home1");
  t.equal(hub.router.lookupHost("http", host)?.cog, "home1");
  const serve = await ssh([
    "sudo -n sh -c '",
    "mkdir -p /srv/www && echo deb1-site > /srv/www/index.html && cd /srv/www &&",
    "openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes -days 1 -subj /CN=deb1 -keyout /root/tls.key -out /root/tls.crt 2>/dev/null &&",
    "setsid -f python3 -m http.server 80 >/dev/null 2>&1 </dev/null &&",
    "setsid -f openssl s_server -quiet -accept 443 -cert /root/tls.crt -key /root/tls.key -WWW >/dev/null 2>&1 </dev/null'",
  ].join(" "));
  t.equal(serve.code, 0, serve.stderr);
  const get = (scheme: string, port: number) => waitFor(`${scheme} through the hub`, async () => {
    const r = await run("curl", ["-sS", "-k", "--max-time", "30", "--resolve", `${host}:${port}:127.0.0.1`, `${scheme}://${host}:${port}/index.html`]);
    return r.stdout.trim() === "deb1-site" ? r.stdout.trim() : undefined;
  }, 120_000);
  t.equal(await get("http", hub.ports.http!), "deb1-site", "HTTP by Host");
  t.equal(await get("https", hub.ports.tls!), "deb1-site", "HTTPS by SNI, TLS held by the VM");
});

t.test("vm reboot is clean: the next boot needs no journal recovery", async (t) => {
  // Written, not synced: a clean reboot flushes it, a hard reset may lose it.
  const w = await ssh("echo kept > ~/written-before-reboot");
  t.equal(w.code, 0, w.stderr);
  const r = await runCli(["vm", "reboot", NAME, "--wait", "ssh", "--json", ...g], { timeoutMs: REBOOT_WAIT_TIMEOUT_MS });
  t.equal(r.code, 0, r.stderr);
  const out = JSON.parse(r.stdout);
  t.equal(out.reboot.graceful, true, "the guest rebooted on ctrl-alt-delete");
  t.comment(`reboot: reset after ${Math.round(out.reboot.took_ms / 1000)} s`);
  t.equal(out.vm.state, "running");

  const text = await consoleText();
  const at = text.lastIndexOf(LINUX_BANNER);
  t.ok(at > 0, "the console holds both boots");
  const before = text.slice(0, at);
  const next = text.slice(at);
  t.match(before, /systemd-shutdown\[1\]: Syncing filesystems and block devices/, "systemd shut down cleanly");
  t.match(before, /reboot: Restarting system/);
  t.match(next, /EXT4-fs \(vda1\): mounted filesystem/, "the next boot mounted its root");
  t.notMatch(next, /recovery required/, "and needed no journal recovery");
  const kept = await ssh("cat ~/written-before-reboot");
  t.equal(kept.stdout.trim(), "kept", "what was written before the reboot is there");
});

t.test("vm stop is clean: the power button, systemd powers off", async (t) => {
  const r = await runCli(["vm", "stop", NAME, "--json", ...g], { timeoutMs: STOP_TIMEOUT_MS + 60_000 });
  t.equal(r.code, 0, r.stderr);
  const out = JSON.parse(r.stdout);
  t.equal(out.stop.graceful, true, "the guest powered off by itself");
  t.equal(out.vm.state, "stopped");
  t.comment(`stop: powered off after ${Math.round(out.stop.took_ms / 1000)} s`);
  t.match(await consoleText(), /reboot: Power down\s*$/, "the console ends with the kernel's power-off");
  await waitFor("the hub to withdraw the routes", async () => hub.router.lookupHost("tls", host) === undefined, 30_000);

  const d = await runCli(["vm", "delete", NAME, "--json", ...g]);
  t.equal(d.code, 0, d.stderr);
  t.same(JSON.parse(d.stdout), { deleted: NAME });
  t.notOk(fs.existsSync(path.join(dataDir, "vms", NAME)));
  t.comment(`whole file: ${Math.round((Date.now() - fileStarted) / 1000)} s`);
});
