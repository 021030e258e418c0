/**
 * Dialing the hub's tunnel listener: TLS 1.3, our client certificate when we
 * have one, and the hub's CA as the only trust anchor. The hub's certificate
 * must be a serverAuth leaf signed by that CA (another cog's client
 * certificate, also signed by it, can never pose as the hub).
 *
 * TLS 1.3 session resumption: the caller may offer the session ticket of its last tunnel to
 * the same hub endpoint (`session`) and is given each new one (`onSession`). A hub that still
 * has the ticket key (gateway/ticketkeys.ts: also after a restart) resumes without a
 * certificate signature or chain check on either side; one that does not does a full
 * handshake. Node checks the hub's identity only on a full handshake: a resumed session is
 * with the hub that passed checkServerIdentity below when the ticket was issued (only it can
 * open the ticket and prove the resumption secret).
 */
import tls from "node:tls";
import type { HostPort } from "../config/types.js";
import { AuthError } from "../lib/errors.js";
import { MuxSession } from "../protocol/mux.js";
import type { CogTunnelTuning, TunnelTuning } from "../config/types.js";

const OID_SERVER_AUTH = "1.3.6.1.5.5.7.3.1";

export interface DialOptions {
  hub: HostPort;
  /** TLS server name to send; absent: the hub's host when it is a name (IP literals get none). */
  serverName?: string;
  /** cog.tunnel (enrollment passes the same; acceptBacklog absent means MuxSession's default). */
  tuning: TunnelTuning & Partial<Pick<CogTunnelTuning, "acceptBacklog">>;
  /** PEM of the pinned CA; when absent the caller verifies the chain itself (enrollment). */
  caPem?: string;
  keyPem?: string;
  certPem?: string;
  /** A session ticket from an earlier tunnel to this endpoint, offered for resumption. */
  session?: Buffer;
  /** Each session ticket the hub sends on this tunnel (after a full handshake). */
  onSession?: (ticket: Buffer) => void;
}

/** The TLS connection both dialHub and fetchTicket make. */
function connect(opts: DialOptions): tls.TLSSocket {
  return tls.connect({
    host: opts.hub.host,
    port: opts.hub.port,
    servername: opts.serverName ?? (/^[\d.]+$|:/.test(opts.hub.host) ? undefined : opts.hub.host),
    minVersion: "TLSv1.3",
    ca: opts.caPem,
    key: opts.keyPem,
    cert: opts.certPem,
    session: opts.session,
    rejectUnauthorized: opts.caPem !== undefined,
    // The CA is ours alone, so any name is fine; what matters is the role.
    checkServerIdentity: (_host, cert) => {
      const eku = (cert as unknown as { ext_key_usage?: string[] }).ext_key_usage ?? [];
      return eku.includes(OID_SERVER_AUTH) ? undefined : new AuthError("the hub presented a certificate that is not a server certificate");
    },
  });
}

export function dialHub(opts: DialOptions): Promise<{ socket: tls.TLSSocket; session: MuxSession }> {
  return new Promise((resolve, reject) => {
    const socket = connect(opts);
    socket.setNoDelay(true);
    const onSession = opts.onSession;
    if (onSession) socket.on("session", (ticket: Buffer) => onSession(ticket));
    const timer = setTimeout(() => socket.destroy(new Error(`TLS handshake with ${opts.hub.host}:${opts.hub.port} timed out`)), opts.tuning.handshakeTimeoutMs);
    socket.once("error", (err) => { clearTimeout(timer); reject(err); });
    socket.once("secureConnect", () => {
      clearTimeout(timer);
      socket.removeAllListeners("error");
      socket.on("error", () => {});
      const tuning = opts.tuning;
      const session = new MuxSession(socket, {
        role: "client",
        maxStreamWindowBytes: tuning.maxStreamWindowBytes,
        maxAutoWindowBytes: tuning.maxAutoWindowBytes,
        keepaliveIntervalMs: tuning.keepaliveIntervalMs,
        keepaliveTimeoutMs: tuning.keepaliveTimeoutMs,
        acceptBacklog: tuning.acceptBacklog,
        maxFramePayloadBytes: tuning.maxFramePayloadBytes,
        writeBatchMaxBytes: tuning.writeBatchMaxBytes,
        closeLingerMs: tuning.closeLingerMs,
        maxQueuedControlFrames: tuning.maxQueuedControlFrames,
      });
      resolve({ socket, session });
    });
  });
}

/**
 * A fresh session ticket for a cog whose tunnel is up (tunnel-client/hublink.ts, every
 * cog.tunnel.session_refresh): a full handshake on a side connection, the first ticket the
 * hub sends, then a clean close before any control message. OpenSSL's TLS 1.3 server issues
 * no ticket on a resumed handshake, so without this a cog's ticket is as old as its last full
 * handshake, and a hub restarted after hub.tunnel.session_ticket_lifetime of uptime would
 * resume nobody. Costs the hub one full handshake per cog and period.
 */
export function fetchTicket(opts: Omit<DialOptions, "session" | "onSession">): Promise<Buffer> {
  return new Promise((resolve, reject) => {
    const socket = connect(opts);
    const timer = setTimeout(() => socket.destroy(new Error(`no session ticket from ${opts.hub.host}:${opts.hub.port} in time`)), opts.tuning.handshakeTimeoutMs);
    socket.on("error", (err) => { clearTimeout(timer); reject(err); }); // after the ticket: nothing to say
    socket.once("close", () => { clearTimeout(timer); reject(new Error("the hub closed the connection before sending a session ticket")); });
    socket.once("session", (ticket: Buffer) => {
      clearTimeout(timer);
      resolve(ticket);
      socket.end();
    });
  });
}

/** The hub's leaf and issuer certificates as DER, for pinning during enrollment. */
export function peerChain(socket: tls.TLSSocket): { leaf: Buffer; issuer: Buffer | null } {
  const peer = socket.getPeerCertificate(true);
  const leaf = peer.raw;
  const issuer = peer.issuerCertificate && peer.issuerCertificate.raw && !peer.issuerCertificate.raw.equals(leaf) ? peer.issuerCertificate.raw : null;
  return { leaf, issuer };
}
