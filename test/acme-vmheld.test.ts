/**
 * VM-held certificates: the VM runs its own ACME client (acme-client here,
 * standing in for certbot or lego inside a capsul) and gets a certificate
 * through the hub by HTTP-01 (port 80 by Host) and by TLS-ALPN-01 (SNI
 * passthrough), then serves it through the hub. Neither the hub nor the cog may
 * intercept those challenges for a route that does not say `tls: terminate`,
 * even while the cog has challenges of its own open for another name.
 */
import t from "tap";
import acme from "acme-client";
import http from "node:http";
import https from "node:https";
import path from "node:path";
import tls from "node:tls";
import { loadOrCreateHubPki } from "../certs/pki.js";
import { closeServer, cogConfig, enrolledCog, HUB_DOMAIN, listen, tmpDir } from "./helpers/cluster.js";
import { acmeKeys, acmeWorld } from "./helpers/acme.js";
import { curl, waitFor } from "./helpers/procs.js";

/** The VM's plain-HTTP server: its own ACME tokens, and a page for everything else. Records every path asked. */
async function vmHttp(): Promise<{ port: number; tokens: Map<string, string>; seen: string[]; close(): Promise<void> }> {
  const tokens = new Map<string, string>();
  const seen: string[] = [];
  const server = http.createServer((req, res) => {
    seen.push(req.url ?? "");
    const m = /^\/\.well-known\/acme-challenge\/(.+)$/.exec(req.url ?? "");
    if (m) {
      const answer = tokens.get(m[1]!);
      res.writeHead(answer === undefined ? 404 : 200, { "Content-Type": "text/plain" });
      res.end(answer ?? "vm: no such token\n");
      return;
    }
    res.end(`vm-http ${req.url}\n`);
  });
  const port = await listen(server);
  return { port, tokens, seen, close: () => closeServer(server) };
}

/** The VM's TLS server: ALPN acme-tls/1 or http/1.1, whatever certificate the VM's ACME client put in. Counts challenge handshakes. */
async function vmHttps(dir: string, name: string): Promise<{ port: number; server: https.Server; alpnHandshakes: () => number; close(): Promise<void> }> {
  const placeholder = await loadOrCreateHubPki(path.join(dir, `vm-${name}`), [name]);
  let alpn = 0;
  // Server order: a validator offering only acme-tls/1 gets it, curl (h2, http/1.1) gets http/1.1.
  const server = https.createServer({ key: placeholder.hubKeyPem, cert: placeholder.hubCertPem, ALPNProtocols: ["acme-tls/1", "http/1.1"] }, (req, res) => {
    res.end(`vm-https ${req.headers.host} ${req.url}\n`);
  });
  server.on("secureConnection", (s: tls.TLSSocket) => {
    if (s.alpnProtocol === "acme-tls/1") { alpn++; s.end(); }
  });
  const port = await listen(server);
  return { port, server, alpnHandshakes: () => alpn, close: () => closeServer(server) };
}

t.test("a VM's own ACME client gets certificates through the hub by HTTP-01 and TLS-ALPN-01, and serves them; nothing intercepts", async (t) => {
  const dir = tmpDir("capsul-acme-vm-");
  const w = await acmeWorld(t, dir);
  const vm1 = `vm1.home1.${HUB_DOMAIN}`;   // HTTP-01
  const vm2 = `vm2.home1.${HUB_DOMAIN}`;   // TLS-ALPN-01
  const term = `term.home1.${HUB_DOMAIN}`; // the cog's own, terminated
  const h1 = await vmHttp();
  const s1 = await vmHttps(dir, vm1);
  const s2 = await vmHttps(dir, vm2);
  t.teardown(async () => { await h1.close(); await s1.close(); await s2.close(); });

  const cfg = cogConfig(dir, "home1", w.hub.ports.tunnel, [
    { name: "vm1-http", kind: "http", hostname: vm1, target: `127.0.0.1:${h1.port}` },
    { name: "vm1-https", kind: "tls", hostname: vm1, target: `127.0.0.1:${s1.port}` },
    { name: "vm2-https", kind: "tls", hostname: vm2, target: `127.0.0.1:${s2.port}` },
    // The cog's certificate is for another name, by a route that does terminate; its order never
    // completes here (the CA is unreachable), but the cog's challenge machinery is live.
    { name: "term", kind: "tls", hostname: term, target: `127.0.0.1:${h1.port}`, tls: "terminate" },
  ], {}, acmeKeys("https://127.0.0.1:1/dir", w.pebble.ca.caFile, { retry_min_delay: "1h", retry_max_delay: "2h" }));
  const cog = await enrolledCog(w.hubCfg, w.hub, cfg, "home1");
  t.teardown(() => cog.close());

  // The VM's ACME client: plain acme-client, its own account, trusting pebble's HTTPS.
  acme.axios.defaults.httpsAgent = new https.Agent({ ca: w.pebble.ca.caPem });
  t.teardown(() => { acme.axios.defaults.httpsAgent = undefined; });
  const vmClient = new acme.Client({ directoryUrl: w.pebble.directoryUrl, accountKey: await acme.crypto.createPrivateEcdsaKey(), backoffMin: 100, backoffMax: 1000 });
  const order = async (name: string, type: "http-01" | "tls-alpn-01", server: https.Server): Promise<void> => {
    const [key, csr] = await acme.crypto.createCsr({ commonName: name, altNames: [name] }, await acme.crypto.createPrivateEcdsaKey());
    const chain = await vmClient.auto({
      csr, termsOfServiceAgreed: true, skipChallengeVerification: true, challengePriority: [type],
      challengeCreateFn: async (authz, challenge, keyAuthorization) => {
        if (challenge.type === "http-01") h1.tokens.set(challenge.token, keyAuthorization);
        else {
          const [k, c] = await acme.crypto.createAlpnCertificate(authz, keyAuthorization, await acme.crypto.createPrivateEcdsaKey());
          server.setSecureContext({ key: k, cert: c });
        }
      },
      challengeRemoveFn: async () => {},
    });
    server.setSecureContext({ key, cert: chain });
  };

  await order(vm1, "http-01", s1.server);
  t.ok(h1.seen.some((p) => p.startsWith("/.well-known/acme-challenge/")), "the CA's HTTP-01 request reached the VM's own server");
  await order(vm2, "tls-alpn-01", s2.server);
  t.ok(s2.alpnHandshakes() >= 1, "the CA's acme-tls/1 handshake reached the VM's own TLS server");

  const tlsPort = w.hub.ports.tls!;
  const httpPort = w.hub.ports.http!;
  for (const name of [vm1, vm2]) {
    const r = await curl(["--cacert", w.rootFile, "--resolve", `${name}:${tlsPort}:127.0.0.1`, `https://${name}:${tlsPort}/page`]);
    t.equal(r.code, 0, `curl ${name}: ${r.stderr}`);
    t.equal(r.stdout, `vm-https ${name}:${tlsPort} /page\n`, `${name} serves the certificate its VM obtained, through the hub`);
  }

  // Now the cog has challenges of its own open for `term`: a token and an acme-tls/1 certificate.
  const placeholder = await loadOrCreateHubPki(path.join(dir, "cog-alpn"), [term]);
  cog.acme.challenges.addHttp(term, "cogtoken", "cogtoken.answer-from-the-cog");
  cog.acme.challenges.addAlpn(term, placeholder.hubKeyPem, placeholder.hubCertPem);
  t.teardown(() => { cog.acme.challenges.removeHttp(term, "cogtoken"); cog.acme.challenges.removeAlpn(term); });

  const ask = (name: string) => curl(["--resolve", `${name}:${httpPort}:127.0.0.1`, `http://${name}:${httpPort}/.well-known/acme-challenge/cogtoken`]);
  const onVm = await ask(vm1);
  t.equal(onVm.stdout, "vm: no such token\n", "the same token asked on the VM's name is the VM's business: the cog does not answer it");
  t.ok(h1.seen.includes("/.well-known/acme-challenge/cogtoken"), "the request reached the VM");
  const onTerm = await ask(term);
  t.equal(onTerm.stdout, "cogtoken.answer-from-the-cog", "on the terminated name the cog answers its own token");

  const alpnHandshake = (name: string): Promise<{ alpn: string | false; subject: string }> => new Promise((resolve, reject) => {
    const s = tls.connect({ host: "127.0.0.1", port: tlsPort, servername: name, ALPNProtocols: ["acme-tls/1"], rejectUnauthorized: false }, () => {
      const out = { alpn: s.alpnProtocol ?? false, subject: s.getPeerCertificate().subjectaltname ?? "" };
      s.end();
      resolve(out);
    });
    s.on("error", reject);
  });
  const before = s2.alpnHandshakes();
  const v = await alpnHandshake(vm2);
  t.equal(v.alpn, "acme-tls/1");
  await waitFor("the VM's TLS server to count the handshake", () => s2.alpnHandshakes() === before + 1);
  t.equal(s2.alpnHandshakes(), before + 1, "an acme-tls/1 handshake for the VM's name reaches the VM, with the cog's own open");
  const c = await alpnHandshake(term);
  t.equal(c.alpn, "acme-tls/1", "for the terminated name the cog answers acme-tls/1 itself");
  t.match(c.subject, `DNS:${term}`, "with the cog's challenge certificate");
  // One more for the VM's name: the count moves by exactly one, so the cog's handshake added none.
  await alpnHandshake(vm2);
  await waitFor("the VM's TLS server to count the second handshake", () => s2.alpnHandshakes() >= before + 2);
  t.equal(s2.alpnHandshakes(), before + 2, "and the VM saw nothing of the cog's");

  // The hub answers no ACME token itself: its table (for its own use) stays empty.
  t.equal(w.hub.visitors.acmeChallenges, null, "the hub intercepts nothing (it answers challenges only for its own admin hostname, with hub.admin.tls: acme)");
  const none = await curl(["-o", "/dev/null", "-w", "%{http_code}", "--resolve", `nobody.home1.${HUB_DOMAIN}:${httpPort}:127.0.0.1`,
    `http://nobody.home1.${HUB_DOMAIN}:${httpPort}/.well-known/acme-challenge/cogtoken`]);
  t.equal(none.stdout, "404", "a token asked on a name nobody routes is not answered by anyone");
});
