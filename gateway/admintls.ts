/**
 * The certificate of the hub's admin listener (hub.admin.tls):
 *
 * - off: plain HTTP. Off loopback that sends the admin token in clear, so start says so
 *   in one warning line (startHubAdmin).
 * - files: hub.admin.cert_file and key_file, read and checked (the key must match) at start.
 * - acme: the cog's ACME machinery (certs/acme.ts AcmeManager: persisted account, 0600
 *   storage under <hub data_dir>/acme/, renewal at hub.acme.renew_at with jitter, backoff
 *   honouring Retry-After, one order per name) for the one name hub.admin.hostname. The
 *   CA's validator is answered by this hub itself on its public listeners
 *   (gateway/visitors.ts reads `challenges`): HTTP-01 on hub.listen.http, only for
 *   requests whose Host is that name; TLS-ALPN-01 on hub.listen.tls, only for a
 *   ClientHello with that SNI and ALPN acme-tls/1. Every other name, a capsul's own
 *   challenge included, is routed as before.
 *
 * Until the first certificate exists (the CA unreachable at the first start), the
 * listener is bound but refuses every TLS handshake with an alert: it never falls back to
 * plain HTTP, which would send the token in clear. A renewal is handed to the listener
 * for the next handshake (lib/adminhttp.ts setCertificate); open connections keep theirs.
 */
import { EventEmitter } from "node:events";
import fs from "node:fs";
import tls from "node:tls";
import type { HubConfig } from "../config/types.js";
import { AcmeManager } from "../certs/acme.js";
import { AcmeStore, certFacts } from "../certs/acme-store.js";
import { ChallengeStore } from "../certs/challenges.js";
import { RuntimeError } from "../lib/errors.js";
import type { KeyPair } from "../lib/adminhttp.js";
import type { Logger } from "../lib/log.js";

/** The capsul.yaml section whose keys the ACME log lines name. */
const HUB_ACME_SECTION = "hub.acme";

/** What one hub worker tells the others about the admin certificate (gateway/workers.ts relays it). */
export type AdminAcmeShare =
  | { op: "http-add"; name: string; token: string; keyAuthorization: string }
  | { op: "http-remove"; name: string; token: string }
  | { op: "alpn-add"; name: string; keyPem: string; certPem: string }
  | { op: "alpn-remove"; name: string }
  | { op: "cert"; name: string; keyPem: string; chainPem: string };

/**
 * With hub.workers above 1 every worker serves the public ports and the admin listener
 * (they share each socket), so the CA's validator and admin clients reach any of them.
 * Worker 1 is the owner: it orders, and `send` passes each challenge answer (resolving
 * once every other worker holds it, before the CA is told to validate) and each new
 * certificate to the others, the followers, which only apply() what they are sent.
 * Absent: a single hub, owner of everything.
 */
export type AdminTlsRole = { role: "owner"; send(share: AdminAcmeShare): Promise<void> } | { role: "follower" };

/** The owner's challenge store: every change is also sent to the followers, and awaited. */
class SharedChallenges extends ChallengeStore {
  constructor(private readonly send: (share: AdminAcmeShare) => Promise<void>) { super(); }
  override addHttp(name: string, token: string, keyAuthorization: string): Promise<void> {
    super.addHttp(name, token, keyAuthorization);
    return this.send({ op: "http-add", name, token, keyAuthorization });
  }
  override removeHttp(name: string, token: string): Promise<void> {
    super.removeHttp(name, token);
    return this.send({ op: "http-remove", name, token });
  }
  override addAlpn(name: string, keyPem: string, certPem: string): Promise<void> {
    super.addAlpn(name, keyPem, certPem);
    return this.send({ op: "alpn-add", name, keyPem, certPem });
  }
  override removeAlpn(name: string): Promise<void> {
    super.removeAlpn(name);
    return this.send({ op: "alpn-remove", name });
  }
}

function readPem(file: string, key: string): string {
  try {
    return fs.readFileSync(file, "utf8");
  } catch (err) {
    throw new RuntimeError(`cannot read hub.admin.${key} ${file}: ${(err as NodeJS.ErrnoException).code ?? (err as Error).message}`, { cause: err });
  }
}

/** Emits "certificate" (KeyPair) whenever the pair to serve changes. */
export class AdminTls extends EventEmitter {
  /** The ACME client (tls: acme, in a single hub or worker 1), else null. */
  readonly acme: AcmeManager | null;
  /** The challenge answers the public listeners serve (tls: acme), else null. */
  readonly challenges: ChallengeStore | null;
  /** A follower's certificate (from the data dir at start, then from the owner); the files' pair (tls: files). */
  private pair: KeyPair | null = null;
  private lastSerial: string | null = null;

  constructor(private readonly cfg: HubConfig, private readonly log: Logger, private readonly role: AdminTlsRole | null = null) {
    super();
    const acme = cfg.admin.tls === "acme";
    const owner = role?.role !== "follower";
    const challenges = !acme ? null : role?.role === "owner" ? new SharedChallenges(role.send) : new ChallengeStore();
    this.challenges = challenges;
    this.acme = acme && owner ? new AcmeManager(cfg.acme, cfg.dataDir, log, Math.random, { section: HUB_ACME_SECTION, challenges: challenges! }) : null;
  }

  get enabled(): boolean {
    return this.cfg.admin.tls !== "off";
  }

  /** Reads the files, or what ACME stored earlier; orders nothing yet (see begin()). Throws a one-line RuntimeError. */
  async start(): Promise<void> {
    const a = this.cfg.admin;
    if (a.tls === "files") {
      const pair = { chainPem: readPem(a.certFile!, "cert_file"), keyPem: readPem(a.keyFile!, "key_file") };
      try {
        tls.createSecureContext({ key: pair.keyPem, cert: pair.chainPem });
      } catch (err) {
        throw new RuntimeError(`hub.admin.cert_file ${a.certFile} and key_file ${a.keyFile} do not make a certificate: ${(err as Error).message}`, { cause: err });
      }
      this.pair = pair;
      return;
    }
    if (a.tls !== "acme") return;
    if (this.acme) {
      await this.acme.start();
      this.acme.on("change", this.onChange);
      return;
    }
    // A follower starts with what the owner stored (it may have been restarted long after the order).
    const stored = new AcmeStore(this.cfg.dataDir).loadCerts().certs.find((c) => c.name === a.hostname && c.directoryUrl === this.cfg.acme.directoryUrl);
    if (stored) this.apply({ op: "cert", name: stored.name, keyPem: stored.keyPem, chainPem: stored.chainPem });
  }

  /** Starts ordering (or scheduling the renewal of) hub.admin.hostname: call once the public listener its challenge comes in by is open. */
  begin(): void {
    const a = this.cfg.admin;
    this.acme?.setNames([{ name: a.hostname!, challenge: a.challenge, ready: true }]);
  }

  /** A follower: what the owner sent (a malformed certificate is logged and ignored; the old one stays). */
  apply(share: AdminAcmeShare): void {
    const c = this.challenges;
    if (c === null || share.name !== this.cfg.admin.hostname) return;
    if (share.op === "http-add") c.addHttp(share.name, share.token, share.keyAuthorization);
    else if (share.op === "http-remove") c.removeHttp(share.name, share.token);
    else if (share.op === "alpn-add") c.addAlpn(share.name, share.keyPem, share.certPem);
    else if (share.op === "alpn-remove") c.removeAlpn(share.name);
    else {
      let serial: string;
      try {
        tls.createSecureContext({ key: share.keyPem, cert: share.chainPem });
        serial = certFacts(share.chainPem).serial;
      } catch (err) {
        this.log.warn("ignoring an admin certificate from worker 1 that does not load", { error: (err as Error).message });
        return;
      }
      this.pair = { keyPem: share.keyPem, chainPem: share.chainPem };
      if (serial !== this.lastSerial) {
        this.lastSerial = serial;
        this.emit("certificate", this.pair);
      }
    }
  }

  /** The pair to serve now, or null (tls: acme before the first certificate). */
  current(): KeyPair | null {
    if (this.pair) return this.pair;
    return this.acme?.keyPair(this.cfg.admin.hostname!) ?? null;
  }

  /** The names the admin listener answers as (Host), besides its addresses: hub.admin.hostname, or what cert_file names. */
  hostNames(): string[] {
    const a = this.cfg.admin;
    if (a.hostname) return [a.hostname];
    return a.tls === "files" && this.pair ? certFacts(this.pair.chainPem).names.filter((n) => !n.startsWith("*.")) : [];
  }

  /** When the certificate served now expires (ms), or null: what /metrics exports. */
  notAfterMs(): number | null {
    const p = this.current();
    return p ? certFacts(p.chainPem).notAfter.getTime() : null;
  }

  private readonly onChange = (): void => {
    const row = this.acme!.list().find((r) => r.name === this.cfg.admin.hostname);
    const pair = this.current();
    if (!row?.serial || !pair || row.serial === this.lastSerial) return;
    this.lastSerial = row.serial;
    this.emit("certificate", pair);
    if (this.role?.role === "owner") {
      // Nothing waits for it (the primary logs a worker that does not confirm); a worker started later reads the data dir.
      void this.role.send({ op: "cert", name: row.name, ...pair });
    }
  };

  async close(): Promise<void> {
    this.acme?.off("change", this.onChange);
    await this.acme?.close();
  }
}
