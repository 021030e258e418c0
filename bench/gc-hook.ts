/**
 * Preloaded into a bench hub (`node --expose-gc --import <dist>/bench/gc-hook.js …/cli/main.js
 * hub`), so that any checkout's CLI can be measured "after GC" without changes to it: on
 * SIGUSR2 it runs two full collections and prints one line
 *   `gc-hook #N {"rss":…,"heapUsed":…,"external":…,"arrayBuffers":…}`
 * on stderr, N counting up, so the bench can wait for the answer to its own signal.
 * Two collections: the first can leave what weak callbacks and finalizers freed for the next.
 */
const gc = (globalThis as { gc?: () => void }).gc;
let n = 0;
process.on("SIGUSR2", () => {
  n++;
  if (gc) { gc(); gc(); }
  const m = process.memoryUsage();
  process.stderr.write(`gc-hook #${n} ${JSON.stringify({ gc: gc !== undefined, rss: m.rss, heapUsed: m.heapUsed, heapTotal: m.heapTotal, external: m.external, arrayBuffers: m.arrayBuffers })}\n`);
});
