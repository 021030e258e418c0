/**
 * The schema of the hub's state, as one numbered list of migrations that both
 * SQLite and PostgreSQL run, recorded in a `schema_version` table (one row per
 * migration applied). The DDL is written once for both: types that mean the
 * same in each (BIGINT for millisecond timestamps, which is 64-bit INTEGER
 * affinity in SQLite and needed past 2^31 in PostgreSQL; INTEGER 0/1 flags,
 * since SQLite has no BOOLEAN; TEXT), no autoincrement (revocations number
 * themselves under a lock, see queries.ts), and `ON CONFLICT`, partial
 * indexes and `RETURNING`, which both speak. A migration that cannot be
 * written once gets a `{ sqlite, postgres }` pair, in the open.
 *
 * Never edit a migration that has shipped; append one.
 */

export type Migration = string | { sqlite: string; postgres: string };

export const MIGRATIONS: readonly Migration[] = [
  // 1: what hub.db held before the store had a second dialect (SQLite PRAGMA user_version 1).
  // Its INTEGER time columns were BIGINT here from the start: the same affinity in SQLite.
  `CREATE TABLE cogs (
     name TEXT PRIMARY KEY,
     created_at BIGINT NOT NULL,
     revoked_at BIGINT,
     online INTEGER NOT NULL DEFAULT 0,
     last_seen BIGINT,
     remote TEXT,
     routes TEXT
   );
   CREATE TABLE certs (
     serial TEXT PRIMARY KEY,
     cog TEXT NOT NULL REFERENCES cogs(name),
     not_after BIGINT NOT NULL,
     issued_at BIGINT NOT NULL,
     revoked INTEGER NOT NULL DEFAULT 0
   );
   CREATE TABLE invites (
     token_hash TEXT PRIMARY KEY,
     cog TEXT NOT NULL,
     created_at BIGINT NOT NULL,
     expires_at BIGINT NOT NULL,
     used_at BIGINT
   );
   CREATE TABLE grants (
     cog TEXT NOT NULL,
     kind TEXT NOT NULL CHECK (kind IN ('hostname', 'tcp')),
     value TEXT NOT NULL,
     PRIMARY KEY (cog, kind, value)
   );
   CREATE TABLE tcp_ports (
     port INTEGER PRIMARY KEY,
     cog TEXT NOT NULL,
     route TEXT NOT NULL,
     assigned_at BIGINT NOT NULL,
     UNIQUE (cog, route)
   );`,

  // 2: what several hub processes share (issue 12): revocations as a log each hub follows
  // (by seq, instead of rescanning every cog on every write), endpoints with heartbeats,
  // which cog has a tunnel to which endpoint, each cog's routes (a restarted hub knows
  // them before the cog is back), custom-domain proofs (issue 10); and the indexes the
  // per-cog lookups were missing.
  `CREATE TABLE revocations (
     seq BIGINT PRIMARY KEY,
     cog TEXT NOT NULL,
     revoked_at BIGINT NOT NULL
   );
   CREATE TABLE endpoints (
     name TEXT PRIMARY KEY,
     tunnel_address TEXT NOT NULL,
     started_at BIGINT NOT NULL,
     heartbeat_at BIGINT NOT NULL
   );
   CREATE INDEX endpoints_heartbeat ON endpoints (heartbeat_at);
   CREATE TABLE cog_tunnels (
     cog TEXT NOT NULL,
     endpoint TEXT NOT NULL,
     remote TEXT NOT NULL,
     connected_at BIGINT NOT NULL,
     PRIMARY KEY (cog, endpoint)
   );
   CREATE INDEX cog_tunnels_endpoint ON cog_tunnels (endpoint);
   CREATE TABLE cog_routes (
     cog TEXT NOT NULL,
     route TEXT NOT NULL,
     kind TEXT NOT NULL CHECK (kind IN ('tls', 'http', 'tcp')),
     hostname TEXT,
     port INTEGER,
     updated_at BIGINT NOT NULL,
     PRIMARY KEY (cog, route)
   );
   CREATE TABLE domain_proofs (
     hostname TEXT PRIMARY KEY,
     cog TEXT NOT NULL,
     value TEXT NOT NULL,
     created_at BIGINT NOT NULL,
     verified_at BIGINT,
     checked_at BIGINT,
     last_error TEXT
   );
   CREATE INDEX domain_proofs_cog ON domain_proofs (cog);
   CREATE INDEX certs_cog ON certs (cog);
   CREATE INDEX invites_cog ON invites (cog);
   CREATE INDEX cogs_online ON cogs (online) WHERE online = 1;`,

  // 3: custom-domain proofs as issue 10 uses them. One row per hostname and cog, not per
  // hostname: a cog's unproven claim must not stop another cog from proving the name (or
  // anyone could squat a name by announcing it first). A state, because "was proven and is
  // gone" (routes withdrawn, looked up again as often as a new claim) is not "never proven",
  // and a lookup that got no answer changes neither. Rows of migration 2 were never written
  // by a released capsul; they are carried over all the same.
  `CREATE TABLE domain_proofs_v3 (
     hostname TEXT NOT NULL,
     cog TEXT NOT NULL,
     value TEXT NOT NULL,
     state TEXT NOT NULL DEFAULT 'pending' CHECK (state IN ('pending', 'verified', 'lost')),
     created_at BIGINT NOT NULL,
     verified_at BIGINT,
     checked_at BIGINT,
     last_error TEXT,
     PRIMARY KEY (hostname, cog)
   );
   INSERT INTO domain_proofs_v3 (hostname, cog, value, state, created_at, verified_at, checked_at, last_error)
     SELECT hostname, cog, value, CASE WHEN verified_at IS NULL THEN 'pending' ELSE 'verified' END,
       created_at, verified_at, checked_at, last_error
     FROM domain_proofs;
   DROP TABLE domain_proofs;
   ALTER TABLE domain_proofs_v3 RENAME TO domain_proofs;
   CREATE INDEX domain_proofs_cog ON domain_proofs (cog);`,

  // 4: an endpoint is (name, dial address, TLS server name): hub workers behind one address
  // differ by server name only. Existing rows (none were ever written before this) get ''.
  `ALTER TABLE endpoints ADD COLUMN server_name TEXT NOT NULL DEFAULT '';`,

  // 5: a proven claim carried to another cog with a moved VM (gateway/carry.ts) keeps the TXT
  // value its owner published, derived from the name of the cog it was proven for; proof_cog
  // names that cog (NULL: the claim's own cog), so the value is still checked as derived.
  `ALTER TABLE domain_proofs ADD COLUMN proof_cog TEXT;`,

  // 6: a proven claim is lost only after hub.domains.missing_before_withdraw lookups in a row
  // found its record missing; misses counts them (0 after a lookup that found it).
  `ALTER TABLE domain_proofs ADD COLUMN misses INTEGER NOT NULL DEFAULT 0;`,
];

export const SCHEMA_VERSION = MIGRATIONS.length;

/** The migration's text for one dialect. */
export function migrationSql(m: Migration, dialect: "sqlite" | "postgres"): string {
  return typeof m === "string" ? m : m[dialect];
}
