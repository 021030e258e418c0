import Database from "better-sqlite3";

/**
 * Desired and last-known state of VMs and the image catalogue. SQLite in WAL
 * mode; the schema moves forward one step per entry of MIGRATIONS, and
 * `PRAGMA user_version` records how many have run.
 */

export type VmState = "creating" | "starting" | "running" | "rebooting" | "stopping" | "stopped" | "error" | "deleting";
export type Desired = "running" | "stopped";

export interface VmPorts { ssh: number; http: number; https: number }

/**
 * How visitors' HTTPS reaches the VM: `passthrough` (the VM holds its own certificate
 * and key; the hub and cog pass TLS through to its port 443) or `terminate` (the cog
 * gets a certificate by ACME, serves TLS itself and sends plain HTTP to the VM's port 80).
 */
export type HttpsMode = "passthrough" | "terminate";
export const HTTPS_MODES: readonly HttpsMode[] = ["passthrough", "terminate"];

export interface VmRecord {
  name: string;
  uuid: string;
  image: string;
  size: string;
  sshKeys: string[];
  desired: Desired;
  state: VmState;
  /** Last error or warning, for people. */
  message: string | null;
  /** Accelerator of the current/last run. */
  accel: string | null;
  ports: VmPorts | null;
  /** Disk limits set at run time (POST /v1/vms/:name/io-limits); null: the size's. Kept across restarts. */
  ioLimits: IoLimits | null;
  /** Chosen at create time (`capsul vm create --https`); default passthrough. */
  https: HttpsMode;
  /** Custom domains (`capsul vm domains`), normalised, in the order added; each published like the default hostname. */
  domains: string[];
  createdAt: string;
  updatedAt: string;
}

/** 0 = unlimited. */
export interface IoLimits { iops: number; bps: number }

export type ImageFormat = "qcow2" | "kernel";

export interface ImageFile { path: string; sha256: string; bytes: number }

export interface ImageRecord {
  name: string;
  format: ImageFormat;
  /** qcow2: { disk }; kernel: { kernel, initrd }. Paths are inside the data dir. */
  files: Record<string, ImageFile>;
  /** Kernel command line (format kernel only). */
  cmdline: string | null;
  /** The user to SSH in as (what `vm show` prints). */
  sshUser: string;
  createdAt: string;
}

const MIGRATIONS: string[] = [
  `CREATE TABLE vms (
     name TEXT PRIMARY KEY,
     uuid TEXT NOT NULL UNIQUE,
     image TEXT NOT NULL,
     size TEXT NOT NULL,
     ssh_keys TEXT NOT NULL,
     desired TEXT NOT NULL,
     state TEXT NOT NULL,
     message TEXT,
     accel TEXT,
     port_ssh INTEGER, port_http INTEGER, port_https INTEGER,
     created_at TEXT NOT NULL,
     updated_at TEXT NOT NULL
   );
   CREATE TABLE images (
     name TEXT PRIMARY KEY,
     format TEXT NOT NULL,
     files TEXT NOT NULL,
     cmdline TEXT,
     ssh_user TEXT NOT NULL,
     created_at TEXT NOT NULL
   );`,
  // 2: disk limits changed at run time survive a stop/start, a crash restart and a provisioner restart.
  `ALTER TABLE vms ADD COLUMN io_iops INTEGER;
   ALTER TABLE vms ADD COLUMN io_bps INTEGER;`,
  // 3: `capsul vm create --https terminate|passthrough` (issue 10); VMs from before pass TLS through, as they did.
  `ALTER TABLE vms ADD COLUMN https TEXT NOT NULL DEFAULT 'passthrough' CHECK (https IN ('passthrough', 'terminate'));`,
  // 4: custom domains per VM (`capsul vm create --domain`, `capsul vm domains`), a JSON array; VMs from before have none.
  `ALTER TABLE vms ADD COLUMN domains TEXT NOT NULL DEFAULT '[]';`,
];

interface VmRow {
  name: string; uuid: string; image: string; size: string; ssh_keys: string; desired: string; state: string;
  message: string | null; accel: string | null; port_ssh: number | null; port_http: number | null; port_https: number | null;
  io_iops: number | null; io_bps: number | null; https: string; domains: string;
  created_at: string; updated_at: string;
}
interface ImageRow { name: string; format: string; files: string; cmdline: string | null; ssh_user: string; created_at: string }

function vmFromRow(r: VmRow): VmRecord {
  return {
    name: r.name, uuid: r.uuid, image: r.image, size: r.size,
    sshKeys: JSON.parse(r.ssh_keys) as string[],
    desired: r.desired as Desired, state: r.state as VmState, message: r.message, accel: r.accel,
    ports: r.port_ssh && r.port_http && r.port_https ? { ssh: r.port_ssh, http: r.port_http, https: r.port_https } : null,
    ioLimits: r.io_iops !== null && r.io_bps !== null ? { iops: r.io_iops, bps: r.io_bps } : null,
    https: r.https === "terminate" ? "terminate" : "passthrough",
    domains: parseDomains(r.domains),
    createdAt: r.created_at, updatedAt: r.updated_at,
  };
}

/** The domains column: a JSON array of strings; anything else (a hand-edited row) reads as none rather than failing every listing. */
function parseDomains(text: string): string[] {
  try {
    const v = JSON.parse(text) as unknown;
    return Array.isArray(v) ? v.filter((d): d is string => typeof d === "string") : [];
  } catch {
    return [];
  }
}

function imageFromRow(r: ImageRow): ImageRecord {
  return {
    name: r.name, format: r.format as ImageFormat, files: JSON.parse(r.files) as Record<string, ImageFile>,
    cmdline: r.cmdline, sshUser: r.ssh_user, createdAt: r.created_at,
  };
}

export class Store {
  readonly db: Database.Database;

  constructor(file: string) {
    this.db = new Database(file);
    this.db.pragma("journal_mode = WAL");
    this.db.pragma("synchronous = NORMAL");
    this.db.pragma("busy_timeout = 5000");
    this.migrate();
  }

  private migrate(): void {
    const version = this.db.pragma("user_version", { simple: true }) as number;
    if (version > MIGRATIONS.length) {
      throw new Error(`database schema version ${version} is newer than this capsul (${MIGRATIONS.length}); upgrade capsul`);
    }
    for (let v = version; v < MIGRATIONS.length; v++) {
      this.db.transaction(() => {
        this.db.exec(MIGRATIONS[v]!);
        this.db.pragma(`user_version = ${v + 1}`);
      })();
    }
  }

  close(): void { this.db.close(); }

  listVms(): VmRecord[] {
    return (this.db.prepare("SELECT * FROM vms ORDER BY name").all() as VmRow[]).map(vmFromRow);
  }

  getVm(name: string): VmRecord | undefined {
    const r = this.db.prepare("SELECT * FROM vms WHERE name = ?").get(name) as VmRow | undefined;
    return r ? vmFromRow(r) : undefined;
  }

  insertVm(v: Omit<VmRecord, "createdAt" | "updatedAt" | "ioLimits">): void {
    const now = new Date().toISOString();
    this.db.prepare(
      `INSERT INTO vms (name, uuid, image, size, ssh_keys, desired, state, message, accel, port_ssh, port_http, port_https, https, domains, created_at, updated_at)
       VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)`,
    ).run(v.name, v.uuid, v.image, v.size, JSON.stringify(v.sshKeys), v.desired, v.state, v.message, v.accel,
      v.ports?.ssh ?? null, v.ports?.http ?? null, v.ports?.https ?? null, v.https, JSON.stringify(v.domains), now, now);
  }

  updateVm(name: string, patch: Partial<Pick<VmRecord, "desired" | "state" | "message" | "accel" | "ports" | "ioLimits" | "domains">>): void {
    const sets: string[] = [];
    const args: unknown[] = [];
    if (patch.desired !== undefined) { sets.push("desired = ?"); args.push(patch.desired); }
    if (patch.state !== undefined) { sets.push("state = ?"); args.push(patch.state); }
    if (patch.message !== undefined) { sets.push("message = ?"); args.push(patch.message); }
    if (patch.accel !== undefined) { sets.push("accel = ?"); args.push(patch.accel); }
    if (patch.ports !== undefined) {
      sets.push("port_ssh = ?", "port_http = ?", "port_https = ?");
      args.push(patch.ports?.ssh ?? null, patch.ports?.http ?? null, patch.ports?.https ?? null);
    }
    if (patch.ioLimits !== undefined) {
      sets.push("io_iops = ?", "io_bps = ?");
      args.push(patch.ioLimits?.iops ?? null, patch.ioLimits?.bps ?? null);
    }
    if (patch.domains !== undefined) { sets.push("domains = ?"); args.push(JSON.stringify(patch.domains)); }
    sets.push("updated_at = ?");
    args.push(new Date().toISOString(), name);
    this.db.prepare(`UPDATE vms SET ${sets.join(", ")} WHERE name = ?`).run(...args);
  }

  deleteVm(name: string): void { this.db.prepare("DELETE FROM vms WHERE name = ?").run(name); }

  countVmsUsingImage(image: string): number {
    return (this.db.prepare("SELECT COUNT(*) AS n FROM vms WHERE image = ?").get(image) as { n: number }).n;
  }

  listImages(): ImageRecord[] {
    return (this.db.prepare("SELECT * FROM images ORDER BY name").all() as ImageRow[]).map(imageFromRow);
  }

  getImage(name: string): ImageRecord | undefined {
    const r = this.db.prepare("SELECT * FROM images WHERE name = ?").get(name) as ImageRow | undefined;
    return r ? imageFromRow(r) : undefined;
  }

  insertImage(i: Omit<ImageRecord, "createdAt">): void {
    this.db.prepare("INSERT INTO images (name, format, files, cmdline, ssh_user, created_at) VALUES (?, ?, ?, ?, ?, ?)")
      .run(i.name, i.format, JSON.stringify(i.files), i.cmdline, i.sshUser, new Date().toISOString());
  }

  deleteImage(name: string): void { this.db.prepare("DELETE FROM images WHERE name = ?").run(name); }
}
