import net from "node:net";
import { ProvisionerError } from "./errors.js";

/**
 * A conversation with qemu-guest-agent inside a VM, over the unix socket QEMU
 * gives the VM's virtio-serial port `org.qemu.guest_agent.0` (qemu.ts). The
 * protocol is QMP-like JSON, one object per line, strictly one command at a
 * time. The agent belongs to the tenant: its answers are bounded in size,
 * awaited under a deadline, and only their type is believed. A guest without
 * an agent simply never answers, so every call has a deadline.
 *
 * Start of a conversation: `guest-sync-delimited` makes the agent drop what a
 * previous client left half-sent and answer after a 0xFF byte; everything
 * before that byte is stale and skipped (qemu-ga's documented resync).
 */

/** A reply longer than this is not from a well-behaved agent (guest-fsfreeze-* answer with a number). */
export const GUEST_AGENT_MAX_REPLY_BYTES = 64 * 1024;
const SYNC_MARKER = 0xff;

export class GuestAgent {
  private buf: Buffer = Buffer.alloc(0);
  private synced = false;
  private waiter: ((line: string | Error) => void) | null = null;
  private closed = false;

  private constructor(private readonly sock: net.Socket) {
    sock.on("data", (d: Buffer) => this.onData(d));
    sock.on("error", () => this.close());
    sock.on("close", () => this.fail(new ProvisionerError("agent_closed", "guest agent connection closed", 500)));
  }

  /** Connects to the VM's agent socket; null when there is none (an older VM, or QEMU gone). */
  static open(socketPath: string, timeoutMs: number): Promise<GuestAgent | null> {
    return new Promise((resolve) => {
      const sock = net.createConnection({ path: socketPath });
      const timer = setTimeout(() => { sock.destroy(); resolve(null); }, timeoutMs);
      sock.once("connect", () => { clearTimeout(timer); resolve(new GuestAgent(sock)); });
      sock.once("error", () => { clearTimeout(timer); resolve(null); });
    });
  }

  private onData(d: Buffer): void {
    this.buf = this.buf.length ? Buffer.concat([this.buf, d]) : d;
    if (!this.synced) {
      const i = this.buf.indexOf(SYNC_MARKER);
      if (i < 0) { this.buf = Buffer.alloc(0); return; }
      this.synced = true;
      this.buf = this.buf.subarray(i + 1);
    }
    if (this.buf.length > GUEST_AGENT_MAX_REPLY_BYTES) {
      this.fail(new ProvisionerError("agent_bad_reply", `guest agent sent over ${GUEST_AGENT_MAX_REPLY_BYTES} bytes without a line end`, 502));
      this.close();
      return;
    }
    let nl: number;
    while (this.waiter && (nl = this.buf.indexOf(0x0a)) >= 0) {
      const line = this.buf.subarray(0, nl).toString("utf8").trim();
      this.buf = this.buf.subarray(nl + 1);
      if (!line) continue;
      const w = this.waiter;
      this.waiter = null;
      w(line);
    }
  }

  private fail(e: Error): void {
    const w = this.waiter;
    this.waiter = null;
    w?.(e);
  }

  private nextLine(timeoutMs: number, what: string): Promise<string> {
    return new Promise((resolve, reject) => {
      if (this.closed) { reject(new ProvisionerError("agent_closed", "guest agent connection closed", 500)); return; }
      const timer = setTimeout(() => {
        this.waiter = null;
        reject(new ProvisionerError("agent_timeout", `guest agent: no answer to ${what} within ${timeoutMs} ms`, 504));
      }, timeoutMs);
      this.waiter = (l) => { clearTimeout(timer); if (l instanceof Error) reject(l); else resolve(l); };
      this.onData(Buffer.alloc(0));
    });
  }

  /** One command; resolves with its `return` value, rejects on an agent error, a timeout or garbage. */
  async execute(command: string, args: Record<string, unknown> | undefined, timeoutMs: number): Promise<unknown> {
    this.sock.write(JSON.stringify(args ? { execute: command, arguments: args } : { execute: command }) + "\n");
    const line = await this.nextLine(timeoutMs, command);
    let msg: { return?: unknown; error?: { class?: unknown; desc?: unknown } };
    try {
      msg = JSON.parse(line) as typeof msg;
    } catch {
      throw new ProvisionerError("agent_bad_reply", `guest agent: ${command} answered with something that is not JSON`, 502);
    }
    if (msg && typeof msg === "object" && msg.error) {
      throw new ProvisionerError("agent_error", `guest agent: ${command}: ${String(msg.error.desc ?? msg.error.class ?? "error").slice(0, 200)}`, 502);
    }
    if (!msg || typeof msg !== "object" || !("return" in msg)) {
      throw new ProvisionerError("agent_bad_reply", `guest agent: ${command} answered without "return"`, 502);
    }
    return msg.return;
  }

  /**
   * guest-sync-delimited with a fresh id, then guest-ping: true when a working
   * agent answered both within timeoutMs.
   */
  async ping(timeoutMs: number): Promise<boolean> {
    const id = Math.floor(Math.random() * 2 ** 31);
    const deadline = Date.now() + timeoutMs;
    try {
      this.sock.write(JSON.stringify({ execute: "guest-sync-delimited", arguments: { id } }) + "\n");
      // Lines of an earlier conversation may still come: wait for our id.
      for (;;) {
        const left = deadline - Date.now();
        if (left <= 0) return false;
        const line = await this.nextLine(left, "guest-sync-delimited");
        try {
          if ((JSON.parse(line) as { return?: unknown }).return === id) break;
        } catch { /* stale or garbage: keep reading */ }
      }
      await this.execute("guest-ping", undefined, Math.max(1, deadline - Date.now()));
      return true;
    } catch {
      return false;
    }
  }

  /** Filesystems frozen (guest-fsfreeze-freeze flushes them first). */
  async freeze(timeoutMs: number): Promise<number> {
    const n = await this.execute("guest-fsfreeze-freeze", undefined, timeoutMs);
    if (typeof n !== "number") throw new ProvisionerError("agent_bad_reply", "guest agent: guest-fsfreeze-freeze did not return a number", 502);
    return n;
  }

  async thaw(timeoutMs: number): Promise<number> {
    const n = await this.execute("guest-fsfreeze-thaw", undefined, timeoutMs);
    return typeof n === "number" ? n : 0;
  }

  async frozen(timeoutMs: number): Promise<boolean> {
    return (await this.execute("guest-fsfreeze-status", undefined, timeoutMs)) === "frozen";
  }

  close(): void {
    if (this.closed) return;
    this.closed = true;
    this.sock.destroy();
    this.fail(new ProvisionerError("agent_closed", "guest agent connection closed", 500));
  }
}
