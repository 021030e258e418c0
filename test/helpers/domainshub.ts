/**
 * The hub of the custom-domain tests (domains, domains-release): a real hub whose resolver is
 * a DNS stub the test fills (./dnsstub.ts), with lookups quick enough for a test, and what it logs.
 */
import fs from "node:fs";
import { startHub } from "../../gateway/hub.js";
import { hubConfig, tmpDir } from "./cluster.js";
import { startDnsStub } from "./dnsstub.js";
import type { Teardown } from "./procs.js";
import { capturingLogger } from "./rawpeer.js";

/** hub.domains timings for tests: a miss is asked again in 150 ms, a proof re-checked every 200 ms. */
export const QUICK_DOMAINS = { lookup_timeout: "500ms", pending_interval: "150ms", recheck_interval: "200ms", error_retry_interval: "200ms" };

/** `domains`: more hub.domains keys (over QUICK_DOMAINS). Everything is gone at the test's end. */
export async function domainsHub(t: Teardown, prefix: string, domains: Record<string, unknown> = {}) {
  const dir = tmpDir(prefix);
  t.teardown(() => fs.rmSync(dir, { recursive: true, force: true }));
  const dns = await startDnsStub(t);
  const hubLog = capturingLogger("hub");
  const hubCfg = hubConfig(dir, { domains: { resolver: dns.address, ...QUICK_DOMAINS, ...domains } });
  const hub = await startHub(hubCfg, hubLog.log);
  t.teardown(() => hub.close());
  return { dir, dns, hubLog, hubCfg, hub };
}
