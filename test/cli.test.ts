/**
 * The `capsul` command line as a user meets it, run as a real child process:
 * help texts, usage errors, config errors (one line naming the key, exit 2),
 * runtime errors (exit 1), --verbose, and the hub's cog management commands.
 */
import t from "tap";
import fs from "node:fs";
import path from "node:path";
import { tmpDir } from "./helpers/cluster.js";
import { lines, mapLimit, runCli, writeYaml } from "./helpers/procs.js";

/** CLI runs at once in the table-driven tests. */
const PARALLEL = 3;

const FIXTURES = path.join(path.dirname(new URL(import.meta.url).pathname), "fixtures", "cli");
const fixture = (name: string): string => path.join(FIXTURES, name);

t.test("--help of every command exits 0 and documents its options", async (t) => {
  const cases: Array<[string[], RegExp[]]> = [
    [["--help"], [/Usage: capsul/, /--verbose/, /\bdemo\b/, /\bhub\b/, /\bcog\b/]],
    [["demo", "--help"], [/Usage: capsul demo/, /--log-level <level>/, /--json/]],
    [["hub", "--help"], [/Usage: capsul hub/, /-c, --config <file>/, /invite/, /cogs/, /revoke/, /ports/, /grants/, /ungrant/, /domains/]],
    [["hub", "invite", "--help"], [/Usage: capsul hub invite \[options\] <name>/, /--hostname <pattern\.\.\.>/, /--tcp-ports <range\.\.\.>/, /--ttl <duration>/, /--json/, /-c, --config <file>/]],
    [["hub", "cogs", "--help"], [/Usage: capsul hub cogs/, /--json/, /-c, --config <file>/]],
    [["hub", "revoke", "--help"], [/Usage: capsul hub revoke \[options\] <name>/, /--json/, /-c, --config <file>/]],
    [["hub", "ports", "--help"], [/Usage: capsul hub ports \[options\] \[command\]/, /--json/, /-c, --config <file>/, /release \[options\] <port>/]],
    [["hub", "ports", "release", "--help"], [/Usage: capsul hub ports release \[options\] <port>/, /--force/, /--json/, /-c, --config <file>/]],
    [["hub", "grants", "--help"], [/Usage: capsul hub grants/, /--json/, /-c, --config <file>/]],
    [["hub", "ungrant", "--help"], [/Usage: capsul hub ungrant \[options\] <name> <grant>/, /--json/, /-c, --config <file>/]],
    [["hub", "domains", "--help"], [/Usage: capsul hub domains \[options\] \[command\]/, /--json/, /-c, --config <file>/, /remove \[options\] <name>/]],
    [["hub", "domains", "remove", "--help"], [/Usage: capsul hub domains remove \[options\] <name>/, /--cog <cog>/, /--json/, /-c, --config <file>/]],
    [["cog", "--help"], [/Usage: capsul cog/, /-c, --config <file>/, /enroll/]],
    [["cog", "enroll", "--help"], [/Usage: capsul cog enroll/, /--hub <host:port>/, /--token <token>/, /--ca-fingerprint <sha256:hex>/, /--data-dir <dir>/, /--force/, /--json/]],
  ];
  const results = await mapLimit(cases, PARALLEL, ([args]) => runCli(args));
  for (const [i, [args, want]] of cases.entries()) {
    const r = results[i]!;
    t.equal(r.code, 0, `capsul ${args.join(" ")} exits 0`);
    for (const re of want) t.match(r.stdout, re, `capsul ${args.join(" ")} mentions ${re}`);
    t.equal(r.stderr, "", `capsul ${args.join(" ")} prints nothing on stderr`);
  }
});

t.test("usage errors exit 2 with one line", async (t) => {
  const cases: Array<[string[], RegExp]> = [
    [["bogus"], /^error: unknown command 'bogus'/],
    [["hub", "--no-such-option"], /^error: unknown option '--no-such-option'/],
    [["cog", "enroll", "--hub", "127.0.0.1:7443", "--ca-fingerprint", "sha256:00"], /^error: required option '--token <token>' not specified/],
    [["hub", "invite"], /^error: missing required argument 'name'/],
    [["hub", "invite", "bad_NAME"], /^capsul: config error: not a cog name: "bad_NAME"/],
    [["hub", "invite", "Home1"], /^capsul: config error: not a cog name: "Home1"/],
    [["hub", "ports", "release"], /^error: missing required argument 'port'/],
    [["hub", "ports", "release", "20000-20001"], /^capsul: config error: <port>: one port, not a range: "20000-20001"/],
    [["hub", "domains", "remove"], /^error: missing required argument 'name'/],
    [["hub", "domains", "remove", "not a name"], /^capsul: config error: <name>: not a hostname: "not a name"/],
    [["hub", "domains", "remove", "blog.example.net", "--cog", "Bad_Cog"], /^capsul: config error: --cog: not a cog name: "Bad_Cog"/],
  ];
  const results = await mapLimit(cases, PARALLEL, ([args]) => runCli(args));
  for (const [i, [args, re]] of cases.entries()) {
    const r = results[i]!;
    t.equal(r.code, 2, `capsul ${args.join(" ")} exits 2`);
    const errLines = lines(r.stderr);
    t.equal(errLines.length, 1, `capsul ${args.join(" ")}: exactly one line on stderr: ${JSON.stringify(r.stderr)}`);
    t.match(errLines[0] ?? "", re);
    t.equal(r.stdout, "", "nothing on stdout");
  }
});

t.test("each bad config file: exit 2, exactly one stderr line naming the file and the key", async (t) => {
  const cases: Array<{ file: string; cmds: string[][]; want: RegExp }> = [
    { file: "unknown-key.yaml", cmds: [["hub"], ["cog"]], want: /hub\.limits\.grace_period: unknown key/ },
    { file: "bad-hostname.yaml", cmds: [["cog"], ["hub"]], want: /cog\.routes\[0\]\.hostname: not a hostname pattern: "www_site\.\.example\.org"/ },
    { file: "bad-duration.yaml", cmds: [["cog"], ["hub"]], want: /cog\.reconnect\.max_delay: not a duration .*"soon"/ },
    { file: "yaml-syntax.yaml", cmds: [["hub"], ["cog"]], want: /YAML syntax error at line \d+, column \d+/ },
    { file: "empty.yaml", cmds: [["hub"], ["cog"]], want: /file is empty \(it needs a hub: or cog: section\)/ },
    { file: "cog-route-no-target.yaml", cmds: [["cog"], ["hub"]], want: /cog\.routes\[0\]\.target: required/ },
    { file: "hub-no-domain.yaml", cmds: [["hub"], ["cog"]], want: /hub\.domain: required/ },
    { file: "bad-port.yaml", cmds: [["hub"]], want: /hub\.listen\.tunnel: port out of range .*70000/ },
    // Valid, but for the other role: still a configuration error, never a start.
    { file: "hub-only.yaml", cmds: [["cog"]], want: /has no cog: section/ },
    { file: "no-such-file.yaml", cmds: [["hub"], ["cog"]], want: /no-such-file\.yaml: cannot read config: no such file/ },
  ];
  const runs = cases.flatMap(({ file, cmds }) => cmds.map((cmd) => ({ file, cmd })));
  const results = await mapLimit(runs, PARALLEL, ({ file, cmd }) => runCli([...cmd, "-c", fixture(file)]));
  for (const { file, cmds, want } of cases) {
    const p = fixture(file);
    if (file !== "no-such-file.yaml") t.ok(fs.existsSync(p), `fixture ${file} exists`);
    else t.notOk(fs.existsSync(p), "the missing file is missing");
    for (const cmd of cmds) {
      const r = results[runs.findIndex((x) => x.file === file && x.cmd === cmd)]!;
      const label = `capsul ${cmd.join(" ")} -c ${file}`;
      t.equal(r.code, 2, `${label} exits 2`);
      const errLines = lines(r.stderr);
      t.equal(errLines.length, 1, `${label}: one line on stderr: ${JSON.stringify(r.stderr)}`);
      t.match(errLines[0] ?? "", /^capsul: config error: /, label);
      t.match(errLines[0] ?? "", want, label);
      if (file !== "hub-only.yaml") t.match(errLines[0] ?? "", file, `${label} names the file`);
      t.equal(r.stdout, "", `${label}: nothing on stdout`);
    }
  }
  t.same(fs.readdirSync(FIXTURES).filter((f) => !f.endsWith(".yaml")), [], "no data dir was created next to the fixtures");
});

t.test("--verbose adds a stack trace to the one line", async (t) => {
  const r = await runCli(["hub", "-c", fixture("unknown-key.yaml"), "--verbose"]);
  t.equal(r.code, 2);
  const errLines = lines(r.stderr);
  t.match(errLines[0] ?? "", /^capsul: config error: .*hub\.limits\.grace_period: unknown key/);
  t.ok(errLines.length > 2, `more than the one line (${errLines.length})`);
  t.match(errLines[1] ?? "", /^ConfigError: /, "the error's name and message");
  t.ok(errLines.slice(2).some((l) => /^\s+at .*config/.test(l)), "stack frames");
  const quiet = await runCli(["hub", "-c", fixture("unknown-key.yaml")]);
  t.notMatch(quiet.stderr, /\bat /, "no stack without --verbose");
});

t.test("capsul cog without an enrollment: exit 1, one line that says to enroll", async (t) => {
  const dir = tmpDir("capsul-cli-");
  t.teardown(() => fs.rmSync(dir, { recursive: true, force: true }));
  const yaml = writeYaml(path.join(dir, "capsul.yaml"), { cog: { data_dir: path.join(dir, "cog") } });
  const r = await runCli(["cog", "-c", yaml]);
  t.equal(r.code, 1);
  const errLines = lines(r.stderr);
  t.equal(errLines.length, 1, JSON.stringify(r.stderr));
  t.match(errLines[0] ?? "", /^capsul: this cog is not enrolled .*run capsul cog enroll/);
  // The default config path (./capsul.yaml) is found too.
  const cwd = await runCli(["cog"], { cwd: dir });
  t.equal(cwd.code, 1);
  t.match(cwd.stderr, /not enrolled.*capsul cog enroll/);
  t.equal(lines(cwd.stderr).length, 1);
});

t.test("hub invite / cogs / revoke against a hub data dir", async (t) => {
  const dir = tmpDir("capsul-cli-");
  t.teardown(() => fs.rmSync(dir, { recursive: true, force: true }));
  const yaml = writeYaml(path.join(dir, "hub.yaml"), {
    hub: { data_dir: path.join(dir, "hub"), domain: "hub.example.net", listen: { tunnel: "0.0.0.0:7443", admin: "127.0.0.1:0" } },
  });

  const empty = await runCli(["hub", "cogs", "-c", yaml]);
  t.equal(empty.code, 0, empty.stderr);
  t.match(empty.stdout, /No cogs yet/);

  const text = await runCli(["hub", "invite", "home1", "-c", yaml]);
  t.equal(text.code, 0, text.stderr);
  t.match(text.stdout, /Invite for cog "home1", valid until \S+ and usable once/);
  t.match(text.stdout, /^ {2}capsul cog enroll --hub hub\.example\.net:7443 --token \S+ --ca-fingerprint sha256:[0-9a-f]{64}$/m);

  const json = await runCli(["hub", "invite", "home2", "--json", "--ttl", "30m", "--hostname", "blog.example.org", "-c", yaml]);
  t.equal(json.code, 0, json.stderr);
  const inv = JSON.parse(json.stdout) as { cog: string; token: string; ca_fingerprint: string; expires_at: string; command: string };
  t.equal(inv.cog, "home2");
  t.match(inv.ca_fingerprint, /^sha256:[0-9a-f]{64}$/);
  const ttl = Date.parse(inv.expires_at) - Date.now();
  t.ok(ttl > 0 && ttl <= 30 * 60_000, "--ttl 30m sets the expiry");
  t.equal(inv.command, `capsul cog enroll --hub hub.example.net:7443 --token ${inv.token} --ca-fingerprint ${inv.ca_fingerprint}`);

  const list = await runCli(["hub", "cogs", "-c", yaml]);
  t.equal(list.code, 0, list.stderr);
  const rows = lines(list.stdout);
  t.match(rows[0] ?? "", /^NAME\s+STATUS\s+LAST SEEN\s+ENDPOINTS\s+REMOTE\s+CERT EXPIRES\s+ROUTES$/);
  t.match(list.stdout, /^home1\s+invited\s+never\s/m, "an invited cog is listed");
  t.match(list.stdout, /^home2\s+invited\s/m);

  const rv = await runCli(["hub", "revoke", "home1", "-c", yaml]);
  t.equal(rv.code, 0, rv.stderr);
  const after = await runCli(["hub", "cogs", "--json", "-c", yaml]);
  const cogs = JSON.parse(after.stdout) as Array<{ name: string; status: string; revoked_at: string | null }>;
  t.same(cogs.map((c) => [c.name, c.status]), [["home1", "revoked"], ["home2", "invited"]]);
  t.ok(Date.parse(cogs[0]!.revoked_at ?? "") <= Date.now(), `revoked_at is an instant: ${cogs[0]!.revoked_at}`);
  t.equal(cogs[1]!.revoked_at, null);

  const unknown = await runCli(["hub", "revoke", "nobody", "-c", yaml]);
  t.equal(unknown.code, 2);
  t.equal(lines(unknown.stderr).length, 1);
  t.match(unknown.stderr, /no cog named "nobody"/);

  const badTtl = await runCli(["hub", "invite", "home3", "--ttl", "forever", "-c", yaml]);
  t.equal(badTtl.code, 2);
  t.equal(lines(badTtl.stderr).length, 1);
  t.match(badTtl.stderr, /--ttl/);
});
