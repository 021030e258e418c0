/**
 * Defect 1 of issue 8, the API half: anyone on the cog, any web page (CSRF,
 * DNS rebinding) could drive the provisioner API on loopback. Every attack
 * here goes with real curl to a provisioner in its own process.
 */
import fs from "node:fs";
import path from "node:path";
import t from "tap";
import { hostAllowed, parseHostHeader } from "../provisioner/apiguard.js";
import { startChild, stopChild, type ChildProvisioner } from "./helpers/vmchild.js";
import { api, cleanupDataDir, run, sshKeypair, tempDataDir, testConfig, waitFor } from "./helpers/vm.js";

t.test("hostAllowed: only the listen address itself, localhost on loopback, IP literals on a wildcard", async (t) => {
  const lo = { host: "127.0.0.1", port: 7480 };
  const cases: Array<[string | undefined, { host: string; port: number }, boolean]> = [
    ["127.0.0.1:7480", lo, true],
    ["localhost:7480", lo, true],
    ["LOCALHOST:7480", lo, true],
    ["127.0.0.1:7481", lo, false],
    ["127.0.0.1", lo, false],
    ["127.0.0.2:7480", lo, false],
    ["[::1]:7480", lo, false],
    ["rebind.attacker.example:7480", lo, false],
    ["localhost.attacker.example:7480", lo, false],
    ["127.0.0.1.nip.io:7480", lo, false],
    [undefined, lo, false],
    ["", lo, false],
    ["127.0.0.1:7480:1", lo, false],
    ["127.0.0.1:99999", lo, false],
    ["[::1]:7480", { host: "::1", port: 7480 }, true],
    ["localhost:7480", { host: "::1", port: 7480 }, true],
    ["127.0.0.1:7480", { host: "::1", port: 7480 }, false],
    ["192.168.1.5:7480", { host: "0.0.0.0", port: 7480 }, true],
    ["[fd00::2]:7480", { host: "::", port: 7480 }, true],
    ["localhost:7480", { host: "0.0.0.0", port: 7480 }, true],
    ["cog.lan:7480", { host: "0.0.0.0", port: 7480 }, false],
    ["192.168.1.5:7480", { host: "192.168.1.5", port: 7480 }, true],
    ["192.168.1.6:7480", { host: "192.168.1.5", port: 7480 }, false],
    ["localhost:7480", { host: "192.168.1.5", port: 7480 }, false],
    ["[::1]:7480", { host: "localhost", port: 7480 }, true],
    ["localhost", { host: "127.0.0.1", port: 80 }, true],
  ];
  t.ok(cases.length > 0);
  for (const [h, listen, want] of cases) t.equal(hostAllowed(h, listen), want, `${JSON.stringify(h)} on ${listen.host}:${listen.port}`);
  t.same(parseHostHeader("[::1]:80"), { host: "::1", port: 80 });
  t.equal(parseHostHeader("a b:80"), null);
});

t.test("a real provisioner refuses requests without the token, with a foreign Host, or from a web page", async (t) => {
  const dataDir = tempDataDir();
  let child: ChildProvisioner | undefined;
  t.teardown(async () => { if (child) await stopChild(child); cleanupDataDir(dataDir); });
  // QEMU is /bin/false: nothing boots; this is about who may call the API.
  child = await startChild(testConfig(dataDir, { qemuBinary: "/bin/false" }), path.join(dataDir, "routes.json"));
  const base = child.url;
  const port = new URL(base).port;
  const tokenFile = path.join(dataDir, "api-token");
  const token = fs.readFileSync(tokenFile, "utf8").trim();
  t.equal(fs.statSync(tokenFile).mode & 0o777, 0o600, "token file is 0600");
  t.equal(fs.statSync(dataDir).mode & 0o777, 0o700, "data dir is 0700");
  t.ok(token.length >= 40, "a long random token");

  // A VM to attack: created with the token (its start fails: QEMU is /bin/false).
  const raw = path.join(dataDir, "import", "d.raw");
  fs.writeFileSync(raw, Buffer.alloc(1024 * 1024));
  t.equal((await api(base, "POST", "/v1/images", { name: "d", source: raw })).status, 201);
  const { pub } = sshKeypair(dataDir);
  t.equal((await api(base, "POST", "/v1/vms", { name: "vm1", image: "d", size: "t1", ssh_keys: [pub] })).status, 202);
  await waitFor("vm1 in error", async () => (await api(base, "GET", "/v1/vms/vm1")).body.vm.state === "error", 30_000);

  const curl = async (method: string, p: string, headers: string[], body?: string) => {
    const args = ["-sS", "--max-time", "20", "-o", "-", "-w", "\n%{http_code}", "-X", method];
    for (const h of headers) args.push("-H", h);
    if (body !== undefined) args.push("-H", "content-type: application/json", "--data-binary", body);
    const r = await run("curl", [...args, `${base}${p}`]);
    const nl = r.stdout.lastIndexOf("\n");
    const text = r.stdout.slice(0, nl);
    let json: any;
    try { json = JSON.parse(text); } catch { /* not JSON */ }
    return { status: Number(r.stdout.slice(nl + 1)), json, text };
  };
  const bearer = `Authorization: Bearer ${token}`;
  const refused: Array<[string, string, string, string[], number, string, string?]> = [
    ["no token on loopback", "GET", "/v1/vms", [], 401, "unauthorized"],
    ["no token: stop a VM", "POST", "/v1/vms/vm1/stop", [], 401, "unauthorized"],
    ["wrong token", "GET", "/v1/vms", ["Authorization: Bearer " + "x".repeat(token.length)], 401, "unauthorized"],
    ["token without Bearer", "GET", "/v1/vms", [`Authorization: ${token}`], 401, "unauthorized"],
    ["DNS rebinding: a foreign Host", "GET", "/v1/vms", [bearer, `Host: rebind.attacker.example:${port}`], 421, "wrong_host"],
    ["DNS rebinding without the token", "POST", "/v1/vms/vm1/stop", [`Host: rebind.attacker.example:${port}`], 421, "wrong_host"],
    ["Host with another port", "GET", "/v1/vms", [bearer, "Host: 127.0.0.1:1"], 421, "wrong_host"],
    ["cross-site POST stop (no body)", "POST", "/v1/vms/vm1/stop", ["Origin: https://evil.example"], 403, "browser_request_refused"],
    ["cross-site POST start, even with the token", "POST", "/v1/vms/vm1/start", [bearer, "Origin: https://evil.example"], 403, "browser_request_refused"],
    ["sandboxed page (Origin: null)", "DELETE", "/v1/vms/vm1", [bearer, "Origin: null"], 403, "browser_request_refused"],
    ["same-origin page after rebinding", "POST", "/v1/images", [bearer, `Origin: http://127.0.0.1:${port}`], 403, "browser_request_refused",
      JSON.stringify({ name: "stolen", source: tokenFile })],
    ["no token: export a VM (its disk)", "GET", "/v1/vms/vm1/export", [], 401, "unauthorized"],
    ["no token: move a VM away", "POST", "/v1/vms/vm1/move", [], 401, "unauthorized", JSON.stringify({ to: "elsewhere", stop: true })],
    ["no token: import a VM (before the body limit, not before the guard)", "POST", "/v1/vms/import", [], 401, "unauthorized", "x"],
    ["cross-site import", "POST", "/v1/vms/import", [bearer, "Origin: https://evil.example"], 403, "browser_request_refused", "x"],
    ["DNS rebinding: export", "GET", "/v1/vms/vm1/export", [bearer, `Host: rebind.attacker.example:${port}`], 421, "wrong_host"],
    // The cog's /healthz and /metrics live on this listener too (VM names and their use): same rule.
    ["no token: /metrics", "GET", "/metrics", [], 401, "unauthorized"],
    ["no token: /healthz", "GET", "/healthz", [], 401, "unauthorized"],
    ["DNS rebinding: /metrics", "GET", "/metrics", [bearer, `Host: rebind.attacker.example:${port}`], 421, "wrong_host"],
    ["a web page reads /metrics", "GET", "/metrics", [bearer, "Origin: https://evil.example"], 403, "browser_request_refused"],
  ];
  for (const [what, method, p, headers, status, code, body] of refused) {
    const r = await curl(method, p, headers, body);
    t.equal(r.status, status, `${what}: ${r.text}`);
    t.equal(r.json?.error?.code, code, `${what}: code`);
    t.type(r.json?.error?.message, "string", `${what}: a message`);
  }
  const vm = (await api(base, "GET", "/v1/vms/vm1")).body.vm;
  t.equal(vm.desired, "running", "the refused stop changed nothing");
  t.equal((await api(base, "GET", "/v1/images")).body.images.length, 1, "nothing imported");
  t.equal((await api(base, "GET", "/v1/vms")).body.vms.length, 1, "no VM imported, vm1 not moved");

  // Our own clients still work: the bound address and localhost, with the token.
  t.equal((await curl("GET", "/v1/vms", [bearer])).status, 200);
  t.equal((await curl("GET", "/v1/vms", [bearer, `Host: localhost:${port}`])).status, 200);
  const metrics = await curl("GET", "/metrics", [bearer]);
  t.equal(metrics.status, 200, "/metrics with the token");
  t.match(metrics.text, /capsul_vm_state\{vm="vm1",state="error"\} 1/, "the VM metrics");
  t.same((await curl("GET", "/healthz", [bearer])).json, { status: "ok" }, "/healthz with the token");

  // One log line per refusal, naming the reason.
  const logged = await waitFor("refusals logged", async () => {
    const lines = child!.stderr().split("\n").filter((l) => l.includes("api request refused"));
    return lines.length >= refused.length ? lines : undefined;
  }, 10_000);
  t.equal(logged.length, refused.length, "exactly one line per refused request");
  t.match(logged.join("\n"), /reason=wrong_host .*host=rebind\.attacker\.example/);
  t.match(logged.join("\n"), /reason=browser_request_refused .*origin=https:\/\/evil\.example/);
  t.notMatch(child.stderr(), token, "the token never reaches the log");
});
