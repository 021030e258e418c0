/**
 * Opens the hub's state store that capsul.yaml names: hub.store `sqlite` (the
 * default: <data_dir>/hub.db) or a `postgres://` URL.
 */
import type { HubConfig } from "../../config/types.js";
import type { Logger } from "../../lib/log.js";
import { PgHubStore } from "./postgres.js";
import { SqliteHubStore } from "./sqlite.js";
import type { HubStore } from "./types.js";

export type * from "./types.js";

export async function openHubStore(cfg: HubConfig, log: Logger): Promise<HubStore> {
  if (cfg.store.kind === "postgres") return PgHubStore.open(cfg.store, log);
  return SqliteHubStore.open(cfg.dataDir, cfg.store, log);
}
