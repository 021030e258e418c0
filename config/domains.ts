/**
 * hub.domains: custom domains by DNS proof (issue 10, "Bring your own
 * domain"). A cog may announce a hostname outside its grants once a TXT
 * record `_capsul-challenge.<hostname>` proves it (protocol/domainproof.ts);
 * these keys say whether that is allowed, which resolver the hub asks, and
 * how often it asks. Each default and bound is stated here once (the schema
 * section below; capsul.schema.json and DomainsConfig come from it).
 */
import { isIP } from "node:net";
import { ConfigError } from "../lib/errors.js";
import { parseHostPort } from "../lib/hostname.js";
import { bool, durationMs, int, leaf, section } from "./fields.js";
import type { DomainsConfig } from "./types.js";
import { string } from "./values.js";

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

/**
 * A proven name's record found missing this many lookups in a row before its routes are
 * withdrawn: one missing answer from a resolver mid-change (a DNS panel that rewrites the
 * zone, an authority that lags its secondary) must not take a site down. After the first
 * miss the name is looked up every pending_interval, so with the defaults the routes go
 * about 10 m + 2 x 30 s after the record does (the first miss comes at a recheck).
 */
export const DEFAULT_DOMAINS_MISSING_BEFORE_WITHDRAW = 3;

/** Node's timers take at most 2^31-1 ms. */
const TIMER_MAX_MS = 2 ** 31 - 1;

const interval = (description: string, def: number) => durationMs(description, { def, min: 1, max: TIMER_MAX_MS });

export const domainsSchema = section("Custom domains: hostnames outside a cog's grants, proven by a DNS TXT record _capsul-challenge.<hostname>.", {
  enabled: bool("Let cogs announce hostnames outside their grants once DNS proves them.", DEFAULT_DOMAINS_ENABLED),
  resolver: leaf({
    description: `The DNS resolver the hub asks for _capsul-challenge.<name> TXT records: system, or the IP:PORT of a resolver. Default: ${DEFAULT_DOMAINS_RESOLVER}.`,
    default: DEFAULT_DOMAINS_RESOLVER, type: ["string", "null"],
  }, (v): DomainsConfig["resolver"] => {
    const text = string(v, "", DEFAULT_DOMAINS_RESOLVER);
    if (text === "system") return null;
    const resolver = parseHostPort(text);
    // node:dns Resolver.setServers takes addresses only: a name would need a resolver to find the resolver.
    if (isIP(resolver.host) === 0 || resolver.host === "0.0.0.0") {
      throw new ConfigError(`expected system or the IP:PORT of a DNS resolver, got ${JSON.stringify(text)}`);
    }
    return resolver;
  }),
  lookup_timeout: interval("Deadline for one TXT lookup; past it the proof keeps its state and is retried.", DEFAULT_DOMAINS_LOOKUP_TIMEOUT_MS),
  pending_interval: interval("How often an unproven (or lost) name of a connected cog is looked up again.", DEFAULT_DOMAINS_PENDING_INTERVAL_MS),
  recheck_interval: interval("How often a proven name is looked up again; a record that is gone withdraws its routes.", DEFAULT_DOMAINS_RECHECK_INTERVAL_MS),
  error_retry_interval: interval("After a lookup that got no answer (timeout, SERVFAIL), the next try comes this much later.", DEFAULT_DOMAINS_ERROR_RETRY_INTERVAL_MS),
  missing_before_withdraw: int("Lookups in a row that find a proven name's record missing before its routes are withdrawn (1: at the first); after the first miss it is looked up every pending_interval.",
    { def: DEFAULT_DOMAINS_MISSING_BEFORE_WITHDRAW, min: 1, max: 100 }),
  max_claims_per_cog: int("Names one cog may claim outside its grants, proven or not; a claim beyond it is refused.",
    { def: DEFAULT_DOMAINS_MAX_CLAIMS_PER_COG, min: 1, max: 100_000 }),
}, (o): DomainsConfig => ({
  enabled: o.enabled,
  resolver: o.resolver,
  lookupTimeoutMs: o.lookup_timeout,
  pendingIntervalMs: o.pending_interval,
  recheckIntervalMs: o.recheck_interval,
  errorRetryIntervalMs: o.error_retry_interval,
  maxClaimsPerCog: o.max_claims_per_cog,
  missingBeforeWithdraw: o.missing_before_withdraw,
}));
