/**
 * `capsul hub domains [remove NAME]` (README "Bring your own domain"): the
 * custom-domain claims cogs made by DNS proof (gateway/domains.ts), as the
 * hub's state store holds them, and the operator's way to take one away.
 *
 * The running hub notices a removed proven claim of a connected cog at its
 * next sweep of the claims (gateway/domains.ts: every hub.domains.pending_interval, 30 s
 * by default) and
 * applies the cog's routes again: the name is then claimed anew, refused until
 * the record proves it again. To give the name to another cog, grant it to
 * that cog right after (`hub invite --hostname`, refused while the claim
 * stands): a proof never takes a name out of a grant. To cut a cog off at
 * once, revoke it.
 */
import type { Command } from "commander";
import type { HubConfig } from "../config/types.js";
import type { DomainProofRow, HubStore } from "../gateway/store/types.js";
import { ConfigError } from "../lib/errors.js";
import { COG_NAME_RE, normalizeHostname } from "../lib/hostname.js";
import { challengeName } from "../protocol/domainproof.js";
import { isoTime, loadConfig, printJson, requireHub, table } from "./common.js";

export interface HubDomainHelpers {
  configOpt(opts: { config?: string }): string | undefined;
  withStore<T>(hubCfg: HubConfig, fn: (store: HubStore) => Promise<T>): Promise<T>;
  ago(ms: number | null): string;
  configHelp: string;
}

function claimJson(p: DomainProofRow): Record<string, unknown> {
  return {
    hostname: p.hostname, cog: p.cog, state: p.state, record: challengeName(p.hostname), value: p.value,
    // The cog the value was derived for, when the claim came with a moved VM (gateway/carry.ts).
    proven_for: p.proofCog ?? p.cog,
    created_at: isoTime(p.createdAt), verified_at: isoTime(p.verifiedAt), checked_at: isoTime(p.checkedAt), last_error: p.lastError,
  };
}

export function registerHubDomainCommands(hub: Command, h: HubDomainHelpers): void {
  const domains = hub
    .command("domains")
    .description("list the custom-domain claims cogs made by DNS proof (pending, proven, lost)")
    .option("-c, --config <file>", h.configHelp)
    .option("--json", "print JSON instead of a table")
    .action(async (opts: { config?: string; json?: boolean }) => {
      const { cfg, file } = loadConfig(h.configOpt(opts));
      await h.withStore(requireHub(cfg, file), async (store) => {
        const rows = await store.allDomainProofs();
        if (opts.json) {
          printJson(rows.map(claimJson));
          return;
        }
        if (rows.length === 0) {
          process.stdout.write("No custom-domain claims.\n");
          return;
        }
        const state = (p: DomainProofRow): string => (p.state === "verified" ? "proven" : p.state);
        process.stdout.write(table(["HOSTNAME", "COG", "STATE", "PROVEN FOR", "LAST CHECK", "LAST ERROR"], rows.map((p) => [
          p.hostname, p.cog, state(p), p.proofCog ?? p.cog, h.ago(p.checkedAt), p.lastError ?? "-",
        ])) + "\n");
      });
    });

  domains
    .command("remove")
    .description("remove a cog's custom-domain claim (a running hub withdraws the name within hub.domains.pending_interval, until DNS proves it again)")
    .argument("<name>", "the claimed hostname, as capsul hub domains lists it")
    .option("--cog <cog>", "whose claim (needed when several cogs claim the name)")
    .option("-c, --config <file>", h.configHelp)
    .option("--json", "print JSON instead of text")
    .action(async (name: string, _opts: unknown, cmd: Command) => {
      // `domains` and `hub` take -c and --json too: commander may hand them to either.
      const opts = cmd.optsWithGlobals<{ cog?: string; config?: string; json?: boolean }>();
      const hostname = normalizeHostname(name);
      if (hostname === null) throw new ConfigError(`not a hostname: ${JSON.stringify(name)}`, "<name>");
      if (opts.cog !== undefined && !COG_NAME_RE.test(opts.cog)) throw new ConfigError(`not a cog name: ${JSON.stringify(opts.cog)}`, "--cog");
      const { cfg, file } = loadConfig(opts.config);
      await h.withStore(requireHub(cfg, file), async (store) => {
        const claims = (await store.domainProofsFor(hostname)).filter((p) => opts.cog === undefined || p.cog === opts.cog);
        if (claims.length === 0) {
          throw new ConfigError(`no cog${opts.cog ? ` named ${opts.cog}` : ""} claims ${hostname} (see capsul hub domains)`);
        }
        if (claims.length > 1) {
          throw new ConfigError(`${claims.length} cogs claim ${hostname} (${claims.map((p) => `${p.cog}: ${p.state}`).join(", ")}); say whose with --cog`);
        }
        const claim = claims[0]!;
        await store.removeDomainProof(claim.cog, hostname);
        if (opts.json) {
          printJson({ removed: claimJson(claim) });
          return;
        }
        process.stdout.write(`Removed cog ${claim.cog}'s claim on ${hostname} (${claim.state === "verified" ? "proven" : claim.state}). ` +
          "The running hub applies it within hub.domains.pending_interval: the name is refused to that cog until DNS proves it " +
          "again, or for good once another cog is granted it (capsul hub invite --hostname).\n");
      });
    });
}
