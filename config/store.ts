/**
 * hub.store and its companions: where the hub keeps its state. `sqlite` (the
 * default) or a `postgres://USER@HOST[:PORT]/DATABASE` URL; the password never
 * goes in the URL (capsul.yaml is readable and gets pasted into bug reports)
 * but in hub.store_password_file or $CAPSUL_STORE_PASSWORD, read when the
 * store is opened (gateway/store/postgres.ts). Errors never echo the URL,
 * which might hold a password after all.
 */
import { resolve } from "node:path";
import { ConfigError } from "../lib/errors.js";
import type { HubStoreConfig, PostgresTarget } from "./types.js";
import { at, duration, integer, string, type Obj } from "./values.js";

export const DEFAULT_HUB_STORE = "sqlite";
export const DEFAULT_STORE_POOL_SIZE = 10;
export const DEFAULT_STORE_CONNECT_TIMEOUT_MS = 10_000;
export const DEFAULT_STORE_BUSY_TIMEOUT_MS = 5_000;
/** PostgreSQL's own default port. */
const POSTGRES_PORT = 5432;
const SSL_MODES: readonly PostgresTarget["sslMode"][] = ["disable", "require", "verify-full"];
const URL_PARAMS = ["host", "sslmode", "sslrootcert"];
const URL_SHAPE = "sqlite, or postgres://USER@HOST[:PORT]/DATABASE[?host=/socket/dir&sslmode=disable|require|verify-full&sslrootcert=FILE]";

export const HUB_STORE_KEYS = ["store", "store_password_file", "store_pool_size", "store_connect_timeout", "store_busy_timeout"] as const;

function parsePostgresUrl(text: string, path: string, baseDir: string): PostgresTarget {
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
    sslRootCert: rootCert === null ? null : resolve(baseDir, rootCert),
  };
}

export function parseHubStore(m: Obj, path: string, baseDir: string): HubStoreConfig {
  const storePath = at(path, "store");
  const text = string(m.store, storePath, DEFAULT_HUB_STORE);
  let postgres: PostgresTarget | null = null;
  if (/^postgres(ql)?:\/\//i.test(text)) postgres = parsePostgresUrl(text, storePath, baseDir);
  else if (text !== "sqlite") throw new ConfigError(`expected ${URL_SHAPE}`, storePath);
  const pwPath = at(path, "store_password_file");
  const passwordFile = m.store_password_file == null ? null : resolve(baseDir, string(m.store_password_file, pwPath));
  if (passwordFile !== null && !postgres) throw new ConfigError("only used with a postgres:// hub.store", pwPath);
  return {
    kind: postgres ? "postgres" : "sqlite",
    postgres,
    passwordFile,
    poolSize: integer(m.store_pool_size, at(path, "store_pool_size"), DEFAULT_STORE_POOL_SIZE, 1, 1000),
    connectTimeoutMs: duration(m.store_connect_timeout, at(path, "store_connect_timeout"), DEFAULT_STORE_CONNECT_TIMEOUT_MS, 1, 2 ** 31 - 1),
    busyTimeoutMs: duration(m.store_busy_timeout, at(path, "store_busy_timeout"), DEFAULT_STORE_BUSY_TIMEOUT_MS, 0, 2 ** 31 - 1),
  };
}
