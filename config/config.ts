/**
 * capsul.yaml → CapsulConfig. The one path for configuration:
 * YAML text → `unknown` → parseConfig() → a frozen, fully-defaulted object.
 *
 * The schema (configSchema below, built from ./hub.ts, ./cog.ts and the files they use) is the
 * one definition of every key: its description, default and bounds. The runtime objects of
 * ./types.ts, the errors, and capsul.schema.json (`npm run schema`, ./jsonschema.ts) all come
 * from it. Unknown keys are refused (a typo must fail at start-up, not at 3 a.m.) and every
 * error is one line naming the key path, e.g. `hub.cogs[1].hostnames[0]: …`.
 *
 * A new key: a leaf in its section's file (description, default and bounds, a DEFAULT_*
 * constant when code elsewhere needs the value), its field in ./types.ts and in the section's
 * build, a commented line in capsul.yaml.example, then `npm run schema` (test/config-schema
 * fails until capsul.schema.json is regenerated, and checks the example's stated default).
 */
import { readFileSync } from "node:fs";
import { dirname, resolve } from "node:path";
import { parseDocument } from "yaml";
import { ConfigError } from "../lib/errors.js";
import { formatHostPort, formatPortRange, isWildcardAddress } from "../lib/hostname.js";
import { cogSchema } from "./cog.js";
import { choice, parseSection, section } from "./fields.js";
import { hubSchema } from "./hub.js";
import type { CapsulConfig, CogConfig, HostPort, HubConfig } from "./types.js";

// The defaults and bounds live with their keys; they are exported here for the code that uses them.
export * from "./admin.js";
export * from "./cog.js";
export * from "./hub.js";
export * from "./limits.js";
export * from "./tunnel.js";
export { DEFAULT_ENDPOINT_HEARTBEAT_INTERVAL_MS, DEFAULT_ENDPOINT_TIMEOUT_MS } from "./endpoint.js";
export { DEFAULT_HUB_WORKERS, DEFAULT_WORKER_RESTART_MAX_DELAY_MS, DEFAULT_WORKER_RESTART_MIN_DELAY_MS, DEFAULT_WORKER_HANDOFF_WAIT_MS, DEFAULT_WORKER_STATS_INTERVAL_MS, DEFAULT_WORKER_WARMUP_MS } from "./workers.js";
export { DEFAULT_HUB_STORE, DEFAULT_STORE_BUSY_TIMEOUT_MS, DEFAULT_STORE_CONNECT_TIMEOUT_MS, DEFAULT_STORE_POOL_SIZE } from "./store.js";

const LOG_LEVELS: readonly CapsulConfig["log"]["level"][] = ["debug", "info", "warn", "error"];
const LOG_FORMATS: readonly CapsulConfig["log"]["format"][] = ["json", "text", "auto"];
export const DEFAULT_LOG_LEVEL: CapsulConfig["log"]["level"] = "info";
export const DEFAULT_LOG_FORMAT: CapsulConfig["log"]["format"] = "auto";

/** The whole file. hub: and cog: left empty (null) mean "not configured", like an absent key. */
export const configSchema = section("capsul.yaml: configuration of the capsul dispenser (hub, cog, or both).", {
  hub: hubSchema.nullable().optional(),
  cog: cogSchema.nullable().optional(),
  log: section("Logging of every role on this machine (lib/log.ts).", {
    level: choice("Log level; CAPSUL_LOG in the environment overrides it.", LOG_LEVELS, DEFAULT_LOG_LEVEL),
    format: choice("json (one object per line), text, or auto: json when stderr is not a terminal, text when it is; CAPSUL_LOG_FORMAT overrides it.",
      LOG_FORMATS, DEFAULT_LOG_FORMAT),
  }, (o) => ({ level: o.level, format: o.format })),
}, (o): CapsulConfig => ({ hub: o.hub ?? null, cog: o.cog ?? null, log: o.log }), { nullable: false });

/**
 * Listeners of one machine must not take the same port: the process would
 * start, then fail on the second bind. Port 0 (ephemeral) never collides.
 */
function checkListeners(hub: HubConfig | null, cog: CogConfig | null): void {
  const listeners: [string, HostPort][] = [];
  if (hub?.listen.tls) listeners.push(["hub.listen.tls", hub.listen.tls]);
  if (hub?.listen.http) listeners.push(["hub.listen.http", hub.listen.http]);
  if (hub) listeners.push(["hub.listen.tunnel", hub.listen.tunnel]);
  if (hub?.listen.admin) listeners.push(["hub.listen.admin", hub.listen.admin]);
  if (cog?.listen.admin) listeners.push(["cog.listen.admin", cog.listen.admin]);
  if (cog?.provisioner) listeners.push(["cog.provisioner.listen", cog.provisioner.listen]);
  const sameHost = (a: string, b: string) => a === b || isWildcardAddress(a) || isWildcardAddress(b);
  listeners.forEach(([path, hp], j) => {
    if (hp.port === 0) return;
    const clash = listeners.find(([, o], i) => i < j && o.port === hp.port && sameHost(o.host, hp.host));
    if (clash) throw new ConfigError(`port ${hp.port} collides with ${clash[0]} (${formatHostPort(clash[1])})`, path);
  });
  hub?.listen.tcpPorts.forEach((r, i) => {
    const clash = listeners.find(([, o]) => o.port >= r.from && o.port <= r.to && sameHost(o.host, hub.listen.tcpHost));
    if (clash) {
      throw new ConfigError(`${formatPortRange(r)} includes port ${clash[1].port} of ${clash[0]}`, `hub.listen.tcp_ports[${i}]`);
    }
  });
}

/** Recurses even into already-frozen objects: a shallow Object.freeze from a section parser is not enough. */
function deepFreeze<T>(value: T, seen = new WeakSet<object>()): T {
  if (value !== null && typeof value === "object" && !seen.has(value)) {
    seen.add(value);
    for (const v of Object.values(value)) deepFreeze(v, seen);
    Object.freeze(value);
  }
  return value;
}

// ---- entry points ---------------------------------------------------------

/**
 * Validates parsed YAML (`unknown`) and returns the frozen, fully-defaulted
 * config. Relative data_dir values are resolved against `baseDir` (default: the
 * working directory; loadConfigFile passes the file's directory).
 * Throws ConfigError whose message starts with the key path.
 */
export function parseConfig(raw: unknown, opts: { baseDir?: string } = {}): CapsulConfig {
  if (raw === undefined || raw === null) throw new ConfigError("the configuration is empty (it needs a hub: or cog: section)");
  const config = parseSection(configSchema, raw, "", opts.baseDir ?? process.cwd());
  if (config.hub === null && config.cog === null) throw new ConfigError("neither hub: nor cog: is configured (at least one is required)");
  checkListeners(config.hub, config.cog);
  return deepFreeze(config);
}

/**
 * Reads and parses a capsul.yaml. Every error is a one-line ConfigError that
 * starts with the file name: "FILE: hub.limts: unknown key (did you mean "limits"?)".
 */
export function loadConfigFile(file: string): CapsulConfig {
  let text: string;
  try {
    text = readFileSync(file, "utf8");
  } catch (err) {
    const code = (err as NodeJS.ErrnoException).code;
    const why = code === "ENOENT" ? "no such file" : code === "EACCES" ? "permission denied"
      : code === "EISDIR" ? "is a directory" : (err as Error).message;
    throw new ConfigError(`cannot read config: ${why}`, file, { cause: err });
  }
  const doc = parseDocument(text, { prettyErrors: true, uniqueKeys: true });
  const yamlError = doc.errors[0];
  if (yamlError) {
    // yaml's message is "<reason> at line L, column C:\n\n<excerpt>"; keep the first line only.
    const pos = yamlError.linePos?.[0];
    const reason = yamlError.message.split("\n")[0]!.replace(/ at line \d+, column \d+:?$/, "");
    const where = pos ? ` at line ${pos.line}, column ${pos.col}` : "";
    throw new ConfigError(`YAML syntax error${where}: ${reason}`, file, { cause: yamlError });
  }
  let raw: unknown;
  try {
    // maxAliasCount bounds "billion laughs" alias expansion.
    raw = doc.toJS({ maxAliasCount: 100 });
  } catch (err) {
    throw new ConfigError(`YAML error: ${(err as Error).message}`, file, { cause: err });
  }
  if (raw === null || raw === undefined) throw new ConfigError("file is empty (it needs a hub: or cog: section)", file);
  try {
    return parseConfig(raw, { baseDir: dirname(resolve(file)) });
  } catch (err) {
    if (err instanceof ConfigError) throw new ConfigError(err.message, file, { cause: err });
    throw err;
  }
}
