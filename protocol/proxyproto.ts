/**
 * The PROXY protocol (HAProxy, "The PROXY protocol Versions 1 & 2", 2020/03/05):
 * the header a cog writes in front of a visitor's bytes so the backend learns the
 * visitor's real address. Encoders for v1 (text) and v2 (binary), and one pure
 * parser for either, used by tests and by demo backends.
 *
 * IPv4-mapped IPv6 addresses (::ffff:a.b.c.d, what a dual-stack Node socket
 * reports for IPv4 peers) are encoded as IPv4, so backends see 127.0.0.1 and not
 * ::ffff:127.0.0.1. If one side is IPv4 and the other IPv6, the IPv4 side is
 * written in its mapped IPv6 form: both addresses of a header share one family.
 */
import { isIPv4, isIPv6 } from "node:net";
import { ProtocolError } from "../lib/errors.js";

export interface ProxyAddress {
  address: string;
  port: number;
}

/** Spec §2.1: a v1 header line is at most 107 bytes including the CRLF. */
export const PROXY_V1_MAX_BYTES = 107;
/** Largest v2 header we accept: 16-byte fixed part + address block + TLVs (len is a uint16, spec §2.2). */
export const PROXY_V2_MAX_BYTES = 16 + 0xffff;

const V1_PREFIX = Buffer.from("PROXY ", "latin1");
/** Spec §2.2: the 12-byte v2 signature, "\r\n\r\n\0\r\nQUIT\n". */
export const PROXY_V2_SIGNATURE = Buffer.from([0x0d, 0x0a, 0x0d, 0x0a, 0x00, 0x0d, 0x0a, 0x51, 0x55, 0x49, 0x54, 0x0a]);
const V2_FIXED_BYTES = 16;
// Spec §2.2, 13th byte: version 2 in the high nibble; command LOCAL=0 / PROXY=1 in the low one.
const V2_VERSION = 0x20;
const V2_CMD_LOCAL = 0x0;
const V2_CMD_PROXY = 0x1;
// Spec §2.2, 14th byte: address family (high nibble) and transport protocol (low nibble).
const AF_UNSPEC = 0x0;
const AF_INET = 0x1;
const AF_INET6 = 0x2;
const AF_UNIX = 0x3;
const PROTO_STREAM = 0x1;
const PROTO_DGRAM = 0x2;
// Spec §2.2: size of the address block for each family.
const ADDR_BYTES: Record<number, number> = { [AF_INET]: 12, [AF_INET6]: 36, [AF_UNIX]: 216 };

export type ProxyFamily = "tcp4" | "tcp6" | "udp4" | "udp6" | "unix" | "unknown";

export type ProxyHeaderResult =
  | { type: "need-more" }
  | {
      type: "ok";
      version: 1 | 2;
      /** v2 LOCAL (health checks from the proxy itself) carries no addresses. */
      command: "proxy" | "local";
      family: ProxyFamily;
      /** null for UNKNOWN / UNSPEC / LOCAL / unix: no IP address to report. */
      src: ProxyAddress | null;
      dst: ProxyAddress | null;
      /** v2 only: type-length-value extensions after the address block (spec §2.2.7). */
      tlvs: { type: number; value: Buffer }[];
      headerLength: number;
    }
  | { type: "invalid"; reason: string };

type Family4or6 = { v: 4; bytes: Buffer } | { v: 6; bytes: Buffer };

/** "PROXY TCP4 1.2.3.4 5.6.7.8 1234 443\r\n" (spec §2.1). */
export function encodeProxyV1(src: ProxyAddress, dst: ProxyAddress): Buffer {
  const [s, d] = pairFamilies(src, dst);
  const proto = s.v === 4 ? "TCP4" : "TCP6";
  const line = `PROXY ${proto} ${formatIp(s)} ${formatIp(d)} ${src.port} ${dst.port}\r\n`;
  return Buffer.from(line, "latin1");
}

/** Binary v2 header with the PROXY command over TCP (STREAM), no TLVs (spec §2.2). */
export function encodeProxyV2(src: ProxyAddress, dst: ProxyAddress): Buffer {
  const [s, d] = pairFamilies(src, dst);
  const family = s.v === 4 ? AF_INET : AF_INET6;
  const addrBytes = ADDR_BYTES[family]!;
  const out = Buffer.alloc(V2_FIXED_BYTES + addrBytes);
  PROXY_V2_SIGNATURE.copy(out, 0);
  out[12] = V2_VERSION | V2_CMD_PROXY;
  out[13] = (family << 4) | PROTO_STREAM;
  out.writeUInt16BE(addrBytes, 14);
  // Spec §2.2: src_addr, dst_addr, src_port, dst_port, all in network byte order.
  s.bytes.copy(out, 16);
  d.bytes.copy(out, 16 + s.bytes.length);
  out.writeUInt16BE(src.port, 16 + 2 * s.bytes.length);
  out.writeUInt16BE(dst.port, 18 + 2 * s.bytes.length);
  return out;
}

function pairFamilies(src: ProxyAddress, dst: ProxyAddress): [Family4or6, Family4or6] {
  for (const [what, a] of [["source", src], ["destination", dst]] as const) {
    if (!Number.isInteger(a.port) || a.port < 0 || a.port > 65535) throw new ProtocolError(`PROXY header: ${what} port ${a.port} is not 0..65535`);
  }
  let s = ipBytes(src.address);
  let d = ipBytes(dst.address);
  if (!s) throw new ProtocolError(`PROXY header: source address ${JSON.stringify(src.address)} is not an IP address`);
  if (!d) throw new ProtocolError(`PROXY header: destination address ${JSON.stringify(dst.address)} is not an IP address`);
  if (s.v !== d.v) {
    if (s.v === 4) s = mapToV6(s.bytes);
    if (d.v === 4) d = mapToV6(d.bytes);
  }
  return [s, d];
}

/** Parses an IP address into 4 or 16 bytes; an IPv4-mapped IPv6 address comes back as IPv4. */
function ipBytes(address: string): Family4or6 | null {
  // Node reports link-local peers as "fe80::1%eth0"; the zone has no place on the wire.
  const zone = address.indexOf("%");
  const a = zone >= 0 ? address.slice(0, zone) : address;
  if (isIPv4(a)) return { v: 4, bytes: Buffer.from(a.split(".").map(Number)) };
  if (!isIPv6(a)) return null;
  const bytes = parseIPv6(a);
  if (!bytes) return null;
  // RFC 4291 §2.5.5.2: ::ffff:0:0/96 is an IPv4 address in IPv6 clothing.
  if (bytes.subarray(0, 10).every((b) => b === 0) && bytes[10] === 0xff && bytes[11] === 0xff) {
    return { v: 4, bytes: Buffer.from(bytes.subarray(12)) };
  }
  return { v: 6, bytes };
}

function mapToV6(v4: Buffer): Family4or6 {
  const bytes = Buffer.alloc(16);
  bytes[10] = 0xff;
  bytes[11] = 0xff;
  v4.copy(bytes, 12);
  return { v: 6, bytes };
}

/** RFC 4291 §2.2 text forms (with "::" and an optional dotted-quad tail) to 16 bytes. */
function parseIPv6(text: string): Buffer | null {
  let s = text;
  const lastColon = s.lastIndexOf(":");
  const last = s.slice(lastColon + 1);
  if (last.includes(".")) {
    // Rewrite the dotted-quad tail as the two hex groups it stands for.
    if (!isIPv4(last)) return null;
    const q = last.split(".").map(Number);
    s = `${s.slice(0, lastColon + 1)}${((q[0]! << 8) | q[1]!).toString(16)}:${((q[2]! << 8) | q[3]!).toString(16)}`;
  }
  const halves = s.split("::");
  if (halves.length > 2) return null;
  const toGroups = (h: string): number[] =>
    h === "" ? [] : h.split(":").map((g) => (/^[0-9a-fA-F]{1,4}$/.test(g) ? parseInt(g, 16) : NaN));
  const head = toGroups(halves[0]!);
  let groups: number[];
  if (halves.length === 1) {
    groups = head;
  } else {
    const rest = toGroups(halves[1]!);
    const fill = 8 - head.length - rest.length;
    if (fill < 1) return null;
    groups = [...head, ...new Array<number>(fill).fill(0), ...rest];
  }
  if (groups.length !== 8 || groups.some((g) => Number.isNaN(g))) return null;
  const out = Buffer.alloc(16);
  groups.forEach((g, i) => out.writeUInt16BE(g, i * 2));
  return out;
}

function formatIp(a: Family4or6): string {
  return a.v === 4 ? Array.from(a.bytes).join(".") : formatIPv6(a.bytes);
}

/** RFC 5952 §4 canonical text: lower-case hex, no leading zeros, longest run (≥2) of zero groups as "::", first on ties. */
function formatIPv6(bytes: Buffer): string {
  const groups: number[] = [];
  for (let i = 0; i < 16; i += 2) groups.push(bytes.readUInt16BE(i));
  // RFC 5952 §5: IPv4-mapped addresses keep the dotted-quad tail.
  if (groups.slice(0, 5).every((g) => g === 0) && groups[5] === 0xffff) {
    return `::ffff:${bytes[12]}.${bytes[13]}.${bytes[14]}.${bytes[15]}`;
  }
  let bestStart = -1;
  let bestLen = 0;
  for (let i = 0; i < 8; ) {
    if (groups[i] !== 0) {
      i++;
      continue;
    }
    let j = i;
    while (j < 8 && groups[j] === 0) j++;
    if (j - i > bestLen) {
      bestStart = i;
      bestLen = j - i;
    }
    i = j;
  }
  const hex = groups.map((g) => g.toString(16));
  if (bestLen < 2) return hex.join(":");
  return `${hex.slice(0, bestStart).join(":")}::${hex.slice(bestStart + bestLen).join(":")}`;
}

function invalid(reason: string): ProxyHeaderResult {
  return { type: "invalid", reason };
}

/** True while `buf` could still turn into `prefix` (it is a prefix of it, or starts with it). */
function matchesPrefix(buf: Buffer, prefix: Buffer): boolean {
  const n = Math.min(buf.length, prefix.length);
  return buf.subarray(0, n).equals(prefix.subarray(0, n));
}

/**
 * Parses a v1 or v2 PROXY header at the start of `buf`. Bytes after `headerLength`
 * are the proxied stream. Never throws.
 */
export function parseProxyHeader(buf: Buffer): ProxyHeaderResult {
  if (buf.length === 0) return { type: "need-more" };
  const maybeV1 = matchesPrefix(buf, V1_PREFIX);
  const maybeV2 = matchesPrefix(buf, PROXY_V2_SIGNATURE);
  if (maybeV1) return parseV1(buf);
  if (maybeV2) return buf.length < PROXY_V2_SIGNATURE.length ? { type: "need-more" } : parseV2(buf);
  return invalid("no PROXY protocol header (neither the v1 \"PROXY \" prefix nor the v2 signature)");
}

const V1_PORT = /^(0|[1-9][0-9]{0,4})$/;

/** Spec §2.1: "PROXY" SP ( "TCP4" | "TCP6" | "UNKNOWN" ) [SP src SP dst SP sport SP dport] CRLF. */
function parseV1(buf: Buffer): ProxyHeaderResult {
  const window = buf.subarray(0, PROXY_V1_MAX_BYTES);
  const cr = window.indexOf("\r\n");
  if (cr < 0) {
    if (buf.length >= PROXY_V1_MAX_BYTES) return invalid(`PROXY v1 line longer than ${PROXY_V1_MAX_BYTES} bytes`);
    // A lone LF without CR can never become valid.
    if (window.includes(0x0a)) return invalid("PROXY v1 line not terminated by CRLF");
    return { type: "need-more" };
  }
  const headerLength = cr + 2;
  const line = window.toString("latin1", 0, cr);
  if (!/^[\x20-\x7e]*$/.test(line)) return invalid("PROXY v1 line contains non-printable bytes");
  const parts = line.split(" ");
  const proto = parts[1];
  if (proto === "UNKNOWN") {
    // Spec §2.1: with UNKNOWN the receiver must ignore anything up to the CRLF.
    return { type: "ok", version: 1, command: "proxy", family: "unknown", src: null, dst: null, tlvs: [], headerLength };
  }
  if (proto !== "TCP4" && proto !== "TCP6") return invalid(`PROXY v1 protocol ${JSON.stringify(proto ?? "")} is not TCP4, TCP6 or UNKNOWN`);
  if (parts.length !== 6) return invalid("PROXY v1 line must have exactly: PROXY proto src dst sport dport");
  const [, , srcAddr, dstAddr, sport, dport] = parts as [string, string, string, string, string, string];
  const check = proto === "TCP4" ? isIPv4 : isIPv6;
  if (!check(srcAddr) || !check(dstAddr)) return invalid(`PROXY v1 address is not a valid ${proto === "TCP4" ? "IPv4" : "IPv6"} address`);
  if (!V1_PORT.test(sport) || !V1_PORT.test(dport) || Number(sport) > 65535 || Number(dport) > 65535) {
    return invalid("PROXY v1 port is not a decimal 0..65535 without leading zeros");
  }
  return {
    type: "ok",
    version: 1,
    command: "proxy",
    family: proto === "TCP4" ? "tcp4" : "tcp6",
    src: { address: srcAddr, port: Number(sport) },
    dst: { address: dstAddr, port: Number(dport) },
    tlvs: [],
    headerLength,
  };
}

/** Spec §2.2: signature(12) ver_cmd(1) fam(1) len(2, big-endian) then len bytes of addresses and TLVs. */
function parseV2(buf: Buffer): ProxyHeaderResult {
  if (buf.length >= 13) {
    const verCmd = buf[12]!;
    if ((verCmd & 0xf0) !== V2_VERSION) return invalid(`PROXY v2 version nibble is ${verCmd >> 4}, expected 2`);
    const cmd = verCmd & 0x0f;
    if (cmd !== V2_CMD_LOCAL && cmd !== V2_CMD_PROXY) return invalid(`PROXY v2 command ${cmd} is neither LOCAL nor PROXY`);
  }
  if (buf.length < V2_FIXED_BYTES) return { type: "need-more" };
  const cmd = buf[12]! & 0x0f;
  const af = buf[13]! >> 4;
  const proto = buf[13]! & 0x0f;
  const len = buf.readUInt16BE(14);
  const headerLength = V2_FIXED_BYTES + len;
  if (af > AF_UNIX) return invalid(`PROXY v2 address family ${af} is unknown`);
  if (proto > PROTO_DGRAM) return invalid(`PROXY v2 transport protocol ${proto} is unknown`);
  const addrBytes = ADDR_BYTES[af] ?? 0;
  // Spec §2.2: the length must cover at least the address block of the announced family.
  if (len < addrBytes) return invalid(`PROXY v2 length ${len} is too short for address family ${af} (needs ${addrBytes})`);
  if (buf.length < headerLength) return { type: "need-more" };

  const tlvs: { type: number; value: Buffer }[] = [];
  // Spec §2.2.7: TLVs are type(1) length(2, big-endian) value, filling the rest of `len`.
  let off = V2_FIXED_BYTES + addrBytes;
  while (off < headerLength) {
    if (headerLength - off < 3) return invalid("PROXY v2 TLV header overruns the header length");
    const type = buf[off]!;
    const tlvLen = buf.readUInt16BE(off + 1);
    if (off + 3 + tlvLen > headerLength) return invalid(`PROXY v2 TLV 0x${type.toString(16)} overruns the header length`);
    tlvs.push({ type, value: Buffer.from(buf.subarray(off + 3, off + 3 + tlvLen)) });
    off += 3 + tlvLen;
  }

  const base = { type: "ok" as const, version: 2 as const, tlvs, headerLength };
  // Spec §2.2: with LOCAL the receiver must ignore the address block and use the real connection endpoints.
  if (cmd === V2_CMD_LOCAL) return { ...base, command: "local", family: "unknown", src: null, dst: null };
  if (af === AF_UNSPEC || proto === 0) return { ...base, command: "proxy", family: "unknown", src: null, dst: null };
  if (af === AF_UNIX) return { ...base, command: "proxy", family: "unix", src: null, dst: null };
  const ipLen = af === AF_INET ? 4 : 16;
  const v: 4 | 6 = af === AF_INET ? 4 : 6;
  const a = V2_FIXED_BYTES;
  const src = { address: formatIp({ v, bytes: buf.subarray(a, a + ipLen) }), port: buf.readUInt16BE(a + 2 * ipLen) };
  const dst = { address: formatIp({ v, bytes: buf.subarray(a + ipLen, a + 2 * ipLen) }), port: buf.readUInt16BE(a + 2 * ipLen + 2) };
  const family: ProxyFamily = (af === AF_INET ? "tcp4" : "tcp6").replace("tcp", proto === PROTO_DGRAM ? "udp" : "tcp") as ProxyFamily;
  return { ...base, command: "proxy", family, src, dst };
}
