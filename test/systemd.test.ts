/**
 * deploy/capsul-hub.service and deploy/capsul-cog.service: systemd-analyze verify
 * accepts them without a word, and what they say agrees with the code (data dirs,
 * exit codes, config path, signals). systemd-analyze needs no running systemd for
 * this; `capsul` is put where the units look for it (/usr/local/bin) inside a
 * private mount namespace, so the machine's own /usr/local/bin is never touched.
 * test/systemd-run.test.ts runs the units under a real systemd (start, reload, crash,
 * config error, a cog restart with a VM alive).
 */
import t from "tap";
import fs from "node:fs";
import path from "node:path";
import { EXIT_INTERNAL_ERROR, exitCodeFor, DEFAULT_CONFIG_PATHS } from "../cli/common.js";
import { DEFAULT_COG_DATA_DIR, DEFAULT_HUB_DATA_DIR, DEFAULT_SHUTDOWN_GRACE_MS } from "../config/config.js";
import { parseDurationMs } from "../lib/units.js";
import { DEFAULT_DATA_DIR as DEFAULT_PROVISIONER_DATA_DIR } from "../provisioner/config.js";
import { ConfigError } from "../lib/errors.js";
import { tmpDir } from "./helpers/cluster.js";
import { CLI, REPO, runProgram } from "./helpers/procs.js";

const UNITS = ["capsul-hub.service", "capsul-cog.service"];
/** Highest `systemd-analyze security` exposure (0 safest, 10 worst) each unit may have; systemd 252 scores them 1.9 and 4.3. */
const MAX_EXPOSURE: Record<string, number> = { "capsul-hub.service": 2.5, "capsul-cog.service": 5.0 };

/** `systemd-analyze verify` with `capsul` on the units' search path, in a private mount namespace. */
function verify(unitFile: string): ReturnType<typeof runProgram> {
  const script = `mount -t tmpfs tmpfs /usr/local/bin && ln -s "$1" /usr/local/bin/capsul && exec systemd-analyze verify "$2"`;
  return runProgram("unshare", ["--mount", "--propagation", "private", "sh", "-c", script, "sh", CLI, unitFile]);
}

/** The [Service] (and other) settings of a unit as key → values, in file order. */
function settings(text: string): Map<string, string[]> {
  const out = new Map<string, string[]>();
  for (const raw of text.split("\n")) {
    const line = raw.trim();
    if (!line || line.startsWith("#") || line.startsWith("[")) continue;
    const eq = line.indexOf("=");
    const k = line.slice(0, eq);
    out.set(k, [...(out.get(k) ?? []), line.slice(eq + 1)]);
  }
  return out;
}

const read = (u: string): string => fs.readFileSync(path.join(REPO, "deploy", u), "utf8");
const one = (s: Map<string, string[]>, k: string): string | undefined => s.get(k)?.at(-1);

t.test("systemd-analyze verify accepts both units without a warning", async (t) => {
  for (const u of UNITS) {
    const r = await verify(path.join(REPO, "deploy", u));
    t.equal(r.code, 0, `${u}: systemd-analyze verify exits 0`, { stderr: r.stderr });
    t.equal(r.stdout + r.stderr, "", `${u}: not a word from systemd-analyze verify`);
  }
});

t.test("the verify check bites: a typo in a unit is reported", async (t) => {
  const dir = tmpDir("capsul-units-");
  t.teardown(() => fs.rmSync(dir, { recursive: true, force: true }));
  const bad = path.join(dir, "capsul-hub.service");
  fs.writeFileSync(bad, read("capsul-hub.service").replace("Restart=on-failure", "Restart=on-falure").replace("ProtectHome=yes", "ProtectHom=yes"));
  const r = await verify(bad);
  t.match(r.stderr, /Failed to parse service restart specifier, ignoring: on-falure/);
  t.match(r.stderr, /Unknown key 'ProtectHom'/);
});

t.test("the units agree with the code", async (t) => {
  const hub = settings(read("capsul-hub.service"));
  const cog = settings(read("capsul-cog.service"));
  const configFile = DEFAULT_CONFIG_PATHS.find((p) => path.isAbsolute(p));
  t.equal(one(hub, "ExecStart"), `capsul hub -c ${configFile}`);
  t.equal(one(cog, "ExecStart"), `capsul cog -c ${configFile}`);
  t.same(hub.get("StateDirectory")?.join(" ").split(" ").map((d) => `/var/lib/${d}`), [DEFAULT_HUB_DATA_DIR], "StateDirectory is hub.data_dir's default");
  t.same(cog.get("StateDirectory")?.join(" ").split(" ").map((d) => `/var/lib/${d}`), [DEFAULT_COG_DATA_DIR, DEFAULT_PROVISIONER_DATA_DIR],
    "StateDirectory holds cog.data_dir's and cog.provisioner.data_dir's defaults");
  for (const [name, s] of [["hub", hub], ["cog", cog]] as const) {
    t.equal(one(s, "User"), "capsul", `${name}: runs as capsul`);
    t.equal(one(s, "Restart"), "on-failure", `${name}: restarts after a crash`);
    t.equal(one(s, "RestartPreventExitStatus"), String(exitCodeFor(new ConfigError("x"))), `${name}: not after a config error, which would only fail again`);
    t.not(String(EXIT_INTERNAL_ERROR), one(s, "RestartPreventExitStatus"), `${name}: a bug's exit ${EXIT_INTERNAL_ERROR} restarts`);
    t.equal(one(s, "ExecReload"), "/bin/kill -HUP $MAINPID", `${name}: reload is SIGHUP`);
    // A drain (SIGTERM) runs up to shutdown_grace; systemd must not SIGKILL it first (its default stop timeout is 90s).
    const stopMs = parseDurationMs(one(s, "TimeoutStopSec") ?? "90s");
    t.ok(stopMs > DEFAULT_SHUTDOWN_GRACE_MS, `${name}: TimeoutStopSec ${stopMs} ms > the default shutdown_grace ${DEFAULT_SHUTDOWN_GRACE_MS} ms`);
    t.equal(s.get("MemoryDenyWriteExecute"), undefined, `${name}: V8 generates code at run time`);
    // cli/service.ts says READY=1 through systemd-notify, a child: its datagrams come from another pid.
    t.equal(one(s, "Type"), "notify", `${name}: started means serving`);
    t.equal(one(s, "NotifyAccess"), "all", `${name}: systemd-notify speaks for capsul`);
  }
  t.equal(one(hub, "AmbientCapabilities"), "CAP_NET_BIND_SERVICE", "the hub binds 80 and 443 unprivileged");
  t.equal(cog.get("KillMode"), undefined, "control-group, the default: a cog stop ends every helper; VMs are in scopes of their own (provisioner/scope.ts)");
  t.equal(cog.get("PrivateDevices"), undefined, "the cog sees /dev/kvm");
  t.ok(cog.get("DeviceAllow")?.includes("/dev/kvm rw"), "and may open it");
});

t.test("systemd-analyze security: the sandbox stays as tight as it is", async (t) => {
  for (const u of UNITS) {
    const r = await runProgram("systemd-analyze", ["security", "--offline=yes", path.join(REPO, "deploy", u)]);
    const m = /Overall exposure level for \S+: (\d+\.\d+)/.exec(r.stdout);
    t.ok(m, `${u}: systemd-analyze security prints an exposure level`, { stdout: r.stdout.slice(-500), stderr: r.stderr });
    t.ok(Number(m?.[1]) <= MAX_EXPOSURE[u]!, `${u}: exposure ${m?.[1]} <= ${MAX_EXPOSURE[u]}`);
  }
});
