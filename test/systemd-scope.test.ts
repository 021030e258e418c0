/**
 * provisioner/scope.ts outside a real systemd (test/systemd-run.test.ts runs VMs in
 * scopes under one): when the provisioner asks for a scope and which manager, from
 * cog.provisioner.systemd_scope, INVOCATION_ID, uid, a manager socket that is really
 * there (a listening unix socket) and a probe; and that `on` makes a VM start fail
 * with one line naming the key where no manager can be reached (this machine's PID 1
 * is not systemd).
 */
import t from "tap";
import fs from "node:fs";
import net from "node:net";
import path from "node:path";
import { createLogger } from "../lib/log.js";
import { decideScope, inScope, locateManager, SYSTEM_MANAGER_SOCKET, scopeUnitName, VmScopes } from "../provisioner/scope.js";
import { tmpDir } from "./helpers/cluster.js";
import { testConfig } from "./helpers/vm.js";

const ok = async (): Promise<void> => {};

t.test("when and where", async (t) => {
  const dir = tmpDir("capsul-scope-");
  t.teardown(() => fs.rmSync(dir, { recursive: true, force: true }));
  const env = { INVOCATION_ID: "0123456789abcdef0123456789abcdef", XDG_RUNTIME_DIR: dir, PATH: "/usr/bin" };
  let probes = 0;
  const probe = async (): Promise<void> => { probes++; };

  t.match(await decideScope("off", 990, env, probe), { manager: null, reason: /systemd_scope is off/ });
  t.match(await decideScope("auto", 990, { PATH: "/usr/bin" }, probe), { manager: null, reason: "not started by systemd (no INVOCATION_ID)" });
  const missing = await decideScope("auto", 990, env, probe);
  t.equal(missing.manager, null);
  t.equal(missing.reason, `the service manager of uid 990 is not reachable: no ${dir}/systemd/private (is it running? loginctl enable-linger 990)`);
  t.equal(probes, 0, "no probe without a manager, and none outside systemd");

  // A manager socket that is there: a real listening unix socket.
  fs.mkdirSync(path.join(dir, "systemd"));
  const srv = net.createServer();
  await new Promise<void>((r) => srv.listen(path.join(dir, "systemd", "private"), r));
  t.teardown(() => srv.close());
  const found = await decideScope("auto", 990, env, probe);
  t.equal(probes, 1);
  t.same(found.manager, { user: true, env }, "the user's manager, found through XDG_RUNTIME_DIR");
  t.match(found.reason, /each VM in a scope of the service manager of uid 990, in capsul\.slice/);
  const refused = await decideScope("auto", 990, env, async () => { throw new Error("Failed to start transient scope unit: Access denied"); });
  t.match(refused, { manager: null, reason: "the service manager of uid 990 cannot run a scope: Failed to start transient scope unit: Access denied" });
  t.ok((await decideScope("on", 990, { XDG_RUNTIME_DIR: dir }, ok)).manager, "on: no INVOCATION_ID needed");

  // Without XDG_RUNTIME_DIR (a system service has none): /run/user/UID, passed on to systemd-run.
  t.same(locateManager(990, { PATH: "/usr/bin" }), { manager: { user: true, env: { PATH: "/usr/bin", XDG_RUNTIME_DIR: "/run/user/990" } }, socket: "/run/user/990/systemd/private" });
  t.same(locateManager(0, { XDG_RUNTIME_DIR: dir }).socket, SYSTEM_MANAGER_SOCKET, "root: the system manager");
  t.equal(locateManager(0, {}).manager.user, false);
});

t.test("the systemd-run command line", async (t) => {
  const unit = scopeUnitName("vm", "web1");
  t.match(unit, /^capsul-vm-web1-[0-9a-f]{8}$/);
  t.not(scopeUnitName("vm", "web1"), unit, "a new name per launch");
  const cmd = inScope({ user: true, env: {} }, unit, "capsul VM web1 (QEMU)", { file: "unshare", args: ["--user", "--", "qemu", "-name", "x"] });
  t.equal(cmd.file, "systemd-run");
  t.same(cmd.args, ["--user", "--scope", "--quiet", "--collect", `--unit=${unit}`, "--slice=capsul.slice", "--description=capsul VM web1 (QEMU)",
    "-p", "MemoryAccounting=yes", "-p", "TasksAccounting=yes", "--", "unshare", "--user", "--", "qemu", "-name", "x"]);
  t.equal(inScope({ user: false, env: {} }, unit, "d", { file: "true", args: [] }).args[0], "--scope", "system manager: no --user");
});

t.test("systemd_scope on, and no manager here: VM starts fail, saying why", { skip: fs.existsSync(SYSTEM_MANAGER_SOCKET) ? "this machine runs systemd" : false }, async (t) => {
  const lines: string[] = [];
  const dir = tmpDir("capsul-scope-");
  t.teardown(() => fs.rmSync(dir, { recursive: true, force: true }));
  const saved = process.env.XDG_RUNTIME_DIR;
  process.env.XDG_RUNTIME_DIR = dir;
  t.teardown(() => { if (saved === undefined) delete process.env.XDG_RUNTIME_DIR; else process.env.XDG_RUNTIME_DIR = saved; });
  const on = new VmScopes(testConfig("/tmp/cpv-x", { systemdScope: "on" }), createLogger({ write: (l) => lines.push(l) }));
  await t.rejects(on.manager(), { code: "launch_failed", message: /^cog\.provisioner\.systemd_scope is on but the (system )?service manager.* is not reachable: no \S+private/ });
  // The provisioner's live config (a reload changes it in place): each start reads the key.
  const live = { ...testConfig("/tmp/cpv-x", { systemdScope: "off" }) };
  const scopes = new VmScopes(live, createLogger({ write: (l) => lines.push(l) }));
  t.equal(await scopes.manager(), null, "off: QEMU starts as before");
  live.systemdScope = "on";
  await t.rejects(scopes.manager(), { code: "launch_failed" }, "a reload to on applies at the next start");
  t.match(lines.join("\n"), /vm scopes not used why="cog\.provisioner\.systemd_scope is off"/, "the choice is logged");
});
