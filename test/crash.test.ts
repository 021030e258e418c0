/**
 * Crashes reach the service manager: a bug that throws (or rejects) inside a running
 * `capsul hub` or `capsul cog` is logged on one line with its stack, and the process
 * exits with EXIT_INTERNAL_ERROR, so systemd's Restart=on-failure brings up a clean one
 * (deploy/*.service). The fault comes from outside the code under test: a module
 * loaded with `node --import` throws from a SIGUSR2 listener, i.e. from an event
 * callback of the running process, as a real bug would. SIGHUP (`systemctl reload`)
 * is not such a crash: the process logs it and keeps serving.
 */
import t, { type Test } from "tap";
import fs from "node:fs";
import path from "node:path";
import { pathToFileURL } from "node:url";
import { EXIT_INTERNAL_ERROR } from "../cli/common.js";
import { tmpDir } from "./helpers/cluster.js";
import { childEnv, probePort, runCli, spawnCli, writeYaml, type CliProc } from "./helpers/procs.js";

const READY_RE = /hub ready tls=(\d+) http=(\d+) tunnel=(\d+)/;
const CONNECTED_RE = /\[cog\/tunnel\] connected to hub/;
const CRASH_RE = /ERROR .*internal error \(a bug: please report it\); exiting/;

type Fault = "throw" | "reject";

/** The fault module: SIGUSR2 makes the process throw, or reject a promise nobody awaits, from a signal callback. */
function faultModule(dir: string): string {
  const file = path.join(dir, "fault.mjs");
  fs.writeFileSync(file, [
    "process.on('SIGUSR2', () => {",
    "  if (process.env.CAPSUL_TEST_FAULT === 'reject') { void Promise.reject(new Error('injected rejection\\nsecond line')); return; }",
    "  throw new Error('injected fault\\nsecond line');",
    "});",
  ].join("\n") + "\n");
  return file;
}

function faultEnv(dir: string, fault: Fault): NodeJS.ProcessEnv {
  return { ...childEnv(), NODE_OPTIONS: `--import=${pathToFileURL(faultModule(dir)).href}`, CAPSUL_TEST_FAULT: fault };
}

function hubYaml(dir: string): string {
  return writeYaml(path.join(dir, "hub.yaml"), {
    hub: { data_dir: path.join(dir, "hub"), domain: "hub.test", listen: { tls: "127.0.0.1:0", http: "127.0.0.1:0", tunnel: "127.0.0.1:0", admin: "127.0.0.1:0" } },
  });
}

/** Sends the fault, waits for the exit and checks the one log line that says why. */
async function crashAndCheck(t: Test, proc: CliProc, fault: Fault): Promise<void> {
  proc.kill("SIGUSR2");
  const exit = await proc.waitExit();
  t.same(exit, { code: EXIT_INTERNAL_ERROR, signal: null }, `exits ${EXIT_INTERNAL_ERROR}, not killed and not still running`);
  const crash = proc.matching(CRASH_RE);
  t.equal(crash.length, 1, "one crash line", { log: proc.text() });
  const line = crash[0] ?? "";
  const kind = fault === "throw" ? "uncaught exception" : "unhandled rejection";
  const message = fault === "throw" ? "injected fault" : "injected rejection";
  t.match(line, `kind="${kind}"`);
  t.match(line, `error="${message}\\nsecond line"`, "the message, its newline escaped: still one line");
  t.match(line, /stack="Error: injected .*\\n\s+at .*fault\.mjs:\d+:\d+/, "the stack, down to the throwing frame");
  t.match(line, `exit=${EXIT_INTERNAL_ERROR}`);
  t.same(proc.matching(/shutting down/), [], "no graceful close over a state the bug may have broken");
}

for (const fault of ["throw", "reject"] as const) {
  t.test(`hub: a ${fault === "throw" ? "thrown exception" : "rejected promise"} nobody handles ends the process, logged`, async (t) => {
    const dir = tmpDir("capsul-crash-");
    t.teardown(() => fs.rmSync(dir, { recursive: true, force: true }));
    const hub = spawnCli(t, "hub", ["hub", "-c", hubYaml(dir)], { env: faultEnv(dir, fault) });
    const ready = await hub.waitLine(READY_RE);
    await crashAndCheck(t, hub, fault);
    t.equal(await probePort(Number(ready[1])), "ECONNREFUSED", "its listeners are gone with it");
  });
}

t.test("cog: a thrown exception ends the process, logged", async (t) => {
  const dir = tmpDir("capsul-crash-");
  t.teardown(() => fs.rmSync(dir, { recursive: true, force: true }));
  const hub = spawnCli(t, "hub", ["hub", "-c", hubYaml(dir)]);
  const tunnel = Number((await hub.waitLine(READY_RE))[3]);
  const cogYaml = writeYaml(path.join(dir, "cog.yaml"), { cog: { data_dir: path.join(dir, "cog"), routes: [], listen: { admin: "127.0.0.1:0" } } });
  const inv = JSON.parse((await runCli(["hub", "invite", "home1", "--json", "-c", path.join(dir, "hub.yaml")])).stdout) as { token: string; ca_fingerprint: string };
  const en = await runCli(["cog", "enroll", "--hub", `127.0.0.1:${tunnel}`, "--token", inv.token, "--ca-fingerprint", inv.ca_fingerprint, "-c", cogYaml]);
  t.equal(en.code, 0, en.stderr);
  const cog = spawnCli(t, "cog", ["cog", "-c", cogYaml], { env: faultEnv(dir, "throw") });
  await cog.waitLine(CONNECTED_RE);
  await crashAndCheck(t, cog, "throw");
  t.ok(hub.alive, "the hub lives on; the cog's tunnel just drops");
  await hub.stop();
  t.equal(hub.exit?.code, 0);
});

t.test("SIGHUP (systemctl reload) is no crash: the hub reloads and keeps serving", async (t) => {
  const dir = tmpDir("capsul-crash-");
  t.teardown(() => fs.rmSync(dir, { recursive: true, force: true }));
  const hub = spawnCli(t, "hub", ["hub", "-c", hubYaml(dir)]);
  const ready = await hub.waitLine(READY_RE);
  hub.kill("SIGHUP");
  await hub.waitLine(/INFO .*configuration reloaded: nothing changed/);
  t.ok(hub.alive, "still running");
  t.equal(await probePort(Number(ready[1])), "connected", "still listening");
  await hub.stop();
  t.same(hub.exit, { code: 0, signal: null }, "and SIGTERM still stops it cleanly");
});
