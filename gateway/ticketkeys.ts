/**
 * TLS 1.3 session tickets for cog tunnels (issue 12: a restarted hub resumes its cogs'
 * sessions instead of doing ~1,000 full mTLS handshakes, ~2 ms of hub CPU each).
 *
 * A ticket is the session (resumption secret, the cog's certificate, its verification
 * result) sealed with the hub's ticket key; the cog hands it back in its next ClientHello.
 * The key lives in `<data_dir>/tunnel-ticket.key` (48 bytes: Node's key name, HMAC key and
 * AES key, 16 each), 0600, written atomically, so a hub restarted after kill -9 and every
 * hub worker on the machine (they share the data dir) open the tickets the others sealed.
 * Hubs on other machines keep their own file: a cog's ticket from hub A is unknown to hub B,
 * which does a full handshake (each endpoint has its own ticket on the cog).
 *
 * Rotation: a key older than hub.tunnel.session_ticket_rotation (by the file's mtime) is
 * replaced by a fresh one; whichever process notices first writes it, the others see the
 * new mtime and load it (two writing at once: the last rename wins, and the other process
 * takes it at its next look, within TICKET_KEY_CHECK_INTERVAL_MS; meanwhile its new tickets
 * only open in itself, and a cog with one of them does a full handshake elsewhere). Node's tls.Server holds one ticket key and has no ticket-key
 * callback, so a ticket sealed under the previous key is not opened any more: that cog does
 * one full handshake and connects as it would without resumption. To keep that from
 * cutting a ticket's life short by surprise, the config requires session_ticket_lifetime
 * ≤ session_ticket_rotation (config/tunnel.ts).
 *
 * A resumed handshake brings the cog no new ticket (OpenSSL renews only when a ticket-key
 * callback asks, and Node has none), so cogs fetch a fresh one every cog.tunnel.session_refresh
 * on a side connection (tunnel-client/dial.ts fetchTicket).
 *
 * Nothing here decides who a cog is: a resumed session carries the certificate the full
 * handshake verified, and gateway/tunnels.ts checks it (identity, expiry, revocation by
 * serial) on every tunnel exactly as on a full handshake.
 */
import { createHash, randomBytes } from "node:crypto";
import { readFile, stat } from "node:fs/promises";
import path from "node:path";
import { writeSecretFile } from "../certs/files.js";
import type { Logger } from "../lib/log.js";

/** The key file in the hub's data dir. */
export const TICKET_KEY_FILE = "tunnel-ticket.key";
/** Node's ticketKeys: 16 bytes key name, 16 HMAC-SHA256 key, 16 AES-128 key. */
export const TICKET_KEY_BYTES = 48;
/** How often a process looks at the file's mtime (a rotation by another worker, or due): at most this, and at most a tenth of the rotation. */
export const TICKET_KEY_CHECK_INTERVAL_MS = 60_000;
/** A rotation period this short is checked this often at least (the timer's floor). */
export const TICKET_KEY_CHECK_MIN_INTERVAL_MS = 100;

/**
 * The TLS session id context of the tunnel server: a hash of the CA certificate. OpenSSL only
 * resumes a session whose context matches, so a ticket sealed before the CA changed (a hub
 * re-keyed with a new pki/) is never opened under the new CA, even with the same ticket key.
 * Node's default is a hash of process.argv, which a restart with other arguments, or a
 * worker, would not share. 32 hex characters: OpenSSL's SSL_MAX_SID_CTX_LENGTH is 32 bytes.
 */
export function tunnelSessionIdContext(caCertPem: string): string {
  return createHash("sha256").update("capsul-tunnel-session\0").update(caCertPem).digest("hex").slice(0, 32);
}

export class TicketKeys {
  private key: Buffer | null = null;
  /** The loaded file's mtime (ms) and inode: another process's rotation changes them. */
  private loaded: { mtimeMs: number; ino: number } | null = null;
  private timer: NodeJS.Timeout | null = null;
  private checking = false;

  constructor(
    private readonly dataDir: string,
    private rotationMs: () => number,
    private readonly log: Logger,
    /** Called with each key loaded after the first (a rotation here or in another process). */
    private readonly onChange: (key: Buffer) => void,
  ) {}

  get file(): string { return path.join(this.dataDir, TICKET_KEY_FILE); }

  /** The current key: the file's, or a fresh one written to it when it is missing, unreadable or the wrong size. */
  async load(): Promise<Buffer> {
    await this.check(true);
    this.schedule();
    return this.key!;
  }

  /** Reads the file; rotates when it is due; writes a fresh key when the file is missing or bad. Never throws. */
  private async check(first = false): Promise<void> {
    if (this.checking) return;
    this.checking = true;
    try {
      let st: { mtimeMs: number; ino: number } | null = null;
      try {
        st = await stat(this.file);
      } catch (err) {
        if ((err as NodeJS.ErrnoException).code !== "ENOENT") this.log.warn("session ticket key unreadable: a fresh one is made", { file: this.file, error: (err as Error).message });
      }
      if (st && this.loaded && st.mtimeMs === this.loaded.mtimeMs && st.ino === this.loaded.ino) {
        if (Date.now() - st.mtimeMs < this.rotationMs()) return; // unchanged and not due
        await this.fresh("rotated");
        return;
      }
      if (st) {
        const key = await this.read();
        if (key) {
          if (Date.now() - st.mtimeMs >= this.rotationMs()) { await this.fresh("rotated"); return; }
          this.use(key, st, first);
          return;
        }
      }
      await this.fresh(first && !st ? "created" : "replaced");
    } catch (err) {
      // A data dir we cannot write: keep the key we have (or a key of our own), tickets still
      // work in this process; the next check tries again.
      this.log.error("session ticket key not saved", { file: this.file, error: (err as Error).message });
      if (!this.key) this.use(randomBytes(TICKET_KEY_BYTES), null, first);
    } finally {
      this.checking = false;
    }
  }

  /** The file's key, or null (with one log line) when it is not exactly TICKET_KEY_BYTES. */
  private async read(): Promise<Buffer | null> {
    let buf: Buffer;
    try {
      buf = await readFile(this.file);
    } catch (err) {
      this.log.warn("session ticket key unreadable: a fresh one is made", { file: this.file, error: (err as Error).message });
      return null;
    }
    if (buf.length !== TICKET_KEY_BYTES) {
      this.log.warn("session ticket key file is corrupt: a fresh key is made (cogs do one full handshake)", { file: this.file, bytes: buf.length, want: TICKET_KEY_BYTES });
      return null;
    }
    return buf;
  }

  /** Writes a fresh key, then uses what the file holds (another process may have renamed its own over ours). */
  private async fresh(why: "created" | "rotated" | "replaced"): Promise<void> {
    await writeSecretFile(this.file, randomBytes(TICKET_KEY_BYTES));
    const st = await stat(this.file);
    const key = await this.read();
    if (!key) throw new Error("the key just written reads back wrong");
    this.log.info(`session ticket key ${why}`, { file: this.file });
    this.use(key, st, this.key === null);
  }

  private use(key: Buffer, st: { mtimeMs: number; ino: number } | null, first: boolean): void {
    this.loaded = st ? { mtimeMs: st.mtimeMs, ino: st.ino } : null;
    const changed = this.key !== null && !this.key.equals(key);
    this.key = key;
    if (changed && !first) this.onChange(key);
  }

  private schedule(): void {
    if (this.timer) clearTimeout(this.timer);
    const every = Math.max(TICKET_KEY_CHECK_MIN_INTERVAL_MS, Math.min(TICKET_KEY_CHECK_INTERVAL_MS, Math.floor(this.rotationMs() / 10)));
    this.timer = setTimeout(() => { void this.check().finally(() => { if (this.timer) this.schedule(); }); }, every);
    this.timer.unref();
  }

  /** A reload changed the rotation period: the next check uses it. */
  reschedule(): void { if (this.timer) this.schedule(); }

  close(): void {
    if (this.timer) clearTimeout(this.timer);
    this.timer = null;
  }
}
