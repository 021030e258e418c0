/**
 * `capsul vm create --https terminate|passthrough`, from the routes the
 * provisioner publishes to the hub through a real cog, with a plain HTTP
 * server standing in for the VM's port 80 (the routes are exactly what the
 * provisioner publishes once QEMU runs: provisioner/routes.ts vmRoutes, into
 * the cog's TunnelClient, its RouteSink). Terminate: pebble issues the
 * certificate by HTTP-01 through the hub, and real curl reaches the "VM" over
 * HTTPS through the hub; passthrough: today's tls + http routes, no
 * certificate on the cog.
 */
import t from "tap";
import net from "node:net";
import { cogConfig, enrolledCog, httpBackend, HUB_DOMAIN, listen, closeServer, tmpDir } from "./helpers/cluster.js";
import { acmeKeys, acmeWorld, row, waitIssued } from "./helpers/acme.js";
import { curl, waitFor } from "./helpers/procs.js";
import { domainRouteNames, routeOwner, vmReach, vmRoutes, type Reach } from "../provisioner/routes.js";
import type { VmRecord } from "../provisioner/db.js";

t.test("--https terminate: the cog holds the certificate and sends plain HTTP to the VM's port 80; passthrough stays as it was", async (t) => {
  const dir = tmpDir("capsul-vm-https-");
  const w = await acmeWorld(t, dir);
  const port80 = await httpBackend("vm-port-80");
  // The VM's 443 in passthrough mode: a TCP server that only records that it was reached.
  let reached443 = 0;
  const port443 = net.createServer((s) => { reached443++; s.destroy(); });
  const p443 = await listen(port443);
  const sshStandIn = net.createServer((s) => s.end("SSH-2.0-standin\r\n"));
  const p22 = await listen(sshStandIn);
  t.teardown(async () => { await port80.close(); await closeServer(port443); await closeServer(sshStandIn); });

  const cfg = cogConfig(dir, "home1", w.hub.ports.tunnel, [], {}, acmeKeys(w.pebble.directoryUrl, w.pebble.ca.caFile));
  const cog = await enrolledCog(w.hubCfg, w.hub, cfg, "home1");
  t.teardown(() => cog.close());
  const reach: Reach = { cogName: "home1", hubDomain: HUB_DOMAIN, hubHost: "127.0.0.1" };
  const ports = { ssh: p22, http: port80.port, https: p443 };

  // What the provisioner publishes when `web1` (created with --https terminate) starts.
  // Each with a custom domain inside the cog's grants (so no DNS proof; test/vm-domains.test.ts has one outside).
  const blog = `blog.home1.${HUB_DOMAIN}`;
  const shop = `shop.home1.${HUB_DOMAIN}`;
  cog.client.publish(routeOwner("web1"), vmRoutes("web1", ports, reach, "terminate", [blog]));
  cog.client.publish(routeOwner("web2"), vmRoutes("web2", ports, reach, "passthrough", [shop]));
  const web1 = `web1.home1.${HUB_DOMAIN}`;
  const web2 = `web2.home1.${HUB_DOMAIN}`;
  const blogRoutes = domainRouteNames("web1", blog);
  const shopRoutes = domainRouteNames("web2", shop);
  t.match(blogRoutes.https, /^vm-web1-https-[0-9a-f]{8}$/, "a domain's routes are named by a hash of it");
  await waitFor("the routes accepted", () => ["vm-web1-https", "vm-web1-https.http", "vm-web2-https", "vm-web2-http",
    blogRoutes.https, `${blogRoutes.https}.http`, shopRoutes.https, shopRoutes.http]
    .every((n) => cog.client.status(n).state === "accepted"));
  // (The SSH routes are refused here: this hub has no TCP port pool. provisioner-hub.test.ts covers them.)
  t.same(cog.client.routes().map((r) => [r.name, r.kind, r.hostname ?? "-", r.terminate ? "terminate" : "-"]).sort(), [
    ["vm-web1-https", "tls", web1, "terminate"], [blogRoutes.https, "tls", blog, "terminate"], ["vm-web1-ssh", "tcp", "-", "-"],
    ["vm-web2-http", "http", web2, "-"], [shopRoutes.http, "http", shop, "-"], ["vm-web2-https", "tls", web2, "-"], [shopRoutes.https, "tls", shop, "-"], ["vm-web2-ssh", "tcp", "-", "-"],
  ].sort(), "terminate publishes one tls: terminate route per name (its http side is the cog's own), passthrough the tls and http routes per name");
  t.equal(w.hub.router.lookupHost("tls", web1)?.route, "vm-web1-https");
  t.equal(w.hub.router.lookupHost("http", web1)?.route, "vm-web1-https.http", "http:// of a terminated VM goes to the cog's http side");
  t.equal(w.hub.router.lookupHost("http", web2)?.route, "vm-web2-http");

  const cert = await waitIssued(cog, web1);
  t.same(cert.names, [web1]);
  t.equal(cert.challenge, "http-01");
  t.equal(row(cog, web2), undefined, "no certificate for a passthrough VM: the VM holds its own");

  const tlsPort = w.hub.ports.tls!;
  const httpPort = w.hub.ports.http!;
  const a = await curl(["--cacert", w.rootFile, "--resolve", `${web1}:${tlsPort}:127.0.0.1`, `https://${web1}:${tlsPort}/index.html`]);
  t.equal(a.code, 0, a.stderr);
  t.equal(a.stdout, `vm-port-80 ${web1}:${tlsPort} /index.html\n`, "HTTPS through the hub, terminated on the cog, plain HTTP to the VM's port 80");
  const blogCert = await waitIssued(cog, blog);
  t.same(blogCert.names, [blog], "the custom domain gets its own certificate");
  const d = await curl(["--cacert", w.rootFile, "--resolve", `${blog}:${tlsPort}:127.0.0.1`, `https://${blog}:${tlsPort}/x`]);
  t.equal(d.code, 0, d.stderr);
  t.equal(d.stdout, `vm-port-80 ${blog}:${tlsPort} /x\n`, "the custom domain is terminated too, to the same port 80");
  const b = await curl(["--resolve", `${web1}:${httpPort}:127.0.0.1`, `http://${web1}:${httpPort}/plain`]);
  t.equal(b.stdout, `vm-port-80 ${web1}:${httpPort} /plain\n`, "http:// reaches port 80 too");

  // Passthrough: TLS goes untouched to the VM's 443 (which here just closes).
  const before = reached443;
  const c = await curl(["--cacert", w.rootFile, "--resolve", `${web2}:${tlsPort}:127.0.0.1`, `https://${web2}:${tlsPort}/`]);
  t.not(c.code, 0, "the stand-in 443 speaks no TLS");
  t.ok(reached443 > before, "the TLS bytes went to the VM's 443, not to the cog's terminator");
  const beforeShop = reached443;
  t.not((await curl(["--cacert", w.rootFile, "--resolve", `${shop}:${tlsPort}:127.0.0.1`, `https://${shop}:${tlsPort}/`])).code, 0);
  t.ok(reached443 > beforeShop, "a passthrough VM's custom domain goes to its 443 as well");
  t.equal(row(cog, shop), undefined, "and gets no certificate on the cog");

  // What `capsul vm show` reports for each.
  const rec = (name: string, https: "terminate" | "passthrough"): VmRecord => ({
    name, uuid: "u", image: "i", size: "s", sshKeys: [], desired: "running", state: "running", message: null, accel: null,
    ports, ioLimits: null, https, domains: [], createdAt: "", updatedAt: "",
  });
  const shown1 = vmReach(rec("web1", "terminate"), "root", reach, cog.client) as { https: string; routes: { http: { state: string } } };
  t.equal(shown1.https, "terminate");
  t.equal(shown1.routes.http.state, "accepted", "the http status of a terminated VM is its http side's");
  t.equal((vmReach(rec("web2", "passthrough"), "root", reach, cog.client) as { https: string }).https, "passthrough");
});
