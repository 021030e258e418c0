/**
 * The hub's listening sockets, each of which a reload can move to another address
 * without touching the connections it already accepted: the TLS and HTTP listeners,
 * the tunnel listener, and the raw TCP port listeners opened as cogs are assigned ports.
 *
 * Moving one is two steps, so that a reload either applies whole or not at all:
 * `prepare()` binds the new address next to the old one (the fallible part), then
 * `commit()` stops the old one accepting, or `undo()` drops the new one. Closing a
 * listening socket never ends the connections it accepted: they live on until they
 * finish, tracked by whoever serves them (gateway/visitors.ts, gateway/tunnels.ts).
 */
import net from "node:net";
import type { HostPort } from "../config/types.js";
import { formatHostPort } from "../lib/hostname.js";
import { RuntimeError } from "../lib/errors.js";
import type { Logger } from "../lib/log.js";

/**
 * Listen backlog of every public listener: hundreds of visitors (or cogs redialing after
 * a hub restart) arriving within one accept round, and Node's default of 511 drops SYNs past it.
 */
export const LISTEN_BACKLOG = 1024;

/** A backlog, or where to read it at each bind (hub.limits.listen_backlog, which a reload may change). */
export type Backlog = number | (() => number);
const backlogOf = (b: Backlog): number => (typeof b === "function" ? b() : b);

export function listenOn(server: net.Server, hp: HostPort, backlog = LISTEN_BACKLOG): Promise<number> {
  return new Promise((resolve, reject) => {
    const onErr = (err: Error): void => reject(err);
    server.once("error", onErr);
    server.listen({ host: hp.host, port: hp.port, backlog }, () => {
      server.off("error", onErr);
      resolve((server.address() as net.AddressInfo).port);
    });
  });
}

/** Resolves once the server is closed and every connection it accepted has ended. */
export function closeServer(server: net.Server): Promise<void> {
  return new Promise((resolve) => server.close(() => resolve()));
}

/** A listener move made by prepare(): commit() it, or undo() it. */
export interface ListenerChange {
  commit(): void;
  undo(): Promise<void>;
}

/** One listening socket at a configurable address (or none), e.g. hub.listen.tls. */
export class Listener {
  private server: net.Server | null = null;
  private addr: HostPort | null = null;
  private boundPort: number | null = null;

  /** `key`: the capsul.yaml key of its address, named in errors; `make`: a fresh server with its connection handler. */
  constructor(readonly key: string, private readonly make: () => net.Server, private readonly log: Logger, private readonly backlog: Backlog = LISTEN_BACKLOG) {}

  /** The bound port (the kernel's choice for port 0), or null while off. */
  get port(): number | null { return this.boundPort; }
  get address(): HostPort | null { return this.addr; }
  get accepting(): boolean { return this.server !== null; }

  private async bind(hp: HostPort): Promise<{ server: net.Server; port: number }> {
    const server = this.make();
    const port = await listenOn(server, hp, backlogOf(this.backlog));
    server.on("error", (err) => this.log.error("listener error", { key: this.key, error: err.message }));
    return { server, port };
  }

  private bindError(hp: HostPort, err: unknown): RuntimeError {
    const why = (err as NodeJS.ErrnoException).code ?? (err as Error).message;
    return new RuntimeError(`${this.key}: cannot listen on ${formatHostPort(hp)}: ${why}`, { cause: err });
  }

  /** The first bind, at start. */
  async open(hp: HostPort | null): Promise<void> {
    if (hp === null) return;
    try {
      const { server, port } = await this.bind(hp);
      this.server = server;
      this.addr = hp;
      this.boundPort = port;
    } catch (err) {
      throw this.bindError(hp, err);
    }
  }

  /**
   * Binds `hp` while the current socket still accepts. The same port on another host
   * (127.0.0.1:443 to 0.0.0.0:443) cannot be bound twice, so then the current socket stops
   * accepting first and is bound again by undo(). Throws a RuntimeError naming the key.
   */
  async prepare(hp: HostPort | null): Promise<ListenerChange> {
    const old = this.server;
    const oldAddr = this.addr;
    if (hp === null) {
      return { commit: () => { old?.close(); this.set(null, null, null); }, undo: async () => {} };
    }
    let fresh: { server: net.Server; port: number };
    let closedOld = false;
    try {
      fresh = await this.bind(hp);
    } catch (err) {
      const samePort = old !== null && oldAddr !== null && hp.port !== 0 && oldAddr.port === hp.port;
      if ((err as NodeJS.ErrnoException).code !== "EADDRINUSE" || !samePort) throw this.bindError(hp, err);
      old.close();
      closedOld = true;
      try {
        fresh = await this.bind(hp);
      } catch (err2) {
        await this.rebindOld(oldAddr);
        throw this.bindError(hp, err2);
      }
    }
    return {
      commit: () => {
        if (!closedOld) old?.close();
        this.set(fresh.server, hp, fresh.port);
      },
      undo: async () => {
        fresh.server.close();
        if (closedOld && oldAddr !== null) await this.rebindOld(oldAddr);
      },
    };
  }

  private async rebindOld(addr: HostPort): Promise<void> {
    try {
      const { server, port } = await this.bind(addr);
      this.set(server, addr, port);
    } catch (err) {
      // Someone took the port in the moment it was free: the old address is lost until a reload or restart.
      this.set(null, null, null);
      this.log.error("a listener could not return to its old address", { key: this.key, address: formatHostPort(addr), error: (err as Error).message });
    }
  }

  private set(server: net.Server | null, addr: HostPort | null, port: number | null): void {
    this.server = server;
    this.addr = addr;
    this.boundPort = port;
  }

  /** Stops accepting (drain); connections already accepted carry on. */
  stop(): void {
    this.server?.close();
    this.server = null;
  }
}

/** Raw TCP listeners opened on demand as cogs are assigned ports, all on hub.listen.tcp_host. */
export class TcpListeners {
  private readonly listeners = new Map<number, Listener>();
  private stopped = false;
  /**
   * While held (a hub worker warming up, gateway/warmup.ts), the ports routes ask for: they
   * open at release(), so no visitor reaches this process before its cogs are back.
   */
  private held: Set<number> | null = null;

  constructor(private host: string, private readonly onConn: (s: net.Socket, port: number) => void, private readonly log: Logger, private readonly backlog: Backlog = LISTEN_BACKLOG) {}

  private listener(port: number): Listener {
    return new Listener("hub.listen.tcp_host", () => net.createServer({ allowHalfOpen: true, pauseOnConnect: true }, (s) => this.onConn(s, port)), this.log, this.backlog);
  }

  /** Ports listening now. */
  get ports(): number[] {
    return [...this.listeners.keys()];
  }

  async open(port: number): Promise<void> {
    if (this.listeners.has(port)) return;
    // Draining: a route applied now must not open a port nobody will close.
    if (this.stopped) throw new RuntimeError("the hub is shutting down");
    if (this.held) { this.held.add(port); return; }
    const l = this.listener(port);
    try {
      await l.open({ host: this.host, port });
    } catch (err) {
      throw (err as Error).cause ?? err; // the bind error itself: routes.ts tells the cog its code
    }
    // A second open() of the same port may have finished while we waited.
    if (this.listeners.has(port)) { l.stop(); return; }
    this.listeners.set(port, l);
    this.log.info("tcp port open", { port });
  }

  close(port: number): void {
    if (this.held?.delete(port)) return;
    const l = this.listeners.get(port);
    if (!l) return;
    this.listeners.delete(port);
    l.stop();
    this.log.info("tcp port closed", { port });
  }

  /** Moves every open port to `host` (a reload of hub.listen.tcp_host): all or none. */
  async prepareHost(host: string): Promise<ListenerChange> {
    const done: ListenerChange[] = [];
    try {
      for (const [port, l] of this.listeners) done.push(await l.prepare({ host, port }));
    } catch (err) {
      for (const c of done.reverse()) await c.undo();
      throw err;
    }
    return {
      commit: () => {
        this.host = host;
        for (const c of done) c.commit();
      },
      undo: async () => { for (const c of done.reverse()) await c.undo(); },
    };
  }

  /** From now until release(), open() only notes the port. */
  hold(): void {
    this.held ??= new Set();
  }

  /**
   * Opens every port noted while held. A port another worker already listens on is shared
   * (cluster), so a failure here is rare (the port taken meanwhile by another program): it
   * is logged, and the route stays without a listener on this worker until it is applied again.
   */
  async release(): Promise<void> {
    const ports = this.held;
    this.held = null;
    for (const port of ports ?? []) {
      try {
        await this.open(port);
      } catch (err) {
        this.log.error("tcp port could not open after the warm-up", { port, error: (err as Error).message });
      }
    }
  }

  /** Stops accepting on every port (drain); no port opens any more. */
  stopAll(): void {
    this.held = null;
    this.stopped = true;
    for (const l of this.listeners.values()) l.stop();
    this.listeners.clear();
  }
}
