/**
 * This hub process as an endpoint in the shared state store (issue 12): it
 * registers (name, the address cogs dial, the TLS server name they send),
 * stamps its row every heartbeat_interval, reaps endpoints whose stamp is
 * older than hub.endpoint.timeout (with their cog_tunnels rows, so `capsul hub
 * cogs` stops showing tunnels to a dead hub), and reads the live list. When
 * that list changes it emits "change"; gateway/tunnels.ts pushes it to every
 * connected cog, which dials the new ones.
 *
 * Every hub reaps: whichever notices first. A reap only deletes rows whose
 * stamp is still old in the same statement, so a hub that came back in
 * between keeps its row.
 */
import { EventEmitter } from "node:events";
import type { HubEndpointConfig } from "../config/types.js";
import { formatHostPort } from "../lib/hostname.js";
import { RuntimeError } from "../lib/errors.js";
import type { Logger } from "../lib/log.js";
import type { WireEndpoint } from "../protocol/control.js";
import type { HubStore } from "./store/types.js";

export class EndpointRegistry extends EventEmitter {
  /** The live endpoints as last read, this one included; what a welcome carries. */
  list: WireEndpoint[] = [];
  private key = "";
  private timer: NodeJS.Timeout | null = null;
  private ticking: Promise<void> | null = null;
  private startedAt = 0;
  private closed = false;
  /** This endpoint's dial address, once the tunnel listener's port is known. */
  address = "";

  /** `cfgOf`: the live hub.endpoint (a reload replaces it; see reconfigure()). */
  constructor(private readonly cfgOf: () => HubEndpointConfig, private readonly store: HubStore, private readonly log: Logger) {
    super();
    this.cfg = cfgOf();
  }

  /** The configuration registered (the live one may be newer until reconfigure()). */
  private cfg: HubEndpointConfig;

  get name(): string { return this.cfg.name; }

  /**
   * After a reload: when the name, address or server name changed, the old row goes and the
   * new one is registered (the others and the cogs see the change at the next heartbeat);
   * heartbeat_interval and timeout apply from the next beat. Never throws: a reload is past
   * the point where it can fail, so a store error is logged and the next beat retries.
   */
  async reconfigure(boundPort: number): Promise<{ renamed: boolean }> {
    const next = this.cfgOf();
    const adv = next.advertise;
    const address = formatHostPort({ host: adv.host, port: adv.port === 0 ? boundPort : adv.port });
    const old = this.cfg;
    this.cfg = next;
    if (this.closed || (old.name === next.name && address === this.address && old.serverName === next.serverName)) return { renamed: false };
    if (this.timer) clearTimeout(this.timer);
    this.timer = null;
    await this.ticking;
    try {
      if (old.name !== next.name) await this.store.removeEndpoint(old.name);
      await this.start(boundPort);
    } catch (err) {
      this.log.warn("could not register the endpoint after a reload; the next heartbeat retries", { endpoint: next.name, error: (err as Error).message });
      this.address = address;
      this.schedule();
    }
    return { renamed: old.name !== next.name };
  }

  /**
   * Registers this endpoint; `boundPort` replaces an advertised port 0. Refuses to
   * take over the name of another live hub (a different address stamped within the
   * timeout): two hubs under one name would each see the other's cogs as their own.
   */
  async start(boundPort: number): Promise<void> {
    const adv = this.cfg.advertise;
    this.address = formatHostPort({ host: adv.host, port: adv.port === 0 ? boundPort : adv.port });
    const now = Date.now();
    const other = await this.store.getEndpoint(this.cfg.name);
    const ours = other !== undefined && this.startedAt !== 0 && other.startedAt === this.startedAt; // a reload moving our own row
    if (other && !ours && other.heartbeatAt >= now - this.cfg.timeoutMs && (other.tunnelAddress !== this.address || other.serverName !== this.cfg.serverName)) {
      throw new RuntimeError(`hub.endpoint.name ${JSON.stringify(this.cfg.name)} is used by a live hub at ${other.tunnelAddress} (stamped ${now - other.heartbeatAt} ms ago); give each hub its own name`);
    }
    // Our own earlier life (a restart, a kill -9): its tunnels are gone, its rows with them.
    await this.store.removeEndpoint(this.cfg.name);
    this.startedAt = now;
    await this.store.registerEndpoint(this.cfg.name, this.address, this.cfg.serverName, this.startedAt, now);
    await this.refresh(now);
    this.log.info("endpoint registered", { endpoint: this.cfg.name, address: this.address, serverName: this.cfg.serverName, live: this.list.length });
    this.schedule();
  }

  private schedule(): void {
    if (this.closed || this.timer) return;
    this.timer = setTimeout(() => {
      this.timer = null;
      this.ticking = this.tick().finally(() => { this.ticking = null; this.schedule(); });
    }, this.cfg.heartbeatIntervalMs);
    this.timer.unref();
  }

  /** One heartbeat: stamp, reap, read. A store error is logged and the next beat tries again. */
  private async tick(): Promise<void> {
    const now = Date.now();
    try {
      if (!(await this.store.heartbeatEndpoint(this.cfg.name, this.startedAt, now))) {
        // Reaped while we were stalled past the timeout, or another process took the name.
        this.log.warn("endpoint row was gone or taken; registering again", { endpoint: this.cfg.name });
        this.startedAt = now;
        await this.store.registerEndpoint(this.cfg.name, this.address, this.cfg.serverName, this.startedAt, now);
      }
      const reaped = await this.store.reapEndpoints(now - this.cfg.timeoutMs);
      for (const name of reaped) this.log.info("endpoint gone (no heartbeat)", { endpoint: name, timeoutMs: this.cfg.timeoutMs });
      if (this.closed) return;
      await this.refresh(now);
    } catch (err) {
      this.log.warn("endpoint heartbeat failed", { endpoint: this.cfg.name, error: (err as Error).message });
    }
  }

  private async refresh(now: number): Promise<void> {
    const rows = await this.store.liveEndpoints(now - this.cfg.timeoutMs);
    const list: WireEndpoint[] = rows.map((r) => ({ name: r.name, address: r.tunnelAddress, serverName: r.serverName }));
    // Whatever the store says, this process is live: a welcome must name it.
    if (!list.some((e) => e.name === this.cfg.name)) list.push({ name: this.cfg.name, address: this.address, serverName: this.cfg.serverName });
    const key = JSON.stringify(list);
    if (key === this.key) return;
    const first = this.key === "";
    this.key = key;
    this.list = list;
    if (!first) {
      this.log.info("endpoints changed", { endpoints: list.map((e) => e.name).join(",") });
      this.emit("change", list);
    }
  }

  /** Stops the heartbeat and removes this endpoint (and its tunnel rows): the others see it gone at their next beat. */
  async close(): Promise<void> {
    this.closed = true;
    if (this.timer) clearTimeout(this.timer);
    await this.ticking;
    if (this.startedAt === 0) return;
    try {
      await this.store.removeEndpoint(this.cfg.name);
    } catch (err) {
      this.log.warn("could not remove this endpoint from the store", { endpoint: this.cfg.name, error: (err as Error).message });
    }
  }
}
