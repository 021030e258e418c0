import { BlockList, isIP } from "node:net";

/**
 * Which addresses an image download may connect to. A URL import makes the cog
 * fetch whatever the caller names, so without this it is an SSRF: the cog's
 * loopback services, its LAN, a cloud metadata endpoint. Refused by default
 * (RFC 6890 special-purpose blocks that are never "the internet"):
 */
export const REFUSED_IPV4: ReadonlyArray<[string, number, string]> = [
  ["0.0.0.0", 8, "unspecified"],         // RFC 1122 "this network"
  ["10.0.0.0", 8, "private"],            // RFC 1918
  ["100.64.0.0", 10, "shared (CGNAT)"],  // RFC 6598
  ["127.0.0.0", 8, "loopback"],          // RFC 1122
  ["169.254.0.0", 16, "link-local"],     // RFC 3927 (cloud metadata lives here)
  ["172.16.0.0", 12, "private"],         // RFC 1918
  ["192.168.0.0", 16, "private"],        // RFC 1918
  ["224.0.0.0", 4, "multicast"],         // RFC 5771
  ["240.0.0.0", 4, "reserved"],          // RFC 1112, with 255.255.255.255
];
export const REFUSED_IPV6: ReadonlyArray<[string, number, string]> = [
  ["::", 128, "unspecified"],
  ["::1", 128, "loopback"],
  ["fc00::", 7, "unique local"],         // RFC 4193
  ["fe80::", 10, "link-local"],          // RFC 4291
  ["fec0::", 10, "site-local"],          // RFC 3879, deprecated but private
  ["ff00::", 8, "multicast"],
];
/** RFC 6052 NAT64 well-known prefix: the IPv4 address in its last 32 bits is checked as IPv4. */
const NAT64_PREFIX = /^64:ff9b::/i;

function familyOf(address: string): "ipv4" | "ipv6" | null {
  const v = isIP(address);
  return v === 4 ? "ipv4" : v === 6 ? "ipv6" : null;
}

/** "a.b.c.d/n" or "v6::/n" (a bare address is /32 or /128) → [address, prefix, family]; throws on anything else. */
export function parseCidr(text: string): [string, number, "ipv4" | "ipv6"] {
  const m = /^([^/\s]+)(?:\/(\d{1,3}))?$/.exec(text.trim());
  const fam = m ? familyOf(m[1]!) : null;
  if (!m || !fam) throw new Error(`not an IP address or CIDR block: ${JSON.stringify(text)}`);
  const max = fam === "ipv4" ? 32 : 128;
  const prefix = m[2] === undefined ? max : Number(m[2]);
  if (prefix > max) throw new Error(`prefix longer than ${max}: ${JSON.stringify(text)}`);
  return [m[1]!, prefix, fam];
}

function embeddedIpv4(v6: string): string | null {
  if (!NAT64_PREFIX.test(v6)) return null;
  // Expand to 8 groups and take the last two.
  const [head, tail = ""] = v6.toLowerCase().split("::");
  const h = head ? head.split(":") : [];
  const tl = tail ? tail.split(":") : [];
  if (tl.length && tl[tl.length - 1]!.includes(".")) return tl[tl.length - 1]!;
  const groups = [...h, ...Array(8 - h.length - tl.length).fill("0"), ...tl].map((g) => parseInt(g || "0", 16));
  const hi = groups[6]!, lo = groups[7]!;
  return `${hi >> 8}.${hi & 255}.${lo >> 8}.${lo & 255}`;
}

export class AddressPolicy {
  private readonly refused = new BlockList();
  private readonly allowed = new BlockList();
  private readonly reasons: Array<[BlockList, string]> = [];

  /** `allowedCidrs` (cog.provisioner.import_allowed_cidrs) win over the refused blocks: a LAN mirror, or loopback in tests. */
  constructor(allowedCidrs: readonly string[] = []) {
    for (const [net, prefix, why] of REFUSED_IPV4) this.add(net, prefix, "ipv4", why);
    for (const [net, prefix, why] of REFUSED_IPV6) this.add(net, prefix, "ipv6", why);
    for (const c of allowedCidrs) {
      const [net, prefix, fam] = parseCidr(c);
      this.allowed.addSubnet(net, prefix, fam);
    }
  }

  private add(net: string, prefix: number, fam: "ipv4" | "ipv6", why: string): void {
    this.refused.addSubnet(net, prefix, fam);
    const one = new BlockList();
    one.addSubnet(net, prefix, fam);
    this.reasons.push([one, why]);
  }

  /** null when a connection to `address` (an IP literal) is fine, else why not ("loopback", …). */
  refusal(address: string): string | null {
    const fam = familyOf(address);
    if (!fam) return "not an IP address";
    if (this.allowed.check(address, fam)) return null;
    // BlockList checks IPv4-mapped IPv6 (::ffff:a.b.c.d) against the IPv4 rules itself.
    if (this.refused.check(address, fam)) return this.reasons.find(([b]) => b.check(address, fam))?.[1] ?? "refused";
    const v4 = fam === "ipv6" ? embeddedIpv4(address) : null;
    if (v4 && familyOf(v4) === "ipv4") return this.refusal(v4);
    return null;
  }
}
