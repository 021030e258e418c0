/**
 * Hub endpoints on one machine's SQLite store (issue 12), in process: two
 * hubs sharing a data dir are two endpoints; a cog enrolled on the first
 * dials the second from the pushed list, a third hub may not take a live
 * hub's name, and when the second stops the cog stops dialing it after
 * cog.reconnect.endpoint_gone_timeout. Plus what a cog accepts of a list.
 */
import t from "tap";
import fs from "node:fs";
import { checkWireEndpoints, ENDPOINTS_MAX } from "../protocol/control.js";
import { ProtocolError } from "../lib/errors.js";
import { cogConfig, enrolledCog, hubConfig, startTestHub, tmpDir } from "./helpers/cluster.js";
import { waitFor } from "./helpers/procs.js";

t.test("a cog accepts only well-formed endpoints, at most ENDPOINTS_MAX, each name once", async (t) => {
  t.throws(() => checkWireEndpoints({ name: "a" }), ProtocolError, "not a list");
  const ok = { name: "vps-1", address: "198.51.100.1:7443", serverName: "hub.example.net" };
  t.same(checkWireEndpoints([
    ok,
    { ...ok, name: "vps-1", address: "198.51.100.9:7443" }, // the same name again: the first wins
    { name: "Bad Name", address: "198.51.100.2:7443", serverName: "" },
    { name: "v6", address: "[2001:db8::1]:7443", serverName: "" },
    { name: "noport", address: "198.51.100.3", serverName: "" },
    { name: "inject", address: "198.51.100.4:7443\nx", serverName: "" },
    { name: "sni", address: "198.51.100.5:7443", serverName: 7 },
    "vps-2",
    null,
  ]), [ok, { name: "v6", address: "[2001:db8::1]:7443", serverName: "" }]);
  const many = Array.from({ length: ENDPOINTS_MAX + 50 }, (_, i) => ({ name: `e${i}`, address: `10.0.0.1:${1000 + i}`, serverName: "" }));
  t.equal(checkWireEndpoints(many).length, ENDPOINTS_MAX, "a longer list is cut");
});

t.test("two hubs on one SQLite store: a cog dials the second from the pushed list, and stops when it is gone", async (t) => {
  const dir = tmpDir("capsul-endpoints-");
  t.teardown(() => fs.rmSync(dir, { recursive: true, force: true }));
  const endpoint = (name: string) => ({ endpoint: { name, advertise: "127.0.0.1:0", heartbeat_interval: "100ms", timeout: "1s" } });
  const cfgOne = hubConfig(dir, endpoint("one"));
  const one = await startTestHub(cfgOne);
  t.teardown(() => one.close());
  const cfg = cogConfig(dir, "roamer", one.ports.tunnel, [], {}, { reconnect: { min_delay: "100ms", max_delay: "300ms", endpoint_gone_timeout: "1s" } });
  const cog = await enrolledCog(cfgOne, one, cfg, "roamer");
  t.teardown(() => cog.close());
  t.same(cog.client.connectedEndpoints(), ["one"], "the bootstrap tunnel is named by the welcome");

  const two = await startTestHub(hubConfig(dir, endpoint("two")));
  let twoClosed = false;
  t.teardown(() => (twoClosed ? undefined : two.close()));
  t.same(await waitFor("the cog on both hubs", () => {
    const eps = cog.client.connectedEndpoints();
    return eps.length === 2 ? eps : null;
  }), ["one", "two"]);
  t.ok(two.tunnels.links.get("roamer")?.session, "the second hub holds a tunnel of the cog");
  t.same(await waitFor("both tunnels recorded", async () => {
    const rows = (await one.store.tunnelsOf("roamer")).map((r) => r.endpoint);
    return rows.length === 2 ? rows : null;
  }), ["one", "two"], "both tunnels recorded for capsul hub cogs");

  // A third hub under a live hub's name is refused, with the name and the key.
  await t.rejects(startTestHub(hubConfig(dir, endpoint("two"))), /^hub\.endpoint\.name "two" is used by a live hub at 127\.0\.0\.1:\d+ \(stamped \d+ ms ago\); give each hub its own name$/);
  t.ok(two.tunnels.links.get("roamer")?.session, "and the live one is untouched");

  // The second hub stops: its row goes, the first hub's list says so, the cog gives it up.
  await two.close();
  twoClosed = true;
  await waitFor("the cog to stop dialing the gone endpoint", () => cog.client.links.size === 1);
  t.same(cog.client.connectedEndpoints(), ["one"], "the tunnel to the first hub stays");
  t.same((await one.store.tunnelsOf("roamer")).map((r) => r.endpoint), ["one"]);
  t.same((await one.store.liveEndpoints(0)).map((e) => e.name), ["one"]);
});
