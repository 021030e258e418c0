/**
 * How long the hub's grant checks take on a big hub: the start-up check
 * (every configured and invited grant against every other cog's grants and
 * default grants) and one invite's check. Real SQLite file in a temp dir.
 *
 *   npm run build && node dist/bench/grants-check.js [cogs] [invite-grants]
 *
 * Measured 2026-11-30 on the shared 2-core machine, 5,000 cogs, 500 hostname
 * + 500 TCP invite grants: start 129 ms, invite 39 ms (1.3 s at start when
 * every default grant was compared one by one).
 */
import fs from "node:fs";
import os from "node:os";
import path from "node:path";
import { parseConfig } from "../config/config.js";
import { checkGrantsConsistent, checkNewGrants } from "../gateway/grants.js";
import { openHubStore } from "../gateway/store/index.js";
import { silentLogger } from "../lib/log.js";

const COGS = Number(process.argv[2] ?? 5000);
const INVITE_GRANTS = Number(process.argv[3] ?? 500);
/** Ports per invited TCP grant, laid end to end from the pool's start. */
const PORTS_PER_GRANT = 10;
const POOL_FROM = 20000;

const dir = fs.mkdtempSync(path.join(os.tmpdir(), "capsul-grants-bench-"));
try {
  const poolTo = POOL_FROM + (INVITE_GRANTS + 1) * PORTS_PER_GRANT;
  const cfg = parseConfig({
    hub: { data_dir: dir, domain: "hub.test", listen: { tls: "127.0.0.1:0", http: "127.0.0.1:0", tunnel: "127.0.0.1:0", tcp_ports: [`${POOL_FROM}-${poolTo}`] } },
  }).hub!;
  const store = await openHubStore(cfg, silentLogger);
  await store.transaction([], async (tx) => {
    for (let i = 0; i < COGS; i++) await tx.ensureCog(`cog${i}`);
    for (let i = 0; i < INVITE_GRANTS; i++) {
      await tx.addGrant(`cog${i}`, "hostname", `*.site${i}.example.org`);
      const from = POOL_FROM + i * PORTS_PER_GRANT;
      await tx.addGrant(`cog${i}`, "tcp", `${from}-${from + PORTS_PER_GRANT - 1}`);
    }
  });
  let t0 = performance.now();
  await checkGrantsConsistent(cfg, store);
  const startMs = performance.now() - t0;
  t0 = performance.now();
  const last = POOL_FROM + INVITE_GRANTS * PORTS_PER_GRANT;
  await store.transaction(["grants"], (tx) => checkNewGrants(cfg, tx, "newcog", { hostnames: ["www.new.example.net"], tcpPorts: [{ from: last, to: last + PORTS_PER_GRANT - 1 }] }));
  const inviteMs = performance.now() - t0;
  await store.close();
  process.stdout.write(`${COGS} cogs, ${INVITE_GRANTS} hostname + ${INVITE_GRANTS} tcp invite grants: hub start check ${startMs.toFixed(1)} ms, one invite check ${inviteMs.toFixed(1)} ms\n`);
} finally {
  fs.rmSync(dir, { recursive: true, force: true });
}
