/**
 * `capsul cog enroll`: make a key pair here, send a CSR with the one-time
 * token over TLS to the hub, pin the hub's CA by the fingerprint the operator
 * gave us, and store the signed certificate. The private key never leaves.
 */
import type { CogTunnelTuning, HostPort, TunnelTuning } from "../config/types.js";
import { AuthError, RuntimeError } from "../lib/errors.js";
import { createKeyAndCsr, parseFingerprint, verifyPinnedChain, certInfo } from "../certs/pki.js";
import { encodeMessage, MessageReader } from "../protocol/messages.js";
import { TUNNEL_PROTOCOL_VERSION, type HubMessage } from "../protocol/control.js";
import { dialHub, peerChain } from "./dial.js";
import { saveIdentity, type CogIdentity } from "./identity.js";

/**
 * Deadline for the whole enrollment exchange after the TLS handshake: the
 * default of cog.tunnel.enroll_timeout, used when `tuning` does not carry one.
 */
export const ENROLL_TIMEOUT_MS = 20_000;

export async function enroll(opts: {
  hub: HostPort;
  token: string;
  caFingerprint: string;
  dataDir: string;
  /** cog.tunnel; its enrollTimeoutMs (default ENROLL_TIMEOUT_MS) bounds the wait for the hub's answer. */
  tuning: TunnelTuning & Partial<Pick<CogTunnelTuning, "enrollTimeoutMs">>;
}): Promise<CogIdentity> {
  const timeoutMs = opts.tuning.enrollTimeoutMs ?? ENROLL_TIMEOUT_MS;
  const fingerprint = parseFingerprint(opts.caFingerprint);
  const { keyPem, csrPem } = await createKeyAndCsr("capsul cog");
  let dialed;
  try {
    dialed = await dialHub({ hub: opts.hub, tuning: opts.tuning });
  } catch (err) {
    throw new RuntimeError(`cannot reach the hub at ${opts.hub.host}:${opts.hub.port}: ${(err as Error).message}`, { cause: err });
  }
  const { socket, session } = dialed;
  session.on("error", () => {});
  try {
    const chain = peerChain(socket);
    if (!chain.issuer) throw new AuthError("the hub did not present its CA certificate; is this a capsul hub?");
    verifyPinnedChain(chain.leaf, chain.issuer, fingerprint);
    const control = session.open();
    control.on("error", () => {});
    const reader = new MessageReader<HubMessage>(control);
    control.write(encodeMessage({ type: "enroll", protocol: TUNNEL_PROTOCOL_VERSION, token: opts.token, csr: csrPem }));
    const timeout = new Promise<never>((_, reject) => {
      setTimeout(() => reject(new RuntimeError("the hub did not answer the enrollment in time")), timeoutMs).unref();
    });
    const answer = await Promise.race([reader.next(), timeout]);
    if (!answer) throw new RuntimeError("the hub closed the connection without answering");
    if (answer.type === "error") throw new AuthError(answer.message);
    if (answer.type !== "enrolled") throw new RuntimeError(`unexpected answer from the hub: ${answer.type}`);
    // The CA the hub hands back must be the one we pinned.
    verifyPinnedChain(chain.leaf, Buffer.from(pemToDer(answer.ca)), fingerprint);
    const info = certInfo(answer.cert);
    const id: CogIdentity = {
      name: info.commonName,
      hub: `${opts.hub.host.includes(":") ? `[${opts.hub.host}]` : opts.hub.host}:${opts.hub.port}`,
      hubDomain: answer.domain,
      caFingerprint: fingerprint,
      keyPem,
      certPem: answer.cert,
      caPem: answer.ca,
    };
    await saveIdentity(opts.dataDir, id);
    return id;
  } finally {
    session.destroy();
    socket.destroy();
  }
}

function pemToDer(pem: string): Uint8Array {
  const b64 = pem.replace(/-----(BEGIN|END) CERTIFICATE-----/g, "").replace(/\s+/g, "");
  return Buffer.from(b64, "base64");
}
