/**
 * The hub's admin listener through reloads (gateway/admin.ts HubAdminListener, called
 * by gateway/reload.ts): it moves like the other listeners, rebinds in place when only
 * hub.admin changed, answers with an app built from the new values (the token is asked
 * for once it leaves loopback), turns off and on, and a reload whose admin address will
 * not bind is refused with the old listener still serving. The cog's admin listener and
 * limits wait for a restart. A real hub and cog on loopback.
 */
import t from "tap";
import fs from "node:fs";
import net from "node:net";
import path from "node:path";
import type { Test } from "tap";
import { ADMIN_TOKEN_FILE } from "../certs/admintoken.js";
import { cogConfig, enrolledCog, hubConfig, startTestHub, tmpDir } from "./helpers/cluster.js";
import { freePort } from "./helpers/procs.js";
import { adminJson, adminRequest } from "./helpers/adminclient.js";

/** Resolves true when a TCP connection to 127.0.0.1:port is refused. */
function refused(port: number): Promise<boolean> {
  return new Promise((resolve) => {
    const s = net.connect({ host: "127.0.0.1", port });
    s.once("connect", () => { s.destroy(); resolve(false); });
    s.once("error", (err: NodeJS.ErrnoException) => resolve(err.code === "ECONNREFUSED"));
  });
}

async function hubAt(t: Test, admin: string, extra: Record<string, unknown> = {}) {
  const dir = tmpDir("capsul-admin-reload-");
  t.teardown(() => fs.rmSync(dir, { recursive: true, force: true }));
  const cfgWith = (a: string | null, more: Record<string, unknown> = {}) => hubConfig(dir, { listen: { admin: a }, ...more });
  const hub = await startTestHub(cfgWith(admin, extra));
  t.teardown(() => hub.close());
  return { dir, hub, cfgWith };
}

t.test("a moved admin listener serves on the new address; the old one stops accepting", async (t) => {
  const { hub, cfgWith } = await hubAt(t, "127.0.0.1:0");
  const before = hub.ports.admin!;
  t.equal((await adminJson(before, "/healthz")).status, 200);
  const report = await hub.reload(cfgWith("127.0.0.1:0", { admin: { status_refresh: "7s" } }));
  t.same(report.changed, ["hub.admin"]);
  const after = hub.ports.admin!;
  t.not(after, before, "port 0 again: a new socket next to the old one");
  t.ok(await refused(before), "the old socket no longer accepts");
  const page = await adminRequest(after, "/");
  t.equal(page.status, 200);
  t.match(page.body, /<meta http-equiv="refresh" content="7">/, "the new app has the new status_refresh");
});

t.test("only hub.admin changed on a fixed port: rebound in place, with the new limits", async (t) => {
  const port = await freePort();
  const { hub, cfgWith } = await hubAt(t, `127.0.0.1:${port}`);
  t.match((await adminRequest(port, "/")).body, /content="5"/);
  const report = await hub.reload(cfgWith(`127.0.0.1:${port}`, { admin: { status_refresh: "9s", max_request_body: "64B" } }));
  t.same(report.changed, ["hub.admin"]);
  t.equal(hub.ports.admin, port, "the same port");
  t.match((await adminRequest(port, "/")).body, /content="9"/);
  const body = JSON.stringify({ cog: "c9", hostnames: ["one.example.org", "two.example.org", "three.example.org"] });
  t.ok(body.length > 64 && body.length < 16 * 1024, `a ${body.length}-byte body: over the new limit, under the default`);
  const big = await adminRequest(port, "/v1/invites", { method: "POST", headers: { "content-type": "application/json" }, body });
  t.equal(big.status, 413, "the new max_request_body applies");
});

t.test("moved off loopback on the same port: the token is asked for at once", async (t) => {
  const port = await freePort();
  const { dir, hub, cfgWith } = await hubAt(t, `127.0.0.1:${port}`);
  t.equal((await adminRequest(port, "/v1/status")).status, 200, "on loopback: no token");
  // 0.0.0.0:PORT cannot be bound next to 127.0.0.1:PORT: the old one stops first.
  await hub.reload(cfgWith(`0.0.0.0:${port}`));
  t.equal(hub.ports.admin, port);
  const token = fs.readFileSync(path.join(dir, "hub", ADMIN_TOKEN_FILE), "utf8").trim();
  for (const p of ["/", "/metrics", "/v1/status", "/healthz"]) t.equal((await adminRequest(port, p)).status, 401, `GET ${p} without the token`);
  t.equal((await adminRequest(port, "/v1/status", { headers: { authorization: `Bearer ${token}` } })).status, 200);
  // And back: loopback again, no token.
  await hub.reload(cfgWith(`127.0.0.1:${port}`));
  t.equal((await adminRequest(port, "/v1/status")).status, 200);
});

t.test("off and on again", async (t) => {
  const { hub, cfgWith } = await hubAt(t, "127.0.0.1:0");
  const before = hub.ports.admin!;
  t.same((await hub.reload(cfgWith(null))).changed, ["hub.listen.admin"]);
  t.equal(hub.ports.admin, null);
  t.ok(await refused(before));
  await hub.reload(cfgWith("127.0.0.1:0"));
  t.equal((await adminJson(hub.ports.admin!, "/healthz")).status, 200);
});

t.test("an admin address that will not bind refuses the reload; the old listener keeps serving", async (t) => {
  const { hub, cfgWith } = await hubAt(t, "127.0.0.1:0");
  const before = hub.ports.admin!;
  const taken = net.createServer();
  await new Promise<void>((resolve) => taken.listen(0, "127.0.0.1", () => resolve()));
  t.teardown(() => taken.close());
  const port = (taken.address() as net.AddressInfo).port;
  await t.rejects(hub.reload(cfgWith(`127.0.0.1:${port}`, { admin: { status_refresh: "3s" } })),
    { message: new RegExp(`^hub\\.listen\\.admin: cannot listen on 127\\.0\\.0\\.1:${port}: EADDRINUSE`) });
  t.equal(hub.ports.admin, before);
  const page = await adminRequest(before, "/");
  t.equal(page.status, 200);
  t.match(page.body, /content="5"/, "the old configuration stays");
  t.equal(hub.config.admin.statusRefreshMs, 5000);
});

t.test("the cog's admin listener and limits wait for a restart; the rest of its reload applies", async (t) => {
  const { dir, hub, cfgWith } = await hubAt(t, "127.0.0.1:0");
  const cfgOf = (extra: Record<string, unknown>) => cogConfig(dir, "c1", hub.ports.tunnel, [], {}, extra);
  const cog = await enrolledCog(cfgWith("127.0.0.1:0"), hub, cfgOf({}), "c1");
  t.teardown(() => cog.close());
  const port = cog.admin!.port;
  const other = await freePort();
  const report = cog.reload(cfgOf({ listen: { admin: `127.0.0.1:${other}` }, admin: { request_timeout: "3s" }, target_dial_timeout: "2s" }));
  t.same(report.changed.sort(), ["cog.admin", "cog.listen", "cog.target_dial_timeout"]);
  t.same(report.restart.sort(), ["cog.admin", "cog.listen"]);
  t.equal(cog.config.targetDialTimeoutMs, 2000, "the rest applies");
  t.same(cog.config.listen.admin, { host: "127.0.0.1", port: 0 }, "the running listener's address is kept");
  t.equal(cog.config.admin.requestTimeoutMs, 10_000, "and its limits");
  t.equal((await adminJson(port, "/healthz")).status, 200, "still served where it was");
  t.ok(await refused(other), "nothing on the new address until a restart");
});
