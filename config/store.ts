/**
 * hub.store and its companions: where the hub keeps its state. `sqlite` (the
 * default) or a `postgres://USER@HOST[:PORT]/DATABASE` URL; the password never
 * goes in the URL (capsul.yaml is readable and gets pasted into bug reports)
 * but in hub.store_password_file or $CAPSUL_STORE_PASSWORD, read when the
 * store is opened (gateway/store/postgres.ts). Errors never echo the URL,
 * which might hold a password after all.
 */
import { ConfigError } from "../lib/errors.js";
import { durationMs, fail, int, path, read, resolvePath, text } from "./fields.js";
import type { HubStoreConfig, PostgresTarget } from "./types.js";

export const DEFAULT_HUB_STORE = "sqlite";
export const DEFAULT_STORE_POOL_SIZE = 10;
export const DEFAULT_STORE_CONNECT_TIMEOUT_MS = 10_000;
export const DEFAULT_STORE_BUSY_TIMEOUT_MS = 5_000;
/** PostgreSQL's own default port. */
const POSTGRES_PORT = 5432;
const SSL_MODES: readonly PostgresTarget["sslMode"][] = ["disable", "require", "verify-full"];
const URL_PARAMS = ["host", "sslmode", "sslrootcert"];
const URL_SHAPE = "sqlite, or postgres://USER@HOST[:PORT]/DATABASE[?host=/socket/dir&sslmode=disable|require|verify-full&sslrootcert=FILE]";

function parsePostgresUrl(text: string, path: string): PostgresTarget {
  let u: URL;
  // postgres://user@/db?host=/dir names no host (WHATWG URL refuses that): parse it with a placeholder.
  const noHost = /^[a-z]+:\/\/[^/?#]*@(?=[/?]|$)/i.test(text);
  try {
    u = new URL(noHost ? text.replace(/@(?=[/?]|$)/, "@-") : text);
  } catch {
    throw new ConfigError(`not a URL: expected ${URL_SHAPE}`, path);
  }
  if (u.password !== "") {
    throw new ConfigError("the URL holds a password: put it in hub.store_password_file or the CAPSUL_STORE_PASSWORD environment variable instead, so that it is never printed", path);
  }
  const user = decodeURIComponent(u.username);
  if (user === "") throw new ConfigError(`no user: expected ${URL_SHAPE}`, path);
  for (const key of u.searchParams.keys()) {
    if (!URL_PARAMS.includes(key)) throw new ConfigError(`unknown URL parameter ${JSON.stringify(key)} (known: ${URL_PARAMS.join(", ")})`, path);
  }
  const socketDir = u.searchParams.get("host");
  const host = socketDir ?? (noHost ? "" : u.hostname.replace(/^\[(.*)\]$/, "$1"));
  if (host === "") throw new ConfigError(`no host: expected ${URL_SHAPE}`, path);
  if (socketDir !== null && !socketDir.startsWith("/")) throw new ConfigError("?host= must be the absolute path of the server's socket directory", path);
  const db = decodeURIComponent(u.pathname.replace(/^\//, ""));
  if (db.includes("/")) throw new ConfigError(`not a database name: ${JSON.stringify(db)}`, path);
  const sslMode = (u.searchParams.get("sslmode") ?? "disable") as PostgresTarget["sslMode"];
  if (!SSL_MODES.includes(sslMode)) throw new ConfigError(`sslmode must be one of ${SSL_MODES.join(", ")}`, path);
  const rootCert = u.searchParams.get("sslrootcert");
  if (rootCert !== null && sslMode !== "verify-full") throw new ConfigError("sslrootcert needs sslmode=verify-full", path);
  return {
    host,
    port: u.port === "" ? POSTGRES_PORT : Number(u.port),
    user,
    database: db === "" ? user : db,
    sslMode,
    sslRootCert: rootCert === null ? null : resolvePath(rootCert),
  };
}

/** The hub section's keys for its store (they sit in hub: itself, next to data_dir). */
export const HUB_STORE_SHAPE = {
  store: text(`Where the hub keeps cogs, certificates, invites, grants, ports and revocations: sqlite (<data_dir>/hub.db, shared by the processes of one machine), or a postgres://USER@HOST[:PORT]/DATABASE URL shared by hubs (never with a password in it).`,
    DEFAULT_HUB_STORE),
  store_password_file: path("File holding the PostgreSQL password (default none: then $CAPSUL_STORE_PASSWORD, else no password); only with a postgres:// store.", undefined),
  store_pool_size: int("PostgreSQL connections per hub process.", { def: DEFAULT_STORE_POOL_SIZE, min: 1, max: 1000 }),
  store_connect_timeout: durationMs("Deadline to connect to PostgreSQL.", { def: DEFAULT_STORE_CONNECT_TIMEOUT_MS, min: 1, max: 2 ** 31 - 1 }),
  store_busy_timeout: durationMs("How long a SQLite write waits while another process holds the write lock.",
    { def: DEFAULT_STORE_BUSY_TIMEOUT_MS, min: 0, max: 2 ** 31 - 1 }),
};

/** The store keys as read (the hub section's input holds them). */
interface StoreInput { store: string; store_password_file: string | null; store_pool_size: number; store_connect_timeout: number; store_busy_timeout: number }

export function buildHubStore(o: StoreInput): HubStoreConfig {
  let postgres: PostgresTarget | null = null;
  if (/^postgres(ql)?:\/\//i.test(o.store)) postgres = read(["store"], () => parsePostgresUrl(o.store, ""));
  else if (o.store !== "sqlite") fail(["store"], `expected ${URL_SHAPE}`);
  if (o.store_password_file !== null && !postgres) fail(["store_password_file"], "only used with a postgres:// hub.store");
  return {
    kind: postgres ? "postgres" : "sqlite",
    postgres,
    passwordFile: o.store_password_file,
    poolSize: o.store_pool_size,
    connectTimeoutMs: o.store_connect_timeout,
    busyTimeoutMs: o.store_busy_timeout,
  };
}
