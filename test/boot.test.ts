/**
 * provisioner/boot.ts reads cloud-init's progress from the serial console.
 * The console lines here are the Debian 12 image's, as the provisioner's
 * console.log recorded them under TCG (login prompt and all).
 */
import t from "tap";
import { BOOT_SCAN_MAX_LINE_CHARS, BootProgress, progressFromConsole } from "../provisioner/boot.js";

const BOOT = [
  "[    0.000000] Linux version 6.1.0-57-amd64 (debian-kernel@lists.debian.org) (gcc-12 (Debian 12.2.0-14+deb12u1) 12.2.0) #1 SMP PREEMPT_DYNAMIC Debian 6.1.192-3",
  "[   20.388663] EXT4-fs (vda1): mounted filesystem with ordered data mode. Quota mode: none.",
  "\x1b[0;32m  OK  \x1b[0m] Finished \x1b[0;1;39mcloud-init-local.…l cloud-init job (pre-networking).",
  "[   43.378054] cloud-init[259]: Cloud-init v. 22.4.2 running 'init-local' at Mon, 30 Nov 2026 20:28:58 +0000. Up 42.74 seconds.",
  "[   75.679961] cloud-init[317]: Cloud-init v. 22.4.2 running 'init' at Mon, 30 Nov 2026 20:29:29 +0000. Up 74.43 seconds.",
  // The login prompt has no newline: cloud-init's next line is appended to it.
  "deb1 login: [  157.375945] cloud-init[437]: Cloud-init v. 22.4.2 running 'modules:config' at Mon, 30 Nov 2026 20:30:49 +0000. Up 154.07 seconds.",
  "[  201.934402] cloud-init[472]: Cloud-init v. 22.4.2 running 'modules:final' at Mon, 30 Nov 2026 20:31:36 +0000. Up 200.52 seconds.",
];
const FINISHED = "[  208.042223] cloud-init[472]: Cloud-init v. 22.4.2 finished at Mon, 30 Nov 2026 20:31:43 +0000. Datasource DataSourceNoCloud [seed=/dev/vdb][dsmode=net].  Up 207.90 seconds";
const console1 = [...BOOT, FINISHED].join("\r\n") + "\r\n";

t.test("running, then done: fed whole, byte by byte, and in random pieces", async (t) => {
  const splits: Array<[string, (s: string) => string[]]> = [
    ["whole", (s) => [s]],
    ["byte at a time", (s) => s.split("")],
    ["random pieces", (s) => {
      const out: string[] = [];
      let seed = 7;
      for (let i = 0; i < s.length;) {
        seed = (seed * 1103515245 + 12345) % 2 ** 31;
        const n = 1 + (seed % 97);
        out.push(s.slice(i, i + n));
        i += n;
      }
      return out;
    }],
  ];
  // Everything but the newline that ends the finished line, then that newline.
  const head = console1.slice(0, -1);
  for (const [how, split] of splits) {
    const p = new BootProgress(Date.now());
    let sawRunning = false;
    for (const piece of split(head)) {
      p.feed(Buffer.from(piece, "latin1"));
      if (p.cloudInit === "running") sawRunning = true;
    }
    t.ok(sawRunning, `${how}: running seen`);
    t.equal(p.cloudInit, "running", `${how}: not done before the finished line is complete`);
    p.feed(Buffer.from("\n"));
    t.equal(p.cloudInit, "done", `${how}: done`);
    t.ok(p.cloudInitDoneAt !== null);
  }
});

t.test("the finished line only counts as a whole line", async (t) => {
  const p = new BootProgress(Date.now());
  p.feedText(BOOT.join("\n") + "\n" + FINISHED.slice(0, 60));
  t.equal(p.cloudInit, "running", "half a finished line is not finished");
  p.feedText(FINISHED.slice(60) + "\n");
  t.equal(p.cloudInit, "done");
});

t.test("no cloud-init on the console: nothing is claimed", async (t) => {
  const p = new BootProgress(Date.now());
  p.feedText("[    0.000000] Linux version 6.1.0\ncapsul-test-image: ready hostname=web1\n");
  t.equal(p.cloudInit, null);
  t.same(p.view(), { started_at: p.view().started_at, ssh_at: null, cloud_init: null, cloud_init_done_at: null });
  t.match(p.view().started_at, /^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z$/);
});

t.test("a reset starts a new boot; done is not undone by a stale running line", async (t) => {
  const p = new BootProgress(1000);
  p.feedText(console1);
  p.sshAt = 2000;
  t.equal(p.cloudInit, "done");
  p.feedText(BOOT[3] + "\n");
  t.equal(p.cloudInit, "done", "a running line after finished (a guest echoing old output) keeps done");
  p.restart(5000);
  t.same([p.startedAt, p.sshAt, p.cloudInit, p.cloudInitDoneAt], [5000, null, null, null]);
  p.feedText(BOOT.slice(0, 4).join("\n") + "\n");
  t.equal(p.cloudInit, "running", "the new boot's cloud-init");
});

t.test("a guest that never sends a newline cannot grow the line buffer", async (t) => {
  const p = new BootProgress(Date.now());
  for (let i = 0; i < 1000; i++) p.feedText("x".repeat(1000));
  t.ok((p as unknown as { partial: string }).partial.length <= BOOT_SCAN_MAX_LINE_CHARS);
  // The end of an over-long line still counts (the marker is near its end).
  p.feedText(FINISHED + "\n");
  t.equal(p.cloudInit, "done");
});

t.test("re-adoption reads the current boot from the console log's tail", async (t) => {
  const twoBoots = console1 + "[  249.325341] reboot: Restarting system\r\n" + BOOT.slice(0, 5).join("\r\n") + "\r\n";
  const p = progressFromConsole(twoBoots);
  t.equal(p.cloudInit, "running", "the last boot is still in cloud-init; the first one's finished line does not count");
  t.equal(p.startedAt, null, "when it started is not known");
  t.equal(progressFromConsole(console1).cloudInit, "done");
  t.equal(progressFromConsole("[  77.0] cloud-init[1]: Cloud-init v. 22.4.2 finished at now\n").cloudInit, null,
    "no kernel banner in the tail: nothing known");
});
