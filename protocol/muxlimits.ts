/**
 * The yamux session's limits and defaults (all overridable through MuxOptions; capsul.yaml
 * passes them from hub.tunnel / cog.tunnel, see PROTOCOL.md "Limits and tunables").
 */

/**
 * Every stream's starting receive window (frp uses 6 MiB): 50 ms RTT at ~160 MB/s, and what a
 * reader that never drains fast (stalled, slow, or on loopback) can ever have buffered.
 */
export const MUX_DEFAULT_MAX_STREAM_WINDOW_BYTES = 8 * 1024 * 1024;
/**
 * Auto-tuning ceiling: a stream whose reader drains its whole window within
 * MUX_AUTOTUNE_RTTS round trips has its window doubled, up to this (50 ms RTT at ~670 MB/s).
 * The per-stream receive memory bound of a reader that was fast and then stalls.
 */
export const MUX_DEFAULT_MAX_AUTO_WINDOW_BYTES = 32 * 1024 * 1024;
/**
 * Grow a window when its reader consumed one full window in at most this many of the smallest
 * RTTs seen (quic-go: 4). Not 2: with credit returned at a quarter, a window-limited stream
 * drains its window in ~4/3 of the *effective* RTT, which queues in buffers inflate well past
 * the minimum; at 2 a 50 ms stream stopped growing at 16 MiB (0.35x plain TCP).
 */
export const MUX_AUTOTUNE_RTTS = 4;
/**
 * Credit goes back once a quarter of the stream's window was consumed (hashicorp waits for
 * half: the sender then idles on a half-empty window, which halved our 50 ms RTT throughput).
 */
export const MUX_CREDIT_WINDOW_DIVISOR = 4;
/** spec.md §Flow Control: every stream starts with a 256 KiB window, both directions. */
export const MUX_INITIAL_WINDOW_BYTES = 256 * 1024;
export const MUX_DEFAULT_KEEPALIVE_INTERVAL_MS = 15_000;
export const MUX_DEFAULT_KEEPALIVE_TIMEOUT_MS = 30_000;
/** Peer-opened streams queued while nobody listens for "stream"; further SYNs get RST. */
export const MUX_DEFAULT_ACCEPT_BACKLOG = 1024;
/** Largest Data payload we send in one frame: keeps streams interleaved fairly (4 TLS records). */
export const MUX_DEFAULT_MAX_FRAME_PAYLOAD_BYTES = 64 * 1024;
/** Bytes queued in one tick before we hand them to the connection early (and learn its backpressure). */
export const MUX_DEFAULT_WRITE_BATCH_MAX_BYTES = 256 * 1024;
/** After close()/GoAway-on-error ends the connection, destroy it if the peer has not closed within this. */
export const MUX_DEFAULT_CLOSE_LINGER_MS = 5_000;
/** Payloads up to this size are copied next to their header instead of written as their own buffer. */
export const MUX_COPY_PAYLOAD_MAX_BYTES = 2 * 1024;
/** Size of the scratch arena headers and small payloads are packed into. */
export const MUX_ARENA_BYTES = 64 * 1024;
/**
 * Control frames (pongs, credit, ACK/RST, GoAway) we may queue while the connection has not
 * drained since write() last returned false; one more ends the session. The peer decides how
 * many it provokes (every Ping SYN, every SYN we refuse): without a cap, a peer that sends
 * pings and never reads left 28 MiB in the hub's write queue for 32 MiB of pings. 16,384
 * frames are 192 KiB; a healthy peer drains long before (one keepalive pong per interval,
 * credit every quarter window per stream).
 */
export const MUX_DEFAULT_MAX_QUEUED_CONTROL_FRAMES = 16_384;
/** spec.md §Length Field: windows are u32. */
export const MUX_MAX_WINDOW_BYTES = 0xffff_ffff;

export interface MuxOptions {
  /** client uses odd stream ids, server even (spec.md §StreamID Field). */
  role: "client" | "server";
  maxStreamWindowBytes?: number;
  /** Ceiling for window auto-tuning (>= maxStreamWindowBytes; equal disables growth). */
  maxAutoWindowBytes?: number;
  /** Millisecond clock for RTT samples and auto-tuning (default performance.now); tests freeze it. */
  clock?: () => number;
  /** 0 disables our pings (we still answer the peer's). */
  keepaliveIntervalMs?: number;
  /** Ping outstanding and nothing at all received for this long -> destroyed with "keepalive timeout". */
  keepaliveTimeoutMs?: number;
  acceptBacklog?: number;
  maxFramePayloadBytes?: number;
  writeBatchMaxBytes?: number;
  closeLingerMs?: number;
  /** Control frames queued while the connection is not draining, before the session is ended (see MUX_DEFAULT_MAX_QUEUED_CONTROL_FRAMES). */
  maxQueuedControlFrames?: number;
}
