/**
 * Every query of the hub's state, written once over an `Executor` that each
 * dialect provides (./sqlite.ts, ./postgres.ts). SQL here uses `?`
 * placeholders (PostgreSQL's executor numbers them) and snake_case column
 * aliases (PostgreSQL folds unquoted names to lower case), and reads
 * numbers as numbers (PostgreSQL's executor parses BIGINT to number:
 * millisecond timestamps stay far below 2^53).
 */
import type {
  CertRow, CogListRow, CogRow, CogTunnelRow, DomainLookupOutcome, DomainProofRow, DomainProofState, EndpointRow, InviteCheck, InviteListRow, PortAssignment,
  RevocationRow, StoredGrant, StoredRoute, StoreOps, TxLock,
} from "./types.js";

/** The PostgreSQL notification channel revokes are announced on (payload: the cog's name). */
export const REVOCATION_CHANNEL = "capsul_revocations";

export interface Executor {
  readonly dialect: "sqlite" | "postgres";
  /** True for the executor a transaction body runs on. */
  readonly inTransaction: boolean;
  all<T>(sql: string, params?: readonly unknown[]): Promise<T[]>;
  get<T>(sql: string, params?: readonly unknown[]): Promise<T | undefined>;
  /** Runs a change; resolves to the number of rows it changed. */
  run(sql: string, params?: readonly unknown[]): Promise<number>;
  /** Runs statements without parameters (migrations). */
  exec(sql: string): Promise<void>;
  transaction<T>(locks: readonly TxLock[], fn: (x: Executor) => Promise<T>): Promise<T>;
  /**
   * Tells every process watching `channel`, once the current transaction commits
   * (PostgreSQL NOTIFY). SQLite's watchers poll instead: a no-op there.
   */
  notify(channel: string, payload: string): Promise<void>;
}

interface CogDbRow { name: string; created_at: number; revoked_at: number | null }
interface AssignmentDbRow { port: number; cog: string; route: string; assigned_at: number }
interface ProofDbRow {
  cog: string; hostname: string; value: string; state: DomainProofState; created_at: number;
  verified_at: number | null; checked_at: number | null; last_error: string | null; proof_cog: string | null; misses: number;
}

const ASSIGNMENT_COLUMNS = "port, cog, route, assigned_at";
const ENDPOINT_COLUMNS = "name, tunnel_address, server_name, started_at, heartbeat_at";
interface EndpointDbRow { name: string; tunnel_address: string; server_name: string; started_at: number; heartbeat_at: number }

function endpoint(r: EndpointDbRow): EndpointRow {
  return { name: r.name, tunnelAddress: r.tunnel_address, serverName: r.server_name, startedAt: r.started_at, heartbeatAt: r.heartbeat_at };
}
const PROOF_COLUMNS = "cog, hostname, value, state, created_at, verified_at, checked_at, last_error, proof_cog, misses";

function assignment(r: AssignmentDbRow): PortAssignment {
  return { port: r.port, cog: r.cog, route: r.route, assignedAt: r.assigned_at };
}

function proof(r: ProofDbRow): DomainProofRow {
  return {
    cog: r.cog, hostname: r.hostname, value: r.value, state: r.state, createdAt: r.created_at,
    verifiedAt: r.verified_at, checkedAt: r.checked_at, lastError: r.last_error, proofCog: r.proof_cog, misses: r.misses,
  };
}

export class StoreQueries implements StoreOps {
  constructor(protected readonly x: Executor) {}

  /** Called once a revokeCog outside any transaction committed: a store wakes its own process's watchers. */
  protected afterRevoke(): void {}

  transaction<T>(locks: readonly TxLock[], fn: (tx: StoreOps) => Promise<T>): Promise<T> {
    return this.atomically(locks, fn);
  }

  /** A transaction whose body gets the queries bound to it (`q.x` is the transaction's executor). */
  private atomically<T>(locks: readonly TxLock[], fn: (q: StoreQueries) => Promise<T>): Promise<T> {
    return this.x.transaction(locks, (tx) => fn(tx === this.x ? this : new StoreQueries(tx)));
  }

  // ---- cogs and certificates ----

  async ensureCog(name: string, now = Date.now()): Promise<void> {
    await this.x.run("INSERT INTO cogs (name, created_at) VALUES (?, ?) ON CONFLICT (name) DO NOTHING", [name, now]);
  }

  async getCog(name: string): Promise<CogRow | undefined> {
    const r = await this.x.get<CogDbRow>("SELECT name, created_at, revoked_at FROM cogs WHERE name = ?", [name]);
    return r && { name: r.name, createdAt: r.created_at, revokedAt: r.revoked_at };
  }

  async listCogs(): Promise<CogListRow[]> {
    const rows = await this.x.all<CogDbRow & { online: number; last_seen: number | null; remote: string | null; routes: string | null; cert_not_after: number | null }>(
      `SELECT c.name, c.created_at, c.revoked_at, c.online, c.last_seen, c.remote, c.routes,
              (SELECT MAX(not_after) FROM certs WHERE cog = c.name AND revoked = 0) AS cert_not_after
         FROM cogs c ORDER BY c.name`,
    );
    const tunnels = new Map<string, string[]>();
    for (const t of await this.x.all<{ cog: string; endpoint: string }>("SELECT cog, endpoint FROM cog_tunnels ORDER BY cog, endpoint")) {
      const list = tunnels.get(t.cog);
      if (list) list.push(t.endpoint);
      else tunnels.set(t.cog, [t.endpoint]);
    }
    // Several hubs write one cogs row: "online" is a tunnel to any of them, not the last hub's word.
    return rows.map((r) => ({
      name: r.name, createdAt: r.created_at, revokedAt: r.revoked_at, certNotAfter: r.cert_not_after,
      online: r.online === 1 || tunnels.has(r.name), endpoints: tunnels.get(r.name) ?? [],
      lastSeen: r.last_seen, remote: r.remote, routes: r.routes ? (JSON.parse(r.routes) as string[]) : [],
    }));
  }

  async cogNames(): Promise<string[]> {
    return (await this.x.all<{ name: string }>("SELECT name FROM cogs ORDER BY name")).map((r) => r.name);
  }

  async markOnline(name: string, remote: string, routes: string[], now = Date.now()): Promise<void> {
    await this.x.run("UPDATE cogs SET online = 1, last_seen = ?, remote = ?, routes = ? WHERE name = ?", [now, remote, JSON.stringify(routes), name]);
  }

  async markOffline(name: string, now = Date.now()): Promise<void> {
    await this.x.run("UPDATE cogs SET online = 0, last_seen = ? WHERE name = ?", [now, name]);
  }

  async markAllOffline(): Promise<void> {
    await this.x.run("UPDATE cogs SET online = 0 WHERE online = 1");
  }

  async recordCert(cog: string, serial: string, notAfter: number, now = Date.now()): Promise<void> {
    await this.x.run("INSERT INTO certs (serial, cog, not_after, issued_at) VALUES (?, ?, ?, ?)", [serial, cog, notAfter, now]);
  }

  async certsOf(cog: string): Promise<CertRow[]> {
    const rows = await this.x.all<{ serial: string; cog: string; not_after: number; issued_at: number; revoked: number }>(
      "SELECT serial, cog, not_after, issued_at, revoked FROM certs WHERE cog = ? ORDER BY issued_at, serial", [cog]);
    return rows.map((r) => ({ serial: r.serial, cog: r.cog, notAfter: r.not_after, issuedAt: r.issued_at, revoked: r.revoked !== 0 }));
  }

  async certProblem(cog: string, serial: string): Promise<string | null> {
    const c = await this.getCog(cog);
    if (!c) return `cog ${cog} is unknown to this hub`;
    if (c.revokedAt !== null) return `cog ${cog} is revoked`;
    const row = await this.x.get<{ cog: string; revoked: number }>("SELECT cog, revoked FROM certs WHERE serial = ?", [serial]);
    if (!row) return `certificate ${serial} was not issued by this hub's records`;
    if (row.cog !== cog) return `certificate ${serial} belongs to another cog`;
    if (row.revoked) return `certificate ${serial} is revoked`;
    return null;
  }

  async newerCertIssuedAt(cog: string, serial: string): Promise<number | null> {
    const r = await this.x.get<{ at: number | null }>(
      `SELECT MAX(c.issued_at) AS at FROM certs c JOIN certs p ON p.serial = ?
        WHERE c.cog = ? AND c.serial <> p.serial AND c.issued_at >= p.issued_at`, [serial, cog]);
    return r?.at ?? null;
  }

  async revokeCog(name: string, now = Date.now()): Promise<boolean> {
    // The certs lock: a certificate being recorded for this cog (enrollment, renewal) either
    // commits before this and is revoked with the rest, or checks after it and is refused.
    const known = await this.atomically(["certs"], async (q) => {
      await q.x.run("UPDATE cogs SET revoked_at = ? WHERE name = ? AND revoked_at IS NULL", [now, name]);
      await q.x.run("UPDATE certs SET revoked = 1 WHERE cog = ?", [name]);
      await q.x.run("DELETE FROM invites WHERE cog = ? AND used_at IS NULL", [name]);
      // A restarted hub must not hold visitors for a revoked cog's routes.
      await q.x.run("DELETE FROM cog_routes WHERE cog = ?", [name]);
      if (!(await q.getCog(name))) return false;
      // Numbered under the lock, so seq order is commit order and a watcher that has seen
      // seq N has seen every revocation before it.
      await q.x.run("INSERT INTO revocations (seq, cog, revoked_at) SELECT COALESCE(MAX(seq), 0) + 1, ?, ? FROM revocations", [name, now]);
      await q.x.notify(REVOCATION_CHANNEL, name);
      return true;
    });
    if (known && !this.x.inTransaction) this.afterRevoke();
    return known;
  }

  async revokedCogs(): Promise<Set<string>> {
    const rows = await this.x.all<{ name: string }>("SELECT name FROM cogs WHERE revoked_at IS NOT NULL");
    return new Set(rows.map((r) => r.name));
  }

  async revocationsSince(seq: number): Promise<RevocationRow[]> {
    const rows = await this.x.all<{ seq: number; cog: string; revoked_at: number }>(
      "SELECT seq, cog, revoked_at FROM revocations WHERE seq > ? ORDER BY seq", [seq]);
    return rows.map((r) => ({ seq: r.seq, cog: r.cog, revokedAt: r.revoked_at }));
  }

  async lastRevocationSeq(): Promise<number> {
    return (await this.x.get<{ seq: number | null }>("SELECT MAX(seq) AS seq FROM revocations"))?.seq ?? 0;
  }

  // ---- invites ----

  async addInvite(cog: string, tokenHash: string, expiresAt: number, now = Date.now()): Promise<void> {
    await this.atomically([], async (q) => {
      await q.ensureCog(cog, now);
      await q.x.run("UPDATE cogs SET revoked_at = NULL WHERE name = ?", [cog]);
      await q.x.run("INSERT INTO invites (token_hash, cog, created_at, expires_at) VALUES (?, ?, ?, ?)", [tokenHash, cog, now, expiresAt]);
    });
  }

  async checkInvite(tokenHash: string, now = Date.now()): Promise<InviteCheck> {
    const r = await this.x.get<{ cog: string; expires_at: number; used_at: number | null }>(
      "SELECT cog, expires_at, used_at FROM invites WHERE token_hash = ?", [tokenHash]);
    if (!r) return { problem: "unknown invite token" };
    if (r.used_at !== null) return { problem: "this invite token was already used" };
    if (r.expires_at <= now) return { problem: "this invite token has expired; ask the hub operator for a new one" };
    return { cog: r.cog };
  }

  async useInvite(tokenHash: string, now = Date.now()): Promise<InviteCheck> {
    // One statement: of two enrollments racing with one token (two hubs, or two tunnels to
    // one), the second's UPDATE waits for the first's row and then matches nothing.
    const used = await this.x.get<{ cog: string }>(
      "UPDATE invites SET used_at = ? WHERE token_hash = ? AND used_at IS NULL AND expires_at > ? RETURNING cog", [now, tokenHash, now]);
    if (used) return { cog: used.cog };
    const why = await this.checkInvite(tokenHash, now);
    return "problem" in why ? why : { problem: "this invite token was already used" };
  }

  async listInvites(): Promise<InviteListRow[]> {
    // The token hash only breaks ties between invites made in the same millisecond; it is not returned.
    const rows = await this.x.all<{ cog: string; created_at: number; expires_at: number; used_at: number | null }>(
      "SELECT cog, created_at, expires_at, used_at FROM invites ORDER BY created_at DESC, token_hash");
    return rows.map((r) => ({ cog: r.cog, createdAt: r.created_at, expiresAt: r.expires_at, usedAt: r.used_at }));
  }

  // ---- grants ----

  async addGrant(cog: string, kind: StoredGrant["kind"], value: string): Promise<void> {
    await this.x.run("INSERT INTO grants (cog, kind, value) VALUES (?, ?, ?) ON CONFLICT DO NOTHING", [cog, kind, value]);
  }

  async grants(cog: string): Promise<{ hostnames: string[]; tcp: string[] }> {
    const rows = await this.x.all<{ kind: string; value: string }>("SELECT kind, value FROM grants WHERE cog = ? ORDER BY value", [cog]);
    return {
      hostnames: rows.filter((r) => r.kind === "hostname").map((r) => r.value),
      tcp: rows.filter((r) => r.kind === "tcp").map((r) => r.value),
    };
  }

  async allGrants(kind?: StoredGrant["kind"]): Promise<StoredGrant[]> {
    if (kind) return this.x.all<StoredGrant>("SELECT cog, kind, value FROM grants WHERE kind = ? ORDER BY cog, value", [kind]);
    return this.x.all<StoredGrant>("SELECT cog, kind, value FROM grants ORDER BY cog, kind, value");
  }

  async removeGrant(cog: string, kind: StoredGrant["kind"], value: string): Promise<boolean> {
    return (await this.x.run("DELETE FROM grants WHERE cog = ? AND kind = ? AND value = ?", [cog, kind, value])) > 0;
  }

  // ---- TCP port assignments ----

  async portFor(cog: string, route: string): Promise<number | undefined> {
    return (await this.x.get<{ port: number }>("SELECT port FROM tcp_ports WHERE cog = ? AND route = ?", [cog, route]))?.port;
  }

  async portOwner(port: number): Promise<{ cog: string; route: string } | undefined> {
    const r = await this.x.get<{ cog: string; route: string }>("SELECT cog, route FROM tcp_ports WHERE port = ?", [port]);
    return r && { cog: r.cog, route: r.route };
  }

  async touchPort(port: number, now = Date.now()): Promise<void> {
    await this.x.run("UPDATE tcp_ports SET assigned_at = ? WHERE port = ?", [now, port]);
  }

  async assignmentsIn(from: number, to: number): Promise<PortAssignment[]> {
    return (await this.x.all<AssignmentDbRow>(`SELECT ${ASSIGNMENT_COLUMNS} FROM tcp_ports WHERE port BETWEEN ? AND ? ORDER BY port`, [from, to])).map(assignment);
  }

  async assignmentsOf(cog: string): Promise<PortAssignment[]> {
    return (await this.x.all<AssignmentDbRow>(`SELECT ${ASSIGNMENT_COLUMNS} FROM tcp_ports WHERE cog = ? ORDER BY port`, [cog])).map(assignment);
  }

  async allAssignments(): Promise<PortAssignment[]> {
    return (await this.x.all<AssignmentDbRow>(`SELECT ${ASSIGNMENT_COLUMNS} FROM tcp_ports ORDER BY port`)).map(assignment);
  }

  async assignPort(cog: string, route: string, port: number, now = Date.now()): Promise<void> {
    await this.x.run("INSERT INTO tcp_ports (port, cog, route, assigned_at) VALUES (?, ?, ?, ?)", [port, cog, route, now]);
  }

  async moveAssignment(port: number, cog: string, route: string, now = Date.now()): Promise<void> {
    await this.atomically([], async (q) => {
      await q.x.run("DELETE FROM tcp_ports WHERE cog = ? AND route = ? AND port <> ?", [cog, route, port]);
      const n = await q.x.run("UPDATE tcp_ports SET route = ?, assigned_at = ? WHERE port = ? AND cog = ?", [route, now, port, cog]);
      if (n !== 1) throw new Error(`hub port ${port} is not assigned to cog ${cog}`);
    });
  }

  async reassignPort(cog: string, route: string, port: number, now = Date.now()): Promise<void> {
    await this.atomically([], async (q) => {
      await q.releasePort(cog, route);
      await q.assignPort(cog, route, port, now);
    });
  }

  async carryPort(from: string, to: string, route: string, now = Date.now()): Promise<{ port: number; released: number | null } | undefined> {
    return this.atomically(["ports"], async (q) => {
      const port = await q.portFor(from, route);
      if (port === undefined) return undefined;
      const dropped = await q.x.get<{ port: number }>("DELETE FROM tcp_ports WHERE cog = ? AND route = ? RETURNING port", [to, route]);
      const n = await q.x.run("UPDATE tcp_ports SET cog = ?, assigned_at = ? WHERE port = ? AND cog = ? AND route = ?", [to, now, port, from, route]);
      if (n !== 1) throw new Error(`hub port ${port} is no longer assigned to cog ${from}'s route ${route}`);
      return { port, released: dropped?.port ?? null };
    });
  }

  async releasePort(cog: string, route: string): Promise<void> {
    await this.x.run("DELETE FROM tcp_ports WHERE cog = ? AND route = ?", [cog, route]);
  }

  async releasePortNumber(port: number): Promise<PortAssignment | undefined> {
    const r = await this.x.get<AssignmentDbRow>(`DELETE FROM tcp_ports WHERE port = ? RETURNING ${ASSIGNMENT_COLUMNS}`, [port]);
    return r && assignment(r);
  }

  // ---- routes ----

  async saveRoutes(cog: string, routes: readonly StoredRoute[], now = Date.now()): Promise<void> {
    await this.atomically([], async (q) => {
      await q.x.run("DELETE FROM cog_routes WHERE cog = ?", [cog]);
      for (const r of routes) {
        await q.x.run("INSERT INTO cog_routes (cog, route, kind, hostname, port, updated_at) VALUES (?, ?, ?, ?, ?, ?)",
          [cog, r.route, r.kind, r.hostname, r.port, now]);
      }
    });
  }

  async routesOf(cog: string): Promise<StoredRoute[]> {
    return this.x.all<StoredRoute>("SELECT route, kind, hostname, port FROM cog_routes WHERE cog = ? ORDER BY route", [cog]);
  }

  async allRoutes(): Promise<Array<StoredRoute & { cog: string }>> {
    return this.x.all<StoredRoute & { cog: string }>("SELECT cog, route, kind, hostname, port FROM cog_routes ORDER BY cog, route");
  }

  // ---- endpoints and tunnels ----

  async registerEndpoint(name: string, tunnelAddress: string, serverName: string, startedAt: number, now = Date.now()): Promise<void> {
    await this.x.run(
      `INSERT INTO endpoints (name, tunnel_address, server_name, started_at, heartbeat_at) VALUES (?, ?, ?, ?, ?)
       ON CONFLICT (name) DO UPDATE SET tunnel_address = excluded.tunnel_address, server_name = excluded.server_name,
         started_at = excluded.started_at, heartbeat_at = excluded.heartbeat_at`,
      [name, tunnelAddress, serverName, startedAt, now]);
  }

  async heartbeatEndpoint(name: string, startedAt: number, now = Date.now()): Promise<boolean> {
    return (await this.x.run("UPDATE endpoints SET heartbeat_at = ? WHERE name = ? AND started_at = ?", [now, name, startedAt])) === 1;
  }

  async getEndpoint(name: string): Promise<EndpointRow | undefined> {
    const r = await this.x.get<EndpointDbRow>(`SELECT ${ENDPOINT_COLUMNS} FROM endpoints WHERE name = ?`, [name]);
    return r && endpoint(r);
  }

  async liveEndpoints(since: number): Promise<EndpointRow[]> {
    return (await this.x.all<EndpointDbRow>(`SELECT ${ENDPOINT_COLUMNS} FROM endpoints WHERE heartbeat_at >= ? ORDER BY name`, [since])).map(endpoint);
  }

  async reapEndpoints(before: number): Promise<string[]> {
    return this.atomically([], async (q) => {
      const gone = (await q.x.all<{ name: string }>("SELECT name FROM endpoints WHERE heartbeat_at < ? ORDER BY name", [before])).map((r) => r.name);
      for (const name of gone) {
        await q.x.run("DELETE FROM cog_tunnels WHERE endpoint = ?", [name]);
        await q.x.run("DELETE FROM endpoints WHERE name = ? AND heartbeat_at < ?", [name, before]);
      }
      return gone;
    });
  }

  async removeEndpoint(name: string): Promise<void> {
    await this.atomically([], async (q) => {
      await q.x.run("DELETE FROM cog_tunnels WHERE endpoint = ?", [name]);
      await q.x.run("DELETE FROM endpoints WHERE name = ?", [name]);
    });
  }

  async recordTunnel(cog: string, endpoint: string, remote: string, now = Date.now()): Promise<void> {
    await this.x.run(
      `INSERT INTO cog_tunnels (cog, endpoint, remote, connected_at) VALUES (?, ?, ?, ?)
       ON CONFLICT (cog, endpoint) DO UPDATE SET remote = excluded.remote, connected_at = excluded.connected_at`,
      [cog, endpoint, remote, now]);
  }

  async clearTunnel(cog: string, endpoint: string): Promise<void> {
    await this.x.run("DELETE FROM cog_tunnels WHERE cog = ? AND endpoint = ?", [cog, endpoint]);
  }

  async tunnelsOf(cog: string): Promise<CogTunnelRow[]> {
    return this.tunnels("cog", cog);
  }

  async tunnelsTo(endpoint: string): Promise<CogTunnelRow[]> {
    return this.tunnels("endpoint", endpoint);
  }

  private async tunnels(by: "cog" | "endpoint", value: string): Promise<CogTunnelRow[]> {
    const rows = await this.x.all<{ cog: string; endpoint: string; remote: string; connected_at: number }>(
      `SELECT cog, endpoint, remote, connected_at FROM cog_tunnels WHERE ${by} = ? ORDER BY cog, endpoint`, [value]);
    return rows.map((r) => ({ cog: r.cog, endpoint: r.endpoint, remote: r.remote, connectedAt: r.connected_at }));
  }

  // ---- custom-domain proofs ----

  async putDomainProof(cog: string, hostname: string, value: string, now = Date.now()): Promise<boolean> {
    // A new value (the hub's CA changed) starts over; the same value keeps the proof's state.
    return (await this.x.run(
      `INSERT INTO domain_proofs (hostname, cog, value, state, created_at) VALUES (?, ?, ?, 'pending', ?)
       ON CONFLICT (hostname, cog) DO UPDATE SET value = excluded.value, state = 'pending', created_at = excluded.created_at,
         verified_at = NULL, checked_at = NULL, last_error = NULL, proof_cog = NULL, misses = 0
       WHERE domain_proofs.value <> excluded.value`,
      [hostname, cog, value, now])) > 0;
  }

  async domainProofsFor(hostname: string): Promise<DomainProofRow[]> {
    return (await this.x.all<ProofDbRow>(`SELECT ${PROOF_COLUMNS} FROM domain_proofs WHERE hostname = ? ORDER BY created_at, cog`, [hostname])).map(proof);
  }

  async domainProofsOf(cog: string): Promise<DomainProofRow[]> {
    return (await this.x.all<ProofDbRow>(`SELECT ${PROOF_COLUMNS} FROM domain_proofs WHERE cog = ? ORDER BY hostname`, [cog])).map(proof);
  }

  async allDomainProofs(): Promise<DomainProofRow[]> {
    return (await this.x.all<ProofDbRow>(`SELECT ${PROOF_COLUMNS} FROM domain_proofs ORDER BY hostname, created_at, cog`)).map(proof);
  }

  async markDomainProofChecked(cog: string, hostname: string, outcome: DomainLookupOutcome, error: string | null, now = Date.now(), missesToLose = 1): Promise<DomainProofState | undefined> {
    const where = "WHERE hostname = ? AND cog = ?";
    if (outcome === "found") {
      await this.x.run(`UPDATE domain_proofs SET state = 'verified', verified_at = ?, checked_at = ?, last_error = NULL, misses = 0 ${where}`, [now, now, hostname, cog]);
    } else if (outcome === "missing") {
      // Every SET expression reads the row as it was (both dialects): misses + 1 is this miss.
      await this.x.run(
        `UPDATE domain_proofs SET
           state = CASE WHEN state = 'verified' AND misses + 1 < ? THEN 'verified' WHEN state = 'pending' THEN 'pending' ELSE 'lost' END,
           misses = CASE WHEN state = 'verified' THEN misses + 1 ELSE misses END,
           checked_at = ?, last_error = ? ${where}`,
        [missesToLose, now, error, hostname, cog]);
    } else {
      await this.x.run(`UPDATE domain_proofs SET checked_at = ?, last_error = ? ${where}`, [now, error, hostname, cog]);
    }
    return (await this.x.get<{ state: DomainProofState }>(`SELECT state FROM domain_proofs ${where}`, [hostname, cog]))?.state;
  }

  async carryDomainProof(from: string, to: string, hostname: string): Promise<boolean> {
    return this.atomically([], async (q) => {
      const held = await q.x.get<{ cog: string }>("SELECT cog FROM domain_proofs WHERE hostname = ? AND cog = ? AND state = 'verified'", [hostname, from]);
      if (!held) return false;
      // The target's own claim on the name (pending since it announced the VM's routes) gives way to the proven one.
      await q.x.run("DELETE FROM domain_proofs WHERE hostname = ? AND cog = ?", [hostname, to]);
      // created_at is kept: the claim's place among other cogs' claims on the name is the owner's, not the cog's.
      await q.x.run("UPDATE domain_proofs SET cog = ?, proof_cog = COALESCE(proof_cog, ?) WHERE hostname = ? AND cog = ?", [to, from, hostname, from]);
      return true;
    });
  }

  async removeDomainProof(cog: string, hostname: string): Promise<boolean> {
    return (await this.x.run("DELETE FROM domain_proofs WHERE cog = ? AND hostname = ?", [cog, hostname])) > 0;
  }
}
