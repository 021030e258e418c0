/**
 * hub.domains: custom domains by DNS proof (issue 10, "Bring your own
 * domain"). A cog may announce a hostname outside its grants once a TXT
 * record `_capsul-challenge.<hostname>` proves it (protocol/domainproof.ts);
 * these keys say whether that is allowed, which resolver the hub asks, and
 * how often it asks. Called from ./config.ts, with its rules: unknown keys
 * refused, every error names the key path.
 */
import { isIP } from "node:net";
import { ConfigError } from "../lib/errors.js";
import { parseHostPort } from "../lib/hostname.js";
import type { DomainsConfig } from "./types.js";
import { at, boolean, duration, integer, mapping, string } from "./values.js";

// Defaults. Each one is stated in the doc comment of its field in ./types.ts
// (test/domains-config.test.ts checks that they agree).
export const DEFAULT_DOMAINS_ENABLED = true;
export const DEFAULT_DOMAINS_RESOLVER = "system";
/** A recursive resolver answers in well under a second; 5 s leaves room for a cold cache and one slow authority. */
export const DEFAULT_DOMAINS_LOOKUP_TIMEOUT_MS = 5_000;
/** Someone who just created the record waits at most this for the route to come up. */
export const DEFAULT_DOMAINS_PENDING_INTERVAL_MS = 30_000;
/** A proven name costs one lookup per 10 minutes; a removed record takes its route down within that. */
export const DEFAULT_DOMAINS_RECHECK_INTERVAL_MS = 10 * 60_000;
/** After a lookup that got no answer (timeout, SERVFAIL): the state stays, the next try comes this much later. */
export const DEFAULT_DOMAINS_ERROR_RETRY_INTERVAL_MS = 60_000;

/**
 * A cog's claims are stored and looked up until proven: a cog announcing thousands of
 * names it does not own would make the hub store and query them all, every pending_interval.
 * 100 is far above what one home server's sites need.
 */
export const DEFAULT_DOMAINS_MAX_CLAIMS_PER_COG = 100;

export const DOMAINS_KEYS = ["enabled", "resolver", "lookup_timeout", "pending_interval", "recheck_interval", "error_retry_interval", "max_claims_per_cog"] as const;

/** Node's timers take at most 2^31-1 ms. */
const TIMER_MAX_MS = 2 ** 31 - 1;

export function parseDomains(value: unknown, path: string): DomainsConfig {
  const m = value == null ? {} : mapping(value, path, DOMAINS_KEYS);
  const resolverPath = at(path, "resolver");
  const text = string(m.resolver, resolverPath, DEFAULT_DOMAINS_RESOLVER);
  let resolver: DomainsConfig["resolver"] = null;
  if (text !== "system") {
    resolver = parseHostPort(text, resolverPath);
    // node:dns Resolver.setServers takes addresses only: a name would need a resolver to find the resolver.
    if (isIP(resolver.host) === 0 || resolver.host === "0.0.0.0") {
      throw new ConfigError(`expected system or the IP:PORT of a DNS resolver, got ${JSON.stringify(text)}`, resolverPath);
    }
  }
  const ms = (key: string, def: number): number => duration(m[key], at(path, key), def, 1, TIMER_MAX_MS);
  return {
    enabled: boolean(m.enabled, at(path, "enabled"), DEFAULT_DOMAINS_ENABLED),
    resolver,
    lookupTimeoutMs: ms("lookup_timeout", DEFAULT_DOMAINS_LOOKUP_TIMEOUT_MS),
    pendingIntervalMs: ms("pending_interval", DEFAULT_DOMAINS_PENDING_INTERVAL_MS),
    recheckIntervalMs: ms("recheck_interval", DEFAULT_DOMAINS_RECHECK_INTERVAL_MS),
    errorRetryIntervalMs: ms("error_retry_interval", DEFAULT_DOMAINS_ERROR_RETRY_INTERVAL_MS),
    maxClaimsPerCog: integer(m.max_claims_per_cog, at(path, "max_claims_per_cog"), DEFAULT_DOMAINS_MAX_CLAIMS_PER_COG, 1, 100_000),
  };
}
