/**
 * Certificates the hub issues over the tunnel: enrollment (an invite token and a
 * CSR, no certificate yet) and renewal (a CSR on an authenticated tunnel).
 *
 * Both check everything that can be checked before the ~39 ms of CA signing, and
 * check again after it, in the transaction that records the certificate: a cog
 * revoked while its renewal was being signed gets nothing (signing right after
 * `capsul hub revoke` once produced an unrevoked certificate that a later
 * `hub invite` of the same name brought back to life), and an invite token is
 * spent only together with the certificate it paid for (a bad CSR leaves it usable).
 * That second check and the insert are one store transaction under the "certs"
 * lock, which `revokeCog` takes too: in PostgreSQL a revoke could otherwise
 * commit between them (READ COMMITTED) and miss the new certificate.
 */
import type { HubConfig } from "../config/types.js";
import { AuthError, ProtocolError } from "../lib/errors.js";
import type { HubPki } from "../certs/pki.js";
import { CLOCK_SKEW_BACKDATE_MS, renewalDueAt, signCogCsr } from "../certs/pki.js";
import { hashToken } from "../certs/tokens.js";
import type { HubStore, StoreOps } from "./store/types.js";

/** Default of hub.tunnel.renew_min_interval. */
export const RENEW_MIN_INTERVAL_MS = 3_600_000;
/**
 * The hub signs a renewal this much before the cog's own schedule says it is due, so a cog
 * whose clock runs a little ahead is not refused (the same allowance as certificate backdating).
 */
export const RENEW_CLOCK_SLACK_MS = CLOCK_SKEW_BACKDATE_MS;

/** Serials as stored: lower-case hex without leading zeros. */
export function normSerial(s: string): string {
  return s.toLowerCase().replace(/^0+/, "");
}

export type Issued = { ok: true; cog: string; certPem: string; notAfter: Date };
export type Refused = { ok: false; code: "revoked" | "renew" | "enroll"; message: string };

/** The certificate a cog presented on its tunnel, as the TLS handshake verified it. */
export interface PresentedCert { cog: string; serial: string; notBefore: Date; notAfter: Date }

export class Issuance {
  /** Cogs with a renewal being signed: one at a time per cog, whatever the number of tunnels. */
  private readonly renewing = new Set<string>();

  constructor(private readonly cfg: HubConfig, private readonly store: HubStore, private readonly pki: HubPki) {}

  /** Renewals being signed right now (for tests and status). */
  get renewalsInFlight(): number {
    return this.renewing.size;
  }

  async enroll(token: unknown, csr: unknown): Promise<Issued | Refused> {
    if (typeof token !== "string" || typeof csr !== "string") throw new ProtocolError("enroll needs token and csr");
    const hash = hashToken(token);
    const invite = await this.store.checkInvite(hash);
    if ("problem" in invite) return { ok: false, code: "enroll", message: `enrollment refused: ${invite.problem}` };
    let signed;
    try {
      signed = await signCogCsr(this.pki, csr, invite.cog, { validityMs: this.cfg.cogCertTtlMs });
    } catch (err) {
      // The token is not spent: the cog can fix its CSR and try again.
      return { ok: false, code: "enroll", message: `enrollment refused: ${(err as Error).message}` };
    }
    const s = signed;
    const problem = await this.store.transaction(["certs"], async (tx): Promise<string | null> => {
      const used = await tx.useInvite(hash); // another enrollment with the same token may have won meanwhile
      if ("problem" in used) return used.problem;
      await tx.recordCert(used.cog, normSerial(s.serial), s.notAfter.getTime());
      return null;
    });
    if (problem) return { ok: false, code: "enroll", message: `enrollment refused: ${problem}` };
    return { ok: true, cog: invite.cog, certPem: s.certPem, notAfter: s.notAfter };
  }

  async renew(presented: PresentedCert, csr: unknown, now = Date.now()): Promise<Issued | Refused> {
    if (typeof csr !== "string") throw new ProtocolError("renew needs csr");
    const { cog, serial } = presented;
    const before = await this.refusal(this.store, presented, now);
    if (before) return before;
    if (this.renewing.has(cog)) return { ok: false, code: "renew", message: "renewal refused: another renewal for this cog is being signed" };
    this.renewing.add(cog);
    let signed;
    try {
      signed = await signCogCsr(this.pki, csr, cog, { validityMs: this.cfg.cogCertTtlMs });
    } catch (err) {
      if (!(err instanceof AuthError)) throw err;
      return { ok: false, code: "renew", message: `renewal refused: ${err.message}` };
    } finally {
      this.renewing.delete(cog);
    }
    const s = signed;
    // Again, now that time has passed: `capsul hub revoke` may have run while we signed.
    const after = await this.store.transaction(["certs"], async (tx): Promise<Refused | null> => {
      const r = await this.refusal(tx, presented, Date.now());
      if (!r) await tx.recordCert(cog, normSerial(s.serial), s.notAfter.getTime());
      return r;
    });
    if (after) return after;
    return { ok: true, cog, certPem: s.certPem, notAfter: s.notAfter };
  }

  /** Why a renewal with this certificate may not be signed now, or null. */
  private async refusal(q: StoreOps, p: PresentedCert, now: number): Promise<Refused | null> {
    const problem = await q.certProblem(p.cog, p.serial);
    if (problem) return { ok: false, code: "revoked", message: `hub refused the renewal: ${problem}` };
    const dueAt = renewalDueAt(p.notBefore, p.notAfter);
    if (now + RENEW_CLOCK_SLACK_MS < dueAt) {
      return {
        ok: false, code: "renew",
        message: `renewal refused: this certificate is valid until ${p.notAfter.toISOString()}; the hub renews it once less than a third of its lifetime is left, from ${new Date(dueAt).toISOString()} (check this cog's clock)`,
      };
    }
    const newer = await q.newerCertIssuedAt(p.cog, p.serial);
    const interval = this.cfg.tunnel.renewMinIntervalMs;
    if (newer !== null && now - newer < interval) {
      return {
        ok: false, code: "renew",
        message: `renewal refused: this certificate was already renewed at ${new Date(newer).toISOString()}; use the newer certificate, or renew this one again after ${new Date(newer + interval).toISOString()} (hub.tunnel.renew_min_interval)`,
      };
    }
    return null;
  }
}
