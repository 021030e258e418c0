/**
 * What a tenant VM can do to its cog, tried from inside real guests (TCG, the
 * test image): reach the cog's loopback (issue 8, defect 1: slirp mapped the
 * guest's 10.0.2.2 to the host's 127.0.0.1 — the provisioner API, other VMs'
 * forwarded ports, every local service), or fill the cog's disk through its
 * serial console (suspected: console.log grew without bound).
 * "The internet" is a server in a network namespace this test creates; no
 * probe goes to any address outside this machine.
 */
import fs from "node:fs";
import net from "node:net";
import path from "node:path";
import t from "tap";
import { createLogger } from "../lib/log.js";
import { NS_GATEWAY } from "../provisioner/guestnet.js";
import { startProvisioner } from "../provisioner/index.js";
import { MemoryRouteSink } from "../tunnel-client/routesink.js";
import { createTestNet } from "./helpers/netns.js";
import {
  api, authorize, cleanupDataDir, importTestImage, run, sshKeypair, sshUntil, tempDataDir, testConfig, waitFor, waitForState,
} from "./helpers/vm.js";

t.setTimeout(20 * 60_000);

const INTERNET_PORT = 8080;
const CONSOLE_CAP_BYTES = 16 * 1024;

t.test("a guest reaches the internet but not the cog's loopback; hostfwd works; its console cannot fill the disk", async (t) => {
  // "The internet": a namespace of our own. It also owns the VM namespaces' gateway
  // address (198.18.0.1), so that a probe to it lands here, not on a real network.
  const inet = createTestNet();
  t.teardown(() => inet.close());
  inet.addAddress(NS_GATEWAY);
  await inet.serve(`
    require("node:net").createServer((s) => s.end("INTERNET " + s.localAddress + "\\n")).listen(${INTERNET_PORT}, () => console.log("LISTENING"));
  `);

  // A loopback service of the cog, standing for everything else on 127.0.0.1.
  let svcHits = 0;
  const svcSockets = new Set<net.Socket>();
  const svc = net.createServer((s) => {
    svcHits++;
    svcSockets.add(s);
    s.on("error", () => { /* a guest's half-open connection reset: only the count matters */ });
    s.on("close", () => svcSockets.delete(s));
    s.end("LOOPBACK-SECRET\n");
  });
  await new Promise<void>((r) => svc.listen(0, "127.0.0.1", () => r()));
  t.teardown(() => new Promise<void>((r) => { for (const s of svcSockets) s.destroy(); svc.close(() => r()); }));
  const svcPort = (svc.address() as net.AddressInfo).port;

  const dataDir = tempDataDir();
  const logLines: string[] = [];
  const prov = await startProvisioner({
    config: testConfig(dataDir, { consoleLogMaxBytes: CONSOLE_CAP_BYTES }), cogName: "home1", hubDomain: "hub.example", hubHost: "hub.example",
    sink: new MemoryRouteSink(), logger: createLogger({ level: "info", write: (l) => logLines.push(l) }),
  });
  t.teardown(async () => { await prov.close(); cleanupDataDir(dataDir); });
  const base = prov.url;
  authorize(base, dataDir);
  const apiPort = Number(new URL(base).port);
  const { key, pub } = sshKeypair(dataDir);
  await importTestImage(base, dataDir);
  for (const name of ["tenant", "other"]) {
    const r = await api(base, "POST", "/v1/vms", { name, image: "tiny", size: "t1", ssh_keys: [pub] });
    t.equal(r.status, 202, r.text);
  }
  const vmA = await waitForState(base, "tenant", "running");
  const vmB = await waitForState(base, "other", "running");
  const port = (hp: string): number => Number(hp.split(":")[1]);
  const [aSsh, aHttp, bSsh] = [port(vmA.local.ssh), port(vmA.local.http), port(vmB.local.ssh)];

  // hostfwd still works: ssh and http from the cog's loopback into each VM.
  t.equal((await sshUntil(aSsh, key, "hostname")).trim(), "tenant", "ssh into the tenant VM through its local port");
  t.equal((await sshUntil(bSsh, key, "hostname")).trim(), "other", "ssh into the other VM through its local port");
  const http = await run("curl", ["-sS", "--max-time", "30", `http://127.0.0.1:${aHttp}/`]);
  t.equal(http.stdout.trim(), "tenant", "http through its local port");

  // From inside the tenant VM. Each probe prints one line "name: <first bytes of the answer>".
  const probes: Array<[string, string, number]> = [
    ["api-via-gateway", "$GW", apiPort],
    ["other-vm-ssh-via-gateway", "$GW", bSsh],
    ["loopback-service-via-gateway", "$GW", svcPort],
    ["api-via-namespace-gateway", NS_GATEWAY, apiPort],
    ["loopback-service-via-namespace-gateway", NS_GATEWAY, svcPort],
    ["internet", inet.nsAddr, INTERNET_PORT],
    ["internet-via-namespace-gateway", NS_GATEWAY, INTERNET_PORT],
  ];
  // A guest root can route 127.0.0.0/8 out of eth0: then its packets carry 127.0.0.1 itself.
  const crafted: Array<[string, string, number]> = [
    ["api-crafted-127", "127.0.0.1", apiPort],
    ["other-vm-ssh-crafted-127", "127.0.0.1", bSsh],
    ["loopback-service-crafted-127", "127.0.0.1", svcPort],
  ];
  const line = ([name, host, p]: [string, string, number]): string =>
    `printf '%s: ' ${name}; printf 'GET / HTTP/1.0\\r\\n\\r\\n' | timeout 15 nc -w 5 ${host} ${p} 2>&1 | head -c 120 | tr '\\r\\n' '  '; echo`;
  const script = [
    "GW=$(ip route | awk '/^default/ {print $3}')",
    "echo \"gateway: $GW\"",
    ...probes.map(line),
    "sysctl -qw net.ipv4.conf.all.rp_filter=0 net.ipv4.conf.eth0.rp_filter=0 net.ipv4.conf.all.route_localnet=1 net.ipv4.conf.eth0.route_localnet=1",
    "ip route del local 127.0.0.0/8 dev lo table local; ip route del local 127.0.0.1 dev lo table local",
    "ip route add 127.0.0.0/8 via $GW dev eth0 onlink",
    "echo \"route: $(ip route get 127.0.0.1)\"",
    ...crafted.map(line),
  ].join("\n");
  const out = await run("ssh", [
    "-o", "StrictHostKeyChecking=no", "-o", "UserKnownHostsFile=/dev/null", "-o", "BatchMode=yes", "-o", "LogLevel=ERROR",
    "-p", String(aSsh), "-i", key, "root@127.0.0.1", script,
  ], 300_000);
  t.equal(out.code, 0, out.stderr);
  t.comment(out.stdout);
  const answers = new Map(out.stdout.split("\n").map((l) => [l.slice(0, l.indexOf(":")), l.slice(l.indexOf(":") + 1)] as [string, string]));
  t.match(answers.get("gateway"), /10\.0\.2\.2/, "the guest's gateway is slirp's 10.0.2.2");
  t.match(answers.get("route"), /127\.0\.0\.1 via 10\.0\.2\.2 dev eth0/, "the crafted route is in place");
  for (const [name] of [...probes, ...crafted]) {
    const a = answers.get(name);
    t.type(a, "string", `${name} ran`);
    if (name.startsWith("internet")) {
      t.match(a, /INTERNET/, `${name}: reached the internet: ${a}`);
    } else {
      t.notMatch(a, /HTTP\/1\.1|SSH-2\.0|LOOPBACK/, `${name}: nothing of the cog answered: ${a}`);
    }
  }
  t.equal(svcHits, 0, "the loopback service saw no connection");
  t.same(logLines.filter((l) => l.includes("api request refused")), [], "no request from the guest reached the API");

  // The console: the guest writes 96 KiB to its serial port; the cog keeps at most 2 x 16 KiB.
  const r = await run("ssh", [
    "-o", "StrictHostKeyChecking=no", "-o", "UserKnownHostsFile=/dev/null", "-o", "BatchMode=yes", "-o", "LogLevel=ERROR",
    "-p", String(aSsh), "-i", key, "root@127.0.0.1",
    "head -c 98304 /dev/zero | tr '\\0' x > /dev/ttyS0; echo console-end-marker > /dev/ttyS0",
  ], 300_000);
  t.equal(r.code, 0, r.stderr);
  const log = path.join(dataDir, "vms", "tenant", "console.log");
  await waitFor("the end marker in console.log", async () => fs.readFileSync(log, "utf8").includes("console-end-marker"), 120_000);
  const size = (f: string): number => (fs.existsSync(f) ? fs.statSync(f).size : -1);
  t.ok(size(log) <= CONSOLE_CAP_BYTES, `console.log is ${size(log)} bytes, at most ${CONSOLE_CAP_BYTES}`);
  t.equal(size(`${log}.1`), CONSOLE_CAP_BYTES, "rotated to console.log.1 when full");
  t.same(fs.readdirSync(path.dirname(log)).filter((f) => f.startsWith("console.log")).sort(), ["console.log", "console.log.1"], "two files, no more");
  const tail = await api(base, "GET", "/v1/vms/tenant/console");
  t.match(tail.text, /x{1000}[^]*console-end-marker/, "the console endpoint shows the newest output across the rotation");
  t.equal((await api(base, "GET", "/v1/vms/other/console")).text.includes("ready hostname=other"), true, "the other VM's boot is logged");
  t.same((await api(base, "GET", "/v1/drift")).body.drift, [], "no drift: both VMs have their own network");
});
