import t from "tap";
import { mkdtempSync, readdirSync, readFileSync, rmSync } from "node:fs";
import { availableParallelism, tmpdir } from "node:os";
import { dirname, join, resolve } from "node:path";
import { fileURLToPath } from "node:url";
import { parse } from "yaml";
import * as C from "../config/config.js";
import * as A from "../config/acme.js";
import * as D from "../config/domains.js";
import { loadConfigFile, parseConfig } from "../config/config.js";
import type { CapsulConfig } from "../config/types.js";
import { defaultEndpointName } from "../config/endpoint.js";
import { ConfigError } from "../lib/errors.js";
import { parseDurationMs, parseSizeBytes } from "../lib/units.js";
import { documentedDefault, schemaNode } from "./helpers/schemadoc.js";

const here = dirname(fileURLToPath(import.meta.url));
const root = resolve(here, "..");
const fixtures = join(here, "fixtures", "config");
const examplePath = join(root, "capsul.yaml.example");

function yamlFiles(dir: string): string[] {
  return readdirSync(dir).filter((f) => f.endsWith(".yaml")).sort().map((f) => join(dir, f));
}

function errorOf(fn: () => unknown): ConfigError {
  try {
    fn();
  } catch (err) {
    if (err instanceof ConfigError) return err;
    throw err;
  }
  throw new Error("expected a ConfigError, nothing was thrown");
}

t.test("invalid fixtures fail with the exact message on their first line", async (t) => {
  const files = yamlFiles(join(fixtures, "invalid"));
  // At least 25 fixtures, so a broken filter or a moved directory cannot pass vacuously.
  t.ok(files.length >= 25, `found ${files.length} invalid fixtures`);
  for (const file of files) {
    const firstLine = readFileSync(file, "utf8").split("\n")[0]!;
    const expect = /^# expect: (.+)$/.exec(firstLine)?.[1];
    t.ok(expect, `${file}: first line is "# expect: <message>"`);
    const err = errorOf(() => loadConfigFile(file));
    // loadConfigFile prefixes every message with the file name.
    t.equal(err.message, `${file}: ${expect}`, file);
    t.notMatch(err.message, /\n/, `${file}: one line`);
  }
});

t.test("valid fixtures load", async (t) => {
  const files = yamlFiles(join(fixtures, "valid"));
  t.ok(files.length > 0, `found ${files.length} valid fixtures`);
  for (const file of files) {
    const cfg = loadConfigFile(file);
    t.ok(cfg.hub !== null || cfg.cog !== null, file);
    t.ok(Object.isFrozen(cfg), `${file}: frozen`);
  }
});

t.test("file-level errors name the file", async (t) => {
  const missing = join(fixtures, "no-such-file.yaml");
  t.equal(errorOf(() => loadConfigFile(missing)).message, `${missing}: cannot read config: no such file`);
  const dir = join(fixtures, "valid");
  t.equal(errorOf(() => loadConfigFile(dir)).message, `${dir}: cannot read config: is a directory`);
  const err = errorOf(() => loadConfigFile(join(fixtures, "invalid", "unknown-key-suggest.yaml")));
  t.equal(err.path, join(fixtures, "invalid", "unknown-key-suggest.yaml"));
  t.type(err.cause, ConfigError, "the original error is kept as cause");
  t.equal((err.cause as ConfigError).path, "hub.limts");
});

t.test("parseConfig errors carry the key path", async (t) => {
  t.equal(errorOf(() => parseConfig(null)).message, "the configuration is empty (it needs a hub: or cog: section)");
  t.equal(errorOf(() => parseConfig("hub")).message, 'expected a mapping, got a string "hub"');
  const err = errorOf(() => parseConfig({ hub: { domain: "hub.example.net", cogs: [{ name: "a" }, { name: "b", hostnames: [42] }] } }));
  t.equal(err.path, "hub.cogs[1].hostnames[0]");
  t.equal(err.message, "hub.cogs[1].hostnames[0]: expected a hostname pattern, got the number 42");
  // Nothing above was rejected for the wrong reason: the same config with a valid pattern parses.
  t.ok(parseConfig({ hub: { domain: "hub.example.net", cogs: [{ name: "a" }, { name: "b", hostnames: ["b.example"] }] } }));
});

t.test("overlapping grants are fine for one cog, or with default grants off", async (t) => {
  const cfg = parseConfig({
    hub: {
      domain: "hub.example.net",
      cogs: [
        { name: "home1", hostnames: ["example.org", "*.example.org", "www.example.org"] },
        { name: "home2", hostnames: ["example.com"] },
      ],
    },
  });
  t.same(cfg.hub!.cogs[0]!.hostnames, ["example.org", "*.example.org", "www.example.org"]);
  const wide = { domain: "hub.example.net", cogs: [{ name: "home1" }, { name: "home2", hostnames: ["*.hub.example.net"] }] };
  t.throws(() => parseConfig({ hub: wide }), { message: /overlaps the default grant "home1.hub.example.net"/ });
  t.ok(parseConfig({ hub: { ...wide, default_grants: false } }));
});

t.test("capsul.yaml.example parses, has hub and cog, and documents every key", async (t) => {
  const cfg = loadConfigFile(examplePath);
  t.ok(cfg.hub, "hub");
  t.ok(cfg.cog, "cog");
  t.equal(cfg.hub!.domain, "hub.example.net");
  t.same(cfg.hub!.cogs.map((c) => c.name), ["home1"]);
  t.same(cfg.cog!.routes.map((r) => r.kind).sort(), ["http", "tcp", "tls", "tls"]);
  t.ok(cfg.cog!.routes.some((r) => r.kind === "tcp" && r.proxyProtocol !== "none"), "an SSH route with PROXY protocol");
  t.ok(cfg.cog!.provisioner, "provisioner");

  const text = readFileSync(examplePath, "utf8");
  const raw = parse(text) as Record<string, Record<string, unknown>>;
  // Every key path the parser knows, written out here independently of config.ts.
  const paths = [
    "hub.data_dir", "hub.store", "hub.store_password_file", "hub.store_pool_size", "hub.store_connect_timeout",
    "hub.store_busy_timeout", "hub.domain", "hub.listen.tls", "hub.listen.http", "hub.listen.tunnel", "hub.listen.tcp_host",
    "hub.listen.tcp_ports", "hub.listen.admin", "hub.public_tunnel_address", "hub.cogs.0.name", "hub.cogs.0.hostnames", "hub.cogs.0.tcp_ports",
    "hub.default_grants", "hub.default_tcp_ports_per_cog", "hub.invite_ttl", "hub.cog_cert_ttl",
    "hub.limits.client_hello_timeout", "hub.limits.client_hello_max_bytes", "hub.limits.http_header_timeout",
    "hub.limits.http_header_max_bytes", "hub.limits.grace", "hub.limits.max_visitors", "hub.limits.listen_backlog", "hub.limits.idle_timeout",
    "hub.limits.splice_queue", "hub.limits.max_visitors_per_ip", "hub.limits.max_unpeeked_per_ip",
    "hub.limits.buffer_budget", "hub.limits.cog_buffer_budget", "hub.limits.buffer_check_interval",
    "hub.limits.refusal_log_interval", "hub.limits.max_streams_per_cog", "hub.limits.max_connections_per_route",
    "hub.limits.cog_bandwidth",
    ...["max_streams", "max_connections_per_route", "bandwidth", "bandwidth_burst"].map((k) => `hub.cogs.0.limits.${k}`),
    "hub.tunnel.max_stream_window", "hub.tunnel.keepalive_interval", "hub.tunnel.keepalive_timeout", "hub.tunnel.handshake_timeout",
    "hub.tunnel.max_auto_window", "hub.tunnel.max_frame_payload", "hub.tunnel.write_batch",
    "hub.tunnel.close_linger", "hub.tunnel.control_hello_timeout", "hub.tunnel.revocation_poll_interval",
    "hub.admin.request_timeout", "hub.admin.max_connections", "hub.admin.max_request_body", "hub.admin.status_refresh",
    "hub.admin.cogs_cache", "hub.admin.tls", "hub.admin.challenge", "hub.acme.directory_url",
    "cog.listen.admin", "cog.admin.request_timeout", "cog.admin.max_connections",
    "hub.tunnel.max_queued_control_frames", "hub.tunnel.max_unauthenticated", "hub.tunnel.max_unauthenticated_per_ip",
    "hub.tunnel.control_rate", "hub.tunnel.control_burst", "hub.tunnel.renew_min_interval", "hub.tunnel.listen_backlog", "cog.tunnel.max_queued_control_frames",
    "hub.tunnel.session_ticket_lifetime", "hub.tunnel.session_ticket_rotation", "cog.tunnel.session_refresh",
    "hub.shutdown_grace", "cog.shutdown_grace",
    ...["name", "advertise", "server_name", "heartbeat_interval", "timeout"].map((k) => `hub.endpoint.${k}`),
    "hub.workers", ...["restart_min_delay", "restart_max_delay", "stats_interval", "warmup", "handoff_wait"].map((k) => `hub.worker.${k}`),
    "cog.reconnect.endpoint_gone_timeout",
    "cog.data_dir", "cog.hub", "cog.routes.0.name", "cog.routes.0.kind", "cog.routes.0.hostname", "cog.routes.0.target",
    "cog.routes.1.proxy_protocol", "cog.routes.2.port", "cog.reconnect.min_delay", "cog.reconnect.max_delay",
    "cog.target_dial_timeout", "cog.splice_queue", "cog.tunnel.max_stream_window", "cog.tunnel.keepalive_interval",
    "cog.tunnel.keepalive_timeout", "cog.tunnel.handshake_timeout", "cog.tunnel.max_auto_window", "cog.tunnel.accept_backlog",
    "cog.tunnel.max_frame_payload", "cog.tunnel.write_batch", "cog.tunnel.close_linger",
    "cog.tunnel.welcome_timeout", "cog.tunnel.enroll_timeout",
    "cog.tunnel.visitor_header_timeout", "cog.tunnel.visitor_header_max_bytes", "cog.provisioner.listen", "log.level",
    "cog.routes.3.tls", "cog.routes.3.challenge", "cog.routes.3.redirect_http", "cog.routes.3.hsts",
    ...["directory_url", "ca_bundle", "email", "renew_at", "retry_min_delay", "retry_max_delay", "request_timeout",
      "order_timeout", "poll_interval"].map((k) => `cog.acme.${k}`),
    ...["handshake_timeout", "client_hello_max_bytes", "http_header_max_bytes", "http_keepalive_timeout"].map((k) => `cog.terminate.${k}`),
    // cog.provisioner's keys are parsed by provisioner/config.ts; the example documents them too.
    ...["data_dir", "accel", "sizes", "memory_overcommit_ratio", "qemu_binary", "qemu_img_binary", "genisoimage_binary",
      "boot_timeout", "stop_timeout", "launch_timeout", "qmp_timeout", "kvm_probe_timeout", "tool_timeout",
      "max_request_body", "max_image_size", "console_tail", "max_vms", "max_ssh_keys"].map((k) => `cog.provisioner.${k}`),
  ];
  // Shown commented out: the example's cog_bandwidth is off, and a burst without it is an error.
  t.match(text, /\n {4}# cog_bandwidth_burst: \d/, "example documents hub.limits.cog_bandwidth_burst");
  for (const path of paths) {
    let node: unknown = raw;
    for (const part of path.split(".")) node = (node as Record<string, unknown> | undefined)?.[part];
    t.not(node, undefined, `example sets ${path}`);
  }
  t.ok(cfg.cog!.routes.some((r) => r.terminate?.redirectHttp && r.terminate.hstsMaxAgeSec > 0), "a route that terminates TLS, with redirect and HSTS");
  // The first time each key appears, it is commented: on its line or the line above.
  const lines = text.split("\n");
  const seen = new Set<string>();
  lines.forEach((line, i) => {
    const key = /^\s*(?:- )?([a-z_]+):/.exec(line)?.[1];
    if (!key || seen.has(key)) return;
    seen.add(key);
    t.ok(line.includes("#") || /^\s*#/.test(lines[i - 1] ?? ""), `example line ${i + 1} (${key}) has a comment`);
  });
  t.ok(seen.size >= 40, `example has ${seen.size} distinct keys`);
});

t.test("defaults are filled", async (t) => {
  const cfg = parseConfig({ hub: { domain: "hub.example.net" }, cog: {} });
  const tunnel = {
    maxStreamWindowBytes: 8388608, keepaliveIntervalMs: 15000, keepaliveTimeoutMs: 30000, handshakeTimeoutMs: 10000,
    maxAutoWindowBytes: 33554432, maxFramePayloadBytes: 65536, writeBatchMaxBytes: 262144, closeLingerMs: 5000,
    maxQueuedControlFrames: 16384,
  };
  const hubTunnel = {
    ...tunnel, controlHelloTimeoutMs: 10000, revocationPollIntervalMs: 500,
    maxUnauthenticated: 512, maxUnauthenticatedPerIp: 16, controlRatePerSec: 20, controlBurst: 100, renewMinIntervalMs: 3_600_000, listenBacklog: 1024,
    moveAnswerTimeoutMs: 30_000, maxMoves: 2, sessionTicketLifetimeMs: 86_400_000, sessionTicketRotationMs: 86_400_000,
  };
  const cogTunnel = { ...tunnel, welcomeTimeoutMs: 15000, enrollTimeoutMs: 20000, visitorHeaderTimeoutMs: 10000, visitorHeaderMaxBytes: 4096, acceptBacklog: 1024, sessionRefreshMs: 43_200_000 };
  const want: CapsulConfig = {
    hub: {
      dataDir: "/var/lib/capsul/hub",
      store: { kind: "sqlite", postgres: null, passwordFile: null, poolSize: 10, connectTimeoutMs: 10000, busyTimeoutMs: 5000 },
      domain: "hub.example.net",
      listen: {
        tls: { host: "0.0.0.0", port: 443 },
        http: { host: "0.0.0.0", port: 80 },
        tunnel: { host: "0.0.0.0", port: 7443 },
        tcpHost: "0.0.0.0",
        tcpPorts: [],
        admin: { host: "127.0.0.1", port: 7444 },
      },
      publicTunnelAddress: "hub.example.net:7443",
      cogs: [],
      defaultGrants: true,
      defaultTcpPortsPerCog: 8,
      inviteTtlMs: 86400000,
      cogCertTtlMs: 7776000000,
      domains: { enabled: true, resolver: null, lookupTimeoutMs: 5000, pendingIntervalMs: 30000, recheckIntervalMs: 600000, errorRetryIntervalMs: 60000, maxClaimsPerCog: 100, missingBeforeWithdraw: 3 },
      limits: {
        clientHelloTimeoutMs: 5000,
        clientHelloMaxBytes: 16409,
        httpHeaderTimeoutMs: 5000,
        httpHeaderMaxBytes: 16384,
        graceMs: 5000,
        maxVisitors: 20000,
        listenBacklog: 4096,
        maxVisitorsPerIp: 256,
        maxUnpeekedPerIp: 64,
        idleTimeoutMs: 600000,
        spliceQueueBytes: 262144,
        bufferBudgetBytes: 536870912,
        cogBufferBudgetBytes: 134217728,
        bufferCheckIntervalMs: 250,
        refusalLogIntervalMs: 60000,
        maxStreamsPerCog: 5000,
        maxConnectionsPerRoute: 2000,
        cogBandwidthBytesPerSec: 0,
        cogBandwidthBurstBytes: 0,
      },
      tunnel: hubTunnel,
      admin: {
        requestTimeoutMs: 10000, maxConnections: 64, maxRequestBodyBytes: 16384, statusRefreshMs: 5000, cogsCacheMs: 2000,
        tls: "off", hostname: null, challenge: "http-01", certFile: null, keyFile: null,
      },
      // hub.acme has cog.acme's keys and defaults.
      acme: {
        directoryUrl: "https://acme-v02.api.letsencrypt.org/directory", caBundle: null, email: null, renewAtRatio: 2 / 3,
        retryMinDelayMs: 300000, retryMaxDelayMs: 43200000, requestTimeoutMs: 30000, orderTimeoutMs: 300000, pollIntervalMs: 1000,
      },
      shutdownGraceMs: 30000,
      endpoint: {
        name: defaultEndpointName(), advertise: { host: "hub.example.net", port: 7443 }, serverName: "hub.example.net",
        heartbeatIntervalMs: 2000, timeoutMs: 10000,
      },
      accessLog: false,
      workers: 1,
      worker: { restartMinDelayMs: 200, restartMaxDelayMs: 10000, statsIntervalMs: 1000, warmupMs: 10000, handoffWaitMs: 5000 },
    },
    cog: {
      dataDir: "/var/lib/capsul/cog",
      hub: null,
      routes: [],
      reconnect: { minDelayMs: 500, maxDelayMs: 30000, endpointGoneTimeoutMs: 30000 },
      targetDialTimeoutMs: 5000,
      spliceQueueBytes: 262144,
      tunnel: cogTunnel,
      listen: { admin: { host: "127.0.0.1", port: 7445 } },
      admin: { requestTimeoutMs: 10000, maxConnections: 64 },
      provisioner: null,
      acme: {
        directoryUrl: "https://acme-v02.api.letsencrypt.org/directory", caBundle: null, email: null, renewAtRatio: 2 / 3,
        retryMinDelayMs: 300000, retryMaxDelayMs: 43200000, requestTimeoutMs: 30000, orderTimeoutMs: 300000, pollIntervalMs: 1000,
      },
      terminate: { handshakeTimeoutMs: 10000, clientHelloMaxBytes: 16409, httpHeaderMaxBytes: 16384, httpKeepAliveTimeoutMs: 5000 },
      shutdownGraceMs: 30000,
    },
    log: { level: "info", format: "auto" },
  };
  t.strictSame(cfg, want);

  // The provisioner's own keys and defaults are provisioner/config.ts's; here only that {} enables it.
  const prov = parseConfig({ cog: { provisioner: {} } }).cog!.provisioner!;
  t.same(prov.listen, { host: "127.0.0.1", port: 7480 });
  t.equal(prov.dataDir, "/var/lib/capsul/provisioner");
  // With a provisioner its listener serves /healthz and /metrics: the cog's own admin listener is opt-in.
  t.equal(parseConfig({ cog: { provisioner: {} } }).cog!.listen.admin, null);
  t.same(parseConfig({ cog: { provisioner: {}, listen: { admin: "127.0.0.1:7446" } } }).cog!.listen.admin, { host: "127.0.0.1", port: 7446 });
  t.equal(parseConfig({ cog: { listen: { admin: "off" } } }).cog!.listen.admin, null);
  t.equal(parseConfig({ hub: { domain: "hub.example.net", listen: { admin: null } } }).hub!.listen.admin, null);
  t.equal(parseConfig({ cog: { provisioner: false } }).cog!.provisioner, null);
  t.equal(parseConfig({ cog: { provisioner: null } }).cog!.provisioner, null);
  t.equal(parseConfig({ hub: { domain: "hub.example.net" } }).cog, null);
  t.equal(parseConfig({ cog: {} }).hub, null);
  const route = parseConfig({ cog: { routes: [{ name: "s", kind: "tcp", target: "127.0.0.1:22" }] } }).cog!.routes[0]!;
  t.strictSame(route, { name: "s", kind: "tcp", target: { host: "127.0.0.1", port: 22 }, proxyProtocol: "none" });
  // publicTunnelAddress follows the tunnel port when not set.
  t.equal(parseConfig({ hub: { domain: "h.example", listen: { tunnel: ":9000" } } }).hub!.publicTunnelAddress, "h.example:9000");
});

t.test("sections left empty take defaults", async (t) => {
  const cfg = loadConfigFile(join(fixtures, "valid", "empty-sections.yaml"));
  const defaults = parseConfig({ hub: { domain: "hub.example.net" }, cog: {} });
  t.strictSame(cfg, defaults);
});

t.test("the result is deeply frozen", async (t) => {
  const cfg = loadConfigFile(examplePath);
  const unfrozen: string[] = [];
  const walk = (v: unknown, path: string) => {
    if (v === null || typeof v !== "object") return;
    if (!Object.isFrozen(v)) unfrozen.push(path);
    for (const [k, child] of Object.entries(v)) walk(child, `${path}.${k}`);
  };
  walk(cfg, "config");
  t.same(unfrozen, []);
  t.throws(() => { (cfg.hub!.limits as { graceMs: number }).graceMs = 1; }, TypeError);
  t.throws(() => { (cfg.cog!.routes as unknown[]).push({}); }, TypeError);
});

t.test("durations, sizes, addresses and names are parsed and normalized", async (t) => {
  const cfg = loadConfigFile(join(fixtures, "valid", "numbers-and-ipv6.yaml"));
  const hub = cfg.hub!;
  const cog = cfg.cog!;
  t.equal(hub.domain, "xn--bcher-kva.example");
  t.same(hub.listen.tls, { host: "::", port: 8443 });
  t.same(hub.listen.http, { host: "::1", port: 8080 });
  t.equal(hub.listen.tcpHost, "::");
  t.same(hub.listen.tcpPorts, [{ from: 30000, to: 30000 }, { from: 30001, to: 30010 }, { from: 2222, to: 2222 }]);
  t.equal(hub.publicTunnelAddress, "[2001:db8::1]:7000");
  t.same(hub.cogs[1]!.tcpPorts, [{ from: 2222, to: 2222 }, { from: 30003, to: 30010 }]);
  t.equal(hub.inviteTtlMs, 2 * 3600_000);
  t.equal(hub.cogCertTtlMs, 1.5 * 86400_000);
  t.same(hub.limits, {
    clientHelloTimeoutMs: 250, clientHelloMaxBytes: 20000, httpHeaderTimeoutMs: 1500, httpHeaderMaxBytes: 8192,
    graceMs: 0, maxVisitors: 1, listenBacklog: 4096, idleTimeoutMs: 120000, spliceQueueBytes: 16384,
    // The per-source caps are absent: their defaults (256, 64) are lowered to max_visitors.
    maxVisitorsPerIp: 1, maxUnpeekedPerIp: 1,
    bufferBudgetBytes: 64_000_000, cogBufferBudgetBytes: 1048576, bufferCheckIntervalMs: 100, refusalLogIntervalMs: 0,
    // So are the per-cog caps (5000, 2000); bandwidth stays off.
    maxStreamsPerCog: 1, maxConnectionsPerRoute: 1, cogBandwidthBytesPerSec: 0, cogBandwidthBurstBytes: 0,
  });
  t.same(hub.tunnel, {
    maxStreamWindowBytes: 1048576, keepaliveIntervalMs: 100, keepaliveTimeoutMs: 101, handshakeTimeoutMs: 1000,
    maxAutoWindowBytes: 1048576, maxFramePayloadBytes: 1, writeBatchMaxBytes: 1000000, closeLingerMs: 0,
    maxQueuedControlFrames: 16384,
    controlHelloTimeoutMs: 2500, revocationPollIntervalMs: 50,
    maxUnauthenticated: 512, maxUnauthenticatedPerIp: 16, controlRatePerSec: 20, controlBurst: 100, renewMinIntervalMs: 3_600_000, listenBacklog: 1024,
    moveAnswerTimeoutMs: 30_000, maxMoves: 2, sessionTicketLifetimeMs: 86_400_000, sessionTicketRotationMs: 86_400_000,
  });
  t.same(cog.hub, { host: "2001:db8::1", port: 7000 });
  t.equal(cog.routes[0]!.hostname, "*.apps.xn--bcher-kva.example", "lower-cased, trailing dot dropped");
  t.equal(cog.routes[0]!.proxyProtocol, "v1");
  t.same(cog.routes[1]!.target, { host: "localhost", port: 80 });
  t.equal(cog.routes[2]!.port, undefined, "tcp port left to the hub");
  t.same(cog.reconnect, { minDelayMs: 30000, maxDelayMs: 30000, endpointGoneTimeoutMs: 30000 });
  t.equal(cog.targetDialTimeoutMs, 750);
  t.equal(cog.spliceQueueBytes, 1_000_000);
  t.same(cog.tunnel, {
    maxStreamWindowBytes: 8388608, keepaliveIntervalMs: 15000, keepaliveTimeoutMs: 30000, handshakeTimeoutMs: 10000,
    maxAutoWindowBytes: 4294967295, acceptBacklog: 2147483647, maxFramePayloadBytes: 16384, writeBatchMaxBytes: 2147483647,
    closeLingerMs: 2147483647, maxQueuedControlFrames: 16384,
    welcomeTimeoutMs: 60000, enrollTimeoutMs: 45000, visitorHeaderTimeoutMs: 250, visitorHeaderMaxBytes: 2000, sessionRefreshMs: 43_200_000,
  });
  t.same(cog.provisioner!.listen, { host: "127.0.0.1", port: 7480 });
  t.equal(cfg.log.level, "debug");
});

t.test("the tunnel keys of one role: each is read on its own, the rest keep their defaults", async (t) => {
  const hubDefaults = parseConfig({ hub: { domain: "hub.example.net" } }).hub!.tunnel;
  const cogDefaults = parseConfig({ cog: {} }).cog!.tunnel;
  // [section, key, YAML value, field, parsed value]
  const cases: ["hub" | "cog", string, unknown, string, number][] = [
    ["hub", "control_hello_timeout", "750ms", "controlHelloTimeoutMs", 750],
    ["hub", "control_hello_timeout", 1, "controlHelloTimeoutMs", 1],
    ["hub", "revocation_poll_interval", "2s", "revocationPollIntervalMs", 2000],
    ["hub", "max_unauthenticated", 2000, "maxUnauthenticated", 2000],
    ["hub", "max_unauthenticated_per_ip", 512, "maxUnauthenticatedPerIp", 512],
    ["hub", "max_unauthenticated_per_ip", 1, "maxUnauthenticatedPerIp", 1],
    ["hub", "control_rate", 1, "controlRatePerSec", 1],
    ["hub", "control_burst", 5000, "controlBurst", 5000],
    ["hub", "renew_min_interval", 0, "renewMinIntervalMs", 0],
    ["hub", "renew_min_interval", "1d", "renewMinIntervalMs", 86_400_000],
    ["hub", "listen_backlog", 2048, "listenBacklog", 2048],
    ["hub", "max_queued_control_frames", 64, "maxQueuedControlFrames", 64],
    ["cog", "max_queued_control_frames", 1, "maxQueuedControlFrames", 1],
    ["cog", "welcome_timeout", "1.5m", "welcomeTimeoutMs", 90_000],
    ["cog", "enroll_timeout", "1h", "enrollTimeoutMs", 3_600_000],
    ["cog", "visitor_header_timeout", 300, "visitorHeaderTimeoutMs", 300],
    ["cog", "visitor_header_max_bytes", "1KiB", "visitorHeaderMaxBytes", C.MIN_VISITOR_HEADER_MAX_BYTES],
    ["cog", "visitor_header_max_bytes", "64KiB", "visitorHeaderMaxBytes", 65536],
  ];
  for (const [section, key, value, field, want] of cases) {
    const raw = section === "hub"
      ? { hub: { domain: "hub.example.net", tunnel: { [key]: value } } }
      : { cog: { tunnel: { [key]: value } } };
    const got = parseConfig(raw)[section]!.tunnel as unknown as Record<string, number>;
    const defaults = (section === "hub" ? hubDefaults : cogDefaults) as unknown as Record<string, number>;
    t.strictSame(got, { ...defaults, [field]: want }, `${section}.tunnel.${key}: ${JSON.stringify(value)}`);
  }
  // Bad values: one line, naming the key (the invalid/tunnel-*.yaml fixtures cover the file path too).
  const bad: [unknown, string][] = [
    [{ hub: { domain: "h.example", tunnel: { control_hello_timeout: "0ms" } } }, "hub.tunnel.control_hello_timeout: must be greater than 0"],
    [{ hub: { domain: "h.example", tunnel: { revocation_poll_interval: true } } }, "hub.tunnel.revocation_poll_interval: not a duration (use e.g. 500ms, 5s, 2m, 1h): true"],
    [{ cog: { tunnel: { welcome_timeout: "soon" } } }, 'cog.tunnel.welcome_timeout: not a duration (use e.g. 500ms, 5s, 2m, 1h): "soon"'],
    [{ cog: { tunnel: { enroll_timeout: 0 } } }, "cog.tunnel.enroll_timeout: must be greater than 0"],
    [{ cog: { tunnel: { visitor_header_timeout: "0s" } } }, "cog.tunnel.visitor_header_timeout: must be greater than 0"],
    [{ cog: { tunnel: { visitor_header_max_bytes: 1023 } } }, "cog.tunnel.visitor_header_max_bytes: must be at least 1024 bytes, got 1023"],
    [{ hub: { domain: "h.example", tunnel: { max_unauthenticated: 0 } } }, "hub.tunnel.max_unauthenticated: must be at least 1, got 0"],
    [{ hub: { domain: "h.example", tunnel: { max_unauthenticated: 8, max_unauthenticated_per_ip: 9 } } }, "hub.tunnel.max_unauthenticated_per_ip: out of range (1-8): 9"],
    [{ hub: { domain: "h.example", tunnel: { control_rate: 0.5 } } }, "hub.tunnel.control_rate: expected an integer, got the number 0.5"],
    [{ hub: { domain: "h.example", tunnel: { control_burst: 0 } } }, "hub.tunnel.control_burst: must be at least 1, got 0"],
    [{ hub: { domain: "h.example", tunnel: { renew_min_interval: "often" } } }, 'hub.tunnel.renew_min_interval: not a duration (use e.g. 500ms, 5s, 2m, 1h): "often"'],
    [{ cog: { tunnel: { max_queued_control_frames: 0 } } }, "cog.tunnel.max_queued_control_frames: out of range (1-2147483647): 0"],
    [{ hub: { domain: "h.example", tunnel: { listen_backlog: 0 } } }, "hub.tunnel.listen_backlog: out of range (1-65535): 0"],
    [{ hub: { domain: "h.example", tunnel: { listen_backlog: "lots" } } }, 'hub.tunnel.listen_backlog: expected an integer, got a string "lots"'],
    [{ hub: { domain: "h.example", tunnel: { max_moves: -1 } } }, "hub.tunnel.max_moves: must be at least 0, got -1"],
    [{ hub: { domain: "h.example", tunnel: { move_answer_timeout: 0 } } }, "hub.tunnel.move_answer_timeout: must be greater than 0"],
    [{ hub: { domain: "h.example", tunnel: { session_ticket_lifetime: "8d" } } }, "hub.tunnel.session_ticket_lifetime: must be at most 7d, got 8d"],
    [{ hub: { domain: "h.example", tunnel: { session_ticket_lifetime: 0 } } }, "hub.tunnel.session_ticket_lifetime: must be greater than 0"],
    [{ hub: { domain: "h.example", tunnel: { session_ticket_lifetime: "2h", session_ticket_rotation: "1h" } } }, "hub.tunnel.session_ticket_lifetime: must be at most session_ticket_rotation (1h), got 2h"],
    [{ cog: { tunnel: { session_refresh: "-1s" } } }, 'cog.tunnel.session_refresh: not a duration (use e.g. 500ms, 5s, 2m, 1h): "-1s"'],
    [{ cog: { tunnel: { session_refresh: "30d" } } }, "cog.tunnel.session_refresh: must be at most 2147483647ms, got 30d"],
    [{ hub: { domain: "h.example", tunnel: { session_ticket_rotation: "weekly" } } }, 'hub.tunnel.session_ticket_rotation: not a duration (use e.g. 500ms, 5s, 2m, 1h): "weekly"'],
  ];
  for (const [raw, message] of bad) {
    const err = errorOf(() => parseConfig(raw));
    t.equal(err.message, message);
    t.notMatch(err.message, /\n/, "one line");
  }
});

t.test("the mux and splice keys: each is read on its own, on both ends, the rest keep their defaults", async (t) => {
  const MiB = 1024 * 1024;
  const hubDefaults = parseConfig({ hub: { domain: "hub.example.net" } }).hub!;
  const cogDefaults = parseConfig({ cog: {} }).cog!;
  // [key under hub.tunnel and cog.tunnel, YAML value, field, parsed value]
  const cases: [string, unknown, string, number][] = [
    ["max_auto_window", "8MiB", "maxAutoWindowBytes", 8 * MiB], // equal to max_stream_window: no growth
    ["max_auto_window", "1GiB", "maxAutoWindowBytes", 1024 * MiB],
    ["max_auto_window", 4294967295, "maxAutoWindowBytes", C.MAX_WINDOW_BYTES],
    ["accept_backlog", 0, "acceptBacklog", 0],
    ["accept_backlog", 16, "acceptBacklog", 16],
    ["accept_backlog", 2147483647, "acceptBacklog", C.MAX_MUX_INT],
    ["max_frame_payload", "16KiB", "maxFramePayloadBytes", 16384],
    ["max_frame_payload", 1, "maxFramePayloadBytes", 1],
    ["max_frame_payload", "4294967295B", "maxFramePayloadBytes", C.MAX_WINDOW_BYTES],
    ["write_batch", "1MiB", "writeBatchMaxBytes", MiB],
    ["write_batch", 1, "writeBatchMaxBytes", 1],
    ["close_linger", 0, "closeLingerMs", 0],
    ["close_linger", "250ms", "closeLingerMs", 250],
    ["close_linger", "1m", "closeLingerMs", 60_000],
  ];
  for (const [key, value, field, want] of cases) {
    // accept_backlog is the cog's alone: the hub refuses every stream but the control one.
    for (const section of key === "accept_backlog" ? ["cog"] as const : ["hub", "cog"] as const) {
      const raw = section === "hub"
        ? { hub: { domain: "hub.example.net", tunnel: { [key]: value } } }
        : { cog: { tunnel: { [key]: value } } };
      const got = parseConfig(raw)[section]!.tunnel as unknown as Record<string, number>;
      const defaults = (section === "hub" ? hubDefaults : cogDefaults).tunnel as unknown as Record<string, number>;
      t.strictSame(got, { ...defaults, [field]: want }, `${section}.tunnel.${key}: ${JSON.stringify(value)}`);
    }
  }
  // Absent, max_auto_window follows a larger max_stream_window, as MuxSession's own default does.
  t.equal(parseConfig({ cog: { tunnel: { max_stream_window: "64MiB" } } }).cog!.tunnel.maxAutoWindowBytes, 64 * MiB);
  t.equal(parseConfig({ cog: { tunnel: { max_stream_window: "1MiB" } } }).cog!.tunnel.maxAutoWindowBytes, 32 * MiB);

  // The splice queue: hub.limits.splice_queue and cog.splice_queue.
  for (const [value, want] of [["16KiB", C.MIN_SPLICE_QUEUE_BYTES], ["1MiB", MiB], [65536, 65536]] as const) {
    const hub = parseConfig({ hub: { domain: "hub.example.net", limits: { splice_queue: value } } }).hub!;
    t.strictSame(hub.limits, { ...hubDefaults.limits, spliceQueueBytes: want }, `hub.limits.splice_queue: ${value}`);
    const cog = parseConfig({ cog: { splice_queue: value } }).cog!;
    t.strictSame(cog, { ...cogDefaults, spliceQueueBytes: want }, `cog.splice_queue: ${value}`);
  }

  // Bad values: one line, naming the key; the bounds are those MuxSession's constructor
  // checks (test/muxlimits.test.ts shows it throws just past each one).
  const hub = (tunnel: object) => ({ hub: { domain: "h.example", tunnel } });
  const cog = (tunnel: object) => ({ cog: { tunnel } });
  const bad: [unknown, string][] = [
    [hub({ max_auto_window: "4MiB" }), "hub.tunnel.max_auto_window: must be at least max_stream_window (8MiB), got 4MiB"],
    [cog({ max_stream_window: "1MiB", max_auto_window: 1048575 }), "cog.tunnel.max_auto_window: must be at least max_stream_window (1MiB), got 1048575B"],
    [hub({ max_auto_window: "4GiB" }), "hub.tunnel.max_auto_window: must be at most 4294967295 bytes, got 4294967296"],
    [cog({ max_auto_window: true }), "cog.tunnel.max_auto_window: not a size (use e.g. 512KiB, 16MiB, 1GiB): true"],
    [cog({ accept_backlog: -1 }), "cog.tunnel.accept_backlog: out of range (0-2147483647): -1"],
    [cog({ accept_backlog: 2147483648 }), "cog.tunnel.accept_backlog: out of range (0-2147483647): 2147483648"],
    [cog({ accept_backlog: 1.5 }), "cog.tunnel.accept_backlog: expected an integer, got the number 1.5"],
    [cog({ accept_backlog: "16" }), 'cog.tunnel.accept_backlog: expected an integer, got a string "16"'],
    [hub({ accept_backlog: 16 }), "hub.tunnel.accept_backlog: unknown key"],
    [hub({ max_frame_payload: 0 }), "hub.tunnel.max_frame_payload: must be at least 1 bytes, got 0"],
    [cog({ max_frame_payload: "4GiB" }), "cog.tunnel.max_frame_payload: must be at most 4294967295 bytes, got 4294967296"],
    [cog({ max_frame_payload: "64k" }), 'cog.tunnel.max_frame_payload: not a size (use e.g. 512KiB, 16MiB, 1GiB): "64k"'],
    [cog({ write_batch: "0B" }), "cog.tunnel.write_batch: must be at least 1 bytes, got 0"],
    [hub({ write_batch: "2GiB" }), "hub.tunnel.write_batch: must be at most 2147483647 bytes, got 2147483648"],
    [hub({ close_linger: "soon" }), 'hub.tunnel.close_linger: not a duration (use e.g. 500ms, 5s, 2m, 1h): "soon"'],
    [cog({ close_linger: 0.5 }), "cog.tunnel.close_linger: must be a whole number of milliseconds, got 0.5"],
    [cog({ close_linger: "25d" }), "cog.tunnel.close_linger: must be at most 2147483647ms, got 25d"],
    // The keys MuxSession already took are held to its bounds too.
    [hub({ keepalive_interval: "25d" }), "hub.tunnel.keepalive_interval: must be at most 2147483647ms, got 25d"],
    [cog({ keepalive_timeout: 30000.5 }), "cog.tunnel.keepalive_timeout: must be a whole number of milliseconds, got 30000.5"],
    [cog({ max_stream_window: "4GiB" }), "cog.tunnel.max_stream_window: must be at most 4294967295 bytes, got 4294967296"],
    [{ hub: { domain: "h.example", limits: { splice_queue: "16383B" } } }, "hub.limits.splice_queue: must be at least 16384 bytes, got 16383"],
    [{ cog: { splice_queue: 0 } }, "cog.splice_queue: must be at least 16384 bytes, got 0"],
    [{ cog: { splice_queue: "lots" } }, 'cog.splice_queue: not a size (use e.g. 512KiB, 16MiB, 1GiB): "lots"'],
    // Each key lives in one place only.
    [hub({ splice_queue: "1MiB" }), "hub.tunnel.splice_queue: unknown key"],
    [{ hub: { domain: "h.example", limits: { accept_backlog: 1 } } }, "hub.limits.accept_backlog: unknown key"],
    [cog({ write_batches: "1MiB" }), 'cog.tunnel.write_batches: unknown key (did you mean "write_batch"?)'],
  ];
  for (const [raw, message] of bad) {
    const err = errorOf(() => parseConfig(raw));
    t.equal(err.message, message);
    t.notMatch(err.message, /\n/, "one line");
  }
});

t.test("listeners can be turned off; relative data_dir is resolved against the file", async (t) => {
  const file = join(fixtures, "valid", "listeners-off.yaml");
  const cfg = loadConfigFile(file);
  t.equal(cfg.hub!.domain, "hub.example.net");
  t.equal(cfg.hub!.listen.tls, null);
  t.equal(cfg.hub!.listen.http, null);
  t.same(cfg.hub!.listen.tunnel, { host: "127.0.0.1", port: 0 });
  t.equal(cfg.hub!.dataDir, join(fixtures, "valid", "state", "hub"));
  t.equal(cfg.cog!.dataDir, join(fixtures, "valid", "state", "cog"));
  t.same(cfg.cog!.provisioner!.listen, { host: "127.0.0.1", port: 0 }, "port 0 never collides");
  t.equal(parseConfig({ hub: { domain: "h.example", listen: { tls: false } } }).hub!.listen.tls, null);

  const dir = mkdtempSync(join(tmpdir(), "capsul-config-"));
  t.teardown(() => rmSync(dir, { recursive: true, force: true }));
  t.equal(parseConfig({ cog: { data_dir: "d" } }, { baseDir: dir }).cog!.dataDir, join(dir, "d"));
  t.equal(parseConfig({ cog: { data_dir: "/abs" } }, { baseDir: dir }).cog!.dataDir, "/abs");
  t.equal(parseConfig({ cog: { data_dir: "d" } }).cog!.dataDir, resolve("d"), "default base: the working directory");
});

t.test("every default constant is the default capsul.schema.json documents for its key", async (t) => {
  const same = (s: string) => s;
  const dur = (s: string) => parseDurationMs(s);
  const bytes = (s: string) => parseSizeBytes(s);
  const int = (s: string) => Number(s);
  const bool = (s: string) => s === "true";
  // [constant, its key, the default the schema documents (JSON default, or "(default …" in the description), how to read it]
  const table: [keyof typeof C, string, string, (s: string) => unknown][] = [
    ["DEFAULT_HUB_DATA_DIR", "hub.data_dir", "/var/lib/capsul/hub", same],
    ["DEFAULT_HUB_STORE", "hub.store", "sqlite", same],
    ["DEFAULT_STORE_POOL_SIZE", "hub.store_pool_size", "10", int],
    ["DEFAULT_STORE_CONNECT_TIMEOUT_MS", "hub.store_connect_timeout", "10s", dur],
    ["DEFAULT_STORE_BUSY_TIMEOUT_MS", "hub.store_busy_timeout", "5s", dur],
    ["DEFAULT_HUB_TLS_LISTEN", "hub.listen.tls", "0.0.0.0:443", same],
    ["DEFAULT_HUB_HTTP_LISTEN", "hub.listen.http", "0.0.0.0:80", same],
    ["DEFAULT_HUB_TUNNEL_LISTEN", "hub.listen.tunnel", "0.0.0.0:7443", same],
    ["DEFAULT_HUB_TCP_HOST", "hub.listen.tcp_host", "0.0.0.0", same],
    ["DEFAULT_HUB_ADMIN_LISTEN", "hub.listen.admin", "127.0.0.1:7444", same],
    ["DEFAULT_COG_ADMIN_LISTEN", "cog.listen.admin", "127.0.0.1:7445", same],
    ["DEFAULT_ADMIN_REQUEST_TIMEOUT_MS", "hub.admin.request_timeout", "10s", dur],
    ["DEFAULT_ADMIN_MAX_CONNECTIONS", "hub.admin.max_connections", "64", int],
    ["DEFAULT_ADMIN_MAX_REQUEST_BODY_BYTES", "hub.admin.max_request_body", "16KiB", bytes],
    ["DEFAULT_STATUS_REFRESH_MS", "hub.admin.status_refresh", "5s", dur],
    ["DEFAULT_ADMIN_COGS_CACHE_MS", "hub.admin.cogs_cache", "2s", dur],
    ["DEFAULT_ADMIN_TLS", "hub.admin.tls", "off", same],
    ["DEFAULT_ADMIN_CHALLENGE", "hub.admin.challenge", "http-01", same],
    ["DEFAULT_HUB_DEFAULT_GRANTS", "hub.default_grants", "true", bool],
    ["DEFAULT_TCP_PORTS_PER_COG", "hub.default_tcp_ports_per_cog", "8", int],
    ["DEFAULT_INVITE_TTL_MS", "hub.invite_ttl", "1d", dur],
    ["DEFAULT_COG_CERT_TTL_MS", "hub.cog_cert_ttl", "90d", dur],
    ["DEFAULT_CLIENT_HELLO_TIMEOUT_MS", "hub.limits.client_hello_timeout", "5s", dur],
    ["DEFAULT_CLIENT_HELLO_MAX_BYTES", "hub.limits.client_hello_max_bytes", "16409B", bytes],
    ["DEFAULT_HTTP_HEADER_TIMEOUT_MS", "hub.limits.http_header_timeout", "5s", dur],
    ["DEFAULT_HTTP_HEADER_MAX_BYTES", "hub.limits.http_header_max_bytes", "16KiB", bytes],
    ["DEFAULT_GRACE_MS", "hub.limits.grace", "5s", dur],
    ["DEFAULT_MAX_VISITORS", "hub.limits.max_visitors", "20000", int],
    ["DEFAULT_LISTEN_BACKLOG", "hub.limits.listen_backlog", "4096", int],
    ["DEFAULT_MAX_VISITORS_PER_IP", "hub.limits.max_visitors_per_ip", "256", int],
    ["DEFAULT_MAX_UNPEEKED_PER_IP", "hub.limits.max_unpeeked_per_ip", "64", int],
    ["DEFAULT_IDLE_TIMEOUT_MS", "hub.limits.idle_timeout", "10m", dur],
    ["DEFAULT_SPLICE_QUEUE_BYTES", "hub.limits.splice_queue", "256KiB", bytes],
    ["DEFAULT_BUFFER_BUDGET_BYTES", "hub.limits.buffer_budget", "512MiB", bytes],
    ["DEFAULT_COG_BUFFER_BUDGET_BYTES", "hub.limits.cog_buffer_budget", "128MiB", bytes],
    ["DEFAULT_BUFFER_CHECK_INTERVAL_MS", "hub.limits.buffer_check_interval", "250ms", dur],
    ["DEFAULT_REFUSAL_LOG_INTERVAL_MS", "hub.limits.refusal_log_interval", "1m", dur],
    ["DEFAULT_MAX_STREAM_WINDOW_BYTES", "hub.tunnel.max_stream_window", "8MiB", bytes],
    ["DEFAULT_KEEPALIVE_INTERVAL_MS", "hub.tunnel.keepalive_interval", "15s", dur],
    ["DEFAULT_KEEPALIVE_TIMEOUT_MS", "hub.tunnel.keepalive_timeout", "30s", dur],
    ["DEFAULT_HANDSHAKE_TIMEOUT_MS", "hub.tunnel.handshake_timeout", "10s", dur],
    ["DEFAULT_MAX_AUTO_WINDOW_BYTES", "hub.tunnel.max_auto_window", "32MiB", bytes],
    ["DEFAULT_ACCEPT_BACKLOG", "cog.tunnel.accept_backlog", "1024", int],
    ["DEFAULT_MAX_FRAME_PAYLOAD_BYTES", "hub.tunnel.max_frame_payload", "64KiB", bytes],
    ["DEFAULT_WRITE_BATCH_MAX_BYTES", "hub.tunnel.write_batch", "256KiB", bytes],
    ["DEFAULT_CLOSE_LINGER_MS", "hub.tunnel.close_linger", "5s", dur],
    ["DEFAULT_CONTROL_HELLO_TIMEOUT_MS", "hub.tunnel.control_hello_timeout", "10s", dur],
    ["DEFAULT_REVOCATION_POLL_INTERVAL_MS", "hub.tunnel.revocation_poll_interval", "500ms", dur],
    ["DEFAULT_MAX_QUEUED_CONTROL_FRAMES", "hub.tunnel.max_queued_control_frames", "16384", int],
    ["DEFAULT_MAX_UNAUTHENTICATED", "hub.tunnel.max_unauthenticated", "512", int],
    ["DEFAULT_MAX_UNAUTHENTICATED_PER_IP", "hub.tunnel.max_unauthenticated_per_ip", "16", int],
    ["DEFAULT_CONTROL_RATE_PER_SEC", "hub.tunnel.control_rate", "20", int],
    ["DEFAULT_CONTROL_BURST", "hub.tunnel.control_burst", "100", int],
    ["DEFAULT_RENEW_MIN_INTERVAL_MS", "hub.tunnel.renew_min_interval", "1h", dur],
    ["DEFAULT_TUNNEL_LISTEN_BACKLOG", "hub.tunnel.listen_backlog", "1024", int],
    ["DEFAULT_MOVE_ANSWER_TIMEOUT_MS", "hub.tunnel.move_answer_timeout", "30s", dur],
    ["DEFAULT_MAX_MOVES", "hub.tunnel.max_moves", "2", int],
    ["DEFAULT_SESSION_TICKET_LIFETIME_MS", "hub.tunnel.session_ticket_lifetime", "1d", dur],
    ["DEFAULT_SESSION_TICKET_ROTATION_MS", "hub.tunnel.session_ticket_rotation", "1d", dur],
    ["DEFAULT_SESSION_REFRESH_MS", "cog.tunnel.session_refresh", "12h", dur],
    ["DEFAULT_WELCOME_TIMEOUT_MS", "cog.tunnel.welcome_timeout", "15s", dur],
    ["DEFAULT_ENROLL_TIMEOUT_MS", "cog.tunnel.enroll_timeout", "20s", dur],
    ["DEFAULT_VISITOR_HEADER_TIMEOUT_MS", "cog.tunnel.visitor_header_timeout", "10s", dur],
    ["DEFAULT_VISITOR_HEADER_MAX_BYTES", "cog.tunnel.visitor_header_max_bytes", "4KiB", bytes],
    ["DEFAULT_COG_DATA_DIR", "cog.data_dir", "/var/lib/capsul/cog", same],
    ["DEFAULT_PROXY_PROTOCOL", "cog.routes[].proxy_protocol", "none", same],
    ["DEFAULT_RECONNECT_MIN_DELAY_MS", "cog.reconnect.min_delay", "500ms", dur],
    ["DEFAULT_RECONNECT_MAX_DELAY_MS", "cog.reconnect.max_delay", "30s", dur],
    ["DEFAULT_ENDPOINT_GONE_TIMEOUT_MS", "cog.reconnect.endpoint_gone_timeout", "30s", dur],
    ["DEFAULT_ENDPOINT_HEARTBEAT_INTERVAL_MS", "hub.endpoint.heartbeat_interval", "2s", dur],
    ["DEFAULT_ENDPOINT_TIMEOUT_MS", "hub.endpoint.timeout", "10s", dur],
    ["DEFAULT_TARGET_DIAL_TIMEOUT_MS", "cog.target_dial_timeout", "5s", dur],
    ["DEFAULT_LOG_LEVEL", "log.level", "info", same],
    ["DEFAULT_LOG_FORMAT", "log.format", "auto", same],
    ["DEFAULT_ACCESS_LOG", "hub.access_log", "false", bool],
    ["DEFAULT_SHUTDOWN_GRACE_MS", "hub.shutdown_grace", "30s", dur],
    ["DEFAULT_HUB_WORKERS", "hub.workers", "1", int],
    ["DEFAULT_WORKER_RESTART_MIN_DELAY_MS", "hub.worker.restart_min_delay", "200ms", dur],
    ["DEFAULT_WORKER_RESTART_MAX_DELAY_MS", "hub.worker.restart_max_delay", "10s", dur],
    ["DEFAULT_WORKER_STATS_INTERVAL_MS", "hub.worker.stats_interval", "1s", dur],
    ["DEFAULT_WORKER_WARMUP_MS", "hub.worker.warmup", "10s", dur],
    ["DEFAULT_WORKER_HANDOFF_WAIT_MS", "hub.worker.handoff_wait", "5s", dur],
  ];
  for (const [name, path, text, read] of table) {
    t.equal(documentedDefault(path), text, `${path}: capsul.schema.json documents default ${text}`);
    t.equal(C[name], read(text), `${name} = ${text}`);
  }
  // One constant serves two keys: cog.splice_queue has hub.limits.splice_queue's default, and so does cog.shutdown_grace.
  t.equal(documentedDefault("cog.shutdown_grace"), "30s");
  t.equal(documentedDefault("cog.splice_queue"), "256KiB");
  // cog.admin's keys have hub.admin's defaults.
  t.equal(documentedDefault("cog.admin.request_timeout"), "10s");
  t.equal(documentedDefault("cog.admin.max_connections"), "64");
  // Each exported default is in the table, so a new one cannot skip this check.
  const exported = Object.keys(C).filter((k) => k.startsWith("DEFAULT_")).sort();
  t.same(exported, table.map(([name]) => name).sort());
  t.ok(exported.length > 0);
});

t.test("the HTTPS keys (config/acme.ts): defaults are the ones capsul.schema.json documents, routes read their TLS keys", async (t) => {
  const same = (s: string) => s;
  const dur = (s: string) => parseDurationMs(s);
  const bytes = (s: string) => parseSizeBytes(s);
  const table: [keyof typeof A, string, string, (s: string) => unknown][] = [
    ["DEFAULT_ACME_DIRECTORY", "cog.acme.directory_url", "letsencrypt", same],
    ["DEFAULT_ACME_RENEW_AT_RATIO", "cog.acme.renew_at", String(2 / 3), Number],
    ["DEFAULT_ACME_RETRY_MIN_DELAY_MS", "cog.acme.retry_min_delay", "5m", dur],
    ["DEFAULT_ACME_RETRY_MAX_DELAY_MS", "cog.acme.retry_max_delay", "12h", dur],
    ["DEFAULT_ACME_REQUEST_TIMEOUT_MS", "cog.acme.request_timeout", "30s", dur],
    ["DEFAULT_ACME_ORDER_TIMEOUT_MS", "cog.acme.order_timeout", "5m", dur],
    ["DEFAULT_ACME_POLL_INTERVAL_MS", "cog.acme.poll_interval", "1s", dur],
    ["DEFAULT_TERMINATE_HANDSHAKE_TIMEOUT_MS", "cog.terminate.handshake_timeout", "10s", dur],
    ["DEFAULT_TERMINATE_CLIENT_HELLO_MAX_BYTES", "cog.terminate.client_hello_max_bytes", "16409B", bytes],
    ["DEFAULT_TERMINATE_HTTP_HEADER_MAX_BYTES", "cog.terminate.http_header_max_bytes", "16KiB", bytes],
    ["DEFAULT_TERMINATE_HTTP_KEEPALIVE_TIMEOUT_MS", "cog.terminate.http_keepalive_timeout", "5s", dur],
    ["DEFAULT_ROUTE_CHALLENGE", "cog.routes[].challenge", "http-01", same],
  ];
  for (const [name, path, text, read] of table) {
    t.equal(documentedDefault(path), text, `${path}: capsul.schema.json documents default ${text}`);
    t.equal(A[name], read(text), `${name}`);
  }
  // hsts: off by default; `true` means DEFAULT_HSTS_MAX_AGE_SEC, which its description states.
  t.equal(documentedDefault("cog.routes[].hsts"), "false");
  t.match(schemaNode("cog.routes[].hsts")?.description ?? "", /true \(365d\)/);
  t.equal(A.DEFAULT_HSTS_MAX_AGE_SEC, dur("365d") / 1000);
  const exported = Object.keys(A).filter((k) => k.startsWith("DEFAULT_")).sort();
  t.same(exported, [...table.map(([name]) => name), "DEFAULT_HSTS_MAX_AGE_SEC"].sort(), "every default of config/acme.ts is checked");

  const route = (extra: Record<string, unknown>) =>
    parseConfig({ cog: { routes: [{ name: "w", kind: "tls", hostname: "w.example.org", target: "127.0.0.1:80", ...extra }] } }).cog!.routes[0]!;
  t.equal(route({}).terminate, undefined, "passthrough by default: no terminate");
  t.equal(route({ tls: "passthrough" }).terminate, undefined);
  t.same(route({ tls: "terminate" }).terminate, { challenge: "http-01", redirectHttp: false, hstsMaxAgeSec: 0 });
  t.equal(route({ tls: "terminate", hsts: true }).terminate!.hstsMaxAgeSec, 31_536_000, "hsts: true is a year");
  t.equal(route({ tls: "terminate", hsts: "30d" }).terminate!.hstsMaxAgeSec, 2_592_000);
  t.equal(route({ tls: "terminate", hsts: false }).terminate!.hstsMaxAgeSec, 0);
  t.throws(() => route({ tls: "terminate", hsts: "500ms" }), new ConfigError("must be at least 1s (or false to turn HSTS off)", "cog.routes[0].hsts"));
  t.equal(parseConfig({ cog: { acme: { directory_url: "letsencrypt-staging" } } }).cog!.acme.directoryUrl, A.LETSENCRYPT_STAGING_DIRECTORY_URL);
  t.equal(parseConfig({ cog: { acme: { ca_bundle: "pebble.pem" } } }, { baseDir: "/etc/capsul" }).cog!.acme.caBundle, "/etc/capsul/pebble.pem",
    "a relative ca_bundle is resolved against the file's directory");
});

t.test("hub.store: sqlite or a postgres:// URL, never with its password in it or in an error", async (t) => {
  const hub = (extra: Record<string, unknown>) => parseConfig({ hub: { domain: "hub.example.net", data_dir: "/srv/hub", ...extra } }).hub!.store;
  t.equal(hub({}).kind, "sqlite");
  t.equal(hub({ store: "sqlite" }).kind, "sqlite");
  const pg = hub({ store: "postgres://capsul@[::1]:6543/hubstate?sslmode=verify-full&sslrootcert=ca.pem", store_password_file: "pw", store_pool_size: 4, store_connect_timeout: "3s" });
  t.strictSame(pg, {
    kind: "postgres",
    postgres: { host: "::1", port: 6543, user: "capsul", database: "hubstate", sslMode: "verify-full", sslRootCert: resolve("ca.pem") },
    passwordFile: resolve("pw"), poolSize: 4, connectTimeoutMs: 3000, busyTimeoutMs: 5000,
  });
  // Relative files are resolved against the configuration's directory (here: the working directory).
  t.equal(pg.postgres!.sslRootCert, resolve("ca.pem"));
  t.equal(pg.passwordFile, resolve("pw"));
  const socket = hub({ store: "postgresql://hub@/?host=/run/postgresql" }).postgres!;
  t.same([socket.host, socket.port, socket.user, socket.database, socket.sslMode], ["/run/postgresql", 5432, "hub", "hub", "disable"], "a unix socket directory; the database defaults to the user");

  for (const bad of ["postgres://u:sekrit@h/db", "postgres://u:sekrit@h/db?foo=sekrit", "postgress://u:sekrit@h/db", "postgres://:sekrit@h/db"]) {
    const err = errorOf(() => hub({ store: bad }));
    t.equal(err.path, "hub.store", bad);
    t.notMatch(err.message, /sekrit/, `${bad}: the password is not echoed: ${err.message}`);
  }
  t.match(errorOf(() => hub({ store: "postgres://capsul@/db?host=relative/dir" })).message, /\?host= must be the absolute path/);
  t.match(errorOf(() => hub({ store: "postgres://capsul@h/db?sslrootcert=ca.pem" })).message, /sslrootcert needs sslmode=verify-full/);
  t.match(errorOf(() => hub({ store: "postgres://capsul@h/db", store_connect_timeout: "0s" })).message, /^hub\.store_connect_timeout: must be greater than 0/);
  t.match(errorOf(() => hub({ store_busy_timeout: "soon" })).message, /^hub\.store_busy_timeout: /);
});

t.test("hub.domains (config/domains.ts): defaults are the ones capsul.schema.json documents; a resolver is an address", async (t) => {
  const table: [keyof typeof D, string, unknown][] = [
    ["DEFAULT_DOMAINS_ENABLED", "enabled", true],
    ["DEFAULT_DOMAINS_RESOLVER", "resolver", "system"],
    ["DEFAULT_DOMAINS_LOOKUP_TIMEOUT_MS", "lookup_timeout", parseDurationMs("5s")],
    ["DEFAULT_DOMAINS_PENDING_INTERVAL_MS", "pending_interval", parseDurationMs("30s")],
    ["DEFAULT_DOMAINS_RECHECK_INTERVAL_MS", "recheck_interval", parseDurationMs("10m")],
    ["DEFAULT_DOMAINS_ERROR_RETRY_INTERVAL_MS", "error_retry_interval", parseDurationMs("60s")],
    ["DEFAULT_DOMAINS_MAX_CLAIMS_PER_COG", "max_claims_per_cog", 100],
    ["DEFAULT_DOMAINS_MISSING_BEFORE_WITHDRAW", "missing_before_withdraw", 3],
  ];
  for (const [name, key, value] of table) {
    t.equal(D[name], value, name);
    const text = documentedDefault(`hub.domains.${key}`);
    t.ok(text, `hub.domains.${key} documents its default`);
    t.equal(key === "max_claims_per_cog" || key === "missing_before_withdraw" ? Number(text) : typeof value === "number" ? parseDurationMs(text) : typeof value === "boolean" ? text === "true" : text, value, `${key}: the schema says ${text}`);
  }
  t.same(Object.keys(D).filter((k) => k.startsWith("DEFAULT_")).sort(), table.map(([n]) => n).sort(), "every default is in the table");
  const d = parseConfig({ hub: { domain: "hub.example.net" } }).hub!.domains;
  t.same(d, { enabled: true, resolver: null, lookupTimeoutMs: 5000, pendingIntervalMs: 30_000, recheckIntervalMs: 600_000, errorRetryIntervalMs: 60_000, maxClaimsPerCog: 100, missingBeforeWithdraw: 3 });
  t.equal(errorOf(() => parseConfig({ hub: { domain: "hub.example.net", domains: { missing_before_withdraw: 0 } } })).message, "hub.domains.missing_before_withdraw: out of range (1-100): 0");
  t.equal(errorOf(() => parseConfig({ hub: { domain: "hub.example.net", domains: { missing_before_withdraw: "often" } } })).path, "hub.domains.missing_before_withdraw");
  t.equal(errorOf(() => parseConfig({ hub: { domain: "hub.example.net", domains: { max_claims_per_cog: 0 } } })).message, "hub.domains.max_claims_per_cog: out of range (1-100000): 0");
  t.same(parseConfig({ hub: { domain: "hub.example.net", domains: { resolver: "[::1]:5353" } } }).hub!.domains.resolver, { host: "::1", port: 5353 });
  t.equal(errorOf(() => parseConfig({ hub: { domain: "hub.example.net", domains: { resolver: ":53" } } })).message,
    'hub.domains.resolver: expected system or the IP:PORT of a DNS resolver, got ":53"');
  t.equal(errorOf(() => parseConfig({ hub: { domain: "hub.example.net", domains: { pending_interval: "30 parsecs" } } })).path, "hub.domains.pending_interval");
});

t.test("hub.endpoint and cog.reconnect.endpoint_gone_timeout: read, defaulted, and bad values named", async (t) => {
  t.equal(defaultEndpointName("Web-1.Example.NET"), "web-1.example.net");
  t.equal(defaultEndpointName("my_box"), "my-box");
  t.equal(defaultEndpointName("_"), "hub", "nothing usable left: a fixed name");
  const ep = parseConfig({ hub: { domain: "hub.example.net", endpoint: {
    name: "vps-2", advertise: "198.51.100.7:7443", heartbeat_interval: "1s", timeout: "5s",
  } } }).hub!.endpoint;
  t.strictSame(ep, { name: "vps-2", advertise: { host: "198.51.100.7", port: 7443 }, serverName: "hub.example.net", heartbeatIntervalMs: 1000, timeoutMs: 5000 },
    "an IP address advertised: the hub's domain is the server name");
  const named = parseConfig({ hub: { domain: "hub.example.net", public_tunnel_address: "t2.example.net:443", endpoint: { server_name: "W1.T2.example.net" } } }).hub!.endpoint;
  t.same([named.advertise, named.serverName], [{ host: "t2.example.net", port: 443 }, "w1.t2.example.net"], "public_tunnel_address is the default; the server name is normalized");
  t.same(parseConfig({ hub: { domain: "h.example", listen: { tunnel: "127.0.0.1:0" } } }).hub!.endpoint.advertise, { host: "h.example", port: 0 },
    "port 0 stands for the bound tunnel port");
  t.equal(parseConfig({ cog: { reconnect: { endpoint_gone_timeout: "2m" } } }).cog!.reconnect.endpointGoneTimeoutMs, 120_000);
  const bad: [unknown, string][] = [
    [{ hub: { domain: "h.example", endpoint: { name: "Hub A" } } }, 'hub.endpoint.name: not an endpoint name (a-z or 0-9 first, then a-z, 0-9, "." or "-", at most 63): "Hub A"'],
    [{ hub: { domain: "h.example", endpoint: { advertise: "nowhere" } } }, 'hub.endpoint.advertise: not host:port (missing :port): "nowhere"'],
    [{ hub: { domain: "h.example", endpoint: { advertise: ":7443" } } }, "hub.endpoint.advertise: must name a host cogs can dial, not 0.0.0.0"],
    [{ hub: { domain: "h.example", endpoint: { server_name: "10.0.0.1" } } }, 'hub.endpoint.server_name: not a DNS name: "10.0.0.1"'],
    [{ hub: { domain: "h.example", endpoint: { heartbeat_interval: "0s" } } }, "hub.endpoint.heartbeat_interval: must be greater than 0"],
    [{ hub: { domain: "h.example", endpoint: { heartbeat_interval: "5s", timeout: "9s" } } }, "hub.endpoint.timeout: must be at least twice heartbeat_interval (10s), got 9s"],
    [{ hub: { domain: "h.example", endpoint: { ttl: "5s" } } }, "hub.endpoint.ttl"],
    [{ cog: { reconnect: { endpoint_gone_timeout: "never" } } }, 'cog.reconnect.endpoint_gone_timeout: not a duration (use e.g. 500ms, 5s, 2m, 1h): "never"'],
  ];
  for (const [raw, message] of bad) {
    let err: unknown = null;
    try { parseConfig(raw); } catch (e) { err = e; }
    t.ok(err instanceof ConfigError, `${message}: a ConfigError`);
    t.match((err as Error).message, new RegExp(`^${message.replace(/[.*+?^${}()|[\]\\]/g, "\\$&")}`), message);
  }
});

t.test("hub.workers and hub.worker: read, auto, defaulted, and bad values named", async (t) => {
  const hub = (extra: Record<string, unknown>) => parseConfig({ hub: { domain: "h.example", ...extra } }).hub!;
  t.equal(hub({}).workers, 1, "default: one process");
  t.equal(hub({ workers: 4 }).workers, 4);
  t.equal(hub({ workers: "auto" }).workers, Math.min(availableParallelism(), 256), "auto: one per core");
  t.same(hub({ worker: { restart_min_delay: "50ms", restart_max_delay: "2s", stats_interval: "250ms", warmup: "3s", handoff_wait: "2s" } }).worker,
    { restartMinDelayMs: 50, restartMaxDelayMs: 2000, statsIntervalMs: 250, warmupMs: 3000, handoffWaitMs: 2000 });
  t.equal(hub({ worker: { warmup: "0s" } }).worker.warmupMs, 0, "warmup 0: a restarted worker takes visitors at once");
  const bad: [Record<string, unknown>, string][] = [
    [{ workers: 0 }, "hub.workers: must be a whole number from 1 to 256, or auto (one per core), got 0"],
    [{ workers: 1.5 }, "hub.workers: must be a whole number from 1 to 256, or auto (one per core), got 1.5"],
    [{ workers: "all" }, 'hub.workers: must be a whole number from 1 to 256, or auto (one per core), got "all"'],
    [{ workers: 257 }, "hub.workers: must be a whole number from 1 to 256"],
    [{ worker: { restart_min_delay: "0s" } }, "hub.worker.restart_min_delay: must be greater than 0"],
    [{ worker: { restart_min_delay: "5s", restart_max_delay: "1s" } }, "hub.worker.restart_max_delay: must be at least restart_min_delay (5s), got 1s"],
    [{ worker: { stats_interval: "often" } }, 'hub.worker.stats_interval: not a duration (use e.g. 500ms, 5s, 2m, 1h): "often"'],
    [{ worker: { warmup: "-1s" } }, 'hub.worker.warmup: not a duration (use e.g. 500ms, 5s, 2m, 1h): "-1s"'],
    [{ worker: { handoff_wait: "soon" } }, 'hub.worker.handoff_wait: not a duration (use e.g. 500ms, 5s, 2m, 1h): "soon"'],
    [{ worker: { restarts: 3 } }, "hub.worker.restarts"],
  ];
  for (const [extra, message] of bad) {
    let err: unknown = null;
    try { hub(extra); } catch (e) { err = e; }
    t.ok(err instanceof ConfigError, `${message}: a ConfigError`);
    t.match((err as Error).message, new RegExp(`^${message.replace(/[.*+?^${}()|[\]\\]/g, "\\$&")}`), message);
  }
});

t.test("hub.admin.tls and hub.acme: the admin listener's certificate; bad values are one line naming the key", async (t) => {
  const hub = (admin: Record<string, unknown>, more: Record<string, unknown> = {}) => parseConfig({ hub: { domain: "hub.example.net", admin, ...more } }).hub!;
  const acme = hub({ tls: "acme", hostname: "Admin.Hub.Example.net", challenge: "tls-alpn-01" }, { acme: { directory_url: "letsencrypt-staging", retry_min_delay: "1m" } });
  t.equal(acme.admin.tls, "acme");
  t.equal(acme.admin.hostname, "admin.hub.example.net", "the hostname is normalised");
  t.equal(acme.admin.challenge, "tls-alpn-01");
  t.equal(acme.acme.directoryUrl, A.LETSENCRYPT_STAGING_DIRECTORY_URL, "hub.acme reads cog.acme's shorthands");
  t.equal(acme.acme.retryMinDelayMs, 60_000);
  const files = hub({ tls: "files", cert_file: "admin.crt", key_file: "admin.key" });
  t.match(files.admin.certFile, /admin\.crt$/);
  t.match(files.admin.keyFile, /admin\.key$/);
  // With workers: worker 1 orders and shares (gateway/admintls.ts); accepted.
  t.equal(hub({ tls: "acme", hostname: "admin.hub.example.net" }, { workers: 2 }).workers, 2);

  const bad: [Record<string, unknown>, Record<string, unknown>, string, string][] = [
    [{ tls: "yes" }, {}, "hub.admin.tls", "expected one of off, acme, files"],
    [{ tls: "acme" }, {}, "hub.admin.hostname", "required with tls: acme"],
    [{ tls: "acme", hostname: "*.hub.example.net" }, {}, "hub.admin.hostname", "not a hostname"],
    [{ tls: "acme", hostname: "a.example", challenge: "dns-01" }, {}, "hub.admin.challenge", "expected one of http-01, tls-alpn-01"],
    [{ tls: "files", key_file: "k" }, {}, "hub.admin.cert_file", "required with tls: files"],
    [{ tls: "files", cert_file: "c" }, {}, "hub.admin.key_file", "required with tls: files"],
    [{ cert_file: "c" }, {}, "hub.admin.cert_file", "only allowed with tls: files"],
    [{ tls: "acme", hostname: "a.example" }, { listen: { admin: "off" } }, "hub.admin.tls", "needs hub.listen.admin"],
    [{ tls: "acme", hostname: "a.example" }, { listen: { http: "off" } }, "hub.admin.challenge", "http-01 is answered on hub.listen.http, which is off"],
    [{ tls: "acme", hostname: "a.example", challenge: "tls-alpn-01" }, { listen: { tls: "off" } }, "hub.admin.challenge", "tls-alpn-01 is answered on hub.listen.tls, which is off"],
    [{}, { acme: { directory_url: "http://ca.example/dir" } }, "hub.acme.directory_url", "must be an https:// URL"],
    [{}, { acme: { retry_min_delay: "2h", retry_max_delay: "1h" } }, "hub.acme.retry_min_delay", "must not exceed retry_max_delay"],
    [{}, { acme: { renew_at: 2 } }, "hub.acme.renew_at", "out of range"],
  ];
  for (const [admin, more, key, message] of bad) {
    const err = errorOf(() => hub(admin, more));
    t.ok(err.message.startsWith(`${key}: `), `${JSON.stringify({ admin, ...more })}: ${err.message}`);
    t.ok(err.message.includes(message), `says: ${message}`);
    t.notMatch(err.message, "\n", "one line");
  }
});
