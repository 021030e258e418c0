import type { Command } from "commander";
import { createInvite, startHub } from "../gateway/hub.js";
import { HubState } from "../gateway/state.js";
import { COG_NAME_RE, formatPortRange, normalizeHostnamePattern, parsePortRange } from "../lib/hostname.js";
import { ConfigError } from "../lib/errors.js";
import { parseDurationMs } from "../lib/units.js";
import { fmtMs } from "../config/values.js";
import { processRegistry } from "../lib/metrics.js";
import { loadConfig, makeLogger, requireHub, surviveBugs, table, untilSignal } from "./common.js";

const CONFIG_HELP = "capsul.yaml to use (default ./capsul.yaml, then /etc/capsul/capsul.yaml)";

function checkCogName(name: string): string {
  if (!COG_NAME_RE.test(name)) throw new ConfigError(`not a cog name: ${JSON.stringify(name)} (lower-case letters, digits and -, starting with a letter, at most 39)`);
  return name;
}

function ago(ms: number | null): string {
  if (ms === null) return "never";
  const s = Math.max(0, Math.round((Date.now() - ms) / 1000));
  if (s < 120) return `${s}s ago`;
  if (s < 7200) return `${Math.round(s / 60)}m ago`;
  if (s < 172800) return `${Math.round(s / 3600)}h ago`;
  return `${Math.round(s / 86400)}d ago`;
}

export function registerHubCommands(program: Command): void {
  // `-c` is an option of `hub` itself too, so commander hands `hub invite x -c FILE` to the parent: look there as well.
  const configOpt = (opts: { config?: string }): string | undefined => opts.config ?? hub.opts<{ config?: string }>().config;
  const hub = program
    .command("hub")
    .description("run the hub (public listeners + tunnel listener), or manage its cogs")
    .option("-c, --config <file>", CONFIG_HELP)
    .action(async (opts: { config?: string }) => {
      const { cfg, file } = loadConfig(opts.config);
      const hubCfg = requireHub(cfg, file);
      const log = makeLogger(cfg).child("hub");
      const h = await startHub(hubCfg, log, { registry: processRegistry() });
      surviveBugs(log);
      await untilSignal(() => h.close(), log);
    });

  hub
    .command("invite")
    .description("create a one-time, expiring invite for a cog and print the exact enroll command to run on it")
    .argument("<name>", "the cog's name (its identity on this hub)")
    .option("-c, --config <file>", CONFIG_HELP)
    .option("--hostname <pattern...>", "also grant this hostname or *.wildcard to the cog (repeatable)")
    .option("--tcp-ports <range...>", "grant this hub TCP port range, e.g. 20000-20009 (repeatable)")
    .option("--ttl <duration>", "how long the invite is valid, e.g. 30m, 24h (default hub.invite_ttl)")
    .option("--json", "print JSON instead of text")
    .action(async (name: string, opts: { config?: string; hostname?: string[]; tcpPorts?: string[]; ttl?: string; json?: boolean }) => {
      checkCogName(name);
      const { cfg, file } = loadConfig(configOpt(opts));
      const hubCfg = requireHub(cfg, file);
      const hostnames = (opts.hostname ?? []).map((h) => {
        const n = normalizeHostnamePattern(h);
        if (!n) throw new ConfigError(`--hostname: not a hostname pattern: ${JSON.stringify(h)}`);
        return n;
      });
      const tcpPorts = (opts.tcpPorts ?? []).map((r) => formatPortRange(parsePortRange(r, "--tcp-ports")));
      const ttlMs = opts.ttl === undefined ? undefined : parseDurationMs(opts.ttl, "--ttl");
      const inv = await createInvite(hubCfg, name, { ttlMs, hostnames, tcpPorts });
      if (opts.json) {
        process.stdout.write(JSON.stringify({ cog: name, token: inv.token, caFingerprint: inv.caFingerprint, expiresAt: inv.expiresAt.toISOString(), command: inv.command }) + "\n");
        return;
      }
      process.stdout.write(
        `Invite for cog "${name}", valid until ${inv.expiresAt.toISOString()} and usable once.\n` +
        `Run this on the cog (with its capsul.yaml in the current directory, or add -c FILE):\n\n` +
        `  ${inv.command}\n`,
      );
    });

  hub
    .command("cogs")
    .description("list the cogs this hub knows: online or not, routes, certificate expiry")
    .option("-c, --config <file>", CONFIG_HELP)
    .option("--json", "print JSON instead of a table")
    .action((opts: { config?: string; json?: boolean }) => {
      const { cfg, file } = loadConfig(configOpt(opts));
      const state = new HubState(requireHub(cfg, file).dataDir);
      try {
        const cogs = state.listCogs();
        if (opts.json) {
          process.stdout.write(JSON.stringify(cogs) + "\n");
          return;
        }
        if (cogs.length === 0) {
          process.stdout.write("No cogs yet. Invite one with: capsul hub invite NAME\n");
          return;
        }
        const rows = [["NAME", "STATUS", "LAST SEEN", "REMOTE", "CERT EXPIRES", "ROUTES"]];
        for (const c of cogs) {
          const status = c.revokedAt !== null ? "revoked" : c.online ? "online" : c.certNotAfter === null ? "invited" : "offline";
          rows.push([c.name, status, c.online ? "now" : ago(c.lastSeen), c.remote ?? "-",
            c.certNotAfter ? new Date(c.certNotAfter).toISOString().slice(0, 10) : "-", c.routes.join(" ") || "-"]);
        }
        process.stdout.write(table(rows[0]!, rows.slice(1)) + "\n");
      } finally {
        state.close();
      }
    });

  hub
    .command("revoke")
    .description("revoke a cog: its certificates stop working and its live tunnel is dropped at once")
    .argument("<name>", "the cog to revoke")
    .option("-c, --config <file>", CONFIG_HELP)
    .action((name: string, opts: { config?: string }) => {
      const { cfg, file } = loadConfig(configOpt(opts));
      const hubCfg = requireHub(cfg, file);
      const state = new HubState(hubCfg.dataDir);
      try {
        if (!state.getCog(name)) throw new ConfigError(`no cog named ${JSON.stringify(name)} on this hub (see capsul hub cogs)`);
        state.revokeCog(name);
        const within = fmtMs(hubCfg.tunnel.revocationPollIntervalMs);
        process.stdout.write(`Revoked cog "${name}". A running hub drops its tunnel within ${within} (hub.tunnel.revocation_poll_interval).\n`);
      } finally {
        state.close();
      }
    });
}
