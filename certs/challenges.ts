/**
 * The answers to ACME challenges the cog has open right now, in memory only:
 * HTTP-01 key authorizations by (hostname, token) (RFC 8555 §8.3) and TLS-ALPN-01
 * certificates by hostname (RFC 8737). The issuer fills them for the length of one
 * challenge; tunnel-client/terminate.ts reads them when the CA's validator comes
 * in through the hub. Nothing here is consulted for a route that does not say
 * `tls: terminate`, so a VM's own ACME client is never answered for.
 */
import tls from "node:tls";

/** RFC 8555 §8.3: the path the validator asks for, followed by the token. */
export const ACME_HTTP_CHALLENGE_PREFIX = "/.well-known/acme-challenge/";
/** RFC 8737 §6.2: the ALPN protocol the validator offers, and the only one it accepts. */
export const ACME_TLS_ALPN_PROTOCOL = "acme-tls/1";

/**
 * What the issuer needs from whoever answers the challenges. The issuer awaits each call
 * before it tells the CA to validate: a responder that must first pass the answer on to
 * other processes (the hub's workers, gateway/admintls.ts) resolves once they hold it.
 */
export interface ChallengeResponder {
  addHttp(name: string, token: string, keyAuthorization: string): void | Promise<void>;
  removeHttp(name: string, token: string): void | Promise<void>;
  addAlpn(name: string, keyPem: string, certPem: string): void | Promise<void>;
  removeAlpn(name: string): void | Promise<void>;
}

export class ChallengeStore implements ChallengeResponder {
  // The store itself answers at once; subclasses may return a promise (see ChallengeResponder).
  private readonly http = new Map<string, Map<string, string>>();
  private readonly alpn = new Map<string, tls.SecureContext>();

  addHttp(name: string, token: string, keyAuthorization: string): void {
    let tokens = this.http.get(name);
    if (!tokens) this.http.set(name, tokens = new Map());
    tokens.set(token, keyAuthorization);
  }

  removeHttp(name: string, token: string): void {
    const tokens = this.http.get(name);
    if (!tokens) return;
    tokens.delete(token);
    if (tokens.size === 0) this.http.delete(name);
  }

  /** The key authorization for `token` on `name`, or undefined when no such challenge is open. */
  httpAnswer(name: string, token: string): string | undefined {
    return this.http.get(name)?.get(token);
  }

  addAlpn(name: string, keyPem: string, certPem: string): void {
    this.alpn.set(name, tls.createSecureContext({ key: keyPem, cert: certPem }));
  }

  removeAlpn(name: string): void {
    this.alpn.delete(name);
  }

  /** The context holding the acmeIdentifier certificate for `name`, while its TLS-ALPN-01 challenge is open. */
  alpnContext(name: string): tls.SecureContext | undefined {
    return this.alpn.get(name);
  }
}
