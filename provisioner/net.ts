import net from "node:net";

/** Is 127.0.0.1:port free to bind right now? */
export function portFree(port: number): Promise<boolean> {
  return new Promise((resolve) => {
    const srv = net.createServer();
    srv.once("error", () => resolve(false));
    srv.listen({ host: "127.0.0.1", port, exclusive: true }, () => srv.close(() => resolve(true)));
  });
}

/**
 * `count` distinct free loopback ports, none in `avoid`. The kernel picks them
 * (bind to port 0); they are free when we close, and QEMU binds them a moment
 * later. Another process may win that race: the caller retries the launch with
 * fresh ports when QEMU reports the forward could not be set up.
 */
export async function pickFreePorts(count: number, avoid: Set<number>): Promise<number[]> {
  const servers: net.Server[] = [];
  const ports: number[] = [];
  try {
    // Holding all servers open until the end makes the ports distinct.
    for (let tries = 0; ports.length < count && tries < count * 20; tries++) {
      const srv = net.createServer();
      await new Promise<void>((resolve, reject) => {
        srv.once("error", reject);
        srv.listen({ host: "127.0.0.1", port: 0, exclusive: true }, () => resolve());
      });
      servers.push(srv);
      const p = (srv.address() as net.AddressInfo).port;
      if (!avoid.has(p)) ports.push(p);
    }
  } finally {
    await Promise.all(servers.map((s) => new Promise((r) => s.close(r))));
  }
  if (ports.length < count) throw new Error("could not find free loopback ports");
  return ports;
}

/**
 * Reads the SSH identification string ("SSH-2.0-…", RFC 4253 §4.2) from
 * 127.0.0.1:port. Through QEMU's user-mode hostfwd the TCP connect always
 * succeeds; only a banner proves that sshd inside the guest is up.
 */
export function sshBanner(port: number, timeoutMs: number): Promise<boolean> {
  return new Promise((resolve) => {
    const sock = net.createConnection({ host: "127.0.0.1", port });
    let got = "";
    const done = (ok: boolean): void => { clearTimeout(timer); sock.destroy(); resolve(ok); };
    const timer = setTimeout(() => done(false), timeoutMs);
    sock.on("data", (d) => {
      got += d.toString("latin1");
      if (got.includes("\n") || got.length >= 4) done(got.startsWith("SSH-"));
    });
    sock.on("error", () => done(false));
    sock.on("close", () => done(false));
  });
}
