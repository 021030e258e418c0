/**
 * `capsul config check [-c FILE]` as a real process: exit 0 and what it checked for a
 * valid file, exit 2 and the one-line error `capsul hub` would print for a bad one.
 */
import t from "tap";
import fs from "node:fs";
import path from "node:path";
import { lines, REPO, runCli } from "./helpers/procs.js";
import { tmpDir } from "./helpers/cluster.js";

const fixtures = path.join(REPO, "test", "fixtures", "config");

t.test("a valid file: exit 0, the sections it checked", async (t) => {
  const example = path.join(REPO, "capsul.yaml.example");
  const r = await runCli(["config", "check", "-c", example]);
  t.equal(r.code, 0, r.stderr);
  t.equal(r.stderr, "");
  const out = lines(r.stdout);
  t.equal(out[0], `${example}: valid (hub, cog, cog.provisioner)`);
  t.match(out[1], /^ {2}hub: domain hub\.example\.net; tls 0\.0\.0\.0:443, http 0\.0\.0\.0:80, tunnel 0\.0\.0\.0:7443; 1 cog grant\(s\) in this file; data_dir \/var\/lib\/capsul\/hub$/);
  t.match(out[2], /^ {2}cog: 4 route\(s\); hub hub\.example\.net:7443; data_dir \/var\/lib\/capsul\/cog$/);
  t.match(out[3], /^ {2}cog\.provisioner: API 127\.0\.0\.1:7480; \d+ size\(s\); accel auto; data_dir /);
  t.equal(out.length, 4);

  const cogOnly = path.join(fixtures, "valid", "cog-minimal.yaml");
  const c = await runCli(["config", "check", "-c", cogOnly, "--json"]);
  t.equal(c.code, 0, c.stderr);
  t.same(JSON.parse(c.stdout), { file: cogOnly, valid: true, sections: ["cog"] });

  // Without -c: ./capsul.yaml, as `capsul hub` looks.
  const dir = tmpDir("capsul-check-");
  t.teardown(() => fs.rmSync(dir, { recursive: true, force: true }));
  fs.copyFileSync(path.join(fixtures, "valid", "hub-minimal.yaml"), path.join(dir, "capsul.yaml"));
  const d = await runCli(["config", "check"], { cwd: dir });
  t.equal(d.code, 0, d.stderr);
  t.match(d.stdout, /^capsul\.yaml: valid \(hub\)$/m);
});

t.test("bad files: exit 2 and the start-up error line", async (t) => {
  const bad = ["bad-duration.yaml", "unknown-key-suggest.yaml", "yaml-syntax.yaml", "grant-overlap.yaml", "shutdown-grace-too-long.yaml", "listen-collision.yaml"];
  for (const name of bad) {
    const file = path.join(fixtures, "invalid", name);
    const expect = /^# expect: (.+)$/.exec(fs.readFileSync(file, "utf8").split("\n")[0]!)![1];
    const r = await runCli(["config", "check", "-c", file]);
    t.equal(r.code, 2, `${name}: exit 2`);
    t.equal(r.stdout, "", `${name}: nothing on stdout`);
    t.equal(r.stderr, `capsul: config error: ${file}: ${expect}\n`, `${name}: one line naming the file and key`);
    // The same line `capsul hub` / `capsul cog` prints when it refuses to start.
    const role = /^(\s*#.*\n)*hub:/m.test(fs.readFileSync(file, "utf8")) ? "hub" : "cog";
    const start = await runCli([role, "-c", file]);
    t.equal(start.code, 2);
    t.equal(start.stderr, r.stderr, `${name}: capsul ${role} says the same`);
  }
  const missing = path.join(fixtures, "no-such.yaml");
  const m = await runCli(["config", "check", "-c", missing]);
  t.equal(m.code, 2);
  t.equal(m.stderr, `capsul: config error: ${missing}: cannot read config: no such file\n`);
});
