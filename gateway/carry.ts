/**
 * What of a moved VM's hub state follows it (issue 11, README "Moving a
 * capsul"): once the target confirmed the import (`move-done`, passed through
 * gateway/moves.ts), the hub moves to the target what the source's move
 * header named and the source holds:
 *
 * - a TCP route's port assignment (RouteTable.carryPort: the same hub port, if
 *   the target may hold it under its grants and pool limit; otherwise it stays
 *   the source's, which may reuse it or the operator release it);
 * - a DNS-proven claim on a hostname (store.carryDomainProof), with the value
 *   its owner published. The periodic re-check keeps looking for that value
 *   (derived from the source cog's name; the claim remembers whose it is), so
 *   the owner's record keeps proving the name. Why that is sound: the proof is
 *   of control of DNS, and the owner's record still names the owner's choice;
 *   the source consented by moving the VM and naming the name in its header
 *   (the hub reads the source from its certificate, and takes only a claim that
 *   source holds, verified), the target by accepting the VM. Nobody else's
 *   claim or grant is touched: the claim carries its place (created_at) among
 *   other cogs' claims, and a name another cog holds by grant stays refused
 *   (domains.ts decide()). When the record goes, the carried claim is lost as
 *   any other, and the target is asked for its own record from then on.
 *
 * Names the operator granted to the source (hub.cogs, invite --hostname) are
 * the operator's per-cog grants and do not follow; they work on the target
 * only if the target holds them too. A name proven on a parent of it
 * (a claim on `alice.net` covering `blog.alice.net`) stays with the source,
 * since it covers more than this VM.
 *
 * Then the live routes follow on this endpoint: the source's entries on what
 * moved leave the router (it usually has none: the VM was stopped to move),
 * the carried names leave the route set the source announced last, and the
 * target's last route set is applied again, so its route is accepted on the
 * old port and it is told so (a routes-result). Other endpoints (issue 12)
 * learn it from the target, asked to announce its routes again (carry()).
 */
import type { HubConfig } from "../config/types.js";
import type { Logger } from "../lib/log.js";
import { normalizeHostnamePattern } from "../lib/hostname.js";
import { challengeName, describeRecord } from "../protocol/domainproof.js";
import type { CarriedHostname, CarriedPort, MoveCarried } from "../protocol/move.js";
import { proofBase, type DomainProofs } from "./domains.js";
import { grantsFor, patternCovers } from "./grants.js";
import type { RouteTable } from "./routes.js";
import type { HubStore } from "./store/types.js";

/** What the carrier needs of a cog's control channel on this endpoint (gateway/control.ts). */
export interface CarryControl {
  forget(routes: readonly string[], hostnames: readonly string[]): void;
  refresh(): Promise<void>;
  askAnnounce(): void;
}

export class MoveCarrier {
  constructor(
    private readonly cfg: HubConfig,
    private readonly store: HubStore,
    private readonly routes: RouteTable,
    private readonly domains: DomainProofs | null,
    /** The control channel of a cog connected here, or null. */
    private readonly controlOf: (cog: string) => CarryControl | null,
    private readonly log: Logger,
  ) {}

  /** Never rejects: a hub-side failure on one item is reported as that item's `error`. */
  async carry(from: string, to: string, routeNames: readonly string[], hostnames: readonly string[]): Promise<MoveCarried> {
    const ports: CarriedPort[] = [];
    for (const route of routeNames) {
      try {
        ports.push(await this.routes.carryPort(from, to, route));
      } catch (err) {
        this.log.error("a moved VM's port could not be carried", { from, to, route, error: (err as Error).message });
        ports.push({ route, port: null, state: "error", reason: "the hub could not record it (hub-side error, see the hub's log); the port stays with the source" });
      }
    }
    const names: CarriedHostname[] = [];
    for (const hostname of hostnames) {
      try {
        names.push(await this.hostname(from, to, hostname));
      } catch (err) {
        this.log.error("a moved VM's hostname could not be carried", { from, to, hostname, error: (err as Error).message });
        names.push({ hostname, state: "error", reason: "the hub could not record it (hub-side error, see the hub's log)" });
      }
    }
    const movedPorts = ports.filter((p) => p.state === "followed").map((p) => p.port as number);
    const movedNames = names.filter((n) => n.state === "followed").map((n) => n.hostname);
    if (movedPorts.length || movedNames.length) {
      try {
        await this.routes.releaseCarried(from, movedPorts, movedNames);
      } catch (err) {
        this.log.error("could not release a moved VM's routes on its old cog", { from, error: (err as Error).message });
      }
      this.controlOf(from)?.forget(ports.filter((p) => p.state === "followed").map((p) => p.route), movedNames);
    }
    // The target's routes are applied again here at once: the port and names are its own now.
    // Every other endpoint (issue 12) holds the target's routes as it last announced them there,
    // so the target is asked to announce again; each endpoint then claims the port and names for
    // it, and releases the port it had got meanwhile. (The source's routes on them went when
    // its VM stopped for the move; were it to announce the route again, it would get a new port.)
    const target = this.controlOf(to);
    await target?.refresh();
    if (movedPorts.length || movedNames.length) target?.askAnnounce();
    return { ports, hostnames: names };
  }

  private async hostname(from: string, to: string, name: string): Promise<CarriedHostname> {
    const pattern = normalizeHostnamePattern(name) ?? name;
    const base = proofBase(pattern);
    const [mine, theirs] = await Promise.all([grantsFor(this.cfg, this.store, to), grantsFor(this.cfg, this.store, from)]);
    if (mine.hostnames.some((g) => patternCovers(g, pattern))) return { hostname: pattern, state: "granted" };
    if (this.domains?.enabled && (await this.store.carryDomainProof(from, to, base))) {
      this.log.info("a DNS-proven name followed a moved VM", { from, to, hostname: base });
      return { hostname: pattern, state: "followed" };
    }
    if (theirs.hostnames.some((g) => patternCovers(g, pattern)) || !this.domains?.enabled) {
      const why = theirs.hostnames.some((g) => patternCovers(g, pattern)) ? `granted to cog ${from} by the hub operator` : "this hub takes no DNS proofs (hub.domains.enabled: false)";
      return { hostname: pattern, state: "needs-grant", reason: `${why}; ask the hub operator to grant it to cog ${to} (hub.cogs in capsul.yaml)` };
    }
    const value = this.domains.valueFor(to, base);
    const parent = (await this.store.domainProofsOf(from)).find((p) => p.state === "verified" && p.hostname !== base && patternCovers(`*.${p.hostname}`, pattern));
    const why = parent ? `proven by DNS on ${parent.hostname} for cog ${from}, which keeps that proof` : `cog ${from} held no DNS proof of it`;
    return { hostname: pattern, state: "needs-proof", reason: `${why}; create the DNS record ${describeRecord(base, value)} for cog ${to}`, record: challengeName(base), value };
  }
}
