/**
 * The status page in a real browser: Debian's chromium driven by playwright-core, at a
 * phone's size, during live traffic through a real hub and cog. The page must show the
 * cog, its routes and counters, change them by reloading itself (we never reload it),
 * load nothing but itself, and fit a 390 px screen. Screenshots are kept under
 * .tap/artifacts/ (gitignored) for a human to look at.
 */
import t from "tap";
import fs from "node:fs";
import net from "node:net";
import os from "node:os";
import path from "node:path";
import { chromium, type BrowserContext } from "playwright-core";
import { closeServer, cogConfig, enrolledCog, httpBackend, HUB_DOMAIN, hubConfig, listen, startTestHub, tlsBackend, tmpDir } from "./helpers/cluster.js";
import { freePortRange, REPO } from "./helpers/procs.js";
import { rawExchange } from "./helpers/adminclient.js";

const CHROMIUM = "/usr/bin/chromium";
const ARTIFACTS = path.join(REPO, ".tap", "artifacts");
/** How long the page may take to show a change: a few of its 1 s reloads on a busy machine. */
const PAGE_WAIT_MS = 30_000;

/** Chromium with a fresh profile, removed once the browser has exited. */
async function launch(): Promise<{ ctx: BrowserContext; close(): Promise<void> }> {
  const userDataDir = fs.mkdtempSync(path.join(os.tmpdir(), "capsul-chromium-"));
  const ctx = await chromium.launchPersistentContext(userDataDir, {
    executablePath: CHROMIUM,
    headless: true,
    args: ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update", "--disable-sync", "--no-first-run"],
    viewport: { width: 390, height: 844 },
    isMobile: true,
    hasTouch: true,
  });
  return {
    ctx,
    async close() {
      await ctx.close();
      // The browser's helpers may still be flushing its cache for a moment after it exits.
      fs.rmSync(userDataDir, { recursive: true, force: true, maxRetries: 10, retryDelay: 100 });
    },
  };
}

/**
 * A screenshot of the page as it is now, in a page of its own whose copy has the self-reload
 * removed: the tested page reloads every second, and on a busy machine a screenshot taking
 * longer than that was cut by the reload and timed out (30 s). Everything else is the hub's answer.
 */
async function snapshot(ctx: BrowserContext, url: string, file: string, viewport?: { width: number; height: number }): Promise<void> {
  const page = await ctx.newPage();
  try {
    if (viewport) await page.setViewportSize(viewport);
    await page.route(url, async (route) => {
      const res = await route.fetch();
      const body = (await res.text()).replace(/<meta http-equiv="refresh"[^>]*>/, "");
      await route.fulfill({ response: res, body });
    });
    await page.goto(url);
    await page.screenshot({ path: path.join(ARTIFACTS, file), fullPage: true });
  } finally {
    await page.close();
  }
}

t.test("status page: cogs, routes and counters appear and change during live traffic, on a phone", async (t) => {
  const dir = tmpDir("capsul-statuspage-");
  t.teardown(() => fs.rmSync(dir, { recursive: true, force: true }));
  const pool = await freePortRange(4);
  const hubCfg = hubConfig(dir, { listen: { tcp_ports: [pool.spec] }, admin: { status_refresh: "1s" } });
  const hub = await startTestHub(hubCfg);
  t.teardown(() => hub.close());
  const web = `web.c1.${HUB_DOMAIN}`;
  const blog = `blog.c1.${HUB_DOMAIN}`;
  const tlsB = await tlsBackend(dir, web, "web");
  const httpB = await httpBackend("blog");
  const echo = net.createServer((s) => { s.on("error", () => {}); s.pipe(s); });
  const echoPort = await listen(echo);
  t.teardown(async () => { await tlsB.close(); await httpB.close(); await closeServer(echo); });
  const cog = await enrolledCog(hubCfg, hub, cogConfig(dir, "c1", hub.ports.tunnel, [
    { name: "web", kind: "tls", hostname: web, target: `127.0.0.1:${tlsB.port}` },
    { name: "blog", kind: "http", hostname: blog, target: `127.0.0.1:${httpB.port}` },
    { name: "echo", kind: "tcp", target: `127.0.0.1:${echoPort}` },
  ]), "c1");
  t.teardown(() => cog.close());
  const st = cog.client.status("echo");
  if (st.state !== "accepted") throw new Error(`echo not accepted: ${JSON.stringify(st)}`);

  const browser = await launch();
  t.teardown(() => browser.close());
  const ctx = browser.ctx;
  const page = await ctx.newPage();
  const base = `http://127.0.0.1:${hub.ports.admin}/`;
  const requests: string[] = [];
  const problems: string[] = [];
  let loads = 0;
  page.on("request", (r) => requests.push(r.url()));
  page.on("console", (m) => { if (m.type() === "error" || m.type() === "warning") problems.push(m.text()); });
  page.on("pageerror", (e) => problems.push(e.message));
  page.on("load", () => { loads++; });

  await page.goto(base);
  t.equal(await page.title(), `capsul hub · ${HUB_DOMAIN}`);
  t.equal(await page.locator('[data-cog="c1"]').getAttribute("data-state"), "online", "the cog, online");
  for (const r of ["web", "blog", "echo"]) t.equal(await page.locator(`[data-route="c1/${r}"]`).count(), 1, `route ${r} listed`);
  t.equal(await page.locator('[data-route="c1/blog"]').getAttribute("data-connections"), "0");
  t.equal(await page.locator('[data-tile="visitors"] b').textContent(), "0");
  await fs.promises.mkdir(ARTIFACTS, { recursive: true });
  await snapshot(ctx, base, "statuspage-idle-phone.png");

  // Live traffic: one echo connection kept busy, three HTTP visitors, one unknown name.
  const live = net.connect({ port: st.port!, host: "127.0.0.1" });
  live.on("error", () => {});
  live.on("data", () => {});
  t.teardown(() => live.destroy());
  await new Promise<void>((resolve) => live.once("connect", () => resolve()));
  const chunk = Buffer.alloc(32 * 1024, 1);
  const pump = setInterval(() => live.write(chunk), 20);
  t.teardown(() => clearInterval(pump));
  for (let i = 0; i < 3; i++) t.match(await rawExchange(hub.ports.http!, `GET / HTTP/1.0\r\nHost: ${blog}\r\n\r\n`), /^HTTP\/1\.1 200 /);
  t.match(await rawExchange(hub.ports.http!, "GET / HTTP/1.0\r\nHost: nobody.example\r\n\r\n"), /^HTTP\/1\.1 404 /);

  // The page reloads itself and shows it all; we never call reload().
  const loadsBefore = loads;
  await page.locator('[data-route="c1/blog"][data-connections="3"]').waitFor({ timeout: PAGE_WAIT_MS });
  await page.locator('[data-route="c1/echo"][data-active="1"]').waitFor({ timeout: PAGE_WAIT_MS });
  await page.locator('[data-cog="c1"][data-streams="1"]').waitFor({ timeout: PAGE_WAIT_MS });
  await page.locator('[data-counter="visitors:no_route"] td', { hasText: /^1$/ }).waitFor({ timeout: PAGE_WAIT_MS });
  await page.locator('[data-tile="traffic"] b', { hasText: /^[1-9][\d.]* (B|KiB|MiB|GiB)\/s$/ }).waitFor({ timeout: PAGE_WAIT_MS });
  await page.locator('[data-route="c1/echo"] td.rate', { hasText: /[1-9][\d.]* (B|KiB|MiB|GiB)\/s/ }).waitFor({ timeout: PAGE_WAIT_MS });
  t.ok(loads > loadsBefore, `the page reloaded itself (${loads - loadsBefore} times)`);
  t.equal(await page.locator('[data-tile="visitors"] b').textContent(), "1", "one visitor now: the live echo connection");
  const echoBytes = Number(await page.locator('[data-route="c1/echo"]').getAttribute("data-bytes"));
  t.ok(echoBytes > 0, `echo bytes shown: ${echoBytes}`);
  await snapshot(ctx, base, "statuspage-live-phone.png");

  // Readable on a phone: nothing wider than the screen (the routes table scrolls in its own box).
  const layout = await page.evaluate(() => ({
    scrollWidth: document.documentElement.scrollWidth,
    innerWidth: window.innerWidth,
    fontPx: parseFloat(getComputedStyle(document.body).fontSize),
    tableInScroller: !!document.querySelector(".scroll > table"),
  }));
  t.ok(layout.scrollWidth <= layout.innerWidth, `no sideways scrolling of the page (${layout.scrollWidth} <= ${layout.innerWidth})`);
  t.ok(layout.fontPx >= 14, `body text ${layout.fontPx}px`);
  t.ok(layout.tableInScroller);

  await snapshot(ctx, base, "statuspage-live-desktop.png", { width: 1280, height: 800 });
  for (const f of ["statuspage-idle-phone.png", "statuspage-live-phone.png", "statuspage-live-desktop.png"]) {
    const png = fs.readFileSync(path.join(ARTIFACTS, f));
    t.ok(png.length > 1000 && png.subarray(1, 4).toString() === "PNG", `${f} kept in .tap/artifacts`);
  }

  t.same(requests.filter((u) => !u.startsWith(base)), [], "the page loads nothing from anywhere else");
  t.ok(requests.length >= 2, `${requests.length} page loads, all from the hub`);
  t.same(problems, [], "no console errors (a CSP violation would be one)");
  clearInterval(pump);
});
