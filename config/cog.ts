/**
 * The cog: section of capsul.yaml: its keys, defaults and bounds (stated once), and the rules
 * between keys (routes against each other). cog.tunnel is ./tunnel.ts's, cog.acme,
 * cog.terminate and the routes' TLS keys ./acme.ts's, cog.provisioner provisioner/config.ts's.
 */
import { COG_NAME_RE, parseHostPort } from "../lib/hostname.js";
import { z } from "zod";
import { provisionerSchema } from "../provisioner/config.js";
import { cogAdminListen, cogAdminSchema, DEFAULT_COG_ADMIN_LISTEN } from "./admin.js";
import { acmeSchema, buildRouteTermination, checkTerminatedHostnames, ROUTE_TLS_SHAPE, terminateSchema } from "./acme.js";
import { choice, custom, durationMs, fail, hostPort, int, leaf, listOf, path, rules, section } from "./fields.js";
import { shutdownGrace } from "./hub.js";
import { spliceQueue } from "./limits.js";
import { cogTunnelSchema } from "./tunnel.js";
import type { CogConfig, CogRoute, ProxyProtocol, RouteKind } from "./types.js";
import { fmtMs, hostnamePattern, string } from "./values.js";

export const DEFAULT_COG_DATA_DIR = "/var/lib/capsul/cog";
export const DEFAULT_PROXY_PROTOCOL: ProxyProtocol = "none";
export const DEFAULT_RECONNECT_MIN_DELAY_MS = 500;
export const DEFAULT_RECONNECT_MAX_DELAY_MS = 30_000;
export const DEFAULT_ENDPOINT_GONE_TIMEOUT_MS = 30_000;
export const DEFAULT_TARGET_DIAL_TIMEOUT_MS = 5_000;

const ROUTE_KINDS: readonly RouteKind[] = ["tls", "http", "tcp"];
const PROXY_PROTOCOLS: readonly ProxyProtocol[] = ["none", "v1", "v2"];

const routeSchema = section("One route: what the hub sends to this cog, and where the cog sends it.", {
  name: custom({ description: "Stable name, unique in this cog; TCP port assignments are keyed by it. a-z first, then a-z, 0-9 or -, at most 39.", type: "string", pattern: COG_NAME_RE.source },
    (v) => string(v, "")),
  kind: choice("tls (routed by SNI), http (by Host) or tcp (by hub port).", ROUTE_KINDS),
  hostname: leaf({ description: "tls and http routes: the hostname pattern, exact or *.suffix.", type: ["string", "null"] },
    (v) => (v == null ? undefined : hostnamePattern(v, ""))),
  port: int("tcp routes: the hub port wanted (otherwise the hub assigns one and keeps it).", { def: undefined, min: 1, max: 65535 }),
  target: leaf({ description: "Where the cog sends the stream: host:port.", type: "string" }, (v) => parseHostPort(v ?? string(v, ""))),
  proxy_protocol: choice("PROXY protocol header written to the target first.", PROXY_PROTOCOLS, DEFAULT_PROXY_PROTOCOL),
  ...ROUTE_TLS_SHAPE,
}, (o): CogRoute => {
  if (!COG_NAME_RE.test(o.name)) fail(["name"], `not a route name (a-z first, then a-z, 0-9 or "-", at most 39): ${JSON.stringify(o.name)}`);
  const route: CogRoute = { name: o.name, kind: o.kind, target: o.target, proxyProtocol: o.proxy_protocol };
  if (o.kind === "tcp") {
    if (o.hostname !== undefined) fail(["hostname"], "not allowed for tcp routes (they are matched by port)");
    if (o.port !== undefined) route.port = o.port;
  } else {
    if (o.port !== undefined) fail(["port"], `not allowed for ${o.kind} routes (only tcp routes have a port)`);
    if (o.hostname === undefined) fail(["hostname"], `required for ${o.kind} routes`);
    route.hostname = o.hostname;
  }
  buildRouteTermination(o, route);
  return route;
}, { requiredKeys: ["name", "kind", "target"], nullable: false });

const routesSchema = listOf("The cog's routes.", routeSchema).transform(rules((routes) => {
  routes.forEach((r, j) => {
    for (let i = 0; i < j; i++) {
      const o = routes[i]!;
      if (o.name === r.name) fail([j, "name"], `duplicate route name ${JSON.stringify(r.name)} (also cog.routes[${i}])`);
      // tls and http routes for one name are normal (two listeners); two of the same kind are ambiguous.
      if (r.hostname !== undefined && o.kind === r.kind && o.hostname === r.hostname) {
        fail([j, "hostname"], `${r.kind} route for ${JSON.stringify(r.hostname)} already defined by cog.routes[${i}]`);
      }
      if (r.port !== undefined && o.port === r.port) fail([j, "port"], `port ${r.port} already wanted by cog.routes[${i}]`);
    }
  });
  checkTerminatedHostnames(routes);
  return routes;
}));

const reconnectSchema = section("Backoff of the cog's redials; jitter is ±25%.", {
  min_delay: durationMs("First backoff delay.", { def: DEFAULT_RECONNECT_MIN_DELAY_MS, min: 1 }),
  max_delay: durationMs("Cap of the exponential backoff.", { def: DEFAULT_RECONNECT_MAX_DELAY_MS, min: 1 }),
  endpoint_gone_timeout: durationMs("A hub endpoint missing from the hub's list for this long, with no tunnel up, is no longer dialed.",
    { def: DEFAULT_ENDPOINT_GONE_TIMEOUT_MS, min: 1 }),
}, (o): CogConfig["reconnect"] => {
  if (o.min_delay > o.max_delay) fail(["min_delay"], `must not exceed max_delay (${fmtMs(o.max_delay)})`);
  return { minDelayMs: o.min_delay, maxDelayMs: o.max_delay, endpointGoneTimeoutMs: o.endpoint_gone_timeout };
});

const cogListenSchema = section("The cog's own listener (the provisioner's is cog.provisioner.listen).", {
  admin: cogAdminListen,
}, (o) => o);

/** Absent, null or false: no provisioner. Its keys and defaults are provisioner/config.ts's. */
const provisioner = z.preprocess((v) => (v === false || v === null ? undefined : v), provisionerSchema.optional());

export const cogSchema = section("The cog (home server); omit on a hub-only machine.", {
  data_dir: path("Directory for the cog's key, certificate and state; relative paths are resolved against the file's directory.", DEFAULT_COG_DATA_DIR),
  hub: hostPort("Hub tunnel address host:port; if absent, the one stored at enrollment is used.", { def: null }),
  routes: routesSchema,
  reconnect: reconnectSchema,
  target_dial_timeout: durationMs("Deadline for dialing a route's target.", { def: DEFAULT_TARGET_DIAL_TIMEOUT_MS, min: 1 }),
  splice_queue: spliceQueue("a target's or its tunnel stream's"),
  tunnel: cogTunnelSchema,
  listen: cogListenSchema,
  admin: cogAdminSchema,
  provisioner,
  acme: acmeSchema,
  terminate: terminateSchema,
  shutdown_grace: shutdownGrace("the cog sends GoAway to the hub and lets its visitor streams finish (VMs keep running)"),
}, (o): CogConfig => ({
  dataDir: o.data_dir,
  hub: o.hub,
  routes: o.routes,
  reconnect: o.reconnect,
  targetDialTimeoutMs: o.target_dial_timeout,
  spliceQueueBytes: o.splice_queue,
  tunnel: o.tunnel,
  // With a provisioner, its API listener serves /healthz and /metrics; a second listener is opt-in.
  listen: { admin: o.listen.admin !== undefined ? o.listen.admin : o.provisioner ? null : parseHostPort(DEFAULT_COG_ADMIN_LISTEN) },
  admin: o.admin,
  provisioner: o.provisioner ?? null,
  acme: o.acme,
  terminate: o.terminate,
  shutdownGraceMs: o.shutdown_grace,
}), { nullable: false });
