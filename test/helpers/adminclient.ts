/**
 * A raw HTTP client for the admin listeners, on node:http so a test can send any Host,
 * Origin or Authorization header (fetch forbids setting Host) and a chunked body; plus
 * `scrape()`, which reads /metrics through the strict parser.
 */
import http from "node:http";
import net from "node:net";
import { Scrape } from "./promtext.js";

export interface AdminResponse { status: number; headers: http.IncomingHttpHeaders; body: string }

export interface AdminRequest {
  method?: string;
  headers?: Record<string, string>;
  /** Sent with Content-Length, or chunked when `chunked` is set. */
  body?: string | Buffer;
  chunked?: boolean;
}

/** One request to 127.0.0.1:port; never throws on an HTTP error status. */
export function adminRequest(port: number, path: string, req: AdminRequest = {}): Promise<AdminResponse> {
  return new Promise((resolve, reject) => {
    const headers: Record<string, string> = { host: `127.0.0.1:${port}`, ...req.headers };
    if (req.body !== undefined && !req.chunked) headers["content-length"] = String(Buffer.byteLength(req.body));
    const r = http.request({ host: "127.0.0.1", port, path, method: req.method ?? "GET", headers, agent: false, setHost: false }, (res) => {
      const chunks: Buffer[] = [];
      res.on("data", (c: Buffer) => chunks.push(c));
      res.on("end", () => resolve({ status: res.statusCode ?? 0, headers: res.headers, body: Buffer.concat(chunks).toString("utf8") }));
      res.on("error", reject);
    });
    r.on("error", reject);
    if (req.body !== undefined && req.chunked) {
      // Several chunks, so a size limit has to be checked while the body streams.
      const b = Buffer.from(req.body);
      const step = Math.max(1, Math.ceil(b.length / 4));
      for (let i = 0; i < b.length; i += step) r.write(b.subarray(i, i + step));
      r.end();
    } else {
      r.end(req.body);
    }
  });
}

export async function adminJson<T = unknown>(port: number, path: string, req: AdminRequest = {}): Promise<{ status: number; json: T }> {
  const res = await adminRequest(port, path, req);
  return { status: res.status, json: JSON.parse(res.body) as T };
}

/** GET /metrics, checked by the strict exposition-format parser. */
export async function scrape(port: number, headers: Record<string, string> = {}): Promise<Scrape> {
  const res = await adminRequest(port, "/metrics", { headers });
  if (res.status !== 200) throw new Error(`/metrics answered ${res.status}: ${res.body}`);
  if (!/^text\/plain; version=0\.0\.4/.test(String(res.headers["content-type"]))) throw new Error(`/metrics content-type ${res.headers["content-type"]}`);
  return new Scrape(res.body);
}

/** Sends `bytes` raw on a new connection and resolves with everything read until the server closes. */
export function rawExchange(port: number, bytes: string | Buffer): Promise<string> {
  return new Promise((resolve, reject) => {
    const s = net.connect({ port, host: "127.0.0.1" }, () => s.write(bytes));
    const chunks: Buffer[] = [];
    s.on("data", (c: Buffer) => chunks.push(c));
    s.on("error", reject);
    s.on("close", () => resolve(Buffer.concat(chunks).toString("latin1")));
  });
}
