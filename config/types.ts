/**
 * The frozen, fully-defaulted shape of capsul.yaml after parseConfig(): what the code uses.
 * Every duration is in milliseconds, every size in bytes; names carry units.
 * Each key's default and bounds are stated once, in the schema that builds these objects
 * (config/hub.ts, cog.ts, limits.ts, quotas.ts, tunnel.ts, acme.ts, store.ts; the
 * provisioner's in provisioner/config.ts), and from there reach capsul.schema.json; the
 * comments here say what a value means. Every key is documented in capsul.yaml.example.
 */

export type RouteKind = "tls" | "http" | "tcp";
export type ProxyProtocol = "none" | "v1" | "v2";

/** host:port as parsed; host may be an IPv4/IPv6 literal or a name. */
export interface HostPort { host: string; port: number }

/** Inclusive TCP port range. */
export interface PortRange { from: number; to: number }

export interface HubCogGrant {
  /** Cog name (matches the CN of its enrolled certificate). ^[a-z][a-z0-9-]{0,38}$ */
  name: string;
  /** Hostname patterns this cog may announce: exact names or "*.suffix" wildcards, lower-case A-labels. */
  hostnames: string[];
  /** TCP port ranges this cog may be assigned (must lie inside hub.listen.tcp_ports). */
  tcpPorts: PortRange[];
  /** This cog's visitor limits: hub.cogs[].limits over the hub-wide ones of hub.limits. */
  limits: CogLimits;
}

/**
 * Limits on one cog's visitors (gateway/quotas.ts). hub.limits sets them for every cog
 * (max_streams_per_cog, max_connections_per_route, cog_bandwidth, cog_bandwidth_burst);
 * hub.cogs[].limits (max_streams, max_connections_per_route, bandwidth, bandwidth_burst)
 * for one. The defaults are hub.limits' (config/quotas.ts).
 */
export interface CogLimits {
  /** Visitor streams the cog's tunnel carries at once; a visitor over it is refused as if the cog were offline (HTTP: 503). */
  maxStreams: number;
  /** Visitor connections open at once to one route of the cog (one hostname's tls or http route, one tcp port); refused the same way. */
  maxConnectionsPerRoute: number;
  /** Bytes per second the cog's visitors may move, each direction on its own, all visitors together (0 = unlimited). */
  bandwidthBytesPerSec: number;
  /** Bytes they may move at once before that rate applies: the token bucket's size (0 when bandwidth is 0). */
  bandwidthBurstBytes: number;
}

export interface HubLimits {
  /** Deadline to receive a whole ClientHello. */
  clientHelloTimeoutMs: number;
  /** Cap on buffered ClientHello bytes, record headers included. */
  clientHelloMaxBytes: number;
  /** Deadline to receive the request line + headers on the HTTP listener. */
  httpHeaderTimeoutMs: number;
  /** Cap on buffered HTTP request head bytes. */
  httpHeaderMaxBytes: number;
  /** How long a visitor is held while its cog reconnects (0 disables). */
  graceMs: number;
  /** Max concurrent visitor connections hub-wide. */
  maxVisitors: number;
  /**
   * Connections the kernel queues on each public listener (TLS, HTTP, TCP ports) until the hub
   * accepts them; past it the kernel drops new ones, whoever sent them, until a SYN-ACK retry a
   * second later. Capped by the kernel at net.core.somaxconn (1 to 65535).
   */
  listenBacklog: number;
  /**
   * Max concurrent visitor connections from one source: an IPv4 address or an IPv6 /64
   * (at most maxVisitors). Raise it when visitors arrive through a proxy or CGNAT.
   */
  maxVisitorsPerIp: number;
  /**
   * Of those, max connections that have not yet sent a whole ClientHello or HTTP request
   * head (at most maxVisitorsPerIp).
   */
  maxUnpeekedPerIp: number;
  /**
   * Closes a visitor connection after this long without a byte either way, a stalled reader
   * included; checked 8 times per period, so within 1 to 1.125 times this (0 = never; at most 2^31-1 ms, Node's largest timer).
   */
  idleTimeoutMs: number;
  /** Bytes waiting in a visitor's or its tunnel stream's write queue before the hub stops reading the other side. */
  spliceQueueBytes: number;
  /**
   * Bytes all visitors together may make the hub buffer: stream receive windows above the
   * 256 KiB floor are reserved from it, and past it the visitors that hold bytes without
   * draining are cut (gateway/budget.ts) (at least one visitor's floor
   * window and splice queues, 960KiB with the default splice_queue).
   */
  bufferBudgetBytes: number;
  /** The same, for the visitors of one cog (at least one visitor's share, at most bufferBudgetBytes). */
  cogBufferBudgetBytes: number;
  /** How often the hub measures buffered bytes while its visitors could exceed a budget (1ms to 2^31-1 ms). */
  bufferCheckIntervalMs: number;
  /** A refused or cut visitor is logged at most once per source per this (0 logs every one). */
  refusalLogIntervalMs: number;
  /**
   * Visitor streams one cog's tunnel carries at once; past it its visitors are refused as if it
   * were offline (HTTP: 503), so one busy or attacked cog cannot take every slot (at most maxVisitors).
   */
  maxStreamsPerCog: number;
  /**
   * Visitor connections open at once to one route (one hostname's tls or http route, one tcp
   * port), refused the same way: one capsul's flood leaves its cog's others room (at most maxStreamsPerCog).
   */
  maxConnectionsPerRoute: number;
  /**
   * Bytes per second each cog's visitors may move, each direction on its own, shared by all the
   * cog's visitors: a token bucket (at least 1KiB/s).
   */
  cogBandwidthBytesPerSec: number;
  /** That bucket's size: bytes that pass at full speed before the rate applies (0 when unlimited). */
  cogBandwidthBurstBytes: number;
}

export interface TunnelTuning {
  /** yamux max per-stream receive window. */
  maxStreamWindowBytes: number;
  /** Ping interval on an idle tunnel. */
  keepaliveIntervalMs: number;
  /** No ping answer / no bytes within this → the peer is dead (must be > keepaliveIntervalMs). */
  keepaliveTimeoutMs: number;
  /** TLS handshake deadline on the tunnel listener / when dialing. */
  handshakeTimeoutMs: number;
  /**
   * Ceiling of window auto-tuning: a stream whose reader drains a whole window within 4 round
   * trips has it doubled, up to this (at least maxStreamWindowBytes, at most 4GiB-1 B; equal to it disables growth).
   */
  maxAutoWindowBytes: number;
  /** Largest Data frame payload we send, so streams interleave fairly (1 B to 4GiB-1 B). */
  maxFramePayloadBytes: number;
  /** Frame bytes gathered in one turn of the event loop before they go to the connection early (at most 2GiB-1 B). */
  writeBatchMaxBytes: number;
  /** After a close or a protocol-error teardown, how long the peer has to close its side before the connection is destroyed (0 = at once). */
  closeLingerMs: number;
  /**
   * Control frames (pongs, credit, resets) queued while the connection does not drain; one more
   * ends the session as a peer that is not reading (1 to 2^31-1).
   */
  maxQueuedControlFrames: number;
}

/** hub.tunnel: the shared tuning plus what only the tunnel listener needs. */
export interface HubTunnelTuning extends TunnelTuning {
  /** After the TLS handshake, deadline for a new tunnel's first control message, hello or enroll. */
  controlHelloTimeoutMs: number;
  /**
   * How often the hub checks SQLite for cogs revoked by `capsul hub revoke`; a revoked cog's tunnel
   * is dropped within this. On PostgreSQL revokes are notified at once, and this is how often the
   * hub retries a lost notification connection.
   */
  revocationPollIntervalMs: number;
  /**
   * Tunnel connections not yet authenticated (from TCP accept through the TLS handshake until
   * a hello with a valid certificate or an enrollment is processed), hub-wide; more are closed
   * at once.
   */
  maxUnauthenticated: number;
  /** The same, per source address (an IPv6 source counts per /64); at most maxUnauthenticated. */
  maxUnauthenticatedPerIp: number;
  /** Control messages the hub acts on per tunnel and second (route sets applied, renewals); a token bucket's rate. */
  controlRatePerSec: number;
  /** The token bucket's size: control messages acted on at once before control_rate applies. */
  controlBurst: number;
  /**
   * Least time between two certificates for one cog over the tunnel: a renewal with a
   * certificate that was already renewed within this is refused (0 = no limit).
   */
  renewMinIntervalMs: number;
  /**
   * Listen backlog of the tunnel port: connections the kernel queues until the hub accepts
   * them, read at each bind (1 to 65535, capped by net.core.somaxconn).
   */
  listenBacklog: number;
  /**
   * A VM move (gateway/moves.ts): how long the hub waits for the source cog's move
   * header, then for the target cog's consent, before it drops the move.
   */
  moveAnswerTimeoutMs: number;
  /** VM moves one cog may have relayed through the hub at once, as source or target; more are refused (0 = no moves). */
  maxMoves: number;
  /** How long a cog may resume its TLS session with a ticket (from its last full handshake); at most sessionTicketRotationMs. */
  sessionTicketLifetimeMs: number;
  /** Age at which the shared session ticket key file is replaced (gateway/ticketkeys.ts). */
  sessionTicketRotationMs: number;
}

/** cog.tunnel: the shared tuning plus what only the dialing end needs. */
export interface CogTunnelTuning extends TunnelTuning {
  /** Deadline for the hub's welcome after the cog's hello; past it the cog redials. */
  welcomeTimeoutMs: number;
  /** Deadline for the hub's answer to `capsul cog enroll`, after the TLS handshake. */
  enrollTimeoutMs: number;
  /** Deadline for the visitor header at the start of each stream the hub opens. */
  visitorHeaderTimeoutMs: number;
  /** Cap on the visitor header's JSON (length prefix excluded); a bigger one is a protocol error. */
  visitorHeaderMaxBytes: number;
  /**
   * Visitor streams the hub opened that wait while the cog is not yet listening (between
   * tunnel setup and its stream handler); further ones are refused with RST (0 refuses them all). The hub has no such key: it takes each tunnel's control stream and
   * refuses any other stream a cog opens (gateway/tunnels.ts HUB_ACCEPT_BACKLOG).
   */
  acceptBacklog: number;
  /** While a tunnel is up, its TLS session ticket is fetched afresh once older than this (0 = never). */
  sessionRefreshMs: number;
}

/** hub.admin and cog.admin: limits of the admin listener (gateway/admin.ts, lib/adminhttp.ts). */
export interface AdminLimits {
  /** Deadline for one admin request, headers and body; past it the connection is closed. */
  requestTimeoutMs: number;
  /** Connections the admin listener holds at once; more are closed as they arrive. */
  maxConnections: number;
}

/** hub.admin: the admin listener's limits plus what only the hub's API and status page need. */
export interface HubAdmin extends AdminLimits {
  /** Largest admin API request body; a bigger one is answered 413. */
  maxRequestBodyBytes: number;
  /** How often the status page reloads itself, in whole seconds (at least 1s). */
  statusRefreshMs: number;
  /**
   * How long the list of cogs read from the state store is reused by /metrics, the JSON API and
   * the status page; 0 reads it for every request. Live state (online, streams,
   * bytes) is never cached; the admin API's own revoke and invite show at once.
   */
  cogsCacheMs: number;
  /** TLS on the admin listener: off (plain HTTP), acme (certificate from hub.acme for `hostname`), files (certFile + keyFile). */
  tls: AdminTlsMode;
  /** The name the admin certificate is for (tls: acme); also accepted as Host. */
  hostname: string | null;
  /** How the hub proves `hostname` to the CA (tls: acme), on its own public HTTP or TLS listener. */
  challenge: AcmeChallengeType;
  /** PEM certificate chain and its key (tls: files), read at start. */
  certFile: string | null;
  keyFile: string | null;
}

/** hub.admin.tls */
export type AdminTlsMode = "off" | "acme" | "files";

/** A PostgreSQL server and database, as the hub.store URL names them. */
export interface PostgresTarget {
  /** A host name or address, or a directory holding the server's unix socket (`?host=/dir`). */
  host: string;
  port: number;
  user: string;
  /** The database (the URL's path; the user's name when it has none). */
  database: string;
  /** `?sslmode=`: disable (plain TCP), require (TLS, any certificate), verify-full (TLS, certificate for the host). */
  sslMode: "disable" | "require" | "verify-full";
  /** `?sslrootcert=`: the CA file for verify-full. */
  sslRootCert: string | null;
}

/** Where the hub keeps its state: hub.store and its hub.store_* companions. */
export interface HubStoreConfig {
  /** sqlite: <data_dir>/hub.db, shared by the processes of one machine; postgres: a database shared by hubs. */
  kind: "sqlite" | "postgres";
  /** The server, from the hub.store URL; null with sqlite. Never holds a password. */
  postgres: PostgresTarget | null;
  /** File holding the PostgreSQL password. */
  passwordFile: string | null;
  /** PostgreSQL connections per hub process. */
  poolSize: number;
  /** Deadline to connect to PostgreSQL. */
  connectTimeoutMs: number;
  /** How long a SQLite write waits while another process holds the write lock. */
  busyTimeoutMs: number;
}

/** hub.domains: hostnames outside a cog's grants, proven by a DNS TXT record (config/domains.ts). */
export interface DomainsConfig {
  /** Let cogs announce hostnames outside their grants once DNS proves them. */
  enabled: boolean;
  /** The DNS resolver the hub asks for `_capsul-challenge.<name>` TXT records, IP:PORT; null asks the system's. */
  resolver: HostPort | null;
  /** Deadline for one TXT lookup; past it the proof keeps its state and is retried. */
  lookupTimeoutMs: number;
  /** How often an unproven (or lost) name of a connected cog is looked up again. */
  pendingIntervalMs: number;
  /** How often a proven name is looked up again; a record that is gone withdraws its routes. */
  recheckIntervalMs: number;
  /** After a lookup that got no answer (timeout, SERVFAIL), the next try comes this much later. */
  errorRetryIntervalMs: number;
  /** Names one cog may claim outside its grants, proven or not; a claim beyond it is refused. */
  maxClaimsPerCog: number;
  /** Lookups in a row that find a proven name's record missing before its routes are withdrawn. */
  missingBeforeWithdraw: number;
}

export interface HubConfig {
  /** Directory for the hub's CA, certificates and SQLite state. */
  dataDir: string;
  /** Where cogs, certificates, invites, grants, ports and revocations live. */
  store: HubStoreConfig;
  /** Public DNS name of the hub; used in invites and as the suffix of default grants "*.<cog>.<domain>". */
  domain: string;
  listen: {
    /** TLS passthrough listener (SNI), or null to disable. */
    tls: HostPort | null;
    /** Plain HTTP listener (Host header), or null to disable. */
    http: HostPort | null;
    /** The tunnel listener cogs dial (mTLS). */
    tunnel: HostPort;
    /** Address the raw TCP port listeners bind to. */
    tcpHost: string;
    /** The pool of TCP ports the hub may open for cogs' tcp routes. */
    tcpPorts: PortRange[];
    /**
     * Admin listener: /healthz, /metrics, the JSON admin API and the status page, or null when
     * disabled. Anything but loopback requires the bearer token in <dataDir>/admin-token.
     */
    admin: HostPort | null;
  };
  /** Address cogs use to reach the tunnel listener, as printed in invites. */
  publicTunnelAddress: string;
  /** Per-cog grants. A cog enrolled but not listed here gets the default grant only. */
  cogs: HubCogGrant[];
  /** Grant every cog "<cog>.<domain>" and "*.<cog>.<domain>". */
  defaultGrants: boolean;
  /** TCP ports a cog without tcp_ports grants may take from the pool. */
  defaultTcpPortsPerCog: number;
  /** Invite token lifetime. */
  inviteTtlMs: number;
  /** Lifetime of cog certificates the hub issues. */
  cogCertTtlMs: number;
  /** Custom domains by DNS proof. */
  domains: DomainsConfig;
  limits: HubLimits;
  tunnel: HubTunnelTuning;
  admin: HubAdmin;
  /** The ACME client of the admin listener's certificate (hub.admin.tls: acme); same keys as cog.acme. */
  acme: AcmeConfig;
  /**
   * On SIGTERM (or SIGINT) the hub stops accepting, sends GoAway to every cog and lets live
   * visitor connections finish for up to this long, then cuts the rest and exits 0
   * (0 cuts at once; at most 2^31-1 ms).
   */
  shutdownGraceMs: number;
  /** How this hub process registers itself in the store for cogs to dial (hub.endpoint). */
  endpoint: HubEndpointConfig;
  /**
   * The access log: one line per visitor connection when it ends (source,
   * listener, route, cog, bytes both ways, duration, outcome), at info level under the
   * component hub/access. Written once at close, never per chunk; a reload applies it to
   * new connections.
   */
  accessLog: boolean;
  /**
   * Hub worker processes on this machine (hub.workers: a number, or `auto` = the machine's
   * cores; 1 = one process, no primary). Above 1 a primary process starts that many
   * workers, each a full hub and its own endpoint (gateway/workers.ts).
   */
  workers: number;
  /** How the primary process looks after its workers (hub.worker); unused with workers: 1. */
  worker: HubWorkerConfig;
}

/** hub.worker: the primary's care of its workers (gateway/workers.ts). */
export interface HubWorkerConfig {
  /** First delay before a dead worker is started again; doubles per death in a row. */
  restartMinDelayMs: number;
  /** Longest such delay; a worker up this long resets it. */
  restartMaxDelayMs: number;
  /** How often each worker sends its visitor counters to the primary, which writes them to <data_dir>/hub-workers.json. */
  statsIntervalMs: number;
  /** Longest warm-up of a worker started again while another serves: its public listeners wait for its cogs (gateway/warmup.ts); 0: none. */
  warmupMs: number;
  /** How long a tunnel connection for a worker that is starting waits for it at the primary; 0: closed at once. */
  handoffWaitMs: number;
}

/**
 * hub.endpoint: one hub process as cogs see it (issue 12). Every hub sharing a
 * store registers one; a cog keeps a tunnel to each live one.
 */
export interface HubEndpointConfig {
  /** Unique among the hubs sharing the store (default: this machine's hostname, lower-cased). */
  name: string;
  /** The tunnel address cogs dial; port 0 means the tunnel listener's bound port. */
  advertise: HostPort;
  /** TLS server name (SNI) cogs send to this endpoint. */
  serverName: string;
  /** How often the hub stamps its endpoint row. */
  heartbeatIntervalMs: number;
  /** An endpoint not stamped for this long is gone: cogs are told, its tunnel rows are cleaned. */
  timeoutMs: number;
}

export interface CogRoute {
  /** Stable name, unique in this cog; TCP port assignments are keyed by it. ^[a-z][a-z0-9-]{0,38}$ */
  name: string;
  kind: RouteKind;
  /** For tls/http: hostname pattern (exact or "*.suffix"). */
  hostname?: string;
  /** For tcp: the hub port wanted (optional; otherwise the hub assigns one and keeps it). */
  port?: number;
  /** Where the cog sends the stream. */
  target: HostPort;
  /** PROXY protocol header written to the target first. */
  proxyProtocol: ProxyProtocol;
  /**
   * tls routes only: present when the route says `tls: terminate` (the cog obtains a
   * certificate by ACME, serves TLS itself and sends plaintext to `target`); absent
   * means passthrough, the default (the target holds its own certificate and key).
   */
  terminate?: RouteTermination;
}

/** ACME challenge types the cog can answer through the hub (RFC 8555 §8.3, RFC 8737). */
export type AcmeChallengeType = "http-01" | "tls-alpn-01";

/** What a `tls: terminate` route asks of the cog, besides its target. */
export interface RouteTermination {
  /** How the cog proves the hostname to the CA: http-01 through the hub's port 80, tls-alpn-01 through its SNI routing. */
  challenge: AcmeChallengeType;
  /** Answer plain-HTTP requests for the hostname with a 308 redirect to https:// instead of passing them to the target. */
  redirectHttp: boolean;
  /** Strict-Transport-Security max-age, in seconds, added to every HTTPS response; 0 = no HSTS header (`hsts: true` means 365d). */
  hstsMaxAgeSec: number;
}

/** cog.acme: the ACME client that gets certificates for `tls: terminate` routes. */
export interface AcmeConfig {
  /** ACME directory URL (https); the shorthands letsencrypt and letsencrypt-staging name Let's Encrypt's. */
  directoryUrl: string;
  /** PEM file of CA certificates trusted for the directory besides the system's, e.g. a test CA. */
  caBundle: string | null;
  /** Contact address registered with the account, for the CA's expiry notices. */
  email: string | null;
  /** Renew once this fraction of a certificate's lifetime has passed, less a random jitter of up to 5% of it. */
  renewAtRatio: number;
  /** First delay after a failed order; doubled per failure, with jitter. A longer Retry-After from the CA wins. */
  retryMinDelayMs: number;
  /** Cap of that backoff. */
  retryMaxDelayMs: number;
  /** Deadline for one HTTP request to the CA. */
  requestTimeoutMs: number;
  /** Deadline for one whole order: account, challenge, finalize, download. */
  orderTimeoutMs: number;
  /** First delay between polls of a pending challenge or order; acme-client doubles it up to 8 times this. */
  pollIntervalMs: number;
}

/** cog.terminate: limits of the TLS the cog terminates itself (`tls: terminate` routes). */
export interface TerminateConfig {
  /** Deadline for a visitor's ClientHello (or HTTP request head on the port-80 side) and TLS handshake. */
  handshakeTimeoutMs: number;
  /** Cap on a buffered ClientHello, record headers included; as hub.limits.client_hello_max_bytes. */
  clientHelloMaxBytes: number;
  /** Cap on a buffered HTTP request head on the port-80 side. */
  httpHeaderMaxBytes: number;
  /** With HSTS on, an idle kept-alive HTTPS connection is closed after this. */
  httpKeepAliveTimeoutMs: number;
}

export interface CogConfig {
  /** Directory for the cog's key, certificate and state. */
  dataDir: string;
  /** Hub tunnel address host:port; if absent, the one stored at enrollment is used. */
  hub: HostPort | null;
  routes: CogRoute[];
  reconnect: {
    /** First backoff delay. */
    minDelayMs: number;
    /** Cap of the exponential backoff. Jitter is ±25%. */
    maxDelayMs: number;
    /** A hub endpoint missing from the hub's list for this long, with no tunnel up, is no longer dialed. */
    endpointGoneTimeoutMs: number;
  };
  /** Deadline for dialing a route's target. */
  targetDialTimeoutMs: number;
  /** Bytes waiting in a target's or its tunnel stream's write queue before the cog stops reading the other side. */
  spliceQueueBytes: number;
  tunnel: CogTunnelTuning;
  listen: {
    /**
     * The cog's /healthz and /metrics, or null when disabled (by default when the provisioner is
     * configured: its API listener serves them then). Anything but loopback requires the bearer
     * token in <dataDir>/admin-token.
     */
    admin: HostPort | null;
  };
  admin: AdminLimits;
  /** Settings for the VM provisioner, or null when disabled (issue 4). */
  provisioner: ProvisionerConfig | null;
  /** The ACME client for `tls: terminate` routes (always present; idle while no route terminates). */
  acme: AcmeConfig;
  /** Limits of TLS termination on the cog. */
  terminate: TerminateConfig;
  /**
   * On SIGTERM (or SIGINT) the cog sends GoAway to the hub and lets its visitor streams
   * finish for up to this long, then closes the tunnel; VMs keep running (0 cuts at once; at most 2^31-1 ms).
   */
  shutdownGraceMs: number;
}

/** One VM size (issue 4). IO limits are per second; 0 means unlimited. */
export interface ProvisionerSize {
  /** Virtual CPUs. */
  vcpus: number;
  /** Guest memory in bytes (QEMU -m, rounded down to whole MiB). */
  memoryBytes: number;
  /** Virtual size of the VM's qcow2 disk in bytes. */
  diskBytes: number;
  /** Disk operations per second, reads + writes (QEMU throttling.iops-total; 0 = unlimited). */
  diskIopsPerSec: number;
  /** Disk bytes per second, reads + writes (QEMU throttling.bps-total; 0 = unlimited). */
  diskBytesPerSec: number;
}

export interface ProvisionerConfig {
  /** API listen address (default 127.0.0.1:7480). Anything but loopback requires the bearer token in <dataDir>/api-token. */
  listen: HostPort;
  /** Directory for the SQLite database, image catalogue and VM run dirs (default /var/lib/capsul/provisioner). At most 60 bytes long: QMP unix socket paths live under it. */
  dataDir: string;
  /** Accelerator: "kvm", "tcg", or "auto" (default): probe KVM once by booting a kernel under it, fall back to TCG if it hangs. */
  accel: "auto" | "kvm" | "tcg";
  /** Sizes offered, by name: capsul's table (f1-s … f1-xxx, see DESIGN.md) merged with overrides/additions from capsul.yaml. */
  sizes: Record<string, ProvisionerSize>;
  /** Host memory the provisioner plans with (default null = the machine's total memory). */
  hostMemoryBytes: number | null;
  /** Refuse to start a VM when the memory of all VMs that should run would exceed hostMemory × this ratio (default 1.0). */
  memoryOvercommitRatio: number;
  /**
   * Memory counted for each such VM on top of its size: QEMU's own (default 128MiB; a
   * 160 MiB guest's QEMU held ~300 MB RSS under TCG on the test machine, less under KVM).
   */
  vmMemoryOverheadBytes: number;
  /** QEMU system emulator (default qemu-system-x86_64, looked up on PATH). */
  qemuBinary: string;
  /** qemu-img (default qemu-img). */
  qemuImgBinary: string;
  /** genisoimage, builds the cloud-init NoCloud seed (default genisoimage). */
  genisoimageBinary: string;
  /**
   * Under KVM, from QEMU start (or a guest reset) until the guest answers on its SSH
   * port; past it the VM stays `starting` with a "slow, still booting" message and
   * is watched on while QEMU runs (default 180s).
   */
  bootTimeoutMs: number;
  /**
   * The same under TCG, where a cloud image takes minutes: Debian 12 answered SSH
   * after 78–134 s on a quiet 2-core machine and 142–247 s under load (default 10m).
   */
  bootTimeoutTcgMs: number;
  /** From system_powerdown (ACPI power button) until QEMU has exited; then quit, then SIGKILL (default 60s). */
  stopTimeoutMs: number;
  /**
   * From ctrl-alt-delete until the guest resets (a clean reboot); then a hard
   * system_reset (default 120s; Debian 12 under TCG reset after 13 s).
   */
  rebootTimeoutMs: number;
  /** Deadline for `qemu-system … -daemonize` to return, i.e. for QEMU to initialise (default 30s). */
  launchTimeoutMs: number;
  /** Deadline for one QMP command (default 10s). */
  qmpTimeoutMs: number;
  /** accel auto: how long a probe kernel may take to print its banner under KVM before KVM is declared unusable (default 15s). */
  kvmProbeTimeoutMs: number;
  /** Deadline for one qemu-img or genisoimage run (default 120s; conversions of big images take a while). */
  toolTimeoutMs: number;
  /** Largest request body the API accepts (default 64KiB). */
  maxRequestBodyBytes: number;
  /** Largest image an import may download or copy (default 20GiB). */
  maxImageBytes: number;
  /** Tail of the serial console returned by GET /v1/vms/:name/console (default 64KiB). */
  consoleTailBytes: number;
  /** Most VMs this cog holds, whatever their state (default 64). */
  maxVms: number;
  /** Most SSH keys per VM (default 32). */
  maxSshKeys: number;
  /** Most custom domains per VM (default 16). */
  maxDomainsPerVm: number;
  /** After QMP quit (the stop deadline passed), how long before SIGKILL (default 5s). */
  quitTimeoutMs: number;
  /** A VM whose QEMU dies unexpectedly is restarted at most this often per crashWindowMs, then left in error (default 3; 0 never restarts). */
  crashRestarts: number;
  /** The window crashRestarts counts in (default 10m). */
  crashWindowMs: number;
  /**
   * Local image sources (POST /v1/images "source", "kernel", "initrd" paths) must
   * lie in this directory after resolving symlinks and ".." (default <dataDir>/import,
   * created 0700). Keep it writable only by the operator.
   */
  importDir: string;
  /**
   * CIDR blocks an image URL may reach although they are loopback, private (RFC 1918,
   * CGNAT, ULA), link-local, unspecified or multicast (default none: such targets,
   * also after a redirect, are refused). For a mirror on the LAN; tests use 127.0.0.0/8.
   */
  importAllowedCidrs: string[];
  /** Redirects an image download follows, each hop's address checked (default 5). */
  importMaxRedirects: number;
  /** An image download whose server sends nothing for this long is abandoned (default 60s). */
  downloadIdleTimeoutMs: number;
  /** Address space `qemu-img info` may use on an imported qcow2 (prlimit --as; default 1GiB). */
  imageInspectMemoryBytes: number;
  /** CPU time `qemu-img info` may use on an imported qcow2 (prlimit --cpu, whole seconds; default 30s). */
  imageInspectCpuMs: number;
  /** A VM's console.log is rotated to console.log.1 when it reaches this size (default 1MiB; 2 files kept). */
  consoleLogMaxBytes: number;
  /** passt's pasta, which connects each VM's private network namespace to the host (default pasta, on PATH). */
  pastaBinary: string;
  /**
   * Each VM's QEMU and pasta in a systemd scope of its own (capsul.slice/capsul-vm-<name>-<id>.scope),
   * so that a stop or restart of the cog's service leaves the VMs running (provisioner/scope.ts):
   * "auto" when started by systemd (INVOCATION_ID) and a service manager can create
   * scopes (root: the system's; else the user's, `loginctl enable-linger`); "on" always, failing
   * VM starts when it cannot; "off" never (QEMU stays in the cog's cgroup).
   */
  systemdScope: "auto" | "on" | "off";
  /** Backups of the VMs' disks (`cog.provisioner.backups`; provisioner/backupconfig.ts). */
  backups: BackupConfig;
  /**
   * Cogs that may move VMs to this one (`capsul vm move NAME --to THIS-COG` run on
   * them), by cog name (none: every move to this cog is refused).
   */
  acceptMovesFrom: string[];
  /** Largest VM archive an import or a move may declare; a larger one is refused before a byte is kept (at least 64MiB). */
  maxArchiveBytes: number;
  /** A move's source waits this long for the target cog's consent through the hub. */
  moveAnswerTimeoutMs: number;
  /** After the last byte, a move's source waits this long for the target to verify and recreate the VM (SHA-256 of a big disk). */
  moveVerifyTimeoutMs: number;
  /** A move sends at most this many bytes per second, so that it leaves the home uplink usable (0 = unlimited). */
  moveBytesPerSec: number;
}

/** When the provisioner backs up running VMs by itself: never, or every `intervalMs` since a VM's newest backup. */
export type BackupSchedule = { kind: "off" } | { kind: "every"; intervalMs: number };

/** `cog.provisioner.backups` (README "Backups"). */
export interface BackupConfig {
  /** Where backups live: one directory per VM name with manifest.json and qcow2 files (default <dataDir>/backups, made 0700). */
  dir: string;
  /** off (default), hourly, daily, weekly, or a duration of at least 1m: a running VM whose newest backup is older gets one. */
  schedule: BackupSchedule;
  /** Chains kept per VM, a chain being a full backup and the incrementals on top of it; older chains are deleted whole (default 2). */
  keepFull: number;
  /** Incrementals per chain; with this many, the next backup is a full one that starts a new chain (default 6; 0 = always full). */
  keepIncremental: number;
  /** How long the guest agent may take to answer guest-ping; silence means a crash-consistent backup (default 3s). */
  agentTimeoutMs: number;
  /** How long guest-fsfreeze-freeze may take (the guest flushes its filesystems; default 60s); past it, thaw and back up crash-consistent. */
  freezeTimeoutMs: number;
  /** A backup or restore whose progress stops this long is cancelled (default 10m). */
  stallTimeoutMs: number;
  /** How often the schedule looks for VMs that are due (default 1m). */
  checkIntervalMs: number;
  /** After a scheduled backup of a VM failed, the next attempt waits this long (default 30m). */
  retryAfterMs: number;
  /** Bytes per second a backup job may read from a VM's disk (QEMU's job "speed"; default 0 = unlimited). */
  rateLimitBytesPerSec: number;
}

export interface CapsulConfig {
  hub: HubConfig | null;
  cog: CogConfig | null;
  /**
   * Logging of every role on this machine (lib/log.ts). format auto: json when stderr is not
   * a terminal, text when it is. CAPSUL_LOG and CAPSUL_LOG_FORMAT in the environment override both.
   */
  log: { level: "debug" | "info" | "warn" | "error"; format: "json" | "text" | "auto" };
}
