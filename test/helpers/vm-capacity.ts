/**
 * Not a test: how many tiny VMs does one cog hold? Boots N test VMs at once
 * under TCG and reports when each answered ssh.
 *   node --import=./node_modules/@tapjs/typescript/dist/esm/import.mjs test/helpers/vm-capacity.ts 6
 */
import { silentLogger } from "../../lib/log.js";
import { startProvisioner } from "../../provisioner/index.js";
import { MemoryRouteSink } from "../../tunnel-client/routesink.js";
import { api, authorize, cleanupDataDir, importTestImage, sshKeypair, sshUntil, tempDataDir, testConfig, waitForState } from "./vm.js";

const N = Number(process.argv[2] ?? 6);
const dataDir = tempDataDir();
const prov = await startProvisioner({ config: testConfig(dataDir), cogName: "c", hubDomain: "h", hubHost: "h", sink: new MemoryRouteSink(), logger: silentLogger });
try {
  authorize(prov.url, dataDir);
  const { key, pub } = sshKeypair(dataDir);
  await importTestImage(prov.url, dataDir);
  const t0 = Date.now();
  for (let i = 0; i < N; i++) {
    const r = await api(prov.url, "POST", "/v1/vms", { name: `v${i}`, image: "tiny", size: "t1", ssh_keys: [pub] });
    if (r.status !== 202) throw new Error(r.text);
  }
  const res = await Promise.all(Array.from({ length: N }, async (_, i) => {
    const vm = await waitForState(prov.url, `v${i}`, "running", 600_000);
    const h = (await sshUntil(Number(vm.local.ssh.split(":")[1]), key, "hostname")).trim();
    return `${h}@${((Date.now() - t0) / 1000).toFixed(1)}s`;
  }));
  console.log(`all ${N} reachable: ${res.join(" ")}`);
  const m = await api(prov.url, "GET", "/metrics");
  console.log(m.text.split("\n").filter((l) => l.startsWith("capsul_vm_rss")).join("\n"));
  console.log((await api(prov.url, "GET", "/v1/drift")).text);
  for (let i = 0; i < N; i++) await api(prov.url, "DELETE", `/v1/vms/v${i}`);
} finally {
  await prov.close();
  cleanupDataDir(dataDir);
}
