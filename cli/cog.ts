import { X509Certificate } from "node:crypto";
import fs from "node:fs";
import path from "node:path";
import type { Command } from "commander";
import { parseConfig } from "../config/config.js";
import type { CogConfig } from "../config/types.js";
import { parseHostPort } from "../lib/hostname.js";
import { startCog } from "../tunnel-client/cog.js";
import { enroll } from "../tunnel-client/enroll.js";
import { identityExists } from "../tunnel-client/identity.js";
import { ConfigError } from "../lib/errors.js";
import { processRegistry } from "../lib/metrics.js";
import { DEFAULT_CONFIG_PATHS, exitOnBugs, loadConfig, makeLogger, printJson, requireCog } from "./common.js";
import { reportReload, requestReload, runService } from "./service.js";
import { provisionerExtras } from "./provision.js";
import { readCertRows } from "../certs/acme.js";
import { certRowsJson, certRowsTable } from "./certs.js";
import { registerDomainCommands } from "./domains.js";

const CONFIG_HELP = "capsul.yaml to use (default ./capsul.yaml, then /etc/capsul/capsul.yaml)";

export function registerCogCommands(program: Command): void {
  const cog = program
    .command("cog")
    .description("run the cog: keep the tunnel to the hub up and serve its routes (and the VM provisioner if configured)")
    .option("-c, --config <file>", CONFIG_HELP)
    .action(async (opts: { config?: string }) => {
      const { cfg, file } = loadConfig(opts.config);
      const cogCfg = requireCog(cfg, file);
      const log = makeLogger(cfg).child("cog");
      exitOnBugs(log);
      const c = await startCog(cogCfg, log, { ...provisionerExtras(cogCfg, log), registry: processRegistry() });
      await runService({
        role: "cog", file: path.resolve(file), dataDir: cogCfg.dataDir,
        reload: async (next) => c.reload(next.cog!),
        graceMs: () => c.config.shutdownGraceMs,
        drain: (graceMs, cutNow) => c.drain(graceMs, cutNow),
        close: () => c.close(),
      }, cfg, log);
    });

  cog
    .command("reload")
    .description("make the running cog re-read its capsul.yaml and apply the changes without dropping live streams (the same as SIGHUP); " +
      "the file is validated here first, and the cog refuses what it cannot apply (see capsul.yaml.example)")
    .option("-c, --config <file>", CONFIG_HELP + "; its cog.data_dir locates the running cog (cog.pid)")
    .option("--json", "print JSON instead of text")
    .action(async (opts: { config?: string; json?: boolean }) => {
      opts.config ??= cog.opts<{ config?: string }>().config;
      const { cfg, file } = loadConfig(opts.config);
      const cogCfg = requireCog(cfg, file);
      const { pid, result } = await requestReload(cogCfg.dataDir, "cog");
      reportReload("cog", pid, file, result, opts.json === true);
    });

  cog
    .command("certs")
    .description("list the certificates this cog holds for tls: terminate routes: names, issuer, expiry, renewal state, last error")
    .option("-c, --config <file>", CONFIG_HELP)
    .option("--json", "print JSON (snake_case keys, ISO-8601 times) instead of a table")
    .action((opts: { config?: string; json?: boolean }) => {
      opts.config ??= cog.opts<{ config?: string }>().config;
      const { cfg, file } = loadConfig(opts.config);
      const rows = readCertRows(requireCog(cfg, file).dataDir);
      process.stdout.write((opts.json ? JSON.stringify(certRowsJson(rows)) : certRowsTable(rows)) + "\n");
    });

  registerDomainCommands(cog, CONFIG_HELP);

  cog
    .command("enroll")
    .description("enroll this machine as a cog of a hub, with the command `capsul hub invite` printed")
    .requiredOption("--hub <host:port>", "the hub's tunnel address")
    .requiredOption("--token <token>", "the one-time invite token")
    .requiredOption("--ca-fingerprint <sha256:hex>", "fingerprint of the hub's CA, pinned from now on")
    .option("-c, --config <file>", CONFIG_HELP + "; its cog.data_dir receives the key and certificate")
    .option("--data-dir <dir>", "where to keep the key and certificate (overrides cog.data_dir)")
    .option("--force", "replace an existing enrollment")
    .option("--json", "print JSON instead of text")
    .action(async (opts: { hub: string; token: string; caFingerprint: string; config?: string; dataDir?: string; force?: boolean; json?: boolean }) => {
      // `-c` is an option of `cog` itself too, so commander hands `cog enroll … -c FILE` to the parent: look there as well.
      opts.config ??= cog.opts<{ config?: string }>().config;
      const cogCfg = enrollConfig(opts.config, opts.dataDir);
      const hub = parseHostPort(opts.hub, "--hub");
      if (identityExists(cogCfg.dataDir) && !opts.force) {
        throw new ConfigError(`${cogCfg.dataDir} already holds an enrollment; pass --force to replace it`);
      }
      const id = await enroll({ hub, token: opts.token, caFingerprint: opts.caFingerprint, dataDir: cogCfg.dataDir, tuning: cogCfg.tunnel });
      if (opts.json) {
        const certExpires = new Date(new X509Certificate(id.certPem).validTo).toISOString();
        printJson({ cog: id.name, hub: id.hub, hub_domain: id.hubDomain, ca_fingerprint: id.caFingerprint, data_dir: cogCfg.dataDir, cert_expires_at: certExpires });
        return;
      }
      process.stdout.write(
        `Enrolled as cog "${id.name}" of hub ${id.hub} (CA ${id.caFingerprint}).\n` +
        `Key and certificate are in ${cogCfg.dataDir}. Start the cog with: capsul cog${opts.config ? ` -c ${opts.config}` : ""}\n`,
      );
    });
}

/** The cog settings enrollment needs, from a config file if there is one, else defaults. */
function enrollConfig(explicit: string | undefined, dataDir: string | undefined): CogConfig {
  const haveFile = explicit !== undefined || DEFAULT_CONFIG_PATHS.some((p) => fs.existsSync(p));
  let cogCfg: CogConfig;
  if (haveFile) {
    const { cfg, file } = loadConfig(explicit);
    cogCfg = requireCog(cfg, file);
  } else {
    cogCfg = parseConfig({ cog: {} }).cog!;
  }
  return dataDir ? { ...cogCfg, dataDir } : cogCfg;
}
