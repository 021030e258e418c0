/**
 * TLS termination on the cog with real ACME: pebble issues a certificate for a
 * routed hostname by HTTP-01 (validated through the hub's port-80 Host routing)
 * and by TLS-ALPN-01 (through its SNI routing), then real curl, trusting only
 * pebble's root, reaches a plain-HTTP backend over HTTPS through the hub; plain
 * HTTP is redirected when the route asks, HSTS is sent when it asks.
 */
import t from "tap";
import fs from "node:fs";
import path from "node:path";
import { cogConfig, enrolledCog, httpBackend, HUB_DOMAIN, tmpDir } from "./helpers/cluster.js";
import { acmeKeys, acmeWorld, waitIssued } from "./helpers/acme.js";
import { curl } from "./helpers/procs.js";
import { scrape } from "./helpers/adminclient.js";

t.test("HTTP-01 and TLS-ALPN-01 through the hub; HTTPS to a plain-HTTP backend; redirect and HSTS per route", async (t) => {
  const dir = tmpDir("capsul-acme-");
  const w = await acmeWorld(t, dir);
  const backend = await httpBackend("plain");
  t.teardown(() => backend.close());

  const web = `web.home1.${HUB_DOMAIN}`;
  const app = `app.home1.${HUB_DOMAIN}`;
  const target = `127.0.0.1:${backend.port}`;
  const cfg = cogConfig(dir, "home1", w.hub.ports.tunnel, [
    { name: "web", kind: "tls", hostname: web, target, tls: "terminate", challenge: "http-01", redirect_http: true },
    { name: "app", kind: "tls", hostname: app, target, tls: "terminate", challenge: "tls-alpn-01", hsts: true },
  ], {}, acmeKeys(w.pebble.directoryUrl, w.pebble.ca.caFile));
  const cog = await enrolledCog(w.hubCfg, w.hub, cfg, "home1");
  t.teardown(() => cog.close());

  // The http side of each terminated route was announced and accepted.
  t.equal(cog.client.status("web.http").state, "accepted", "web's plain-HTTP side is routed to the cog");
  t.equal(cog.client.status("app.http").state, "accepted", "app's plain-HTTP side is routed to the cog");

  const webRow = await waitIssued(cog, web);
  const appRow = await waitIssued(cog, app);
  t.same(webRow.names, [web], "the certificate is for the routed hostname");
  t.same(appRow.names, [app]);
  t.match(webRow.issuer, /Pebble/, "issued by pebble");
  t.equal(webRow.state, "scheduled");
  t.equal(webRow.challenge, "http-01");
  t.equal(appRow.challenge, "tls-alpn-01");
  t.ok(Date.parse(webRow.renewAt!) > Date.parse(webRow.notBefore!) && Date.parse(webRow.renewAt!) < Date.parse(webRow.notAfter!), "renewal is scheduled inside the lifetime");

  const tlsPort = w.hub.ports.tls!;
  const httpPort = w.hub.ports.http!;
  const resolve = (name: string, port: number) => ["--resolve", `${name}:${port}:127.0.0.1`];

  // HTTPS through the hub, verified against pebble's root only, to the plain backend.
  const a = await curl(["-D", "-", "--cacert", w.rootFile, ...resolve(web, tlsPort), `https://${web}:${tlsPort}/hello`]);
  t.equal(a.code, 0, `curl https ${web}: ${a.stderr}`);
  t.match(a.stdout, new RegExp(`^HTTP/1.1 200`, "m"));
  t.match(a.stdout, `plain ${web}:${tlsPort} /hello`, "the plain-HTTP backend answered over HTTPS");
  t.notMatch(a.stdout, /strict-transport-security/i, "no HSTS where the route did not ask for it");

  const b = await curl(["-D", "-", "--cacert", w.rootFile, ...resolve(app, tlsPort), `https://${app}:${tlsPort}/x?y=1`]);
  t.equal(b.code, 0, `curl https ${app}: ${b.stderr}`);
  t.match(b.stdout, /^strict-transport-security: max-age=31536000\r?$/im, "HSTS on the route that asked for it");
  t.match(b.stdout, `plain ${app}:${tlsPort} /x?y=1`);

  // Plain HTTP: redirected where asked, passed to the target where not.
  const r = await curl(["-D", "-", "-o", "/dev/null", ...resolve(web, httpPort), `http://${web}:${httpPort}/some/path?q=1`]);
  t.equal(r.code, 0, r.stderr);
  t.match(r.stdout, /^HTTP\/1.1 308 /m, "308 to HTTPS");
  t.match(r.stdout, new RegExp(`^Location: https://${web.replace(/\./g, "\\.")}/some/path\\?q=1\\r?$`, "m"));
  t.notMatch(r.stdout, /strict-transport-security/i, "never HSTS over plain HTTP (RFC 6797 §7.2)");
  const p = await curl([...resolve(app, httpPort), `http://${app}:${httpPort}/plain`]);
  t.equal(p.code, 0, p.stderr);
  t.equal(p.stdout, `plain ${app}:${httpPort} /plain\n`, "without redirect_http, plain HTTP reaches the target");

  // The cog's /metrics: both certificates' expiry, and the plaintext connections it spliced to
  // the target per route (the redirect and the challenge answers reach no target).
  const m = await scrape(cog.admin!.port);
  t.equal(m.value("capsul_cog_certificate_expiry_timestamp_seconds", { kind: "acme", name: web }), Math.floor(Date.parse(webRow.notAfter!) / 1000));
  t.equal(m.value("capsul_cog_certificate_expiry_timestamp_seconds", { kind: "acme", name: app }), Math.floor(Date.parse(appRow.notAfter!) / 1000));
  t.equal(m.value("capsul_cog_streams_total", { route: "web" }), 1, "the one HTTPS request to web, spliced after termination");
  t.equal(m.value("capsul_cog_streams_total", { route: "app.http" }), 1, "the one plain request to app's http side");
  t.equal(m.value("capsul_cog_streams_total", { route: "web.http" }), 0, "the redirect reached no target");
  t.ok(m.n("capsul_cog_bytes_total", { route: "web", direction: "to_target" }) > 0, "the request's plaintext bytes");

  // A client that does not trust pebble's root is refused: it is a real chain, not a self-signed stand-in.
  const untrusted = await curl([...resolve(web, tlsPort), `https://${web}:${tlsPort}/`]);
  t.not(untrusted.code, 0, "the system roots do not know pebble");

  // The key lives in the cog's data dir, 0600, and nowhere under the hub's.
  const certFile = path.join(cfg.dataDir, "acme", "certs", `${web}.json`);
  t.equal(fs.statSync(certFile).mode & 0o777, 0o600, "certificate+key file is 0600");
  const keyPem = JSON.parse(fs.readFileSync(certFile, "utf8")).key_pem as string;
  t.match(keyPem, /BEGIN PRIVATE KEY/);
  const accounts = fs.readdirSync(path.join(cfg.dataDir, "acme", "accounts"));
  t.equal(accounts.length, 1, "one account for the one directory");
  t.equal(fs.statSync(path.join(cfg.dataDir, "acme", "accounts", accounts[0]!)).mode & 0o777, 0o600, "account file is 0600");
  const keyBody = keyPem.split("\n")[1]!;
  const hubFiles = fs.readdirSync(w.hubCfg.dataDir, { recursive: true }) as string[];
  for (const f of hubFiles) {
    const full = path.join(w.hubCfg.dataDir, f);
    if (fs.statSync(full).isFile()) t.notOk(fs.readFileSync(full).includes(keyBody), `the hub's ${f} does not hold the key`);
  }
});
