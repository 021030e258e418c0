/**
 * The hub's state store: one interface for everything a hub keeps beyond its
 * own process (cogs, certificates, invites as token hashes, grants, TCP port
 * assignments, revocations, cog status, routes, endpoints, custom-domain
 * proofs), with two implementations: SQLite (./sqlite.ts, the embedded
 * default, shared by the processes of one machine) and PostgreSQL
 * (./postgres.ts, shared by hubs on several machines). Both run the same SQL
 * (./queries.ts) and the same migrations (./schema.ts).
 *
 * Every call is async because PostgreSQL's are. What the synchronous SQLite
 * code got for free, atomicity between two steps, is now explicit: a
 * multi-step change runs in `transaction()`, whose locks serialise it against
 * the same kind of change in any process (SQLite: BEGIN IMMEDIATE, the one
 * write lock; PostgreSQL: transaction-scoped advisory locks).
 */
import type { RouteKind } from "../../config/types.js";

export interface CogRow { name: string; createdAt: number; revokedAt: number | null }
export interface CogListRow extends CogRow {
  certNotAfter: number | null;
  /** Connected to at least one hub endpoint (or, for a hub that keeps no tunnel rows, marked online). */
  online: boolean;
  /** The endpoints the cog has a tunnel to, by name. */
  endpoints: string[];
  lastSeen: number | null;
  remote: string | null;
  routes: string[];
}
export interface CertRow { serial: string; cog: string; notAfter: number; issuedAt: number; revoked: boolean }
export interface StoredGrant { cog: string; kind: "hostname" | "tcp"; value: string }
/** A hub TCP port held by one route of one cog; `assignedAt` is when it was assigned or last served. */
export interface PortAssignment { port: number; cog: string; route: string; assignedAt: number }
export interface InviteRow { cog: string; expiresAt: number; usedAt: number | null }
export interface InviteListRow extends InviteRow { createdAt: number }
/** One `capsul hub revoke`, in commit order: `seq` only grows. */
export interface RevocationRow { seq: number; cog: string; revokedAt: number }
/** A route a cog holds, kept so that a restarted hub (or another endpoint) knows it before the cog is back. */
export interface StoredRoute { route: string; kind: RouteKind; hostname: string | null; port: number | null }
/** A hub process cogs can dial, alive while its heartbeat is recent. */
export interface EndpointRow { name: string; tunnelAddress: string; serverName: string; startedAt: number; heartbeatAt: number }
/** A live tunnel of a cog to one endpoint. */
export interface CogTunnelRow { cog: string; endpoint: string; remote: string; connectedAt: number }
/**
 * Where a custom-domain proof stands: never found yet (`pending`), found at the last lookup
 * that got an answer (`verified`: the cog may route the name), or found once and missing
 * since (`lost`: its routes were withdrawn).
 */
export type DomainProofState = "pending" | "verified" | "lost";
/** What one lookup of a proof's TXT record said: the value is there, it is not, or no answer (timeout, SERVFAIL). */
export type DomainLookupOutcome = "found" | "missing" | "no-answer";

/**
 * A cog's claim on a hostname outside its grants, proven by a DNS TXT record
 * `_capsul-challenge.<hostname>` holding `value` (protocol/domainproof.ts).
 * One row per hostname and cog.
 */
export interface DomainProofRow {
  cog: string;
  hostname: string;
  value: string;
  state: DomainProofState;
  createdAt: number;
  /** When the record was last found; null until it first is. */
  verifiedAt: number | null;
  /** When it was last looked up, found or not. */
  checkedAt: number | null;
  /** Why the last lookup did not find it (missing, or no answer); null after a lookup that found it. */
  lastError: string | null;
  /**
   * The cog whose name `value` is derived from, when not `cog`: the claim was proven for that
   * cog and carried here with a moved VM (gateway/carry.ts). Null for a claim made here.
   */
  proofCog: string | null;
  /** Lookups in a row that found the record of a proven claim missing (0 after one that found it). */
  misses: number;
}

export type InviteCheck = { cog: string } | { problem: string };

/**
 * What a transaction serialises against, in every process sharing the store.
 * PostgreSQL takes them as advisory locks (in this order, so two transactions
 * never wait on each other crosswise); SQLite's BEGIN IMMEDIATE already holds
 * the one write lock.
 * - grants: checking new grants against every cog's, then storing them (invites).
 * - ports: choosing a free hub TCP port, then assigning it.
 * - certs: recording a certificate after checking the cog is not revoked, and
 *   revoking (so a revoke cannot slip between the check and the insert).
 */
export type TxLock = "grants" | "ports" | "certs";
export const TX_LOCK_ORDER: readonly TxLock[] = ["grants", "ports", "certs"];

/** Every query and change; also what a transaction body gets. */
export interface StoreOps {
  /**
   * Runs `fn` in one transaction holding `locks`; commits when it resolves, rolls back
   * when it throws. Inside a transaction this joins the outer one (taking any further lock).
   * `fn` must use only the handle it is given: the store itself waits for the transaction.
   */
  transaction<T>(locks: readonly TxLock[], fn: (tx: StoreOps) => Promise<T>): Promise<T>;

  // ---- cogs and certificates ----
  ensureCog(name: string, now?: number): Promise<void>;
  getCog(name: string): Promise<CogRow | undefined>;
  listCogs(): Promise<CogListRow[]>;
  /** Names of every cog ever invited, revoked ones included (an invite lifts a revocation). */
  cogNames(): Promise<string[]>;
  /** Live status, written by the running hub for `capsul hub cogs`. */
  markOnline(name: string, remote: string, routes: string[], now?: number): Promise<void>;
  markOffline(name: string, now?: number): Promise<void>;
  /** At hub start nothing is connected yet. */
  markAllOffline(): Promise<void>;
  recordCert(cog: string, serial: string, notAfter: number, now?: number): Promise<void>;
  certsOf(cog: string): Promise<CertRow[]>;
  /** Why a presented certificate may not be used, or null if it may. */
  certProblem(cog: string, serial: string): Promise<string | null>;
  /**
   * When another certificate was issued to this cog at or after the one with `serial`
   * (i.e. that one was already renewed or replaced), the latest such time; else null.
   */
  newerCertIssuedAt(cog: string, serial: string): Promise<number | null>;
  /** Revokes the cog and every certificate it holds, and tells every hub. Returns false if unknown. */
  revokeCog(name: string, now?: number): Promise<boolean>;
  revokedCogs(): Promise<Set<string>>;
  /** Revocations after `seq`, oldest first. */
  revocationsSince(seq: number): Promise<RevocationRow[]>;
  /** The newest revocation's seq, 0 if none. */
  lastRevocationSeq(): Promise<number>;

  // ---- invites ----
  /** Stores an invite; re-inviting a revoked cog lifts the revocation (its old certificates stay revoked). */
  addInvite(cog: string, tokenHash: string, expiresAt: number, now?: number): Promise<void>;
  /** The cog an invite is for, or why it cannot be used; consumes nothing (see useInvite). */
  checkInvite(tokenHash: string, now?: number): Promise<InviteCheck>;
  /** Consumes an invite atomically: a token works once, before it expires. */
  useInvite(tokenHash: string, now?: number): Promise<InviteCheck>;
  /** Every invite, newest first, for the admin API (the token hashes stay in the store). */
  listInvites(): Promise<InviteListRow[]>;

  // ---- grants (beyond capsul.yaml) ----
  addGrant(cog: string, kind: StoredGrant["kind"], value: string): Promise<void>;
  grants(cog: string): Promise<{ hostnames: string[]; tcp: string[] }>;
  /** Every stored grant of every cog, for the checks that no two cogs' grants overlap. */
  allGrants(kind?: StoredGrant["kind"]): Promise<StoredGrant[]>;
  /** Removes one stored grant (`capsul hub ungrant`); false if there was none. */
  removeGrant(cog: string, kind: StoredGrant["kind"], value: string): Promise<boolean>;

  // ---- TCP port assignments ----
  portFor(cog: string, route: string): Promise<number | undefined>;
  portOwner(port: number): Promise<{ cog: string; route: string } | undefined>;
  /** Stamps an assignment as last served now: reclaiming takes the longest-unused first. */
  touchPort(port: number, now?: number): Promise<void>;
  assignmentsIn(from: number, to: number): Promise<PortAssignment[]>;
  assignmentsOf(cog: string): Promise<PortAssignment[]>;
  allAssignments(): Promise<PortAssignment[]>;
  assignPort(cog: string, route: string, port: number, now?: number): Promise<void>;
  /**
   * Gives the assignment of `port` to another route of the same cog, dropping whatever
   * that route held before (a rename that keeps its port, or a cog reusing one of its own
   * stale assignments). One transaction: no moment where the cog holds neither.
   */
  moveAssignment(port: number, cog: string, route: string, now?: number): Promise<void>;
  /** Replaces the route's assignment (if any) by `port`, atomically. */
  reassignPort(cog: string, route: string, port: number, now?: number): Promise<void>;
  releasePort(cog: string, route: string): Promise<void>;
  /**
   * A moved VM's port follows it: the assignment of `from`'s `route` becomes `to`'s (same
   * route name), replacing whatever port `to` held for that route, in one transaction under
   * the ports lock. Undefined (nothing changed) when `from` holds no port for `route`.
   * The caller checks that `to` may hold it (grants, pool limit).
   */
  carryPort(from: string, to: string, route: string, now?: number): Promise<{ port: number; released: number | null } | undefined>;
  /** Drops the assignment of one port, whoever holds it (`capsul hub ports release`). */
  releasePortNumber(port: number): Promise<PortAssignment | undefined>;

  // ---- routes a cog holds (for a restarted hub and other endpoints) ----
  /** Replaces the cog's stored routes by `routes`. */
  saveRoutes(cog: string, routes: readonly StoredRoute[], now?: number): Promise<void>;
  routesOf(cog: string): Promise<StoredRoute[]>;
  allRoutes(): Promise<Array<StoredRoute & { cog: string }>>;

  // ---- endpoints (hub processes) and which cog has a tunnel to which ----
  /** Registers (or re-registers) an endpoint; `startedAt` tells this process's row from another's of the same name. */
  registerEndpoint(name: string, tunnelAddress: string, serverName: string, startedAt: number, now?: number): Promise<void>;
  /**
   * False if the row is not this process's any more: reaped as dead, or taken over by
   * another process with the same name (its `startedAt` differs).
   */
  heartbeatEndpoint(name: string, startedAt: number, now?: number): Promise<boolean>;
  /** The endpoint row of that name, live or not. */
  getEndpoint(name: string): Promise<EndpointRow | undefined>;
  /** Removes the endpoints (and their tunnel rows) not stamped since `before`; returns their names. */
  reapEndpoints(before: number): Promise<string[]>;
  /** Endpoints whose last heartbeat is at or after `since`. */
  liveEndpoints(since: number): Promise<EndpointRow[]>;
  /** Forgets an endpoint and the tunnels recorded to it. */
  removeEndpoint(name: string): Promise<void>;
  recordTunnel(cog: string, endpoint: string, remote: string, now?: number): Promise<void>;
  clearTunnel(cog: string, endpoint: string): Promise<void>;
  tunnelsOf(cog: string): Promise<CogTunnelRow[]>;
  tunnelsTo(endpoint: string): Promise<CogTunnelRow[]>;

  // ---- custom-domain proofs (issue 10) ----
  /**
   * Records that `cog` claims `hostname` with `value`, pending, unless it already does with
   * that value (then nothing changes: a cog announcing its routes again keeps its proof).
   * Returns true when a row was written.
   */
  putDomainProof(cog: string, hostname: string, value: string, now?: number): Promise<boolean>;
  /** Every cog's claim on `hostname`. */
  domainProofsFor(hostname: string): Promise<DomainProofRow[]>;
  domainProofsOf(cog: string): Promise<DomainProofRow[]>;
  /** Every claim of every cog (the clash checks read them all: one small table). */
  allDomainProofs(): Promise<DomainProofRow[]>;
  /**
   * Records a lookup: found makes the proof verified (and its misses 0); missing counts a miss
   * of a verified one, which is lost at the `missesToLose`-th in a row (a pending one stays
   * pending, a lost one lost); no answer changes no state. `error` says why it was not found.
   * Returns the state after.
   */
  markDomainProofChecked(cog: string, hostname: string, outcome: DomainLookupOutcome, error: string | null, now?: number, missesToLose?: number): Promise<DomainProofState | undefined>;
  removeDomainProof(cog: string, hostname: string): Promise<boolean>;
  /**
   * A moved VM's proven name follows it: `from`'s verified claim on `hostname` becomes `to`'s,
   * with its value, state and times (proofCog remembers whose value it is), replacing any
   * claim `to` had on the name. False (nothing changed) when `from` holds no verified claim on it.
   */
  carryDomainProof(from: string, to: string, hostname: string): Promise<boolean>;
}

/** A running revocation watch; see HubStore.watchRevocations. */
export interface RevocationWatch { close(): Promise<void> }

export interface HubStore extends StoreOps {
  readonly dialect: "sqlite" | "postgres";
  /** Where the state lives, for logs: a file path or a URL without the password. */
  readonly location: string;
  /**
   * Calls `onRevoked` with the cogs revoked by any process after the watch started:
   * SQLite polls PRAGMA data_version every `pollIntervalMs` (cheap: no query when
   * nothing was written); PostgreSQL listens for the notification every revoke sends,
   * and after a lost connection reconnects every `pollIntervalMs` and catches up.
   */
  watchRevocations(onRevoked: (cogs: string[]) => void, pollIntervalMs: number): Promise<RevocationWatch>;
  close(): Promise<void>;
}
