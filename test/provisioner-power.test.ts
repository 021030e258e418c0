/**
 * Reboot and stop, graceful and forced, on the busybox test image under TCG
 * (provisioner/power.ts), plus the boot watch: a boot past its timeout is
 * "slow, still booting", not a failure, and a reboot the guest starts itself
 * is a new boot. The real Debian image's clean reboot and power-off are in
 * test/debian-lifecycle.test.ts.
 *
 * The busybox image's init is a shell script: it traps neither ctrl-alt-delete
 * nor SIGINT. With the kernel's default (/proc/sys/kernel/ctrl-alt-del = 1)
 * the kernel restarts at once on ctrl-alt-delete, which is the guest
 * rebooting by itself; with 0 the kernel hands it to init as SIGINT, which the
 * init ignores: a guest that does not react, so the provisioner resets it
 * after reboot_timeout. Its acpid powers off on the ACPI power button.
 */
import { execFile } from "node:child_process";
import t from "tap";
import { createLogger } from "../lib/log.js";
import { startProvisioner } from "../provisioner/index.js";
import { MemoryRouteSink } from "../tunnel-client/routesink.js";
import { CLI, childEnv, lines, runCli } from "./helpers/procs.js";
import {
  api, authorize, cleanupDataDir, importTestImage, sshKeypair, sshUntil, tempDataDir, testConfig, waitFor, waitForState,
} from "./helpers/vm.js";

t.setTimeout(20 * 60_000);

/** Short, so that the fall-back reset comes quickly; busybox restarts on ctrl-alt-delete within a second. */
const REBOOT_TIMEOUT_MS = 5000;
/** Shorter than any TCG boot of the test image (~6 s quiet, more under load): every boot is "slow" for a while. */
const BOOT_TIMEOUT_TCG_MS = 1000;

t.test("reboot and stop: graceful, fall-back and forced; slow boots and guest reboots", async (t) => {
  const dataDir = tempDataDir();
  const logs: string[] = [];
  const prov = await startProvisioner({
    config: testConfig(dataDir, { rebootTimeoutMs: REBOOT_TIMEOUT_MS, bootTimeoutTcgMs: BOOT_TIMEOUT_TCG_MS }),
    cogName: "home1", hubDomain: "hub.example", hubHost: "hub.example",
    sink: new MemoryRouteSink(), logger: createLogger({ level: "info", write: (l) => logs.push(l) }),
  });
  t.teardown(async () => { await prov.close(); cleanupDataDir(dataDir); });
  const base = prov.url;
  authorize(base, dataDir);
  const { key, pub } = sshKeypair(dataDir);
  await importTestImage(base, dataDir);
  const g = ["--api", base, "--data-dir", dataDir];

  const c = await api(base, "POST", "/v1/vms", { name: "web1", image: "tiny", size: "t1", ssh_keys: [pub] });
  t.equal(c.status, 202, c.text);

  // Past boot_timeout_tcg the VM is still `starting`, with a message, not an error.
  const slow = await waitFor("the slow-boot message", async () => {
    const vm = (await api(base, "GET", "/v1/vms/web1")).body.vm;
    if (vm.state === "running") throw new Error("running before it was ever slow: the test image booted in under 1 s?");
    return /^slow: no ssh after 1 s under tcg; still booting/.test(vm.message ?? "") ? vm : undefined;
  });
  t.equal(slow.state, "starting", "a slow boot stays starting");
  t.ok(slow.boot.started_at && !slow.boot.ssh_at, "the boot is under way, no ssh yet");
  let vm = await waitForState(base, "web1", "running");
  t.equal(vm.message, null, "the slow message goes once ssh answers");
  t.ok(Date.parse(vm.boot.ssh_at) >= Date.parse(vm.boot.started_at));
  t.equal(vm.boot.cloud_init, null, "the test image runs no cloud-init");
  t.ok(logs.some((l) => /vm slow to boot; still watching/.test(l)), "logged as slow");
  const port = Number(vm.local.ssh.split(":")[1]);

  const bootOf = async (): Promise<string> => (await api(base, "GET", "/v1/vms/web1")).body.vm.boot.started_at;
  /** /tmp is the initramfs: a file there is gone after any reboot. */
  const mark = async (): Promise<void> => { await sshUntil(port, key, "touch /tmp/booted-before && echo marked"); };
  const marked = async (): Promise<boolean> => (await sshUntil(port, key, "test -e /tmp/booted-before && echo yes || echo no")).trim() === "yes";

  await t.test("graceful reboot: ctrl-alt-delete, the guest resets itself", async (t) => {
    await mark();
    const before = await bootOf();
    const r = await api(base, "POST", "/v1/vms/web1/reboot");
    t.equal(r.status, 202, r.text);
    t.equal(r.body.reboot.graceful, true, "the guest reset on ctrl-alt-delete");
    t.ok(r.body.reboot.took_ms < REBOOT_TIMEOUT_MS, `within reboot_timeout (${r.body.reboot.took_ms} ms)`);
    t.equal(r.body.vm.state, "starting", "a new boot is watched");
    t.not(r.body.vm.boot.started_at, before, "a new boot began");
    await waitForState(base, "web1", "running");
    t.equal(await marked(), false, "the guest really rebooted");
  });

  await t.test("a guest that ignores ctrl-alt-delete is reset after reboot_timeout", async (t) => {
    // The kernel now passes ctrl-alt-delete to init (SIGINT), which ignores it.
    await sshUntil(port, key, "echo 0 > /proc/sys/kernel/ctrl-alt-del && cat /proc/sys/kernel/ctrl-alt-del");
    await mark();
    const r = await api(base, "POST", "/v1/vms/web1/reboot");
    t.equal(r.status, 202, r.text);
    t.equal(r.body.reboot.graceful, false, "not by the guest");
    t.ok(r.body.reboot.took_ms >= REBOOT_TIMEOUT_MS, `after reboot_timeout (${r.body.reboot.took_ms} ms)`);
    t.match(r.body.vm.message, /^the guest did not reboot within 5 s of ctrl-alt-delete; it was reset$/);
    t.ok(logs.some((l) => /guest did not reboot on ctrl-alt-delete; resetting it/.test(l)));
    await waitForState(base, "web1", "running");
    t.equal(await marked(), false, "reset for real");
  });

  await t.test("reboot --force resets at once", async (t) => {
    await mark();
    const r = await runCli(["vm", "reboot", "web1", "--force", "--json", ...g]);
    t.equal(r.code, 0, r.stderr);
    const out = JSON.parse(r.stdout);
    t.equal(out.reboot.graceful, false);
    t.ok(out.reboot.took_ms < REBOOT_TIMEOUT_MS, `no wait for the guest (${out.reboot.took_ms} ms)`);
    t.equal(out.vm.state, "starting");
    await waitForState(base, "web1", "running");
    t.equal(await marked(), false);
  });

  await t.test("a reboot from inside the guest is a new boot, watched from its start", async (t) => {
    await mark();
    const before = await bootOf();
    // Backgrounded so that ssh returns before the reset cuts it.
    await sshUntil(port, key, "setsid sh -c 'sleep 1; reboot -f' </dev/null >/dev/null 2>&1 & echo started");
    const restarted = await waitFor("the new boot", async () => {
      const v = (await api(base, "GET", "/v1/vms/web1")).body.vm;
      return v.boot.started_at !== before ? v : undefined;
    });
    t.not(restarted.state, "error");
    vm = await waitForState(base, "web1", "running");
    t.equal(vm.message, null, "no 'did not answer ssh' after a guest reboot");
    t.equal(await marked(), false);
  });

  await t.test("bad stop/reboot bodies are refused before anything happens", async (t) => {
    for (const [body, code, status] of [
      [{ force: "yes" }, "bad_request", 400], [{ forse: true }, "bad_request", 400], [[true], "bad_request", 400], ["{", "bad_json", 400],
    ] as const) {
      for (const verb of ["stop", "reboot"]) {
        const r = await api(base, "POST", `/v1/vms/web1/${verb}`, body);
        t.equal(r.status, status, `${verb} ${JSON.stringify(body)}: ${r.text}`);
        t.equal(r.body?.error?.code, code);
      }
    }
    const plain = await api(base, "POST", "/v1/vms/web1/stop", "force", { "content-type": "text/plain" });
    t.equal(plain.status, 415);
    t.equal((await api(base, "GET", "/v1/vms/web1")).body.vm.state, "running", "still running");
  });

  await t.test("stop --force quits QEMU at once; start --wait shows progress; stop is graceful", async (t) => {
    let r = await runCli(["vm", "stop", "web1", "--force", ...g]);
    t.equal(r.code, 0, r.stderr);
    t.equal(r.stdout.trim(), "web1: stopped (QEMU quit (--force))");

    // Not a terminal: progress as JSON lines on stderr, the result as one JSON line on stdout.
    r = await runCli(["vm", "start", "web1", "--wait", "--json", ...g], { timeoutMs: 5 * 60_000 });
    t.equal(r.code, 0, r.stderr);
    t.equal(lines(r.stdout).length, 1, "one line of JSON");
    t.equal(JSON.parse(r.stdout).state, "running");
    const progress = lines(r.stderr).map((l) => JSON.parse(l) as { vm: string; state: string; elapsed_ms: number });
    t.ok(progress.length >= 2, `progress lines: ${r.stderr}`);
    t.equal(progress[0]!.state, "starting");
    t.equal(progress[progress.length - 1]!.state, "running");
    t.ok(progress.every((p, i) => p.vm === "web1" && (i === 0 || p.elapsed_ms >= progress[i - 1]!.elapsed_ms)), "elapsed time grows");

    const s = await api(base, "POST", "/v1/vms/web1/stop");
    t.equal(s.status, 200, s.text);
    t.equal(s.body.stop.graceful, true, "acpid powered the guest off on the power button");
    t.equal(s.body.vm.state, "stopped");
    t.equal(s.body.vm.message, null);

    // On a terminal (script(1) gives the CLI a pty): one status line rewritten in place.
    const tty = await new Promise<string>((resolve) => {
      const cmd = [process.execPath, CLI, "vm", "start", "web1", "--wait", "ssh", ...g].map((a) => `'${a}'`).join(" ");
      execFile("script", ["-qefc", cmd, "/dev/null"], { env: childEnv(), timeout: 5 * 60_000 }, (_e, stdout) => resolve(String(stdout)));
    });
    t.match(tty, /\r\x1b\[Kweb1: starting, 0:\d\d elapsed/, "state and elapsed time on the terminal");
    t.match(tty, /web1: running after \d+:\d\d of waiting/);

    r = await runCli(["vm", "stop", "web1", ...g]);
    t.equal(r.code, 0, r.stderr);
    t.match(r.stdout, /^web1: stopped \(the guest powered off in \d+:\d\d\)\n$/);
  });

  const d = await api(base, "DELETE", "/v1/vms/web1");
  t.equal(d.status, 200, d.text);
});
