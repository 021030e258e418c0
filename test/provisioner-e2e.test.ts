import fs from "node:fs";
import path from "node:path";
import tls from "node:tls";
import t from "tap";
import { createLogger, silentLogger } from "../lib/log.js";
import { startProvisioner } from "../provisioner/index.js";
import { MemoryRouteSink, type RouteStatus } from "../tunnel-client/routesink.js";
import {
  api, authorize, cleanupDataDir, importTestImage, run, sshKeypair, sshUntil, tempDataDir, testConfig, waitFor, waitForState,
} from "./helpers/vm.js";

// VM tests boot real QEMU under TCG, one after another in this file.
t.setTimeout(20 * 60_000);

/** Like the hub: accepts everything and assigns TCP ports to tcp routes. */
class HubLikeSink extends MemoryRouteSink {
  private nextPort = 20000;
  private readonly assigned = new Map<string, number>();
  override status(routeName: string): RouteStatus {
    const s = super.status(routeName);
    if (s.state !== "accepted" || !routeName.endsWith("-ssh")) return s;
    if (!this.assigned.has(routeName)) this.assigned.set(routeName, this.nextPort++);
    return { state: "accepted", port: this.assigned.get(routeName)! };
  }
}

function tlsSubjectCN(port: number): Promise<string> {
  return new Promise((resolve, reject) => {
    const s = tls.connect({ host: "127.0.0.1", port, rejectUnauthorized: false, servername: "web1" }, () => {
      const cn = s.getPeerCertificate().subject?.CN;
      s.end();
      resolve(String(cn));
    });
    s.on("error", reject);
  });
}

t.test("a VM from create to delete", async (t) => {
  const dataDir = tempDataDir();
  const sink = new HubLikeSink();
  const prov = await startProvisioner({
    config: testConfig(dataDir, { accel: "auto" }), cogName: "home1", hubDomain: "hub.example", hubHost: "hub.example",
    sink, logger: process.env.CAPSUL_TEST_LOG ? createLogger({ level: "debug" }) : silentLogger,
  });
  t.teardown(async () => { await prov.close(); cleanupDataDir(dataDir); });
  const base = prov.url;
  authorize(base, dataDir);
  const { key, pub } = sshKeypair(dataDir);
  await importTestImage(base, dataDir);

  const created = Date.now();
  const c = await api(base, "POST", "/v1/vms", { name: "web1", image: "tiny", size: "t1", ssh_keys: [pub] });
  t.equal(c.status, 202, c.text);
  t.equal(c.body.vm.state, "creating");
  t.equal(c.body.vm.hostname, "web1.home1.hub.example");

  const vm = await waitForState(base, "web1", "running");
  const hostname = (await sshUntil(vm.local.ssh.split(":")[1], key, "hostname")).trim();
  t.comment(`create → ssh answered in ${((Date.now() - created) / 1000).toFixed(1)} s (accel ${vm.accel})`);
  t.equal(hostname, "web1", "ssh reaches the VM and the seed set its hostname");
  t.match(vm.accel, /^(kvm|tcg)$/);

  const ports = { ssh: Number(vm.local.ssh.split(":")[1]), http: Number(vm.local.http.split(":")[1]), https: Number(vm.local.https.split(":")[1]) };
  const http = await run("curl", ["-sS", "--max-time", "30", `http://127.0.0.1:${ports.http}/`]);
  t.equal(http.stdout.trim(), "web1", "http reaches busybox httpd in the VM");
  const https = await run("curl", ["-sS", "-k", "--max-time", "30", `https://127.0.0.1:${ports.https}/index.html`]);
  t.equal(https.stdout.trim(), "web1", "https reaches openssl s_server in the VM");
  t.equal(await tlsSubjectCN(ports.https), "web1", "the VM holds the TLS key: its cert is for its hostname");

  t.same(sink.owners.get("vm:web1"), [
    { name: "vm-web1-https", kind: "tls", hostname: "web1.home1.hub.example", target: { host: "127.0.0.1", port: ports.https }, proxyProtocol: "none" },
    { name: "vm-web1-http", kind: "http", hostname: "web1.home1.hub.example", target: { host: "127.0.0.1", port: ports.http }, proxyProtocol: "none" },
    { name: "vm-web1-ssh", kind: "tcp", target: { host: "127.0.0.1", port: ports.ssh }, proxyProtocol: "none" },
  ], "routes published");
  const shown = (await api(base, "GET", "/v1/vms/web1")).body.vm;
  t.equal(shown.ssh_command, `ssh -p ${shown.ssh_port} root@hub.example`);
  t.equal(shown.url, "https://web1.home1.hub.example/");

  const metrics = await api(base, "GET", "/metrics");
  t.match(metrics.text, /capsul_vm_state\{vm="web1",state="running"\} 1/);
  t.match(metrics.text, /capsul_vm_vcpu_seconds_total\{vm="web1"\} [0-9.]+/);
  t.match(metrics.text, /capsul_vm_rss_bytes\{vm="web1"\} [1-9]\d*/);
  t.match(metrics.text, /capsul_vm_disk_read_bytes_total\{vm="web1"\} \d+/);

  const cons = await api(base, "GET", "/v1/vms/web1/console");
  t.match(cons.text, /capsul-test-image: ready hostname=web1/);

  const io = await api(base, "POST", "/v1/vms/web1/io-limits", { iops: 100, bps: 1048576 });
  t.equal(io.status, 200, `io limits change at run time: ${io.text}`);
  t.same(io.body.vm.io_limits, { iops: 100, bps: 1048576 }, "the VM shows its new limits");

  t.same((await api(base, "GET", "/v1/drift")).body.drift, [], "no drift");

  // Reboot: a hard reset; the guest boots again.
  const rb = await api(base, "POST", "/v1/vms/web1/reboot");
  t.equal(rb.status, 202, rb.text);
  await waitForState(base, "web1", "running");
  t.equal((await sshUntil(ports.ssh, key, "cat /proc/uptime")).length > 0, true, "ssh after reboot");

  // Stop: graceful powerdown; routes withdrawn.
  const pid = (await api(base, "GET", "/v1/vms/web1")).body.vm.pid as number;
  const st = await api(base, "POST", "/v1/vms/web1/stop");
  t.equal(st.status, 200, st.text);
  t.equal(st.body.vm.state, "stopped");
  t.equal(st.body.vm.desired, "stopped");
  t.notOk(fs.existsSync(`/proc/${pid}/cmdline`) && fs.readFileSync(`/proc/${pid}/cmdline`, "utf8").includes("capsul-web1"), "QEMU gone");
  t.notOk(sink.owners.has("vm:web1"), "routes withdrawn on stop");
  t.same((await api(base, "GET", "/v1/drift")).body.drift, [], "a stopped VM that should be stopped is no drift");

  // Start again: same ports when still free, so the routes do not change.
  const sa = await api(base, "POST", "/v1/vms/web1/start");
  t.equal(sa.status, 202, sa.text);
  const again = await waitForState(base, "web1", "running");
  t.equal(again.local.ssh, `127.0.0.1:${ports.ssh}`, "ports kept across stop/start");
  // The limits set at run time were stored: the new QEMU starts with them.
  const argv = fs.readFileSync(`/proc/${again.pid as number}/cmdline`, "utf8").split("\0");
  const drive = argv.find((a) => a.includes("throttling.")) ?? "";
  t.match(drive, /throttling\.iops-total=100(,|$)/, `iops limit kept across stop/start: ${drive}`);
  t.match(drive, /throttling\.bps-total=1048576(,|$)/, "bps limit kept across stop/start");
  t.same(again.io_limits, { iops: 100, bps: 1048576 });
  t.equal((await sshUntil(ports.ssh, key, "hostname")).trim(), "web1");
  t.ok(sink.owners.has("vm:web1"), "routes back");

  // QEMU dies under a running VM: the VM is restarted, and the drift is reported.
  const oldPid = again.pid as number;
  process.kill(oldPid, "SIGKILL");
  const revived = await waitFor("web1 restarted after a crash", async () => {
    const r = (await api(base, "GET", "/v1/vms/web1")).body.vm;
    return r.state === "running" && r.pid !== oldPid ? r : undefined;
  });
  t.equal((await sshUntil(ports.ssh, key, "hostname")).trim(), "web1", "reachable after the crash restart");
  t.match((await api(base, "GET", "/v1/drift")).body.resolved, [{ vm: "web1", kind: "not-running" }], "crash reported");
  t.ok(revived.pid > 0);

  // Delete: QEMU, disk, run dir and routes gone.
  const del = await api(base, "DELETE", "/v1/vms/web1");
  t.equal(del.status, 200, del.text);
  t.notOk(fs.existsSync(path.join(dataDir, "vms", "web1")), "run dir (disk, seed, console) removed");
  t.notOk(sink.owners.has("vm:web1"), "routes withdrawn on delete");
  t.equal((await api(base, "GET", "/v1/vms/web1")).status, 404);
  await waitFor("no QEMU left", async () => (await api(base, "GET", "/v1/drift")).body.drift.length === 0, 10_000);
  t.same((await api(base, "GET", "/v1/vms")).body.vms, []);

  // The image is free again.
  t.equal((await api(base, "DELETE", "/v1/images/tiny")).status, 200);
});
