/**
 * capsul's launcher runs node with the heap flags the data path is tuned for
 * (cli/runtime.ts): the shebang of dist/cli/main.js and `npm start` carry them, a
 * hub started through the launcher really has them, and one started as plain
 * `node main.js` says, once, that it lacks them.
 */
import fs from "node:fs";
import os from "node:os";
import path from "node:path";
import t from "tap";
import { missingHeapFlags, NODE_HEAP_FLAGS } from "../cli/runtime.js";
import { CLI, REPO, spawnCli, writeYaml } from "./helpers/procs.js";

const HINT_RE = /node was started without --initial-old-space-size=\d+/;
const READY_RE = /hub ready tls=\d+/;

t.test("missingHeapFlags compares flag names, not values", async (t) => {
  t.same(missingHeapFlags([]), [...NODE_HEAP_FLAGS]);
  t.same(missingHeapFlags([...NODE_HEAP_FLAGS]), []);
  t.same(missingHeapFlags(["--initial-old-space-size=128"]), [], "another value is the operator's choice");
  t.same(missingHeapFlags(["--initial_old_space_size=64"]), [], "V8 accepts underscores too");
  t.same(missingHeapFlags(["--max-old-space-size=64"]), [...NODE_HEAP_FLAGS]);
});

t.test("the shebang and npm start carry exactly NODE_HEAP_FLAGS", async (t) => {
  const shebang = `#!/usr/bin/env -S node ${NODE_HEAP_FLAGS.join(" ")}`;
  t.equal(fs.readFileSync(path.join(REPO, "cli", "main.ts"), "utf8").split("\n")[0], shebang);
  t.equal(fs.readFileSync(CLI, "utf8").split("\n")[0], shebang, "tsc kept the shebang");
  t.ok(fs.statSync(CLI).mode & 0o100, "npm run build makes dist/cli/main.js executable");
  const pkg = JSON.parse(fs.readFileSync(path.join(REPO, "package.json"), "utf8")) as { scripts: Record<string, string>; bin: Record<string, string> };
  t.equal(pkg.scripts.start, `node ${NODE_HEAP_FLAGS.join(" ")} dist/cli/main.js demo`);
  t.equal(pkg.bin.capsul, "dist/cli/main.js");
});

function hubYaml(dir: string): string {
  return writeYaml(path.join(dir, "capsul.yaml"), {
    hub: { data_dir: path.join(dir, "data"), domain: "capsul.test", listen: { tls: "127.0.0.1:0", http: "127.0.0.1:0", tunnel: "127.0.0.1:0", admin: "127.0.0.1:0" } },
  });
}

t.test("a hub started through the launcher runs node with the flags and no hint", async (t) => {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), "capsul-test-"));
  t.teardown(() => fs.rmSync(dir, { recursive: true, force: true }));
  const hub = spawnCli(t, "hub", ["hub", "-c", hubYaml(dir)], { launcher: true });
  await hub.waitLine(READY_RE);
  // env -S execs node in place, so the pid we spawned is node itself.
  const argv = fs.readFileSync(`/proc/${hub.pid}/cmdline`, "utf8").split("\0");
  t.equal(path.basename(argv[0]!), "node");
  for (const f of NODE_HEAP_FLAGS) t.ok(argv.includes(f), `node runs with ${f}: ${argv.join(" ")}`);
  await hub.stop();
  t.same(hub.matching(HINT_RE), [], "no hint");
  t.equal(hub.exit?.code, 0);
});

t.test("a hub started as plain `node main.js` says which flags it lacks", async (t) => {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), "capsul-test-"));
  t.teardown(() => fs.rmSync(dir, { recursive: true, force: true }));
  const hub = spawnCli(t, "hub", ["hub", "-c", hubYaml(dir)]);
  await hub.waitLine(READY_RE);
  const hint = await hub.waitLine(HINT_RE);
  t.match(hint.input, /node --initial-old-space-size=64 dist\/cli\/main\.js/, "and how to start it");
  await hub.stop();
  t.equal(hub.matching(HINT_RE).length, 1, "once");
});
