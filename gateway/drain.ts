/**
 * Drain (SIGTERM or SIGINT to `capsul hub`): stop accepting everywhere, tell every cog
 * to go away, and let the visitor connections that are open finish, up to
 * hub.shutdown_grace. Whatever is still open then is cut by the hub's close().
 *
 * Stopping accepting is closing the listening sockets: a visitor who comes now is refused
 * by the kernel (connection refused), and a new hub process can bind the same ports at
 * once while this one drains. The cogs dial a new tunnel when they get GoAway (they will
 * reach the next hub process once it listens) and keep their streams on this one; a
 * visitor already accepted but still being peeked is still routed, through the same
 * sessions, so it is served like any other.
 */
import { waitForClose } from "../lib/closewait.js";
import type { HubParts } from "./reload.js";

export interface DrainReport {
  /** Visitor connections open when the drain began. */
  live: number;
  /** Of those, how many ended by themselves within the grace period. */
  finished: number;
  /** How many were still open at its end (close() cuts them). */
  cut: number;
}

/** `cutNow`: aborted to stop waiting at once (a second signal). */
export async function drainHub(p: HubParts, graceMs: number, cutNow?: AbortSignal): Promise<DrainReport> {
  p.tls.stop();
  p.http.stop();
  p.tcp.stopAll();
  p.tunnels.stopAccepting();
  const open = [...p.visitors.connections];
  p.log.info("draining: no longer accepting; waiting for open visitor connections", { connections: open.length, graceMs });
  const left = await waitForClose(open, graceMs, cutNow);
  return { live: open.length, finished: open.length - left, cut: left };
}
