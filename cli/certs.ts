/**
 * `capsul cog certs` and `capsul hub certs`: the certificates ACME got for this cog's
 * `tls: terminate` routes, or for the hub's admin listener (hub.admin.tls: acme), read
 * from the data dir (names, issuer, expiry, renewal state, last error). `--json` prints
 * the same rows with snake_case keys and ISO-8601 times.
 */
import fs from "node:fs";
import type { CertRow } from "../certs/acme.js";
import { certFacts } from "../certs/acme-store.js";
import { RuntimeError } from "../lib/errors.js";
import { fmtDuration } from "../certs/acme-schedule.js";
import { table } from "./common.js";

export function certRowsJson(rows: readonly CertRow[]): Record<string, unknown>[] {
  return rows.map((r) => ({
    name: r.name, names: r.names, issuer: r.issuer, not_before: r.notBefore, not_after: r.notAfter, serial: r.serial,
    directory_url: r.directoryUrl, state: r.state, challenge: r.challenge, renew_at: r.renewAt, next_attempt_at: r.nextAttemptAt,
    failures: r.failures, last_error: r.lastError, last_error_kind: r.lastErrorKind, last_error_at: r.lastErrorAt, last_issued_at: r.lastIssuedAt,
  }));
}

/** The row of a certificate the operator provides (hub.admin.cert_file): its facts, state "file". */
export function fileCertRow(file: string): CertRow {
  let f;
  try {
    f = certFacts(fs.readFileSync(file, "utf8"));
  } catch (err) {
    throw new RuntimeError(`cannot read hub.admin.cert_file ${file}: ${(err as NodeJS.ErrnoException).code ?? (err as Error).message}`, { cause: err });
  }
  return {
    name: f.names[0] ?? file, names: f.names, issuer: f.issuer, notBefore: f.notBefore.toISOString(), notAfter: f.notAfter.toISOString(),
    serial: f.serial, directoryUrl: null, state: "file", challenge: null, renewAt: null, nextAttemptAt: null, failures: 0,
    lastError: null, lastErrorKind: null, lastErrorAt: null, lastIssuedAt: null,
  };
}

/** "in 3d 4h" / "2h 5m ago" relative to `nowMs`. */
function when(iso: string | null, nowMs: number): string {
  if (!iso) return "-";
  const d = Date.parse(iso) - nowMs;
  return d >= 0 ? `in ${fmtDuration(d)}` : `${fmtDuration(-d)} ago`;
}

const NO_COG_CERTS = "No certificates. A route with `tls: terminate` makes the cog get one (see capsul.yaml.example).";
export const NO_HUB_CERTS = "No certificates. hub.admin.tls: acme with hub.admin.hostname makes the hub get one for its admin listener (see capsul.yaml.example).";

export function certRowsTable(rows: readonly CertRow[], nowMs = Date.now(), empty = NO_COG_CERTS): string {
  if (rows.length === 0) return empty;
  const out = rows.map((r) => {
    const renewal = r.state === "scheduled" ? `scheduled, renews ${when(r.renewAt, nowMs)}`
      : r.state === "retrying" ? `retrying ${when(r.nextAttemptAt, nowMs)} (${r.failures} failed)`
        : r.state === "file" ? "file (not renewed by capsul)" : r.state;
    const expiry = r.notAfter ? `${r.notAfter.slice(0, 19).replace("T", " ")}Z (${when(r.notAfter, nowMs)})` : "-";
    const error = r.lastError ? `${r.lastErrorKind ?? "error"}: ${r.lastError}` : "-";
    return [r.name, r.issuer ?? "-", expiry, renewal, error];
  });
  return table(["NAME", "ISSUER", "EXPIRES", "RENEWAL", "LAST ERROR"], out);
}
