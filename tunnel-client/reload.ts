/**
 * Reload of a running cog: a new cog section of capsul.yaml, already parsed and
 * validated, applied as a difference to the live configuration (tunnel-client/cog.ts).
 *
 * - cog.data_dir, cog.provisioner.data_dir: refused, nothing changes (config/reload.ts).
 * - cog.routes: announced to the hub again; added routes are served, removed ones
 *   withdrawn, and streams of the routes that stayed are not touched.
 * - cog.hub: the tunnel moves to the new address at once; streams on the old one finish there.
 * - cog.reconnect, target_dial_timeout, splice_queue, tunnel, terminate, shutdown_grace:
 *   the next dial, stream or connection.
 * - cog.acme: applied, except directory_url, ca_bundle and email (a restart).
 * - cog.provisioner: applied (each key is read when used), except listen, max_request_body,
 *   import_dir and import_allowed_cidrs, and turning it on or off (a restart).
 * - cog.listen.admin and cog.admin: a restart (the cog's /healthz and /metrics stay where they are).
 * Keys that wait for a restart keep their running value, so that every later reload
 * names them again until the restart.
 */
import { parseHostPort } from "../lib/hostname.js";
import { ConfigError } from "../lib/errors.js";
import {
  ACME_RESTART_FIELDS, acmeChange, changedCogKeys, COG_FIXED_KEYS, fixedKeyMessage, PROVISIONER_FIXED_KEY,
  PROVISIONER_START_ONLY_FIELDS, provisionerChange, sameValue,
} from "../config/reload.js";
import type { CogConfig, ProvisionerConfig } from "../config/types.js";
import type { AcmeManager } from "../certs/acme.js";
import type { TunnelClient } from "./client.js";
import type { CogIdentity } from "./identity.js";
import type { Terminator } from "./terminate.js";

/** The cog's admin listener (/healthz, /metrics) and its limits: a restart applies them. */
const ADMIN_RESTART_FIELDS = ["listen", "admin"] as const;

export interface CogParts {
  readonly live: CogConfig;
  readonly identity: CogIdentity;
  readonly client: TunnelClient;
  readonly acme: AcmeManager;
  readonly terminator: Terminator;
  /** Side services (the provisioner): take what they can of the new configuration. */
  readonly reconfigureExtras?: (next: CogConfig) => void;
}

export interface CogReloadReport {
  /** Key paths whose value changed (config/reload.ts changedCogKeys); empty: nothing to do. */
  changed: string[];
  /** Keys whose new value waits for a restart of `capsul cog`. */
  restart: string[];
}

/** `next` with the running values of `fields` from `old`. */
function keeping<T extends object>(next: T, old: T, fields: ReadonlySet<keyof T>): T {
  const out = { ...next };
  for (const f of fields) out[f] = old[f];
  return out;
}

export function reloadCog(p: CogParts, next: CogConfig): CogReloadReport {
  const old = p.live;
  const changed = changedCogKeys(old, next);
  const fixed = COG_FIXED_KEYS.find((k) => changed.includes(k));
  if (fixed) throw new ConfigError(fixedKeyMessage(fixed, "cog"));
  const prov = provisionerChange(old.provisioner, next.provisioner);
  if (prov.fixed) throw new ConfigError(fixedKeyMessage(PROVISIONER_FIXED_KEY, "cog"));
  if (changed.length === 0) return { changed, restart: [] };
  const acme = acmeChange(old.acme, next.acme);
  // cog.listen.admin and cog.admin: the admin listener is bound once, at start.
  const adminRestart = ADMIN_RESTART_FIELDS.filter((f) => !sameValue(old[f], next[f])).map((f) => `cog.${f}`);
  const restart = [...acme.restart, ...prov.restart, ...adminRestart];

  // What the process runs with from now on: the new values, but the running ones of restart keys.
  let provisioner: ProvisionerConfig | null = next.provisioner;
  if (old.provisioner === null || next.provisioner === null) provisioner = old.provisioner;
  else provisioner = keeping(next.provisioner, old.provisioner, PROVISIONER_START_ONLY_FIELDS);
  const applied: CogConfig = {
    ...keeping(next, old, new Set(ADMIN_RESTART_FIELDS)), acme: keeping(next.acme, old.acme, ACME_RESTART_FIELDS), provisioner,
  };

  const hub = next.hub ?? parseHostPort(p.identity.hub, "enrollment.json hub");
  const routesChanged = !sameValue(old.routes, next.routes);
  Object.assign(p.live, applied);
  p.client.reconfigure(routesChanged);
  p.terminator.reconfigure();
  p.acme.reconfigure(next.acme, ACME_RESTART_FIELDS);
  p.reconfigureExtras?.(applied);
  if (!sameValue(hub, p.client.hubAddress)) p.client.setHub(hub);
  return { changed, restart };
}
