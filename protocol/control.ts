/**
 * The control stream and the visitor-stream header: message shapes and their
 * validation. See protocol/PROTOCOL.md for the prose spec.
 */
import type { RouteKind } from "../config/types.js";
import { ProtocolError } from "../lib/errors.js";

/** Bump on any incompatible change to the messages below. */
export const TUNNEL_PROTOCOL_VERSION = 1;

/** A route as the cog asks for it. Targets stay on the cog; the hub never learns them. */
export interface WireRoute {
  name: string;
  kind: RouteKind;
  hostname?: string;
  port?: number;
}
/** A route the hub accepted; tcp routes carry the hub port assigned. */
export interface AcceptedRoute extends WireRoute { port?: number }
/**
 * A route the hub refused. `code`, when present, says why for a program (`reason` is for
 * people): "domain_unproven" = outside the cog's grants and waiting for its DNS proof
 * (gateway/domains.ts). Absent from older hubs; a cog falls back to the text.
 */
export interface RefusedRoute { name: string; reason: string; code?: string }
/** RefusedRoute.code of a hostname waiting for its DNS proof. */
export const REFUSAL_DOMAIN_UNPROVEN = "domain_unproven";
/**
 * A hub endpoint (issue 12): one hub process a cog keeps a tunnel to. `address` is the
 * host:port to dial, `serverName` the TLS SNI to send: several endpoints may share one
 * address and differ by server name only.
 */
export interface WireEndpoint { name: string; address: string; serverName: string }
/** A cog reads at most this many endpoints from one list (a hub is a handful of processes, not thousands). */
export const ENDPOINTS_MAX = 256;

/**
 * One of the cog's claims on a hostname outside its grants (gateway/domains.ts): the TXT
 * record that proves it and where the proof stands. Times are epoch milliseconds.
 */
export interface WireDomainProof {
  hostname: string;
  /** Where the TXT record goes: `_capsul-challenge.<hostname>`. */
  record: string;
  /** What it must hold. */
  value: string;
  state: "pending" | "verified" | "lost";
  verifiedAt: number | null;
  checkedAt: number | null;
  lastError: string | null;
}

export type CogMessage =
  | { type: "hello"; protocol: number; software: string; routes: WireRoute[] }
  | { type: "routes"; routes: WireRoute[] }
  | { type: "enroll"; protocol: number; token: string; csr: string }
  | { type: "renew"; csr: string }
  /**
   * The cog gave these names up (a VM's domain removed, a VM deleted): the hub deletes this
   * cog's own claims on them (gateway/domains.ts release). Sent only to a hub whose welcome
   * said `domainsRelease: true` (an older hub drops the tunnel on a type it does not know).
   */
  | { type: "domains-release"; hostnames: string[] };

/** "renew": a renewal was refused (not due, renewed too recently, bad CSR); the only code after which the tunnel stays up. */
export type ErrorCode = "version" | "auth" | "revoked" | "bad-request" | "enroll" | "renew";

export type HubMessage =
  | {
    type: "welcome"; protocol: number; cog: string; domain: string; accepted: AcceptedRoute[]; refused: RefusedRoute[];
    /** The name of the endpoint that answered, and every live endpoint (absent from hubs before issue 12). */
    endpoint?: string; endpoints?: WireEndpoint[];
    /** The hub takes `domains-release` messages (absent from older hubs: the cog keeps its releases for later). */
    domainsRelease?: boolean;
  }
  /** The live endpoints changed; the whole list (added in protocol 1 without a bump: older cogs ignore unknown types). */
  | { type: "endpoints"; endpoints: WireEndpoint[] }
  | { type: "routes-result"; accepted: AcceptedRoute[]; refused: RefusedRoute[] }
  | { type: "enrolled"; cog: string; cert: string; ca: string; domain: string }
  | { type: "renewed"; cert: string }
  /** The cog's custom-domain claims, whenever they may have changed; a cog that does not know it ignores it. */
  | { type: "domains"; proofs: WireDomainProof[] }
  /**
   * Send your route set again, on every endpoint: a VM moved here and the hub gave you its
   * port or names (gateway/carry.ts); the other endpoints learn that from your announce.
   * Added in protocol 1 without a bump: older cogs ignore unknown types.
   */
  | { type: "announce" }
  | { type: "error"; code: ErrorCode; message: string };

/** First message on every visitor stream (hub → cog). */
export interface VisitorHeader {
  type: "visitor";
  kind: RouteKind;
  /** Name of the cog route the hub matched. */
  route: string;
  /** SNI or Host for tls/http; absent for tcp. */
  host?: string;
  /** Visitor's address and port as the hub saw them. */
  srcAddr: string;
  srcPort: number;
  /** The hub address and port the visitor connected to. */
  dstAddr: string;
  dstPort: number;
}

const KINDS: readonly string[] = ["tls", "http", "tcp"];

/** The hub's answer to a hello with another protocol version: says which side to upgrade. */
export function versionMismatchMessage(hubVersion: number, cogVersion: unknown): string {
  const older = typeof cogVersion === "number" && cogVersion > hubVersion ? "hub" : "cog";
  const newer = older === "hub" ? "cog" : "hub";
  return `tunnel protocol mismatch: the hub speaks version ${hubVersion}, the cog ${String(cogVersion)}; upgrade the ${older} to the same capsul release as the ${newer}`;
}

function isObj(v: unknown): v is Record<string, unknown> {
  return typeof v === "object" && v !== null && !Array.isArray(v);
}

/** Validates a route list received from a cog (shape only; grants are checked by the hub). */
export function checkWireRoutes(v: unknown): WireRoute[] {
  if (!Array.isArray(v)) throw new ProtocolError("routes must be a list");
  if (v.length > 10_000) throw new ProtocolError("too many routes");
  return v.map((r, i) => {
    if (!isObj(r)) throw new ProtocolError(`routes[${i}] is not an object`);
    if (typeof r.name !== "string" || r.name.length === 0 || r.name.length > 64) throw new ProtocolError(`routes[${i}].name is missing or too long`);
    if (typeof r.kind !== "string" || !KINDS.includes(r.kind)) throw new ProtocolError(`routes[${i}].kind must be tls, http or tcp`);
    const out: WireRoute = { name: r.name, kind: r.kind as RouteKind };
    if (r.hostname !== undefined) {
      if (typeof r.hostname !== "string") throw new ProtocolError(`routes[${i}].hostname is not a string`);
      out.hostname = r.hostname;
    }
    if (r.port !== undefined) {
      if (typeof r.port !== "number" || !Number.isInteger(r.port) || r.port < 1 || r.port > 65535) throw new ProtocolError(`routes[${i}].port is not a port`);
      out.port = r.port;
    }
    return out;
  });
}

/** Names in one `domains-release` message; a cog with more sends several. */
export const DOMAINS_RELEASE_MAX = 64;
/** The longest DNS name (RFC 1035: 253 characters in text form). */
export const HOSTNAME_MAX_CHARS = 253;

/** Validates a `domains-release` message's names (shape only; the hub normalizes them); throws ProtocolError. */
export function checkDomainsRelease(v: unknown): string[] {
  if (!Array.isArray(v)) throw new ProtocolError("domains-release.hostnames must be a list");
  if (v.length > DOMAINS_RELEASE_MAX) throw new ProtocolError(`domains-release: ${v.length} names, at most ${DOMAINS_RELEASE_MAX} in one message`);
  return v.map((h, i) => {
    if (typeof h !== "string" || h.length === 0 || h.length > HOSTNAME_MAX_CHARS) throw new ProtocolError(`domains-release.hostnames[${i}] is not a hostname of 1 to ${HOSTNAME_MAX_CHARS} characters`);
    return h;
  });
}

const PROOF_STATES: readonly string[] = ["pending", "verified", "lost"];

/** Validates the hub's `domains` message (shape only); throws ProtocolError. */
export function checkWireDomainProofs(v: unknown): WireDomainProof[] {
  if (!Array.isArray(v)) throw new ProtocolError("domains.proofs must be a list");
  const time = (x: unknown): x is number | null => x === null || (typeof x === "number" && Number.isFinite(x));
  return v.map((p, i) => {
    if (!isObj(p) || typeof p.hostname !== "string" || typeof p.record !== "string" || typeof p.value !== "string"
      || typeof p.state !== "string" || !PROOF_STATES.includes(p.state) || !time(p.verifiedAt) || !time(p.checkedAt)
      || !(p.lastError === null || typeof p.lastError === "string")) {
      throw new ProtocolError(`domains.proofs[${i}] is malformed`);
    }
    return {
      hostname: p.hostname, record: p.record, value: p.value, state: p.state as WireDomainProof["state"],
      verifiedAt: p.verifiedAt, checkedAt: p.checkedAt, lastError: p.lastError,
    };
  });
}

const ENDPOINT_NAME_RE = /^[a-z0-9][a-z0-9.-]{0,62}$/;

/**
 * The endpoints of a welcome or an endpoints message, as far as they are usable: entries
 * that are not {name, address "host:port", serverName} are skipped, not fatal (a newer hub
 * may add kinds of entries this cog does not know). Throws only when it is not a list.
 */
export function checkWireEndpoints(v: unknown): WireEndpoint[] {
  if (!Array.isArray(v)) throw new ProtocolError("endpoints must be a list");
  const out: WireEndpoint[] = [];
  for (const e of v.slice(0, ENDPOINTS_MAX)) {
    if (!isObj(e) || typeof e.name !== "string" || !ENDPOINT_NAME_RE.test(e.name)) continue;
    if (typeof e.address !== "string" || !/^(\[[0-9a-fA-F:.]+\]|[A-Za-z0-9.-]+):\d{1,5}$/.test(e.address)) continue;
    if (typeof e.serverName !== "string" || e.serverName.length > 253) continue;
    if (out.some((o) => o.name === e.name)) continue;
    out.push({ name: e.name, address: e.address, serverName: e.serverName });
  }
  return out;
}

export function checkVisitorHeader(v: { type: string }): VisitorHeader {
  const h = v as unknown as Record<string, unknown>;
  if (h.type !== "visitor") throw new ProtocolError(`expected a visitor header, got ${JSON.stringify(h.type)}`);
  if (typeof h.kind !== "string" || !KINDS.includes(h.kind)) throw new ProtocolError("visitor header: bad kind");
  if (typeof h.route !== "string") throw new ProtocolError("visitor header: missing route");
  if (typeof h.srcAddr !== "string" || typeof h.srcPort !== "number" || typeof h.dstAddr !== "string" || typeof h.dstPort !== "number") {
    throw new ProtocolError("visitor header: bad addresses");
  }
  return h as unknown as VisitorHeader;
}
