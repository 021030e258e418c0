/**
 * The per-cog visitor limits of capsul.yaml (config/quotas.ts): hub.limits.max_streams_per_cog,
 * max_connections_per_route, cog_bandwidth, cog_bandwidth_burst, and hub.cogs[].limits over them.
 * (The invalid/cog-*.yaml and max-streams-*.yaml fixtures cover the same errors through a file.)
 */
import t from "tap";
import { readFileSync } from "node:fs";
import { dirname, join, resolve } from "node:path";
import { fileURLToPath } from "node:url";
import * as Q from "../config/quotas.js";
import { parseConfig } from "../config/config.js";
import { ConfigError } from "../lib/errors.js";
import { parseDurationMs } from "../lib/units.js";

const root = resolve(dirname(fileURLToPath(import.meta.url)), "..");
const KiB = 1024;
const MiB = 1024 * KiB;

function hub(limits: Record<string, unknown> = {}, cogs: unknown[] = []) {
  return parseConfig({ hub: { domain: "hub.example.net", limits, cogs } }).hub!;
}

function errorOf(fn: () => unknown): string {
  try {
    fn();
  } catch (err) {
    if (err instanceof ConfigError) return err.message;
    throw err;
  }
  throw new Error("expected a ConfigError, nothing was thrown");
}

t.test("defaults match the doc comments in config/types.ts", async (t) => {
  const types = readFileSync(join(root, "config", "types.ts"), "utf8");
  const docOf = (iface: string, field: string): string => {
    const start = types.search(new RegExp(`interface ${iface} (?:extends \\w+ )?\\{`));
    t.ok(start >= 0, `interface ${iface} exists`);
    return new RegExp(`/\\*\\*((?:(?!\\*/)[\\s\\S])*)\\*/\\s*${field}\\??:`).exec(types.slice(start))?.[1] ?? "";
  };
  const table: [keyof typeof Q, string, string, number][] = [
    ["DEFAULT_MAX_STREAMS_PER_COG", "maxStreamsPerCog", "5000", 5000],
    ["DEFAULT_MAX_CONNECTIONS_PER_ROUTE", "maxConnectionsPerRoute", "2000", 2000],
    ["DEFAULT_COG_BANDWIDTH_BYTES_PER_SEC", "cogBandwidthBytesPerSec", "0", 0],
    ["DEFAULT_COG_BANDWIDTH_BURST_MS", "cogBandwidthBurstBytes", "1s", parseDurationMs("1s")],
  ];
  for (const [name, field, text, value] of table) {
    t.ok(docOf("HubLimits", field).includes(`default ${text}`), `HubLimits.${field} doc says "default ${text}"`);
    t.equal(Q[name], value, name);
  }
  const exported = Object.keys(Q).filter((k) => k.startsWith("DEFAULT_")).sort();
  t.same(exported, table.map(([name]) => name).sort(), "every default of config/quotas.ts is in the table");

  const h = hub();
  t.equal(h.limits.maxStreamsPerCog, 5000);
  t.equal(h.limits.maxConnectionsPerRoute, 2000);
  t.equal(h.limits.cogBandwidthBytesPerSec, 0, "bandwidth is unlimited by default");
  t.equal(h.limits.cogBandwidthBurstBytes, 0);
});

t.test("rates, bursts and caps are read; hub.cogs[].limits override hub.limits for one cog", async (t) => {
  t.equal(hub({ cog_bandwidth: "2MiB/s" }).limits.cogBandwidthBytesPerSec, 2 * MiB, "a size per second");
  t.equal(hub({ cog_bandwidth: "2MiB" }).limits.cogBandwidthBytesPerSec, 2 * MiB, "the /s may be left out");
  t.equal(hub({ cog_bandwidth: 4096 }).limits.cogBandwidthBytesPerSec, 4096, "a bare number is bytes per second");
  t.equal(hub({ cog_bandwidth: "off" }).limits.cogBandwidthBytesPerSec, 0);
  t.equal(hub({ cog_bandwidth: false }).limits.cogBandwidthBytesPerSec, 0);
  t.equal(hub({ cog_bandwidth: "2MiB/s" }).limits.cogBandwidthBurstBytes, 2 * MiB, "the burst defaults to 1s of the rate");
  t.equal(hub({ cog_bandwidth: "10KiB/s" }).limits.cogBandwidthBurstBytes, 64 * KiB, "but at least 64KiB");
  t.equal(hub({ cog_bandwidth: "2MiB/s", cog_bandwidth_burst: "256KiB" }).limits.cogBandwidthBurstBytes, 256 * KiB);
  t.equal(hub({ max_streams_per_cog: 100 }).limits.maxConnectionsPerRoute, 100, "the per-route default follows a smaller stream cap");

  const h = hub({ max_streams_per_cog: 300, cog_bandwidth: "1MiB/s", cog_bandwidth_burst: "512KiB" }, [
    { name: "plain" },
    { name: "fast", limits: { bandwidth: "off", max_streams: 1000 } },
    { name: "slow", limits: { bandwidth: "100KiB/s", max_connections_per_route: 7 } },
    { name: "burst", limits: { bandwidth_burst: "1MiB" } },
  ]);
  const by = (name: string) => h.cogs.find((c) => c.name === name)!.limits;
  t.strictSame(by("plain"), { maxStreams: 300, maxConnectionsPerRoute: 300, bandwidthBytesPerSec: MiB, bandwidthBurstBytes: 512 * KiB },
    "a listed cog without limits takes hub.limits'");
  t.strictSame(by("fast"), { maxStreams: 1000, maxConnectionsPerRoute: 300, bandwidthBytesPerSec: 0, bandwidthBurstBytes: 0 },
    "a cog may lift the hub-wide bandwidth and raise its stream cap");
  t.strictSame(by("slow"), { maxStreams: 300, maxConnectionsPerRoute: 7, bandwidthBytesPerSec: 100 * KiB, bandwidthBurstBytes: 100 * KiB },
    "a cog's own bandwidth brings its own default burst (1s of it), not the hub's");
  t.strictSame(by("burst"), { maxStreams: 300, maxConnectionsPerRoute: 300, bandwidthBytesPerSec: MiB, bandwidthBurstBytes: MiB },
    "a burst alone applies to the inherited bandwidth");
});

t.test("bad values: one line naming the key", async (t) => {
  const bad: [() => unknown, string][] = [
    [() => hub({ max_streams_per_cog: 0 }), "hub.limits.max_streams_per_cog: out of range (1-20000): 0"],
    [() => hub({ max_visitors: 10, max_streams_per_cog: 11 }), "hub.limits.max_streams_per_cog: out of range (1-10): 11"],
    [() => hub({ max_streams_per_cog: 10, max_connections_per_route: 11 }), "hub.limits.max_connections_per_route: out of range (1-10): 11"],
    [() => hub({ max_connections_per_route: "many" }), 'hub.limits.max_connections_per_route: expected an integer, got a string "many"'],
    [() => hub({ cog_bandwidth: "fast" }), 'hub.limits.cog_bandwidth: not a rate (use e.g. 2MiB/s, 500KiB/s, or off): "fast"'],
    [() => hub({ cog_bandwidth: 2 }), "hub.limits.cog_bandwidth: must be at least 1KiB/s (or off), got 2 bytes/s"],
    [() => hub({ cog_bandwidth: "-1MiB/s" }), 'hub.limits.cog_bandwidth: not a rate (use e.g. 2MiB/s, 500KiB/s, or off): "-1MiB/s"'],
    [() => hub({ cog_bandwidth_burst: "1MiB" }), "hub.limits.cog_bandwidth_burst: has no effect without cog_bandwidth (bandwidth is unlimited)"],
    [() => hub({ cog_bandwidth: "1MiB/s", cog_bandwidth_burst: "1KiB" }),
      "hub.limits.cog_bandwidth_burst: must be at least 64KiB (one socket read is paid for at once), got 1KiB"],
    [() => hub({}, [{ name: "a", limits: { max_streams: 20001 } }]), "hub.cogs[0].limits.max_streams: out of range (1-20000): 20001"],
    [() => hub({}, [{ name: "a", limits: { bandwith: "1MiB/s" } }]), 'hub.cogs[0].limits.bandwith: unknown key (did you mean "bandwidth"?)'],
    [() => hub({}, [{ name: "a", limits: "fast" }]), 'hub.cogs[0].limits: expected a mapping, got a string "fast"'],
    [() => hub({}, [{ name: "a", limits: { bandwidth_burst: "1MiB" } }]), "hub.cogs[0].limits.bandwidth_burst: has no effect without bandwidth (bandwidth is unlimited)"],
    [() => hub({}, [{ name: "a", limits: { max_streams: 5, max_connections_per_route: 6 } }]), "hub.cogs[0].limits.max_connections_per_route: out of range (1-5): 6"],
  ];
  for (const [fn, message] of bad) t.equal(errorOf(fn), message);
});
