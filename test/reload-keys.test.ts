/**
 * How a reload names what changed (config/reload.ts changedHubKeys): the key paths
 * the hub logs and `capsul hub reload` prints, and from which it decides what to redo
 * (gateway/reload.ts re-checks grants only when hub.cogs' grants moved).
 */
import t from "tap";
import { parseConfig } from "../config/config.js";
import { changedHubKeys } from "../config/reload.js";

const hub = (limits: Record<string, unknown>, cogs: unknown[]) =>
  parseConfig({ hub: { domain: "hub.example.net", limits, cogs } }).hub!;

t.test("hub.cogs: grants and per-cog limits are told apart", async (t) => {
  const base = hub({}, [{ name: "a", hostnames: ["a.example.org"] }, { name: "b", limits: { max_streams: 10 } }]);
  t.same(changedHubKeys(base, hub({}, [{ name: "a", hostnames: ["a.example.org"] }, { name: "b", limits: { max_streams: 10 } }])), [], "the same file: nothing");
  // hub.limits alone changes every cog's resolved limits: only hub.limits is named, grants are not touched.
  t.same(changedHubKeys(base, hub({ max_streams_per_cog: 7 }, [{ name: "a", hostnames: ["a.example.org"] }, { name: "b", limits: { max_streams: 10 } }])), ["hub.limits"]);
  t.same(changedHubKeys(base, hub({}, [{ name: "a", hostnames: ["a.example.org"] }, { name: "b", limits: { max_streams: 11 } }])), ["hub.cogs[].limits"], "one override moved");
  t.same(changedHubKeys(base, hub({}, [{ name: "a", hostnames: ["a2.example.org"] }, { name: "b", limits: { max_streams: 10 } }])), ["hub.cogs"], "a grant moved");
  t.same(changedHubKeys(base, hub({}, [{ name: "a", hostnames: ["a2.example.org"] }, { name: "b", limits: { max_streams: 11 } }])), ["hub.cogs", "hub.cogs[].limits"]);
});
