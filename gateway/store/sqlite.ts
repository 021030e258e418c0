/**
 * The hub's state in SQLite: `<data_dir>/hub.db` in WAL mode, shared by the
 * hub and `capsul hub …` commands of one machine (each its own connection;
 * SQLite's file locks order their writes, busy_timeout makes a writer wait).
 *
 * better-sqlite3 is synchronous; the store's interface is async (for
 * PostgreSQL), so a transaction body may await between its statements. On
 * one connection that would let the process's other calls run inside the
 * open transaction: while one is open, every other call waits for it
 * (`FileGate`), and the body gets an executor that skips the wait. The gate
 * is per database file, not per connection: a second connection of the same
 * process (`capsul demo` inviting while its hub runs, tests) meeting the open
 * transaction in SQLite's busy wait would block the event loop that the
 * transaction needs to finish, for busy_timeout, and then fail.
 * Statements are prepared once per SQL text and kept.
 */
import Database from "better-sqlite3";
import fs from "node:fs";
import path from "node:path";
import type { Logger } from "../../lib/log.js";
import { RevocationFollower } from "./follow.js";
import { migrate, schemaVersion } from "./migrate.js";
import { StoreQueries, type Executor } from "./queries.js";
import { SCHEMA_VERSION } from "./schema.js";
import type { HubStore, RevocationWatch, TxLock } from "./types.js";

export const SQLITE_FILE = "hub.db";

type Params = readonly unknown[];

/** This process's connections to one database file. */
class FileGate {
  /**
   * Settles when the open transaction ends; null when none is open. A call waits while it is
   * set and then runs at once: an await between the check and the statement would let a
   * transaction begin in between, and the statement would run (and roll back) inside it.
   */
  lock: Promise<void> | null = null;
  connections = 0;
}
const gates = new Map<string, FileGate>();

class SqliteExecutor implements Executor {
  readonly dialect = "sqlite";
  readonly inTransaction = false;
  private readonly stmts = new Map<string, Database.Statement>();
  /** What a transaction body runs on: the same connection, without waiting for the gate. */
  private readonly inside: Executor;

  constructor(readonly db: Database.Database, private readonly gate: FileGate) {
    const self = this;
    this.inside = {
      dialect: "sqlite",
      inTransaction: true,
      all: async (sql, p) => self.stmt(sql).all(...(p ?? [])) as never,
      get: async (sql, p) => self.stmt(sql).get(...(p ?? [])) as never,
      run: async (sql, p) => self.stmt(sql).run(...(p ?? [])).changes,
      exec: async (sql) => { self.db.exec(sql); },
      transaction: (_locks, fn) => fn(self.inside),
      notify: async () => {},
    };
  }

  private stmt(sql: string): Database.Statement {
    let s = this.stmts.get(sql);
    if (!s) {
      s = this.db.prepare(sql);
      this.stmts.set(sql, s);
    }
    return s;
  }

  async all<T>(sql: string, p: Params = []): Promise<T[]> {
    while (this.gate.lock) await this.gate.lock; // then at once, with no await between: see `lock`
    return this.stmt(sql).all(...p) as T[];
  }

  async get<T>(sql: string, p: Params = []): Promise<T | undefined> {
    while (this.gate.lock) await this.gate.lock; // then at once, with no await between: see `lock`
    return this.stmt(sql).get(...p) as T | undefined;
  }

  async run(sql: string, p: Params = []): Promise<number> {
    while (this.gate.lock) await this.gate.lock; // then at once, with no await between: see `lock`
    return this.stmt(sql).run(...p).changes;
  }

  async exec(sql: string): Promise<void> {
    while (this.gate.lock) await this.gate.lock; // then at once, with no await between: see `lock`
    this.db.exec(sql);
  }

  /** BEGIN IMMEDIATE takes SQLite's one write lock at once: every lock of TxLock is held. */
  async transaction<T>(_locks: readonly TxLock[], fn: (x: Executor) => Promise<T>): Promise<T> {
    while (this.gate.lock) await this.gate.lock;
    let release!: () => void;
    this.gate.lock = new Promise<void>((r) => { release = r; });
    try {
      this.db.exec("BEGIN IMMEDIATE");
      try {
        const out = await fn(this.inside);
        this.db.exec("COMMIT");
        return out;
      } catch (err) {
        if (this.db.inTransaction) this.db.exec("ROLLBACK");
        throw err;
      }
    } finally {
      this.gate.lock = null;
      release();
    }
  }

  async notify(): Promise<void> {}
}

export class SqliteHubStore extends StoreQueries implements HubStore {
  readonly dialect = "sqlite";
  readonly location: string;
  /** This process's revocation watches: a revoke written here does not change our own data_version. */
  private readonly wakers = new Set<() => void>();

  private constructor(
    readonly db: Database.Database, x: SqliteExecutor, file: string,
    private readonly gateKey: string, private readonly log: Logger,
  ) {
    super(x);
    this.location = file;
  }

  static async open(dataDir: string, opts: { busyTimeoutMs: number }, log: Logger): Promise<SqliteHubStore> {
    fs.mkdirSync(dataDir, { recursive: true, mode: 0o700 });
    const file = path.join(dataDir, SQLITE_FILE);
    const db = new Database(file);
    const gateKey = fs.realpathSync(file);
    const gate = gates.get(gateKey) ?? new FileGate();
    gates.set(gateKey, gate);
    gate.connections++;
    try {
      // busy_timeout first: switching a fresh file to WAL takes a lock that another process
      // opening it at that moment holds, and without the timeout that fails at once
      // ("database is locked": a hub worker died so at its first start).
      db.pragma(`busy_timeout = ${Math.round(opts.busyTimeoutMs)}`);
      db.pragma("journal_mode = WAL");
      db.pragma("foreign_keys = ON");
      const x = new SqliteExecutor(db, gate);
      if ((await schemaVersion(x)) !== SCHEMA_VERSION) {
        await x.transaction([], async (tx) => {
          await migrate(tx, file, async () => db.pragma("user_version", { simple: true }) as number);
          // A capsul from before the version table reads only this, and refuses a newer file.
          db.pragma(`user_version = ${SCHEMA_VERSION}`);
        });
      }
      return new SqliteHubStore(db, x, file, gateKey, log);
    } catch (err) {
      SqliteHubStore.leave(gateKey);
      db.close();
      throw err;
    }
  }

  private static leave(gateKey: string): void {
    const gate = gates.get(gateKey);
    if (gate && --gate.connections === 0) gates.delete(gateKey);
  }

  /** Changes whenever another connection (the CLI, another hub process) commits; cheap to poll. */
  dataVersion(): number {
    return this.db.pragma("data_version", { simple: true }) as number;
  }

  protected override afterRevoke(): void {
    for (const w of this.wakers) w();
  }

  async watchRevocations(onRevoked: (cogs: string[]) => void, pollIntervalMs: number): Promise<RevocationWatch> {
    const follower = new RevocationFollower(this, onRevoked,
      (err) => this.log.warn("could not read revocations; trying again", { error: err.message }), pollIntervalMs);
    // The version first: a revoke committed after it wakes the poll, one before it is in start()'s seq.
    let version = this.dataVersion();
    await follower.start();
    const timer = setInterval(() => {
      let v: number;
      try { v = this.dataVersion(); } catch { return; }
      if (v === version) return;
      version = v;
      follower.check();
    }, pollIntervalMs);
    timer.unref();
    const wake = (): void => follower.check();
    this.wakers.add(wake);
    return {
      close: async () => {
        clearInterval(timer);
        this.wakers.delete(wake);
        follower.close();
      },
    };
  }

  async close(): Promise<void> {
    if (!this.db.open) return;
    SqliteHubStore.leave(this.gateKey);
    this.db.close();
  }
}
