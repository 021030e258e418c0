/**
 * Where a proxy's CPU goes, by kind of work, from Linux `perf` (all threads, kernel
 * included): the `--cpu-prof` profiles in PROFILE.md only see JavaScript's thread, so
 * they miss V8's GC threads and cannot split a native `writev` into kernel TCP, TLS
 * crypto and copies. Run for capsul and gopeer alike under the same bulk load; each
 * process's CPU s/GiB (from /proc) is split by the share of its samples per category.
 *
 * Also usable alone: node dist/bench/perfprof.js PERF.DATA PID[,PID...]
 */
import { spawn, spawnSync } from "node:child_process";
import { readdirSync } from "node:fs";
import { fileURLToPath } from "node:url";
import type { RunningPath } from "./paths.js";
import { cpuSeconds, run } from "./procs.js";

export const PERF_FREQ_HZ = 999;
const GIB = 1024 ** 3;

export const CATEGORIES = [
  "kernel (TCP on loopback, copies, wakeups)",
  "TLS crypto (AES-GCM, record layer)",
  "memory copies (libc, Go runtime)",
  "malloc / free",
  "garbage collection",
  "JavaScript (JIT code, V8 builtins)",
  "node, V8, libuv, Go runtime: the rest",
] as const;
export type Category = (typeof CATEGORIES)[number];

const CRYPTO_RE = /aesni|aes_|_aes|gcm|ghash|chacha|poly1305|^EVP_|^evp_|^ossl_|^tls13_|^tls1_|^ssl3_|^do_ssl3|^SSL_|^ssl_|^WPACKET|^crypto\/|^BIO_|^bio_|^OPENSSL_|^CRYPTO_/;
const COPY_RE = /memmove|memcpy|memset|^runtime\.memclr/;
const MALLOC_RE = /^(malloc|free|cfree|calloc|realloc|_int_malloc|_int_free|_int_realloc|unlink_chunk|malloc_consolidate|tcache_|__libc_malloc|__libc_free)/;
const V8_GC_RE = /^v8::internal::(Heap|MarkCompact|Marking|MainMarking|ConcurrentMarking|Scavenger|ScavengeJob|Sweeper|ArrayBufferSweeper|MinorMarkCompact|IncrementalMarking|Evacuat|SemiSpace|PagedSpace|MemoryAllocator|MarkingVisitor|BodyDescriptor|HeapObject::SizeFromMap|PointersUpdating|RecordMigrated|GlobalHandles|StringTableCleaner|InternalizedStringTableCleaner|LocalHeap|GCTracer|Page::|MemoryChunk)/;
const GO_GC_RE = /^runtime\.(gcBgMarkWorker|gcDrain|scanobject|scanblock|scanstack|greyobject|markroot|findObject|heapBits|wbBuf|gcWriteBarrier|bgsweep|sweepone|mspan_sweep|\(\*mspan\)\.sweep|\(\*gcWork\)|gcMark|gcStart|typePointers|\(\*mheap\)|\(\*mcentral\)|\(\*mcache\)|mallocgc|nextFreeFast|memclrNoHeapPointers)/;

/** One `perf report -t '|'` row: share of all samples, thread id, dso, kernel?, symbol. */
export interface PerfRow { share: number; tid: number; dso: string; kernel: boolean; sym: string }

export function parsePerfReport(text: string): PerfRow[] {
  const rows: PerfRow[] = [];
  for (const line of text.split("\n")) {
    if (line.startsWith("#") || !line.trim()) continue;
    const cols = line.split("|").map((c) => c.trim());
    if (cols.length < 4) continue;
    const m = /^(\d+):/.exec(cols[1]!);
    const s = /^\[([.k])\]\s*(.*)$/.exec(cols[3]!);
    const share = Number.parseFloat(cols[0]!);
    if (!m || !s || !Number.isFinite(share)) continue;
    rows.push({ share: share / 100, tid: Number(m[1]), dso: cols[2]!, kernel: s[1] === "k", sym: s[2]! });
  }
  return rows;
}

export function categorize(r: PerfRow): Category {
  if (r.kernel || r.dso === "[kernel.kallsyms]") return CATEGORIES[0];
  if (CRYPTO_RE.test(r.sym)) return CATEGORIES[1];
  if (COPY_RE.test(r.sym)) return CATEGORIES[2];
  if (MALLOC_RE.test(r.sym)) return CATEGORIES[3];
  if (V8_GC_RE.test(r.sym) || GO_GC_RE.test(r.sym)) return CATEGORIES[4];
  if (r.dso.startsWith("[JIT]") || r.sym.startsWith("Builtins_") || r.sym.startsWith("JS:")) return CATEGORIES[5];
  return CATEGORIES[6];
}

/** Threads of a process (read while it runs: perf reports thread ids). */
export function threadsOf(pid: number): number[] {
  try {
    return readdirSync(`/proc/${pid}/task`).map(Number);
  } catch {
    return [pid];
  }
}

export interface ProcessBreakdown {
  name: string;
  pid: number;
  cpuSecPerGiB: number;
  /** Share of this process's samples per category (sums to 1). */
  shares: Record<Category, number>;
  /** Share of this process's samples taken on threads other than its main thread. */
  otherThreads: number;
}

export function breakdown(rows: PerfRow[], procs: { name: string; pid: number; tids: number[]; cpuSecPerGiB: number }[]): ProcessBreakdown[] {
  return procs.map((p) => {
    const mine = rows.filter((r) => p.tids.includes(r.tid));
    const total = mine.reduce((a, r) => a + r.share, 0) || 1;
    const shares = Object.fromEntries(CATEGORIES.map((c) => [c, 0])) as Record<Category, number>;
    let other = 0;
    for (const r of mine) {
      shares[categorize(r)] += r.share / total;
      if (r.tid !== p.pid) other += r.share / total;
    }
    return { name: p.name, pid: p.pid, cpuSecPerGiB: p.cpuSecPerGiB, shares, otherThreads: other };
  });
}

export function renderBreakdown(title: string, list: ProcessBreakdown[]): string {
  const L = [`### ${title}`, "", "CPU s/GiB per process (from /proc over the load), split by the share of its perf samples.", ""];
  L.push(`| category | ${list.map((p) => p.name).join(" | ")} |`);
  L.push(`| --- |${list.map(() => " ---: |").join("")}`);
  const cell = (p: ProcessBreakdown, share: number): string => `${(share * p.cpuSecPerGiB).toFixed(2)} (${(share * 100).toFixed(0)}%)`;
  for (const c of CATEGORIES) L.push(`| ${c} | ${list.map((p) => cell(p, p.shares[c])).join(" | ")} |`);
  L.push(`| **total CPU s/GiB** | ${list.map((p) => `**${p.cpuSecPerGiB.toFixed(2)}**`).join(" | ")} |`);
  L.push(`| of which on threads other than the main one | ${list.map((p) => `${(p.otherThreads * 100).toFixed(0)}%`).join(" | ")} |`);
  return L.join("\n") + "\n";
}

export function perfAvailable(): boolean {
  return spawnSync("perf", ["--version"], { stdio: "ignore" }).status === 0;
}

/**
 * perf-records `path`'s processes while `load` runs and returns the rendered breakdown.
 * `load` returns the bytes it moved (CPU s/GiB is per GiB of those).
 */
export async function perfPath(p: RunningPath, file: string, names: string[], load: () => Promise<number>): Promise<ProcessBreakdown[]> {
  const pids = p.procs.map((x) => x.pid);
  const rec = spawn("perf", ["record", "-F", String(PERF_FREQ_HZ), "-p", pids.join(","), "-o", file], { stdio: ["ignore", "ignore", "pipe"] });
  let err = "";
  rec.stderr!.on("data", (b: Buffer) => { err += b.toString(); });
  const exited = new Promise<{ code: number | null; signal: NodeJS.Signals | null }>((resolve) => rec.on("close", (code, signal) => resolve({ code, signal })));
  // perf needs a moment to attach to every thread.
  await new Promise((r) => setTimeout(r, 500));
  const tids = pids.map(threadsOf);
  const cpu0 = pids.map(cpuSeconds);
  let bytes = 0;
  try {
    bytes = await load();
  } finally {
    rec.kill("SIGINT");
  }
  const cpu = pids.map((pid, i) => cpuSeconds(pid) - cpu0[i]);
  // perf record writes its file on SIGINT and then ends by that signal (or exits 0).
  const end = await exited;
  if (!(end.code === 0 || end.signal === "SIGINT" || end.code === 128 + 2) || !/Captured and wrote/.test(err)) {
    throw new Error(`perf record ended with ${end.code ?? end.signal}: ${err.trim().split("\n").pop()}`);
  }
  const report = await run("perf", ["report", "-i", file, "--no-children", "--sort", "pid,dso,sym", "-g", "none", "--stdio", "-t", "|"], { timeoutMs: 300_000 });
  return breakdown(parsePerfReport(report), pids.map((pid, i) => ({ name: names[i] ?? String(pid), pid, tids: tids[i]!, cpuSecPerGiB: cpu[i]! / (bytes / GIB) })));
}

if (process.argv[1] === fileURLToPath(import.meta.url)) {
  const [file, pidList] = process.argv.slice(2);
  if (!file || !pidList) {
    process.stderr.write("usage: node dist/bench/perfprof.js PERF.DATA PID[,PID...]  (shares only: no CPU s/GiB)\n");
    process.exit(2);
  }
  const pids = pidList.split(",").map(Number);
  run("perf", ["report", "-i", file, "--no-children", "--sort", "pid,dso,sym", "-g", "none", "--stdio", "-t", "|"], { timeoutMs: 300_000 }).then((report) => {
    const rows = parsePerfReport(report);
    // Alone we cannot list threads of processes that are gone: group every thread by
    // the closest pid at or below it (threads are numbered after their process).
    const tids = [...new Set(rows.map((r) => r.tid))];
    const owner = (t: number): number => Math.max(...pids.filter((p) => p <= t));
    process.stdout.write(renderBreakdown(file, breakdown(rows, pids.map((pid) => ({ name: String(pid), pid, tids: tids.filter((t) => owner(t) === pid), cpuSecPerGiB: 1 })))));
  }, (err: Error) => { process.stderr.write(`${err.message}\n`); process.exit(1); });
}
