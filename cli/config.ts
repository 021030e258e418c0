/**
 * `capsul config check [-c FILE]`: validates a capsul.yaml the way `capsul hub` and
 * `capsul cog` would at start (and a reload would), like `nginx -t`: exit 0 and what was
 * checked, or exit 2 and the one-line error. Nothing is started, bound or written.
 * Not checked here: what needs the hub's state (grants against stored invites, see
 * gateway/grants.ts), which `capsul hub` checks at start and on reload.
 */
import type { Command } from "commander";
import type { CapsulConfig } from "../config/types.js";
import { formatHostPort } from "../lib/hostname.js";
import { loadConfig } from "./common.js";

/** One line per section found, saying what the file makes of it. */
export function describeSections(cfg: CapsulConfig): { section: string; summary: string }[] {
  const out: { section: string; summary: string }[] = [];
  const hub = cfg.hub;
  if (hub) {
    const l = hub.listen;
    const at = (hp: typeof l.tls): string => (hp ? formatHostPort(hp) : "off");
    out.push({
      section: "hub",
      summary: `domain ${hub.domain}; tls ${at(l.tls)}, http ${at(l.http)}, tunnel ${at(l.tunnel)}; ` +
        `${hub.cogs.length} cog grant(s) in this file; data_dir ${hub.dataDir}`,
    });
  }
  const cog = cfg.cog;
  if (cog) {
    out.push({
      section: "cog",
      summary: `${cog.routes.length} route(s); hub ${cog.hub ? formatHostPort(cog.hub) : "from the enrollment"}; data_dir ${cog.dataDir}`,
    });
    const p = cog.provisioner;
    if (p) {
      out.push({
        section: "cog.provisioner",
        summary: `API ${formatHostPort(p.listen)}; ${Object.keys(p.sizes).length} size(s); accel ${p.accel}; data_dir ${p.dataDir}`,
      });
    }
  }
  return out;
}

export function registerConfigCommands(program: Command): void {
  const config = program.command("config").description("work with capsul.yaml");
  config
    .command("check")
    .description("validate a capsul.yaml as capsul hub and capsul cog would at start and on reload; exit 0 if valid, 2 with the error if not")
    .option("-c, --config <file>", "capsul.yaml to check (default ./capsul.yaml, then /etc/capsul/capsul.yaml)")
    .option("--json", "print JSON instead of text")
    .action((opts: { config?: string; json?: boolean }) => {
      const { cfg, file } = loadConfig(opts.config);
      const sections = describeSections(cfg);
      if (opts.json) {
        process.stdout.write(JSON.stringify({ file, valid: true, sections: sections.map((s) => s.section) }) + "\n");
        return;
      }
      let out = `${file}: valid (${sections.map((s) => s.section).join(", ")})\n`;
      for (const s of sections) out += `  ${s.section}: ${s.summary}\n`;
      process.stdout.write(out);
    });
}
