/**
 * deploy/capsul-hub.service and deploy/capsul-cog.service under a real systemd, as
 * the README's deploy section uses them: PID 1 here is not systemd, so
 * scripts/systemd-sandbox.sh boots one in namespaces (overlay root, loopback-only
 * network; nothing reaches the host). Checked there, with the units unmodified:
 *  - the hub runs as `capsul`, binds 80 and 443 (its one capability), tells systemd it
 *    is ready and how a reload went (Type=notify through systemd-notify: StatusText),
 *    survives `systemctl reload`, is restarted by systemd after a crash (exit 70,
 *    logged), and stays down after a config error (exit 2) instead of looping;
 *  - a cog enrolled as the README says (its user manager ordered before it by a
 *    drop-in) starts a real VM whose QEMU and pasta each run in a scope of their own
 *    in capsul.slice of capsul's user manager, not in the cog's cgroup (read from
 *    /proc/PID/cgroup); `systemctl restart capsul-cog` (KillMode=control-group, the
 *    default) leaves that QEMU running in its scope, the restarted cog re-adopts it
 *    and the hub routes to it again; `systemctl stop capsul-cog` leaves no process
 *    of capsul running but the VM's QEMU and pasta (and capsul's user manager).
 */
import t, { type Test } from "tap";
import fs from "node:fs";
import path from "node:path";
import { EXIT_INTERNAL_ERROR } from "../cli/common.js";
import { tmpDir } from "./helpers/cluster.js";
import { REPO, runProgram, waitFor, type RunResult } from "./helpers/procs.js";
import { testImage } from "./helpers/testimage.js";

const SANDBOX = path.join(REPO, "scripts", "systemd-sandbox.sh");
const DOMAIN = "hub.test";
/** Boot, two units, a TCG VM boot and a few restarts on a busy 2-core machine. */
const TEST_TIMEOUT_MS = 400_000;
/** A unit start, a VM boot (~6 s under TCG, more when the machine is busy), a re-adoption. */
const STEP_TIMEOUT_MS = 120_000;
const HUB_READY = "hub ready tls=443 http=80 tunnel=7443";

const CONFIG = `hub:
  data_dir: /var/lib/capsul/hub
  domain: ${DOMAIN}
  listen:
    tls: 127.0.0.1:443
    http: 127.0.0.1:80
    tunnel: 127.0.0.1:7443
    tcp_host: 127.0.0.1
    tcp_ports: ["20000-20009"]
cog:
  data_dir: /var/lib/capsul/cog
  routes: []
  provisioner: {}
# The journal lines below are matched in the text format (a service's default is JSON,
# which test/logs.test.ts parses).
log:
  format: text
`;

t.test("the units under a real systemd: hub reload/crash/config error, cog restart keeps its VM", { timeout: TEST_TIMEOUT_MS }, async (t) => {
  const image = await testImage();
  const state = tmpDir("capsul-sandbox-");
  const boot = await runProgram(SANDBOX, ["start", state, REPO, `${image.dir}:/srv/capsul-test-image`], STEP_TIMEOUT_MS);
  t.teardown(async () => {
    await runProgram(SANDBOX, ["stop", state]);
    fs.rmSync(state, { recursive: true, force: true });
  });
  t.equal(boot.code, 0, `systemd booted in the sandbox: ${boot.stderr}`);

  /** A shell command as root inside the sandbox. */
  // env -u NODE_OPTIONS: tap's loader hooks would follow node into the sandbox, where
  // its .tap directory is read-only.
  const sh = (script: string): Promise<RunResult> =>
    runProgram(SANDBOX, ["run", state, "env", "-u", "NODE_OPTIONS", "bash", "-c", script], STEP_TIMEOUT_MS);
  const out = async (script: string): Promise<string> => {
    const r = await sh(script);
    if (r.code !== 0) throw new Error(`in the sandbox, \`${script}\` failed (${r.code}): ${r.stderr}`);
    return r.stdout.trim();
  };
  const show = async (unit: string, prop: string): Promise<string> => out(`systemctl show -p ${prop} --value ${unit}`);
  const journal = (unit: string): Promise<string> => out(`journalctl -u ${unit} --no-pager -o cat`);
  const waitJournal = async (t: Test, unit: string, what: string | RegExp, after = 0): Promise<string> => {
    try {
      return await waitFor(`${unit}'s journal to show ${what}`, async () => {
        const lines = (await journal(unit)).split("\n").slice(after);
        return lines.find((l) => (typeof what === "string" ? l.includes(what) : what.test(l)));
      }, { timeoutMs: STEP_TIMEOUT_MS, intervalMs: 500 });
    } catch (err) {
      throw new Error(`${(err as Error).message}\n${unit}'s journal ends:\n${(await journal(unit)).split("\n").slice(-15).join("\n")}`);
    }
  };
  const journalLength = async (unit: string): Promise<number> => (await journal(unit)).split("\n").length;

  // The README's steps: the config, the hub as a service.
  await out(`mkdir -p /etc/capsul && cat > /etc/capsul/capsul.yaml <<'EOF'\n${CONFIG}EOF`);
  await out("systemctl start capsul-hub");
  await waitJournal(t, "capsul-hub", HUB_READY);
  const hubPid = await show("capsul-hub", "MainPID");
  // Set only by the hub's own READY=1 (the unit is Type=notify: `systemctl start` waited for it).
  t.equal(await show("capsul-hub", "StatusText"), `hub running (pid ${hubPid})`, "the hub told systemd it is ready");
  t.equal(await out(`ps -o user= -p ${hubPid}`), "capsul", "the hub runs as capsul");
  t.match(await out("ss -ltnpH 'sport = :443'"), `pid=${hubPid},`, "and holds port 443 without root");

  // reload: SIGHUP, the same process goes on.
  let mark = await journalLength("capsul-hub");
  await out("systemctl reload capsul-hub");
  await waitJournal(t, "capsul-hub", "configuration reloaded: nothing changed", mark - 1);
  t.match(await waitFor("the reload's outcome in systemctl status", async () => {
    const s = await show("capsul-hub", "StatusText");
    return s.startsWith("reloaded") ? s : undefined;
  }, { timeoutMs: STEP_TIMEOUT_MS }), /^reloaded at \d{4}-\d\d-\d\dT[\d:.]+Z: nothing changed$/, "RELOADING=1, then READY=1 with the outcome");
  t.equal(await show("capsul-hub", "MainPID"), hubPid, "systemctl reload keeps the hub running");
  t.equal(await show("capsul-hub", "ActiveState"), "active");

  // A crash: a fault module throws from a signal callback; systemd restarts the hub.
  mark = await journalLength("capsul-hub");
  await out(`mkdir -p /srv/capsul-fault /etc/capsul-sandbox-units/capsul-hub.service.d
    echo "process.on('SIGUSR2', () => { throw new Error('injected fault under systemd'); });" > /srv/capsul-fault/fault.mjs
    printf '[Service]\\nEnvironment=NODE_OPTIONS=--import=/srv/capsul-fault/fault.mjs\\n' > /etc/capsul-sandbox-units/capsul-hub.service.d/fault.conf
    systemctl daemon-reload && systemctl restart capsul-hub`);
  await waitJournal(t, "capsul-hub", HUB_READY, mark - 1);
  mark = await journalLength("capsul-hub");
  const beforeCrash = await show("capsul-hub", "MainPID");
  const restartsBefore = Number(await show("capsul-hub", "NRestarts"));
  await out("systemctl kill --kill-whom=main -s SIGUSR2 capsul-hub");
  const crashLine = await waitJournal(t, "capsul-hub", /internal error \(a bug/, mark - 1);
  t.match(crashLine, /error="injected fault under systemd" stack="Error: injected fault under systemd\\n\s+at .*fault\.mjs/, "logged with its stack");
  await waitJournal(t, "capsul-hub", `status=${EXIT_INTERNAL_ERROR}`, mark - 1);
  await waitFor("systemd to restart the hub", async () =>
    Number(await show("capsul-hub", "NRestarts")) === restartsBefore + 1 && (await show("capsul-hub", "ActiveState")) === "active", { timeoutMs: STEP_TIMEOUT_MS });
  t.not(await show("capsul-hub", "MainPID"), beforeCrash, "a new hub process");
  await waitJournal(t, "capsul-hub", HUB_READY, mark);
  await out("rm -r /etc/capsul-sandbox-units/capsul-hub.service.d && systemctl daemon-reload");

  // A config error: exit 2, and no restart loop.
  await out("cp /etc/capsul/capsul.yaml /etc/capsul/good.yaml && echo 'bogus: 1' >> /etc/capsul/capsul.yaml");
  await sh("systemctl restart capsul-hub");
  await waitFor("the hub to fail on its config", async () => (await show("capsul-hub", "ActiveState")) === "failed", { timeoutMs: STEP_TIMEOUT_MS });
  t.equal(await show("capsul-hub", "ExecMainStatus"), "2");
  // `systemctl restart` set the counter back to 0; a restart by systemd itself would count.
  t.equal(await show("capsul-hub", "NRestarts"), "0", "not restarted: a bad capsul.yaml stays bad");
  t.equal(await show("capsul-hub", "Result"), "exit-code");
  mark = await journalLength("capsul-hub");
  await out("mv /etc/capsul/good.yaml /etc/capsul/capsul.yaml && systemctl restart capsul-hub");
  await waitJournal(t, "capsul-hub", HUB_READY, mark - 1);

  // The cog, enrolled as the README says (as the capsul user), with a real VM. Its
  // user manager: README's drop-in (the sandbox has no logind for enable-linger).
  await out(`uid=$(id -u capsul) && mkdir -p /etc/capsul-sandbox-units/capsul-cog.service.d
    printf '[Unit]\\nWants=user@%s.service\\nAfter=user@%s.service\\n' $uid $uid > /etc/capsul-sandbox-units/capsul-cog.service.d/user-manager.conf
    systemctl daemon-reload`);
  t.equal(await show("capsul-cog", "KillMode"), "control-group", "the cog's unit kills its whole cgroup at stop");
  const invite = JSON.parse(await out("runuser -u capsul -- capsul hub invite home1 --json -c /etc/capsul/capsul.yaml")) as { token: string; ca_fingerprint: string };
  await out(`install -d -o capsul -g capsul -m 0700 /var/lib/capsul/cog
    runuser -u capsul -- capsul cog enroll --hub 127.0.0.1:7443 --token ${invite.token} --ca-fingerprint ${invite.ca_fingerprint} -c /etc/capsul/capsul.yaml
    systemctl start capsul-cog`);
  await waitJournal(t, "capsul-cog", "connected to hub");
  t.equal(await show("capsul-cog", "StatusText"), `cog running (pid ${await show("capsul-cog", "MainPID")})`, "the cog told systemd it is ready");
  t.equal(await show("user@990.service", "ActiveState"), "active", "the drop-in started capsul's user manager with the cog");
  // Local images come only from the provisioner's import directory (issue 8).
  const imp = "/var/lib/capsul/provisioner/import";
  await out(`install -o capsul -g capsul -m 0644 /srv/capsul-test-image/kernel /srv/capsul-test-image/initrd ${imp}/
    cd / && capsul image import --name tiny --kernel ${imp}/kernel --initrd ${imp}/initrd --cmdline '${image.cmdline}' -c /etc/capsul/capsul.yaml`);
  await out(`mkdir -p /root/.ssh && ssh-keygen -q -t ed25519 -N '' -f /root/.ssh/id_ed25519
    cd / && capsul vm create web1 --image tiny --ssh-key /root/.ssh/id_ed25519.pub --wait -c /etc/capsul/capsul.yaml`);
  const qemuPid = await out("cat /var/lib/capsul/provisioner/vms/web1/qemu.pid");
  t.equal(await out(`ps -o user=,comm= -p ${qemuPid}`).then((s) => s.split(/\s+/).join(" ")), "capsul qemu-system-x86", "QEMU runs as capsul, in the cog's sandbox");
  await waitJournal(t, "capsul-cog", "vm scopes manager=user slice=capsul.slice");
  /** The cgroup v2 path of a process. */
  const cgroupOf = async (pid: string): Promise<string> => (await out(`cat /proc/${pid}/cgroup`)).split("\n").find((l) => l.startsWith("0::"))!.slice(3);
  const userSlice = "/user.slice/user-990.slice/user@990.service/capsul.slice";
  const qemuCgroup = await cgroupOf(qemuPid);
  t.match(qemuCgroup, new RegExp(`^${userSlice}/capsul-vm-web1-[0-9a-f]{8}\\.scope$`), "QEMU lives in a scope of its own, not in the cog's cgroup");
  const qemuScope = path.basename(qemuCgroup);
  const pastaPid = (await out("cat /var/lib/capsul/provisioner/vms/web1/pasta.pid")).split(" ")[0]!;
  t.match(await cgroupOf(pastaPid), new RegExp(`^${userSlice}/capsul-vmnet-web1-[0-9a-f]{8}\\.scope$`), "and so does its pasta");
  const userctl = (args: string): Promise<string> => out(`runuser -u capsul -- env XDG_RUNTIME_DIR=/run/user/990 systemctl --user ${args}`);
  t.equal(await userctl(`show -p ActiveState --value ${qemuScope}`), "active", "the scope is a unit of capsul's manager");
  t.match(await userctl(`show -p MainPID -p Slice ${qemuScope}`), "Slice=capsul.slice");
  const visit = `curl -sS -m 10 -H 'Host: web1.home1.${DOMAIN}' http://127.0.0.1/`;
  const page = await waitFor("the VM's web page through the hub", async () => (await sh(visit)).stdout, { timeoutMs: STEP_TIMEOUT_MS });

  // systemctl restart capsul-cog: the same QEMU goes on, the new cog adopts it.
  mark = await journalLength("capsul-cog");
  const cogPid = await show("capsul-cog", "MainPID");
  await out("systemctl restart capsul-cog");
  await waitJournal(t, "capsul-cog", `re-adopted running vm vm=web1 pid=${qemuPid} status=running`, mark - 1);
  t.not(await show("capsul-cog", "MainPID"), cogPid, "a new cog process");
  t.equal((await sh(`kill -0 ${qemuPid}`)).code, 0, "the VM's QEMU survived systemctl restart capsul-cog");
  t.equal(await cgroupOf(qemuPid), qemuCgroup, "in the same scope");
  t.equal(await waitFor("the VM's page through the hub again", async () => (await sh(visit)).stdout, { timeoutMs: STEP_TIMEOUT_MS }), page,
    "and the hub routes to it again");

  // systemctl stop capsul-cog: the VM keeps running, nothing else of capsul does.
  await out("systemctl stop capsul-cog");
  t.equal(await show("capsul-cog", "ActiveState"), "inactive");
  t.equal((await sh(`kill -0 ${qemuPid}`)).code, 0, "the VM's QEMU survived systemctl stop capsul-cog");
  // Every process of the capsul user, by cgroup: the hub (another service, still
  // running) and the user manager's own (init.scope) aside, only the VM's two scopes remain.
  const others = ["/system.slice/capsul-hub.service", "/user.slice/user-990.slice/user@990.service/init.scope"];
  const left = (await out("for p in $(pgrep -u capsul); do echo \"$p $(cat /proc/$p/comm) $(grep ^0:: /proc/$p/cgroup | cut -c4-)\"; done"))
    .split("\n").map((l) => l.split(" ")).filter(([, , cg]) => !others.includes(cg!));
  t.same(left.map(([pid]) => pid).sort(), [qemuPid, pastaPid].sort(), `no capsul process left but the VM's QEMU and pasta: ${JSON.stringify(left)}`);
  for (const [pid, , cg] of left) t.match(cg, `${userSlice}/`, `process ${pid} is in capsul.slice`);
});
