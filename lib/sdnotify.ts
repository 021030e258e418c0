import { execFile } from "node:child_process";
import type { Logger } from "./log.js";

/**
 * sd_notify(3) for a hub or cog run by systemd with Type=notify (deploy/*.service):
 * READY=1 once it serves, RELOADING=1 … READY=1 around a reload, STOPPING=1 when it
 * drains, each with a STATUS= line that `systemctl status` shows.
 *
 * The protocol is one datagram on the AF_UNIX socket in $NOTIFY_SOCKET, and Node has
 * no unix datagram sockets, so systemd-notify(1) sends it (it is part of systemd:
 * wherever NOTIFY_SOCKET is set, it is there). Two things make that sound:
 * - the datagram comes from systemd-notify's pid, not the main pid, so the units say
 *   NotifyAccess=all (any process of the service's cgroup; the cog's VMs are in scopes
 *   of their own, provisioner/scope.ts, and cannot speak for it);
 * - systemd looks a sender up by its pid when the datagram is processed, which once
 *   raced systemd-notify's exit; since systemd 246 systemd-notify waits for the
 *   manager to have processed it (a BARRIER=1 round trip) before it exits.
 * Without NOTIFY_SOCKET (not under systemd, or Type=exec) nothing runs at all.
 */

/** systemd-notify, on PATH. */
export const SYSTEMD_NOTIFY_BINARY = "systemd-notify";
/** One notification: the barrier round trip takes milliseconds; a stuck manager must not hold a reload or a drain. */
export const SD_NOTIFY_TIMEOUT_MS = 5000;

/** `fields`: READY=1, STATUS=…; returns when systemd has processed them (or they failed, logged). */
export function sdNotify(fields: string[], log: Logger, env: NodeJS.ProcessEnv = process.env): Promise<void> {
  if (!env.NOTIFY_SOCKET) return Promise.resolve();
  // STATUS= is one line for systemctl status; the datagram is newline-separated.
  const clean = fields.map((f) => f.replace(/[\r\n]+/g, " "));
  return new Promise((resolve) => {
    execFile(SYSTEMD_NOTIFY_BINARY, clean, { env, timeout: SD_NOTIFY_TIMEOUT_MS, killSignal: "SIGKILL" }, (err, _stdout, stderr) => {
      if (err) log.warn("could not notify systemd", { fields: clean.join(" "), error: String(stderr).trim() || err.message });
      resolve();
    });
  });
}
