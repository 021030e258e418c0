/**
 * The paths a visitor's TLS connection can take to nginx, each started as real
 * processes on loopback: direct, HAProxy SNI passthrough, gopeer (Go, hashicorp/yamux),
 * and capsul's hub + cog through the CLI (invite, enroll, run).
 */
import { mkdir, readFile, writeFile } from "node:fs/promises";
import net from "node:net";
import path from "node:path";
import { fileURLToPath } from "node:url";
import { BENCH_COG, BENCH_DOMAIN, BENCH_HOST, makeCert, waitListening } from "./backend.js";
import { BENCH_NOFILE, run, startProc, type Proc } from "./procs.js";
import { NODE_HEAP_FLAGS } from "../cli/runtime.js";

export const PATH_NAMES = ["direct", "haproxy", "gopeer", "capsul"] as const;
export type PathName = (typeof PATH_NAMES)[number];

/** gopeer's frp-like setting, on both hub and cog (bench/peers/gopeer/README.md). */
export const GOPEER_WINDOW_BYTES = 6_291_456;
export const HAPROXY_INSPECT_DELAY = "5s";

const HERE = path.dirname(fileURLToPath(import.meta.url));
/** dist/bench -> repo root */
export const REPO_ROOT = path.resolve(HERE, "..", "..");
export const CAPSUL_CLI = path.join(REPO_ROOT, "dist", "cli", "main.js");
export const GOPEER_SRC = path.join(REPO_ROOT, "bench", "peers", "gopeer");
export const BUILD_GO_PEER = path.join(REPO_ROOT, "scripts", "build-go-peer.sh");
/** A cold Go build (crypto/tls and all) plus, the first time, apt-get: minutes, not hours. */
export const GOPEER_BUILD_TIMEOUT_MS = 600_000;

export interface RunningPath {
  name: string;
  /** Where visitors connect (TLS, SNI = BENCH_HOST). */
  port: number;
  /** Proxy processes whose RSS/CPU we report (hub first). Empty for direct. */
  procs: Proc[];
  /** capsul with hub.workers above 1: the worker processes (procs[0] is then the primary). */
  workers?: { name: string; pid: number }[];
  /** Counters the proxy itself reports, read on demand (HAProxy stats). */
  proxyCounters?(): Promise<Record<string, number>>;
  stop(): Promise<void>;
}

/** HAProxy holds two fds per proxied connection (client and server side). */
export function haproxyMaxConn(): number {
  return Math.floor((BENCH_NOFILE - 200) / 2);
}

export function direct(nginxPort: number): RunningPath {
  return { name: "direct", port: nginxPort, procs: [], stop: async () => {} };
}

export async function startHaproxy(dir: string, listenPort: number, nginxPort: number): Promise<RunningPath> {
  await mkdir(dir, { recursive: true });
  const sock = path.join(dir, "stats.sock");
  const cfg = `# written by bench/paths.ts: SNI passthrough, no TLS termination
global
  maxconn ${haproxyMaxConn()}
  stats socket ${sock} mode 600 level admin
defaults
  mode tcp
  timeout connect 5s
  timeout client 300s
  timeout server 300s
frontend fe_tls
  bind 127.0.0.1:${listenPort}
  tcp-request inspect-delay ${HAPROXY_INSPECT_DELAY}
  tcp-request content accept if { req_ssl_hello_type 1 }
  use_backend be_nginx if { req_ssl_sni -i ${BENCH_HOST} }
backend be_nginx
  server nginx 127.0.0.1:${nginxPort}
`;
  const file = path.join(dir, "haproxy.cfg");
  await writeFile(file, cfg);
  const proc = startProc("haproxy", "haproxy", ["-db", "-f", file]);
  await waitListening(listenPort, proc);
  return {
    name: "haproxy",
    port: listenPort,
    procs: [proc],
    async proxyCounters() {
      const csv = await statsSocket(sock, "show stat\n");
      // CSV: # pxname,svname,qcur,qmax,scur,smax,slim,stot,bin,bout,...
      const rows = csv.split("\n").filter((l) => l && !l.startsWith("#")).map((l) => l.split(","));
      const be = rows.find((r) => r[0] === "be_nginx" && r[1] === "nginx");
      return { sessionsTotal: Number(be?.[7] ?? 0), bytesOut: Number(be?.[9] ?? 0) };
    },
    stop: () => proc.stop(),
  };
}

function statsSocket(sock: string, cmd: string): Promise<string> {
  return new Promise((resolve, reject) => {
    const s = net.connect(sock);
    let out = "";
    s.on("connect", () => s.end(cmd));
    s.on("data", (b) => { out += b.toString(); });
    s.on("end", () => resolve(out));
    s.on("error", reject);
  });
}

/**
 * gopeer's binary: scripts/build-go-peer.sh builds bench/peers/gopeer into the temp dir,
 * keyed by a hash of its sources, and reuses it while they are unchanged.
 */
export async function buildGopeer(): Promise<string> {
  const out = await run("bash", [BUILD_GO_PEER, GOPEER_SRC], { timeoutMs: GOPEER_BUILD_TIMEOUT_MS });
  return out.trim().split("\n").pop()!;
}

export async function startGopeer(
  dir: string, bin: string, nginxPort: number, opts: { hubAddrForCog?: (tunnelPort: number) => Promise<string>; name?: string } = {},
): Promise<RunningPath> {
  await mkdir(dir, { recursive: true });
  const { cert, key } = await makeCert(dir, "gopeer-hub", "gopeer-hub");
  const win = String(GOPEER_WINDOW_BYTES);
  const hub = startProc("gopeer-hub", bin, ["hub", "-public", "127.0.0.1:0", "-tunnel", "127.0.0.1:0", "-cert", cert, "-key", key, "-window", win]);
  const m = await hub.waitFor(/gopeer hub ready public=127\.0\.0\.1:(\d+) tunnel=127\.0\.0\.1:(\d+)/);
  const publicPort = Number(m[1]);
  const tunnelPort = Number(m[2]);
  const hubAddr = opts.hubAddrForCog ? await opts.hubAddrForCog(tunnelPort) : `127.0.0.1:${tunnelPort}`;
  const cog = startProc("gopeer-cog", bin, [
    "cog", "-hub", hubAddr, "-hub-cert", cert, "-name", BENCH_COG, "-route", `${BENCH_HOST}=127.0.0.1:${nginxPort}`, "-window", win,
  ]);
  await hub.waitFor(new RegExp(`gopeer hub: cog ${BENCH_COG} up from`));
  return {
    name: opts.name ?? "gopeer",
    port: publicPort,
    procs: [hub, cog],
    async stop() { await cog.stop(); await hub.stop(); },
  };
}

/**
 * capsul hub and cog as separate processes, set up exactly as the README says:
 * `capsul hub`, `capsul hub invite bench --json`, `capsul cog enroll ...`, `capsul cog`.
 * Each role runs in its own directory holding its capsul.yaml (found as ./capsul.yaml).
 */
/**
 * Every bench visitor comes from 127.0.0.1; the idle section holds 10,000 connections from it.
 * The per-source caps (hub.limits.max_visitors_per_ip, default 256) would refuse them.
 */
export const LOOPBACK_SOURCE_LIMITS: Record<string, number> = { max_visitors_per_ip: 60000, max_unpeeked_per_ip: 60000 };
/**
 * And the bench's one cog and route hold them all: hub.limits.max_connections_per_route (default
 * 2,000) and max_streams_per_cog (5,000) would refuse the rest. Only for builds that know the keys.
 */
export const LOOPBACK_IDLE_LIMITS: Record<string, number> = { ...LOOPBACK_SOURCE_LIMITS, max_streams_per_cog: 60000, max_connections_per_route: 60000 };

export async function startCapsul(
  dir: string, nginxPort: number,
  opts: {
    hubAddrForCog?: (tunnelPort: number) => Promise<string>; name?: string; cli?: string;
    /** Extra node flags (e.g. --cpu-prof), after the launcher's. */
    nodeArgs?: string[];
    /** The launcher's flags (cli/main.ts shebang); [] runs plain `node main.js` (A/B of the flags). */
    launcherFlags?: readonly string[];
    /** More hub.limits keys (only keys the CLI's checkout knows: an older one refuses new keys). */
    hubLimits?: Record<string, string | number>;
    /** More top-level hub keys (access_log: true), likewise only keys the checkout knows. */
    hubKeys?: Record<string, string | number>;
    /** hub.workers (issue 12); above 1 the cog is connected to every worker before this returns. */
    workers?: number;
  } = {},
): Promise<RunningPath> {
  const cli = opts.cli ?? CAPSUL_CLI;
  // This checkout's admin listeners go on ephemeral ports, so two hubs never fight over
  // 7444; another checkout (ab.ts's baseline) may predate the key and is left as it is.
  const adminKey = cli === CAPSUL_CLI ? "\n    admin: 127.0.0.1:0" : "";
  const hubDir = path.join(dir, "hub");
  const cogDir = path.join(dir, "cog");
  await mkdir(hubDir, { recursive: true });
  await mkdir(cogDir, { recursive: true });
  await writeFile(path.join(hubDir, "capsul.yaml"), `hub:
  data_dir: ./data
  domain: ${BENCH_DOMAIN}
  listen:
    tls: 127.0.0.1:0
    http: off
    tunnel: 127.0.0.1:0${adminKey}
${Object.entries(opts.hubKeys ?? {}).map(([k, v]) => `  ${k}: ${v}\n`).join("")}  limits:
    max_visitors: 60000
${Object.entries(opts.hubLimits ?? {}).map(([k, v]) => `    ${k}: ${v}\n`).join("")}${(opts.workers ?? 1) > 1 ? `  endpoint:
    name: bench
    advertise: 127.0.0.1:0
  workers: ${opts.workers}
` : ""}`);
  // As `capsul hub` runs it: node with the launcher's heap flags (cli/runtime.ts).
  const nodeArgs = [...(opts.launcherFlags ?? NODE_HEAP_FLAGS), ...(opts.nodeArgs ?? [])];
  // The lines waited for below are matched as text (a pipe's default is JSON; an older checkout ignores the variable).
  const env = { ...process.env, CAPSUL_LOG_FORMAT: "text" };
  const hub = startProc("capsul-hub", process.execPath, [...nodeArgs, cli, "hub", "-c", "capsul.yaml"], { cwd: hubDir, env });
  const m = await hub.waitFor(/hub ready tls=(\d+) http=\S+ tunnel=(\d+)/);
  const tlsPort = Number(m[1]);
  const tunnelPort = Number(m[2]);
  // Run in hubDir: it finds ./capsul.yaml (an earlier CLI lost -c after `hub invite`).
  // ca_fingerprint since the --json style became snake_case; caFingerprint from builds before, which ab.ts may be comparing.
  const invite = JSON.parse(await run(process.execPath, [cli, "hub", "invite", BENCH_COG, "--json"], { cwd: hubDir })) as {
    token: string; ca_fingerprint?: string; caFingerprint?: string;
  };
  const caFingerprint = invite.ca_fingerprint ?? invite.caFingerprint ?? "";
  const hubAddr = opts.hubAddrForCog ? await opts.hubAddrForCog(tunnelPort) : `127.0.0.1:${tunnelPort}`;
  await writeFile(path.join(cogDir, "capsul.yaml"), `cog:
  data_dir: ./data
  hub: ${hubAddr}
  routes:
    - name: web
      kind: tls
      hostname: ${BENCH_HOST}
      target: 127.0.0.1:${nginxPort}
${adminKey ? `  listen:${adminKey}\n` : ""}`);
  await run(process.execPath, [cli, "cog", "enroll", "--hub", hubAddr, "--token", invite.token, "--ca-fingerprint", caFingerprint], { cwd: cogDir });
  const cog = startProc("capsul-cog", process.execPath, [...nodeArgs, cli, "cog"], { cwd: cogDir, env });
  await cog.waitFor(/connected to hub .*routes=1/);
  await hub.waitFor(/cog connected cog=bench/);
  const workers: { name: string; pid: number }[] = [];
  for (let i = 1; i <= (opts.workers ?? 1) && (opts.workers ?? 1) > 1; i++) {
    await cog.waitFor(new RegExp(`connected to hub .*endpoint=bench-w${i} `));
    const file = JSON.parse(await readFile(path.join(hubDir, "data", "hub-workers.json"), "utf8")) as { workers: { worker: number; pid: number }[] };
    workers.push({ name: `w${i}`, pid: file.workers.find((w) => w.worker === i)!.pid });
  }
  return {
    name: opts.name ?? "capsul",
    port: tlsPort,
    procs: [hub, cog],
    workers,
    async stop() { await cog.stop(); await hub.stop(); },
  };
}
