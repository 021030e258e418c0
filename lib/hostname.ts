/**
 * Hostnames, hostname patterns, host:port and port ranges, as capsul.yaml, the
 * router and the grant checks see them. Pure functions, no I/O.
 *
 * Hostnames are ASCII A-labels only (RFC 5890 §2.3.2.1): an internationalized
 * name must be written in punycode ("xn--bcher-kva.example"), because that is
 * what arrives in the TLS SNI extension (RFC 6066 §3) and the HTTP Host header.
 * Comparison is case-insensitive (RFC 4343), so everything is lower-cased, and
 * the trailing dot of a fully-qualified name is dropped.
 */
import { isIPv4, isIPv6 } from "node:net";
import { domainToASCII } from "node:url";
import type { HostPort, PortRange } from "../config/types.js";
import { ConfigError } from "./errors.js";

/** Names of cogs and of cog routes: a lower-case letter, then up to 38 of a-z 0-9 "-". */
export const COG_NAME_RE = /^[a-z][a-z0-9-]{0,38}$/;

/** RFC 1035 §2.3.1 "LDH" label, 1–63 octets, no hyphen at either end (RFC 1123 §2.1 allows a leading digit). */
const LABEL_RE = /^[a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?$/;
/** RFC 1035 §2.3.4: 255 octets on the wire = 253 characters in dotted form without the trailing dot. */
const MAX_HOSTNAME_CHARS = 253;
const PRINTABLE_ASCII_RE = /^[\x21-\x7e]*$/;

/**
 * Returns the canonical form of a hostname (lower case, no trailing dot), or null
 * if it is not a valid ASCII hostname. The top-level label may not be all digits
 * (RFC 3696 §2), which also keeps IPv4 literals out: SNI never carries them.
 */
export function normalizeHostname(s: string): string | null {
  if (typeof s !== "string") return null;
  // Lower-case only after the ASCII check: String#toLowerCase maps some non-ASCII
  // characters into ASCII (U+212A KELVIN SIGN → "k"), which would smuggle them in.
  if (!PRINTABLE_ASCII_RE.test(s)) return null;
  let name = s.toLowerCase();
  if (name.endsWith(".")) name = name.slice(0, -1);
  if (name.length === 0 || name.length > MAX_HOSTNAME_CHARS) return null;
  const labels = name.split(".");
  if (!labels.every((label) => LABEL_RE.test(label))) return null;
  if (/^[0-9]+$/.test(labels[labels.length - 1]!)) return null;
  return name;
}

/**
 * Returns the canonical form of a hostname pattern, or null if invalid.
 * A pattern is either an exact hostname or "*.suffix", where "*" is the whole
 * leftmost label and the suffix is a hostname of at least two labels (so "*.com"
 * and "*" are refused: nobody may claim a whole top-level domain).
 */
export function normalizeHostnamePattern(s: string): string | null {
  if (typeof s !== "string") return null;
  if (s.startsWith("*.")) {
    const suffix = normalizeHostname(s.slice(2));
    if (suffix === null || !suffix.includes(".")) return null;
    return `*.${suffix}`;
  }
  return normalizeHostname(s);
}

export function isValidHostnamePattern(s: string): boolean {
  return normalizeHostnamePattern(s) !== null;
}

/** If `s` is a non-ASCII name, its A-label form (for error hints), else null. */
export function suggestALabel(s: string): string | null {
  if (typeof s !== "string" || PRINTABLE_ASCII_RE.test(s)) return null;
  const wildcard = s.startsWith("*.");
  const ascii = domainToASCII(wildcard ? s.slice(2) : s);
  if (ascii === "") return null;
  const candidate = wildcard ? `*.${ascii}` : ascii;
  return normalizeHostnamePattern(candidate);
}

/**
 * Does `host` match `pattern`? Both are normalized first; invalid input matches nothing.
 * Decision: a wildcard stands for ONE OR MORE leading labels, so "*.example.com"
 * matches "a.example.com" and "a.b.example.com" but never "example.com" itself.
 * (Unlike a TLS certificate wildcard, which covers one label: here the pattern
 * grants a namespace, and the router's longest-suffix rule resolves nesting.)
 */
export function patternMatches(pattern: string, host: string): boolean {
  const p = normalizeHostnamePattern(pattern);
  const h = normalizeHostname(host);
  if (p === null || h === null) return false;
  if (p.startsWith("*.")) return h.endsWith(p.slice(1));
  return p === h;
}

/**
 * True if some hostname matches both patterns. Used to refuse granting
 * overlapping patterns to two different cogs: with overlapping grants, which cog
 * gets a visitor would depend on precedence rules instead of on the operator.
 * "*.a.example" overlaps "x.a.example" and "*.example"; "*.example" does not
 * overlap "example" (a wildcard never matches its own suffix).
 */
export function patternsOverlap(a: string, b: string): boolean {
  const pa = normalizeHostnamePattern(a);
  const pb = normalizeHostnamePattern(b);
  if (pa === null || pb === null) return false;
  return normalizedPatternsOverlap(pa, pb);
}

/**
 * patternsOverlap for patterns already normalized (as every stored and
 * configured grant is): string comparisons only, so the hub can check one
 * grant against thousands of cogs' default grants at start-up.
 */
export function normalizedPatternsOverlap(pa: string, pb: string): boolean {
  const wa = pa.startsWith("*.");
  const wb = pb.startsWith("*.");
  if (!wa && !wb) return pa === pb;
  // "*.s" matches a name exactly when the name ends with ".s" (one or more labels in front).
  if (wa && !wb) return pb.endsWith(pa.slice(1));
  if (!wa && wb) return pa.endsWith(pb.slice(1));
  // Two wildcards share names exactly when one suffix is the other or lies under it.
  const sa = pa.slice(2);
  const sb = pb.slice(2);
  return sa === sb || sa.endsWith(`.${sb}`) || sb.endsWith(`.${sa}`);
}

/** "host:port" with IPv6 hosts bracketed, the inverse of parseHostPort. */
export function formatHostPort(hp: HostPort): string {
  return hp.host.includes(":") ? `[${hp.host}]:${hp.port}` : `${hp.host}:${hp.port}`;
}

/** The unspecified addresses: a listener bound to one of them takes the port on every interface. */
export function isWildcardAddress(host: string): boolean {
  return host === "0.0.0.0" || host === "::";
}

function parsePort(text: string, what: string, path: string | undefined, minPort: number): number {
  if (!/^[0-9]{1,5}$/.test(text)) throw new ConfigError(`not a port number: ${JSON.stringify(what)}`, path);
  const port = Number(text);
  if (port < minPort || port > 65535) {
    throw new ConfigError(`port out of range (${minPort}-65535): ${port}`, path);
  }
  return port;
}

/**
 * Parses "host:port", "[::1]:443" or ":443" (host 0.0.0.0). The host is an IPv4
 * literal, a bracketed IPv6 literal, or a hostname (normalized). Port 0 (an
 * ephemeral port, for tests) is only accepted with `allowPortZero`, for listeners.
 * Throws ConfigError naming `path`.
 */
export function parseHostPort(value: unknown, path?: string, opts: { allowPortZero?: boolean } = {}): HostPort {
  if (typeof value !== "string") {
    throw new ConfigError(`expected "host:port" as a string, got ${JSON.stringify(value) ?? String(value)}`, path);
  }
  const s = value.trim();
  const minPort = opts.allowPortZero ? 0 : 1;
  const bad = (why: string) => new ConfigError(`${why}: ${JSON.stringify(value)}`, path);
  if (s.startsWith("[")) {
    const end = s.indexOf("]");
    if (end < 0 || s[end + 1] !== ":") throw bad("not host:port (write IPv6 as [addr]:port)");
    const host = s.slice(1, end).toLowerCase();
    if (!isIPv6(host)) throw bad("not an IPv6 address");
    return { host, port: parsePort(s.slice(end + 2), value, path, minPort) };
  }
  const colon = s.lastIndexOf(":");
  if (colon < 0) throw bad("not host:port (missing :port)");
  const hostText = s.slice(0, colon);
  if (hostText.includes(":")) throw bad("not host:port (write IPv6 as [addr]:port)");
  let host: string;
  if (hostText === "") host = "0.0.0.0";
  else if (isIPv4(hostText)) host = hostText;
  else {
    const name = normalizeHostname(hostText);
    if (name === null) throw bad("not an IP address or hostname");
    host = name;
  }
  return { host, port: parsePort(s.slice(colon + 1), value, path, minPort) };
}

/**
 * Parses an inclusive TCP port range: "20000-20099", "20022" or the integer 20022.
 * Throws ConfigError naming `path`.
 */
export function parsePortRange(value: unknown, path?: string): PortRange {
  let from: number;
  let to: number;
  if (typeof value === "number" && Number.isInteger(value)) {
    from = to = value;
  } else if (typeof value === "string" && /^\s*[0-9]{1,5}\s*(?:-\s*[0-9]{1,5}\s*)?$/.test(value)) {
    const [a, b] = value.split("-").map((part) => Number(part.trim()));
    from = a!;
    to = b ?? a!;
  } else {
    throw new ConfigError(`not a port range (use e.g. 20000-20099 or 20022): ${JSON.stringify(value)}`, path);
  }
  for (const port of [from, to]) {
    if (port < 1 || port > 65535) throw new ConfigError(`port out of range (1-65535): ${port}`, path);
  }
  if (from > to) throw new ConfigError(`empty port range (${from} > ${to}): ${JSON.stringify(value)}`, path);
  return { from, to };
}

/** "20000-20099", or "20022" for a single port. */
export function formatPortRange(r: PortRange): string {
  return r.from === r.to ? String(r.from) : `${r.from}-${r.to}`;
}

export function rangesOverlap(a: PortRange, b: PortRange): boolean {
  return a.from <= b.to && b.from <= a.to;
}

/** Is every port of `r` inside the union of `pool`? */
export function rangeInside(r: PortRange, pool: readonly PortRange[]): boolean {
  let next = r.from;
  for (const p of [...pool].sort((a, b) => a.from - b.from)) {
    if (p.from <= next && p.to >= next) next = p.to + 1;
    if (next > r.to) return true;
  }
  return false;
}

/** The parts of `r` that lie inside `pool`, in port order. */
export function clipRange(r: PortRange, pool: readonly PortRange[]): PortRange[] {
  const out: PortRange[] = [];
  for (const p of [...pool].sort((a, b) => a.from - b.from)) {
    const from = Math.max(r.from, p.from);
    const to = Math.min(r.to, p.to);
    if (from <= to) out.push({ from, to });
  }
  return out;
}
