/**
 * A tunnel peer the test drives by hand: real TLS to the hub's tunnel port,
 * with or without a client certificate, and our yamux session on top, or no
 * session at all when the test writes frames itself. For attacks a real cog
 * would never make.
 */
import tls from "node:tls";
import type { Test } from "tap";
import { createInvite, type Hub } from "../../gateway/hub.js";
import type { HubConfig } from "../../config/types.js";
import { createKeyAndCsr, signCogCsr } from "../../certs/pki.js";
import { createLogger, type Logger } from "../../lib/log.js";
import { MuxSession, type MuxOptions, type MuxStream } from "../../protocol/mux.js";
import { encodeMessage, MessageReader } from "../../protocol/messages.js";
import { TUNNEL_PROTOCOL_VERSION, type HubMessage, type WireRoute } from "../../protocol/control.js";

/** A logger that keeps every line (and echoes them with CAPSUL_TEST_LOG=1). */
export function capturingLogger(name: string): { log: Logger; lines: string[] } {
  const lines: string[] = [];
  const log = createLogger({
    level: "debug", component: name,
    write: (l) => { lines.push(l); if (process.env.CAPSUL_TEST_LOG) process.stderr.write(l + "\n"); },
  });
  return { log, lines };
}

/** Resolves when `p` settles, or rejects after `ms` naming `what` (a bound, not a timing assertion). */
export function within<T>(p: Promise<T>, what: string, ms: number): Promise<T> {
  let timer: NodeJS.Timeout;
  const deadline = new Promise<never>((_, reject) => { timer = setTimeout(() => reject(new Error(`${what}: still pending after ${ms} ms`)), ms); });
  return Promise.race([p, deadline]).finally(() => clearTimeout(timer));
}

export interface Identity { keyPem: string; certPem: string; serial: string }

/**
 * A cog known to the hub (invited) with a certificate the hub recorded, as enrollment
 * would leave it; `notBefore` in the past makes one that is due for renewal.
 */
export async function cogIdentity(hubCfg: HubConfig, hub: Hub, name: string, opts: { validityMs?: number; notBefore?: Date } = {}): Promise<Identity> {
  await createInvite(hubCfg, name);
  const { keyPem, csrPem } = await createKeyAndCsr(name);
  const signed = await signCogCsr(hub.pki, csrPem, name, { validityMs: opts.validityMs ?? 90 * 86_400_000, notBefore: opts.notBefore });
  const serial = signed.serial.replace(/^0+/, "");
  await hub.store.recordCert(name, serial, signed.notAfter.getTime());
  return { keyPem, certPem: signed.certPem, serial };
}

/** TLS to the tunnel port: resolves once the handshake is done. */
export async function tlsTo(t: Test, port: number, id?: { keyPem: string; certPem: string }, localAddress?: string): Promise<tls.TLSSocket> {
  const sock = tls.connect({ host: "127.0.0.1", port, localAddress, rejectUnauthorized: false, minVersion: "TLSv1.3", key: id?.keyPem, cert: id?.certPem });
  t.teardown(() => sock.destroy());
  sock.on("error", () => {});
  await new Promise<void>((resolve, reject) => {
    sock.once("secureConnect", () => resolve());
    sock.once("close", () => reject(new Error("closed before the TLS handshake finished")));
  });
  return sock;
}

export interface RawTunnel { sock: tls.TLSSocket; session: MuxSession; control: MuxStream; reader: MessageReader<HubMessage> }

/** TLS + our yamux client + the control stream, nothing said yet. */
export async function rawTunnel(
  t: Test, port: number, id?: { keyPem: string; certPem: string }, mux: Partial<MuxOptions> = {}, localAddress?: string,
): Promise<RawTunnel> {
  const sock = await tlsTo(t, port, id, localAddress);
  const session = new MuxSession(sock, { role: "client", keepaliveIntervalMs: 0, ...mux });
  session.on("error", () => {});
  t.teardown(() => session.destroy());
  const control = session.open();
  control.on("error", () => {});
  return { sock, session, control, reader: new MessageReader<HubMessage>(control) };
}

/** A raw tunnel that said hello and got its welcome. */
export async function helloTunnel(t: Test, port: number, id: Identity, routes: WireRoute[] = [], localAddress?: string): Promise<RawTunnel> {
  const raw = await rawTunnel(t, port, id, {}, localAddress);
  raw.control.write(encodeMessage({ type: "hello", protocol: TUNNEL_PROTOCOL_VERSION, software: "test", routes }));
  const welcome = await within(raw.reader.next(), "the hub's welcome", 10_000);
  if (welcome?.type !== "welcome") throw new Error(`expected a welcome, got ${JSON.stringify(welcome)}`);
  return raw;
}

/** Waits until `ok()` holds (polling), or fails naming `what` after `ms`. */
export async function until(what: string, ok: () => boolean, ms = 20_000): Promise<void> {
  const deadline = Date.now() + ms;
  while (!ok()) {
    if (Date.now() > deadline) throw new Error(`timed out waiting for ${what}`);
    await new Promise((resolve) => setTimeout(resolve, 20));
  }
}
