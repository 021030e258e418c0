/**
 * The V8 settings capsul's data path is tuned for, and a check that the running node
 * has them. They cannot be set from JavaScript once the heap exists, so the launcher
 * passes them: the shebang of cli/main.ts (`env -S node …`, used by `capsul` after
 * `npm link` and by `./dist/cli/main.js`) and `npm start`. test/runtime.test.ts keeps those
 * three in step with NODE_HEAP_FLAGS.
 *
 * Why: every socket read hands JavaScript a fresh Buffer whose memory lives outside the
 * V8 heap. At hundreds of MB/s those buffers pile up between the rare scavenges of a
 * small heap (hub and cog hold ~10 MB), and V8 answers the external memory with a full
 * mark-compact every ~10–30 MB moved: 20–35 of them per 256 MiB download, ~30% of the
 * process's CPU (perf: ConcurrentMarking on the GC threads). With a 64 MB initial old
 * space the limit sits above that churn, the scavenges free the buffers, and a 256 MiB
 * download runs no mark-compact at all (bench/OPTIMISATION-LOG.md, step 4). The
 * setting is a threshold, not a reservation: RSS at rest and with 10k idle visitors held
 * stays within a few percent of what it was without it.
 */
export const INITIAL_OLD_SPACE_MB = 64;
export const NODE_HEAP_FLAGS: readonly string[] = [`--initial-old-space-size=${INITIAL_OLD_SPACE_MB}`];

/** The flags of NODE_HEAP_FLAGS this node was started without (by flag name). */
export function missingHeapFlags(execArgv: readonly string[] = process.execArgv): string[] {
  const name = (f: string): string => f.split("=")[0]!.replace(/_/g, "-");
  const given = new Set(execArgv.map(name));
  return NODE_HEAP_FLAGS.filter((f) => !given.has(name(f)));
}
