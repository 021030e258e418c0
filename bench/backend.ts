/**
 * The backend every path ends at: one nginx (Debian nginx-light) with its own config
 * in a temp dir. It serves /small (100 bytes) and /big over HTTPS with a self-signed
 * certificate for BENCH_HOST, on one port per path, so that its access log proves
 * which path each request came through: only HAProxy knows the haproxy port, only the
 * gopeer cog the gopeer port, and so on.
 */
import { mkdir, open, readFile, writeFile } from "node:fs/promises";
import path from "node:path";
import net from "node:net";
import { BENCH_NOFILE, run, startProc, type Proc } from "./procs.js";

/** The visitor hostname: under the capsul hub's default grant for cog "bench" (*.bench.capsul.test). */
export const BENCH_DOMAIN = "capsul.test";
export const BENCH_COG = "bench";
export const BENCH_HOST = `www.${BENCH_COG}.${BENCH_DOMAIN}`;
export const SMALL_BYTES = 100;

export interface Backend {
  /** HTTPS port per path name (e.g. direct, haproxy, gopeer, capsul, rtt-*). */
  httpsPorts: Record<string, number>;
  httpPort: number;
  bigBytes: number;
  dir: string;
  proc: Proc;
  /** Requests and body bytes per server port, from the access log (flushed by reopening). */
  accessCounts(): Promise<Map<number, { requests: number; bytes: number; big: number }>>;
  stop(): Promise<void>;
}

export async function freePort(): Promise<number> {
  return new Promise((resolve, reject) => {
    const s = net.createServer();
    s.on("error", reject);
    s.listen(0, "127.0.0.1", () => {
      const p = (s.address() as net.AddressInfo).port;
      s.close(() => resolve(p));
    });
  });
}

/** Self-signed P-256 certificate for `cn` (with SAN), written to dir/name{.crt,.key}. */
export async function makeCert(dir: string, name: string, cn: string): Promise<{ cert: string; key: string }> {
  const cert = path.join(dir, `${name}.crt`);
  const key = path.join(dir, `${name}.key`);
  await run("openssl", [
    "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes",
    "-keyout", key, "-out", cert, "-days", "7", "-subj", `/CN=${cn}`, "-addext", `subjectAltName=DNS:${cn}`,
  ]);
  return { cert, key };
}

export async function startBackend(dir: string, pathNames: string[], bigBytes: number): Promise<Backend> {
  const www = path.join(dir, "www");
  await mkdir(www, { recursive: true });
  await mkdir(path.join(dir, "logs"), { recursive: true });
  await writeFile(path.join(www, "small"), "x".repeat(SMALL_BYTES));
  // A sparse file: no disk space used; nginx reads zeros from the page cache.
  const fh = await open(path.join(www, "big"), "w");
  await fh.truncate(bigBytes);
  await fh.close();
  const { cert, key } = await makeCert(dir, "nginx", BENCH_HOST);

  const httpsPorts: Record<string, number> = {};
  for (const n of pathNames) httpsPorts[n] = await freePort();
  const httpPort = await freePort();
  const listens = Object.values(httpsPorts).map((p) => `    listen 127.0.0.1:${p} ssl;`).join("\n");
  const conf = `# written by bench/backend.ts
user root;
worker_processes 1;
worker_rlimit_nofile ${BENCH_NOFILE};
pid ${dir}/nginx.pid;
error_log ${dir}/logs/error.log warn;
events { worker_connections ${BENCH_NOFILE - 100}; }
http {
  access_log off;
  log_format bench '$server_port $status $body_bytes_sent $uri';
  client_body_temp_path ${dir}/tmp-body;
  proxy_temp_path ${dir}/tmp-proxy;
  fastcgi_temp_path ${dir}/tmp-fcgi;
  uwsgi_temp_path ${dir}/tmp-uwsgi;
  scgi_temp_path ${dir}/tmp-scgi;
  default_type application/octet-stream;
  sendfile on;
  keepalive_requests 10000000;
  # Longer than opening 10,000 idle visitors takes on a busy 2-core machine (150 s seen):
  # at 120s nginx closed the first ones while the rest were still opening.
  keepalive_timeout 900s;
  ssl_protocols TLSv1.2 TLSv1.3;
  ssl_certificate ${cert};
  ssl_certificate_key ${key};
  server {
${listens}
    listen 127.0.0.1:${httpPort};
    server_name ${BENCH_HOST};
    root ${www};
    access_log ${dir}/logs/access.log bench buffer=256k flush=1s;
  }
}
`;
  const confPath = path.join(dir, "nginx.conf");
  await writeFile(confPath, conf);
  const proc = startProc("nginx", "nginx", ["-p", dir, "-c", confPath, "-g", "daemon off; master_process on;"]);
  await waitListening(Object.values(httpsPorts)[0], proc);
  return {
    httpsPorts,
    httpPort,
    bigBytes,
    dir,
    proc,
    async accessCounts() {
      // SIGUSR1 reopens logs, which flushes the buffer.
      process.kill(proc.pid, "SIGUSR1");
      await new Promise((r) => setTimeout(r, 300));
      const text = await readFile(path.join(dir, "logs", "access.log"), "utf8").catch(() => "");
      const m = new Map<number, { requests: number; bytes: number; big: number }>();
      for (const line of text.split("\n")) {
        const [port, , bytes, uri] = line.split(" ");
        if (!port) continue;
        const e = m.get(Number(port)) ?? { requests: 0, bytes: 0, big: 0 };
        e.requests++;
        e.bytes += Number(bytes);
        if (uri === "/big") e.big++;
        m.set(Number(port), e);
      }
      return m;
    },
    stop: () => proc.stop(),
  };
}

/** Polls a TCP connect until it succeeds: nginx prints nothing when it is ready. */
export async function waitListening(port: number, proc: Proc, timeoutMs = 15_000): Promise<void> {
  const deadline = Date.now() + timeoutMs;
  for (;;) {
    const ok = await new Promise<boolean>((resolve) => {
      const s = net.connect(port, "127.0.0.1");
      s.once("connect", () => { s.destroy(); resolve(true); });
      s.once("error", () => resolve(false));
    });
    if (ok) return;
    if (proc.child.exitCode !== null || Date.now() > deadline) {
      throw new Error(`${proc.name} is not listening on ${port}; output:\n${proc.output().slice(-3000)}`);
    }
    await new Promise((r) => setTimeout(r, 100));
  }
}
