/**
 * The little servers `capsul demo` publishes through the hub: an HTTPS site,
 * a plain HTTP site, and a TCP echo that reads the PROXY header the cog sends
 * and greets the visitor with their real address.
 */
import http from "node:http";
import https from "node:https";
import net from "node:net";
import { parseProxyHeader } from "../protocol/proxyproto.js";

export interface Backends { https: number; http: number; echo: number; close(): Promise<void> }

/** Bytes an echo visitor may send before the PROXY header must be complete. */
export const ECHO_PROXY_HEADER_MAX_BYTES = 536;

function page(title: string, body: string): string {
  return `<!doctype html><title>${title}</title><h1>${title}</h1><p>${body}</p>\n`;
}

function listen(server: net.Server): Promise<number> {
  return new Promise((resolve, reject) => {
    server.once("error", reject);
    server.listen(0, "127.0.0.1", () => resolve((server.address() as net.AddressInfo).port));
  });
}

export async function startBackends(tls: { keyPem: string; certPem: string }): Promise<Backends> {
  const secure = https.createServer({ key: tls.keyPem, cert: tls.certPem }, (req, res) => {
    res.writeHead(200, { "content-type": "text/html; charset=utf-8" });
    res.end(page("Hello over HTTPS from a capsul", `TLS was not terminated at the hub: this page was encrypted by the backend itself. You asked for ${req.headers.host}${req.url}.`));
  });
  const plain = http.createServer((req, res) => {
    res.writeHead(200, { "content-type": "text/html; charset=utf-8" });
    res.end(page("Hello over HTTP from a capsul", `The hub routed you here by your Host header (${req.headers.host}).`));
  });
  const echo = net.createServer({ allowHalfOpen: true }, (sock) => {
    sock.on("error", () => {});
    let buf = Buffer.alloc(0);
    const onData = (chunk: Buffer): void => {
      buf = Buffer.concat([buf, chunk]);
      const r = parseProxyHeader(buf);
      if (r.type === "need-more" && buf.length < ECHO_PROXY_HEADER_MAX_BYTES) return;
      sock.off("data", onData);
      if (r.type !== "ok") { sock.end("no PROXY header\n"); return; }
      const who = r.src ? `${r.src.address}:${r.src.port}` : "unknown";
      sock.write(`hello ${who}, this is an echo server on a cog; type something\n`);
      const rest = buf.subarray(r.headerLength);
      if (rest.length) sock.write(rest);
      sock.pipe(sock);
    };
    sock.on("data", onData);
  });
  const servers = [secure, plain, echo];
  const ports = await Promise.all(servers.map(listen));
  return {
    https: ports[0]!, http: ports[1]!, echo: ports[2]!,
    close: async () => {
      for (const s of servers) (s as http.Server).closeAllConnections?.();
      await Promise.all(servers.map((s) => new Promise<void>((r) => s.close(() => r()))));
    },
  };
}
