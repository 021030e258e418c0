/**
 * capsul.yaml → CapsulConfig. The one path for configuration:
 * YAML text → `unknown` → parseConfig() → a frozen, fully-defaulted object.
 * Unknown keys are refused (a typo must fail at start-up, not at 3 a.m.) and
 * every error names the key path, e.g. `hub.cogs[1].hostnames[0]: …`.
 * YAML keys are the snake_case of the fields in ./types.ts; every key is
 * documented in capsul.yaml.example at the repository root. The value readers
 * (durations, sizes, mappings with their "did you mean" hints) are in ./values.ts.
 */
import { readFileSync } from "node:fs";
import { isIP } from "node:net";
import { dirname, resolve } from "node:path";
import { parseDocument } from "yaml";
import { ConfigError } from "../lib/errors.js";
import {
  COG_NAME_RE, formatHostPort, formatPortRange, isWildcardAddress, normalizeHostname,
  parseHostPort, parsePortRange, patternsOverlap, rangeInside, rangesOverlap,
} from "../lib/hostname.js";
import { spliceHeldMaxBytes } from "../protocol/splice.js";
import { parseProvisionerConfig } from "../provisioner/config.js";
import { checkTerminatedHostnames, parseAcme, parseRouteTermination, parseTerminate, ROUTE_TLS_KEYS } from "./acme.js";
import { HUB_QUOTA_KEYS, hubCogLimits, parseCogLimits, parseHubQuotas } from "./quotas.js";
import { HUB_STORE_KEYS, parseHubStore } from "./store.js";
import { parseHubEndpoint } from "./endpoint.js";
import { parseDomains } from "./domains.js";
import type {
  AdminLimits, CapsulConfig, CogConfig, CogLimits, CogRoute, CogTunnelTuning, HostPort, HubCogGrant, HubConfig, HubAdmin, HubLimits, HubTunnelTuning,
  PortRange, ProvisionerConfig, ProxyProtocol, RouteKind, TunnelTuning,
} from "./types.js";
import {
  at, boolean, directory, duration, fmtBytes, fmtMs, hostname, hostnamePattern, integer, list, mapping, oneOf, required, size,
  string, type Obj,
} from "./values.js";

export { DEFAULT_ENDPOINT_HEARTBEAT_INTERVAL_MS, DEFAULT_ENDPOINT_TIMEOUT_MS } from "./endpoint.js";
export { DEFAULT_HUB_STORE, DEFAULT_STORE_BUSY_TIMEOUT_MS, DEFAULT_STORE_CONNECT_TIMEOUT_MS, DEFAULT_STORE_POOL_SIZE } from "./store.js";

// Defaults. Each one is stated in the doc comment of its field in ./types.ts
// (test/config.test.ts checks that they agree).
export const DEFAULT_HUB_DATA_DIR = "/var/lib/capsul/hub";
export const DEFAULT_HUB_TLS_LISTEN = "0.0.0.0:443";
export const DEFAULT_HUB_HTTP_LISTEN = "0.0.0.0:80";
export const DEFAULT_HUB_TUNNEL_LISTEN = "0.0.0.0:7443";
export const DEFAULT_HUB_TCP_HOST = "0.0.0.0";
export const DEFAULT_HUB_ADMIN_LISTEN = "127.0.0.1:7444";
export const DEFAULT_COG_ADMIN_LISTEN = "127.0.0.1:7445";
// hub.admin and cog.admin. lib/adminhttp.ts and gateway/statuspage.ts export the same values as
// ADMIN_REQUEST_TIMEOUT_MS, ADMIN_MAX_CONNECTIONS, ADMIN_MAX_REQUEST_BODY_BYTES and
// STATUS_REFRESH_MS (test/admin.test.ts checks that they agree).
export const DEFAULT_ADMIN_REQUEST_TIMEOUT_MS = 10_000;
export const DEFAULT_ADMIN_MAX_CONNECTIONS = 64;
export const DEFAULT_ADMIN_MAX_REQUEST_BODY_BYTES = 16 * 1024;
export const DEFAULT_STATUS_REFRESH_MS = 5_000;
export const DEFAULT_ADMIN_COGS_CACHE_MS = 2_000;
export const DEFAULT_HUB_DEFAULT_GRANTS = true;
export const DEFAULT_TCP_PORTS_PER_COG = 8;
export const DEFAULT_INVITE_TTL_MS = 24 * 3_600_000;
export const DEFAULT_COG_CERT_TTL_MS = 90 * 86_400_000;
export const DEFAULT_CLIENT_HELLO_TIMEOUT_MS = 5_000;
/** 16 KiB of handshake message (RFC 8446 §5.1 record limit) + 5 record headers of 5 bytes. */
export const DEFAULT_CLIENT_HELLO_MAX_BYTES = 16 * 1024 + 5 * 5;
export const DEFAULT_HTTP_HEADER_TIMEOUT_MS = 5_000;
export const DEFAULT_HTTP_HEADER_MAX_BYTES = 16 * 1024;
export const DEFAULT_GRACE_MS = 5_000;
export const DEFAULT_MAX_VISITORS = 20_000;
/**
 * A flood of 2,000 connections opened at once overflowed a backlog of 1,024 (Linux counted
 * ~800 ListenOverflows per flood in test/silent-flood.test.ts): every source's connection
 * that arrived then waited a second for its retry. 4096 is somaxconn's default since Linux 5.4.
 */
export const DEFAULT_LISTEN_BACKLOG = 4096;
/** Catches a slip of the finger: the kernel caps the backlog at net.core.somaxconn anyway. */
export const MAX_LISTEN_BACKLOG = 65_535;
/**
 * A browser opens ~6 connections per site; 256 leaves room for a few dozen people behind one
 * NAT while one machine can take at most 1.3% of max_visitors (78 sources to take them all).
 */
export const DEFAULT_MAX_VISITORS_PER_IP = 256;
/** A real client sends its ClientHello in its first round trip; 64 in flight from one source is a busy NAT. */
export const DEFAULT_MAX_UNPEEKED_PER_IP = 64;
/**
 * 10 minutes, as cloud load balancers do (GCP 10m, AWS NLB 350s): frees the slots of peers
 * that vanished and of stalled readers. Interactive SSH through a tcp route needs
 * ServerAliveInterval below it.
 */
export const DEFAULT_IDLE_TIMEOUT_MS = 10 * 60_000;
/**
 * 512 MiB: 66 streams with a full 8 MiB window (at 50 ms RTT, 10 GB/s together); the arithmetic
 * of the worst case is in capsul.yaml.example. gateway/budget.ts enforces it.
 */
export const DEFAULT_BUFFER_BUDGET_BYTES = 512 * 1024 * 1024;
/** 128 MiB per cog: 16 full 8 MiB windows (bench "bulk 16x" keeps them), a quarter of the hub's. */
export const DEFAULT_COG_BUFFER_BUDGET_BYTES = 128 * 1024 * 1024;
/** A sweep reads 4 lengths per visitor (0.47 ms measured for 20,000); 250 ms bounds what arrives before it cuts. */
export const DEFAULT_BUFFER_CHECK_INTERVAL_MS = 250;
export const DEFAULT_REFUSAL_LOG_INTERVAL_MS = 60_000;
// hub.limits.splice_queue and cog.splice_queue. protocol/splice.ts exports the same value as
// SPLICE_MAX_QUEUED_BYTES (test/muxlimits.test.ts checks that they agree).
export const DEFAULT_SPLICE_QUEUE_BYTES = 256 * 1024;
export const DEFAULT_MAX_STREAM_WINDOW_BYTES = 8 * 1024 * 1024;
export const DEFAULT_KEEPALIVE_INTERVAL_MS = 15_000;
export const DEFAULT_KEEPALIVE_TIMEOUT_MS = 30_000;
export const DEFAULT_HANDSHAKE_TIMEOUT_MS = 10_000;
// hub.tunnel and cog.tunnel, passed to MuxSession. protocol/mux.ts exports the same values as
// MUX_DEFAULT_MAX_AUTO_WINDOW_BYTES, MUX_DEFAULT_ACCEPT_BACKLOG, MUX_DEFAULT_MAX_FRAME_PAYLOAD_BYTES,
// MUX_DEFAULT_WRITE_BATCH_MAX_BYTES and MUX_DEFAULT_CLOSE_LINGER_MS (test/muxlimits.test.ts checks
// that they agree). max_auto_window defaults to max_stream_window when that is larger, as MuxSession does.
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
/** Default of hub.tunnel.move_answer_timeout: the source's move header, then the target cog's yes or no (it answers at once). */
export const DEFAULT_MOVE_ANSWER_TIMEOUT_MS = 30_000;
/** Default of hub.tunnel.max_moves: VM moves one cog may have relayed at once, as source or target. */
export const DEFAULT_MAX_MOVES = 2;
// hub.tunnel only. gateway/tunnels.ts exports the same value as TUNNEL_LISTEN_BACKLOG
// (test/tunnel-dos.test.ts checks that they agree): 1,000 cogs redialling a restarted hub at
// once overflowed Node's default of 511 (issue 12: TcpExtListenOverflows +1665).
export const DEFAULT_TUNNEL_LISTEN_BACKLOG = 1024;
// cog.tunnel only. tunnel-client/client.ts and enroll.ts export the same values as
// WELCOME_TIMEOUT_MS, ENROLL_TIMEOUT_MS, VISITOR_HEADER_TIMEOUT_MS and VISITOR_HEADER_MAX_BYTES.
export const DEFAULT_WELCOME_TIMEOUT_MS = 15_000;
export const DEFAULT_ENROLL_TIMEOUT_MS = 20_000;
export const DEFAULT_VISITOR_HEADER_TIMEOUT_MS = 10_000;
export const DEFAULT_VISITOR_HEADER_MAX_BYTES = 4 * 1024;
export const DEFAULT_COG_DATA_DIR = "/var/lib/capsul/cog";
export const DEFAULT_PROXY_PROTOCOL: ProxyProtocol = "none";
export const DEFAULT_RECONNECT_MIN_DELAY_MS = 500;
export const DEFAULT_RECONNECT_MAX_DELAY_MS = 30_000;
export const DEFAULT_ENDPOINT_GONE_TIMEOUT_MS = 30_000;
export const DEFAULT_TARGET_DIAL_TIMEOUT_MS = 5_000;
/**
 * hub.shutdown_grace and cog.shutdown_grace: 30 s lets a page load or a small download finish
 * and stays inside systemd's default TimeoutStopSec (90 s), so a drain is never SIGKILLed.
 */
export const DEFAULT_SHUTDOWN_GRACE_MS = 30_000;
export const DEFAULT_LOG_LEVEL: CapsulConfig["log"]["level"] = "info";

/** yamux spec.md "Flow Control": every stream starts with a 256 KiB window; a smaller maximum is meaningless. */
export const MIN_STREAM_WINDOW_BYTES = 256 * 1024;
/**
 * The largest visitor header a hub sends is under 600 bytes (a 253-byte SNI or
 * Host, a 64-byte route name, two IPv6 addresses with ports, the JSON keys); a
 * smaller cap would refuse real visitors, so 1 KiB is the least allowed.
 */
export const MIN_VISITOR_HEADER_MAX_BYTES = 1024;
/**
 * Splice pauses a source once this much waits in its destination's write queue. A
 * socket read is up to 64 KiB and a TLS record 16 KiB; below one record the source
 * would be paused and resumed for nearly every chunk, so 16 KiB is the least allowed.
 */
export const MIN_SPLICE_QUEUE_BYTES = 16 * 1024;
/**
 * A buffer budget smaller than what one visitor may hold at its floor (the spec's 256 KiB
 * window plus its splice queues, protocol/splice.ts spliceHeldMaxBytes) would cut the first
 * visitor that ever stalls for a moment.
 */
export function minBufferBudgetBytes(spliceQueueBytes: number): number {
  return MIN_STREAM_WINDOW_BYTES + spliceHeldMaxBytes(spliceQueueBytes);
}
/**
 * The upper bounds MuxSession's constructor checks (protocol/mux.ts checkInt), so that a
 * value it would throw on is refused here with a message naming the key instead:
 * windows and frame lengths are u32 (spec.md §Length Field, MUX_MAX_WINDOW_BYTES);
 * counts, batch sizes and timer delays are at most 2^31-1 (Node's largest timer delay).
 */
export const MAX_WINDOW_BYTES = 0xffff_ffff;
export const MAX_MUX_INT = 2 ** 31 - 1;
/** The status page reloads with <meta http-equiv="refresh" content="SECONDS">: whole seconds, at least one. */
export const MIN_STATUS_REFRESH_MS = 1_000;

const ROUTE_KINDS: readonly RouteKind[] = ["tls", "http", "tcp"];
const PROXY_PROTOCOLS: readonly ProxyProtocol[] = ["none", "v1", "v2"];
const LOG_LEVELS: readonly CapsulConfig["log"]["level"][] = ["debug", "info", "warn", "error"];

// The keys each mapping may hold, in the order capsul.yaml.example documents them.
const TOP_KEYS = ["hub", "cog", "log"] as const;
const HUB_KEYS = ["data_dir", ...HUB_STORE_KEYS, "domain", "listen", "public_tunnel_address", "cogs", "default_grants",
  "default_tcp_ports_per_cog", "invite_ttl", "cog_cert_ttl", "domains", "limits", "tunnel", "admin", "shutdown_grace", "endpoint"] as const;
const LISTEN_KEYS = ["tls", "http", "tunnel", "tcp_host", "tcp_ports", "admin"] as const;
const ADMIN_KEYS = ["request_timeout", "max_connections"] as const;
const HUB_ADMIN_KEYS = [...ADMIN_KEYS, "max_request_body", "status_refresh", "cogs_cache"] as const;
const COG_LISTEN_KEYS = ["admin"] as const;
const GRANT_KEYS = ["name", "hostnames", "tcp_ports", "limits"] as const;
const LIMIT_KEYS = ["client_hello_timeout", "client_hello_max_bytes", "http_header_timeout",
  "http_header_max_bytes", "grace", "max_visitors", "listen_backlog", "max_visitors_per_ip", "max_unpeeked_per_ip", "idle_timeout",
  "splice_queue", "buffer_budget", "cog_buffer_budget", "buffer_check_interval", "refusal_log_interval", ...HUB_QUOTA_KEYS] as const;
const TUNNEL_KEYS = ["max_stream_window", "max_auto_window", "keepalive_interval", "keepalive_timeout", "handshake_timeout",
  "max_frame_payload", "write_batch", "close_linger", "max_queued_control_frames"] as const;
const HUB_TUNNEL_KEYS = [...TUNNEL_KEYS, "control_hello_timeout", "revocation_poll_interval", "max_unauthenticated",
  "max_unauthenticated_per_ip", "control_rate", "control_burst", "renew_min_interval", "listen_backlog", "move_answer_timeout", "max_moves"] as const;
const COG_TUNNEL_KEYS = [...TUNNEL_KEYS, "welcome_timeout", "enroll_timeout", "visitor_header_timeout",
  "visitor_header_max_bytes", "accept_backlog"] as const;
const COG_KEYS = ["data_dir", "hub", "routes", "reconnect", "target_dial_timeout", "splice_queue", "tunnel", "listen", "admin",
  "provisioner", "acme", "terminate", "shutdown_grace"] as const;
const ROUTE_KEYS = ["name", "kind", "hostname", "port", "target", "proxy_protocol", ...ROUTE_TLS_KEYS] as const;
const RECONNECT_KEYS = ["min_delay", "max_delay", "endpoint_gone_timeout"] as const;
const LOG_KEYS = ["level"] as const;

// ---- sections -------------------------------------------------------------

/** The keys hub.tunnel and cog.tunnel share; `m` was checked against the section's own key list. */
function parseTunnelTuning(m: Obj, path: string): TunnelTuning {
  const maxStreamWindowBytes = size(m.max_stream_window, at(path, "max_stream_window"), DEFAULT_MAX_STREAM_WINDOW_BYTES,
    MIN_STREAM_WINDOW_BYTES, MAX_WINDOW_BYTES);
  const t: TunnelTuning = {
    maxStreamWindowBytes,
    keepaliveIntervalMs: duration(m.keepalive_interval, at(path, "keepalive_interval"), DEFAULT_KEEPALIVE_INTERVAL_MS, 1, MAX_MUX_INT),
    keepaliveTimeoutMs: duration(m.keepalive_timeout, at(path, "keepalive_timeout"), DEFAULT_KEEPALIVE_TIMEOUT_MS, 1, MAX_MUX_INT),
    handshakeTimeoutMs: duration(m.handshake_timeout, at(path, "handshake_timeout"), DEFAULT_HANDSHAKE_TIMEOUT_MS, 1),
    // The ceiling is checked against max_stream_window below, so its own minimum is 0 here.
    maxAutoWindowBytes: size(m.max_auto_window, at(path, "max_auto_window"),
      Math.max(DEFAULT_MAX_AUTO_WINDOW_BYTES, maxStreamWindowBytes), 0, MAX_WINDOW_BYTES),
    maxFramePayloadBytes: size(m.max_frame_payload, at(path, "max_frame_payload"), DEFAULT_MAX_FRAME_PAYLOAD_BYTES, 1, MAX_WINDOW_BYTES),
    writeBatchMaxBytes: size(m.write_batch, at(path, "write_batch"), DEFAULT_WRITE_BATCH_MAX_BYTES, 1, MAX_MUX_INT),
    closeLingerMs: duration(m.close_linger, at(path, "close_linger"), DEFAULT_CLOSE_LINGER_MS, 0, MAX_MUX_INT),
    maxQueuedControlFrames: integer(m.max_queued_control_frames, at(path, "max_queued_control_frames"), DEFAULT_MAX_QUEUED_CONTROL_FRAMES, 1, MAX_MUX_INT),
  };
  // A timeout no longer than the interval declares a healthy idle peer dead before its ping is due.
  if (t.keepaliveTimeoutMs <= t.keepaliveIntervalMs) {
    throw new ConfigError(`must be greater than keepalive_interval (${fmtMs(t.keepaliveIntervalMs)})`, at(path, "keepalive_timeout"));
  }
  // Auto-tuning only ever grows a window: a ceiling below the starting window is a contradiction.
  if (t.maxAutoWindowBytes < t.maxStreamWindowBytes) {
    throw new ConfigError(`must be at least max_stream_window (${fmtBytes(t.maxStreamWindowBytes)}), got ${fmtBytes(t.maxAutoWindowBytes)}`,
      at(path, "max_auto_window"));
  }
  return t;
}

function parseHubTunnel(value: unknown, path: string): HubTunnelTuning {
  const m = value == null ? {} : mapping(value, path, HUB_TUNNEL_KEYS);
  const maxUnauthenticated = integer(m.max_unauthenticated, at(path, "max_unauthenticated"), DEFAULT_MAX_UNAUTHENTICATED, 1);
  return {
    ...parseTunnelTuning(m, path),
    controlHelloTimeoutMs: duration(m.control_hello_timeout, at(path, "control_hello_timeout"), DEFAULT_CONTROL_HELLO_TIMEOUT_MS, 1),
    revocationPollIntervalMs: duration(m.revocation_poll_interval, at(path, "revocation_poll_interval"), DEFAULT_REVOCATION_POLL_INTERVAL_MS, 1),
    maxUnauthenticated,
    // A per-source cap above the overall one could never be reached: surely a mix-up.
    maxUnauthenticatedPerIp: integer(m.max_unauthenticated_per_ip, at(path, "max_unauthenticated_per_ip"),
      Math.min(DEFAULT_MAX_UNAUTHENTICATED_PER_IP, maxUnauthenticated), 1, maxUnauthenticated),
    controlRatePerSec: integer(m.control_rate, at(path, "control_rate"), DEFAULT_CONTROL_RATE_PER_SEC, 1),
    controlBurst: integer(m.control_burst, at(path, "control_burst"), DEFAULT_CONTROL_BURST, 1),
    renewMinIntervalMs: duration(m.renew_min_interval, at(path, "renew_min_interval"), DEFAULT_RENEW_MIN_INTERVAL_MS, 0),
    moveAnswerTimeoutMs: duration(m.move_answer_timeout, at(path, "move_answer_timeout"), DEFAULT_MOVE_ANSWER_TIMEOUT_MS, 1),
    maxMoves: integer(m.max_moves, at(path, "max_moves"), DEFAULT_MAX_MOVES, 0),
    listenBacklog: integer(m.listen_backlog, at(path, "listen_backlog"), DEFAULT_TUNNEL_LISTEN_BACKLOG, 1, MAX_LISTEN_BACKLOG),
  };
}

function parseCogTunnel(value: unknown, path: string): CogTunnelTuning {
  const m = value == null ? {} : mapping(value, path, COG_TUNNEL_KEYS);
  return {
    ...parseTunnelTuning(m, path),
    welcomeTimeoutMs: duration(m.welcome_timeout, at(path, "welcome_timeout"), DEFAULT_WELCOME_TIMEOUT_MS, 1),
    enrollTimeoutMs: duration(m.enroll_timeout, at(path, "enroll_timeout"), DEFAULT_ENROLL_TIMEOUT_MS, 1),
    visitorHeaderTimeoutMs: duration(m.visitor_header_timeout, at(path, "visitor_header_timeout"), DEFAULT_VISITOR_HEADER_TIMEOUT_MS, 1),
    visitorHeaderMaxBytes: size(m.visitor_header_max_bytes, at(path, "visitor_header_max_bytes"), DEFAULT_VISITOR_HEADER_MAX_BYTES, MIN_VISITOR_HEADER_MAX_BYTES),
    acceptBacklog: integer(m.accept_backlog, at(path, "accept_backlog"), DEFAULT_ACCEPT_BACKLOG, 0, MAX_MUX_INT),
  };
}

function parseAdminLimits(m: Obj, path: string): AdminLimits {
  return {
    requestTimeoutMs: duration(m.request_timeout, at(path, "request_timeout"), DEFAULT_ADMIN_REQUEST_TIMEOUT_MS, 1, MAX_MUX_INT),
    maxConnections: integer(m.max_connections, at(path, "max_connections"), DEFAULT_ADMIN_MAX_CONNECTIONS, 1),
  };
}

function parseHubAdmin(value: unknown, path: string): HubAdmin {
  const m = value == null ? {} : mapping(value, path, HUB_ADMIN_KEYS);
  const refreshPath = at(path, "status_refresh");
  const statusRefreshMs = duration(m.status_refresh, refreshPath, DEFAULT_STATUS_REFRESH_MS, 1, MAX_MUX_INT);
  if (statusRefreshMs < MIN_STATUS_REFRESH_MS || statusRefreshMs % 1000 !== 0) {
    throw new ConfigError(`must be whole seconds, at least 1s (the page reloads with <meta http-equiv="refresh">), got ${fmtMs(statusRefreshMs)}`, refreshPath);
  }
  return {
    ...parseAdminLimits(m, path),
    maxRequestBodyBytes: size(m.max_request_body, at(path, "max_request_body"), DEFAULT_ADMIN_MAX_REQUEST_BODY_BYTES, 1),
    statusRefreshMs,
    cogsCacheMs: duration(m.cogs_cache, at(path, "cogs_cache"), DEFAULT_ADMIN_COGS_CACHE_MS, 0, MAX_MUX_INT),
  };
}

function parseLimits(value: unknown, path: string): HubLimits {
  const m = value == null ? {} : mapping(value, path, LIMIT_KEYS);
  const maxVisitors = integer(m.max_visitors, at(path, "max_visitors"), DEFAULT_MAX_VISITORS, 1);
  // Each cap is at most the one it narrows (a larger value could never apply); an explicit
  // one above it is refused, the default is lowered with it.
  const maxVisitorsPerIp = integer(m.max_visitors_per_ip, at(path, "max_visitors_per_ip"),
    Math.min(DEFAULT_MAX_VISITORS_PER_IP, maxVisitors), 1, maxVisitors);
  const maxUnpeekedPerIp = integer(m.max_unpeeked_per_ip, at(path, "max_unpeeked_per_ip"),
    Math.min(DEFAULT_MAX_UNPEEKED_PER_IP, maxVisitorsPerIp), 1, maxVisitorsPerIp);
  const spliceQueueBytes = size(m.splice_queue, at(path, "splice_queue"), DEFAULT_SPLICE_QUEUE_BYTES, MIN_SPLICE_QUEUE_BYTES);
  const minBudget = minBufferBudgetBytes(spliceQueueBytes);
  const budgetPath = at(path, "buffer_budget");
  const bufferBudgetBytes = size(m.buffer_budget, budgetPath, Math.max(DEFAULT_BUFFER_BUDGET_BYTES, minBudget), 0);
  if (bufferBudgetBytes < minBudget) {
    throw new ConfigError(`must be at least ${fmtBytes(minBudget)} (one visitor's 256KiB window floor and its splice queues), got ${fmtBytes(bufferBudgetBytes)}`, budgetPath);
  }
  const cogPath = at(path, "cog_buffer_budget");
  const cogBufferBudgetBytes = size(m.cog_buffer_budget, cogPath,
    Math.min(Math.max(DEFAULT_COG_BUFFER_BUDGET_BYTES, minBudget), bufferBudgetBytes), 0);
  if (cogBufferBudgetBytes < minBudget) {
    throw new ConfigError(`must be at least ${fmtBytes(minBudget)} (one visitor's 256KiB window floor and its splice queues), got ${fmtBytes(cogBufferBudgetBytes)}`, cogPath);
  }
  if (cogBufferBudgetBytes > bufferBudgetBytes) {
    throw new ConfigError(`must be at most buffer_budget (${fmtBytes(bufferBudgetBytes)}), got ${fmtBytes(cogBufferBudgetBytes)}`, cogPath);
  }
  const quotas = parseHubQuotas(m, path, maxVisitors);
  return {
    clientHelloTimeoutMs: duration(m.client_hello_timeout, at(path, "client_hello_timeout"), DEFAULT_CLIENT_HELLO_TIMEOUT_MS, 1),
    clientHelloMaxBytes: size(m.client_hello_max_bytes, at(path, "client_hello_max_bytes"), DEFAULT_CLIENT_HELLO_MAX_BYTES, 1),
    httpHeaderTimeoutMs: duration(m.http_header_timeout, at(path, "http_header_timeout"), DEFAULT_HTTP_HEADER_TIMEOUT_MS, 1),
    httpHeaderMaxBytes: size(m.http_header_max_bytes, at(path, "http_header_max_bytes"), DEFAULT_HTTP_HEADER_MAX_BYTES, 1),
    graceMs: duration(m.grace, at(path, "grace"), DEFAULT_GRACE_MS, 0),
    maxVisitors,
    listenBacklog: integer(m.listen_backlog, at(path, "listen_backlog"), DEFAULT_LISTEN_BACKLOG, 1, MAX_LISTEN_BACKLOG),
    maxVisitorsPerIp,
    maxUnpeekedPerIp,
    // Node turns a timer delay above 2^31-1 ms into 1 ms: every visitor would be cut at once.
    idleTimeoutMs: duration(m.idle_timeout, at(path, "idle_timeout"), DEFAULT_IDLE_TIMEOUT_MS, 0, MAX_MUX_INT),
    spliceQueueBytes,
    bufferBudgetBytes,
    cogBufferBudgetBytes,
    bufferCheckIntervalMs: duration(m.buffer_check_interval, at(path, "buffer_check_interval"), DEFAULT_BUFFER_CHECK_INTERVAL_MS, 1, MAX_MUX_INT),
    refusalLogIntervalMs: duration(m.refusal_log_interval, at(path, "refusal_log_interval"), DEFAULT_REFUSAL_LOG_INTERVAL_MS, 0),
    maxStreamsPerCog: quotas.maxStreams,
    maxConnectionsPerRoute: quotas.maxConnectionsPerRoute,
    cogBandwidthBytesPerSec: quotas.bandwidthBytesPerSec,
    cogBandwidthBurstBytes: quotas.bandwidthBurstBytes,
  };
}

/** A listener that may be turned off with null, false or "off". */
function optionalListener(value: unknown, path: string, def: string): HostPort | null {
  if (value === undefined) return parseHostPort(def, path, { allowPortZero: true });
  if (value === null || value === false || value === "off") return null;
  return parseHostPort(value, path, { allowPortZero: true });
}

function parseHubListen(value: unknown, path: string): HubConfig["listen"] {
  const m = value == null ? {} : mapping(value, path, LISTEN_KEYS);
  const tunnelPath = at(path, "tunnel");
  if (m.tunnel === false || m.tunnel === "off") throw new ConfigError("cannot be disabled: cogs reach the hub through it", tunnelPath);
  const tcpHostPath = at(path, "tcp_host");
  const tcpHostText = string(m.tcp_host, tcpHostPath, DEFAULT_HUB_TCP_HOST);
  const tcpHost = isIP(tcpHostText) ? tcpHostText.toLowerCase() : normalizeHostname(tcpHostText);
  if (tcpHost === null) throw new ConfigError(`not an IP address or hostname: ${JSON.stringify(tcpHostText)}`, tcpHostPath);
  const poolPath = at(path, "tcp_ports");
  const tcpPorts = list(m.tcp_ports, poolPath).map((r, i) => parsePortRange(r, `${poolPath}[${i}]`));
  tcpPorts.forEach((r, j) => {
    const i = tcpPorts.findIndex((other, k) => k < j && rangesOverlap(other, r));
    if (i >= 0) throw new ConfigError(`${formatPortRange(r)} overlaps ${poolPath}[${i}] (${formatPortRange(tcpPorts[i]!)})`, `${poolPath}[${j}]`);
  });
  return {
    tls: optionalListener(m.tls, at(path, "tls"), DEFAULT_HUB_TLS_LISTEN),
    http: optionalListener(m.http, at(path, "http"), DEFAULT_HUB_HTTP_LISTEN),
    tunnel: parseHostPort(m.tunnel ?? DEFAULT_HUB_TUNNEL_LISTEN, tunnelPath, { allowPortZero: true }),
    tcpHost,
    tcpPorts,
    admin: optionalListener(m.admin, at(path, "admin"), DEFAULT_HUB_ADMIN_LISTEN),
  };
}

function parseGrants(
  value: unknown, path: string,
  hub: { domain: string; defaultGrants: boolean; pool: PortRange[]; limits: CogLimits; maxVisitors: number },
): HubCogGrant[] {
  const grants = list(value, path).map((item, i): HubCogGrant => {
    const p = `${path}[${i}]`;
    const m = mapping(item, p, GRANT_KEYS);
    const name = string(m.name, `${p}.name`);
    if (!COG_NAME_RE.test(name)) {
      throw new ConfigError(`not a cog name (a-z first, then a-z, 0-9 or "-", at most 39): ${JSON.stringify(name)}`, `${p}.name`);
    }
    const hostnames = list(m.hostnames, `${p}.hostnames`).map((h, k) => hostnamePattern(h, `${p}.hostnames[${k}]`));
    const tcpPorts = list(m.tcp_ports, `${p}.tcp_ports`).map((r, k) => {
      const range = parsePortRange(r, `${p}.tcp_ports[${k}]`);
      if (!rangeInside(range, hub.pool)) {
        throw new ConfigError(`${formatPortRange(range)} is not inside the pool hub.listen.tcp_ports`, `${p}.tcp_ports[${k}]`);
      }
      return range;
    });
    return { name, hostnames, tcpPorts, limits: parseCogLimits(m.limits, `${p}.limits`, hub.limits, hub.maxVisitors) };
  });

  // Pairwise checks between different cogs; each error is reported at the later entry.
  grants.forEach((g, j) => {
    const dup = grants.findIndex((other, i) => i < j && other.name === g.name);
    if (dup >= 0) throw new ConfigError(`duplicate cog name ${JSON.stringify(g.name)} (also ${path}[${dup}])`, `${path}[${j}].name`);
  });
  grants.forEach((g, j) => {
    g.hostnames.forEach((pattern, k) => {
      grants.forEach((other, i) => {
        if (i === j) return;
        if (i < j) {
          const n = other.hostnames.findIndex((o) => patternsOverlap(o, pattern));
          if (n >= 0) {
            throw new ConfigError(`${JSON.stringify(pattern)} overlaps ${path}[${i}].hostnames[${n}] (${JSON.stringify(other.hostnames[n])})`, `${path}[${j}].hostnames[${k}]`);
          }
        }
        // The implicit "<cog>.<domain>" and "*.<cog>.<domain>" grants of every listed cog count too.
        if (hub.defaultGrants) {
          const implicit = [`${other.name}.${hub.domain}`, `*.${other.name}.${hub.domain}`].find((d) => patternsOverlap(d, pattern));
          if (implicit) {
            throw new ConfigError(`${JSON.stringify(pattern)} overlaps the default grant ${JSON.stringify(implicit)} of ${path}[${i}] (set hub.default_grants: false to allow it)`, `${path}[${j}].hostnames[${k}]`);
          }
        }
      });
    });
    g.tcpPorts.forEach((range, k) => {
      for (let i = 0; i < j; i++) {
        const n = grants[i]!.tcpPorts.findIndex((o) => rangesOverlap(o, range));
        if (n >= 0) {
          throw new ConfigError(`${formatPortRange(range)} overlaps ${path}[${i}].tcp_ports[${n}] (${formatPortRange(grants[i]!.tcpPorts[n]!)})`, `${path}[${j}].tcp_ports[${k}]`);
        }
      }
    });
  });
  return grants;
}

function parseHub(value: unknown, path: string, baseDir: string): HubConfig {
  const m = mapping(value, path, HUB_KEYS);
  const dataDir = directory(m.data_dir, at(path, "data_dir"), DEFAULT_HUB_DATA_DIR, baseDir);
  const domain = hostname(m.domain, at(path, "domain"));
  const listen = parseHubListen(m.listen, at(path, "listen"));
  const publicPath = at(path, "public_tunnel_address");
  const publicTunnelAddress = m.public_tunnel_address == null
    ? formatHostPort({ host: domain, port: listen.tunnel.port })
    : formatHostPort(parseHostPort(m.public_tunnel_address, publicPath));
  const defaultGrants = boolean(m.default_grants, at(path, "default_grants"), DEFAULT_HUB_DEFAULT_GRANTS);
  const limits = parseLimits(m.limits, at(path, "limits"));
  return {
    dataDir,
    store: parseHubStore(m, path, baseDir),
    domain,
    listen,
    publicTunnelAddress,
    cogs: parseGrants(m.cogs, at(path, "cogs"), {
      domain, defaultGrants, pool: listen.tcpPorts, limits: hubCogLimits(limits), maxVisitors: limits.maxVisitors,
    }),
    defaultGrants,
    defaultTcpPortsPerCog: integer(m.default_tcp_ports_per_cog, at(path, "default_tcp_ports_per_cog"), DEFAULT_TCP_PORTS_PER_COG, 0),
    inviteTtlMs: duration(m.invite_ttl, at(path, "invite_ttl"), DEFAULT_INVITE_TTL_MS, 1),
    cogCertTtlMs: duration(m.cog_cert_ttl, at(path, "cog_cert_ttl"), DEFAULT_COG_CERT_TTL_MS, 1),
    domains: parseDomains(m.domains, at(path, "domains")),
    limits,
    tunnel: parseHubTunnel(m.tunnel, at(path, "tunnel")),
    admin: parseHubAdmin(m.admin, at(path, "admin")),
    shutdownGraceMs: duration(m.shutdown_grace, at(path, "shutdown_grace"), DEFAULT_SHUTDOWN_GRACE_MS, 0, MAX_MUX_INT),
    endpoint: parseHubEndpoint(m.endpoint, at(path, "endpoint"), publicTunnelAddress, domain),
  };
}

function parseRoutes(value: unknown, path: string): CogRoute[] {
  const routes = list(value, path).map((item, i): CogRoute => {
    const p = `${path}[${i}]`;
    const m = mapping(item, p, ROUTE_KEYS);
    const name = string(m.name, `${p}.name`);
    if (!COG_NAME_RE.test(name)) {
      throw new ConfigError(`not a route name (a-z first, then a-z, 0-9 or "-", at most 39): ${JSON.stringify(name)}`, `${p}.name`);
    }
    const kind = oneOf(m.kind, `${p}.kind`, ROUTE_KINDS);
    const route: CogRoute = {
      name,
      kind,
      target: parseHostPort(m.target ?? required(`${p}.target`), `${p}.target`),
      proxyProtocol: oneOf(m.proxy_protocol, `${p}.proxy_protocol`, PROXY_PROTOCOLS, DEFAULT_PROXY_PROTOCOL),
    };
    if (kind === "tcp") {
      if (m.hostname != null) throw new ConfigError("not allowed for tcp routes (they are matched by port)", `${p}.hostname`);
      if (m.port != null) route.port = integer(m.port, `${p}.port`, undefined, 1, 65535);
    } else {
      if (m.port != null) throw new ConfigError(`not allowed for ${kind} routes (only tcp routes have a port)`, `${p}.port`);
      if (m.hostname == null) throw new ConfigError(`required for ${kind} routes`, `${p}.hostname`);
      route.hostname = hostnamePattern(m.hostname, `${p}.hostname`);
    }
    parseRouteTermination(m, p, route);
    return route;
  });
  routes.forEach((r, j) => {
    for (let i = 0; i < j; i++) {
      const o = routes[i]!;
      if (o.name === r.name) throw new ConfigError(`duplicate route name ${JSON.stringify(r.name)} (also ${path}[${i}])`, `${path}[${j}].name`);
      // tls and http routes for one name are normal (two listeners); two of the same kind are ambiguous.
      if (r.hostname !== undefined && o.kind === r.kind && o.hostname === r.hostname) {
        throw new ConfigError(`${r.kind} route for ${JSON.stringify(r.hostname)} already defined by ${path}[${i}]`, `${path}[${j}].hostname`);
      }
      if (r.port !== undefined && o.port === r.port) {
        throw new ConfigError(`port ${r.port} already wanted by ${path}[${i}]`, `${path}[${j}].port`);
      }
    }
  });
  checkTerminatedHostnames(routes, path);
  return routes;
}

/** Absent, null or false: no provisioner. Its keys and defaults belong to provisioner/config.ts. */
function parseProvisioner(value: unknown, path: string, baseDir: string): ProvisionerConfig | null {
  if (value === undefined || value === null || value === false) return null;
  return parseProvisionerConfig(value, path, baseDir);
}

function parseCog(value: unknown, path: string, baseDir: string): CogConfig {
  const m = mapping(value, path, COG_KEYS);
  const reconnectPath = at(path, "reconnect");
  const rc = m.reconnect == null ? {} : mapping(m.reconnect, reconnectPath, RECONNECT_KEYS);
  const minDelayMs = duration(rc.min_delay, at(reconnectPath, "min_delay"), DEFAULT_RECONNECT_MIN_DELAY_MS, 1);
  const maxDelayMs = duration(rc.max_delay, at(reconnectPath, "max_delay"), DEFAULT_RECONNECT_MAX_DELAY_MS, 1);
  if (minDelayMs > maxDelayMs) throw new ConfigError(`must not exceed max_delay (${fmtMs(maxDelayMs)})`, at(reconnectPath, "min_delay"));
  const provisioner = parseProvisioner(m.provisioner, at(path, "provisioner"), baseDir);
  const listenPath = at(path, "listen");
  const listen = m.listen == null ? {} : mapping(m.listen, listenPath, COG_LISTEN_KEYS);
  const adminPath = at(path, "admin");
  // With a provisioner, its API listener serves /healthz and /metrics; a second listener is opt-in.
  const admin = provisioner && listen.admin === undefined ? null : optionalListener(listen.admin, at(listenPath, "admin"), DEFAULT_COG_ADMIN_LISTEN);
  return {
    dataDir: directory(m.data_dir, at(path, "data_dir"), DEFAULT_COG_DATA_DIR, baseDir),
    hub: m.hub == null ? null : parseHostPort(m.hub, at(path, "hub")),
    routes: parseRoutes(m.routes, at(path, "routes")),
    reconnect: {
      minDelayMs, maxDelayMs,
      endpointGoneTimeoutMs: duration(rc.endpoint_gone_timeout, at(reconnectPath, "endpoint_gone_timeout"), DEFAULT_ENDPOINT_GONE_TIMEOUT_MS, 1),
    },
    targetDialTimeoutMs: duration(m.target_dial_timeout, at(path, "target_dial_timeout"), DEFAULT_TARGET_DIAL_TIMEOUT_MS, 1),
    spliceQueueBytes: size(m.splice_queue, at(path, "splice_queue"), DEFAULT_SPLICE_QUEUE_BYTES, MIN_SPLICE_QUEUE_BYTES),
    tunnel: parseCogTunnel(m.tunnel, at(path, "tunnel")),
    listen: { admin },
    admin: parseAdminLimits(m.admin == null ? {} : mapping(m.admin, adminPath, ADMIN_KEYS), adminPath),
    provisioner,
    acme: parseAcme(m.acme, at(path, "acme"), baseDir),
    terminate: parseTerminate(m.terminate, at(path, "terminate")),
    shutdownGraceMs: duration(m.shutdown_grace, at(path, "shutdown_grace"), DEFAULT_SHUTDOWN_GRACE_MS, 0, MAX_MUX_INT),
  };
}

/**
 * Listeners of one machine must not take the same port: the process would
 * start, then fail on the second bind. Port 0 (ephemeral) never collides.
 */
function checkListeners(hub: HubConfig | null, cog: CogConfig | null): void {
  const listeners: [string, HostPort][] = [];
  if (hub?.listen.tls) listeners.push(["hub.listen.tls", hub.listen.tls]);
  if (hub?.listen.http) listeners.push(["hub.listen.http", hub.listen.http]);
  if (hub) listeners.push(["hub.listen.tunnel", hub.listen.tunnel]);
  if (hub?.listen.admin) listeners.push(["hub.listen.admin", hub.listen.admin]);
  if (cog?.listen.admin) listeners.push(["cog.listen.admin", cog.listen.admin]);
  if (cog?.provisioner) listeners.push(["cog.provisioner.listen", cog.provisioner.listen]);
  const sameHost = (a: string, b: string) => a === b || isWildcardAddress(a) || isWildcardAddress(b);
  listeners.forEach(([path, hp], j) => {
    if (hp.port === 0) return;
    const clash = listeners.find(([, o], i) => i < j && o.port === hp.port && sameHost(o.host, hp.host));
    if (clash) throw new ConfigError(`port ${hp.port} collides with ${clash[0]} (${formatHostPort(clash[1])})`, path);
  });
  hub?.listen.tcpPorts.forEach((r, i) => {
    const clash = listeners.find(([, o]) => o.port >= r.from && o.port <= r.to && sameHost(o.host, hub.listen.tcpHost));
    if (clash) {
      throw new ConfigError(`${formatPortRange(r)} includes port ${clash[1].port} of ${clash[0]}`, `hub.listen.tcp_ports[${i}]`);
    }
  });
}

/** Recurses even into already-frozen objects: a shallow Object.freeze from a section parser is not enough. */
function deepFreeze<T>(value: T, seen = new WeakSet<object>()): T {
  if (value !== null && typeof value === "object" && !seen.has(value)) {
    seen.add(value);
    for (const v of Object.values(value)) deepFreeze(v, seen);
    Object.freeze(value);
  }
  return value;
}

// ---- entry points ---------------------------------------------------------

/**
 * Validates parsed YAML (`unknown`) and returns the frozen, fully-defaulted
 * config. Relative data_dir values are resolved against `baseDir` (default: the
 * working directory; loadConfigFile passes the file's directory).
 * Throws ConfigError whose message starts with the key path.
 */
export function parseConfig(raw: unknown, opts: { baseDir?: string } = {}): CapsulConfig {
  const baseDir = resolve(opts.baseDir ?? process.cwd());
  if (raw === undefined || raw === null) throw new ConfigError("the configuration is empty (it needs a hub: or cog: section)");
  const top = mapping(raw, "", TOP_KEYS);
  // hub: / cog: left empty (null) mean "not configured", like an absent key.
  const hub = top.hub == null ? null : parseHub(top.hub, "hub", baseDir);
  const cog = top.cog == null ? null : parseCog(top.cog, "cog", baseDir);
  const logMap = top.log == null ? {} : mapping(top.log, "log", LOG_KEYS);
  const log = { level: oneOf(logMap.level, "log.level", LOG_LEVELS, DEFAULT_LOG_LEVEL) };
  if (hub === null && cog === null) throw new ConfigError("neither hub: nor cog: is configured (at least one is required)");
  checkListeners(hub, cog);
  return deepFreeze({ hub, cog, log });
}

/**
 * Reads and parses a capsul.yaml. Every error is a one-line ConfigError that
 * starts with the file name: "FILE: hub.limts: unknown key (did you mean "limits"?)".
 */
export function loadConfigFile(file: string): CapsulConfig {
  let text: string;
  try {
    text = readFileSync(file, "utf8");
  } catch (err) {
    const code = (err as NodeJS.ErrnoException).code;
    const why = code === "ENOENT" ? "no such file" : code === "EACCES" ? "permission denied"
      : code === "EISDIR" ? "is a directory" : (err as Error).message;
    throw new ConfigError(`cannot read config: ${why}`, file, { cause: err });
  }
  const doc = parseDocument(text, { prettyErrors: true, uniqueKeys: true });
  const yamlError = doc.errors[0];
  if (yamlError) {
    // yaml's message is "<reason> at line L, column C:\n\n<excerpt>"; keep the first line only.
    const pos = yamlError.linePos?.[0];
    const reason = yamlError.message.split("\n")[0]!.replace(/ at line \d+, column \d+:?$/, "");
    const where = pos ? ` at line ${pos.line}, column ${pos.col}` : "";
    throw new ConfigError(`YAML syntax error${where}: ${reason}`, file, { cause: yamlError });
  }
  let raw: unknown;
  try {
    // maxAliasCount bounds "billion laughs" alias expansion.
    raw = doc.toJS({ maxAliasCount: 100 });
  } catch (err) {
    throw new ConfigError(`YAML error: ${(err as Error).message}`, file, { cause: err });
  }
  if (raw === null || raw === undefined) throw new ConfigError("file is empty (it needs a hub: or cog: section)", file);
  try {
    return parseConfig(raw, { baseDir: dirname(resolve(file)) });
  } catch (err) {
    if (err instanceof ConfigError) throw new ConfigError(err.message, file, { cause: err });
    throw err;
  }
}
