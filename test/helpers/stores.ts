/**
 * The two state stores as test backends: a new SQLite file or a new database
 * on a throwaway PostgreSQL cluster, as hub configs, plus raw SQL behind the
 * store's back. Test files that run one body against both use this.
 */
import type { Test } from "tap";
import Database from "better-sqlite3";
import fs from "node:fs";
import path from "node:path";
import { parseConfig } from "../../config/config.js";
import type { HubConfig } from "../../config/types.js";
import { HUB_DOMAIN, tmpDir } from "./cluster.js";
import type { PgCluster } from "./pgcluster.js";

export interface StoreBackend {
  name: "sqlite" | "postgres";
  /**
   * A new, empty store: a hub config using it (`extra`: more hub keys) and raw SQL
   * against it behind the store's back.
   */
  fresh(t: Test, extra?: Record<string, unknown>): Promise<{ cfg: HubConfig; raw(sql: string): Promise<void> }>;
}

/** The database name in a URL from PgCluster.createDatabase(). */
export function databaseOf(url: string): string {
  return new URL(url.replace("@/", "@-/")).pathname.slice(1);
}

export function storeBackends(pgc: PgCluster): StoreBackend[] {
  const newDir = (t: Test): string => {
    const dir = tmpDir("capsul-store-");
    t.teardown(() => fs.rmSync(dir, { recursive: true, force: true }));
    return dir;
  };
  return [
    {
      name: "sqlite",
      async fresh(t, extra = {}) {
        const dir = newDir(t);
        const cfg = parseConfig({ hub: { data_dir: dir, domain: HUB_DOMAIN, ...extra } }).hub!;
        return {
          cfg,
          raw: async (sql) => {
            const db = new Database(path.join(dir, "hub.db"));
            try { db.exec(sql); } finally { db.close(); }
          },
        };
      },
    },
    {
      name: "postgres",
      async fresh(t, extra = {}) {
        const url = await pgc.createDatabase();
        const dir = newDir(t);
        const cfg = parseConfig({ hub: { data_dir: dir, domain: HUB_DOMAIN, store: url, store_password_file: pgc.passwordFile, ...extra } }).hub!;
        return {
          cfg,
          raw: async (sql) => {
            const c = await pgc.admin(databaseOf(url));
            try { await c.query(sql); } finally { await c.end(); }
          },
        };
      },
    },
  ];
}
