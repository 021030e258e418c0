import type { PublishedRoute, RouteSink } from "../tunnel-client/routesink.js";
import type { VmPorts, VmRecord } from "./db.js";

/** Where this cog's VMs are reached from the internet. */
export interface Reach { cogName: string; hubDomain: string; hubHost: string }

export const routeOwner = (vm: string): string => `vm:${vm}`;
export const vmHostname = (vm: string, r: Reach): string => `${vm}.${r.cogName}.${r.hubDomain}`.toLowerCase();

/** The three routes of a VM: TLS and HTTP by hostname, SSH on a hub-assigned TCP port. */
export function vmRoutes(vm: string, ports: VmPorts, r: Reach): PublishedRoute[] {
  const hostname = vmHostname(vm, r);
  return [
    { name: `vm-${vm}-https`, kind: "tls", hostname, target: { host: "127.0.0.1", port: ports.https }, proxyProtocol: "none" },
    { name: `vm-${vm}-http`, kind: "http", hostname, target: { host: "127.0.0.1", port: ports.http }, proxyProtocol: "none" },
    { name: `vm-${vm}-ssh`, kind: "tcp", target: { host: "127.0.0.1", port: ports.ssh }, proxyProtocol: "none" },
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
      http: sink.status(`vm-${v.name}-http`),
      ssh,
    },
  };
}
