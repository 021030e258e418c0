import fs from "node:fs";
import fsp from "node:fs/promises";
import net from "node:net";

/**
 * A VM's serial console, kept on disk with a cap. QEMU writing console.log
 * itself (`-chardev file`) let a guest fill the cog's disk: it can write to its
 * serial port as fast as it likes. Instead QEMU serves the console on a unix
 * socket (con.sock) and this writes what arrives to console.log; at
 * `maxBytes` console.log becomes console.log.1 (replacing the older one) and
 * a new console.log starts. At most 2 × maxBytes per VM, whatever the guest does.
 * While no provisioner is connected (it is restarting) QEMU drops console
 * output rather than blocking the guest.
 */

export const ROTATED_SUFFIX = ".1";

export class ConsoleLog {
  private fd: number;
  private size: number;
  private sock: net.Socket | null = null;
  private closed = false;
  /** Sees every chunk of console output too (boot.ts reads cloud-init's progress from it). */
  onData: ((chunk: Buffer) => void) | null = null;

  constructor(private readonly file: string, private readonly maxBytes: number) {
    this.fd = fs.openSync(file, "a", 0o600);
    this.size = fs.fstatSync(this.fd).size;
  }

  /** Appends, rotating whenever console.log would pass maxBytes. Synchronous: one small write per socket read. */
  write(chunk: Buffer): void {
    let off = 0;
    while (off < chunk.length && !this.closed) {
      if (this.size >= this.maxBytes) this.rotate();
      const n = Math.min(chunk.length - off, this.maxBytes - this.size);
      fs.writeSync(this.fd, chunk, off, n);
      this.size += n;
      off += n;
    }
  }

  private rotate(): void {
    fs.closeSync(this.fd);
    fs.renameSync(this.file, this.file + ROTATED_SUFFIX);
    this.fd = fs.openSync(this.file, "a", 0o600);
    this.size = 0;
  }

  /** Connects to QEMU's console socket; resolves once connected. Ends by itself when QEMU closes it. */
  attach(socketPath: string): Promise<void> {
    return new Promise((resolve, reject) => {
      const s = net.createConnection(socketPath);
      s.once("connect", () => { this.sock = s; resolve(); });
      s.once("error", reject);
      s.on("data", (d: Buffer) => { this.write(d); this.onData?.(d); });
      s.on("close", () => { if (this.sock === s) this.sock = null; });
    });
  }

  /**
   * Once QEMU has exited: reads what it wrote last up to the socket's end (the guest's final
   * "reboot: Power down" can still be in the socket buffer when the exit is seen), waiting at
   * most `timeoutMs`, then closes.
   */
  async closeAtEnd(timeoutMs: number): Promise<void> {
    const s = this.sock;
    if (s !== null && !s.destroyed) {
      await new Promise<void>((resolve) => {
        const timer = setTimeout(resolve, timeoutMs);
        s.once("close", () => { clearTimeout(timer); resolve(); });
      });
    }
    this.close();
  }

  close(): void {
    if (this.closed) return;
    this.closed = true;
    this.sock?.destroy();
    fs.closeSync(this.fd);
  }
}

/** The last `maxBytes` of a console: the end of console.log, with the end of console.log.1 before it when that is short. */
export async function consoleTail(file: string, maxBytes: number): Promise<string> {
  const tailOf = async (f: string, n: number): Promise<Buffer> => {
    let fh: fsp.FileHandle;
    try { fh = await fsp.open(f, "r"); } catch { return Buffer.alloc(0); }
    try {
      const { size } = await fh.stat();
      const len = Math.min(size, n);
      const buf = Buffer.alloc(len);
      await fh.read(buf, 0, len, size - len);
      return buf;
    } finally {
      await fh.close();
    }
  };
  const cur = await tailOf(file, maxBytes);
  const older = cur.length < maxBytes ? await tailOf(file + ROTATED_SUFFIX, maxBytes - cur.length) : Buffer.alloc(0);
  return Buffer.concat([older, cur]).toString("utf8");
}
