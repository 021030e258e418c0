/**
 * A real ACME CA for tests: Debian's `pebble` (RFC 8555 test server) with
 * `pebble-challtestsrv` as its DNS, so that every name resolves to 127.0.0.1
 * and the CA's validator dials the hub under test. Debian ships no certificates
 * for pebble's own HTTPS listener: a CA and a leaf for localhost/127.0.0.1 are
 * made here with openssl, at test time. `caFile` is that CA (what a cog puts in
 * cog.acme.ca_bundle); `rootPem()` is the root pebble issues certificates under
 * (what a visitor passes to curl --cacert).
 *
 * Also here: AcmeFrontProxy, a small HTTPS proxy in front of pebble that can
 * answer 429 with Retry-After, hold requests, or stop listening, to make the
 * CA rate-limited, stuck or unreachable on demand.
 */
import { spawn, type ChildProcess } from "node:child_process";
import fs from "node:fs";
import http from "node:http";
import https from "node:https";
import net, { createServer } from "node:net";
import path from "node:path";
import { runProgram, waitFor, type Teardown } from "./procs.js";

export interface TestCa { caFile: string; caPem: string; leafKeyFile: string; leafCertFile: string }

/** A CA and a serverAuth leaf for localhost and 127.0.0.1, made with openssl in `dir`. */
export async function makeTestCa(dir: string): Promise<TestCa> {
  fs.mkdirSync(dir, { recursive: true });
  const f = (n: string) => path.join(dir, n);
  const run = async (args: string[]): Promise<void> => {
    const r = await runProgram("openssl", args);
    if (r.code !== 0) throw new Error(`openssl ${args.join(" ")} failed: ${r.stderr}`);
  };
  const ec = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes"];
  await run(["req", "-x509", ...ec, "-keyout", f("ca.key"), "-out", f("ca.crt"), "-days", "3", "-subj", "/CN=capsul test ACME server CA"]);
  await run(["req", ...ec, "-keyout", f("leaf.key"), "-out", f("leaf.csr"), "-subj", "/CN=localhost"]);
  fs.writeFileSync(f("leaf.ext"), "subjectAltName=DNS:localhost,IP:127.0.0.1\nbasicConstraints=CA:FALSE\nextendedKeyUsage=serverAuth\n");
  await run(["x509", "-req", "-in", f("leaf.csr"), "-CA", f("ca.crt"), "-CAkey", f("ca.key"), "-CAcreateserial",
    "-out", f("leaf.crt"), "-days", "3", "-extfile", f("leaf.ext")]);
  return { caFile: f("ca.crt"), caPem: fs.readFileSync(f("ca.crt"), "utf8"), leafKeyFile: f("leaf.key"), leafCertFile: f("leaf.crt") };
}

/** `n` different ports on 127.0.0.1 that were free a moment ago (all held open while choosing, so none repeats). */
async function distinctFreePorts(n: number): Promise<number[]> {
  const servers: net.Server[] = [];
  try {
    for (let i = 0; i < n; i++) {
      const s = createServer();
      servers.push(s);
      await new Promise<void>((resolve, reject) => { s.once("error", reject); s.listen(0, "127.0.0.1", () => resolve()); });
    }
    return servers.map((s) => (s.address() as net.AddressInfo).port);
  } finally {
    await Promise.all(servers.map((s) => new Promise((resolve) => s.close(resolve))));
  }
}

/** GET over HTTPS trusting `caPem` only; resolves status and body. */
export function httpsGet(url: string, caPem: string): Promise<{ status: number; body: string }> {
  return new Promise((resolve, reject) => {
    https.get(url, { ca: caPem, agent: false }, (res) => {
      let body = "";
      res.setEncoding("utf8");
      res.on("data", (c: string) => { body += c; });
      res.on("end", () => resolve({ status: res.statusCode ?? 0, body }));
    }).on("error", reject);
  });
}

/** POST of a JSON body over plain HTTP (challtestsrv's management API). */
function httpPost(url: string, body: unknown): Promise<number> {
  return new Promise((resolve, reject) => {
    const req = http.request(url, { method: "POST", agent: false }, (res) => {
      res.resume();
      res.on("end", () => resolve(res.statusCode ?? 0));
    });
    req.on("error", reject);
    req.end(JSON.stringify(body));
  });
}

export interface Pebble {
  directoryUrl: string;
  /** Port of pebble's ACME listener (for a proxy in front of it). */
  port: number;
  ca: TestCa;
  /** The root certificate pebble issues under (PEM). */
  rootPem(): Promise<string>;
  /** Makes `host` resolve to `addresses` for pebble's validator (challtestsrv). */
  setA(host: string, addresses: string[]): Promise<void>;
  /** pebble's own log lines so far. */
  log(): string;
  close(): Promise<void>;
}

function startProc(file: string, args: string[], env: NodeJS.ProcessEnv, out: string[]): ChildProcess {
  const child = spawn(file, args, { env: { ...process.env, ...env }, stdio: ["ignore", "pipe", "pipe"] });
  for (const s of [child.stdout!, child.stderr!]) {
    s.setEncoding("utf8");
    s.on("data", (c: string) => {
      out.push(c);
      if (process.env.CAPSUL_TEST_LOG) process.stderr.write(`[${path.basename(file)}] ${c}`);
    });
  }
  return child;
}

async function stopProc(child: ChildProcess): Promise<void> {
  if (child.exitCode !== null || child.signalCode !== null) return;
  const exited = new Promise<void>((resolve) => child.once("exit", () => resolve()));
  child.kill("SIGKILL");
  await exited;
}

/**
 * Starts challtestsrv and pebble. `httpPort` and `tlsPort` are where pebble's
 * validator dials for HTTP-01 and TLS-ALPN-01 (the hub's listeners);
 * `validitySec` sets the lifetime of the certificates it issues.
 */
export async function startPebble(t: Teardown, dir: string, opts: { httpPort: number; tlsPort: number; validitySec?: number }): Promise<Pebble> {
  const ca = await makeTestCa(path.join(dir, "pebble-ca"));
  const [port, mgmtPort, dnsPort, dnsMgmtPort] = await distinctFreePorts(4);
  const out: string[] = [];
  const chall = startProc("pebble-challtestsrv", [
    "-defaultIPv4", "127.0.0.1", "-defaultIPv6", "", "-dns01", `127.0.0.1:${dnsPort}`,
    "-http01", "", "-https01", "", "-tlsalpn01", "", "-management", `127.0.0.1:${dnsMgmtPort}`,
  ], {}, out);
  const config = {
    pebble: {
      listenAddress: `127.0.0.1:${port}`,
      managementListenAddress: `127.0.0.1:${mgmtPort}`,
      certificate: ca.leafCertFile,
      privateKey: ca.leafKeyFile,
      httpPort: opts.httpPort,
      tlsPort: opts.tlsPort,
      ocspResponderURL: "",
      externalAccountBindingRequired: false,
      ...(opts.validitySec ? { certificateValidityPeriod: opts.validitySec } : {}),
    },
  };
  const configFile = path.join(dir, "pebble-config.json");
  fs.writeFileSync(configFile, JSON.stringify(config, null, 2));
  // NOSLEEP: no random 0-5 s validation delay per challenge. AUTHZREUSE 0: orders are
  // validated again (pebble reuses a valid authorization half the time by default), so a
  // renewal goes through the challenge path under test; 2.4 still reuses 1% of the time
  // (rand.Intn(100) <= 0), so a test that needs a challenge to run uses a fresh account.
  const pebble = startProc("pebble", ["-config", configFile, "-dnsserver", `127.0.0.1:${dnsPort}`],
    { PEBBLE_VA_NOSLEEP: "1", PEBBLE_AUTHZREUSE: "0" }, out);
  const close = async (): Promise<void> => { await stopProc(pebble); await stopProc(chall); };
  t.teardown(close);
  const directoryUrl = `https://127.0.0.1:${port}/dir`;
  try {
    await waitFor("pebble's directory", async () => {
      if (pebble.exitCode !== null) throw new Error(`pebble exited (${pebble.exitCode})`);
      return (await httpsGet(directoryUrl, ca.caPem)).status === 200;
    }, { timeoutMs: 30_000 });
  } catch (err) {
    throw new Error(`${(err as Error).message}; pebble and challtestsrv said:\n${out.join("")}`);
  }
  await waitFor("challtestsrv", async () => (await httpPost(`http://127.0.0.1:${dnsMgmtPort}/set-default-ipv4`, { ip: "127.0.0.1" })) === 200, { timeoutMs: 30_000 });
  let root: string | null = null;
  return {
    directoryUrl,
    port,
    ca,
    async rootPem() {
      root ??= (await httpsGet(`https://127.0.0.1:${mgmtPort}/roots/0`, ca.caPem)).body;
      return root;
    },
    async setA(host, addresses) {
      const status = await httpPost(`http://127.0.0.1:${dnsMgmtPort}/add-a`, { host, addresses });
      if (status !== 200) throw new Error(`challtestsrv add-a answered ${status}`);
    },
    log: () => out.join(""),
    close,
  };
}

export type FrontMode = "pass" | "rate-limit" | "hold";

/**
 * HTTPS in front of pebble, on a port of its own. It forwards every request with
 * the Host header unchanged, so pebble builds its URLs (and checks the JWS "url")
 * against this proxy. Modes: "pass"; "rate-limit" answers new-order with 429,
 * Retry-After and an RFC 8555 rateLimited problem; "hold" never answers requests
 * whose path matches `holdPath`. `stop()` closes the port (connections refused),
 * `start()` opens it again on the same port.
 */
export class AcmeFrontProxy {
  mode: FrontMode = "pass";
  retryAfterSec = 3600;
  holdPath: RegExp = /^\/finalize-order\//;
  /** Every request seen: method, path and what was done with it. */
  readonly seen: { method: string; path: string; action: string }[] = [];
  private server: https.Server | null = null;
  private readonly sockets = new Set<net.Socket>();
  port = 0;

  constructor(private readonly pebble: Pebble) {}

  get directoryUrl(): string { return `https://127.0.0.1:${this.port}/dir`; }

  async start(): Promise<void> {
    const server = https.createServer({ key: fs.readFileSync(this.pebble.ca.leafKeyFile), cert: fs.readFileSync(this.pebble.ca.leafCertFile) }, (req, res) => this.onRequest(req, res));
    server.on("connection", (s: net.Socket) => { this.sockets.add(s); s.once("close", () => this.sockets.delete(s)); });
    await new Promise<void>((resolve, reject) => {
      server.once("error", reject);
      server.listen(this.port, "127.0.0.1", () => resolve());
    });
    this.port = (server.address() as net.AddressInfo).port;
    this.server = server;
  }

  /** Closes the port and every connection: the CA is unreachable until start(). */
  async stop(): Promise<void> {
    const s = this.server;
    this.server = null;
    if (!s) return;
    for (const c of this.sockets) c.destroy();
    await new Promise<void>((resolve) => s.close(() => resolve()));
  }

  private onRequest(req: http.IncomingMessage, res: http.ServerResponse): void {
    const p = req.url ?? "/";
    const method = req.method ?? "GET";
    if (this.mode === "rate-limit" && method === "POST" && p.startsWith("/order-plz")) {
      this.seen.push({ method, path: p, action: "429" });
      req.resume();
      res.writeHead(429, { "Content-Type": "application/problem+json", "Retry-After": String(this.retryAfterSec) });
      res.end(JSON.stringify({ type: "urn:ietf:params:acme:error:rateLimited", detail: "too many new orders recently (test proxy)", status: 429 }));
      return;
    }
    if (this.mode === "hold" && this.holdPath.test(p)) {
      this.seen.push({ method, path: p, action: "held" });
      req.resume();
      return;
    }
    this.seen.push({ method, path: p, action: "forwarded" });
    const up = https.request({
      host: "127.0.0.1", port: this.pebble.port, method, path: p, headers: req.headers, ca: this.pebble.ca.caPem, servername: "localhost", agent: false,
    }, (ures) => {
      res.writeHead(ures.statusCode ?? 502, ures.headers);
      ures.pipe(res);
    });
    up.on("error", () => res.destroy());
    req.pipe(up);
  }
}
