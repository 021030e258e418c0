import { createHash } from "node:crypto";
import type { PublishedRoute, RouteSink } from "../tunnel-client/routesink.js";
import type { HttpsMode, VmPorts, VmRecord } from "./db.js";
import { type CogDomains, domainState, proofFor } from "./vmdomains.js";

/** Where this cog's VMs are reached from the internet. */
export interface Reach { cogName: string; hubDomain: string; hubHost: string }

export const routeOwner = (vm: string): string => `vm:${vm}`;
export const vmHostname = (vm: string, r: Reach): string => `${vm}.${r.cogName}.${r.hubDomain}`.toLowerCase();
/** The cog announces a terminated route's plain-HTTP side under this name (tunnel-client/terminate.ts HTTP_SIDE_SUFFIX). */
const httpSideOf = (route: string): string => `${route}.http`;

/**
 * Route names of one of a VM's custom domains: `vm-NAME-https-H` and `vm-NAME-http-H`,
 * H the first 8 hex digits of the domain's SHA-256. Stable while the domain stays (a
 * removal never renames another domain's routes), at most 57 characters (62 with the
 * `.http` side; the wire allows 64), and never another VM's name: those end in
 * https/http/ssh, never in 8 hex digits.
 */
export function domainRouteNames(vm: string, domain: string): { https: string; http: string } {
  const h = createHash("sha256").update(domain).digest("hex").slice(0, 8);
  return { https: `vm-${vm}-https-${h}`, http: `vm-${vm}-http-${h}` };
}

/** One hostname's web routes: TLS (and HTTP) by hostname, as the VM's https mode says. */
function webRoutes(names: { https: string; http: string }, hostname: string, ports: VmPorts, https: HttpsMode): PublishedRoute[] {
  if (https === "terminate") {
    return [{
      name: names.https, kind: "tls", hostname, target: { host: "127.0.0.1", port: ports.http }, proxyProtocol: "none",
      terminate: { challenge: "http-01", redirectHttp: false, hstsMaxAgeSec: 0 },
    }];
  }
  return [
    { name: names.https, kind: "tls", hostname, target: { host: "127.0.0.1", port: ports.https }, proxyProtocol: "none" },
    { name: names.http, kind: "http", hostname, target: { host: "127.0.0.1", port: ports.http }, proxyProtocol: "none" },
  ];
}

/**
 * The routes of a VM: TLS and HTTP by hostname, SSH on a hub-assigned TCP port.
 * - passthrough: TLS goes to the VM's 443 untouched (it holds its own certificate; its
 *   own ACME client works through the hub), HTTP to its 80.
 * - terminate: one `tls: terminate` route to the VM's 80. The cog gets the certificate
 *   (HTTP-01 through the hub's port 80), serves TLS, and sends plain HTTP to the VM;
 *   the route's plain-HTTP side (the cog announces it itself) serves http:// to the
 *   same port 80, so no separate http route is published.
 * Each custom domain (`capsul vm domains`) gets the same web routes as the default
 * hostname, under domainRouteNames; a name outside the cog's grants is claimed at the
 * hub by announcing it (gateway/domains.ts), and routed once its DNS proof holds.
 */
export function vmRoutes(vm: string, ports: VmPorts, r: Reach, https: HttpsMode = "passthrough", domains: readonly string[] = []): PublishedRoute[] {
  const ssh: PublishedRoute = { name: `vm-${vm}-ssh`, kind: "tcp", target: { host: "127.0.0.1", port: ports.ssh }, proxyProtocol: "none" };
  return [
    ...webRoutes({ https: `vm-${vm}-https`, http: `vm-${vm}-http` }, vmHostname(vm, r), ports, https),
    ...domains.flatMap((d) => webRoutes(domainRouteNames(vm, d), d, ports, https)),
    ssh,
  ];
}

/** The state of each of a VM's custom domains (null `cog`: a provisioner without a cog, no proofs to print). */
export function vmDomainsView(v: VmRecord, r: Reach, sink: RouteSink, published: boolean, cog: CogDomains | null): Record<string, unknown>[] {
  const report = cog?.report() ?? [];
  return v.domains.map((d) => {
    const names = domainRouteNames(v.name, d);
    const st = domainState(d, published ? sink.status(names.https) : null, report);
    return { hostname: d, url: `https://${d}/`, state: st.state, reason: st.reason, proof: proofFor(d, r, cog) };
  });
}

/** The public face of a VM, as the API returns it and `capsul vm show` prints it. */
export function vmReach(v: VmRecord, sshUser: string, r: Reach, sink: RouteSink, extra: { published?: boolean; cog?: CogDomains | null } = {}): Record<string, unknown> {
  const hostname = vmHostname(v.name, r);
  const ssh = sink.status(`vm-${v.name}-ssh`);
  const hubPort = ssh.state === "accepted" ? ssh.port ?? null : null;
  return {
    hostname,
    url: `https://${hostname}/`,
    https: v.https,
    domains: vmDomainsView(v, r, sink, extra.published ?? true, extra.cog ?? null),
    ssh_user: sshUser,
    ssh_port: hubPort,
    ssh_command: hubPort ? `ssh -p ${hubPort} ${sshUser}@${r.hubHost}` : null,
    local: v.ports
      ? {
        ssh: `127.0.0.1:${v.ports.ssh}`, http: `127.0.0.1:${v.ports.http}`, https: `127.0.0.1:${v.ports.https}`,
        ssh_command: `ssh -p ${v.ports.ssh} ${sshUser}@127.0.0.1`,
      }
      : null,
    routes: {
      https: sink.status(`vm-${v.name}-https`),
      http: sink.status(v.https === "terminate" ? httpSideOf(`vm-${v.name}-https`) : `vm-${v.name}-http`),
      ssh,
    },
  };
}
