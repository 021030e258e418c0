/**
 * Load generators: wrk (keep-alive, new connections, latency at a moderate rate) and
 * curl (bulk downloads, sizes checked). All of them send SNI = BENCH_HOST while
 * connecting to 127.0.0.1, without touching /etc/hosts: curl with --resolve, wrk with
 * a Lua script that overrides wrk.resolve (wrk takes SNI and Host from the URL).
 */
import { spawn } from "node:child_process";
import { writeFile } from "node:fs/promises";
import path from "node:path";
import { BENCH_HOST } from "./backend.js";
import { collectChild, run } from "./procs.js";

export const WRK_THREADS = 1;
export const WRK_CONNECTIONS = 50;
/** Latency run: few connections, each waiting this long before every request (wrk's delay()). */
export const LATENCY_CONNECTIONS = 10;
export const LATENCY_THINK_MS = 5;

export interface WrkResult {
  requests: number;
  reqPerSec: number;
  errors: number;
  non2xx: number;
  p50Ms: number;
  p99Ms: number;
}

/** Writes the Lua scripts wrk needs; returns their paths. */
export async function writeWrkScripts(dir: string): Promise<{ resolve: string; latency: string }> {
  const resolveLua = `-- connect to 127.0.0.1 whatever the URL's host (which still gives SNI and Host)
function wrk.resolve(host, service)
  wrk.addrs = wrk.lookup("127.0.0.1", service)
end
`;
  const latencyLua = `${resolveLua}
-- think time before each request: keeps the offered rate moderate and roughly fixed
function delay()
  return ${LATENCY_THINK_MS}
end
`;
  const resolve = path.join(dir, "resolve.lua");
  const latency = path.join(dir, "latency.lua");
  await writeFile(resolve, resolveLua);
  await writeFile(latency, latencyLua);
  return { resolve, latency };
}

function toMs(v: string, unit: string): number {
  const n = Number(v);
  switch (unit) {
    case "us": return n / 1000;
    case "ms": return n;
    case "s": return n * 1000;
    case "m": return n * 60_000;
    default: return NaN;
  }
}

export function parseWrk(out: string): WrkResult {
  const num = (re: RegExp): number => { const m = out.match(re); return m ? Number(m[1]) : 0; };
  const pct = (p: string): number => {
    const m = out.match(new RegExp(`^\\s+${p}%\\s+([\\d.]+)(us|ms|s|m)\\s*$`, "m"));
    return m ? toMs(m[1], m[2]) : NaN;
  };
  const errs = out.match(/Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)/);
  return {
    requests: num(/(\d+) requests in/),
    reqPerSec: num(/Requests\/sec:\s+([\d.]+)/),
    errors: errs ? errs.slice(1).reduce((a, b) => a + Number(b), 0) : 0,
    non2xx: num(/Non-2xx or 3xx responses: (\d+)/),
    p50Ms: pct("50"),
    p99Ms: pct("99"),
  };
}

export async function wrk(port: number, o: { script: string; seconds: number; connections: number; close?: boolean }): Promise<WrkResult> {
  const args = ["-t", String(WRK_THREADS), "-c", String(o.connections), "-d", `${o.seconds}s`, "--latency", "-s", o.script];
  if (o.close) args.push("-H", "Connection: close");
  args.push(`https://${BENCH_HOST}:${port}/small`);
  const out = await run("wrk", args, { timeoutMs: (o.seconds + 30) * 1000 });
  const r = parseWrk(out);
  if (r.requests === 0) throw new Error(`wrk made no requests on port ${port}:\n${out}`);
  return r;
}

export interface BulkResult {
  /** Total bytes received by all downloads. */
  bytes: number;
  seconds: number;
  mbPerSec: number;
  /** Every download received exactly the expected size with HTTP 200. */
  complete: boolean;
  sizes: number[];
  /** curl's exit code and message for each download that failed. */
  failures: string[];
}

/** `n` concurrent curl downloads of /big through `port` (TLS, SNI = BENCH_HOST). */
export async function bulk(port: number, n: number, expectBytes: number, timeoutMs: number): Promise<BulkResult> {
  const t0 = process.hrtime.bigint();
  const one = async (): Promise<{ size: number; code: string; why: string }> => {
    const c = spawn("curl", [
      "-sS", "-k", "--max-time", String(Math.ceil(timeoutMs / 1000)),
      "--resolve", `${BENCH_HOST}:${port}:127.0.0.1`,
      "-o", "/dev/null", "-w", "%{size_download} %{http_code} %{exitcode} %{errormsg}",
      `https://${BENCH_HOST}:${port}/big`,
    ], { stdio: ["ignore", "pipe", "pipe"] });
    // collectChild waits for 'close', not 'exit': with 'exit' the -w line was sometimes not
    // read yet, and a complete download was reported as 0 bytes (bench round 3, bulk x16).
    const r = await collectChild(c);
    const m = /^(\d+) (\d{3}) (\d+) ?(.*)$/s.exec(r.stdout.trim());
    if (!m) {
      // No -w line: curl itself failed (killed, crashed); say so instead of "0 bytes".
      return { size: 0, code: "000", why: `curl printed no result (exit ${r.exitCode}, signal ${r.signal}): ${r.stderr.trim().slice(-200)}` };
    }
    return { size: Number(m[1]), code: m[2]!, why: `${m[3]} ${m[4]}`.trim() };
  };
  const res = await Promise.all(Array.from({ length: n }, one));
  const seconds = Number(process.hrtime.bigint() - t0) / 1e9;
  const bytes = res.reduce((a, r) => a + r.size, 0);
  return {
    bytes,
    seconds,
    mbPerSec: bytes / 1e6 / seconds,
    complete: res.every((r) => r.size === expectBytes && r.code === "200"),
    sizes: res.map((r) => r.size),
    failures: res.filter((r) => r.size !== expectBytes || r.code !== "200").map((r) => `HTTP ${r.code}, ${r.size} bytes, curl exit ${r.why}`),
  };
}
