/**
 * The registry of live tunnels and the tunnel server: one mTLS connection per
 * cog, yamux on top, the first stream the cog opens is the control stream.
 * Unauthenticated connections may only enroll. A reconnecting cog replaces
 * its own stale session; while a cog is away its routes are held for the
 * grace period so visitors can wait for it instead of being refused.
 */
import { EventEmitter } from "node:events";
import tls from "node:tls";
import type { HubConfig } from "../config/types.js";
import type { Logger } from "../lib/log.js";
import { ProtocolError } from "../lib/errors.js";
import { MuxSession, type MuxStream } from "../protocol/mux.js";
import { encodeMessage, MessageReader } from "../protocol/messages.js";
import {
  checkWireRoutes, TUNNEL_PROTOCOL_VERSION, versionMismatchMessage,
  type AcceptedRoute, type CogMessage, type HubMessage,
} from "../protocol/control.js";
import type { HubPki } from "../certs/pki.js";
import { peerAuthResult, signCogCsr } from "../certs/pki.js";
import { hashToken } from "../certs/tokens.js";
import type { HubState } from "./state.js";
import type { RouteTable } from "./routes.js";

/**
 * How long an unauthenticated or silent connection may take to send its first
 * control message: the default of hub.tunnel.control_hello_timeout.
 */
export const CONTROL_HELLO_TIMEOUT_MS = 10_000;
/**
 * How often the hub checks SQLite for revocations written by `capsul hub
 * revoke`: the default of hub.tunnel.revocation_poll_interval.
 */
export const REVOCATION_POLL_MS = 500;
/**
 * The hub takes exactly one stream per tunnel, the control stream, straight from the
 * session's "stream" event; a stream a cog opens after it would only wait in the backlog,
 * holding up to max_stream_window of our memory. 0: every such stream is refused (RST) at
 * once. Not a config key on purpose: any other value only lets a peer park memory.
 */
export const HUB_ACCEPT_BACKLOG = 0;

export interface CogLink {
  cog: string;
  session: MuxSession | null;
  /** Visitors waiting for the cog to come back during the grace period. */
  waiters: Array<(s: MuxSession | null) => void>;
  graceTimer: NodeJS.Timeout | null;
  remote: string;
  connectedAt: number;
}

/** Route summary for `capsul hub cogs`: "tls:web.example", "tcp:20001". */
function describe(routes: AcceptedRoute[]): string[] {
  return routes.map((r) => (r.kind === "tcp" ? `tcp:${r.port}` : `${r.kind}:${r.hostname}`));
}

function normSerial(s: string): string {
  return s.toLowerCase().replace(/^0+/, "");
}

/** Events: "attached" (cog: string, session: MuxSession) when a cog's tunnel is authenticated and in use. */
export class Tunnels extends EventEmitter {
  readonly links = new Map<string, CogLink>();
  private server: tls.Server | null = null;
  private pollTimer: NodeJS.Timeout | null = null;
  private lastDataVersion = -1;
  private closing = false;

  constructor(
    private readonly cfg: HubConfig,
    private readonly state: HubState,
    private readonly pki: HubPki,
    private readonly routes: RouteTable,
    private readonly log: Logger,
  ) {
    super();
  }

  async listen(): Promise<number> {
    const server = tls.createServer({
      key: this.pki.hubKeyPem,
      cert: this.pki.hubCertPem + "\n" + this.pki.caCertPem,
      ca: this.pki.caCertPem,
      requestCert: true,
      rejectUnauthorized: false,
      minVersion: "TLSv1.3",
      handshakeTimeout: this.cfg.tunnel.handshakeTimeoutMs,
    });
    server.on("secureConnection", (sock) => this.onConnection(sock));
    server.on("tlsClientError", (err, sock) => {
      this.log.warn("tunnel TLS handshake failed", { remote: `${sock.remoteAddress}:${sock.remotePort}`, error: err.message });
    });
    this.server = server;
    const { host, port } = this.cfg.listen.tunnel;
    await new Promise<void>((resolve, reject) => {
      server.once("error", reject);
      server.listen(port, host, () => { server.off("error", reject); resolve(); });
    });
    server.on("error", (err) => this.log.error("tunnel listener error", { error: err.message }));
    this.state.markAllOffline();
    this.pollTimer = setInterval(() => this.checkRevocations(), this.cfg.tunnel.revocationPollIntervalMs);
    this.pollTimer.unref();
    return (server.address() as { port: number }).port;
  }

  /** A live session for the cog, waiting out its grace period if it is reconnecting. */
  sessionFor(cog: string): MuxSession | null | Promise<MuxSession | null> {
    const link = this.links.get(cog);
    if (!link) return null;
    if (link.session) return link.session;
    if (!link.graceTimer) return null;
    return new Promise((resolve) => link.waiters.push(resolve));
  }

  private onConnection(sock: tls.TLSSocket): void {
    const remote = `${sock.remoteAddress}:${sock.remotePort}`;
    sock.setNoDelay(true);
    const tuning = this.cfg.tunnel;
    const session = new MuxSession(sock, {
      role: "server",
      maxStreamWindowBytes: tuning.maxStreamWindowBytes,
      maxAutoWindowBytes: tuning.maxAutoWindowBytes,
      keepaliveIntervalMs: tuning.keepaliveIntervalMs,
      keepaliveTimeoutMs: tuning.keepaliveTimeoutMs,
      acceptBacklog: HUB_ACCEPT_BACKLOG,
      maxFramePayloadBytes: tuning.maxFramePayloadBytes,
      writeBatchMaxBytes: tuning.writeBatchMaxBytes,
      closeLingerMs: tuning.closeLingerMs,
    });
    session.on("error", () => {});
    const timer = setTimeout(() => {
      this.log.warn("tunnel closed: no control message in time", { remote });
      session.destroy();
    }, this.cfg.tunnel.controlHelloTimeoutMs);
    session.once("close", () => clearTimeout(timer));
    session.once("stream", (control: MuxStream) => {
      clearTimeout(timer);
      this.onControl(sock, session, control, remote).catch((err: Error) => {
        // A tunnel that simply went away ends its control stream with an error too; that is not news.
        if (!session.closed && !this.closing) {
          const level = err instanceof ProtocolError ? "warn" : "error";
          this.log[level]("tunnel control failed", { remote, error: err.message });
        }
        session.destroy();
      });
    });
  }

  private async onControl(sock: tls.TLSSocket, session: MuxSession, control: MuxStream, remote: string): Promise<void> {
    const reader = new MessageReader<CogMessage>(control);
    const send = (m: HubMessage): void => { control.write(encodeMessage(m)); };
    const refuse = (m: HubMessage & { type: "error" }): void => {
      this.log.warn("tunnel refused", { remote, reason: m.message });
      control.end(encodeMessage(m));
      setTimeout(() => session.destroy(), 1000).unref();
    };
    const first = await reader.next();
    if (!first) { session.destroy(); return; }
    if (first.type === "enroll") {
      await this.enroll(first, send, refuse, remote);
      control.end();
      return;
    }
    if (first.type !== "hello") throw new ProtocolError(`expected hello, got ${JSON.stringify(first.type)}`);
    if (first.protocol !== TUNNEL_PROTOCOL_VERSION) {
      refuse({ type: "error", code: "version", message: versionMismatchMessage(TUNNEL_PROTOCOL_VERSION, first.protocol) });
      return;
    }
    // Identity comes from the certificate alone.
    const auth = peerAuthResult(sock);
    if (!auth.ok) {
      refuse({ type: "error", code: "auth", message: `hub refused the tunnel: ${auth.reason}; enroll this cog again with capsul cog enroll` });
      return;
    }
    const cog = auth.cogName;
    const problem = this.state.certProblem(cog, normSerial(auth.serial));
    if (problem) {
      refuse({ type: "error", code: "revoked", message: `hub refused the tunnel: ${problem}` });
      return;
    }
    const wanted = checkWireRoutes(first.routes);
    this.attach(cog, session, remote);
    const result = await this.routes.apply(cog, wanted);
    send({ type: "welcome", protocol: TUNNEL_PROTOCOL_VERSION, cog, domain: this.cfg.domain, accepted: result.accepted, refused: result.refused });
    this.state.markOnline(cog, remote, describe(result.accepted));
    this.log.info("cog connected", { cog, remote, routes: result.accepted.length, refused: result.refused.length, software: first.software });
    for (const r of result.refused) this.log.warn("route refused", { cog, route: r.name, reason: r.reason });

    for (;;) {
      const m = await reader.next();
      if (!m) break;
      if (m.type === "routes") {
        const res = await this.routes.apply(cog, checkWireRoutes(m.routes));
        send({ type: "routes-result", accepted: res.accepted, refused: res.refused });
        this.state.markOnline(cog, remote, describe(res.accepted));
        for (const r of res.refused) this.log.warn("route refused", { cog, route: r.name, reason: r.reason });
      } else if (m.type === "renew") {
        const signed = await signCogCsr(this.pki, m.csr, cog, { validityMs: this.cfg.cogCertTtlMs });
        this.state.recordCert(cog, normSerial(signed.serial), signed.notAfter.getTime());
        send({ type: "renewed", cert: signed.certPem });
        this.log.info("cog certificate renewed", { cog, notAfter: signed.notAfter.toISOString() });
      } else {
        throw new ProtocolError(`unexpected control message ${JSON.stringify(m.type)}`);
      }
    }
  }

  private async enroll(
    m: CogMessage & { type: "enroll" },
    send: (m: HubMessage) => void,
    refuse: (m: HubMessage & { type: "error" }) => void,
    remote: string,
  ): Promise<void> {
    if (m.protocol !== TUNNEL_PROTOCOL_VERSION) {
      refuse({ type: "error", code: "version", message: versionMismatchMessage(TUNNEL_PROTOCOL_VERSION, m.protocol) });
      return;
    }
    if (typeof m.token !== "string" || typeof m.csr !== "string") throw new ProtocolError("enroll needs token and csr");
    const used = this.state.useInvite(hashToken(m.token));
    if ("problem" in used) {
      refuse({ type: "error", code: "enroll", message: `enrollment refused: ${used.problem}` });
      return;
    }
    let signed;
    try {
      signed = await signCogCsr(this.pki, m.csr, used.cog, { validityMs: this.cfg.cogCertTtlMs });
    } catch (err) {
      refuse({ type: "error", code: "enroll", message: `enrollment refused: ${(err as Error).message}` });
      return;
    }
    this.state.recordCert(used.cog, normSerial(signed.serial), signed.notAfter.getTime());
    send({ type: "enrolled", cog: used.cog, cert: signed.certPem, ca: this.pki.caCertPem, domain: this.cfg.domain });
    this.log.info("cog enrolled", { cog: used.cog, remote, notAfter: signed.notAfter.toISOString() });
  }

  private attach(cog: string, session: MuxSession, remote: string): void {
    let link = this.links.get(cog);
    if (link?.session && link.session !== session) {
      this.log.info("cog reconnected: replacing its previous tunnel", { cog, remote });
      const old = link.session;
      link.session = null;
      old.destroy();
    }
    if (!link) {
      link = { cog, session: null, waiters: [], graceTimer: null, remote, connectedAt: Date.now() };
      this.links.set(cog, link);
    }
    if (link.graceTimer) clearTimeout(link.graceTimer);
    link.graceTimer = null;
    link.session = session;
    link.remote = remote;
    link.connectedAt = Date.now();
    this.emit("attached", cog, session);
    for (const w of link.waiters.splice(0)) w(session);
    const l = link;
    session.once("close", (err?: Error) => {
      if (l.session !== session || this.closing) return; // replaced by a newer tunnel, or hub shutdown
      l.session = null;
      this.state.markOffline(cog);
      this.log.info("cog disconnected", { cog, remote, error: err?.message });
      this.startGrace(l);
    });
  }

  private startGrace(link: CogLink): void {
    const end = (): void => {
      link.graceTimer = null;
      for (const w of link.waiters.splice(0)) w(null);
      if (!link.session) {
        this.links.delete(link.cog);
        this.routes.dropCog(link.cog);
      }
    };
    if (this.cfg.limits.graceMs <= 0) { end(); return; }
    link.graceTimer = setTimeout(end, this.cfg.limits.graceMs);
    link.graceTimer.unref();
  }

  /** Drops a cog at once: no grace, routes withdrawn. */
  drop(cog: string, why: string): void {
    const link = this.links.get(cog);
    if (!link) return;
    this.log.warn("dropping cog tunnel", { cog, reason: why });
    if (link.graceTimer) clearTimeout(link.graceTimer);
    link.graceTimer = null;
    const s = link.session;
    link.session = null;
    this.links.delete(cog);
    for (const w of link.waiters.splice(0)) w(null);
    this.routes.dropCog(cog);
    this.state.markOffline(cog);
    s?.destroy();
  }

  private checkRevocations(): void {
    let v: number;
    try { v = this.state.dataVersion(); } catch { return; }
    if (v === this.lastDataVersion) return;
    this.lastDataVersion = v;
    const revoked = this.state.revokedCogs();
    for (const cog of [...this.links.keys()]) if (revoked.has(cog)) this.drop(cog, "revoked by the operator");
  }

  async close(): Promise<void> {
    this.closing = true;
    if (this.pollTimer) clearInterval(this.pollTimer);
    for (const cog of [...this.links.keys()]) {
      const link = this.links.get(cog)!;
      if (link.graceTimer) clearTimeout(link.graceTimer);
      for (const w of link.waiters.splice(0)) w(null);
      link.session?.destroy();
    }
    this.links.clear();
    const server = this.server;
    if (server) await new Promise<void>((resolve) => server.close(() => resolve()));
  }
}
