/**
 * A hub worker's warm-up (hub.worker.warmup, issue 12: "kill any one hub process and only
 * its own visitors notice"). Workers share each public listening socket (SCHED_NONE), so a
 * worker that starts again after a crash would take its share of new visitors at once,
 * while it has no tunnel yet: each of them would wait in the grace period until their cog
 * redials this worker (up to its backoff: 0.5, 1.5, 3.5 s... after the drop), or get "no
 * route" past it. The other workers hold a tunnel to every cog meanwhile.
 *
 * So a worker started while another serves holds its public listeners (gateway/hub.ts
 * holdPublic): it takes its cogs' tunnels from the primary, and opens the listeners once
 * as many cogs are back on it as the busiest serving worker held at its start (the
 * primary's last counters), or after hub.worker.warmup at most, or at once when the
 * primary says no other worker serves any more. Until then the kernel hands every visitor
 * to the workers that listen. A count, not the set of names: the cogs a worker holds
 * change while it warms, and a cog gone meanwhile costs at most the warm-up.
 */
import type { Logger } from "../lib/log.js";
import type { Tunnels } from "./tunnels.js";

/** Why a warm-up ended. */
export type WarmupEnd = "cogs back" | "timed out" | "no other worker serves";

export interface Warmup {
  /** Resolves when the worker should take visitors. */
  readonly done: Promise<{ why: WarmupEnd; back: number; ms: number }>;
  /** The primary says no other worker serves: end now. */
  serveNow(): void;
}

/** Waits until `target` cogs have a tunnel to this worker, `timeoutMs` passes, or serveNow(). */
export function warmUp(tunnels: Tunnels, target: number, timeoutMs: number, log: Logger): Warmup {
  const t0 = Date.now();
  const back = new Set<string>();
  for (const l of tunnels.links.values()) if (l.session) back.add(l.cog);
  let finish: (why: WarmupEnd) => void = () => {};
  const done = new Promise<{ why: WarmupEnd; back: number; ms: number }>((resolve) => {
    const timer = setTimeout(() => finish("timed out"), timeoutMs);
    const onAttached = (cog: string): void => {
      back.add(cog);
      if (back.size >= target) finish("cogs back");
    };
    finish = (why) => {
      clearTimeout(timer);
      tunnels.off("attached", onAttached);
      finish = () => {};
      const r = { why, back: back.size, ms: Date.now() - t0 };
      if (why === "timed out") log.warn("warm-up over before all cogs were back: taking visitors", { cogs: r.back, of: target, ms: r.ms });
      else log.info("warm-up over: taking visitors", { reason: why, cogs: r.back, of: target, ms: r.ms });
      resolve(r);
    };
    tunnels.on("attached", onAttached);
  });
  log.info("warming up: visitors stay with the other workers until this one's cogs are back", { cogs: target, timeoutMs });
  if (back.size >= target) finish("cogs back");
  return { done, serveNow: () => finish("no other worker serves") };
}
