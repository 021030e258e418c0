/**
 * One certificate order, start to finish, with acme-client (RFC 8555): the
 * account (its key made here and persisted before it is registered), a new
 * order for one hostname, its authorization answered by HTTP-01 or TLS-ALPN-01
 * through ./challenges.ts, a fresh P-256 key and CSR, finalize, download.
 * Every failure comes out as an AcmeError whose `kind` tells the scheduler what
 * happened and whose `retryAfterMs` carries the CA's Retry-After.
 *
 * skipChallengeVerification: acme-client would first fetch the challenge itself
 * through the system resolver, which for a cog behind NAT is the wrong place to
 * look (and inside tests, a name that does not resolve); the CA's validator is
 * the only judge that matters.
 */
import acme from "acme-client";
import { generateKeyPairSync } from "node:crypto";
import type { AcmeChallengeType, AcmeConfig } from "../config/types.js";
import type { Logger } from "../lib/log.js";
import { AcmeCallContext, withAcmeContext } from "./acme-http.js";
import type { AcmeStore } from "./acme-store.js";
import { fmtDuration } from "./acme-schedule.js";
import type { ChallengeResponder } from "./challenges.js";

/** Why an order failed, as far as what to do next is concerned. */
export type AcmeFailureKind =
  /** No HTTP answer from the CA: refused, reset, DNS, TLS verification, or the request deadline. */
  | "unreachable"
  /** The CA said 429 / rateLimited (RFC 8555 §6.7). */
  | "rate-limited"
  /** The CA could not validate the challenge (its validator could not reach us, or got a wrong answer). */
  | "challenge"
  /** The whole order took longer than cog.acme.order_timeout. */
  | "timeout"
  /** Any other refusal or malformed answer from the CA. */
  | "ca-error";

export class AcmeError extends Error {
  override name = "AcmeError";
  constructor(message: string, readonly kind: AcmeFailureKind, readonly retryAfterMs: number | null = null, options?: { cause?: unknown }) {
    super(message, options);
  }
}

export interface IssuedCert { keyPem: string; chainPem: string }

/** RFC 8555 §6.7 */
const RATE_LIMITED = "urn:ietf:params:acme:error:rateLimited";
/** RFC 8555 §7.3.1: the account URL we hold is unknown to the CA (deactivated, or a test CA restarted). */
const ACCOUNT_DOES_NOT_EXIST = "urn:ietf:params:acme:error:accountDoesNotExist";
/** acme-client polls a pending challenge or order with a backoff from poll_interval up to this many times that. */
const POLL_MAX_FACTOR = 8;
/** Polls of one pending challenge or order; the order deadline (cog.acme.order_timeout) is the real bound. */
const POLL_ATTEMPTS = 30;

function newEcKeyPem(): string {
  // P-256: what browsers and every CA accept; a fraction of an RSA key's handshake cost.
  return generateKeyPairSync("ec", { namedCurve: "P-256" }).privateKey.export({ type: "pkcs8", format: "pem" }).toString();
}

export class AcmeIssuer {
  /** The account is registered once per process; concurrent orders (different names) wait for the same promise. */
  private account: Promise<{ keyPem: string; accountUrl: string }> | null = null;

  constructor(
    private readonly cfg: AcmeConfig,
    private readonly store: AcmeStore,
    private readonly responder: ChallengeResponder,
    private readonly caPems: string[] | undefined,
    private readonly log: Logger,
    /** The capsul.yaml section of `cfg` (cog.acme, hub.acme), as log lines name its keys. */
    private readonly section = "cog.acme",
  ) {}

  /** Orders a certificate for `name`; `signal` abandons the order (the cog is stopping). */
  async issue(name: string, challenge: AcmeChallengeType, signal?: AbortSignal): Promise<IssuedCert> {
    const ctx = new AcmeCallContext(this.caPems, this.cfg.requestTimeoutMs);
    const step = { now: "account" };
    let timer: NodeJS.Timeout | undefined;
    let onAbort: (() => void) | undefined;
    const deadline = new Promise<never>((_, reject) => {
      timer = setTimeout(() => {
        ctx.abort.abort();
        reject(new AcmeError(`no certificate within ${this.section}.order_timeout (${fmtDuration(this.cfg.orderTimeoutMs)}); the order was at the ${step.now} step`, "timeout"));
      }, this.cfg.orderTimeoutMs);
      onAbort = () => {
        ctx.abort.abort();
        reject(new AcmeError("the order was abandoned (capsul is stopping)", "timeout"));
      };
      if (signal?.aborted) onAbort();
      else signal?.addEventListener("abort", onAbort, { once: true });
    });
    const run = withAcmeContext(ctx, () => this.order(name, challenge, step));
    run.catch(() => {}); // after the deadline nobody awaits it; its next request fails at once (aborted)
    try {
      return await Promise.race([run, deadline]);
    } catch (err) {
      if (err instanceof AcmeError) throw err;
      throw this.classify(err as Error, ctx, step.now);
    } finally {
      clearTimeout(timer);
      if (onAbort) signal?.removeEventListener("abort", onAbort);
      ctx.close();
    }
  }

  private async order(name: string, challenge: AcmeChallengeType, step: { now: string }): Promise<IssuedCert> {
    const account = await (this.account ??= this.register().catch((err) => { this.account = null; throw err; }));
    const client = this.client(account.keyPem, account.accountUrl);
    step.now = "new-order";
    const order = await client.createOrder({ identifiers: [{ type: "dns", value: name }] });
    step.now = "authorization";
    for (const authz of await client.getAuthorizations(order)) {
      // A still-valid authorization from an earlier order is reused by the CA (RFC 8555 §7.1.4).
      if (authz.status === "valid") continue;
      const ch = authz.challenges.find((c) => c.type === challenge);
      if (!ch) {
        throw new AcmeError(`the CA offers no ${challenge} challenge for ${name} (it offers ${authz.challenges.map((c) => c.type).join(", ") || "none"})`, "ca-error");
      }
      const keyAuthorization = await client.getChallengeKeyAuthorization(ch);
      if (challenge === "http-01") {
        await this.responder.addHttp(name, ch.token, keyAuthorization);
      } else {
        const [keyPem, certPem] = await acme.crypto.createAlpnCertificate(authz, keyAuthorization, newEcKeyPem());
        await this.responder.addAlpn(name, keyPem.toString(), certPem.toString());
      }
      try {
        step.now = "challenge";
        await client.completeChallenge(ch);
        await client.waitForValidStatus(ch);
      } finally {
        if (challenge === "http-01") await this.responder.removeHttp(name, ch.token);
        else await this.responder.removeAlpn(name);
      }
    }
    step.now = "finalize";
    const keyPem = newEcKeyPem();
    const [, csr] = await acme.crypto.createCsr({ commonName: name, altNames: [name] }, keyPem);
    const finalized = await client.finalizeOrder(order, csr);
    step.now = "download";
    const chainPem = await client.getCertificate(finalized);
    return { keyPem, chainPem };
  }

  private client(keyPem: string, accountUrl?: string): acme.Client {
    return new acme.Client({
      directoryUrl: this.cfg.directoryUrl,
      accountKey: keyPem,
      accountUrl,
      backoffAttempts: POLL_ATTEMPTS,
      backoffMin: this.cfg.pollIntervalMs,
      backoffMax: this.cfg.pollIntervalMs * POLL_MAX_FACTOR,
    });
  }

  /** Loads or makes the account key (saved before registering: a crash after it leaves a key the CA knows, never one it doesn't), then registers. */
  private async register(): Promise<{ keyPem: string; accountUrl: string }> {
    let stored = this.store.loadAccount(this.cfg.directoryUrl);
    if (!stored) {
      stored = { directoryUrl: this.cfg.directoryUrl, keyPem: newEcKeyPem(), accountUrl: null, email: null };
      await this.store.saveAccount(stored);
    }
    const contact = this.cfg.email ? [`mailto:${this.cfg.email}`] : [];
    if (stored.accountUrl) {
      if (stored.email !== this.cfg.email) {
        // cog.acme.email changed: RFC 8555 §7.3.2 account update.
        await this.client(stored.keyPem, stored.accountUrl).updateAccount({ contact });
        await this.store.saveAccount({ ...stored, email: this.cfg.email });
        this.log.info("ACME account contact updated", { email: this.cfg.email ?? "none" });
      }
      return { keyPem: stored.keyPem, accountUrl: stored.accountUrl };
    }
    const client = this.client(stored.keyPem);
    // RFC 8555 §7.3: newAccount with a key the CA already knows returns that account (200).
    await client.createAccount({ termsOfServiceAgreed: true, contact });
    const accountUrl = client.getAccountUrl();
    await this.store.saveAccount({ ...stored, accountUrl, email: this.cfg.email });
    const tos = await client.getTermsOfServiceUrl().catch(() => null);
    this.log.info("ACME account registered (it agrees to the CA's terms of service)", { directory: this.cfg.directoryUrl, account: accountUrl, terms: tos ?? undefined });
    return { keyPem: stored.keyPem, accountUrl };
  }

  private classify(err: Error, ctx: AcmeCallContext, step: string): AcmeError {
    const where = ctx.url ?? this.cfg.directoryUrl;
    if (!ctx.answered) {
      const why = ctx.networkError ?? `no answer within ${this.section}.request_timeout (${fmtDuration(this.cfg.requestTimeoutMs)})`;
      return new AcmeError(`cannot reach the ACME CA at ${where}: ${why}`, "unreachable", null, { cause: err });
    }
    const answer = ctx.lastError;
    if (answer?.problemType === ACCOUNT_DOES_NOT_EXIST) {
      // Register again on the next order (the key stays: the CA may still know it).
      this.account = null;
      const stored = this.store.loadAccount(this.cfg.directoryUrl);
      if (stored) void this.store.saveAccount({ ...stored, accountUrl: null }).catch(() => {});
    }
    if (answer && (answer.status === 429 || answer.problemType === RATE_LIMITED)) {
      return new AcmeError(`rate limited by the ACME CA (${answer.detail ?? `HTTP ${answer.status}`})`, "rate-limited", answer.retryAfterMs, { cause: err });
    }
    if (step === "challenge" && !answer) {
      return new AcmeError(`the CA could not validate the challenge: ${err.message}`, "challenge", null, { cause: err });
    }
    const detail = answer?.detail ?? err.message;
    return new AcmeError(`the ACME CA refused the ${step} step${answer ? ` (HTTP ${answer.status})` : ""}: ${detail}`, "ca-error", answer?.retryAfterMs ?? null, { cause: err });
  }
}
