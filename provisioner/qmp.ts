import { EventEmitter } from "node:events";
import net from "node:net";
import { ProvisionerError } from "./errors.js";

/**
 * A QMP client (QEMU Machine Protocol: JSON objects, one per line, over the VM's
 * unix socket). After the greeting we send `qmp_capabilities`; each command gets
 * an `id` so replies are matched even when events (which QEMU may send before
 * a reply, e.g. POWERDOWN before the return of system_powerdown) are interleaved.
 *
 * Events: "event" (name, data), "close" (once, when QEMU exits or the socket drops).
 */

export interface QmpEvent { event: string; data?: Record<string, unknown>; timestamp?: unknown }

interface Pending { resolve(v: unknown): void; reject(e: Error): void; timer: NodeJS.Timeout }

/** A QMP line longer than this is a broken peer, not a reply (query-blockstats of one VM is ~3 KiB). */
export const QMP_MAX_LINE_BYTES = 4 * 1024 * 1024;

export class QmpClient extends EventEmitter {
  private buf = "";
  private nextId = 1;
  private readonly pending = new Map<string, Pending>();
  private closed = false;

  private constructor(private readonly sock: net.Socket, private readonly timeoutMs: number) {
    super();
  }

  /** Connects, reads the greeting, negotiates capabilities. */
  static connect(socketPath: string, timeoutMs: number): Promise<QmpClient> {
    return new Promise((resolve, reject) => {
      const sock = net.createConnection({ path: socketPath });
      const client = new QmpClient(sock, timeoutMs);
      let greeted = false;
      const timer = setTimeout(() => {
        sock.destroy();
        reject(new ProvisionerError("qmp_timeout", `QMP at ${socketPath}: no greeting within ${timeoutMs} ms`, 500));
      }, timeoutMs);
      const onEarlyError = (err: Error): void => {
        clearTimeout(timer);
        reject(new ProvisionerError("qmp_unreachable", `QMP at ${socketPath}: ${err.message}`, 500, { cause: err }));
      };
      sock.once("error", onEarlyError);
      sock.setEncoding("utf8");
      sock.on("data", (chunk: string) => client.onData(chunk, () => {
        if (greeted) return;
        greeted = true;
        clearTimeout(timer);
        sock.off("error", onEarlyError);
        sock.on("error", () => client.shutdown());
        client.execute("qmp_capabilities").then(() => resolve(client), (e: Error) => { client.close(); reject(e); });
      }));
      sock.on("close", () => {
        clearTimeout(timer);
        if (!greeted) reject(new ProvisionerError("qmp_unreachable", `QMP at ${socketPath}: closed before greeting`, 500));
        client.shutdown();
      });
    });
  }

  private onData(chunk: string, onGreeting: () => void): void {
    this.buf += chunk;
    if (this.buf.length > QMP_MAX_LINE_BYTES) { this.sock.destroy(); return; }
    let nl: number;
    while ((nl = this.buf.indexOf("\n")) >= 0) {
      const line = this.buf.slice(0, nl).trim();
      this.buf = this.buf.slice(nl + 1);
      if (!line) continue;
      let msg: Record<string, unknown>;
      try { msg = JSON.parse(line) as Record<string, unknown>; } catch { continue; }
      if ("QMP" in msg) { onGreeting(); continue; }
      if (typeof msg.event === "string") { this.emit("event", msg as unknown as QmpEvent); continue; }
      const id = typeof msg.id === "string" ? msg.id : undefined;
      const p = id ? this.pending.get(id) : undefined;
      if (!p || !id) continue;
      this.pending.delete(id);
      clearTimeout(p.timer);
      if ("error" in msg) {
        const e = msg.error as { class?: string; desc?: string };
        p.reject(new ProvisionerError("qmp_error", `QMP: ${e.class ?? "Error"}: ${e.desc ?? "unknown"}`, 500));
      } else {
        p.resolve(msg.return);
      }
    }
  }

  /** Runs one command; rejects on a QMP error, a timeout, or when QEMU goes away. */
  execute<T = unknown>(command: string, args?: Record<string, unknown>): Promise<T> {
    if (this.closed) return Promise.reject(new ProvisionerError("qmp_closed", "QMP connection closed", 500));
    const id = `c${this.nextId++}`;
    return new Promise<T>((resolve, reject) => {
      const timer = setTimeout(() => {
        this.pending.delete(id);
        reject(new ProvisionerError("qmp_timeout", `QMP ${command}: no reply within ${this.timeoutMs} ms`, 500));
      }, this.timeoutMs);
      this.pending.set(id, { resolve: resolve as (v: unknown) => void, reject, timer });
      this.sock.write(JSON.stringify(args ? { execute: command, arguments: args, id } : { execute: command, id }) + "\n");
    });
  }

  /** Resolves at the next event `name` (true), or false after timeoutMs or when QEMU goes away. */
  waitEvent(name: string, timeoutMs: number): Promise<boolean> {
    return new Promise((resolve) => {
      const done = (v: boolean): void => {
        clearTimeout(timer);
        this.off("event", onEvent);
        this.off("close", onClose);
        resolve(v);
      };
      const onEvent = (ev: QmpEvent): void => { if (ev.event === name) done(true); };
      const onClose = (): void => done(false);
      const timer = setTimeout(() => done(false), timeoutMs);
      this.on("event", onEvent);
      this.once("close", onClose);
    });
  }

  get isClosed(): boolean { return this.closed; }

  private shutdown(): void {
    if (this.closed) return;
    this.closed = true;
    for (const [, p] of this.pending) {
      clearTimeout(p.timer);
      p.reject(new ProvisionerError("qmp_closed", "QMP connection closed", 500));
    }
    this.pending.clear();
    this.sock.destroy();
    this.emit("close");
  }

  close(): void { this.shutdown(); }
}
