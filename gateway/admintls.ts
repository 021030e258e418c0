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
import { AcmeManager, type CertRow } from "../certs/acme.js";
import { RuntimeError } from "../lib/errors.js";
import type { KeyPair } from "../lib/adminhttp.js";
import type { Logger } from "../lib/log.js";

/** The capsul.yaml section whose keys the ACME log lines name. */
const HUB_ACME_SECTION = "hub.acme";

function readPem(file: string, key: string): string {
  try {
    return fs.readFileSync(file, "utf8");
  } catch (err) {
    throw new RuntimeError(`cannot read hub.admin.${key} ${file}: ${(err as NodeJS.ErrnoException).code ?? (err as Error).message}`, { cause: err });
  }
}

/** Emits "certificate" (KeyPair) whenever the pair to serve changes. */
export class AdminTls extends EventEmitter {
  /** The ACME client (tls: acme), else null; its `challenges` are what the public listeners answer. */
  readonly acme: AcmeManager | null;
  private files: KeyPair | null = null;
  private lastSerial: string | null = null;

  constructor(private readonly cfg: HubConfig, private readonly log: Logger) {
    super();
    this.acme = cfg.admin.tls === "acme" ? new AcmeManager(cfg.acme, cfg.dataDir, log, Math.random, HUB_ACME_SECTION) : null;
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
      this.files = pair;
      return;
    }
    if (!this.acme) return;
    await this.acme.start();
    this.acme.on("change", this.onChange);
  }

  /** Starts ordering (or scheduling the renewal of) hub.admin.hostname: call once the public listener its challenge comes in by is open. */
  begin(): void {
    const a = this.cfg.admin;
    this.acme?.setNames([{ name: a.hostname!, challenge: a.challenge, ready: true }]);
  }

  /** The pair to serve now, or null (tls: acme before the first certificate). */
  current(): KeyPair | null {
    if (this.files) return this.files;
    return this.acme?.keyPair(this.cfg.admin.hostname!) ?? null;
  }

  /** The admin certificate's row (tls: acme), as `capsul hub certs` prints it; metrics read not_after. */
  list(): CertRow[] {
    return this.acme?.list() ?? [];
  }

  private readonly onChange = (): void => {
    const row = this.acme!.list().find((r) => r.name === this.cfg.admin.hostname);
    const pair = this.current();
    if (!row?.serial || !pair || row.serial === this.lastSerial) return;
    this.lastSerial = row.serial;
    this.emit("certificate", pair);
  };

  async close(): Promise<void> {
    this.acme?.off("change", this.onChange);
    await this.acme?.close();
  }
}
