/**
 * Shared pieces of the ACME end-to-end tests: a hub on loopback with pebble
 * validating through it, cog settings pointing at pebble, and waits on the
 * cog's certificate list (never a fixed sleep).
 */
import fs from "node:fs";
import path from "node:path";
import tls from "node:tls";
import type { Hub } from "../../gateway/hub.js";
import type { Cog } from "../../tunnel-client/cog.js";
import type { CertRow } from "../../certs/acme.js";
import { hubConfig, startTestHub } from "./cluster.js";
import { startPebble, type Pebble } from "./pebble.js";
import { waitFor, type Teardown } from "./procs.js";
import type { HubConfig } from "../../config/types.js";

export interface AcmeWorld { dir: string; hubCfg: HubConfig; hub: Hub; pebble: Pebble; rootFile: string }

/** A hub on loopback and a pebble whose validator dials that hub's HTTP and TLS listeners. */
export async function acmeWorld(t: Teardown, dir: string, opts: { validitySec?: number } = {}): Promise<AcmeWorld> {
  const hubCfg = hubConfig(dir);
  const hub = await startTestHub(hubCfg);
  t.teardown(() => hub.close());
  const pebble = await startPebble(t, dir, { httpPort: hub.ports.http!, tlsPort: hub.ports.tls!, validitySec: opts.validitySec });
  const rootFile = path.join(dir, "pebble-root.pem");
  fs.writeFileSync(rootFile, await pebble.rootPem());
  return { dir, hubCfg, hub, pebble, rootFile };
}

/** cog.acme for a test: pebble (or a proxy in front of it), its CA bundle, quick polls and retries. */
export function acmeKeys(directoryUrl: string, caFile: string, over: Record<string, unknown> = {}): Record<string, unknown> {
  return { acme: { directory_url: directoryUrl, ca_bundle: caFile, poll_interval: "100ms", retry_min_delay: "500ms", retry_max_delay: "4s", ...over } };
}

export function row(cog: Cog, name: string): CertRow | undefined {
  return cog.acme.list().find((r) => r.name === name);
}

/** Waits until the cog holds a certificate for `name` whose serial is not `notSerial`, and its order is over; returns its row. */
export async function waitIssued(cog: Cog, name: string, opts: { notSerial?: string | null; timeoutMs?: number } = {}): Promise<CertRow> {
  return waitFor(`a certificate for ${name}${opts.notSerial ? ` other than ${opts.notSerial}` : ""}`, () => {
    const r = row(cog, name);
    return r?.serial && r.serial !== opts.notSerial && r.state !== "issuing" ? r : null;
  }, { timeoutMs: opts.timeoutMs ?? 60_000, intervalMs: 100 });
}

/** The serial of the certificate presented for `name` through the hub's TLS port, checked against `caPem`. */
export function presentedSerial(port: number, name: string, caPem: string): Promise<string> {
  return new Promise((resolve, reject) => {
    const s = tls.connect({ host: "127.0.0.1", port, servername: name, ca: caPem }, () => {
      const serial = s.getPeerCertificate().serialNumber;
      s.end();
      resolve(serial);
    });
    s.on("error", reject);
  });
}
