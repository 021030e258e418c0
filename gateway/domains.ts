/**
 * Custom domains by DNS proof (issue 10): a cog may route a hostname outside
 * its grants once the TXT record `_capsul-challenge.<name>` holds the value
 * protocol/domainproof.ts derives for that cog. A wildcard `*.<name>` needs
 * the proof on `<name>`; a proof on `<name>` also covers names under it
 * (whoever controls a zone's DNS controls its subdomains).
 *
 * The rules, in the order decide() applies them:
 * - names at or under the hub's own domain are the operator's to grant;
 * - a name another cog holds by grant (capsul.yaml, invite, default) is never
 *   taken by a proof, whatever DNS says;
 * - a name another cog has proven stays theirs (if the owner published both
 *   cogs' values, the earlier claim wins, so two proven claims never both
 *   refuse each other);
 * - otherwise a proven claim of this cog lets the route in; an unproven one
 *   is stored (pending) and the refusal says exactly which record to create.
 *
 * Lookups go through node:dns's Resolver (c-ares) at hub.domains.resolver, or
 * the system's. A lookup that finds the value proves the claim; answers
 * without it (NXDOMAIN, no TXT, other values) withdraw a proven claim's routes
 * once hub.domains.missing_before_withdraw of them came in a row (looked up
 * every pending_interval after the first); one that gets no answer (timeout, SERVFAIL, refused)
 * changes nothing and is tried again after error_retry_interval, with one log
 * line until an answer comes back. The claims of connected cogs are looked up
 * on a timer; a state change re-applies the cog's routes (hooks.changed), so
 * a route comes up or goes down without the cog doing anything. `cfg` is the hub's
 * live configuration: a reload of hub.domains takes effect at the next decision,
 * and reconfigure() restarts the timer. Withdrawing
 * a route only takes it out of the router: visitors already connected finish.
 */
import dns from "node:dns";
import type { HubConfig } from "../config/types.js";
import { fmtMs } from "../config/values.js";
import type { Logger } from "../lib/log.js";
import { formatHostPort, normalizeHostnamePattern, normalizedPatternsOverlap } from "../lib/hostname.js";
import { REFUSAL_DOMAIN_UNPROVEN, type WireDomainProof, type WireRoute } from "../protocol/control.js";
import { challengeName, describeRecord, domainProofValue } from "../protocol/domainproof.js";
import { describeGrant, otherCogsGrantOver, patternCovers } from "./grants.js";
import type { DomainLookupOutcome, DomainProofRow, DomainProofState, HubStore } from "./store/types.js";

/** Lookups in flight at once during a sweep: 8 resolvers that never answer cost 8 x lookup_timeout, not N x. */
export const DOMAIN_CHECK_CONCURRENCY = 8;

export interface DomainHooks {
  /** Cogs with a live tunnel here: only their claims are looked up. */
  liveCogs(): string[];
  /** A claim of `cog` changed state: re-apply its routes (and tell it). */
  changed(cog: string): void;
  /** A claim of `cog` was looked up without a change of state: tell it (last lookup, last error). */
  checked(cog: string): void;
}

export type DomainDecision = { ok: true } | { reason: string; code?: string };
export interface LookupResult { outcome: DomainLookupOutcome; error: string | null }

/** The name a pattern's proof is on: `*.x.example` and `x.example` both need `x.example`. */
export function proofBase(pattern: string): string {
  return pattern.startsWith("*.") ? pattern.slice(2) : pattern;
}

/** True if a proof on `name` lets a cog route `pattern` (the name itself, or anything under it). */
function proofCovers(name: string, pattern: string): boolean {
  return patternCovers(name, pattern) || patternCovers(`*.${name}`, pattern);
}

function proofOverlaps(name: string, pattern: string): boolean {
  return normalizedPatternsOverlap(name, pattern) || normalizedPatternsOverlap(`*.${name}`, pattern);
}

/** `a` was claimed before `b` (ties by cog name, so the order is total). */
function claimedBefore(a: DomainProofRow, b: DomainProofRow | undefined): boolean {
  if (!b) return true;
  return a.createdAt < b.createdAt || (a.createdAt === b.createdAt && a.cog < b.cog);
}

export class DomainProofs {
  private timer: NodeJS.Timeout | null = null;
  private sweeping: Promise<void> | null = null;
  private closed = false;
  /** Claims being looked up now, by "cog\0hostname": never two lookups of one claim at once. */
  private readonly inFlight = new Set<string>();
  /** Claims whose last lookup got no answer: retried after error_retry_interval, logged once. */
  private readonly unanswered = new Set<string>();
  /** The proven names of each connected cog at the last sweep: a change re-applies its routes. */
  private readonly provenSeen = new Map<string, Set<string>>();
  /** Lookups done, for tests and logs. */
  lookups = 0;

  constructor(
    private readonly cfg: HubConfig,
    private readonly store: HubStore,
    private readonly caFingerprint: string,
    private readonly log: Logger,
    private readonly hooks: DomainHooks,
  ) {}

  get enabled(): boolean { return this.cfg.domains.enabled; }

  /** Starts the periodic lookups (a no-op with hub.domains.enabled: false). */
  start(): void {
    if (!this.enabled || this.timer) return;
    const d = this.cfg.domains;
    const tick = Math.min(d.pendingIntervalMs, d.recheckIntervalMs, d.errorRetryIntervalMs);
    this.timer = setInterval(() => { if (!this.sweeping) this.sweeping = this.sweep().finally(() => { this.sweeping = null; }); }, tick);
    this.timer.unref();
  }

  /** After a reload: the timer follows the new intervals, and starts or stops with hub.domains.enabled. */
  reconfigure(): void {
    if (this.timer) clearInterval(this.timer);
    this.timer = null;
    this.unanswered.clear();
    if (!this.closed) this.start();
  }

  async close(): Promise<void> {
    this.closed = true;
    if (this.timer) clearInterval(this.timer);
    this.timer = null;
    await this.sweeping;
  }

  /** The value `cog` must publish for `hostname`. */
  valueFor(cog: string, hostname: string): string {
    return domainProofValue(this.caFingerprint, cog, hostname);
  }

  /**
   * True if the claim's value is the one derived now for the cog it was proven for (itself,
   * or the cog it was carried from with a moved VM, gateway/carry.ts): a value derived under
   * another hub CA counts for nothing.
   */
  private current(p: DomainProofRow): boolean {
    return p.value === this.valueFor(p.proofCog ?? p.cog, p.hostname);
  }

  /**
   * May `cog` route `pattern`, which its grants do not cover? Stores a pending claim when
   * there is none and starts its first lookup; never waits for DNS.
   */
  async decide(cog: string, pattern: string): Promise<DomainDecision> {
    const notGranted = `hostname ${pattern} is not granted to cog ${cog}`;
    if (!this.enabled) return { reason: notGranted };
    const base = proofBase(pattern);
    const domain = this.cfg.domain;
    if (base === domain || base.endsWith(`.${domain}`)) return { reason: `${notGranted}; names under the hub's domain ${domain} are granted by the hub operator only` };
    const grant = await otherCogsGrantOver(this.cfg, this.store, cog, pattern);
    if (grant) return { reason: `hostname ${pattern} overlaps ${describeGrant(grant)}; a DNS proof never takes a name out of another cog's grants` };
    const all = await this.store.allDomainProofs();
    const value = this.valueFor(cog, base);
    let mine = all.find((p) => p.cog === cog && p.hostname === base && this.current(p));
    // A claim carried here with a moved VM counts while its owner's record stands; once it is
    // lost (or never was proven), this cog's own record is what the owner must publish.
    if (mine?.proofCog && mine.state !== "verified") mine = undefined;
    const holder = all.find((p) => p.cog !== cog && p.state === "verified" && proofOverlaps(p.hostname, pattern) && claimedBefore(p, mine));
    // Proven on the name itself or on a name above it (`*.x` and `y.x` by a proof on `x`).
    const covered = all.some((p) => p.cog === cog && p.state === "verified" && this.current(p) && proofCovers(p.hostname, pattern));
    if (covered && !holder) return { ok: true };
    // The claim is stored (and looked up) even while another cog holds the name: when the
    // holder's record goes, this one's routes are re-applied (check()) and may take over.
    if (!mine && !covered) {
      const claims = all.filter((p) => p.cog === cog && p.hostname !== base).length;
      const max = this.cfg.domains.maxClaimsPerCog;
      if (claims >= max) return { reason: `${notGranted}; cog ${cog} already claims ${claims} names by DNS, its limit (hub.domains.max_claims_per_cog: ${max})` };
      await this.store.putDomainProof(cog, base, value);
      this.checkSoon(cog, base, value);
    }
    if (holder) return { reason: `hostname ${pattern} is held by cog ${holder.cog} (proven by DNS on ${holder.hostname})` };
    const interval = fmtMs(this.cfg.domains.pendingIntervalMs);
    const lost = mine?.state === "lost" ? "; the record was there before and is gone now" : "";
    const last = mine?.lastError ? `; last lookup: ${mine.lastError}` : "";
    const wild = pattern.startsWith("*.") ? ` (a wildcard needs the proof on ${base})` : "";
    return {
      reason: `${notGranted}; to prove you control ${base}${wild}, create the DNS record ${describeRecord(base, value)}; the hub looks it up every ${interval}${lost}${last}`,
      code: REFUSAL_DOMAIN_UNPROVEN,
    };
  }

  /**
   * The cog gave these names up (a `domains-release`): deletes its own claim on each (a
   * wildcard's is on its base), never another cog's and never a grant (those live
   * elsewhere). A name a route in `wanted` (the cog's last announced set) still needs is
   * kept: deleting it would withdraw that route until DNS proves it again. Other cogs'
   * claims on a released name are re-applied, as a lookup that changes a state does, so
   * one held back by this claim takes over at once. Returns the names released.
   */
  async release(cog: string, hostnames: readonly string[], wanted: readonly WireRoute[]): Promise<string[]> {
    const released: string[] = [];
    for (const raw of hostnames) {
      const pattern = normalizeHostnamePattern(raw);
      if (pattern === null) continue;
      const base = proofBase(pattern);
      if (wanted.some((r) => r.hostname !== undefined && proofCovers(base, r.hostname.toLowerCase()))) continue;
      const others = (await this.store.domainProofsFor(base)).filter((p) => p.cog !== cog);
      if (!(await this.store.removeDomainProof(cog, base))) continue;
      this.unanswered.delete(key(cog, base));
      released.push(base);
      for (const o of others) this.hooks.changed(o.cog);
    }
    return released;
  }

  /** What `cog` is told about its claims (the `domains` control message). */
  async reportOf(cog: string): Promise<WireDomainProof[]> {
    return (await this.store.domainProofsOf(cog)).map((p) => ({
      hostname: p.hostname, record: challengeName(p.hostname), value: p.value, state: p.state,
      verifiedAt: p.verifiedAt, checkedAt: p.checkedAt, lastError: p.lastError,
    }));
  }

  /** One pass over the claims of connected cogs: looks up those that are due. */
  async sweep(now = Date.now()): Promise<void> {
    const due: DomainProofRow[] = [];
    const changed: string[] = [];
    const live = this.hooks.liveCogs();
    try {
      for (const cog of live) {
        const claims = await this.store.domainProofsOf(cog);
        for (const p of claims) if (this.isDue(p, now)) due.push(p);
        // The cog's proven names changed without a lookup of this endpoint: another endpoint
        // proved or lost one (issue 12: each looks up the claims of the cogs connected to it,
        // and only the one whose lookup changed the state re-applied), `capsul hub domains
        // remove`, or a VM moved with its names. The cog's routes here follow. Seen for the
        // first time (a cog just connected, this hub just started), a proven name counts as new.
        const proven = new Set(claims.filter((p) => p.state === "verified").map((p) => p.hostname));
        const before = this.provenSeen.get(cog) ?? new Set<string>();
        this.provenSeen.set(cog, proven);
        if (proven.size !== before.size || [...before].some((h) => !proven.has(h))) changed.push(cog);
      }
    } catch (err) {
      this.log.error("could not read custom-domain claims", { error: (err as Error).message });
      return;
    }
    for (const cog of this.provenSeen.keys()) if (!live.includes(cog)) this.provenSeen.delete(cog);
    for (const cog of changed) this.hooks.changed(cog);
    for (let i = 0; i < due.length && !this.closed; i += DOMAIN_CHECK_CONCURRENCY) {
      await Promise.all(due.slice(i, i + DOMAIN_CHECK_CONCURRENCY).map((p) => this.check(p.cog, p.hostname, p.value)));
    }
  }

  private isDue(p: DomainProofRow, now: number): boolean {
    if (p.checkedAt === null) return true;
    const d = this.cfg.domains;
    // A proven name whose record was just found missing is asked again soon: its routes stay
    // until hub.domains.missing_before_withdraw misses in a row, and should not stay much longer.
    const interval = this.unanswered.has(key(p.cog, p.hostname)) ? d.errorRetryIntervalMs
      : p.state === "verified" && p.misses === 0 ? d.recheckIntervalMs : d.pendingIntervalMs;
    return now - p.checkedAt >= interval;
  }

  private checkSoon(cog: string, hostname: string, value: string): void {
    void this.check(cog, hostname, value);
  }

  /** Looks one claim up, records the result, and tells whoever needs to know. Never rejects. */
  async check(cog: string, hostname: string, value: string): Promise<void> {
    const k = key(cog, hostname);
    if (this.inFlight.has(k) || this.closed) return;
    this.inFlight.add(k);
    try {
      const claims = await this.store.domainProofsFor(hostname);
      const before = claims.find((p) => p.cog === cog)?.state;
      const r = await this.lookup(hostname, value);
      if (this.closed) return;
      const after = await this.store.markDomainProofChecked(cog, hostname, r.outcome, r.error, Date.now(), this.cfg.domains.missingBeforeWithdraw);
      if (after === undefined) return; // the claim was removed meanwhile
      this.note(cog, hostname, before, after, r);
      if (after !== before) {
        this.hooks.changed(cog);
        // Other cogs' claims on the name: one held back by this one may take over now (or lose to it).
        for (const other of claims) if (other.cog !== cog) this.hooks.changed(other.cog);
      } else {
        this.hooks.checked(cog);
      }
    } catch (err) {
      this.log.error("custom-domain lookup could not be recorded", { cog, hostname, error: (err as Error).message });
    } finally {
      this.inFlight.delete(k);
    }
  }

  private note(cog: string, hostname: string, before: DomainProofState | undefined, after: DomainProofState, r: LookupResult): void {
    const k = key(cog, hostname);
    if (r.outcome === "no-answer") {
      if (!this.unanswered.has(k)) {
        this.unanswered.add(k);
        this.log.warn(`custom domain lookup got no answer: ${r.error}; ${hostname} stays ${after}, next try in ${fmtMs(this.cfg.domains.errorRetryIntervalMs)}`, { cog, hostname, state: after });
      }
      return;
    }
    if (this.unanswered.delete(k)) this.log.info("custom domain lookups answered again", { cog, hostname, state: after });
    if (r.outcome === "missing" && after === "verified") {
      this.log.warn(`custom domain record missing (${r.error}); ${hostname} stays routed until ${this.cfg.domains.missingBeforeWithdraw} lookups in a row miss it (hub.domains.missing_before_withdraw), next in ${fmtMs(this.cfg.domains.pendingIntervalMs)}`, { cog, hostname });
    }
    if (after === before) return;
    if (after === "verified") this.log.info("custom domain proven by DNS", { cog, hostname });
    else if (after === "lost") this.log.warn(`custom domain proof gone (${r.error}): routes for ${hostname} withdrawn until the record is back`, { cog, hostname });
  }

  /** One TXT lookup of `_capsul-challenge.<hostname>`, under hub.domains.lookup_timeout. */
  async lookup(hostname: string, value: string): Promise<LookupResult> {
    const d = this.cfg.domains;
    const name = challengeName(hostname);
    const via = d.resolver ? formatHostPort(d.resolver) : "the system resolver";
    // A resolver per lookup: cancel() below ends every query of its resolver, and a sweep runs several at once.
    const resolver = new dns.promises.Resolver({ timeout: d.lookupTimeoutMs, tries: 1 });
    if (d.resolver) resolver.setServers([formatHostPort(d.resolver)]);
    // c-ares's timeout is per server and try; this deadline bounds the whole lookup.
    const deadline = setTimeout(() => resolver.cancel(), d.lookupTimeoutMs);
    this.lookups++;
    try {
      const records = await resolver.resolveTxt(name);
      const texts = records.map((chunks) => chunks.join(""));
      if (texts.includes(value)) return { outcome: "found", error: null };
      return { outcome: "missing", error: `the TXT record at ${name} does not hold this cog's value (${texts.length} other value${texts.length === 1 ? "" : "s"} there)` };
    } catch (err) {
      const code = (err as NodeJS.ErrnoException).code;
      if (code === dns.NOTFOUND || code === dns.NODATA) return { outcome: "missing", error: `no TXT record at ${name}` };
      if (code === dns.TIMEOUT || code === dns.CANCELLED) return { outcome: "no-answer", error: `DNS lookup of ${name} timed out after ${fmtMs(d.lookupTimeoutMs)} (${via})` };
      return { outcome: "no-answer", error: `DNS lookup of ${name} failed: ${code ?? (err as Error).message} (${via})` };
    } finally {
      clearTimeout(deadline);
    }
  }
}

function key(cog: string, hostname: string): string {
  return `${cog}\0${hostname}`;
}
