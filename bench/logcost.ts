/**
 * What one access-log line costs the hub (gateway/accesslog.ts), in CPU µs, measured
 * apart from the traffic it describes so that a busy machine's noise does not drown it:
 *
 *   node dist/bench/logcost.js [lines] 2>/dev/null
 *
 * Writes `lines` access lines (default 100,000) through the real logger to stderr, in
 * each format, and prints process CPU (user + system) per line. Send stderr to
 * /dev/null (or a file) to measure formatting and the write system call, not a terminal.
 */
import net from "node:net";
import { logAccess, accessRecord } from "../gateway/accesslog.js";
import { createLogger } from "../lib/log.js";

const lines = Number(process.argv[2] ?? 100_000);
// A socket that never connects: bytesRead/bytesWritten read as 0, as cheap as on a real one.
const socket = new net.Socket();
const rec = accessRecord("tls");
rec.host = "blog.home1.hub.example.net";
rec.entry = { cog: "home1", route: "blog", kind: "tls", pattern: "blog.home1.hub.example.net" };
rec.outcome = "ok";

for (const format of ["json", "text"] as const) {
  const log = createLogger({ level: "info", format }).child("hub").child("access");
  for (let i = 0; i < 2_000; i++) logAccess(log, rec, "203.0.113.7", socket); // warm-up
  const t0 = process.cpuUsage();
  for (let i = 0; i < lines; i++) logAccess(log, rec, "203.0.113.7", socket);
  const d = process.cpuUsage(t0);
  process.stdout.write(`${format}: ${((d.user + d.system) / lines).toFixed(2)} µs CPU per access line (${lines} lines; user ${(d.user / lines).toFixed(2)}, system ${(d.system / lines).toFixed(2)})\n`);
}
