/**
 * `npm i -g` of the package gives a working `capsul`: `npm pack` of this checkout,
 * then a global install of the tarball into a temporary prefix, then the installed
 * `capsul` run as an operator would (PATH lookup of the bin link, its shebang, the
 * heap flags of cli/runtime.ts, --version from package.json, a hub that starts).
 *
 * Two shortcuts, both for time, neither for what is checked: `npm pack
 * --ignore-scripts` packs the dist/ that `npm test` just built (prepack would delete
 * dist/ under the other test files running beside this one), and the install skips
 * install scripts, so better-sqlite3's native module is copied from this checkout
 * (same version; compiling it takes ~3 minutes here) or rebuilt when versions differ.
 * A full install with scripts, from the tarball and from a git clone, is in the
 * README and was run by hand.
 */
import t from "tap";
import { execFile } from "node:child_process";
import fs from "node:fs";
import path from "node:path";
import { NODE_HEAP_FLAGS } from "../cli/runtime.js";
import { tmpDir } from "./helpers/cluster.js";
import { childEnv, REPO, spawnCli, writeYaml, type RunResult } from "./helpers/procs.js";

/** npm talks to the registry for metadata it has not cached yet; the install is small (62 packages). */
const NPM_TIMEOUT_MS = 180_000;
/** Compiling better-sqlite3 when the installed version differs from this checkout's. */
const NATIVE_REBUILD_TIMEOUT_MS = 600_000;
const PKG = JSON.parse(fs.readFileSync(path.join(REPO, "package.json"), "utf8")) as { name: string; version: string };

function npm(args: string[], cwd: string, timeoutMs = NPM_TIMEOUT_MS): Promise<RunResult> {
  return new Promise((resolve, reject) => {
    const child = execFile("npm", args, { cwd, env: childEnv(), timeout: timeoutMs, killSignal: "SIGKILL", maxBuffer: 16 * 1024 * 1024 }, (err, stdout, stderr) => {
      if (err && child.exitCode === null && child.signalCode === null) { reject(err); return; }
      resolve({ code: child.exitCode, signal: child.signalCode, stdout: String(stdout), stderr: String(stderr) });
    });
  });
}

t.test("npm pack, npm i -g of the tarball, and the installed capsul runs", { timeout: NATIVE_REBUILD_TIMEOUT_MS + 2 * NPM_TIMEOUT_MS }, async (t) => {
  const dir = tmpDir("capsul-pkg-");
  t.teardown(() => fs.rmSync(dir, { recursive: true, force: true }));

  const pack = await npm(["pack", "--ignore-scripts", "--json", "--pack-destination", dir], REPO);
  t.equal(pack.code, 0, pack.stderr);
  const [packed] = JSON.parse(pack.stdout) as Array<{ filename: string; files: Array<{ path: string; mode: number }> }>;
  const files = new Map(packed!.files.map((f) => [f.path, f.mode]));
  for (const f of ["package.json", "README.md", "capsul.yaml.example", "deploy/capsul-hub.service", "deploy/capsul-cog.service",
    "dist/cli/main.js", "dist/gateway/hub.js", "dist/tunnel-client/cog.js", "dist/provisioner/index.js"]) {
    t.ok(files.has(f), `the tarball holds ${f}`);
  }
  t.ok((files.get("dist/cli/main.js") ?? 0) & 0o111, "dist/cli/main.js is executable in the tarball");
  const stray = [...files.keys()].filter((f) => !/^(dist|deploy)\//.test(f) && !["package.json", "README.md", "capsul.yaml.example"].includes(f));
  t.same(stray, [], "no sources, tests or tools outside dist/ and deploy/");
  t.same([...files.keys()].filter((f) => f.endsWith(".map") || f.startsWith("dist/bench/") || f.startsWith("dist/test/")), [],
    "no source maps (their sources are not shipped) and no benchmarks");

  const prefix = path.join(dir, "prefix");
  const inst = await npm(["install", "--global", "--prefix", prefix, "--prefer-offline", "--ignore-scripts", "--no-audit", "--no-fund", path.join(dir, packed!.filename)], dir);
  t.equal(inst.code, 0, inst.stderr);
  const pkgDir = path.join(prefix, "lib", "node_modules", PKG.name);
  const bin = path.join(prefix, "bin", "capsul");
  t.equal(fs.readlinkSync(bin), `../lib/node_modules/${PKG.name}/dist/cli/main.js`, "npm linked the bin to dist/cli/main.js");
  t.equal(fs.readFileSync(bin, "utf8").split("\n")[0], `#!/usr/bin/env -S node ${NODE_HEAP_FLAGS.join(" ")}`, "the launcher's shebang survived the install");

  const sqliteVersion = (root: string): string => (JSON.parse(fs.readFileSync(path.join(root, "node_modules", "better-sqlite3", "package.json"), "utf8")) as { version: string }).version;
  if (sqliteVersion(pkgDir) === sqliteVersion(REPO)) {
    const rel = path.join("node_modules", "better-sqlite3", "build", "Release", "better_sqlite3.node");
    fs.mkdirSync(path.dirname(path.join(pkgDir, rel)), { recursive: true });
    fs.copyFileSync(path.join(REPO, rel), path.join(pkgDir, rel));
  } else {
    t.comment(`better-sqlite3 ${sqliteVersion(pkgDir)} installed, ${sqliteVersion(REPO)} here: compiling it`);
    const rebuilt = await npm(["rebuild", "better-sqlite3"], pkgDir, NATIVE_REBUILD_TIMEOUT_MS);
    t.equal(rebuilt.code, 0, rebuilt.stderr);
  }

  // As an operator runs it: `capsul` found on PATH, through npm's bin link.
  const env = childEnv({ PATH: `${path.join(prefix, "bin")}:${process.env.PATH}` });
  const run = (args: string[]): Promise<RunResult> => new Promise((resolve, reject) => {
    const child = execFile("capsul", args, { env, cwd: dir, timeout: 60_000 }, (err, stdout, stderr) => {
      if (err && child.exitCode === null) { reject(err); return; }
      resolve({ code: child.exitCode, signal: child.signalCode, stdout: String(stdout), stderr: String(stderr) });
    });
  });
  const version = await run(["--version"]);
  t.same([version.code, version.stdout], [0, `${PKG.version}\n`], "capsul --version prints package.json's version");
  // Read at run time, not copied at build time: bump the installed package.json and ask again.
  const installedPkg = path.join(pkgDir, "package.json");
  fs.writeFileSync(installedPkg, fs.readFileSync(installedPkg, "utf8").replace(`"version": "${PKG.version}"`, `"version": "${PKG.version}-bumped.1"`));
  const bumped = await run(["--version"]);
  t.equal(bumped.stdout, `${PKG.version}-bumped.1\n`, "capsul --version follows the installed package.json");
  const help = await run(["hub", "--help"]);
  t.equal(help.code, 0, help.stderr);
  t.match(help.stdout, /^Usage: capsul hub \[options\] \[command\]/);
  t.match(help.stdout, /invite \[options\] <name>/);

  // The units ship with it, unchanged.
  for (const u of ["capsul-hub.service", "capsul-cog.service"]) {
    t.equal(fs.readFileSync(path.join(pkgDir, "deploy", u), "utf8"), fs.readFileSync(path.join(REPO, "deploy", u), "utf8"), `deploy/${u} is installed`);
  }

  // A hub from the installed copy: node runs with the heap flags, and the code is the installed one.
  const yaml = writeYaml(path.join(dir, "capsul.yaml"), {
    hub: { data_dir: path.join(dir, "data"), domain: "capsul.test", listen: { tls: "127.0.0.1:0", http: "127.0.0.1:0", tunnel: "127.0.0.1:0", admin: "127.0.0.1:0" } },
  });
  const hub = spawnCli(t, "installed-hub", ["hub", "-c", yaml], { bin, env });
  await hub.waitLine(/hub ready tls=\d+/);
  const argv = fs.readFileSync(`/proc/${hub.pid}/cmdline`, "utf8").split("\0");
  t.equal(path.basename(argv[0]!), "node");
  for (const f of NODE_HEAP_FLAGS) t.ok(argv.includes(f), `node runs with ${f}: ${argv.join(" ")}`);
  const maps = fs.readFileSync(`/proc/${hub.pid}/maps`, "utf8");
  t.ok(maps.includes(path.join(fs.realpathSync(pkgDir), "node_modules", "better-sqlite3")), "it loaded the installed copy's SQLite");
  t.same(hub.matching(/node was started without/), [], "and does not say it lacks them");
  await hub.stop();
  t.same(hub.exit, { code: 0, signal: null });

  // `npm i -g` from a clone or a git URL runs `prepare` in it (npm installs its dev dependencies
  // for that), which builds dist/: run by hand, see the README (too slow for this suite).
  const scripts = (JSON.parse(fs.readFileSync(path.join(REPO, "package.json"), "utf8")) as { scripts: Record<string, string> }).scripts;
  t.equal(scripts.prepare, "npm run build", "prepare builds dist/ for installs from git");
});
