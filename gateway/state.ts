/**
 * The hub's durable state in SQLite (WAL): cogs, their certificates, invites
 * (token hashes only), extra grants, and TCP port assignments that stay
 * stable across hub restarts and cog reconnects. `capsul hub invite|revoke`
 * write here while the hub runs; the hub notices through PRAGMA data_version.
 */
import Database from "better-sqlite3";
import fs from "node:fs";
import path from "node:path";

const SCHEMA_VERSION = 1;
const MIGRATIONS: string[] = [
  `CREATE TABLE cogs (
     name TEXT PRIMARY KEY,
     created_at INTEGER NOT NULL,
     revoked_at INTEGER,
     online INTEGER NOT NULL DEFAULT 0,
     last_seen INTEGER,
     remote TEXT,
     routes TEXT
   );
   CREATE TABLE certs (
     serial TEXT PRIMARY KEY,
     cog TEXT NOT NULL REFERENCES cogs(name),
     not_after INTEGER NOT NULL,
     issued_at INTEGER NOT NULL,
     revoked INTEGER NOT NULL DEFAULT 0
   );
   CREATE TABLE invites (
     token_hash TEXT PRIMARY KEY,
     cog TEXT NOT NULL,
     created_at INTEGER NOT NULL,
     expires_at INTEGER NOT NULL,
     used_at INTEGER
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
     assigned_at INTEGER NOT NULL,
     UNIQUE (cog, route)
   );`,
];

export interface CogRow { name: string; createdAt: number; revokedAt: number | null }
export interface CogListRow extends CogRow {
  certNotAfter: number | null;
  online: boolean;
  lastSeen: number | null;
  remote: string | null;
  routes: string[];
}
export interface StoredGrant { cog: string; kind: "hostname" | "tcp"; value: string }
/** A hub TCP port held by one route of one cog; `assignedAt` is when it was assigned or last served. */
export interface PortAssignment { port: number; cog: string; route: string; assignedAt: number }
export interface InviteRow { cog: string; expiresAt: number; usedAt: number | null }
export interface InviteListRow extends InviteRow { createdAt: number }

export class HubState {
  readonly db: Database.Database;

  constructor(dataDir: string) {
    fs.mkdirSync(dataDir, { recursive: true, mode: 0o700 });
    this.db = new Database(path.join(dataDir, "hub.db"));
    this.db.pragma("journal_mode = WAL");
    this.db.pragma("busy_timeout = 5000");
    this.db.pragma("foreign_keys = ON");
    this.migrate();
  }

  private migrate(): void {
    const current = this.db.pragma("user_version", { simple: true }) as number;
    if (current > SCHEMA_VERSION) {
      throw new Error(`hub.db has schema version ${current}, newer than this capsul (${SCHEMA_VERSION}); upgrade capsul`);
    }
    for (let v = current; v < SCHEMA_VERSION; v++) {
      this.db.transaction(() => {
        this.db.exec(MIGRATIONS[v]!);
        this.db.pragma(`user_version = ${v + 1}`);
      })();
    }
  }

  /** Changes whenever another connection (the CLI) commits; cheap to poll. */
  dataVersion(): number {
    return this.db.pragma("data_version", { simple: true }) as number;
  }

  close(): void { this.db.close(); }

  // ---- cogs and certificates ----

  ensureCog(name: string, now = Date.now()): void {
    this.db.prepare("INSERT INTO cogs (name, created_at) VALUES (?, ?) ON CONFLICT(name) DO NOTHING").run(name, now);
  }

  getCog(name: string): CogRow | undefined {
    const r = this.db.prepare("SELECT name, created_at, revoked_at FROM cogs WHERE name = ?").get(name) as
      { name: string; created_at: number; revoked_at: number | null } | undefined;
    return r && { name: r.name, createdAt: r.created_at, revokedAt: r.revoked_at };
  }

  listCogs(): CogListRow[] {
    const rows = this.db.prepare(
      `SELECT c.name, c.created_at, c.revoked_at, c.online, c.last_seen, c.remote, c.routes,
              (SELECT MAX(not_after) FROM certs WHERE cog = c.name AND revoked = 0) AS cert_not_after
         FROM cogs c ORDER BY c.name`,
    ).all() as Array<{ name: string; created_at: number; revoked_at: number | null; online: number; last_seen: number | null; remote: string | null; routes: string | null; cert_not_after: number | null }>;
    return rows.map((r) => ({
      name: r.name, createdAt: r.created_at, revokedAt: r.revoked_at, certNotAfter: r.cert_not_after,
      online: r.online === 1, lastSeen: r.last_seen, remote: r.remote, routes: r.routes ? (JSON.parse(r.routes) as string[]) : [],
    }));
  }

  /** Live status, written by the running hub for `capsul hub cogs`. */
  markOnline(name: string, remote: string, routes: string[], now = Date.now()): void {
    this.db.prepare("UPDATE cogs SET online = 1, last_seen = ?, remote = ?, routes = ? WHERE name = ?").run(now, remote, JSON.stringify(routes), name);
  }

  markOffline(name: string, now = Date.now()): void {
    this.db.prepare("UPDATE cogs SET online = 0, last_seen = ? WHERE name = ?").run(now, name);
  }

  /** At hub start nothing is connected yet. */
  markAllOffline(): void {
    this.db.prepare("UPDATE cogs SET online = 0 WHERE online = 1").run();
  }

  recordCert(cog: string, serial: string, notAfter: number, now = Date.now()): void {
    this.db.prepare("INSERT INTO certs (serial, cog, not_after, issued_at) VALUES (?, ?, ?, ?)").run(serial, cog, notAfter, now);
  }

  /** Why a presented certificate may not be used, or null if it may. */
  certProblem(cog: string, serial: string): string | null {
    const c = this.getCog(cog);
    if (!c) return `cog ${cog} is unknown to this hub`;
    if (c.revokedAt !== null) return `cog ${cog} is revoked`;
    const row = this.db.prepare("SELECT cog, revoked FROM certs WHERE serial = ?").get(serial) as { cog: string; revoked: number } | undefined;
    if (!row) return `certificate ${serial} was not issued by this hub's records`;
    if (row.cog !== cog) return `certificate ${serial} belongs to another cog`;
    if (row.revoked) return `certificate ${serial} is revoked`;
    return null;
  }

  /**
   * When another certificate was issued to this cog at or after the one with `serial`
   * (i.e. that one was already renewed or replaced), the latest such time; else null.
   */
  newerCertIssuedAt(cog: string, serial: string): number | null {
    const r = this.db.prepare(
      `SELECT MAX(c.issued_at) AS at FROM certs c JOIN certs p ON p.serial = ?
        WHERE c.cog = ? AND c.serial <> p.serial AND c.issued_at >= p.issued_at`,
    ).get(serial, cog) as { at: number | null } | undefined;
    return r?.at ?? null;
  }

  /** Revokes the cog and every certificate it holds. Returns false if unknown. */
  revokeCog(name: string, now = Date.now()): boolean {
    return this.db.transaction(() => {
      const r = this.db.prepare("UPDATE cogs SET revoked_at = ? WHERE name = ? AND revoked_at IS NULL").run(now, name);
      this.db.prepare("UPDATE certs SET revoked = 1 WHERE cog = ?").run(name);
      this.db.prepare("DELETE FROM invites WHERE cog = ? AND used_at IS NULL").run(name);
      return r.changes > 0 || this.getCog(name) !== undefined;
    })();
  }

  revokedCogs(): Set<string> {
    const rows = this.db.prepare("SELECT name FROM cogs WHERE revoked_at IS NOT NULL").all() as Array<{ name: string }>;
    return new Set(rows.map((r) => r.name));
  }

  // ---- invites ----

  /** Stores an invite; re-inviting a revoked cog lifts the revocation (its old certificates stay revoked). */
  addInvite(cog: string, tokenHash: string, expiresAt: number, now = Date.now()): void {
    this.db.transaction(() => {
      this.ensureCog(cog, now);
      this.db.prepare("UPDATE cogs SET revoked_at = NULL WHERE name = ?").run(cog);
      this.db.prepare("INSERT INTO invites (token_hash, cog, created_at, expires_at) VALUES (?, ?, ?, ?)").run(tokenHash, cog, now, expiresAt);
    })();
  }

  /** The cog an invite is for, or why it cannot be used; consumes nothing (see useInvite). */
  checkInvite(tokenHash: string, now = Date.now()): { cog: string } | { problem: string } {
    const r = this.db.prepare("SELECT cog, expires_at, used_at FROM invites WHERE token_hash = ?").get(tokenHash) as
      { cog: string; expires_at: number; used_at: number | null } | undefined;
    if (!r) return { problem: "unknown invite token" };
    if (r.used_at !== null) return { problem: "this invite token was already used" };
    if (r.expires_at <= now) return { problem: "this invite token has expired; ask the hub operator for a new one" };
    return { cog: r.cog };
  }

  /**
   * Consumes an invite atomically: returns the cog name, or a reason it cannot
   * be used. A token works once, before it expires.
   */
  useInvite(tokenHash: string, now = Date.now()): { cog: string } | { problem: string } {
    return this.db.transaction(() => {
      const r = this.checkInvite(tokenHash, now);
      if ("cog" in r) this.db.prepare("UPDATE invites SET used_at = ? WHERE token_hash = ?").run(now, tokenHash);
      return r;
    })();
  }

  /** Every invite, newest first (token hashes stay in the database). */
  listInvites(): InviteListRow[] {
    return this.db.prepare("SELECT cog, created_at AS createdAt, expires_at AS expiresAt, used_at AS usedAt FROM invites ORDER BY created_at DESC, rowid DESC")
      .all() as InviteListRow[];
  }

  // ---- grants (beyond capsul.yaml) ----

  addGrant(cog: string, kind: "hostname" | "tcp", value: string): void {
    this.db.prepare("INSERT INTO grants (cog, kind, value) VALUES (?, ?, ?) ON CONFLICT DO NOTHING").run(cog, kind, value);
  }

  grants(cog: string): { hostnames: string[]; tcp: string[] } {
    const rows = this.db.prepare("SELECT kind, value FROM grants WHERE cog = ? ORDER BY value").all(cog) as Array<{ kind: string; value: string }>;
    return {
      hostnames: rows.filter((r) => r.kind === "hostname").map((r) => r.value),
      tcp: rows.filter((r) => r.kind === "tcp").map((r) => r.value),
    };
  }

  /** Every stored grant of every cog, for the checks that no two cogs' grants overlap. */
  allGrants(kind?: StoredGrant["kind"]): StoredGrant[] {
    if (kind) return this.db.prepare("SELECT cog, kind, value FROM grants WHERE kind = ? ORDER BY cog, value").all(kind) as StoredGrant[];
    return this.db.prepare("SELECT cog, kind, value FROM grants ORDER BY cog, kind, value").all() as StoredGrant[];
  }

  /** Removes one stored grant (`capsul hub ungrant`); false if there was none. */
  removeGrant(cog: string, kind: "hostname" | "tcp", value: string): boolean {
    return this.db.prepare("DELETE FROM grants WHERE cog = ? AND kind = ? AND value = ?").run(cog, kind, value).changes > 0;
  }

  /** Names of every cog ever invited, revoked ones included (an invite lifts a revocation). */
  cogNames(): string[] {
    return (this.db.prepare("SELECT name FROM cogs ORDER BY name").all() as Array<{ name: string }>).map((r) => r.name);
  }

  // ---- TCP port assignments ----

  portFor(cog: string, route: string): number | undefined {
    const r = this.db.prepare("SELECT port FROM tcp_ports WHERE cog = ? AND route = ?").get(cog, route) as { port: number } | undefined;
    return r?.port;
  }

  portOwner(port: number): { cog: string; route: string } | undefined {
    return this.db.prepare("SELECT cog, route FROM tcp_ports WHERE port = ?").get(port) as { cog: string; route: string } | undefined;
  }

  /** Stamps an assignment as last served now: reclaiming takes the longest-unused first. */
  touchPort(port: number, now = Date.now()): void {
    this.db.prepare("UPDATE tcp_ports SET assigned_at = ? WHERE port = ?").run(now, port);
  }

  assignmentsIn(from: number, to: number): PortAssignment[] {
    return this.db.prepare("SELECT port, cog, route, assigned_at AS assignedAt FROM tcp_ports WHERE port BETWEEN ? AND ?").all(from, to) as PortAssignment[];
  }

  assignmentsOf(cog: string): PortAssignment[] {
    return this.db.prepare("SELECT port, cog, route, assigned_at AS assignedAt FROM tcp_ports WHERE cog = ? ORDER BY port").all(cog) as PortAssignment[];
  }

  allAssignments(): PortAssignment[] {
    return this.db.prepare("SELECT port, cog, route, assigned_at AS assignedAt FROM tcp_ports ORDER BY port").all() as PortAssignment[];
  }

  assignPort(cog: string, route: string, port: number, now = Date.now()): void {
    this.db.prepare("INSERT INTO tcp_ports (port, cog, route, assigned_at) VALUES (?, ?, ?, ?)").run(port, cog, route, now);
  }

  /**
   * Gives the assignment of `port` to another route of the same cog, dropping
   * whatever that route held before (a rename that keeps its port, or a cog
   * reusing one of its own stale assignments). One transaction: no moment
   * where the cog holds neither.
   */
  moveAssignment(port: number, cog: string, route: string, now = Date.now()): void {
    this.db.transaction(() => {
      this.db.prepare("DELETE FROM tcp_ports WHERE cog = ? AND route = ? AND port <> ?").run(cog, route, port);
      const r = this.db.prepare("UPDATE tcp_ports SET route = ?, assigned_at = ? WHERE port = ? AND cog = ?").run(route, now, port, cog);
      if (r.changes !== 1) throw new Error(`hub port ${port} is not assigned to cog ${cog}`);
    })();
  }

  /** Replaces the route's assignment (if any) by `port`, atomically. */
  reassignPort(cog: string, route: string, port: number, now = Date.now()): void {
    this.db.transaction(() => {
      this.releasePort(cog, route);
      this.assignPort(cog, route, port, now);
    })();
  }

  releasePort(cog: string, route: string): void {
    this.db.prepare("DELETE FROM tcp_ports WHERE cog = ? AND route = ?").run(cog, route);
  }

  /** Drops the assignment of one port, whoever holds it (`capsul hub ports release`). */
  releasePortNumber(port: number): PortAssignment | undefined {
    return this.db.transaction(() => {
      const a = this.db.prepare("SELECT port, cog, route, assigned_at AS assignedAt FROM tcp_ports WHERE port = ?").get(port) as PortAssignment | undefined;
      if (a) this.db.prepare("DELETE FROM tcp_ports WHERE port = ?").run(port);
      return a;
    })();
  }
}
