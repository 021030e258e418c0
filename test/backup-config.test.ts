import fs from "node:fs";
import path from "node:path";
import { fileURLToPath } from "node:url";
import t from "tap";
import { parse } from "yaml";
import { ConfigError } from "../lib/errors.js";
import {
  DEFAULT_AGENT_TIMEOUT_MS, DEFAULT_FREEZE_TIMEOUT_MS, DEFAULT_KEEP_FULL, DEFAULT_KEEP_INCREMENTAL, parseBackupConfig,
} from "../provisioner/backupconfig.js";
import { parseProvisionerConfig, provisionerConfigWith } from "../provisioner/config.js";

t.test("backups: defaults", async (t) => {
  const c = parseProvisionerConfig({}, "cog.provisioner", "/etc/capsul").backups;
  t.equal(c.dir, "/var/lib/capsul/provisioner/backups", "inside the data dir");
  t.same(c.schedule, { kind: "off" });
  t.equal(c.keepFull, DEFAULT_KEEP_FULL);
  t.equal(c.keepFull, 2);
  t.equal(c.keepIncremental, DEFAULT_KEEP_INCREMENTAL);
  t.equal(c.keepIncremental, 6);
  t.equal(c.agentTimeoutMs, DEFAULT_AGENT_TIMEOUT_MS);
  t.equal(c.freezeTimeoutMs, DEFAULT_FREEZE_TIMEOUT_MS);
  t.equal(c.stallTimeoutMs, 600_000);
  t.equal(c.checkIntervalMs, 60_000);
  t.equal(c.retryAfterMs, 1_800_000);
  t.equal(c.rateLimitBytesPerSec, 0);
  t.ok(Object.isFrozen(c));
  t.equal(parseProvisionerConfig({ data_dir: "/srv/c" }, "cog.provisioner", "/etc").backups.dir, "/srv/c/backups", "follows data_dir");
  t.equal(provisionerConfigWith({ dataDir: "/tmp/x" }).backups.dir, "/tmp/x/backups", "also for tests and the demo");
});

t.test("backups: values", async (t) => {
  const c = parseBackupConfig({
    dir: "bk", schedule: "daily", keep_full: 3, keep_incremental: 0, agent_timeout: "1s", freeze_timeout: "2m",
    stall_timeout: "5m", check_interval: "30s", retry_after: "1h", rate_limit: "50MiB",
  }, "cog.provisioner.backups", "/etc/capsul", "/var/lib/p");
  t.equal(c.dir, "/etc/capsul/bk", "relative to capsul.yaml");
  t.same(c.schedule, { kind: "every", intervalMs: 86_400_000 });
  t.equal(c.keepFull, 3);
  t.equal(c.keepIncremental, 0, "0: every backup is full");
  t.equal(c.agentTimeoutMs, 1000);
  t.equal(c.freezeTimeoutMs, 120_000);
  t.equal(c.stallTimeoutMs, 300_000);
  t.equal(c.checkIntervalMs, 30_000);
  t.equal(c.retryAfterMs, 3_600_000);
  t.equal(c.rateLimitBytesPerSec, 50 * 1024 * 1024);
  const at = "b";
  t.same(parseBackupConfig({ schedule: "hourly" }, at, "/", "/d").schedule, { kind: "every", intervalMs: 3_600_000 });
  t.same(parseBackupConfig({ schedule: "weekly" }, at, "/", "/d").schedule, { kind: "every", intervalMs: 7 * 86_400_000 });
  t.same(parseBackupConfig({ schedule: "6h" }, at, "/", "/d").schedule, { kind: "every", intervalMs: 6 * 3_600_000 });
  t.same(parseBackupConfig({ schedule: "off" }, at, "/", "/d").schedule, { kind: "off" });
  t.same(parseBackupConfig({ schedule: false }, at, "/", "/d").schedule, { kind: "off" });
});

t.test("backups: errors name the key path", async (t) => {
  const bad: Array<[unknown, RegExp]> = [
    [{ backups: "daily" }, /^cog\.provisioner\.backups: must be a mapping/],
    [{ backups: { shedule: "daily" } }, /^cog\.provisioner\.backups\.shedule: unknown key/],
    [{ backups: { dir: "" } }, /^cog\.provisioner\.backups\.dir: must be a path/],
    [{ backups: { dir: 5 } }, /^cog\.provisioner\.backups\.dir: must be a path/],
    [{ backups: { schedule: "sometimes" } }, /^cog\.provisioner\.backups\.schedule: must be off, hourly, daily, weekly or a duration/],
    [{ backups: { schedule: "10s" } }, /^cog\.provisioner\.backups\.schedule: at least 60s/],
    [{ backups: { keep_full: 0 } }, /^cog\.provisioner\.backups\.keep_full: must be an integer from 1/],
    [{ backups: { keep_full: 1.5 } }, /^cog\.provisioner\.backups\.keep_full: /],
    [{ backups: { keep_incremental: -1 } }, /^cog\.provisioner\.backups\.keep_incremental: must be an integer from 0/],
    [{ backups: { agent_timeout: "soon" } }, /^cog\.provisioner\.backups\.agent_timeout: not a duration/],
    [{ backups: { agent_timeout: "10ms" } }, /^cog\.provisioner\.backups\.agent_timeout: at least 100 ms/],
    [{ backups: { freeze_timeout: "1ms" } }, /^cog\.provisioner\.backups\.freeze_timeout: at least/],
    [{ backups: { stall_timeout: "x" } }, /^cog\.provisioner\.backups\.stall_timeout: not a duration/],
    [{ backups: { check_interval: "1ms" } }, /^cog\.provisioner\.backups\.check_interval: at least/],
    [{ backups: { retry_after: "later" } }, /^cog\.provisioner\.backups\.retry_after: not a duration/],
    [{ backups: { rate_limit: "fast" } }, /^cog\.provisioner\.backups\.rate_limit: not a size/],
  ];
  t.ok(bad.length > 0);
  for (const [raw, re] of bad) {
    let err: unknown;
    try { parseProvisionerConfig(raw, "cog.provisioner", "/etc/capsul"); } catch (e) { err = e; }
    t.ok(err instanceof ConfigError, `${JSON.stringify(raw)} is a ConfigError`);
    t.match((err as Error | undefined)?.message, re);
  }
});

t.test("capsul.yaml.example sets and documents every backups key", async (t) => {
  const file = path.join(path.dirname(fileURLToPath(import.meta.url)), "..", "capsul.yaml.example");
  const text = fs.readFileSync(file, "utf8");
  const b = (parse(text) as { cog: { provisioner: { backups: Record<string, unknown> } } }).cog.provisioner.backups;
  const keys = ["dir", "schedule", "keep_full", "keep_incremental", "agent_timeout", "freeze_timeout", "stall_timeout", "check_interval",
    "retry_after", "rate_limit"];
  for (const k of keys) {
    t.not(b[k], undefined, `example sets cog.provisioner.backups.${k}`);
    const i = text.split("\n").findIndex((l) => new RegExp(`^\\s+${k}:`).test(l));
    t.match(text.split("\n")[i - 1], /^\s+#/, `${k} has a comment above it`);
  }
  t.same(Object.keys(b).filter((k) => !keys.includes(k)), [], "and nothing this list does not know");
  const c = parseBackupConfig(b, "cog.provisioner.backups", path.dirname(file), "/var/lib/capsul/provisioner");
  t.equal(c.dir, "/var/lib/capsul/provisioner/backups", "the example's dir is the default");
  t.equal(c.keepFull, DEFAULT_KEEP_FULL);
});
