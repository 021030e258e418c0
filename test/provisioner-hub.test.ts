/**
 * A capsul published through the hub: the provisioner on a real cog (its
 * TunnelClient is the route sink), a real hub, a real QEMU VM under TCG.
 * Visitors reach the VM by SSH on the hub TCP port the hub assigned, by HTTPS
 * via SNI (the VM holds the TLS key) and by HTTP via Host.
 */
import t from "tap";
import { startProvisioner } from "../provisioner/index.js";
import { cogConfig, enrolledCog, HUB_DOMAIN, hubConfig, startTestHub, testLogger, tmpDir } from "./helpers/cluster.js";
import {
  api, authorize, cleanupDataDir, importTestImage, run, sshKeypair, sshUntil, tempDataDir, testConfig, waitFor, waitForState,
} from "./helpers/vm.js";

t.setTimeout(15 * 60_000);

t.test("create a VM and reach it through the hub by SSH, HTTPS (SNI) and HTTP (Host); delete withdraws its routes", async (t) => {
  const dir = tmpDir();
  const hubCfg = hubConfig(dir, { listen: { tcp_ports: ["22100-22119"] } });
  const hub = await startTestHub(hubCfg);
  t.teardown(() => hub.close());
  const cog = await enrolledCog(hubCfg, hub, cogConfig(dir, "home1", hub.ports.tunnel, []), "home1");
  t.teardown(() => cog.close());

  const dataDir = tempDataDir();
  const prov = await startProvisioner({
    config: testConfig(dataDir), cogName: cog.identity.name, hubDomain: cog.identity.hubDomain, hubHost: "127.0.0.1",
    sink: cog.client, logger: testLogger("provisioner"),
  });
  t.teardown(async () => { await prov.close(); cleanupDataDir(dataDir); });
  authorize(prov.url, dataDir);
  const { key, pub } = sshKeypair(dataDir);
  await importTestImage(prov.url, dataDir);

  const created = await api(prov.url, "POST", "/v1/vms", { name: "web1", image: "tiny", size: "t1", ssh_keys: [pub] });
  t.equal(created.status, 202, created.text);
  const host = `web1.home1.${HUB_DOMAIN}`;
  t.equal(created.body.vm.hostname, host);
  await waitForState(prov.url, "web1", "running");

  // The hub assigns the SSH port; the cog learns it from the routes answer.
  const sshPort = await waitFor("the hub to assign the ssh port", async () => {
    const st = cog.client.status("vm-web1-ssh");
    return st.state === "accepted" ? st.port : undefined;
  }, 30_000);
  t.ok(sshPort! >= 22100 && sshPort! <= 22119, `hub port ${sshPort} from the pool`);
  t.equal(hub.router.lookupHost("tls", host)?.cog, "home1");

  t.equal((await sshUntil(sshPort!, key, "hostname")).trim(), "web1", "ssh -p HUBPORT reaches the VM");
  const https = await run("curl", ["-sS", "-k", "--max-time", "30", "--resolve", `${host}:${hub.ports.tls}:127.0.0.1`, `https://${host}:${hub.ports.tls}/index.html`]);
  t.equal(https.stdout.trim(), "web1", `HTTPS by SNI through the hub: ${https.stderr}`);
  const http = await run("curl", ["-sS", "--max-time", "30", "--resolve", `${host}:${hub.ports.http}:127.0.0.1`, `http://${host}:${hub.ports.http}/`]);
  t.equal(http.stdout.trim(), "web1", `HTTP by Host through the hub: ${http.stderr}`);
  const shown = (await api(prov.url, "GET", "/v1/vms/web1")).body.vm;
  t.equal(shown.ssh_port, sshPort, "the API shows the hub port");

  const del = await api(prov.url, "DELETE", "/v1/vms/web1");
  t.equal(del.status, 200, del.text);
  await waitFor("the hub to withdraw the VM's routes", async () =>
    hub.router.lookupHost("tls", host) === undefined && hub.router.lookupHost("http", host) === undefined && hub.router.lookupPort(sshPort!) === undefined, 30_000);
  const gone = await run("curl", ["-sS", "-o", "/dev/null", "-w", "%{http_code}", "--max-time", "30", "--resolve", `${host}:${hub.ports.http}:127.0.0.1`, `http://${host}:${hub.ports.http}/`]);
  t.equal(gone.stdout, "404", "after delete the hub answers 404");
});
