/**
 * `capsul demo` (what `npm start` runs), as a user would try it: start it, run
 * every command it prints exactly as printed, then stop it with Ctrl-C or
 * SIGTERM and check it exits 0, closes its ports and removes its temp dir.
 */
import t, { type Test } from "tap";
import fs from "node:fs";
import net from "node:net";
import { probePort, runProgram, spawnCli, WAIT_MS, type CliProc } from "./helpers/procs.js";
import { Scrape } from "./helpers/promtext.js";

interface Printed {
  tls: number;
  http: number;
  tunnel: number;
  dir: string;
  curls: string[][];
  telnet: number;
  nope: string[];
  /** The status page URL and the /metrics command, as printed. */
  status: string;
  metrics: string[];
}

/** Reads what the demo printed: its ports, data dir and the commands to try. */
function parseDemo(stdout: string[]): Printed {
  const text = stdout.join("\n");
  const ports = /TLS \(by SNI\) on :(\d+), HTTP \(by Host\) on :(\d+), tunnel on :(\d+)\. Data in (\S+)\./.exec(text);
  if (!ports) throw new Error(`no ports line in:\n${text}`);
  const commands = stdout.filter((l) => l.startsWith("  curl")).map((l) => l.trim().split(/\s+/));
  const telnet = commands.find((c) => c.some((a) => a.startsWith("telnet://")));
  const nope = commands.find((c) => c.some((a) => a.includes("://nope.")));
  const metrics = commands.find((c) => c.some((a) => a.endsWith("/metrics")));
  const curls = commands.filter((c) => c !== telnet && c !== nope && c !== metrics);
  const status = stdout.map((l) => /^ {2}(http:\/\/127\.0\.0\.1:\d+\/)$/.exec(l)?.[1]).find(Boolean);
  if (!status || !metrics) throw new Error(`missing the status page URL or the metrics command in:\n${text}`);
  const telnetPort = /^telnet:\/\/127\.0\.0\.1:(\d+)$/.exec(telnet?.find((a) => a.startsWith("telnet://")) ?? "");
  if (!telnetPort || !nope) throw new Error(`missing telnet or nope command in:\n${text}`);
  return {
    tls: Number(ports[1]), http: Number(ports[2]), tunnel: Number(ports[3]), dir: ports[4]!.replace(/\.$/, ""),
    curls, telnet: Number(telnetPort[1]), nope, status, metrics,
  };
}

/** Runs a printed curl command as printed (argv split on spaces), bounded and with errors on stderr. */
function runPrinted(argv: string[]): ReturnType<typeof runProgram> {
  const [cmd, ...args] = argv;
  return runProgram(cmd!, ["-sS", "--max-time", "20", ...args]);
}

/** The echo route: read the greeting, send a line, read it back, hang up. */
function echoSession(port: number, line: string): Promise<{ greeting: string; echo: string }> {
  return new Promise((resolve, reject) => {
    const s = net.connect({ port, host: "127.0.0.1" });
    let buf = "";
    let greeting: string | null = null;
    const timer = setTimeout(() => { s.destroy(); reject(new Error(`echo session stuck; got ${JSON.stringify(buf)}`)); }, WAIT_MS);
    s.setEncoding("utf8");
    s.on("error", (err) => { clearTimeout(timer); reject(err); });
    s.on("data", (chunk: string) => {
      buf += chunk;
      if (greeting === null) {
        const nl = buf.indexOf("\n");
        if (nl < 0) return;
        greeting = buf.slice(0, nl + 1);
        buf = buf.slice(nl + 1);
        s.write(line);
      }
      if (buf.length >= line.length) {
        clearTimeout(timer);
        s.end();
        resolve({ greeting, echo: buf });
      }
    });
  });
}

async function startDemo(t: Test): Promise<{ demo: CliProc; printed: Printed }> {
  const demo = spawnCli(t, "demo", ["demo"]);
  await demo.waitLine(/^Press Ctrl-C to stop\.$/, { stream: "stdout" });
  const printed = parseDemo(demo.out.stdout);
  t.teardown(() => fs.rmSync(printed.dir, { recursive: true, force: true }));
  return { demo, printed };
}

async function tryEverything(t: Test, printed: Printed): Promise<void> {
  t.equal(printed.curls.length, 2, "two curl commands to paste, besides telnet and nope");
  const https = printed.curls.find((c) => c.some((a) => a.startsWith("https://")));
  const http = printed.curls.find((c) => c.some((a) => a.startsWith("http://")));
  t.ok(https && http, "one HTTPS and one HTTP command");
  t.ok(https!.includes("--cacert") && !https!.includes("-k"), "the HTTPS one verifies the backend's certificate");

  const s = await runPrinted(https!);
  t.equal(s.code, 0, s.stderr);
  t.match(s.stdout, /<h1>Hello over HTTPS from a capsul<\/h1>/, "the HTTPS page, end to end");
  t.match(s.stdout, new RegExp(`You asked for web\\.home1\\.demo\\.capsul\\.test:${printed.tls}/`));

  const h = await runPrinted(http!);
  t.equal(h.code, 0, h.stderr);
  t.match(h.stdout, /<h1>Hello over HTTP from a capsul<\/h1>/, "the HTTP page, end to end");
  t.match(h.stdout, new RegExp(`blog\\.home1\\.demo\\.capsul\\.test:${printed.http}`));

  const e = await echoSession(printed.telnet, "is anybody home?\n");
  t.match(e.greeting, /^hello 127\.0\.0\.1:\d+, this is an echo server on a cog/, "the echo server greets with the visitor's real address (PROXY v2)");
  t.equal(e.echo, "is anybody home?\n", "and echoes");

  const n = await runPrinted(printed.nope);
  t.not(n.code, 0, "the unknown name is refused");
  t.match(n.stderr, /unrecognized name/i);

  // The printed /metrics command: every visitor above, counted once.
  const m = await runPrinted(printed.metrics);
  t.equal(m.code, 0, m.stderr);
  const sc = new Scrape(m.stdout);
  const conns = (route: string, kind: string): number | undefined => sc.value("capsul_hub_connections_total", { cog: "home1", route, kind });
  t.equal(conns("web", "tls"), 1, "the HTTPS command");
  t.equal(conns("blog", "http"), 1, "the HTTP command");
  t.equal(conns("echo", "tcp"), 1, "the echo session");
  t.equal(sc.value("capsul_hub_routing_total", { outcome: "no_route" }), 1, "the unknown name");
  t.equal(sc.value("capsul_cog_tunnel_up"), 1, "the cog's metrics are in the same registry");
  t.ok(sc.families.has("process_cpu_user_seconds_total"), "with the default Node metrics");
  // The printed status page shows the cog and its routes.
  const page = await runProgram("curl", ["-sS", "--max-time", "20", printed.status]);
  t.equal(page.code, 0, page.stderr);
  t.match(page.stdout, /<title>capsul hub · demo\.capsul\.test<\/title>/);
  for (const r of ["web", "blog", "echo"]) t.match(page.stdout, `data-route="home1/${r}"`, `the status page lists ${r}`);
}

async function stopAndCheck(t: Test, demo: CliProc, printed: Printed, signal: NodeJS.Signals): Promise<void> {
  t.ok(fs.existsSync(printed.dir), "the temp dir exists while the demo runs");
  t.equal(await probePort(printed.tls), "connected", "the TLS port is open while the demo runs");
  demo.kill(signal);
  const ex = await demo.waitExit();
  t.same(ex, { code: 0, signal: null }, `exits 0 on ${signal}`);
  for (const [what, port] of [["tls", printed.tls], ["http", printed.http], ["tunnel", printed.tunnel], ["echo", printed.telnet]] as const) {
    t.equal(await probePort(port), "ECONNREFUSED", `the ${what} port ${port} is closed`);
  }
  t.notOk(fs.existsSync(printed.dir), "the temp dir is removed");
  t.notMatch(demo.text("stderr"), /Error|^\s+at /m, "no error on the way out");
}

t.test("capsul demo: every printed command works; SIGTERM stops it cleanly", async (t) => {
  const { demo, printed } = await startDemo(t);
  await tryEverything(t, printed);
  await stopAndCheck(t, demo, printed, "SIGTERM");
});

t.test("capsul demo: Ctrl-C (SIGINT) stops it cleanly too", async (t) => {
  const { demo, printed } = await startDemo(t);
  // One request through, so the stop happens with a live tunnel that has carried traffic.
  const h = await runPrinted(printed.curls.find((c) => c.some((a) => a.startsWith("http://")))!);
  t.match(h.stdout, /Hello over HTTP/, h.stderr);
  await stopAndCheck(t, demo, printed, "SIGINT");
});
