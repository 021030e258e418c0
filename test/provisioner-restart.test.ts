import fs from "node:fs";
import path from "node:path";
import t from "tap";
import { isPastaOf, readPastaPid } from "../provisioner/guestnet.js";
import { isQemuOf } from "../provisioner/qemu.js";
import { killHard, startChild, stopChild, type ChildProvisioner } from "./helpers/vmchild.js";
import {
  api, cleanupDataDir, importTestImage, run, sshKeypair, sshUntil, tempDataDir, testConfig, waitFor, waitForState,
} from "./helpers/vm.js";

t.setTimeout(20 * 60_000);

t.test("kill -9 the provisioner: VMs keep running and are re-adopted", async (t) => {
  const dataDir = tempDataDir();
  const routesFile = path.join(dataDir, "routes.json");
  const cfg = testConfig(dataDir);
  let child: ChildProvisioner | undefined;
  t.teardown(async () => { if (child) await stopChild(child); cleanupDataDir(dataDir); });
  const routes = (): Record<string, unknown[]> => JSON.parse(fs.readFileSync(routesFile, "utf8")) as Record<string, unknown[]>;

  child = await startChild(cfg, routesFile);
  const { key, pub } = sshKeypair(dataDir);
  await importTestImage(child.url, dataDir);
  t.equal((await api(child.url, "POST", "/v1/vms", { name: "keep", image: "tiny", size: "t1", ssh_keys: [pub] })).status, 202);
  const vm = await waitForState(child.url, "keep", "running");
  const sshPort = Number(vm.local.ssh.split(":")[1]);
  t.equal((await sshUntil(sshPort, key, "hostname")).trim(), "keep");
  const pid = vm.pid as number;
  t.ok(isQemuOf(pid, vm.uuid), "QEMU runs with the VM's uuid");

  // 1. kill -9 the provisioner: QEMU is daemonized in its own session and survives.
  await killHard(child);
  t.ok(isQemuOf(pid, vm.uuid), "QEMU survives kill -9 of the provisioner");
  fs.rmSync(routesFile, { force: true });

  child = await startChild(cfg, routesFile);
  // Re-adoption probes sshd once; on a loaded machine that probe may miss and
  // the VM shows `starting` for a moment, never `creating` or `error`.
  const first = (await api(child.url, "GET", "/v1/vms/keep")).body.vm;
  t.match(first.state, /^(running|starting)$/, "state right after re-adoption");
  const after = await waitForState(child.url, "keep", "running");
  t.equal(after.pid, pid, "the same QEMU process was re-adopted");
  t.equal(after.uuid, vm.uuid);
  t.equal((await sshUntil(sshPort, key, "hostname")).trim(), "keep", "still reachable over ssh");
  const d = (await api(child.url, "GET", "/v1/drift")).body;
  t.same(d.drift, [], "no drift");
  t.same(d.resolved, [], "nothing had to be fixed");
  t.equal((routes()["vm:keep"] ?? []).length, 3, "routes re-announced");

  // 1b. kill -9 the provisioner and the VM's pasta (its network): the next start reconnects it.
  await killHard(child);
  const pasta = readPastaPid(path.join(dataDir, "vms", "keep", "pasta.pid"));
  t.ok(pasta && pasta.qemuPid === pid, "the VM's pasta is recorded with its QEMU");
  process.kill(pasta!.pid, "SIGKILL");
  await waitFor("pasta gone", async () => !isPastaOf(pasta!.pid, pid), 30_000);
  child = await startChild(cfg, routesFile);
  t.match((await api(child.url, "GET", "/v1/drift")).body.resolved, [{ vm: "keep", kind: "network-reconnected" }], "reported");
  t.equal((await waitForState(child.url, "keep", "running")).pid, pid, "the same QEMU");
  t.equal((await sshUntil(sshPort, key, "hostname")).trim(), "keep", "reachable again through a new pasta, on the same port");
  t.same((await api(child.url, "GET", "/v1/drift")).body.drift, [], "no drift");

  // 2. kill -9 the provisioner and the VM (a host crash): the VM is restarted.
  await killHard(child);
  process.kill(pid, "SIGKILL");
  await waitFor("QEMU gone", async () => !isQemuOf(pid, vm.uuid), 30_000);
  child = await startChild(cfg, routesFile);
  const d2 = (await api(child.url, "GET", "/v1/drift")).body;
  t.match(d2.resolved, [{ vm: "keep", kind: "not-running" }], "drift reported: should run but was not running");
  const restarted = await waitForState(child.url, "keep", "running");
  t.not(restarted.pid, pid, "a new QEMU");
  t.equal((await sshUntil(sshPort, key, "hostname")).trim(), "keep", "reachable again, on the same port");
  t.same((await api(child.url, "GET", "/v1/drift")).body.drift, [], "no drift left");

  const list = (await api(child.url, "GET", "/v1/vms")).body.vms;
  t.equal(list.length, 1, "no VM record lost");

  // 3. A QEMU under our data dir that the database does not know is reported, not killed.
  const ghostDir = path.join(dataDir, "vms", "ghost");
  fs.mkdirSync(ghostDir);
  const ghostUuid = "00000000-0000-4000-8000-000000000001";
  const g = await run("qemu-system-x86_64", ["-machine", "none", "-display", "none", "-nodefaults", "-uuid", ghostUuid,
    "-pidfile", path.join(ghostDir, "qemu.pid"), "-daemonize"]);
  t.equal(g.code, 0, g.stderr);
  const ghostPid = Number(fs.readFileSync(path.join(ghostDir, "qemu.pid"), "utf8"));
  t.teardown(() => { try { process.kill(ghostPid, "SIGKILL"); } catch { /* gone */ } });
  const d3 = (await api(child.url, "GET", "/v1/drift")).body.drift;
  t.match(d3, [{ vm: null, kind: "unknown-process", pid: ghostPid }], "unknown QEMU reported");
  t.ok(isQemuOf(ghostPid, ghostUuid), "and left alone");
  process.kill(ghostPid, "SIGKILL");
  await waitFor("ghost gone", async () => (await api(child!.url, "GET", "/v1/drift")).body.drift.length === 0, 30_000);

  // Clean shutdown leaves VMs running; delete stops them.
  t.equal((await api(child.url, "DELETE", "/v1/vms/keep")).status, 200);
  t.notOk(isQemuOf(restarted.pid, vm.uuid), "deleted VM's QEMU is gone");
});
