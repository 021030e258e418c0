/**
 * Mux microbenchmark: MB/s and CPU seconds per GiB (sender + receiver processes) for
 * raw TLS, capsul's MuxSession over TLS and @libp2p/yamux over TLS, 1 and 16 streams.
 */
import path from "node:path";
import { fileURLToPath } from "node:url";
import { existsSync } from "node:fs";
import { run, startProc } from "./procs.js";

const HERE = path.dirname(fileURLToPath(import.meta.url));
export const MICRO_IMPLS = ["raw", "capsul", "libp2p"] as const;
export const MICRO_STREAMS = [1, 16] as const;
const GIB = 1024 ** 3;
/** Matches the hub's default max_stream_window; used for @libp2p/yamux too. */
export const MUXBENCH_WINDOW_BYTES = 8 * 1024 * 1024;

export interface MicroResult {
  impl: string;
  streams: number;
  mbPerSec: number;
  cpuSecPerGiB: number;
  error?: string;
}

/** Where @libp2p/yamux is installed: outside the repo, never a dependency of capsul. */
export const LIBP2P_DIR = process.env.LIBP2P_DIR ?? "/tmp/libp2p-bench";
export const LIBP2P_PACKAGES = ["@libp2p/yamux@8.0.3", "@libp2p/utils@7", "@libp2p/logger@6"];

/** npm-installs @libp2p/yamux into LIBP2P_DIR if it is not there; returns an error text or null. */
export async function ensureLibp2p(): Promise<string | null> {
  if (existsSync(`${LIBP2P_DIR}/node_modules/@libp2p/yamux/package.json`)) return null;
  try {
    await run("npm", ["install", "--prefix", LIBP2P_DIR, "--no-audit", "--no-fund", ...LIBP2P_PACKAGES], { timeoutMs: 300_000 });
    return null;
  } catch (err) {
    return `npm install ${LIBP2P_PACKAGES.join(" ")} into ${LIBP2P_DIR} failed: ${(err as Error).message.split("\n")[0]}`;
  }
}

export async function microOnce(impl: string, streams: number, totalBytes: number, cert: string, key: string): Promise<MicroResult> {
  const peer = path.join(HERE, "mux-peer.js");
  const recv = startProc(`mux-recv-${impl}`, process.execPath, [peer, "recv", impl, cert, key, String(totalBytes)]);
  let send: ReturnType<typeof startProc> | undefined;
  try {
    const port = Number((await recv.waitFor(/listening (\d+)/))[1]);
    send = startProc(`mux-send-${impl}`, process.execPath, [peer, "send", impl, String(port), String(streams), String(totalBytes)]);
    const timeout = 30_000 + totalBytes / 5e6; // even 5 MB/s finishes
    const r = JSON.parse((await recv.waitFor(/^\{.*\}$/m, timeout))[0]) as { bytes: number; ms: number; cpuSec: number };
    const s = JSON.parse((await send.waitFor(/^\{.*\}$/m, 30_000))[0]) as { cpuSec: number };
    return { impl, streams, mbPerSec: r.bytes / 1e6 / (r.ms / 1000), cpuSecPerGiB: (r.cpuSec + s.cpuSec) / (r.bytes / GIB) };
  } catch (err) {
    const msg = (err as Error).message.split("\n").concat((send?.output() ?? "").split("\n")).filter((l) => /Error|error|failed|not a function/.test(l)).slice(0, 3).join(" | ");
    return { impl, streams, mbPerSec: NaN, cpuSecPerGiB: NaN, error: msg || (err as Error).message.slice(0, 300) };
  } finally {
    await send?.stop();
    await recv.stop();
  }
}
