/**
 * Reload of a running hub: a new hub section of capsul.yaml, already parsed and
 * validated, applied as a difference to the live configuration (gateway/hub.ts).
 *
 * All or nothing: everything that can fail comes first (the grant consistency check,
 * binding moved listeners, a tunnel certificate for new names) and is undone if any of
 * it fails; only then does the live configuration change and the parts pick it up.
 * What changes and for whom:
 * - hub.data_dir, hub.domain: refused (config/reload.ts HUB_FIXED_KEYS); so are hub.acme and
 *   hub.admin's tls, hostname, challenge, cert_file and key_file (gateway/admintls.ts is set up at start).
 * - hub.listen.tls / http / tunnel / tcp_host: that listener moves; the old socket stops
 *   accepting, the connections it accepted carry on (gateway/listeners.ts).
 * - hub.listen.admin, hub.admin: the admin listener serves an app built from the new values,
 *   moved or rebound in place (gateway/admin.ts HubAdminListener); hub.admin.cogs_cache at
 *   the next read.
 * - grants (hub.cogs, default_grants, default_tcp_ports_per_cog, listen.tcp_ports): the
 *   consistency check runs again (refusing the reload if two cogs would overlap), then
 *   every connected cog's last announced routes are applied again, so that routes now
 *   outside its grants are withdrawn (and newly granted ones accepted); its other
 *   routes and their streams are untouched.
 * - hub.limits: new connections (Visitors.reconfigure); the buffer budgets at the next sweep.
 * - hub.tunnel, public_tunnel_address: tunnels that connect from now on (Tunnels.reconfigure);
 *   the unauthenticated-connection caps and the revocation poll at once.
 * - hub.domains: the next decision and lookup use it; the lookup timer restarts, and every
 *   connected cog's routes are applied again (turning it off withdraws proven names).
 * - hub.endpoint (its advertised address follows public_tunnel_address and the tunnel
 *   port): the endpoint row is registered again and every cog is sent the new list.
 * - invite_ttl, cog_cert_ttl, shutdown_grace: read when used.
 */
import type { HubPki } from "../certs/pki.js";
import { loadOrCreateHubPki } from "../certs/pki.js";
import { changedHubKeys, fixedKeyMessage, HUB_FIXED_KEYS, sameValue } from "../config/reload.js";
import type { HubConfig } from "../config/types.js";
import { ConfigError } from "../lib/errors.js";
import type { Logger } from "../lib/log.js";
import { checkGrantsConsistent } from "./grants.js";
import { hubNames } from "./hub.js";
import type { HubAdminListener } from "./admin.js";
import type { DomainProofs } from "./domains.js";
import type { Listener, ListenerChange, TcpListeners } from "./listeners.js";
import type { HubStore } from "./store/types.js";
import type { Tunnels } from "./tunnels.js";
import type { Visitors } from "./visitors.js";

/** What startHub() assembled, for reload and drain. */
export interface HubParts {
  readonly live: HubConfig;
  readonly store: HubStore;
  readonly tunnels: Tunnels;
  readonly visitors: Visitors;
  readonly tls: Listener;
  readonly http: Listener;
  readonly tcp: TcpListeners;
  readonly admin: HubAdminListener;
  readonly log: Logger;
  readonly domains: DomainProofs;
  pki: HubPki;
}

export interface HubReloadReport {
  /** Key paths whose value changed (config/reload.ts changedHubKeys); empty: nothing to do. */
  changed: string[];
}

/** The first key of the admin listener's TLS (hub.admin.tls and its companions, hub.acme) that differs, or null. */
function adminTlsKeyChanged(a: HubConfig, b: HubConfig): string | null {
  for (const k of ["tls", "hostname", "challenge", "certFile", "keyFile"] as const) {
    if (a.admin[k] !== b.admin[k]) return `hub.admin.${k.replace(/[A-Z]/g, (c) => `_${c.toLowerCase()}`)}`;
  }
  return sameValue(a.acme, b.acme) ? null : "hub.acme";
}

/** The keys whose change alters what some cog may announce. */
const GRANT_KEYS = ["hub.cogs", "hub.default_grants", "hub.default_tcp_ports_per_cog", "hub.listen.tcp_ports", "hub.domains"];

export async function reloadHub(p: HubParts, next: HubConfig): Promise<HubReloadReport> {
  const changed = changedHubKeys(p.live, next);
  const fixed = HUB_FIXED_KEYS.find((k) => changed.includes(k));
  if (fixed) throw new ConfigError(fixedKeyMessage(fixed, "hub"));
  // The admin listener's certificate source is set up once, at start (gateway/admintls.ts).
  const tlsKey = adminTlsKeyChanged(p.live, next);
  if (tlsKey) throw new ConfigError(fixedKeyMessage(tlsKey, "hub"));
  if (changed.length === 0) return { changed };
  const grants = GRANT_KEYS.some((k) => changed.includes(k));
  // The same check as at start, against stored invites and every known cog: throws a ConfigError naming both grants.
  if (grants) for (const w of await checkGrantsConsistent(next, p.store)) p.log.warn(w.message, w.fields);

  const moves: ListenerChange[] = [];
  let pki = p.pki;
  try {
    if (changed.includes("hub.listen.tls")) moves.push(await p.tls.prepare(next.listen.tls));
    if (changed.includes("hub.listen.http")) moves.push(await p.http.prepare(next.listen.http));
    if (changed.includes("hub.listen.tunnel")) moves.push(await p.tunnels.prepareListen(next.listen.tunnel));
    if (changed.includes("hub.listen.tcp_host")) moves.push(await p.tcp.prepareHost(next.listen.tcpHost));
    // A new app on the new address, or on the same one with new limits (gateway/admin.ts).
    if (changed.includes("hub.listen.admin") || changed.includes("hub.admin")) moves.push(await p.admin.prepare(next));
    // A certificate that also names a new public_tunnel_address (or tunnel host) for cogs that dial it.
    if (!sameValue(hubNames(p.live), hubNames(next))) pki = await loadOrCreateHubPki(next.dataDir, hubNames(next));
  } catch (err) {
    for (const m of moves.reverse()) await m.undo();
    throw err;
  }

  // Nothing below fails (what could, logs and keeps its old value): from here on the new configuration is the hub's.
  Object.assign(p.live, next);
  for (const m of moves) m.commit();
  p.pki = pki;
  p.visitors.reconfigure();
  await p.tunnels.reconfigure(pki);
  if (changed.includes("hub.domains")) p.domains.reconfigure();
  if (grants) await p.tunnels.reapplyRoutes();
  return { changed };
}
