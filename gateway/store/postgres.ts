/**
 * The hub's state in PostgreSQL, shared by hubs on several machines (and the
 * `capsul hub …` commands run against it): a connection pool for queries, a
 * dedicated connection that LISTENs for revocations.
 *
 * What differs from SQLite, and only here: `?` placeholders become `$n`;
 * BIGINT comes back as a number, not a string; a transaction takes its
 * TxLocks as transaction-scoped advisory locks (SQLite's BEGIN IMMEDIATE
 * takes its one write lock instead), since READ COMMITTED alone would let
 * two hubs both see port 20001 free, or a revoke slip between a renewal's
 * check and its insert; a revoke NOTIFYs every hub on commit (SQLite's
 * watchers poll data_version). The password comes from a file or the
 * environment, lives in a Masked, and reaches pg only through a callback.
 */
import fs from "node:fs";
import pg from "pg";
import type { HubStoreConfig, PostgresTarget } from "../../config/types.js";
import { ConfigError, RuntimeError } from "../../lib/errors.js";
import { Masked, type Logger } from "../../lib/log.js";
import { RevocationFollower } from "./follow.js";
import { migrate, schemaVersion } from "./migrate.js";
import { REVOCATION_CHANNEL, StoreQueries, type Executor } from "./queries.js";
import { SCHEMA_VERSION } from "./schema.js";
import { TX_LOCK_ORDER, type HubStore, type RevocationWatch, type TxLock } from "./types.js";

/** The environment variable read for the password when hub.store_password_file is not set. */
export const STORE_PASSWORD_ENV = "CAPSUL_STORE_PASSWORD";
/** An idle pooled connection is closed after this. Not a key: it only trims idle connections. */
export const PG_IDLE_TIMEOUT_MS = 30_000;

/** pg_advisory_xact_lock(key1, key2): key1 is capsul's ("caps" in ASCII), key2 the lock. */
const LOCK_SPACE = 0x63617073;
const LOCK_KEYS: Record<TxLock | "migrate", number> = { migrate: 1, grants: 2, ports: 3, certs: 4 };
const INT8_OID = 20;

/** The `$n` form of a `?` statement, and a name for it: pg prepares a named statement once per connection. */
const statements = new Map<string, { name: string; text: string }>();
function statement(sql: string): { name: string; text: string } {
  let s = statements.get(sql);
  if (!s) {
    let n = 0;
    s = { name: `capsul_${statements.size + 1}`, text: sql.replace(/\?/g, () => `$${++n}`) };
    statements.set(sql, s);
  }
  return s;
}

class PgExecutor implements Executor {
  readonly dialect = "postgres";
  private readonly held = new Set<TxLock>();

  /** `db` is the pool (top level) or the transaction's client. */
  constructor(private readonly db: pg.Pool | pg.PoolClient, private readonly pool: pg.Pool | null) {}

  get inTransaction(): boolean {
    return this.pool === null;
  }

  private async query<T extends pg.QueryResultRow>(sql: string, params: readonly unknown[]): Promise<pg.QueryResult<T>> {
    const s = statement(sql);
    return this.db.query<T>({ name: s.name, text: s.text, values: params as unknown[] });
  }

  async all<T>(sql: string, params: readonly unknown[] = []): Promise<T[]> {
    return (await this.query<T & pg.QueryResultRow>(sql, params)).rows;
  }

  async get<T>(sql: string, params: readonly unknown[] = []): Promise<T | undefined> {
    return (await this.query<T & pg.QueryResultRow>(sql, params)).rows[0];
  }

  async run(sql: string, params: readonly unknown[] = []): Promise<number> {
    return (await this.query(sql, params)).rowCount ?? 0;
  }

  async exec(sql: string): Promise<void> {
    await this.db.query(sql);
  }

  async transaction<T>(locks: readonly TxLock[], fn: (x: Executor) => Promise<T>): Promise<T> {
    if (!this.pool) {
      await this.take(locks);
      return fn(this);
    }
    const client = await this.pool.connect();
    const tx = new PgExecutor(client, null);
    try {
      await client.query("BEGIN");
      await tx.take(locks);
      const out = await fn(tx);
      await client.query("COMMIT");
      client.release();
      return out;
    } catch (err) {
      // A connection that cannot even roll back is broken: the pool discards it.
      const broken = await client.query("ROLLBACK").then(() => undefined, (e: Error) => e);
      client.release(broken);
      throw err;
    }
  }

  /** Advisory locks in TX_LOCK_ORDER, so two transactions never wait on each other crosswise. */
  private async take(locks: readonly TxLock[]): Promise<void> {
    for (const lock of TX_LOCK_ORDER) {
      if (!locks.includes(lock) || this.held.has(lock)) continue;
      if ([...this.held].some((h) => TX_LOCK_ORDER.indexOf(h) > TX_LOCK_ORDER.indexOf(lock))) {
        throw new Error(`store lock ${lock} taken after a later one (${[...this.held].join(", ")}): take it when the transaction starts`);
      }
      await this.db.query("SELECT pg_advisory_xact_lock($1, $2)", [LOCK_SPACE, LOCK_KEYS[lock]]);
      this.held.add(lock);
    }
  }

  async notify(channel: string, payload: string): Promise<void> {
    await this.db.query("SELECT pg_notify($1, $2)", [channel, payload]);
  }

  /** The migration lock: hubs starting together migrate one after the other. */
  async migrateLocked(where: string): Promise<void> {
    await this.db.query("SELECT pg_advisory_xact_lock($1, $2)", [LOCK_SPACE, LOCK_KEYS.migrate]);
    await migrate(this, where, async () => 0);
  }
}

/** postgres://user@host:port/database, never with the password. */
export function describePostgres(t: PostgresTarget): string {
  const host = t.host.startsWith("/") ? `?host=${t.host}` : "";
  const addr = t.host.startsWith("/") ? "" : (t.host.includes(":") ? `[${t.host}]` : t.host) + `:${t.port}`;
  return `postgres://${encodeURIComponent(t.user)}@${addr}/${encodeURIComponent(t.database)}${host}`;
}

/** The password: hub.store_password_file (trailing newline dropped), else $CAPSUL_STORE_PASSWORD, else none. */
export function readStorePassword(cfg: HubStoreConfig, env: NodeJS.ProcessEnv = process.env): Masked | null {
  if (cfg.passwordFile !== null) {
    let text: string;
    try {
      text = fs.readFileSync(cfg.passwordFile, "utf8");
    } catch (err) {
      throw new ConfigError(`cannot read ${cfg.passwordFile}: ${(err as NodeJS.ErrnoException).code ?? (err as Error).message}`, "hub.store_password_file");
    }
    const pw = text.replace(/\r?\n$/, "");
    if (pw === "") throw new ConfigError(`${cfg.passwordFile} is empty`, "hub.store_password_file");
    return new Masked(pw);
  }
  const fromEnv = env[STORE_PASSWORD_ENV];
  return fromEnv ? new Masked(fromEnv) : null;
}

function clientConfig(cfg: HubStoreConfig, t: PostgresTarget, password: Masked | null): pg.ClientConfig {
  let ssl: pg.ClientConfig["ssl"] = false;
  if (t.sslMode === "require") ssl = { rejectUnauthorized: false };
  if (t.sslMode === "verify-full") {
    let ca: string | undefined;
    if (t.sslRootCert !== null) {
      try {
        ca = fs.readFileSync(t.sslRootCert, "utf8");
      } catch (err) {
        throw new ConfigError(`sslrootcert ${t.sslRootCert}: ${(err as NodeJS.ErrnoException).code ?? (err as Error).message}`, "hub.store");
      }
    }
    ssl = { rejectUnauthorized: true, ca, servername: t.host };
  }
  return {
    host: t.host, port: t.port, user: t.user, database: t.database, ssl,
    // A callback, so the password is in no config object anyone might print.
    ...(password ? { password: () => password.value } : {}),
    connectionTimeoutMillis: cfg.connectTimeoutMs,
    application_name: "capsul-hub",
    types: { getTypeParser: ((oid: number, format?: string) => (oid === INT8_OID ? Number : pg.types.getTypeParser(oid, format as "text"))) as pg.CustomTypesConfig["getTypeParser"] },
  };
}

export class PgHubStore extends StoreQueries implements HubStore {
  readonly dialect = "postgres";
  private readonly wakers = new Set<() => void>();
  private ended = false;

  private constructor(
    private readonly pool: pg.Pool, x: PgExecutor, readonly location: string,
    private readonly connect: pg.ClientConfig, private readonly log: Logger,
  ) {
    super(x);
  }

  static async open(cfg: HubStoreConfig, log: Logger): Promise<PgHubStore> {
    const target = cfg.postgres;
    if (!target) throw new ConfigError("not a postgres:// URL", "hub.store");
    const where = describePostgres(target);
    const password = readStorePassword(cfg);
    const connect = clientConfig(cfg, target, password);
    // The first connection on its own: it checks that the server is there and lets us in, and
    // migrates. A client that fails authentication on its side (no password for a server that
    // wants one) leaves its socket open until the server's authentication_timeout (60 s):
    // destroyed here, so `capsul hub cogs` fails at once instead of hanging for a minute.
    const first = new pg.Client(connect);
    first.on("error", () => {}); // reported by connect() or the query below
    try {
      await first.connect();
      const x = new PgExecutor(first as unknown as pg.PoolClient, null);
      if ((await schemaVersion(x)) !== SCHEMA_VERSION) {
        await first.query("BEGIN");
        await x.migrateLocked(where);
        await first.query("COMMIT");
      }
      await first.end();
    } catch (err) {
      (first as unknown as { connection?: { stream?: { destroy(): void } } }).connection?.stream?.destroy();
      if (err instanceof RuntimeError || err instanceof ConfigError) throw err;
      const hint = password === null && /password must be a string/.test((err as Error).message)
        ? `the server asks for a password: put it in hub.store_password_file or ${STORE_PASSWORD_ENV}`
        : (err as Error).message;
      throw new RuntimeError(`state store ${where}: ${hint}`, { cause: err });
    }
    const pool = new pg.Pool({ ...connect, max: cfg.poolSize, idleTimeoutMillis: PG_IDLE_TIMEOUT_MS });
    // An idle connection the server closed: the next query takes another one; never crash the hub.
    pool.on("error", (err) => log.warn("a state store connection failed", { store: where, error: err.message }));
    const x = new PgExecutor(pool, pool);
    return new PgHubStore(pool, x, where, connect, log);
  }

  protected override afterRevoke(): void {
    for (const w of this.wakers) w();
  }

  async watchRevocations(onRevoked: (cogs: string[]) => void, pollIntervalMs: number): Promise<RevocationWatch> {
    const follower = new RevocationFollower(this, onRevoked,
      (err) => this.log.warn("could not read revocations; trying again", { error: err.message }), pollIntervalMs);
    let client: pg.Client | null = null;
    let closed = false;
    let timer: NodeJS.Timeout | null = null;

    const listen = async (): Promise<void> => {
      const c = new pg.Client(this.connect);
      const lost = (err?: Error): void => {
        if (client !== c) return;
        client = null;
        c.end().catch(() => {});
        if (closed) return;
        this.log.warn("lost the state store's revocation listener; reconnecting", { store: this.location, error: err?.message ?? "connection ended" });
        retry();
      };
      c.on("notification", (m) => { if (m.channel === REVOCATION_CHANNEL) follower.check(); });
      c.on("error", lost);
      c.on("end", () => lost());
      try {
        await c.connect();
        await c.query(`LISTEN ${REVOCATION_CHANNEL}`);
      } catch (err) {
        c.end().catch(() => {});
        throw err;
      }
      client = c;
    };
    const retry = (): void => {
      timer = setTimeout(() => {
        timer = null;
        listen().then(() => {
          // Revokes committed while nobody listened: read them now.
          this.log.info("revocation listener back", { store: this.location });
          follower.check();
        }, (err: Error) => {
          if (closed) return;
          this.log.warn("could not reconnect the revocation listener", { store: this.location, error: err.message });
          retry();
        });
      }, pollIntervalMs);
      timer.unref();
    };

    // LISTEN first: a revoke committed after it is notified, one before it is in start()'s seq.
    await listen();
    await follower.start();
    const wake = (): void => follower.check();
    this.wakers.add(wake);
    return {
      close: async () => {
        closed = true;
        if (timer) clearTimeout(timer);
        this.wakers.delete(wake);
        follower.close();
        const c = client;
        client = null;
        await c?.end().catch(() => {});
      },
    };
  }

  async close(): Promise<void> {
    if (this.ended) return;
    this.ended = true;
    await this.pool.end();
  }
}
