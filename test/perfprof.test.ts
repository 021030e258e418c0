/**
 * bench/perfprof.ts: parsing `perf report -t '|'` and sorting samples into kinds of
 * work. The lines are real ones from perf 6 on this machine (capsul hub/cog, gopeer).
 */
import t from "tap";
import { breakdown, categorize, CATEGORIES, parsePerfReport, renderBreakdown } from "../bench/perfprof.js";

const REPORT = `# To display the perf.data header info, please use --header/--header-only options.
#
# Overhead|Pid:Command|Shared Object|Symbol
#
 8.68%  |  14854:node   |[kernel.kallsyms]  |[k] _raw_spin_unlock_irqrestore
 8.57%  |  14806:node   |node               |[.] _aesni_ctr32_ghash_6x
 4.84%  |  14854:node   |libc.so.6          |[.] __memmove_avx512_unaligned_erms
 1.07%  |  14806:node   |libc.so.6          |[.] _int_malloc
 1.41%  |  14810:node   |node               |[.] v8::internal::ConcurrentMarking::RunMajor
 0.24%  |  14806:node   |[JIT] tid 14806    |[.] JS:*onStreamRead node:internal/stream_base_commons:168:22
 0.71%  |  14806:node   |node               |[.] Builtins_KeyedLoadIC_Megamorphic
 0.19%  |  14806:node   |node               |[.] node::EmitToJSStreamListener::OnStreamRead
 2.00%  |  20001:gopeer |gopeer             |[.] crypto/aes.gcmAesDec
 1.00%  |  20001:gopeer |gopeer             |[.] runtime.scanobject
 0.50%  |  20003:gopeer |gopeer             |[.] runtime.memmove
 0.50%  |  20003:gopeer |gopeer             |[.] runtime.findRunnable

`;

t.test("parses every sample row and skips the header", async (t) => {
  const rows = parsePerfReport(REPORT);
  t.equal(rows.length, 12);
  t.same(rows[0], { share: 0.0868, tid: 14854, dso: "[kernel.kallsyms]", kernel: true, sym: "_raw_spin_unlock_irqrestore" });
  t.same(rows[5], { share: 0.0024, tid: 14806, dso: "[JIT] tid 14806", kernel: false, sym: "JS:*onStreamRead node:internal/stream_base_commons:168:22" });
  t.same(parsePerfReport("garbage\n| | |\n"), [], "malformed lines are ignored");
});

t.test("sorts samples into kinds of work", async (t) => {
  const cat = parsePerfReport(REPORT).map(categorize);
  t.same(cat, [
    CATEGORIES[0], CATEGORIES[1], CATEGORIES[2], CATEGORIES[3], CATEGORIES[4], CATEGORIES[5], CATEGORIES[5], CATEGORIES[6],
    CATEGORIES[1], CATEGORIES[4], CATEGORIES[2], CATEGORIES[6],
  ]);
});

t.test("splits each process's CPU by its own samples, helper threads included", async (t) => {
  const rows = parsePerfReport(REPORT);
  const [hub, gopeer] = breakdown(rows, [
    { name: "hub", pid: 14806, tids: [14806, 14810], cpuSecPerGiB: 2 },
    { name: "gopeer hub", pid: 20001, tids: [20001, 20003], cpuSecPerGiB: 1 },
  ]);
  const sum = (s: Record<string, number>): number => Object.values(s).reduce((a, b) => a + b, 0);
  t.ok(Math.abs(sum(hub!.shares) - 1) < 1e-9, "shares sum to 1");
  t.ok(Math.abs(sum(gopeer!.shares) - 1) < 1e-9);
  const hubTotal = 0.0857 + 0.0107 + 0.0141 + 0.0024 + 0.0071 + 0.0019;
  t.ok(Math.abs(hub!.shares[CATEGORIES[1]] - 0.0857 / hubTotal) < 1e-9, "crypto share of the hub's own samples");
  t.ok(Math.abs(hub!.otherThreads - 0.0141 / hubTotal) < 1e-9, "the GC thread's samples count for the hub");
  t.equal(hub!.shares[CATEGORIES[0]], 0, "the cog's kernel samples are not the hub's");
  t.ok(Math.abs(gopeer!.shares[CATEGORIES[4]] - 0.25) < 1e-9);
  const md = renderBreakdown("test", [hub!, gopeer!]);
  t.match(md, /\| TLS crypto \(AES-GCM, record layer\) \| 1\.\d\d \(\d+%\) \| 0\.50 \(50%\) \|/);
  t.match(md, /\| \*\*total CPU s\/GiB\*\* \| \*\*2\.00\*\* \| \*\*1\.00\*\* \|/);
});
