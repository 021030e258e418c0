import type { PublishedRoute, RouteSink } from "../tunnel-client/routesink.js";
import type { HttpsMode, VmPorts, VmRecord } from "./db.js";

/** Where this cog's VMs are reached from the internet. */
export interface Reach { cogName: string; hubDomain: string; hubHost: string }

export const routeOwner = (vm: string): string => `vm:${vm}`;
export const vmHostname = (vm: string, r: Reach): string => `${vm}.${r.cogName}.${r.hubDomain}`.toLowerCase();
/** The cog announces a terminated route's plain-HTTP side under this name (tunnel-client/terminate.ts HTTP_SIDE_SUFFIX). */
const httpSideOf = (route: string): string => `${route}.http`;

/**
 * The routes of a VM: TLS and HTTP by hostname, SSH on a hub-assigned TCP port.
 * - passthrough: TLS goes to the VM's 443 untouched (it holds its own certificate; its
 *   own ACME client works through the hub), HTTP to its 80.
 * - terminate: one `tls: terminate` route to the VM's 80. The cog gets the certificate
 *   (HTTP-01 through the hub's port 80), serves TLS, and sends plain HTTP to the VM;
 *   the route's plain-HTTP side (the cog announces it itself) serves http:// to the
 *   same port 80, so no separate http route is published.
 */
export function vmRoutes(vm: string, ports: VmPorts, r: Reach, https: HttpsMode = "passthrough"): PublishedRoute[] {
  const hostname = vmHostname(vm, r);
  const ssh: PublishedRoute = { name: `vm-${vm}-ssh`, kind: "tcp", target: { host: "127.0.0.1", port: ports.ssh }, proxyProtocol: "none" };
  if (https === "terminate") {
    return [
      {
        name: `vm-${vm}-https`, kind: "tls", hostname, target: { host: "127.0.0.1", port: ports.http }, proxyProtocol: "none",
        terminate: { challenge: "http-01", redirectHttp: false, hstsMaxAgeSec: 0 },
      },
      ssh,
    ];
  }
  return [
    { name: `vm-${vm}-https`, kind: "tls", hostname, target: { host: "127.0.0.1", port: ports.https }, proxyProtocol: "none" },
    { name: `vm-${vm}-http`, kind: "http", hostname, target: { host: "127.0.0.1", port: ports.http }, proxyProtocol: "none" },
    ssh,
  ];
}

/** The public face of a VM, as the API returns it and `capsul vm show` prints it. */
export function vmReach(v: VmRecord, sshUser: string, r: Reach, sink: RouteSink): Record<string, unknown> {
  const hostname = vmHostname(v.name, r);
  const ssh = sink.status(`vm-${v.name}-ssh`);
  const hubPort = ssh.state === "accepted" ? ssh.port ?? null : null;
  return {
    hostname,
    url: `https://${hostname}/`,
    https: v.https,
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
