import type { Readable, Writable } from "node:stream";
import { ProvisionerError } from "./errors.js";

/**
 * The tar container of a VM archive (README "Moving a capsul"): plain POSIX
 * ustar, so `tar tvf web1.capsul` lists it and `tar xf` unpacks it by hand.
 * Only what capsul writes is read back: regular files whose names come from a
 * fixed list, in a fixed order, each no larger than the manifest says. Links,
 * directories, "../" or absolute names, pax/GNU extension headers and bad header
 * checksums are refused before a byte of the entry is kept.
 *
 * Sizes above ustar's 8 GiB octal field are written in the base-256 form that
 * GNU tar and bsdtar read (first byte 0x80, then big-endian).
 */

export const TAR_BLOCK_BYTES = 512;
/** ustar's size field holds 11 octal digits: 8 GiB − 1. */
const OCTAL_SIZE_MAX = 0o77777777777;
const ZERO_BLOCK = Buffer.alloc(TAR_BLOCK_BYTES);

function archiveError(message: string): ProvisionerError {
  return new ProvisionerError("archive_invalid", message, 400);
}

function writeOctal(buf: Buffer, value: number, offset: number, width: number): void {
  buf.write(value.toString(8).padStart(width - 1, "0") + "\0", offset, width, "ascii");
}

/** One ustar header block for a regular file `name` of `bytes` bytes. */
export function tarHeader(name: string, bytes: number, mtimeSec: number): Buffer {
  if (Buffer.byteLength(name) > 100) throw new Error(`tar name too long: ${name}`);
  const h = Buffer.alloc(TAR_BLOCK_BYTES);
  h.write(name, 0, 100, "utf8");
  writeOctal(h, 0o600, 100, 8);
  writeOctal(h, 0, 108, 8);
  writeOctal(h, 0, 116, 8);
  if (bytes <= OCTAL_SIZE_MAX) writeOctal(h, bytes, 124, 12);
  else {
    h[124] = 0x80;
    h.writeBigUInt64BE(BigInt(bytes), 128);
  }
  writeOctal(h, mtimeSec, 136, 12);
  h.write("        ", 148, 8, "ascii");
  h[156] = 0x30; // '0': regular file
  h.write("ustar\0", 257, 6, "ascii");
  h.write("00", 263, 2, "ascii");
  let sum = 0;
  for (const b of h) sum += b;
  h.write(sum.toString(8).padStart(6, "0") + "\0 ", 148, 8, "ascii");
  return h;
}

/** Zero bytes that pad an entry of `bytes` to the block size. */
export function tarPadding(bytes: number): Buffer {
  const rest = bytes % TAR_BLOCK_BYTES;
  return rest === 0 ? Buffer.alloc(0) : Buffer.alloc(TAR_BLOCK_BYTES - rest);
}

/** Two zero blocks end a tar. */
export const TAR_END = Buffer.concat([ZERO_BLOCK, ZERO_BLOCK]);

/** Archive length of entries of these sizes, end blocks included. */
export function tarLength(sizes: number[]): number {
  return sizes.reduce((s, n) => s + TAR_BLOCK_BYTES + n + tarPadding(n).length, 0) + TAR_END.length;
}

function parseNumber(field: Buffer, what: string): number {
  if (field[0]! & 0x80) {
    if (field[0] !== 0x80 || field.readUInt32BE(0) !== 0x80000000) throw archiveError(`tar header: ${what} too large`);
    const v = field.readBigUInt64BE(4);
    if (v > BigInt(Number.MAX_SAFE_INTEGER)) throw archiveError(`tar header: ${what} too large`);
    return Number(v);
  }
  const s = field.toString("ascii").replace(/[\0 ]+$/, "").replace(/^ +/, "");
  if (!/^[0-7]*$/.test(s)) throw archiveError(`tar header: ${what} is not a number`);
  return s === "" ? 0 : parseInt(s, 8);
}

export interface TarEntryHeader { name: string; bytes: number }

/** Decodes and checks one header block; null for a zero block (the end). */
export function parseTarHeader(h: Buffer): TarEntryHeader | null {
  if (h.equals(ZERO_BLOCK)) return null;
  const want = parseNumber(h.subarray(148, 156), "checksum");
  let sum = 0;
  for (let i = 0; i < TAR_BLOCK_BYTES; i++) sum += i >= 148 && i < 156 ? 0x20 : h[i]!;
  if (sum !== want) throw archiveError("tar header checksum mismatch: the archive is corrupt");
  const type = h[156]!;
  const end = h.indexOf(0, 0);
  const name = h.subarray(0, end < 0 || end > 100 ? 100 : end).toString("utf8");
  const prefixEnd = h.indexOf(0, 345);
  const prefix = h.subarray(345, prefixEnd < 0 || prefixEnd > 500 ? 500 : prefixEnd).toString("utf8");
  const full = prefix ? `${prefix}/${name}` : name;
  if (type !== 0x30 && type !== 0) throw archiveError(`tar entry ${JSON.stringify(full)} is not a regular file (type ${String.fromCharCode(type)}); a VM archive holds only files`);
  return { name: full, bytes: parseNumber(h.subarray(124, 136), "size") };
}

/**
 * Reads exactly what it is asked for from a stream, in order: a header block,
 * then an entry's bytes piece by piece. Bytes past the request stay for the next.
 */
export class ExactReader {
  private buf: Buffer[] = [];
  private have = 0;
  private ended = false;
  private failed: Error | null = null;
  private wake: (() => void) | null = null;

  constructor(private readonly src: Readable) {
    src.on("data", (d: Buffer) => {
      this.buf.push(d);
      this.have += d.length;
      if (this.have >= TAR_BLOCK_BYTES * 128) src.pause();
      this.wake?.();
    });
    src.once("end", () => { this.ended = true; this.wake?.(); });
    src.once("error", (e) => { this.failed = e; this.wake?.(); });
    src.once("close", () => { if (!this.ended && !this.failed) this.failed = new Error("the stream closed early"); this.wake?.(); });
  }

  private async fill(): Promise<void> {
    if (this.failed) throw this.failed;
    if (this.ended) return;
    this.src.resume();
    await new Promise<void>((r) => { this.wake = r; });
    this.wake = null;
    if (this.failed) throw this.failed;
  }

  /** Up to `max` bytes (at least one), or null at the end. */
  async some(max: number): Promise<Buffer | null> {
    while (this.have === 0) {
      if (this.ended) return null;
      await this.fill();
    }
    let chunk = this.buf[0]!;
    if (chunk.length > max) {
      this.buf[0] = chunk.subarray(max);
      chunk = chunk.subarray(0, max);
    } else this.buf.shift();
    this.have -= chunk.length;
    return chunk;
  }

  /** Exactly `n` bytes, or null when the stream ends first (with what was read thrown away). */
  async exact(n: number): Promise<Buffer | null> {
    while (this.have < n) {
      if (this.ended) return null;
      await this.fill();
    }
    const all = Buffer.concat(this.buf);
    this.buf = all.length > n ? [all.subarray(n)] : [];
    this.have = all.length - n;
    return all.subarray(0, n);
  }

  /** True when nothing but end-of-stream follows (zero padding allowed). */
  async atEnd(): Promise<boolean> {
    for (;;) {
      const b = await this.some(64 * 1024);
      if (b === null) return true;
      for (const x of b) if (x !== 0) return false;
    }
  }
}

/** Writes a chunk, waiting for 'drain' when the destination is full. */
export function writeAll(out: Writable, chunk: Buffer): Promise<void> {
  // A destroyed stream never emits 'drain' or 'close' again: waiting for them would hang.
  if (out.destroyed || out.writableEnded) return Promise.reject(new Error("the destination closed"));
  if (out.write(chunk)) return Promise.resolve();
  return new Promise((resolve, reject) => {
    const onDrain = (): void => { out.off("error", onError); out.off("close", onClose); resolve(); };
    const onError = (e: Error): void => { out.off("drain", onDrain); out.off("close", onClose); reject(e); };
    const onClose = (): void => { out.off("drain", onDrain); out.off("error", onError); reject(new Error("the destination closed")); };
    out.once("drain", onDrain);
    out.once("error", onError);
    out.once("close", onClose);
  });
}
