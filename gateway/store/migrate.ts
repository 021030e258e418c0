/**
 * Brings a store's schema up to SCHEMA_VERSION, the same way in both dialects:
 * a `schema_version` table with one row per migration applied. The caller
 * runs `migrate()` inside a transaction that serialises it against every
 * other process opening the same store (SQLite: BEGIN IMMEDIATE; PostgreSQL:
 * an advisory lock), and may skip that lock when `schemaVersion()` already
 * says there is nothing to do.
 */
import { RuntimeError } from "../../lib/errors.js";
import type { Executor } from "./queries.js";
import { MIGRATIONS, migrationSql, SCHEMA_VERSION } from "./schema.js";

const VERSION_TABLE = "CREATE TABLE IF NOT EXISTS schema_version (version INTEGER PRIMARY KEY, applied_at BIGINT NOT NULL)";

/** The schema version recorded, or 0 when there is no version table yet. */
export async function schemaVersion(x: Executor): Promise<number> {
  try {
    return (await x.get<{ v: number | null }>("SELECT MAX(version) AS v FROM schema_version"))?.v ?? 0;
  } catch {
    return 0; // no table: a new store, or one from before the table (see `legacyVersion`)
  }
}

/**
 * Applies the missing migrations. `legacyVersion` is the version of a store
 * written before the version table existed (SQLite's PRAGMA user_version).
 * Refuses a store newer than this capsul. Returns the version it found.
 */
export async function migrate(x: Executor, where: string, legacyVersion: () => Promise<number>): Promise<number> {
  await x.exec(VERSION_TABLE);
  let current = await schemaVersion(x);
  if (current === 0) {
    const legacy = await legacyVersion();
    for (let v = 1; v <= legacy; v++) await x.run("INSERT INTO schema_version (version, applied_at) VALUES (?, ?)", [v, 0]);
    current = legacy;
  }
  if (current > SCHEMA_VERSION) {
    throw new RuntimeError(`the state store ${where} has schema version ${current}, newer than this capsul (${SCHEMA_VERSION}); upgrade capsul`);
  }
  for (let v = current; v < SCHEMA_VERSION; v++) {
    await x.exec(migrationSql(MIGRATIONS[v]!, x.dialect));
    await x.run("INSERT INTO schema_version (version, applied_at) VALUES (?, ?)", [v + 1, Date.now()]);
  }
  return current;
}
