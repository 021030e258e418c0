/**
 * A throwaway PostgreSQL cluster for tests, from Debian's `postgresql`:
 * `initdb` + `pg_ctl` in a temp dir, listening only on a unix socket in that
 * dir (no port to collide with parallel test files), password auth
 * (scram-sha-256) so the hub's password handling is exercised for real.
 * PostgreSQL refuses to run as root: as root, the cluster runs as the
 * `postgres` user (created by the Debian package), else as `nobody`.
 * Start one per test file; `createDatabase()` gives each test its own.
 */
import { execFile } from "node:child_process";
import { randomBytes } from "node:crypto";
import fs from "node:fs";
import os from "node:os";
import path from "node:path";
import pg from "pg";
import type { Teardown } from "./procs.js";

/** initdb and pg_ctl: a PATH entry first, else the newest /usr/lib/postgresql/N/bin (Debian keeps them there). */
function pgBin(name: string): string {
  for (const dir of (process.env.PATH ?? "").split(":")) {
    const p = path.join(dir, name);
    if (dir && fs.existsSync(p)) return p;
  }
  const root = "/usr/lib/postgresql";
  const versions = fs.existsSync(root) ? fs.readdirSync(root).filter((v) => /^\d+$/.test(v)).sort((a, b) => Number(b) - Number(a)) : [];
  for (const v of versions) {
    const p = path.join(root, v, "bin", name);
    if (fs.existsSync(p)) return p;
  }
  throw new Error(`${name} not found: install Debian's postgresql (test/prereqs.sh does)`);
}

/** uid and gid of the user the server runs as, when we are root. */
function serverUser(): { uid: number; gid: number; name: string } | null {
  if (process.getuid?.() !== 0) return null;
  const passwd = fs.readFileSync("/etc/passwd", "utf8").split("\n").map((l) => l.split(":"));
  for (const name of ["postgres", "nobody"]) {
    const row = passwd.find((f) => f[0] === name);
    if (row) return { name, uid: Number(row[2]), gid: Number(row[3]) };
  }
  throw new Error("running as root and there is no postgres or nobody user to run PostgreSQL as");
}

function run(file: string, args: string[], opts: { uid?: number; gid?: number; cwd: string }): Promise<string> {
  return new Promise((resolve, reject) => {
    execFile(file, args, { ...opts, env: { PATH: process.env.PATH ?? "/usr/bin:/bin", LC_ALL: "C" }, timeout: 120_000 }, (err, stdout, stderr) => {
      if (err) reject(new Error(`${path.basename(file)} ${args.join(" ")} failed: ${err.message}\n${stderr}`));
      else resolve(String(stdout));
    });
  });
}

export interface PgCluster {
  /** The directory holding the server's socket (the URL's `?host=`). */
  socketDir: string;
  user: string;
  password: string;
  /** A file holding the password, for hub.store_password_file. */
  passwordFile: string;
  /** A new, empty database; returns the hub.store URL for it (no password in it). */
  createDatabase(): Promise<string>;
  /** A superuser connection to `database`, for what a test does behind the store's back. */
  admin(database: string): Promise<pg.Client>;
  /** The server's own log. */
  log(): string;
}

let databases = 0;

export async function startPostgres(t: Teardown): Promise<PgCluster> {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), "capsul-pg-"));
  const data = path.join(dir, "data");
  const logFile = path.join(dir, "server.log");
  const user = "capsul";
  const password = randomBytes(12).toString("hex");
  const passwordFile = path.join(dir, "password");
  fs.writeFileSync(passwordFile, password + "\n", { mode: 0o600 });
  const as = serverUser();
  if (as) {
    fs.chownSync(dir, as.uid, as.gid);
    fs.chownSync(passwordFile, as.uid, as.gid);
  }
  const ids = as ? { uid: as.uid, gid: as.gid } : {};
  let started = false;
  t.teardown(async () => {
    if (started) await run(pgBin("pg_ctl"), ["-D", data, "-m", "immediate", "-w", "stop"], { ...ids, cwd: dir }).catch(() => {});
    fs.rmSync(dir, { recursive: true, force: true });
  });
  await run(pgBin("initdb"), ["-D", data, "-U", user, `--pwfile=${passwordFile}`, "-A", "scram-sha-256", "-E", "UTF8", "--locale=C", "--no-sync"], { ...ids, cwd: dir });
  // Durability off (a test cluster), a socket in our dir only, room for several hubs' pools.
  const options = [
    "-c listen_addresses=''", `-c unix_socket_directories='${dir}'`, "-c fsync=off", "-c synchronous_commit=off",
    "-c full_page_writes=off", "-c max_connections=100", "-c shared_buffers=16MB",
  ].join(" ");
  await run(pgBin("pg_ctl"), ["-D", data, "-l", logFile, "-w", "-t", "60", "-o", options, "start"], { ...ids, cwd: dir });
  started = true;

  const admin = async (database: string): Promise<pg.Client> => {
    const c = new pg.Client({ host: dir, user, password, database });
    await c.connect();
    return c;
  };
  return {
    socketDir: dir, user, password, passwordFile,
    admin,
    async createDatabase(): Promise<string> {
      const name = `capsul_${process.pid}_${++databases}`;
      const c = await admin("postgres");
      try {
        await c.query(`CREATE DATABASE ${name}`);
      } finally {
        await c.end();
      }
      return `postgres://${user}@/${name}?host=${dir}`;
    },
    log: () => (fs.existsSync(logFile) ? fs.readFileSync(logFile, "utf8") : ""),
  };
}
