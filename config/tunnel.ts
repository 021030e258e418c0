/**
 * hub.tunnel and cog.tunnel: the yamux session's tuning (both ends) and what only one end
 * needs. Defaults and bounds are stated here once; the schema's JSON Schema and the runtime
 * objects (./types.ts TunnelTuning, HubTunnelTuning, CogTunnelTuning) come from them.
 */
import { fmtBytes, fmtMs } from "./values.js";
import { durationMs, fail, int, section, sizeBytes } from "./fields.js";
import type { CogTunnelTuning, HubTunnelTuning, TunnelTuning } from "./types.js";

export const DEFAULT_MAX_STREAM_WINDOW_BYTES = 8 * 1024 * 1024;
export const DEFAULT_KEEPALIVE_INTERVAL_MS = 15_000;
export const DEFAULT_KEEPALIVE_TIMEOUT_MS = 30_000;
export const DEFAULT_HANDSHAKE_TIMEOUT_MS = 10_000;
// protocol/mux.ts exports the same values as MUX_DEFAULT_MAX_AUTO_WINDOW_BYTES, MUX_DEFAULT_ACCEPT_BACKLOG,
// MUX_DEFAULT_MAX_FRAME_PAYLOAD_BYTES, MUX_DEFAULT_WRITE_BATCH_MAX_BYTES and MUX_DEFAULT_CLOSE_LINGER_MS
// (test/muxlimits.test.ts checks that they agree). max_auto_window defaults to max_stream_window
// when that is larger, as MuxSession does.
export const DEFAULT_MAX_AUTO_WINDOW_BYTES = 32 * 1024 * 1024;
export const DEFAULT_ACCEPT_BACKLOG = 1024;
export const DEFAULT_MAX_FRAME_PAYLOAD_BYTES = 64 * 1024;
export const DEFAULT_WRITE_BATCH_MAX_BYTES = 256 * 1024;
export const DEFAULT_CLOSE_LINGER_MS = 5_000;
// protocol/muxlimits.ts MUX_DEFAULT_MAX_QUEUED_CONTROL_FRAMES (test/tunnel-dos.test.ts checks that they agree).
export const DEFAULT_MAX_QUEUED_CONTROL_FRAMES = 16_384;
// hub.tunnel only. gateway/tunnels.ts exports the same values as CONTROL_HELLO_TIMEOUT_MS
// and REVOCATION_POLL_MS (test/timeouts.test.ts checks that they agree).
export const DEFAULT_CONTROL_HELLO_TIMEOUT_MS = 10_000;
export const DEFAULT_REVOCATION_POLL_INTERVAL_MS = 500;
// hub.tunnel only. gateway/admission.ts, gateway/control.ts and gateway/renewal.ts export the same
// values as MAX_UNAUTHENTICATED, MAX_UNAUTHENTICATED_PER_IP, CONTROL_RATE_PER_SEC, CONTROL_BURST
// and RENEW_MIN_INTERVAL_MS (test/tunnel-dos.test.ts checks that they agree).
export const DEFAULT_MAX_UNAUTHENTICATED = 512;
export const DEFAULT_MAX_UNAUTHENTICATED_PER_IP = 16;
export const DEFAULT_CONTROL_RATE_PER_SEC = 20;
export const DEFAULT_CONTROL_BURST = 100;
export const DEFAULT_RENEW_MIN_INTERVAL_MS = 3_600_000;
// hub.tunnel only. gateway/tunnels.ts exports the same value as TUNNEL_LISTEN_BACKLOG
// (test/tunnel-dos.test.ts checks that they agree): 1,000 cogs redialling a restarted hub at
// once overflowed Node's default of 511 (issue 12: TcpExtListenOverflows +1665).
export const DEFAULT_TUNNEL_LISTEN_BACKLOG = 1024;
/** Default of hub.tunnel.move_answer_timeout: the source's move header, then the target cog's yes or no (it answers at once). */
export const DEFAULT_MOVE_ANSWER_TIMEOUT_MS = 30_000;
/** Default of hub.tunnel.max_moves: VM moves one cog may have relayed at once, as source or target. */
export const DEFAULT_MAX_MOVES = 2;
/**
 * Defaults of hub.tunnel.session_ticket_lifetime and session_ticket_rotation (gateway/ticketkeys.ts):
 * a resumed handshake brings no new ticket, so cogs fetch one every cog.tunnel.session_refresh
 * (12 h, half a day) and always hold one a restarted hub takes; the key on disk sits next to the
 * CA key, so a day-old key exposes nothing the file system does not already.
 */
export const DEFAULT_SESSION_TICKET_LIFETIME_MS = 86_400_000;
export const DEFAULT_SESSION_TICKET_ROTATION_MS = 86_400_000;
/** RFC 8446 §4.6.1: a ticket lifetime is at most 7 days (OpenSSL caps the hint it sends there too). */
export const MAX_SESSION_TICKET_LIFETIME_MS = 7 * 86_400_000;
/** Catches a slip of the finger: the kernel caps a listen backlog at net.core.somaxconn anyway. */
export const MAX_LISTEN_BACKLOG = 65_535;
// cog.tunnel only. tunnel-client/client.ts and enroll.ts export the same values as
// WELCOME_TIMEOUT_MS, ENROLL_TIMEOUT_MS, VISITOR_HEADER_TIMEOUT_MS and VISITOR_HEADER_MAX_BYTES.
export const DEFAULT_WELCOME_TIMEOUT_MS = 15_000;
export const DEFAULT_ENROLL_TIMEOUT_MS = 20_000;
export const DEFAULT_VISITOR_HEADER_TIMEOUT_MS = 10_000;
export const DEFAULT_VISITOR_HEADER_MAX_BYTES = 4 * 1024;
/**
 * Default of cog.tunnel.session_refresh: half of hub.tunnel.session_ticket_lifetime's default,
 * so a cog always holds a ticket a restarted hub still takes (tunnel-client/dial.ts fetchTicket).
 */
export const DEFAULT_SESSION_REFRESH_MS = 12 * 3_600_000;

/** yamux spec.md "Flow Control": every stream starts with a 256 KiB window; a smaller maximum is meaningless. */
export const MIN_STREAM_WINDOW_BYTES = 256 * 1024;
/**
 * The largest visitor header a hub sends is under 600 bytes (a 253-byte SNI or
 * Host, a 64-byte route name, two IPv6 addresses with ports, the JSON keys); a
 * smaller cap would refuse real visitors, so 1 KiB is the least allowed.
 */
export const MIN_VISITOR_HEADER_MAX_BYTES = 1024;
/**
 * The upper bounds MuxSession's constructor checks (protocol/mux.ts checkInt), so that a
 * value it would throw on is refused here with a message naming the key instead:
 * windows and frame lengths are u32 (spec.md §Length Field, MUX_MAX_WINDOW_BYTES);
 * counts, batch sizes and timer delays are at most 2^31-1 (Node's largest timer delay).
 */
export const MAX_WINDOW_BYTES = 0xffff_ffff;
export const MAX_MUX_INT = 2 ** 31 - 1;

/** The keys both ends share. */
const SHARED = {
  max_stream_window: sizeBytes("yamux max per-stream receive window (8MiB: 50 ms RTT at ~160 MB/s).",
    { def: DEFAULT_MAX_STREAM_WINDOW_BYTES, min: MIN_STREAM_WINDOW_BYTES, max: MAX_WINDOW_BYTES }),
  max_auto_window: sizeBytes("Ceiling of window auto-tuning: a stream whose reader drains a whole window within 4 round trips has it doubled, up to this (default 32MiB, or max_stream_window if that is larger; at least max_stream_window; equal to it disables growth).",
    // The lower bound is max_stream_window, checked by the section.
    { def: undefined, min: 0, max: MAX_WINDOW_BYTES }),
  keepalive_interval: durationMs("Ping interval on an idle tunnel.", { def: DEFAULT_KEEPALIVE_INTERVAL_MS, min: 1, max: MAX_MUX_INT }),
  keepalive_timeout: durationMs("No ping answer and no bytes within this: the peer is dead (must be greater than keepalive_interval).",
    { def: DEFAULT_KEEPALIVE_TIMEOUT_MS, min: 1, max: MAX_MUX_INT }),
  handshake_timeout: durationMs("TLS handshake deadline on the tunnel listener / when dialing.", { def: DEFAULT_HANDSHAKE_TIMEOUT_MS, min: 1 }),
  max_frame_payload: sizeBytes("Largest Data frame payload sent, so streams interleave fairly.",
    { def: DEFAULT_MAX_FRAME_PAYLOAD_BYTES, min: 1, max: MAX_WINDOW_BYTES }),
  write_batch: sizeBytes("Frame bytes gathered in one turn of the event loop before they go to the connection early.",
    { def: DEFAULT_WRITE_BATCH_MAX_BYTES, min: 1, max: MAX_MUX_INT }),
  close_linger: durationMs("After a close or a protocol-error teardown, how long the peer has to close its side before the connection is destroyed (0 = at once).",
    { def: DEFAULT_CLOSE_LINGER_MS, min: 0, max: MAX_MUX_INT }),
  max_queued_control_frames: int("Control frames (pongs, credit, resets) queued while the connection does not drain; one more ends the session as a peer that is not reading (16384 is 192 KiB).",
    { def: DEFAULT_MAX_QUEUED_CONTROL_FRAMES, min: 1, max: MAX_MUX_INT }),
};

type SharedInput = { [K in keyof typeof SHARED]: ReturnType<(typeof SHARED)[K]["parse"]> };

function buildShared(o: SharedInput): TunnelTuning {
  const t: TunnelTuning = {
    maxStreamWindowBytes: o.max_stream_window,
    keepaliveIntervalMs: o.keepalive_interval,
    keepaliveTimeoutMs: o.keepalive_timeout,
    handshakeTimeoutMs: o.handshake_timeout,
    maxAutoWindowBytes: o.max_auto_window ?? Math.max(DEFAULT_MAX_AUTO_WINDOW_BYTES, o.max_stream_window),
    maxFramePayloadBytes: o.max_frame_payload,
    writeBatchMaxBytes: o.write_batch,
    closeLingerMs: o.close_linger,
    maxQueuedControlFrames: o.max_queued_control_frames,
  };
  // A timeout no longer than the interval declares a healthy idle peer dead before its ping is due.
  if (t.keepaliveTimeoutMs <= t.keepaliveIntervalMs) {
    fail(["keepalive_timeout"], `must be greater than keepalive_interval (${fmtMs(t.keepaliveIntervalMs)})`);
  }
  // Auto-tuning only ever grows a window: a ceiling below the starting window is a contradiction.
  if (t.maxAutoWindowBytes < t.maxStreamWindowBytes) {
    fail(["max_auto_window"], `must be at least max_stream_window (${fmtBytes(t.maxStreamWindowBytes)}), got ${fmtBytes(t.maxAutoWindowBytes)}`);
  }
  return t;
}

export const hubTunnelSchema = section("The hub's end of the tunnels: yamux tuning and the tunnel listener's own limits.", {
  ...SHARED,
  control_hello_timeout: durationMs("After the TLS handshake, deadline for a new tunnel's first control message, hello or enroll.",
    { def: DEFAULT_CONTROL_HELLO_TIMEOUT_MS, min: 1 }),
  revocation_poll_interval: durationMs("How often the hub checks SQLite for cogs revoked by `capsul hub revoke` (a revoked cog's tunnel is dropped within this); on PostgreSQL, how often a lost notification connection is retried.",
    { def: DEFAULT_REVOCATION_POLL_INTERVAL_MS, min: 1 }),
  max_unauthenticated: int("Tunnel connections not yet authenticated (TCP accept through the TLS handshake until a valid hello or enrollment), hub-wide; more are closed at once.",
    { def: DEFAULT_MAX_UNAUTHENTICATED, min: 1 }),
  max_unauthenticated_per_ip: int(`The same, per source address (an IPv6 source counts per /64); at most max_unauthenticated (default ${DEFAULT_MAX_UNAUTHENTICATED_PER_IP}, or max_unauthenticated if smaller).`,
    // The upper bound is max_unauthenticated, checked by the section.
    { def: undefined, min: 1, rangeBySection: true }),
  control_rate: int("Control messages the hub acts on per tunnel and second (route sets applied, renewals): a token bucket's rate.",
    { def: DEFAULT_CONTROL_RATE_PER_SEC, min: 1 }),
  control_burst: int("The token bucket's size: control messages acted on at once before control_rate applies.", { def: DEFAULT_CONTROL_BURST, min: 1 }),
  renew_min_interval: durationMs("Least time between two certificates for one cog over the tunnel: a renewal of a certificate already renewed within this is refused (0 = no limit).",
    { def: DEFAULT_RENEW_MIN_INTERVAL_MS, min: 0 }),
  move_answer_timeout: durationMs("A VM move: how long the hub waits for the source cog's move header, then for the target cog's consent, before it drops the move.",
    { def: DEFAULT_MOVE_ANSWER_TIMEOUT_MS, min: 1 }),
  max_moves: int("VM moves one cog may have relayed through the hub at once, as source or target; more are refused (0 = no moves). Also the streams a cog may have open that still owe their move header; one more is reset at once.",
    { def: DEFAULT_MAX_MOVES, min: 0 }),
  listen_backlog: int("Listen backlog of the tunnel port: connections the kernel queues until the hub accepts them, read at each bind (capped by net.core.somaxconn).",
    { def: DEFAULT_TUNNEL_LISTEN_BACKLOG, min: 1, max: MAX_LISTEN_BACKLOG }),
  session_ticket_lifetime: durationMs("How long a cog may resume its TLS session with a ticket instead of a full handshake (counted from its last full handshake; rounded up to whole seconds, at most 7d, at most session_ticket_rotation). Identity, expiry and revocation are checked on a resumed tunnel as on any other.",
    // The upper bound is session_ticket_rotation, checked by the section.
    { def: DEFAULT_SESSION_TICKET_LIFETIME_MS, min: 1, max: MAX_SESSION_TICKET_LIFETIME_MS }),
  session_ticket_rotation: durationMs("Age at which the session ticket key (<data_dir>/tunnel-ticket.key, shared by a restarted hub and its workers) is replaced; tickets sealed under the old key get a full handshake.",
    { def: DEFAULT_SESSION_TICKET_ROTATION_MS, min: 1 }),
}, (o): HubTunnelTuning => {
  const shared = buildShared(o);
  // A per-source cap above the overall one could never be reached: surely a mix-up.
  const perIp = o.max_unauthenticated_per_ip ?? Math.min(DEFAULT_MAX_UNAUTHENTICATED_PER_IP, o.max_unauthenticated);
  if (perIp < 1 || perIp > o.max_unauthenticated) fail(["max_unauthenticated_per_ip"], `out of range (1-${o.max_unauthenticated}): ${perIp}`);
  // Node's server opens tickets under its one current key only: a lifetime past the rotation
  // would promise tickets the next rotation silently voids.
  if (o.session_ticket_lifetime > o.session_ticket_rotation) {
    fail(["session_ticket_lifetime"], `must be at most session_ticket_rotation (${fmtMs(o.session_ticket_rotation)}), got ${fmtMs(o.session_ticket_lifetime)}`);
  }
  return {
    ...shared,
    controlHelloTimeoutMs: o.control_hello_timeout,
    revocationPollIntervalMs: o.revocation_poll_interval,
    maxUnauthenticated: o.max_unauthenticated,
    maxUnauthenticatedPerIp: perIp,
    controlRatePerSec: o.control_rate,
    controlBurst: o.control_burst,
    renewMinIntervalMs: o.renew_min_interval,
    listenBacklog: o.listen_backlog,
    moveAnswerTimeoutMs: o.move_answer_timeout,
    maxMoves: o.max_moves,
    sessionTicketLifetimeMs: o.session_ticket_lifetime,
    sessionTicketRotationMs: o.session_ticket_rotation,
  };
});

export const cogTunnelSchema = section("The cog's end of the tunnel: yamux tuning and what only the dialing end needs.", {
  ...SHARED,
  welcome_timeout: durationMs("Deadline for the hub's welcome after the cog's hello; past it the cog redials.", { def: DEFAULT_WELCOME_TIMEOUT_MS, min: 1 }),
  enroll_timeout: durationMs("Deadline for the hub's answer to `capsul cog enroll`, after the TLS handshake.", { def: DEFAULT_ENROLL_TIMEOUT_MS, min: 1 }),
  visitor_header_timeout: durationMs("Deadline for the visitor header at the start of each stream the hub opens.",
    { def: DEFAULT_VISITOR_HEADER_TIMEOUT_MS, min: 1 }),
  visitor_header_max_bytes: sizeBytes("Cap on the visitor header's JSON (length prefix excluded); a bigger one is a protocol error.",
    { def: DEFAULT_VISITOR_HEADER_MAX_BYTES, min: MIN_VISITOR_HEADER_MAX_BYTES }),
  accept_backlog: int("Visitor streams the hub opened that wait while the cog is not yet listening (between tunnel setup and its stream handler); further ones are refused with RST (0 refuses them all).",
    { def: DEFAULT_ACCEPT_BACKLOG, min: 0, max: MAX_MUX_INT }),
  session_refresh: durationMs("While a tunnel is up, its TLS session ticket is fetched afresh (one full handshake on a side connection) once older than this, so that a restarted hub resumes the session; keep it under the hub's session_ticket_lifetime (0 = never: only the ticket of the last full handshake).",
    { def: DEFAULT_SESSION_REFRESH_MS, min: 0, max: MAX_MUX_INT }),
}, (o): CogTunnelTuning => ({
  ...buildShared(o),
  welcomeTimeoutMs: o.welcome_timeout,
  enrollTimeoutMs: o.enroll_timeout,
  visitorHeaderTimeoutMs: o.visitor_header_timeout,
  visitorHeaderMaxBytes: o.visitor_header_max_bytes,
  acceptBacklog: o.accept_backlog,
  sessionRefreshMs: o.session_refresh,
}));
