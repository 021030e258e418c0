/**
 * ACME on the cog: certificates for the hostnames of `tls: terminate` routes,
 * kept in memory as TLS contexts for the terminator and on disk in the cog's
 * data dir (./acme-store.ts), obtained and renewed by ./acme-issuer.ts on
 * acme-client, at the times ./acme-schedule.ts computes:
 *
 * - a name with no certificate (or one from another directory URL, or expired)
 *   is ordered as soon as the hub has accepted the routes its challenge needs;
 * - a certificate is renewed once cog.acme.renew_at of its lifetime has passed
 *   (two thirds by default, less up to 5% jitter);
 * - a failed order is retried after cog.acme.retry_min_delay, doubled per
 *   failure up to retry_max_delay, never sooner than the CA's Retry-After; the
 *   count and the next time survive a restart (status.json), so a rate limit is
 *   still honoured after one;
 * - at most one order per name runs at a time; the current certificate keeps
 *   being served while an order runs or fails, and a new one replaces it for the
 *   next handshake only (connections already open keep theirs).
 *
 * Each failure is one log line that says what happened and when the next try is.
 * `list()` (and the "change" event) is what `capsul cog certs` prints and the hook
 * for expiry metrics: each row has not_after per name.
 */
import { EventEmitter } from "node:events";
import fs from "node:fs";
import tls from "node:tls";
import type { AcmeChallengeType, AcmeConfig } from "../config/types.js";
import { RuntimeError } from "../lib/errors.js";
import type { Logger } from "../lib/log.js";
import { AcmeError, AcmeIssuer, type AcmeFailureKind } from "./acme-issuer.js";
import { fmtDuration, MAX_TIMER_MS, renewAtMs, retryDelayMs } from "./acme-schedule.js";
import { AcmeStore, certFacts, type CertFacts, type NameStatus, type RenewalState, type StoredCert } from "./acme-store.js";
import { ChallengeStore } from "./challenges.js";

/** A hostname a `tls: terminate` route wants a certificate for. */
export interface TerminatedName {
  name: string;
  challenge: AcmeChallengeType;
  /** The hub has accepted the routes the challenge comes in by (tls; and its http side for http-01). */
  ready: boolean;
}

/** One row of `capsul cog certs` (and of metrics): times are ISO-8601, null when unknown. */
export interface CertRow {
  name: string;
  /** The DNS names the certificate covers. */
  names: string[];
  issuer: string | null;
  notBefore: string | null;
  notAfter: string | null;
  serial: string | null;
  directoryUrl: string | null;
  state: RenewalState;
  challenge: string | null;
  renewAt: string | null;
  nextAttemptAt: string | null;
  failures: number;
  lastError: string | null;
  lastErrorKind: string | null;
  lastErrorAt: string | null;
  lastIssuedAt: string | null;
}

/** The one log line per failed order, by kind. */
const FAILURE_MESSAGES: Record<AcmeFailureKind, string> = {
  "unreachable": "cannot reach the ACME CA",
  "rate-limited": "the ACME CA rate-limits this account; waiting as long as it asks",
  "challenge": "the ACME CA could not validate the challenge through the hub",
  "timeout": "the ACME order took too long",
  "ca-error": "the ACME CA refused the order",
};

interface Held { stored: StoredCert; facts: CertFacts; context: tls.SecureContext; renewAtMs: number }

interface Slot {
  readonly name: string;
  challenge: AcmeChallengeType | null;
  configured: boolean;
  ready: boolean;
  held: Held | null;
  failures: number;
  nextAttemptAtMs: number | null;
  lastError: string | null;
  lastErrorKind: string | null;
  lastErrorAtMs: number | null;
  lastIssuedAtMs: number | null;
  timer: NodeJS.Timeout | null;
  inFlight: Promise<void> | null;
}

const iso = (ms: number | null): string | null => (ms === null ? null : new Date(ms).toISOString());
const msOf = (s: string | null): number | null => {
  const v = s === null ? NaN : Date.parse(s);
  return Number.isNaN(v) ? null : v;
};

/** Who else uses an AcmeManager than the cog: the hub's admin listener (gateway/admintls.ts). */
export interface AcmeManagerOptions {
  /** The capsul.yaml section of its config (cog.acme, hub.acme), as errors and log lines name its keys. */
  section?: string;
  /** Where the challenge answers go (default: a store of its own, read by whoever serves the challenges). */
  challenges?: ChallengeStore;
}

export class AcmeManager extends EventEmitter {
  readonly challenges: ChallengeStore;
  private readonly section: string;
  private readonly store: AcmeStore;
  private readonly slots = new Map<string, Slot>();
  private issuer: AcmeIssuer | null = null;
  private readonly stopping = new AbortController();
  /** What status.json holds (names only), so that it is written when that changes and not otherwise. */
  private lastStatus = "{}";

  /** A mutable copy of cog.acme that the issuer shares: reconfigure() changes what both read next. */
  private readonly cfg: AcmeConfig;

  constructor(
    cfg: AcmeConfig,
    dataDir: string,
    private readonly log: Logger,
    private readonly random: () => number = Math.random,
    opts: AcmeManagerOptions = {},
  ) {
    super();
    this.section = opts.section ?? "cog.acme";
    this.challenges = opts.challenges ?? new ChallengeStore();
    this.cfg = { ...cfg };
    this.store = new AcmeStore(dataDir);
  }

  /**
   * A reloaded cog.acme: every key but `keep` (the directory, its CA trust and the account
   * contact, config/reload.ts ACME_RESTART_KEYS) applies to the next order, retry and
   * renewal scheduled; certificates already held keep their renewal time.
   */
  reconfigure(next: AcmeConfig, keep: ReadonlySet<keyof AcmeConfig>): void {
    for (const key of Object.keys(next) as (keyof AcmeConfig)[]) {
      if (!keep.has(key)) (this.cfg as unknown as Record<string, unknown>)[key] = next[key];
    }
  }

  /** Reads the CA bundle and everything stored; serves stored certificates from now on. Schedules nothing yet (see setNames). */
  async start(): Promise<void> {
    let caPems: string[] | undefined;
    if (this.cfg.caBundle) {
      let bundle: string;
      try {
        bundle = fs.readFileSync(this.cfg.caBundle, "utf8");
      } catch (err) {
        throw new RuntimeError(`cannot read ${this.section}.ca_bundle ${this.cfg.caBundle}: ${(err as NodeJS.ErrnoException).code ?? (err as Error).message}`, { cause: err });
      }
      if (!bundle.includes("-----BEGIN CERTIFICATE-----")) throw new RuntimeError(`${this.section}.ca_bundle ${this.cfg.caBundle} holds no PEM certificate`);
      // Node's `ca` replaces the system roots; keep them, so a bundle adds trust and takes none away.
      caPems = [...tls.rootCertificates, bundle];
    }
    this.issuer = new AcmeIssuer(this.cfg, this.store, this.challenges, caPems, this.log, this.section);
    const { certs, bad } = this.store.loadCerts();
    for (const b of bad) this.log.warn("ignoring an unreadable certificate file; its name will be ordered again", { file: b.file, reason: b.reason });
    for (const c of certs) {
      try {
        this.slot(c.name).held = this.hold(c);
      } catch (err) {
        this.log.warn("ignoring a stored certificate that does not load; its name will be ordered again", { name: c.name, error: (err as Error).message });
      }
    }
    const status = this.store.loadStatus().names;
    this.lastStatus = JSON.stringify(status);
    for (const [name, s] of Object.entries(status)) {
      const slot = this.slots.get(name) ?? (s.failures > 0 ? this.slot(name) : null);
      if (!slot) continue;
      slot.failures = s.failures;
      slot.nextAttemptAtMs = msOf(s.nextAttemptAt);
      slot.lastError = s.lastError;
      slot.lastErrorKind = s.lastErrorKind;
      slot.lastErrorAtMs = msOf(s.lastErrorAt);
      slot.lastIssuedAtMs = msOf(s.lastIssuedAt);
    }
    this.log.debug("ACME ready", { directory: this.cfg.directoryUrl, certificates: certs.length });
  }

  /** The certificate to serve for `name`, or undefined when there is none (yet). */
  secureContext(name: string): tls.SecureContext | undefined {
    return this.slots.get(name)?.held?.context;
  }

  /** The key and chain held for `name` (PEM), or undefined: for a server that takes PEM (the hub's admin listener). */
  keyPair(name: string): { keyPem: string; chainPem: string } | undefined {
    const h = this.slots.get(name)?.held;
    return h ? { keyPem: h.stored.keyPem, chainPem: h.stored.chainPem } : undefined;
  }

  /**
   * The names the routes terminate now, and whether the hub accepted what each
   * challenge needs. Called on every route answer and disconnect; orders start
   * only for ready names, names no longer listed keep their certificate on disk.
   */
  setNames(list: readonly TerminatedName[]): void {
    if (this.stopping.signal.aborted) return;
    const wanted = new Map(list.map((n) => [n.name, n]));
    for (const n of list) this.slot(n.name);
    for (const slot of [...this.slots.values()]) {
      const w = wanted.get(slot.name);
      slot.configured = w !== undefined;
      slot.ready = w?.ready ?? false;
      if (w) slot.challenge = w.challenge;
      // A name no route wants and no certificate holds is forgotten, once any wait the CA asked for is over.
      const waitOver = slot.failures === 0 || (slot.nextAttemptAtMs ?? 0) <= Date.now();
      if (!slot.configured && !slot.held && !slot.inFlight && waitOver) {
        this.slots.delete(slot.name);
        continue;
      }
      this.reschedule(slot);
    }
    this.changed();
  }

  list(): CertRow[] {
    return [...this.slots.values()].sort((a, b) => a.name.localeCompare(b.name)).map((s) => this.row(s));
  }

  /** Stops scheduling and abandons orders in flight (nothing half-written: see acme-store.ts). */
  async close(): Promise<void> {
    this.stopping.abort();
    for (const s of this.slots.values()) if (s.timer) clearTimeout(s.timer);
    await Promise.all([...this.slots.values()].map((s) => s.inFlight));
    // Nothing may touch the data dir after close (the demo removes it next).
    await this.store.flush();
  }

  // ---- internals ----

  private slot(name: string): Slot {
    let s = this.slots.get(name);
    if (!s) {
      s = {
        name, challenge: null, configured: false, ready: false, held: null, failures: 0, nextAttemptAtMs: null,
        lastError: null, lastErrorKind: null, lastErrorAtMs: null, lastIssuedAtMs: null, timer: null, inFlight: null,
      };
      this.slots.set(name, s);
    }
    return s;
  }

  private hold(stored: StoredCert): Held {
    const facts = certFacts(stored.chainPem);
    // Throws when the key does not match the certificate: such a pair is never served.
    const context = tls.createSecureContext({ key: stored.keyPem, cert: stored.chainPem });
    return { stored, facts, context, renewAtMs: renewAtMs(facts.notBefore.getTime(), facts.notAfter.getTime(), this.cfg.renewAtRatio, this.random()) };
  }

  /** Why the held certificate cannot simply wait for its renewal time, or null. */
  private staleReason(slot: Slot): string | null {
    const h = slot.held;
    if (!h) return "no certificate yet";
    if (h.stored.directoryUrl !== this.cfg.directoryUrl) return `issued by another ACME directory (${h.stored.directoryUrl})`;
    if (!h.facts.names.includes(slot.name)) return `it does not cover ${slot.name}`;
    if (h.facts.notAfter.getTime() <= Date.now()) return "it has expired";
    return null;
  }

  private dueAtMs(slot: Slot): number {
    if (slot.failures > 0 && slot.nextAttemptAtMs !== null) return slot.nextAttemptAtMs;
    if (this.staleReason(slot) !== null) return Date.now();
    return slot.held!.renewAtMs;
  }

  private reschedule(slot: Slot): void {
    if (slot.timer) { clearTimeout(slot.timer); slot.timer = null; }
    if (this.stopping.signal.aborted || slot.inFlight || !slot.configured || !slot.ready || !slot.challenge) return;
    const wait = this.dueAtMs(slot) - Date.now();
    if (wait <= 0) { this.run(slot); return; }
    // Re-armed on firing: a wait longer than MAX_TIMER_MS (a 90-day certificate) takes several timers.
    slot.timer = setTimeout(() => { slot.timer = null; this.reschedule(slot); }, Math.min(wait, MAX_TIMER_MS));
    slot.timer.unref();
  }

  private run(slot: Slot): void {
    const challenge = slot.challenge!;
    const why = this.staleReason(slot) ?? "renewal is due";
    this.log.info("ordering a certificate", { name: slot.name, challenge, why, attempt: slot.failures + 1 });
    slot.inFlight = this.order(slot, challenge).finally(() => {
      slot.inFlight = null;
      if (this.stopping.signal.aborted) return;
      this.reschedule(slot);
      this.changed();
    });
    this.changed();
  }

  private async order(slot: Slot, challenge: AcmeChallengeType): Promise<void> {
    const started = Date.now();
    let issued;
    try {
      issued = await this.issuer!.issue(slot.name, challenge, this.stopping.signal);
    } catch (err) {
      if (this.stopping.signal.aborted) return;
      this.failed(slot, err instanceof AcmeError ? err : new AcmeError((err as Error).message, "ca-error", null, { cause: err }));
      return;
    }
    const stored: StoredCert = { name: slot.name, directoryUrl: this.cfg.directoryUrl, keyPem: issued.keyPem, chainPem: issued.chainPem, issuedAt: new Date().toISOString() };
    let held: Held;
    try {
      held = this.hold(stored);
    } catch (err) {
      this.failed(slot, new AcmeError(`the CA sent a certificate that does not load: ${(err as Error).message}`, "ca-error"));
      return;
    }
    slot.held = held;
    slot.failures = 0;
    slot.nextAttemptAtMs = null;
    slot.lastError = slot.lastErrorKind = null;
    slot.lastErrorAtMs = null;
    slot.lastIssuedAtMs = Date.now();
    try {
      await this.store.saveCert(stored);
    } catch (err) {
      // Ordering again would spend the CA's duplicate-certificate limit on a local disk problem.
      this.log.error("could not store the new certificate; serving it from memory (a restart loses it)", { name: slot.name, error: (err as Error).message });
    }
    this.log.info("certificate issued", {
      name: slot.name, issuer: held.facts.issuer, serial: held.facts.serial, notAfter: held.facts.notAfter.toISOString(),
      renewIn: fmtDuration(held.renewAtMs - Date.now()), tookMs: Date.now() - started,
    });
    this.emit("issued", { name: slot.name, serial: held.facts.serial });
  }

  private failed(slot: Slot, err: AcmeError): void {
    slot.failures++;
    const delay = retryDelayMs(slot.failures, this.cfg.retryMinDelayMs, this.cfg.retryMaxDelayMs, this.random(), err.retryAfterMs);
    slot.nextAttemptAtMs = Date.now() + delay;
    slot.lastError = err.message;
    slot.lastErrorKind = err.kind;
    slot.lastErrorAtMs = Date.now();
    const h = slot.held;
    this.log.warn(FAILURE_MESSAGES[err.kind], {
      name: slot.name, error: err.message, failures: slot.failures, nextTryIn: fmtDuration(delay),
      retryAfter: err.retryAfterMs !== null ? fmtDuration(err.retryAfterMs) : undefined,
      serving: h ? `serial ${h.facts.serial} until ${h.facts.notAfter.toISOString()}` : "nothing yet",
    });
    this.emit("failed", { name: slot.name, kind: err.kind, failures: slot.failures });
  }

  private state(s: Slot): RenewalState {
    if (s.inFlight) return "issuing";
    if (!s.configured) return "unused";
    if (!s.ready) return "waiting";
    if (s.failures > 0) return "retrying";
    return "scheduled";
  }

  private row(s: Slot): CertRow {
    const f = s.held?.facts;
    const state = this.state(s);
    return {
      name: s.name,
      names: f?.names ?? [],
      issuer: f?.issuer ?? null,
      notBefore: f ? f.notBefore.toISOString() : null,
      notAfter: f ? f.notAfter.toISOString() : null,
      serial: f?.serial ?? null,
      directoryUrl: s.held?.stored.directoryUrl ?? null,
      state,
      challenge: s.challenge,
      renewAt: state === "scheduled" && s.held && this.staleReason(s) === null ? iso(s.held.renewAtMs) : null,
      nextAttemptAt: s.failures > 0 ? iso(s.nextAttemptAtMs) : null,
      failures: s.failures,
      lastError: s.lastError,
      lastErrorKind: s.lastErrorKind,
      lastErrorAt: iso(s.lastErrorAtMs),
      lastIssuedAt: iso(s.lastIssuedAtMs),
    };
  }

  /** Persists the renewal state of every name and tells listeners (`capsul cog certs` reads the file). */
  private changed(): void {
    const names: Record<string, NameStatus> = {};
    for (const r of this.list()) {
      names[r.name] = {
        state: r.state, challenge: r.challenge, failures: r.failures, renewAt: r.renewAt, nextAttemptAt: r.nextAttemptAt,
        lastError: r.lastError, lastErrorKind: r.lastErrorKind, lastErrorAt: r.lastErrorAt, lastIssuedAt: r.lastIssuedAt,
      };
    }
    const text = JSON.stringify(names);
    if (text !== this.lastStatus && !this.stopping.signal.aborted) {
      this.lastStatus = text;
      this.store.saveStatus({ updatedAt: new Date().toISOString(), names }).catch((err: Error) => {
        this.log.warn("could not write the ACME status file", { error: err.message });
      });
    }
    this.emit("change");
  }
}

/**
 * The rows `capsul cog certs` prints, from the data dir alone (the cog need not
 * run): every stored certificate, and every name the status file knows, with the
 * renewal state the running cog last wrote.
 */
export function readCertRows(dataDir: string): CertRow[] {
  const store = new AcmeStore(dataDir);
  const status = store.loadStatus().names;
  const rows = new Map<string, CertRow>();
  const blank = (name: string): CertRow => ({
    name, names: [], issuer: null, notBefore: null, notAfter: null, serial: null, directoryUrl: null, state: "waiting",
    challenge: null, renewAt: null, nextAttemptAt: null, failures: 0, lastError: null, lastErrorKind: null, lastErrorAt: null, lastIssuedAt: null,
  });
  for (const c of store.loadCerts().certs) {
    const f = certFacts(c.chainPem);
    rows.set(c.name, {
      ...blank(c.name), names: f.names, issuer: f.issuer, notBefore: f.notBefore.toISOString(), notAfter: f.notAfter.toISOString(),
      serial: f.serial, directoryUrl: c.directoryUrl, state: "unused",
    });
  }
  for (const [name, s] of Object.entries(status)) {
    const r = rows.get(name) ?? blank(name);
    rows.set(name, {
      ...r, state: s.state, challenge: s.challenge, renewAt: s.renewAt, nextAttemptAt: s.nextAttemptAt, failures: s.failures,
      lastError: s.lastError, lastErrorKind: s.lastErrorKind, lastErrorAt: s.lastErrorAt, lastIssuedAt: s.lastIssuedAt,
    });
  }
  return [...rows.values()].sort((a, b) => a.name.localeCompare(b.name));
}
