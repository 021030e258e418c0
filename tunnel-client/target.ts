/**
 * The last hop on the cog: dial a route's target, write the PROXY protocol
 * header the route asks for and the bytes already read, then splice. Shared by
 * passthrough routes (the visitor's mux stream) and terminated ones (the
 * plaintext side of the TLS the cog serves); one call per connection, nothing
 * per chunk.
 */
import net from "node:net";
import type { Duplex } from "node:stream";
import type { HostPort, ProxyProtocol } from "../config/types.js";
import type { Logger } from "../lib/log.js";
import type { VisitorHeader } from "../protocol/control.js";
import { encodeProxyV1, encodeProxyV2 } from "../protocol/proxyproto.js";
import { splice } from "../protocol/splice.js";

export interface Target { target: HostPort; proxyProtocol: ProxyProtocol }

export interface TargetOptions {
  /** cog.target_dial_timeout */
  dialTimeoutMs: number;
  /** cog.splice_queue */
  spliceQueueBytes: number;
  log: Logger;
  /** Told once per connection, after the splice is wired: the route and its target socket (metrics). */
  onSpliced?: (route: string, target: net.Socket) => void;
}

/** The PROXY header for the visitor in `h`, or null when the route wants none. Throws on an address it cannot encode. */
export function proxyHeader(t: Target, h: VisitorHeader): Buffer | null {
  const src = { address: h.srcAddr, port: h.srcPort };
  const dst = { address: h.dstAddr, port: h.dstPort };
  if (t.proxyProtocol === "v1") return encodeProxyV1(src, dst);
  if (t.proxyProtocol === "v2") return encodeProxyV2(src, dst);
  return null;
}

/** Dials the target for `src` and splices them once connected; destroys `src` on any failure. */
export function connectTarget(src: Duplex, t: Target, h: VisitorHeader, first: Buffer, opts: TargetOptions): void {
  const target = net.connect({ host: t.target.host, port: t.target.port, allowHalfOpen: true });
  target.setNoDelay(true);
  const dialTimer = setTimeout(() => target.destroy(new Error("dial timeout")), opts.dialTimeoutMs);
  target.once("error", (err) => {
    clearTimeout(dialTimer);
    if (target.connecting || !target.remoteAddress) {
      opts.log.warn("target unreachable", { route: h.route, target: `${t.target.host}:${t.target.port}`, error: err.message });
    }
    src.destroy();
  });
  target.once("connect", () => {
    clearTimeout(dialTimer);
    const parts: Buffer[] = [];
    try {
      const ph = proxyHeader(t, h);
      if (ph) parts.push(ph);
    } catch (err) {
      opts.log.warn("cannot write PROXY header", { route: h.route, error: (err as Error).message });
      target.destroy();
      src.destroy();
      return;
    }
    if (first.length) parts.push(first);
    if (parts.length) target.write(parts.length === 1 ? parts[0]! : Buffer.concat(parts));
    // The visitor's FIN may have come with its first bytes, before the target
    // answered: splice() passes on an 'end' the header reader already saw.
    splice(src, target, undefined, opts.spliceQueueBytes);
    opts.onSpliced?.(h.route, target);
  });
}
