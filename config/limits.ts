/**
 * hub.limits: deadlines, caps and budgets on the hub's visitors. Each key's default and
 * bounds are stated here once (capsul.schema.json and the runtime HubLimits come from them);
 * the per-cog keys are ./quotas.ts's.
 */
import { spliceHeldMaxBytes } from "../protocol/splice.js";
import { durationMs, fail, int, section, sizeBytes } from "./fields.js";
import { BUILT_IN_LIMITS, HUB_QUOTA_SHAPE, resolveLimits } from "./quotas.js";
import { MAX_LISTEN_BACKLOG, MAX_MUX_INT, MIN_STREAM_WINDOW_BYTES } from "./tunnel.js";
import type { HubLimits } from "./types.js";
import { fmtBytes } from "./values.js";

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

/** hub.limits.splice_queue and cog.splice_queue: one definition, two keys. */
export function spliceQueue(what: string) {
  return sizeBytes(`Bytes waiting in ${what} write queue before the other side is no longer read.`,
    { def: DEFAULT_SPLICE_QUEUE_BYTES, min: MIN_SPLICE_QUEUE_BYTES });
}

const MIN_BUDGET_WHY = "one visitor's 256KiB window floor and its splice queues";

export const hubLimitsSchema = section("Deadlines, caps and budgets on visitors.", {
  client_hello_timeout: durationMs("Deadline to receive a whole ClientHello on the TLS listener.", { def: DEFAULT_CLIENT_HELLO_TIMEOUT_MS, min: 1 }),
  client_hello_max_bytes: sizeBytes("Cap on buffered ClientHello bytes, record headers included (16KiB + 5*5 headers).",
    { def: DEFAULT_CLIENT_HELLO_MAX_BYTES, min: 1 }),
  http_header_timeout: durationMs("Deadline to receive the request line and headers on the HTTP listener.", { def: DEFAULT_HTTP_HEADER_TIMEOUT_MS, min: 1 }),
  http_header_max_bytes: sizeBytes("Cap on buffered HTTP request head bytes.", { def: DEFAULT_HTTP_HEADER_MAX_BYTES, min: 1 }),
  grace: durationMs("How long a visitor is held while its cog reconnects (0 disables).", { def: DEFAULT_GRACE_MS, min: 0 }),
  max_visitors: int("Concurrent visitor connections hub-wide.", { def: DEFAULT_MAX_VISITORS, min: 1 }),
  listen_backlog: int("Connections the kernel queues on each public listener (TLS, HTTP, TCP ports) until the hub accepts them; past it the kernel drops new ones, whoever sent them. Capped by the kernel at net.core.somaxconn.",
    { def: DEFAULT_LISTEN_BACKLOG, min: 1, max: MAX_LISTEN_BACKLOG }),
  max_visitors_per_ip: int(`Concurrent visitor connections from one source, an IPv4 address or an IPv6 /64 (default ${DEFAULT_MAX_VISITORS_PER_IP}, or max_visitors if smaller; at most max_visitors). Raise it when visitors arrive through a proxy or CGNAT.`,
    { def: undefined, min: 1, rangeBySection: true }),
  max_unpeeked_per_ip: int(`Of those, connections that have not yet sent a whole ClientHello or HTTP request head (default ${DEFAULT_MAX_UNPEEKED_PER_IP}, or max_visitors_per_ip if smaller; at most max_visitors_per_ip).`,
    { def: undefined, min: 1, rangeBySection: true }),
  // Node turns a timer delay above 2^31-1 ms into 1 ms: every visitor would be cut at once.
  idle_timeout: durationMs("Closes a visitor connection after this long without a byte either way, a stalled reader included; checked 8 times per period (0 = never).",
    { def: DEFAULT_IDLE_TIMEOUT_MS, min: 0, max: MAX_MUX_INT }),
  splice_queue: spliceQueue("a visitor's or its tunnel stream's"),
  buffer_budget: sizeBytes(`Bytes all visitors together may make the hub buffer: stream windows above the 256KiB floor are reserved from it, and past it the visitors that hold bytes without draining are cut (default ${fmtBytes(DEFAULT_BUFFER_BUDGET_BYTES)}; at least ${MIN_BUDGET_WHY}, 960KiB with the default splice_queue).`,
    { def: undefined, min: 0 }),
  cog_buffer_budget: sizeBytes(`The same, for the visitors of one cog (default ${fmtBytes(DEFAULT_COG_BUFFER_BUDGET_BYTES)}; at least one visitor's share, at most buffer_budget).`,
    { def: undefined, min: 0 }),
  buffer_check_interval: durationMs("How often the hub measures buffered bytes while its visitors could exceed a budget.",
    { def: DEFAULT_BUFFER_CHECK_INTERVAL_MS, min: 1, max: MAX_MUX_INT }),
  refusal_log_interval: durationMs("A refused or cut visitor is logged at most once per source per this (0 logs every one).",
    { def: DEFAULT_REFUSAL_LOG_INTERVAL_MS, min: 0 }),
  ...HUB_QUOTA_SHAPE,
}, (o): HubLimits => {
  const maxVisitors = o.max_visitors;
  // Each cap is at most the one it narrows (a larger value could never apply); an explicit
  // one above it is refused, the default is lowered with it.
  const maxVisitorsPerIp = o.max_visitors_per_ip ?? Math.min(DEFAULT_MAX_VISITORS_PER_IP, maxVisitors);
  if (maxVisitorsPerIp < 1 || maxVisitorsPerIp > maxVisitors) fail(["max_visitors_per_ip"], `out of range (1-${maxVisitors}): ${maxVisitorsPerIp}`);
  const maxUnpeekedPerIp = o.max_unpeeked_per_ip ?? Math.min(DEFAULT_MAX_UNPEEKED_PER_IP, maxVisitorsPerIp);
  if (maxUnpeekedPerIp < 1 || maxUnpeekedPerIp > maxVisitorsPerIp) {
    fail(["max_unpeeked_per_ip"], `out of range (1-${maxVisitorsPerIp}): ${maxUnpeekedPerIp}`);
  }
  const minBudget = minBufferBudgetBytes(o.splice_queue);
  const bufferBudgetBytes = o.buffer_budget ?? Math.max(DEFAULT_BUFFER_BUDGET_BYTES, minBudget);
  if (bufferBudgetBytes < minBudget) {
    fail(["buffer_budget"], `must be at least ${fmtBytes(minBudget)} (${MIN_BUDGET_WHY}), got ${fmtBytes(bufferBudgetBytes)}`);
  }
  const cogBufferBudgetBytes = o.cog_buffer_budget ?? Math.min(Math.max(DEFAULT_COG_BUFFER_BUDGET_BYTES, minBudget), bufferBudgetBytes);
  if (cogBufferBudgetBytes < minBudget) {
    fail(["cog_buffer_budget"], `must be at least ${fmtBytes(minBudget)} (${MIN_BUDGET_WHY}), got ${fmtBytes(cogBufferBudgetBytes)}`);
  }
  if (cogBufferBudgetBytes > bufferBudgetBytes) {
    fail(["cog_buffer_budget"], `must be at most buffer_budget (${fmtBytes(bufferBudgetBytes)}), got ${fmtBytes(cogBufferBudgetBytes)}`);
  }
  const quotas = resolveLimits({
    maxStreams: o.max_streams_per_cog, perRoute: o.max_connections_per_route, bandwidth: o.cog_bandwidth, burst: o.cog_bandwidth_burst,
  }, [], false, BUILT_IN_LIMITS, maxVisitors);
  return {
    clientHelloTimeoutMs: o.client_hello_timeout,
    clientHelloMaxBytes: o.client_hello_max_bytes,
    httpHeaderTimeoutMs: o.http_header_timeout,
    httpHeaderMaxBytes: o.http_header_max_bytes,
    graceMs: o.grace,
    maxVisitors,
    listenBacklog: o.listen_backlog,
    maxVisitorsPerIp,
    maxUnpeekedPerIp,
    idleTimeoutMs: o.idle_timeout,
    spliceQueueBytes: o.splice_queue,
    bufferBudgetBytes,
    cogBufferBudgetBytes,
    bufferCheckIntervalMs: o.buffer_check_interval,
    refusalLogIntervalMs: o.refusal_log_interval,
    maxStreamsPerCog: quotas.maxStreams,
    maxConnectionsPerRoute: quotas.maxConnectionsPerRoute,
    cogBandwidthBytesPerSec: quotas.bandwidthBytesPerSec,
    cogBandwidthBurstBytes: quotas.bandwidthBurstBytes,
  };
});
