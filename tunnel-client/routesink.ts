import type { CogRoute } from "../config/types.js";

/**
 * A route some part of the cog wants published at the hub: the same shape as a
 * capsul.yaml cog route (name unique within the cog; tcp routes without a port
 * get one assigned by the hub, kept stable across restarts). The provisioner
 * publishes one set per VM; `capsul cog` wires a RouteSink to the tunnel client,
 * so the provisioner never imports the tunnel and can be tested on its own.
 */
export type PublishedRoute = CogRoute;

export type RouteStatus =
  | { state: "pending" }
  | { state: "accepted"; port?: number }
  /** `code`: the hub's RefusedRoute.code, when it sent one (protocol/control.ts). */
  | { state: "refused"; reason: string; code?: string };

export interface RouteSink {
  /** Replace the whole set of routes owned by `owner` (e.g. "vm:web1"). */
  publish(owner: string, routes: PublishedRoute[]): void;
  /** Remove every route owned by `owner`. */
  withdraw(owner: string): void;
  /** What the hub said about a route, by route name. */
  status(routeName: string): RouteStatus;
}

/** A RouteSink that keeps routes in memory and accepts them all: for running the provisioner alone. */
export class MemoryRouteSink implements RouteSink {
  readonly owners = new Map<string, PublishedRoute[]>();
  publish(owner: string, routes: PublishedRoute[]): void { this.owners.set(owner, routes); }
  withdraw(owner: string): void { this.owners.delete(owner); }
  status(routeName: string): RouteStatus {
    for (const routes of this.owners.values()) {
      const r = routes.find((x) => x.name === routeName);
      if (r) return { state: "accepted", port: r.port };
    }
    return { state: "pending" };
  }
}
