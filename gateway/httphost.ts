/**
 * The Host peek for plain HTTP/1.x: a pure parser over the bytes received so far
 * that finds the end of the request head and the host the request is for, so the
 * HTTP listener can route it. The head itself is replayed to the backend untouched.
 *
 * Line endings (RFC 9112 §2.2): CRLF, and a bare LF is tolerated as a line
 * terminator (the "MAY recognize a single LF" clause) because hand-typed requests
 * (nc, telnet) send them. A bare CR anywhere in the head is rejected, as is
 * obs-fold (a header line starting with SP/HTAB, RFC 9112 §5.2 allows rejecting
 * it with 400): folding is how Host smuggling starts, and no modern client folds.
 */
import { isIPv4, isIPv6 } from "node:net";
import { STATUS_CODES } from "node:http";
import { normalizeHostname } from "../lib/hostname.js";

/** Cap on the request head (request line + header fields + blank line) the peek will buffer. */
export const HTTP_HEAD_MAX_BYTES = 16 * 1024;
/**
 * Sanity bound on the method token (RFC 9110 sets none; the longest registered
 * method, VERSION-CONTROL, is 15). Keeps the fail-fast method scan cheap when a
 * client drips a long run of token characters one byte at a time.
 */
export const HTTP_METHOD_MAX_BYTES = 64;
/**
 * Empty lines tolerated before the request line (RFC 9112 §2.2: a server SHOULD ignore "at
 * least one"), in bytes. Bounded so that every call's work before the header scan is
 * bounded too: a drip of CRLFs up to the head cap would otherwise be rescanned per byte.
 */
export const HTTP_LEADING_EMPTY_MAX_BYTES = 64;

export type HttpHeadResult =
  /**
   * `resumeAt`: where the line under way starts; passed back with the next, longer buffer,
   * the search for the blank line goes on from there instead of from the start, so a head
   * dripped one byte per segment is scanned once, not once per byte (gateway/peek.ts).
   */
  | { type: "need-more"; resumeAt?: number }
  | { type: "ok"; host: string | null; method: string; path: string; version: string; headLength: number }
  | { type: "invalid"; reason: string };

const NEED_MORE: HttpHeadResult = Object.freeze({ type: "need-more" });
const LF = 0x0a;
const CR = 0x0d;
const SP = 0x20;

function invalid(reason: string): HttpHeadResult {
  return { type: "invalid", reason };
}

// RFC 9110 §5.6.2: tchar = "!" / "#" / "$" / "%" / "&" / "'" / "*" / "+" / "-" / "." / "^" / "_" / "`" / "|" / "~" / DIGIT / ALPHA
const TCHAR = new Uint8Array(256);
for (const c of "!#$%&'*+-.^_`|~0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz") TCHAR[c.charCodeAt(0)] = 1;
const TOKEN = /^[!#$%&'*+\-.^_`|~0-9A-Za-z]+$/;
/** RFC 9110 §5.5: field-value = *field-content; VCHAR, obs-text, SP and HTAB; no other controls. */
const FIELD_VALUE = /^[\t\x20-\x7e\x80-\xff]*$/;
/** RFC 9112 §2.3: HTTP-version = "HTTP" "/" DIGIT "." DIGIT; only major version 1 is spoken here. */
const HTTP1_VERSION = /^HTTP\/1\.[0-9]$/;

/**
 * Parses the request head in `buf`. `headLength` counts the bytes up to and
 * including the blank line (and any empty lines before the request line, which
 * RFC 9112 §2.2 says a server SHOULD ignore). `path` is the request target's path
 * and query (origin-form as sent; for absolute-form the part after the authority);
 * the acme-challenge route looks at it.
 *
 * `resumeAt` must be 0 or what a need-more answer for a prefix of this same buffer said.
 */
export function parseHttpHead(buf: Buffer, maxBytes = HTTP_HEAD_MAX_BYTES, resumeAt = 0): HttpHeadResult {
  // Skip empty lines before the request line (RFC 9112 §2.2).
  let start = 0;
  for (;;) {
    if (buf[start] === LF) start += 1;
    else if (buf[start] === CR && buf[start + 1] === LF) start += 2;
    else if (buf[start] === CR && start + 1 === buf.length) return NEED_MORE;
    else break;
    if (start > maxBytes) return invalid(`request head exceeds ${maxBytes} bytes`);
    if (start > HTTP_LEADING_EMPTY_MAX_BYTES) return invalid(`more than ${HTTP_LEADING_EMPTY_MAX_BYTES} bytes of empty lines before the request line`);
  }

  // Fail fast on non-HTTP bytes (a TLS hello on port 80, an SSH banner): the method
  // is a token followed by SP (RFC 9112 §3), checked as the bytes arrive.
  let i = start;
  const methodEnd = Math.min(buf.length, start + HTTP_METHOD_MAX_BYTES + 1);
  while (i < methodEnd && TCHAR[buf[i]!]) i++;
  if (i - start > HTTP_METHOD_MAX_BYTES) return invalid(`request method longer than ${HTTP_METHOD_MAX_BYTES} bytes`);
  if (i < buf.length && (buf[i] !== SP || i === start)) return invalid("not an HTTP/1.x request (request line does not start with a method token)");

  // Find the blank line that ends the head: an LF that ends an empty line. The
  // parser is re-run on every chunk, so hop between LFs with the native indexOf.
  let end = -1;
  // Lines before resumeAt were complete and not empty when an earlier call saw them.
  let lineStart = resumeAt > start ? resumeAt : start;
  const limit = Math.min(buf.length, maxBytes);
  for (let j = buf.indexOf(LF, lineStart); j >= 0 && j < limit; j = buf.indexOf(LF, j + 1)) {
    const lineLength = j - lineStart - (j > lineStart && buf[j - 1] === CR ? 1 : 0);
    if (lineLength === 0 && lineStart !== start) {
      end = j + 1;
      break;
    }
    lineStart = j + 1;
  }
  if (end < 0) {
    if (buf.length >= maxBytes) return invalid(`request head exceeds ${maxBytes} bytes`);
    return lineStart > start ? { type: "need-more", resumeAt: lineStart } : NEED_MORE;
  }

  const head = buf.toString("latin1", start, end);
  const lines = head.split("\n");
  // The split leaves "" after the final LF and the blank line before it.
  lines.length -= 2;
  for (let k = 0; k < lines.length; k++) {
    const line = lines[k]!.endsWith("\r") ? lines[k]!.slice(0, -1) : lines[k]!;
    if (line.includes("\r")) return invalid("bare CR in request head (RFC 9112 §2.2)");
    lines[k] = line;
  }

  // RFC 9112 §3: request-line = method SP request-target SP HTTP-version
  const requestLine = lines[0]!;
  const parts = requestLine.split(" ");
  if (parts.length !== 3) return invalid("malformed request line (RFC 9112 §3: method SP request-target SP HTTP-version)");
  const [method, target, version] = parts as [string, string, string];
  if (!TOKEN.test(method)) return invalid("malformed method");
  if (!HTTP1_VERSION.test(version)) {
    if (method === "PRI" && version === "HTTP/2.0") return invalid("HTTP/2 prior-knowledge preface on an HTTP/1.x listener");
    return invalid(`unsupported HTTP version ${JSON.stringify(version.slice(0, 16))}`);
  }
  if (target.length === 0 || !/^[\x21-\x7e]+$/.test(target)) return invalid("malformed request target");

  // RFC 9112 §3.2: the four request-target forms.
  let path: string;
  let targetHost: string | null | undefined; // undefined: the target names no authority
  if (target.startsWith("/")) {
    path = target; // origin-form
  } else if (target === "*") {
    path = target; // asterisk-form (OPTIONS)
  } else if (/^[a-zA-Z][a-zA-Z0-9+.-]*:\/\//.test(target)) {
    // absolute-form (RFC 9112 §3.2.2): "http://authority/path?query"
    const afterScheme = target.indexOf("://") + 3;
    let authEnd = afterScheme;
    while (authEnd < target.length && !"/?#".includes(target[authEnd]!)) authEnd++;
    let authority = target.slice(afterScheme, authEnd);
    const at = authority.lastIndexOf("@");
    if (at >= 0) authority = authority.slice(at + 1); // userinfo is not part of the host (RFC 3986 §3.2)
    const host = parseHostValue(authority);
    if (host === undefined) return invalid("absolute-form request target has an invalid host");
    targetHost = host;
    path = target.slice(authEnd) || "/";
    if (!path.startsWith("/")) path = "/" + path;
  } else if (method === "CONNECT") {
    path = target; // authority-form (RFC 9112 §3.2.3); routed by Host like any other request
  } else {
    return invalid("malformed request target");
  }

  // Header fields, RFC 9112 §5: field-name ":" OWS field-value OWS
  let hostHeader: string | undefined;
  for (let k = 1; k < lines.length; k++) {
    const line = lines[k]!;
    if (line.startsWith(" ") || line.startsWith("\t")) return invalid("obs-fold header continuation line (RFC 9112 §5.2), rejected");
    const colon = line.indexOf(":");
    if (colon <= 0) return invalid("malformed header field line (no field name)");
    const name = line.slice(0, colon);
    // RFC 9112 §5.1: no whitespace between field name and colon; a server MUST reject it.
    if (!TOKEN.test(name)) return invalid(`malformed header field name ${JSON.stringify(name.slice(0, 40))}`);
    const value = line.slice(colon + 1).replace(/^[ \t]+|[ \t]+$/g, "");
    if (!FIELD_VALUE.test(value)) return invalid(`control character in header field ${name}`);
    if (name.length === 4 && name.toLowerCase() === "host") {
      // RFC 9112 §3.2: more than one Host field line MUST be answered with 400.
      if (hostHeader !== undefined) return invalid("more than one Host header field (RFC 9112 §3.2)");
      hostHeader = value;
    }
  }

  let host: string | null;
  if (hostHeader !== undefined) {
    const parsed = parseHostValue(hostHeader);
    if (parsed === undefined) return invalid(`invalid Host header ${JSON.stringify(hostHeader.slice(0, 80))}`);
    host = parsed;
  } else {
    // RFC 9112 §3.2: an HTTP/1.1 request without Host MUST get 400; HTTP/1.0 predates Host.
    if (version !== "HTTP/1.0" && targetHost === undefined) return invalid("HTTP/1.1 request without a Host header (RFC 9112 §3.2)");
    host = null;
  }
  // RFC 9112 §3.2.2: with absolute-form the target's host wins over the Host header.
  if (targetHost !== undefined) host = targetHost;

  return { type: "ok", host, method, path, version, headLength: end };
}

/**
 * Parses a Host value / URI authority (RFC 9110 §7.2: uri-host [ ":" port ]).
 * Returns the normalized host (lower-case, no trailing dot, IPv6 without brackets),
 * null for an empty value (RFC 9112 §3.2 allows an empty Host), undefined if invalid.
 */
function parseHostValue(value: string): string | null | undefined {
  if (value === "") return null;
  let host: string;
  let rest: string;
  if (value.startsWith("[")) {
    // RFC 3986 §3.2.2: IP-literal = "[" ( IPv6address / IPvFuture ) "]"
    const close = value.indexOf("]");
    if (close < 0) return undefined;
    host = value.slice(1, close).toLowerCase();
    rest = value.slice(close + 1);
    if (!isIPv6(host)) return undefined;
  } else {
    const colon = value.indexOf(":");
    host = colon < 0 ? value : value.slice(0, colon);
    rest = colon < 0 ? "" : value.slice(colon);
  }
  // RFC 3986 §3.2.3: port = *DIGIT (an empty port after ":" is allowed).
  if (rest !== "" && !/^:[0-9]{0,5}$/.test(rest)) return undefined;
  if (value.startsWith("[")) return host;
  if (isIPv4(host)) return host;
  return normalizeHostname(host) ?? undefined;
}

const HTML_ESCAPES: Record<string, string> = { "&": "&amp;", "<": "&lt;", ">": "&gt;", '"': "&quot;", "'": "&#39;" };
function escapeHtml(s: string): string {
  return s.replace(/[&<>"']/g, (c) => HTML_ESCAPES[c]!);
}

/**
 * parseHttpHead for one peek: keeps the place where the search for the blank line stopped
 * (`resumeAt`) between calls, so a head dripped one byte per segment is scanned once, not
 * once per byte. Use a new one per connection.
 */
export function httpHeadPeekParser(maxBytes = HTTP_HEAD_MAX_BYTES): (buf: Buffer) => HttpHeadResult {
  let resumeAt = 0;
  return (buf) => {
    const r = parseHttpHead(buf, maxBytes, resumeAt);
    resumeAt = r.type === "need-more" ? r.resumeAt ?? 0 : 0;
    return r;
  };
}

/**
 * A complete, short HTTP/1.1 error response (e.g. 404 for no route, 502 for cog
 * offline, 400 for a malformed head) that closes the connection.
 */
export function httpErrorResponse(status: number, title: string, detail: string): Buffer {
  if (!Number.isInteger(status) || status < 100 || status > 599) throw new RangeError(`not an HTTP status code: ${status}`);
  const reason = (STATUS_CODES[status] ?? title).replace(/[^\x20-\x7e]/g, "");
  const body =
    `<!doctype html>\n<html><head><meta charset="utf-8"><title>${status} ${escapeHtml(title)}</title></head>\n` +
    `<body><h1>${escapeHtml(title)}</h1>\n<p>${escapeHtml(detail)}</p>\n<hr><p>capsul dispenser</p></body></html>\n`;
  const bodyBytes = Buffer.from(body, "utf8");
  const head =
    `HTTP/1.1 ${status} ${reason}\r\n` +
    "Content-Type: text/html; charset=utf-8\r\n" +
    `Content-Length: ${bodyBytes.length}\r\n` +
    "Cache-Control: no-store\r\n" +
    "Connection: close\r\n\r\n";
  return Buffer.concat([Buffer.from(head, "latin1"), bodyBytes]);
}
