/**
 * The ClientHello peek: a pure parser that finds the SNI host name and the ALPN
 * protocol list in the first bytes a TLS client sends, without terminating TLS.
 *
 * It is re-called with a growing buffer as bytes arrive (possibly one byte per TCP
 * segment), so it must answer `need-more` for every strict prefix of a valid hello
 * and never throw on anything. Every length field is checked against its container
 * before it is trusted: record ⊇ handshake fragment, handshake ⊇ ClientHello body,
 * extensions block ⊇ extension ⊇ server_name list / ALPN list.
 */
import { normalizeHostname } from "../lib/hostname.js";

/**
 * Hard cap on the bytes the peek may buffer: a 16 KiB handshake message plus the
 * headers of up to 8 records carrying it. Post-quantum key shares (X25519MLKEM768:
 * 1216-byte share) put real hellos at 1.5–2 KB, so 16 KiB leaves ample room.
 */
export const CLIENT_HELLO_MAX_BYTES = 16 * 1024 + 5 * 8;

export type HelloResult =
  /**
   * `needBytes`: no answer can change before the buffer holds this many bytes (the record
   * under way, and the rest of the handshake message once its length is known). The peek
   * skips calls until then, so a hello dripped one byte per segment costs a number of
   * parses logarithmic in its records, not one full parse per byte (gateway/peek.ts).
   */
  | { type: "need-more"; needBytes?: number }
  | { type: "ok"; sni: string | null; alpn: string[]; consumed: number }
  | { type: "invalid"; reason: string };

// RFC 8446 §5.1 (TLSPlaintext): ContentType(1) ProtocolVersion(2) uint16 length.
const RECORD_HEADER_BYTES = 5;
// RFC 8446 §5.1: "The length MUST NOT exceed 2^14 bytes."
const RECORD_PAYLOAD_MAX_BYTES = 2 ** 14;
// RFC 8446 §5.1, ContentType.
const CONTENT_TYPE_ALERT = 21;
const CONTENT_TYPE_HANDSHAKE = 22;
// RFC 8446 §4 (Handshake): HandshakeType msg_type(1) uint24 length.
const HANDSHAKE_HEADER_BYTES = 4;
const HANDSHAKE_TYPE_CLIENT_HELLO = 1;
// RFC 8446 §4.2 ExtensionType; RFC 6066 §3; RFC 7301 §3.1.
const EXT_SERVER_NAME = 0;
const EXT_ALPN = 16;
// RFC 6066 §3 NameType.
const NAME_TYPE_HOST_NAME = 0;

const NEED_MORE: HelloResult = Object.freeze({ type: "need-more" });

function invalid(reason: string): HelloResult {
  return { type: "invalid", reason };
}

/**
 * Parses the first ClientHello from `buf` (the bytes received so far).
 * `consumed` is the length of the records that carry the hello; bytes after it
 * (e.g. TLS 1.3 early data records) belong to the stream and must be replayed too.
 */
export function parseClientHello(buf: Buffer, maxBytes = CLIENT_HELLO_MAX_BYTES): HelloResult {
  if (buf.length === 0) return NEED_MORE;
  // An SSLv2-compatible CLIENT-HELLO starts with a 2-byte header whose high bit is
  // set (RFC 6101 Appendix E / RFC 5246 Appendix E.2); it cannot carry SNI.
  if ((buf[0]! & 0x80) !== 0) return invalid("SSLv2-style ClientHello (high bit of first byte set): not supported, it carries no SNI");
  if (buf[0] !== CONTENT_TYPE_HANDSHAKE) return invalid(`first TLS record is not a handshake record (content type ${buf[0]})`);

  // Reassemble the handshake message from the fragments of consecutive records.
  // RFC 8446 §5.1: a handshake message may be split across records, and
  // handshake records MUST NOT be interleaved with other record types in between.
  const fragments: Buffer[] = [];
  let fragmentBytes = 0;
  let handshakeLength = -1; // total bytes of the handshake message, header included, once known
  let off = 0;
  for (;;) {
    if (buf.length - off < RECORD_HEADER_BYTES) {
      // Check what we can of a partial header so garbage fails fast.
      const r = checkRecordHeaderPrefix(buf, off);
      if (r) return r;
      // The next record: its header and at least one payload byte (empty ones are
      // invalid), or all the handshake bytes still missing once their number is known.
      const missing = handshakeLength >= 0 ? handshakeLength - fragmentBytes : 1;
      return { type: "need-more", needBytes: off + RECORD_HEADER_BYTES + Math.max(1, missing) };
    }
    const headerProblem = checkRecordHeaderPrefix(buf, off);
    if (headerProblem) return headerProblem;
    const recordLength = buf.readUInt16BE(off + 3);
    if (recordLength === 0) return invalid("zero-length handshake record (RFC 8446 §5.1 forbids it)");
    if (recordLength > RECORD_PAYLOAD_MAX_BYTES) return invalid(`TLS record length ${recordLength} exceeds 2^14 (RFC 8446 §5.1)`);
    const recordEnd = off + RECORD_HEADER_BYTES + recordLength;
    if (recordEnd > maxBytes) return invalid(`ClientHello exceeds ${maxBytes} bytes`);
    if (handshakeLength >= 0 && fragmentBytes + recordLength > handshakeLength) {
      return invalid("handshake record extends past the end of the ClientHello");
    }
    if (buf.length < recordEnd) {
      // The record is incomplete, but its partial payload may already reveal the
      // handshake header: reject a wrong message type or an absurd length early.
      let total = handshakeLength;
      if (total < 0) {
        // Only the first 4 bytes matter; slicing keeps a drip-fed hello linear, not quadratic.
        const early = checkHandshakeHeader(fragments, buf.subarray(off + RECORD_HEADER_BYTES, off + RECORD_HEADER_BYTES + HANDSHAKE_HEADER_BYTES), maxBytes);
        if (early.type === "invalid") return early;
        if (early.type === "ok" && fragmentBytes + recordLength > early.length) {
          return invalid("handshake record extends past the end of the ClientHello");
        }
        if (early.type === "ok") total = early.length;
      }
      // This record must complete; handshake bytes beyond it need at least one more record.
      const after = total >= 0 ? total - fragmentBytes - recordLength : 0;
      return { type: "need-more", needBytes: recordEnd + (after > 0 ? RECORD_HEADER_BYTES + after : 0) };
    }
    fragments.push(buf.subarray(off + RECORD_HEADER_BYTES, recordEnd));
    fragmentBytes += recordLength;
    off = recordEnd;
    if (handshakeLength < 0) {
      const hs = checkHandshakeHeader(fragments, Buffer.alloc(0), maxBytes);
      if (hs.type === "invalid") return hs;
      if (hs.type === "ok") {
        handshakeLength = hs.length;
        if (fragmentBytes > handshakeLength) return invalid("handshake record extends past the end of the ClientHello");
      }
    }
    if (handshakeLength >= 0 && fragmentBytes === handshakeLength) break;
  }

  const message = fragments.length === 1 ? fragments[0]! : Buffer.concat(fragments, fragmentBytes);
  const body = message.subarray(HANDSHAKE_HEADER_BYTES);
  const parsed = parseClientHelloBody(body);
  if (parsed.type !== "ok") return parsed;
  return { type: "ok", sni: parsed.sni, alpn: parsed.alpn, consumed: off };
}

/** Validates as much of the 5-byte record header at `off` as is present. */
function checkRecordHeaderPrefix(buf: Buffer, off: number): HelloResult | null {
  if (buf.length > off && buf[off] !== CONTENT_TYPE_HANDSHAKE) {
    return invalid(`TLS record carrying the ClientHello has content type ${buf[off]}, expected handshake (22)`);
  }
  // RFC 8446 §5.1: legacy_record_version is 0x0301 (or 0x0303 for compat); every
  // version since SSL 3.0 has major version 3.
  if (buf.length > off + 1 && buf[off + 1] !== 3) {
    return invalid(`TLS record version major byte is ${buf[off + 1]}, expected 3`);
  }
  return null;
}

/** Reads the 4-byte handshake header from the reassembled fragments plus `tail`. */
function checkHandshakeHeader(
  fragments: Buffer[],
  tail: Buffer,
  maxBytes: number,
): { type: "need-more" } | { type: "invalid"; reason: string } | { type: "ok"; length: number } {
  const head = Buffer.concat([...fragments, tail]);
  if (head.length === 0) return { type: "need-more" };
  if (head[0] !== HANDSHAKE_TYPE_CLIENT_HELLO) {
    return { type: "invalid", reason: `first handshake message has type ${head[0]}, expected client_hello (1)` };
  }
  if (head.length < HANDSHAKE_HEADER_BYTES) return { type: "need-more" };
  const bodyLength = head.readUIntBE(1, 3);
  const length = HANDSHAKE_HEADER_BYTES + bodyLength;
  // Each record adds at least a 5-byte header, so this is a lower bound on the wire size.
  if (length + RECORD_HEADER_BYTES > maxBytes) return { type: "invalid", reason: `ClientHello exceeds ${maxBytes} bytes (handshake length ${bodyLength})` };
  return { type: "ok", length };
}

type BodyResult = { type: "ok"; sni: string | null; alpn: string[] } | { type: "invalid"; reason: string };

/**
 * RFC 8446 §4.1.2 ClientHello (same layout as RFC 5246 §7.4.1.2):
 *   ProtocolVersion legacy_version; Random random[32];
 *   opaque legacy_session_id<0..32>; CipherSuite cipher_suites<2..2^16-2>;
 *   opaque legacy_compression_methods<1..2^8-1>; Extension extensions<8..2^16-1>;
 * The body length is exact: it was delimited by the handshake header.
 */
function parseClientHelloBody(body: Buffer): BodyResult {
  const r = new Reader(body);
  const version = r.u16();
  if (version === null) return { type: "invalid", reason: "ClientHello truncated before legacy_version" };
  if (version >> 8 !== 3) return { type: "invalid", reason: `ClientHello legacy_version 0x${version.toString(16)} is not TLS` };
  if (!r.skip(32)) return { type: "invalid", reason: "ClientHello truncated in random" };

  const sessionId = r.vector8();
  if (!sessionId) return { type: "invalid", reason: "legacy_session_id overruns the ClientHello" };
  if (sessionId.length > 32) return { type: "invalid", reason: `legacy_session_id is ${sessionId.length} bytes, max 32 (RFC 8446 §4.1.2)` };

  const suites = r.vector16();
  if (!suites) return { type: "invalid", reason: "cipher_suites overruns the ClientHello" };
  if (suites.length < 2 || suites.length % 2 !== 0) return { type: "invalid", reason: `cipher_suites length ${suites.length} is not a non-zero multiple of 2` };

  const compression = r.vector8();
  if (!compression) return { type: "invalid", reason: "legacy_compression_methods overruns the ClientHello" };
  if (compression.length < 1) return { type: "invalid", reason: "legacy_compression_methods is empty" };

  // RFC 5246 §7.4.1.2: a TLS 1.2 ClientHello may end here, with no extensions at all.
  if (r.remaining === 0) return { type: "ok", sni: null, alpn: [] };
  const extensions = r.vector16();
  if (!extensions) return { type: "invalid", reason: "extensions block overruns the ClientHello" };
  if (r.remaining !== 0) return { type: "invalid", reason: `${r.remaining} trailing bytes after the extensions block` };

  let sni: string | null = null;
  let alpn: string[] = [];
  const seen = new Set<number>();
  const er = new Reader(extensions);
  while (er.remaining > 0) {
    // RFC 8446 §4.2: struct { ExtensionType extension_type; opaque extension_data<0..2^16-1>; }
    const type = er.u16();
    if (type === null) return { type: "invalid", reason: "extension header truncated" };
    const data = er.vector16();
    if (!data) return { type: "invalid", reason: `extension ${type} overruns the extensions block` };
    // RFC 8446 §4.2: "There MUST NOT be more than one extension of the same type".
    if (seen.has(type)) return { type: "invalid", reason: `duplicate extension ${type}` };
    seen.add(type);
    if (type === EXT_SERVER_NAME) {
      const s = parseServerName(data);
      if (typeof s !== "string" && s !== null) return s;
      sni = s;
    } else if (type === EXT_ALPN) {
      const a = parseAlpn(data);
      if (!Array.isArray(a)) return a;
      alpn = a;
    }
  }
  return { type: "ok", sni, alpn };
}

/**
 * RFC 6066 §3: struct { NameType name_type; select (name_type) { case host_name: HostName; } name; } ServerName;
 *   opaque HostName<1..2^16-1>; struct { ServerName server_name_list<1..2^16-1> } ServerNameList;
 * "The ServerNameList MUST NOT contain more than one name of the same name_type."
 */
function parseServerName(data: Buffer): string | null | { type: "invalid"; reason: string } {
  const r = new Reader(data);
  const list = r.vector16();
  if (!list) return { type: "invalid", reason: "server_name list overruns its extension" };
  if (r.remaining !== 0) return { type: "invalid", reason: "trailing bytes after the server_name list" };
  if (list.length === 0) return { type: "invalid", reason: "empty server_name list (RFC 6066 §3 requires at least one name)" };
  const lr = new Reader(list);
  let host: string | null = null;
  const types = new Set<number>();
  while (lr.remaining > 0) {
    const nameType = lr.u8();
    // Every name type defined so far uses a 2-byte length; unknown ones are skipped on that assumption.
    const name = lr.vector16();
    if (nameType === null || !name) return { type: "invalid", reason: "server_name entry overruns the server_name list" };
    if (types.has(nameType)) return { type: "invalid", reason: `server_name list has more than one name of type ${nameType} (RFC 6066 §3)` };
    types.add(nameType);
    if (nameType !== NAME_TYPE_HOST_NAME) continue;
    if (name.length === 0) return { type: "invalid", reason: "empty SNI host_name" };
    const raw = name.toString("latin1");
    const normalized = normalizeHostname(raw);
    if (normalized === null) return { type: "invalid", reason: `SNI host_name ${JSON.stringify(raw.slice(0, 80))} is not a valid DNS hostname (RFC 6066 §3: ASCII A-labels, no IP literals)` };
    host = normalized;
  }
  return host;
}

/**
 * RFC 7301 §3.1: opaque ProtocolName<1..2^8-1>; struct { ProtocolName protocol_name_list<2..2^16-1> } ProtocolNameList;
 * Names are opaque bytes; registered ones are ASCII. Decoded as latin1 so every byte maps to one char.
 */
function parseAlpn(data: Buffer): string[] | { type: "invalid"; reason: string } {
  const r = new Reader(data);
  const list = r.vector16();
  if (!list) return { type: "invalid", reason: "ALPN protocol list overruns its extension" };
  if (r.remaining !== 0) return { type: "invalid", reason: "trailing bytes after the ALPN protocol list" };
  if (list.length < 2) return { type: "invalid", reason: "ALPN protocol list is empty (RFC 7301 §3.1)" };
  const lr = new Reader(list);
  const out: string[] = [];
  while (lr.remaining > 0) {
    const name = lr.vector8();
    if (!name) return { type: "invalid", reason: "ALPN protocol name overruns the list" };
    if (name.length === 0) return { type: "invalid", reason: "empty ALPN protocol name (RFC 7301 §3.1)" };
    out.push(name.toString("latin1"));
  }
  return out;
}

/** A bounds-checked cursor: every read returns null instead of running past the end. */
class Reader {
  private off = 0;
  constructor(private readonly buf: Buffer) {}
  get remaining(): number {
    return this.buf.length - this.off;
  }
  u8(): number | null {
    if (this.remaining < 1) return null;
    return this.buf[this.off++]!;
  }
  u16(): number | null {
    if (this.remaining < 2) return null;
    const v = this.buf.readUInt16BE(this.off);
    this.off += 2;
    return v;
  }
  skip(n: number): boolean {
    if (this.remaining < n) return false;
    this.off += n;
    return true;
  }
  private take(n: number): Buffer | null {
    if (this.remaining < n) return null;
    const out = this.buf.subarray(this.off, this.off + n);
    this.off += n;
    return out;
  }
  vector8(): Buffer | null {
    const n = this.u8();
    return n === null ? null : this.take(n);
  }
  vector16(): Buffer | null {
    const n = this.u16();
    return n === null ? null : this.take(n);
  }
}

// Hostname rules (LDH A-labels, ≤253 chars, no IPv4 literal) live in lib/hostname.ts, shared
// with the HTTP Host peek and the config, so every part agrees on what a name is.
export { normalizeHostname };

/** RFC 8446 §6: struct { AlertLevel level; AlertDescription description; } in one alert record. */
function alertRecord(description: number): Buffer {
  // Record version 0x0303: RFC 8446 §5.1 legacy_record_version for everything but the initial ClientHello.
  // AlertLevel fatal = 2 (RFC 8446 §6).
  return Buffer.from([CONTENT_TYPE_ALERT, 0x03, 0x03, 0x00, 0x02, 2, description]);
}

/** Fatal unrecognized_name(112) alert (RFC 6066 §3, RFC 8446 §6.2): no route for this SNI. */
export const TLS_ALERT_UNRECOGNIZED_NAME: Buffer = alertRecord(112);
/** Fatal internal_error(80) alert (RFC 8446 §6.2): the route exists but its cog is offline. */
export const TLS_ALERT_INTERNAL_ERROR: Buffer = alertRecord(80);
