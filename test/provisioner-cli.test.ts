import fs from "node:fs";
import path from "node:path";
import t from "tap";
import { table } from "../cli/common.js";
import { silentLogger } from "../lib/log.js";
import { startProvisioner } from "../provisioner/index.js";
import { MemoryRouteSink } from "../tunnel-client/routesink.js";
import { capsul } from "./helpers/backup.js";
import { cleanupDataDir, sshKeypair, tempDataDir, testConfig } from "./helpers/vm.js";

/**
 * ~40 CLI runs, each a node start with tap's TypeScript loader: 5-6 s apiece on the
 * shared 2-core machine at load 20+, which went past tap's default 240 s for the file.
 */
t.setTimeout(10 * 60_000);


/**
 * The --json style of every capsul command (cli/common.ts printJson): one line,
 * snake_case keys, instants as ISO-8601 UTC strings under keys ending in _at.
 * Returns what is wrong, with the JSON path.
 */
function jsonProblems(stdout: string): string[] {
  const out: string[] = [];
  if (stdout.split("\n").filter(Boolean).length !== 1) out.push(`not one line: ${JSON.stringify(stdout)}`);
  const walk = (v: unknown, at: string, key: string | null): void => {
    if (Array.isArray(v)) { v.forEach((x, i) => walk(x, `${at}[${i}]`, key)); return; }
    if (v !== null && typeof v === "object") {
      for (const [k, x] of Object.entries(v)) {
        if (!/^[a-z][a-z0-9]*(?:_[a-z0-9]+)*$/.test(k)) out.push(`${at}.${k}: not snake_case`);
        walk(x, `${at}.${k}`, k);
      }
      return;
    }
    if (key?.endsWith("_at") && v !== null && !(typeof v === "string" && /^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z$/.test(v))) {
      out.push(`${at}: ${JSON.stringify(v)} is not an ISO-8601 UTC instant`);
    }
  };
  try { walk(JSON.parse(stdout), "$", null); } catch (e) { out.push(`not JSON: ${(e as Error).message}`); }
  return out;
}

t.test("the --json style check catches what it is for", async (t) => {
  t.same(jsonProblems('{"name":"a","created_at":"2026-11-30T20:46:30.287Z","boot":{"ssh_at":null}}\n'), []);
  t.match(jsonProblems('{"createdAt":"2026-11-30T20:46:30.287Z"}\n'), [/createdAt: not snake_case/]);
  t.match(jsonProblems('{"created_at":1764500000000}\n'), [/created_at: 1764500000000 is not an ISO-8601/]);
  t.match(jsonProblems('{\n  "name": "a"\n}\n'), [/not one line/]);
});

t.test("table", async (t) => {
  t.equal(table(["A", "BB"], [["xxx", "y"], ["z", ""]]), "A    BB\nxxx  y\nz");
});

t.test("capsul vm / capsul image against a provisioner", async (t) => {
  const dataDir = tempDataDir();
  // QEMU is /bin/false: nothing boots; this is about the command line.
  const prov = await startProvisioner({
    config: testConfig(dataDir, { qemuBinary: "/bin/false" }), cogName: "home1", hubDomain: "hub.example", hubHost: "hub.example",
    sink: new MemoryRouteSink(), logger: silentLogger,
  });
  t.teardown(async () => { await prov.close(); cleanupDataDir(dataDir); });
  const g = ["--api", prov.url, "--data-dir", dataDir];
  const { key } = sshKeypair(dataDir);
  const raw = path.join(dataDir, "import", "d.raw");
  fs.writeFileSync(raw, Buffer.alloc(2 * 1024 * 1024));

  let r = await capsul(["image", "import", raw, "--name", "base", ...g]);
  t.equal(r.code, 0, r.stderr);
  t.equal(r.stdout.trim(), "base: imported (qcow2)");
  r = await capsul(["image", "list", ...g]);
  t.match(r.stdout, /^NAME\s+FORMAT\s+SIZE\s+SHA256\s+USED BY\nbase\s+qcow2\s/);
  r = await capsul(["image", "list", "--json", ...g]);
  t.same(jsonProblems(r.stdout), [], `image list --json: ${r.stdout}`);
  t.match(JSON.parse(r.stdout), [{ name: "base", format: "qcow2", created_at: /Z$/ }]);

  r = await capsul(["vm", "create", "web1", "--image", "base", "--size", "t1", "--ssh-key", `${key}.pub`, ...g]);
  t.equal(r.code, 0, r.stderr);
  t.match(r.stdout, /^web1: creating/);
  r = await capsul(["vm", "list", ...g]);
  t.match(r.stdout, /^NAME\s+STATE\s+SIZE\s+IMAGE\s+SSH\s+URL\nweb1\s+\S+\s+t1\s+base\s+.*https:\/\/web1\.home1\.hub\.example\//);
  r = await capsul(["vm", "show", "web1", "--json", ...g]);
  t.same(jsonProblems(r.stdout), [], `vm show --json: ${r.stdout}`);
  t.equal(JSON.parse(r.stdout).hostname, "web1.home1.hub.example");
  t.equal(JSON.parse(r.stdout).https, "passthrough", "the default HTTPS mode");
  r = await capsul(["vm", "create", "web3", "--image", "base", "--size", "t1", "--ssh-key", `${key}.pub`, "--https", "terminate", ...g]);
  t.equal(r.code, 0, r.stderr);
  r = await capsul(["vm", "show", "web3", "--json", ...g]);
  t.equal(JSON.parse(r.stdout).https, "terminate", "--https terminate reaches the provisioner and is kept");
  t.equal((await capsul(["vm", "delete", "web3", ...g])).code, 0);
  r = await capsul(["vm", "create", "web4", "--image", "base", "--size", "t1", "--ssh-key", `${key}.pub`, "--https", "both", ...g]);
  t.equal(r.code, 2, "a bad --https is a usage error");
  t.equal(r.stderr, 'capsul: config error: --https: expected terminate or passthrough, got "both"\n');
  // QEMU is /bin/false: the start failed and nothing runs; stop says so.
  r = await capsul(["vm", "stop", "web1", "--json", ...g]);
  t.equal(r.code, 0, r.stderr);
  t.same(jsonProblems(r.stdout), [], `vm stop --json: ${r.stdout}`);
  t.match(JSON.parse(r.stdout), { vm: { name: "web1", state: "stopped", updated_at: /Z$/ }, stop: null });
  r = await capsul(["vm", "console", "web1", "--json", ...g]);
  t.equal(r.code, 0, r.stderr);
  t.same(jsonProblems(r.stdout), [], `vm console --json: ${r.stdout}`);
  t.equal(typeof JSON.parse(r.stdout).console, "string");
  r = await capsul(["vm", "show", "web1", ...g]);
  t.match(r.stdout, /^name:\s+web1$/m);
  t.match(r.stdout, /^url:\s+https:\/\/web1\.home1\.hub\.example\/$/m);

  // Custom domains: add, list, show, the errors as one line each, remove.
  r = await capsul(["vm", "domains", "web1", "add", "Blog.Example.NET", ...g]);
  t.equal(r.code, 0, r.stderr);
  t.equal(r.stdout, "web1: domain blog.example.net added (not published (the VM is not running))\n");
  r = await capsul(["vm", "domains", "web1", ...g]);
  t.match(r.stdout, /^DOMAIN\s+STATE\s+TXT RECORD\s+VALUE\nblog\.example\.net\s+not published \(the VM is not running\)\s+-\s+-\n$/);
  r = await capsul(["vm", "show", "web1", ...g]);
  t.match(r.stdout, /^domain:\s+https:\/\/blog\.example\.net\/ not published \(the VM is not running\)$/m);
  r = await capsul(["vm", "domains", "web1", "add", "bad host", ...g]);
  t.equal(r.code, 2, "a bad hostname is a usage error");
  t.equal(r.stderr, 'capsul: config error: domain: not a hostname: "bad host" (letters, digits, dashes and dots, at most 253 characters) [bad_domain]\n');
  r = await capsul(["vm", "domains", "web1", "rename", "x.example.net", ...g]);
  t.equal(r.code, 2);
  t.equal(r.stderr, 'capsul: config error: vm domains: expected add or remove, got "rename"\n');
  r = await capsul(["vm", "create", "web5", "--image", "base", "--size", "t1", "--ssh-key", `${key}.pub`, "--domain", "blog.example.net", ...g]);
  t.equal(r.code, 1, "another VM's domain is refused (a conflict, not a usage error)");
  t.match(r.stderr, /^capsul: blog\.example\.net is already a domain of VM web1 on this cog .*\[domain_taken\]\n$/);
  r = await capsul(["vm", "domains", "web1", "remove", "blog.example.net", ...g]);
  t.equal(r.code, 0, r.stderr);
  t.equal(r.stdout, "web1: domain blog.example.net removed; its routes are withdrawn\n");
  r = await capsul(["vm", "domains", "web1", ...g]);
  t.equal(r.stdout, "web1 has no custom domains (capsul vm domains web1 add DOMAIN)\n");

  // Errors: one line, exit 2 for a refused request, 1 for runtime failures.
  r = await capsul(["vm", "create", "web2", "--image", "base", "--size", "t1", "--ssh-key", "ssh-ed25519 nope", ...g]);
  t.equal(r.code, 2);
  t.match(r.stderr, /^capsul: config error: ssh_keys\[0\]: .*\[bad_ssh_key\]\n$/);
  r = await capsul(["vm", "show", "ghost", ...g]);
  t.equal(r.code, 1);
  t.match(r.stderr, /^capsul: no VM named "ghost" \[vm_not_found\]\n$/);
  r = await capsul(["image", "delete", "base", ...g]);
  t.equal(r.code, 1);
  t.match(r.stderr, /image_in_use/);
  r = await capsul(["vm", "list", "--api", "http://127.0.0.1:1", "--data-dir", dataDir]);
  t.equal(r.code, 1);
  t.match(r.stderr, /^capsul: cannot reach the provisioner at http:\/\/127\.0\.0\.1:1/);
  r = await capsul(["vm", "create", "x", ...g]);
  t.equal(r.code, 2, "missing --image is a usage error");
  r = await capsul(["image", "import", path.join(dataDir, "import", "nonexistent"), "--name", "n", ...g]);
  t.equal(r.code, 2);
  t.match(r.stderr, /bad_source/);
  // Outside the import dir: refused, and the message says where images go.
  r = await capsul(["image", "import", path.join(dataDir, "api-token"), "--name", "n", ...g]);
  t.equal(r.code, 2);
  t.match(r.stderr, new RegExp(`outside the import directory ${dataDir}/import .*\\[source_refused\\]`));

  // -c capsul.yaml: the API address and data dir come from cog.provisioner.
  const yml = path.join(dataDir, "capsul.yaml");
  fs.writeFileSync(yml, `cog:\n  provisioner:\n    listen: 127.0.0.1:${new URL(prov.url).port}\n    data_dir: ${dataDir}\n`);
  r = await capsul(["vm", "list", "--json", "-c", yml]);
  t.equal(r.code, 0, r.stderr);
  t.equal(JSON.parse(r.stdout)[0].name, "web1");
  r = await capsul(["vm", "list", "-c", path.join(dataDir, "missing.yaml")]);
  t.equal(r.code, 2, "a -c file that does not exist is a usage error");

  // The token: read from the data dir, or CAPSUL_API_TOKEN; without it a clear line, never a silent 401.
  const elsewhere = path.join(dataDir, "no-token-here");
  fs.mkdirSync(elsewhere);
  r = await capsul(["vm", "list", "--api", prov.url, "--data-dir", elsewhere]);
  t.equal(r.code, 2, "no token file: usage error");
  t.match(r.stderr, new RegExp(`^capsul: config error: cannot read the provisioner API token ${elsewhere}/api-token \\(ENOENT\\)`));
  const token = fs.readFileSync(path.join(dataDir, "api-token"), "utf8").trim();
  r = await capsul(["vm", "list", "--json", "--api", prov.url, "--data-dir", elsewhere], { CAPSUL_API_TOKEN: token });
  t.equal(r.code, 0, `CAPSUL_API_TOKEN: ${r.stderr}`);
  r = await capsul(["vm", "list", "--api", prov.url, "--data-dir", elsewhere], { CAPSUL_API_TOKEN: "not-the-token" });
  t.equal(r.code, 1);
  t.match(r.stderr, /^capsul: missing or wrong bearer token .*\[unauthorized\]\n$/);

  r = await capsul(["vm", "delete", "web1", "--json", ...g]);
  t.equal(r.code, 0, r.stderr);
  t.same(JSON.parse(r.stdout), { deleted: "web1" });
  r = await capsul(["image", "delete", "base", "--json", ...g]);
  t.equal(r.code, 0, r.stderr);
  t.same(jsonProblems(r.stdout), []);
  t.same(JSON.parse(r.stdout), { deleted: "base" });
  r = await capsul(["vm", "list", ...g]);
  t.match(r.stdout, /^no VMs/);
});
