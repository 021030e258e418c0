import path from "node:path";
import type { Command } from "commander";
import { knownGrants, type GrantOrigin } from "../gateway/grants.js";
import { createInvite, startHub } from "../gateway/hub.js";
import { openHubStore } from "../gateway/store/index.js";
import type { CogListRow, HubStore, StoreOps } from "../gateway/store/types.js";
import type { HubConfig } from "../config/types.js";
import { COG_NAME_RE, formatPortRange, normalizeHostnamePattern, parsePortRange } from "../lib/hostname.js";
import { ConfigError, RuntimeError } from "../lib/errors.js";
import { parseDurationMs } from "../lib/units.js";
import { fmtMs } from "../config/values.js";
import { processRegistry } from "../lib/metrics.js";
import { exitOnBugs, isoTime, loadConfig, makeLogger, printJson, requireHub, table } from "./common.js";
import { reportReload, requestReload, runService } from "./service.js";
import { readCertRows } from "../certs/acme.js";
import { certRowsJson, certRowsTable, fileCertRow, NO_HUB_CERTS } from "./certs.js";
import { registerHubDomainCommands } from "./hubdomains.js";
import { hubWorkerIndex, runHubPrimary, runHubWorker, workerRestartKeys } from "./hubworkers.js";

const CONFIG_HELP = "capsul.yaml to use (default ./capsul.yaml, then /etc/capsul/capsul.yaml)";

function checkCogName(name: string): string {
  if (!COG_NAME_RE.test(name)) throw new ConfigError(`not a cog name: ${JSON.stringify(name)} (lower-case letters, digits and -, starting with a letter, at most 39)`);
  return name;
}

/**
 * Ports the running hub reports serving, by cog: it writes each online cog's
 * accepted routes ("tcp:20001", gateway/tunnels.ts) into the store for `hub cogs`.
 */
async function liveTcpPorts(store: StoreOps): Promise<Map<number, string>> {
  const live = new Map<number, string>();
  for (const c of await store.listCogs()) {
    if (!c.online) continue;
    for (const r of c.routes) if (r.startsWith("tcp:")) live.set(Number(r.slice(4)), c.name);
  }
  return live;
}

/** Opens the hub's state store (SQLite or PostgreSQL, as hub.store says) for one command, and closes it. */
async function withStore<T>(hubCfg: HubConfig, fn: (store: HubStore) => Promise<T>): Promise<T> {
  const store = await openHubStore(hubCfg, makeLogger().child("store"));
  try {
    return await fn(store);
  } finally {
    await store.close();
  }
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
      const worker = hubWorkerIndex();
      const log = makeLogger(cfg).child(worker === null ? "hub" : `hub/w${worker}`);
      exitOnBugs(log);
      if (worker !== null) return runHubWorker(worker, cfg, hubCfg, path.resolve(file), log);
      if (hubCfg.workers > 1) return runHubPrimary(hubCfg, path.resolve(file), log);
      const h = await startHub(hubCfg, log, { registry: processRegistry() });
      await runService({
        role: "hub", file: path.resolve(file), dataDir: hubCfg.dataDir,
        reload: async (next) => {
          const restart = workerRestartKeys(h.config, next.hub!); // read before the reload replaces h.config's sections
          return { ...(await h.reload(next.hub!)), restart };
        },
        graceMs: () => h.config.shutdownGraceMs,
        drain: (graceMs, cutNow) => h.drain(graceMs, cutNow),
        close: () => h.close(),
      }, cfg, log);
    });

  hub
    .command("reload")
    .description("make the running hub re-read its capsul.yaml and apply the changes without dropping live connections (the same as SIGHUP); " +
      "the file is validated here first, and the hub refuses what it cannot apply (see capsul.yaml.example)")
    .option("-c, --config <file>", CONFIG_HELP + "; its hub.data_dir locates the running hub (hub.pid)")
    .option("--json", "print JSON instead of text")
    .action(async (opts: { config?: string; json?: boolean }) => {
      const { cfg, file } = loadConfig(configOpt(opts));
      const hubCfg = requireHub(cfg, file);
      const { pid, result } = await requestReload(hubCfg.dataDir, "hub");
      reportReload("hub", pid, file, result, opts.json === true);
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
        printJson({ cog: name, token: inv.token, ca_fingerprint: inv.caFingerprint, expires_at: inv.expiresAt.toISOString(), command: inv.command });
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
    .description("list the cogs this hub knows: online or not, the hub endpoints each has a tunnel to, routes, certificate expiry")
    .option("-c, --config <file>", CONFIG_HELP)
    .option("--json", "print JSON instead of a table")
    .action(async (opts: { config?: string; json?: boolean }) => {
      const { cfg, file } = loadConfig(configOpt(opts));
      await withStore(requireHub(cfg, file), async (store) => {
        const cogs = await store.listCogs();
        const statusOf = (c: CogListRow): string => (c.revokedAt !== null ? "revoked" : c.online ? "online" : c.certNotAfter === null ? "invited" : "offline");
        if (opts.json) {
          printJson(cogs.map((c) => ({
            name: c.name, status: statusOf(c), online: c.online, endpoints: c.endpoints, remote: c.remote, routes: c.routes,
            created_at: isoTime(c.createdAt), last_seen_at: isoTime(c.lastSeen), cert_expires_at: isoTime(c.certNotAfter), revoked_at: isoTime(c.revokedAt),
          })));
          return;
        }
        if (cogs.length === 0) {
          process.stdout.write("No cogs yet. Invite one with: capsul hub invite NAME\n");
          return;
        }
        const rows = [["NAME", "STATUS", "LAST SEEN", "ENDPOINTS", "REMOTE", "CERT EXPIRES", "ROUTES"]];
        for (const c of cogs) {
          rows.push([c.name, statusOf(c), c.online ? "now" : ago(c.lastSeen), c.endpoints.join(",") || "-", c.remote ?? "-",
            c.certNotAfter ? new Date(c.certNotAfter).toISOString().slice(0, 10) : "-", c.routes.join(" ") || "-"]);
        }
        process.stdout.write(table(rows[0]!, rows.slice(1)) + "\n");
      });
    });

  hub
    .command("certs")
    .description("list the admin listener's certificate (hub.admin.tls: acme, or files): names, issuer, expiry, renewal state, last error")
    .option("-c, --config <file>", CONFIG_HELP)
    .option("--json", "print JSON (snake_case keys, ISO-8601 times) instead of a table")
    .action((opts: { config?: string; json?: boolean }) => {
      const { cfg, file } = loadConfig(configOpt(opts));
      const hubCfg = requireHub(cfg, file);
      const rows = readCertRows(hubCfg.dataDir);
      // tls: files: the operator's certificate, first (ACME rows above are from an earlier tls: acme).
      if (hubCfg.admin.tls === "files") rows.unshift(fileCertRow(hubCfg.admin.certFile!));
      process.stdout.write((opts.json ? JSON.stringify(certRowsJson(rows)) : certRowsTable(rows, Date.now(), NO_HUB_CERTS)) + "\n");
    });

  const ports = hub
    .command("ports")
    .description("list the hub TCP ports assigned to cogs' tcp routes (assignments outlive routes: a VM stopped and started keeps its port)")
    .option("-c, --config <file>", CONFIG_HELP)
    .option("--json", "print JSON instead of a table")
    .action(async (_opts: unknown, cmd: Command) => {
      const opts = cmd.optsWithGlobals<{ config?: string; json?: boolean }>();
      const { cfg, file } = loadConfig(opts.config);
      await withStore(requireHub(cfg, file), async (store) => {
        const live = await liveTcpPorts(store);
        const rows = (await store.allAssignments()).map((a) => ({ ...a, live: live.get(a.port) === a.cog }));
        if (opts.json) {
          // assigned_at: when the port was assigned, or last stopped serving (gateway/store touchPort).
          printJson(rows.map((r) => ({ port: r.port, cog: r.cog, route: r.route, live: r.live, assigned_at: isoTime(r.assignedAt) })));
          return;
        }
        if (rows.length === 0) {
          process.stdout.write("No hub TCP ports are assigned.\n");
          return;
        }
        // assignedAt: when the port was assigned, or last stopped serving (gateway/store touchPort).
        process.stdout.write(table(["PORT", "COG", "ROUTE", "STATE", "UNUSED SINCE"],
          rows.map((r) => [String(r.port), r.cog, r.route, r.live ? "serving" : "unused", r.live ? "-" : ago(r.assignedAt)])) + "\n");
      });
    });

  ports
    .command("release")
    .description("free a hub TCP port assigned to a cog, so that any cog can be assigned it (a cog never takes another cog's port by itself)")
    .argument("<port>", "the hub port")
    .option("-c, --config <file>", CONFIG_HELP)
    .option("--force", "release it even while the hub reports it serving (the running hub keeps serving it until the cog announces its routes again)")
    .option("--json", "print JSON instead of text")
    .action(async (portText: string, _opts: unknown, cmd: Command) => {
      const opts = cmd.optsWithGlobals<{ config?: string; json?: boolean; force?: boolean }>();
      const port = parsePortRange(portText, "<port>");
      if (port.from !== port.to) throw new ConfigError(`one port, not a range: ${JSON.stringify(portText)}`, "<port>");
      const { cfg, file } = loadConfig(opts.config);
      await withStore(requireHub(cfg, file), async (store) => {
        const owner = await store.portOwner(port.from);
        if (!owner) throw new ConfigError(`hub port ${port.from} is not assigned to any cog (see capsul hub ports)`);
        if (!opts.force && (await liveTcpPorts(store)).get(port.from) === owner.cog) {
          throw new RuntimeError(`hub port ${port.from} is serving route ${owner.route} of cog ${owner.cog} right now; withdraw that route on the cog or revoke the cog first (or pass --force)`);
        }
        const gone = await store.releasePortNumber(port.from);
        if (opts.json) {
          printJson({ released: port.from, cog: gone?.cog ?? owner.cog, route: gone?.route ?? owner.route });
          return;
        }
        process.stdout.write(`Released hub port ${port.from} (was route ${owner.route} of cog ${owner.cog}); any cog may now be assigned it.\n`);
      });
    });

  hub
    .command("grants")
    .description("list what each cog may announce: hostname patterns and TCP port ranges, from capsul.yaml, invites and default grants")
    .option("-c, --config <file>", CONFIG_HELP)
    .option("--json", "print JSON instead of a table")
    .action(async (opts: { config?: string; json?: boolean }) => {
      const { cfg, file } = loadConfig(configOpt(opts));
      const hubCfg = requireHub(cfg, file);
      await withStore(hubCfg, async (store) => {
        const known = await knownGrants(hubCfg, store);
        const from = (o: GrantOrigin): string => (o.kind === "config" ? o.path : o.kind);
        const rows = [
          ...known.hostnames.map((g) => ({ cog: g.cog, kind: "hostname", value: g.pattern, from: from(g.origin) })),
          ...known.ports.map((g) => ({ cog: g.cog, kind: "tcp", value: formatPortRange(g.range), from: from(g.origin) })),
        ].sort((a, b) => a.cog.localeCompare(b.cog) || a.kind.localeCompare(b.kind) || a.value.localeCompare(b.value));
        if (opts.json) {
          printJson(rows);
          return;
        }
        if (rows.length === 0) {
          process.stdout.write("No grants: hub.default_grants is off and no cog has any.\n");
          return;
        }
        process.stdout.write(table(["COG", "KIND", "GRANT", "FROM"], rows.map((r) => [r.cog, r.kind, r.value, r.from])) + "\n");
      });
    });

  hub
    .command("ungrant")
    .description("remove a grant stored by capsul hub invite --hostname/--tcp-ports (grants in capsul.yaml are changed there); takes effect when the cog next announces its routes")
    .argument("<name>", "the cog")
    .argument("<grant>", "the hostname pattern or TCP port range, as capsul hub grants lists it")
    .option("-c, --config <file>", CONFIG_HELP)
    .option("--json", "print JSON instead of text")
    .action(async (name: string, grant: string, opts: { config?: string; json?: boolean }) => {
      const { cfg, file } = loadConfig(configOpt(opts));
      await withStore(requireHub(cfg, file), async (store) => {
        const isPorts = /^[0-9]/.test(grant);
        const value = isPorts ? formatPortRange(parsePortRange(grant, "<grant>")) : normalizeHostnamePattern(grant);
        if (value === null) throw new ConfigError(`not a hostname pattern or port range: ${JSON.stringify(grant)}`, "<grant>");
        const kind = isPorts ? "tcp" : "hostname";
        if (!(await store.removeGrant(name, kind, value))) {
          throw new ConfigError(`cog ${name} has no stored grant ${JSON.stringify(value)} (see capsul hub grants; grants from capsul.yaml are changed there)`);
        }
        if (opts.json) {
          printJson({ removed: { cog: name, kind, value } });
          return;
        }
        process.stdout.write(`Removed grant ${JSON.stringify(value)} of cog "${name}". A connected cog loses routes under it when it next announces its routes; revoke it to cut it off at once.\n`);
      });
    });

  registerHubDomainCommands(hub, { configOpt, withStore, ago, configHelp: CONFIG_HELP });

  hub
    .command("revoke")
    .description("revoke a cog: its certificates stop working and its live tunnel is dropped at once")
    .argument("<name>", "the cog to revoke")
    .option("-c, --config <file>", CONFIG_HELP)
    .option("--json", "print JSON instead of text")
    .action(async (name: string, opts: { config?: string; json?: boolean }) => {
      const { cfg, file } = loadConfig(configOpt(opts));
      const hubCfg = requireHub(cfg, file);
      await withStore(hubCfg, async (store) => {
        if (!(await store.getCog(name))) throw new ConfigError(`no cog named ${JSON.stringify(name)} on this hub (see capsul hub cogs)`);
        await store.revokeCog(name);
        // SQLite: the running hub polls (hub.tunnel.revocation_poll_interval); PostgreSQL notifies it at once.
        const notified = store.dialect === "postgres";
        if (opts.json) {
          printJson({ cog: name, revoked_at: isoTime((await store.getCog(name))?.revokedAt), tunnel_dropped_within_ms: notified ? 0 : hubCfg.tunnel.revocationPollIntervalMs });
          return;
        }
        const when = notified
          ? "at once (PostgreSQL notifies every hub)"
          : `within ${fmtMs(hubCfg.tunnel.revocationPollIntervalMs)} (hub.tunnel.revocation_poll_interval)`;
        process.stdout.write(`Revoked cog "${name}". A running hub drops its tunnel ${when}.\n`);
      });
    });
}
