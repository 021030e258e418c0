import type { EventEmitter } from "node:events";

/**
 * A drain's wait (gateway/drain.ts, TunnelClient.drain): until every one of `items`
 * (sockets, streams) has emitted "close", `graceMs` has passed or `cutNow` is aborted.
 * Resolves with how many were still open then. `items` must all be open when called.
 */
export function waitForClose(items: readonly EventEmitter[], graceMs: number, cutNow?: AbortSignal): Promise<number> {
  let left = items.length;
  if (left === 0 || graceMs <= 0 || cutNow?.aborted) return Promise.resolve(left);
  return new Promise((resolve) => {
    const done = (): void => {
      clearTimeout(timer);
      cutNow?.removeEventListener("abort", done);
      resolve(left);
    };
    const timer = setTimeout(done, graceMs);
    cutNow?.addEventListener("abort", done, { once: true });
    for (const item of items) {
      item.once("close", () => {
        left--;
        if (left === 0) done();
      });
    }
  });
}
