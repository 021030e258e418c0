/**
 * The hub's status page: one server-rendered HTML page (GET / on the admin listener)
 * with cogs, routes, live connections and traffic at a glance. It reloads itself with
 * <meta http-equiv="refresh">, so it needs no script; its style is inline, so it loads
 * nothing from anywhere (the CSP says so too); it reads on a 360 px phone screen (cards
 * that wrap, a routes table that scrolls sideways inside its own box).
 */
import type { CogJson, RouteJson, StatusJson } from "./adminviews.js";

/** Default reload interval of the page (hub.admin.status_refresh). */
export const STATUS_REFRESH_MS = 5_000;

/** Headers the page is served with: nothing external may load, nothing may frame it. */
export const STATUS_PAGE_HEADERS: Record<string, string> = {
  "content-type": "text/html; charset=utf-8",
  "content-security-policy": "default-src 'none'; style-src 'unsafe-inline'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'",
  "x-content-type-options": "nosniff",
  "referrer-policy": "no-referrer",
  "cache-control": "no-store",
};

const esc = (s: string): string => s.replace(/[&<>"']/g, (c) => `&#${c.charCodeAt(0)};`);

const UNITS = ["B", "KiB", "MiB", "GiB", "TiB", "PiB"];
export function fmtBytes(n: number): string {
  let i = 0;
  let v = n;
  while (v >= 1024 && i < UNITS.length - 1) { v /= 1024; i++; }
  return i === 0 ? `${v} B` : `${v.toFixed(v < 10 ? 1 : 0)} ${UNITS[i]}`;
}

function fmtAge(seconds: number): string {
  const s = Math.max(0, Math.floor(seconds));
  if (s < 120) return `${s}s`;
  if (s < 7200) return `${Math.floor(s / 60)}m`;
  if (s < 172800) return `${Math.floor(s / 3600)}h ${Math.floor((s % 3600) / 60)}m`;
  return `${Math.floor(s / 86400)}d ${Math.floor((s % 86400) / 3600)}h`;
}

/** Bytes per second per route, from the totals of the previous render (one meter per admin listener). */
export class TrafficMeter {
  private last: { at: number; totals: Map<string, number> } | null = null;
  private rates = new Map<string, number>();

  /** Updates from `totals` (bytes both ways, per key); a render within a second of the last keeps its rates. */
  sample(totals: Map<string, number>, now: number): ReadonlyMap<string, number> {
    const last = this.last;
    if (last && now - last.at < 1000) return this.rates;
    const rates = new Map<string, number>();
    if (last) {
      const dt = (now - last.at) / 1000;
      for (const [k, v] of totals) rates.set(k, Math.max(0, v - (last.totals.get(k) ?? v)) / dt);
    }
    this.last = { at: now, totals };
    this.rates = rates;
    return rates;
  }
}

const routeKey = (cog: string, r: RouteJson): string => `${cog}/${r.name}/${r.kind}`;

function stateBadge(c: CogJson): string {
  return `<span class="badge ${c.state}">${c.state}</span>`;
}

function cogCard(c: CogJson, nowMs: number): string {
  const since = c.state_changed_at ? `${c.state} for ${fmtAge((nowMs - Date.parse(c.state_changed_at)) / 1000)}` : c.state;
  const cert = c.cert_expires_at
    ? `${c.cert_expires_at.slice(0, 10)} (${Math.floor((Date.parse(c.cert_expires_at) - nowMs) / 86_400_000)} d)`
    : "—";
  return `<article class="card" data-cog="${esc(c.name)}" data-state="${c.state}" data-streams="${c.streams}">
<h3>${esc(c.name)} ${stateBadge(c)}</h3>
<dl>
<dt>since</dt><dd>${esc(since)}</dd>
<dt>address</dt><dd>${esc(c.address ?? "—")}</dd>
<dt>certificate</dt><dd>${esc(cert)}</dd>
<dt>routes</dt><dd>${c.routes.length}</dd>
<dt>streams now</dt><dd class="num">${c.streams}</dd>
<dt>connections</dt><dd class="num">${c.connections_total}</dd>
<dt>traffic</dt><dd class="num">↓ ${fmtBytes(c.bytes.received)} · ↑ ${fmtBytes(c.bytes.sent)}</dd>
</dl>
</article>`;
}

function routeRow(c: CogJson, r: RouteJson, rate: number | undefined, maxRate: number): string {
  const target = r.kind === "tcp" ? `:${r.port ?? "?"}` : r.hostname ?? "";
  const width = maxRate > 0 && rate ? Math.max(2, Math.round((rate / maxRate) * 100)) : 0;
  const rateText = rate === undefined ? "—" : `${fmtBytes(Math.round(rate))}/s`;
  return `<tr data-route="${esc(`${c.name}/${r.name}`)}" data-connections="${r.connections_total}" data-active="${r.connections_active}" data-bytes="${r.bytes.received + r.bytes.sent}">
<td>${esc(c.name)}</td><td>${esc(r.name)}${r.held ? "" : " <small>(withdrawn)</small>"}</td>
<td class="num">${r.connections_active}</td><td class="num">${r.connections_total}</td>
<td class="rate"><span class="bar" style="width:${width}%"></span><span>${rateText}</span></td>
<td class="num">${fmtBytes(r.bytes.received)}</td><td class="num">${fmtBytes(r.bytes.sent)}</td>
<td>${r.kind}</td><td class="name">${esc(target)}</td>
</tr>`;
}

/** A small table of counters; each row is data-counter="<group>:<name>" for the tests. */
function counters(title: string, group: string, rows: Array<[string, number]>): string {
  return `<table class="small"><caption>${esc(title)}</caption><tbody>${rows.map(([k, v]) => `<tr data-counter="${esc(`${group}:${k}`)}"><th>${esc(k.replace(/_/g, " "))}</th><td class="num">${v}</td></tr>`).join("")}</tbody></table>`;
}

const STYLE = `
:root{color-scheme:light dark;--bg:#fafafa;--fg:#1b1b1f;--muted:#6b6b76;--card:#fff;--line:#e3e3e8;--accent:#2f6fde;--ok:#1f8a4c;--warn:#b7791f;--bad:#c53030}
@media (prefers-color-scheme:dark){:root{--bg:#141418;--fg:#ececf1;--muted:#9a9aa6;--card:#1e1e24;--line:#30303a;--accent:#6b9cff}}
*{box-sizing:border-box}body{margin:0;padding:1rem;font:15px/1.4 system-ui,-apple-system,"Segoe UI",Roboto,sans-serif;background:var(--bg);color:var(--fg)}
header h1{margin:0;font-size:1.3rem}header h1 span{color:var(--muted);font-weight:400}header p{margin:.2rem 0 1rem;color:var(--muted);font-size:.85rem}
h2{font-size:1.05rem;margin:1.4rem 0 .5rem}
.tiles{display:grid;grid-template-columns:repeat(auto-fit,minmax(9rem,1fr));gap:.6rem}
.tile{background:var(--card);border:1px solid var(--line);border-radius:.6rem;padding:.6rem .8rem}.tile b{display:block;font-size:1.4rem}.tile span{color:var(--muted);font-size:.85rem}
.cards{display:grid;grid-template-columns:repeat(auto-fill,minmax(17rem,1fr));gap:.6rem}
.card{background:var(--card);border:1px solid var(--line);border-radius:.6rem;padding:.7rem .9rem}.card h3{margin:0 0 .4rem;font-size:1.05rem}
dl{display:grid;grid-template-columns:auto 1fr;gap:.15rem .8rem;margin:0;font-size:.9rem}dt{color:var(--muted)}dd{margin:0;overflow-wrap:anywhere}
.badge{font-size:.75rem;font-weight:600;padding:.1rem .45rem;border-radius:1rem;vertical-align:middle;color:#fff;background:var(--muted)}
.badge.online{background:var(--ok)}.badge.reconnecting{background:var(--warn)}.badge.revoked{background:var(--bad)}
.scroll{overflow-x:auto;background:var(--card);border:1px solid var(--line);border-radius:.6rem}
table{border-collapse:collapse;width:100%;font-size:.9rem}th,td{padding:.4rem .6rem;text-align:left;border-bottom:1px solid var(--line);white-space:nowrap}
thead th{color:var(--muted);font-weight:500}td.name{white-space:normal;overflow-wrap:anywhere;min-width:8rem}.num{text-align:right;font-variant-numeric:tabular-nums}
td.rate{position:relative;min-width:7rem}.bar{position:absolute;left:0;top:.3rem;bottom:.3rem;background:var(--accent);opacity:.25;border-radius:.2rem}td.rate span:last-child{position:relative}
.small{background:var(--card);border:1px solid var(--line);border-radius:.6rem;font-size:.85rem}.small caption{text-align:left;font-weight:600;padding:.3rem 0}
.small th,.small td{padding:.25rem .5rem}.small th{font-weight:400;color:var(--muted)}
.counters{display:grid;grid-template-columns:repeat(auto-fill,minmax(9.5rem,1fr));gap:.8rem;align-items:start}.empty{color:var(--muted)}
footer{margin-top:1.5rem;color:var(--muted);font-size:.85rem}a{color:var(--accent)}
`;

/** The whole page for one status snapshot. `rates` are bytes/s per route key since the previous render. */
export function renderStatusPage(s: StatusJson, refreshMs: number, meter: TrafficMeter): string {
  const now = Date.parse(s.hub.generated_at);
  const totals = new Map<string, number>();
  for (const c of s.cogs) for (const r of c.routes) totals.set(routeKey(c.name, r), r.bytes.received + r.bytes.sent);
  const rates = meter.sample(totals, now);
  let allRate: number | undefined;
  let maxRate = 0;
  for (const v of rates.values()) { allRate = (allRate ?? 0) + v; maxRate = Math.max(maxRate, v); }
  const online = s.cogs.filter((c) => c.online).length;
  const enrolled = s.cogs.filter((c) => c.state !== "invited" && c.state !== "revoked").length;
  const refused = Object.values(s.visitors.refused).reduce((a, b) => a + b, 0);
  const routeRows = s.cogs.flatMap((c) => c.routes.map((r) => routeRow(c, r, rates.get(routeKey(c.name, r)), maxRate)));
  const refresh = Math.round(refreshMs / 1000);
  const peekTables = Object.entries(s.visitors.peeks).map(([listener, o]) => counters(`${listener} peeks`, `peek-${listener}`, Object.entries(o)));
  return `<!doctype html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<meta http-equiv="refresh" content="${refresh}">
<title>capsul hub · ${esc(s.hub.domain)}</title>
<style>${STYLE}</style>
</head>
<body>
<header><h1>capsul hub <span>${esc(s.hub.domain)}</span></h1>
<p>${esc(s.hub.generated_at.slice(0, 19).replace("T", " "))} UTC · up ${fmtAge(s.hub.uptime_seconds)} · reloads every ${refresh}s</p></header>
<section class="tiles">
<div class="tile" data-tile="visitors"><b>${s.visitors.active}</b><span>visitors now</span></div>
<div class="tile" data-tile="cogs"><b>${online}/${enrolled}</b><span>cogs online</span></div>
<div class="tile" data-tile="traffic"><b>${allRate === undefined ? "—" : `${fmtBytes(Math.round(allRate))}/s`}</b><span>traffic now</span></div>
<div class="tile" data-tile="total"><b>${s.visitors.total}</b><span>visitors since start</span></div>
<div class="tile" data-tile="refused"><b>${refused}</b><span>refused</span></div>
</section>
<h2>Cogs</h2>
${s.cogs.length ? `<div class="cards">${s.cogs.map((c) => cogCard(c, now)).join("\n")}</div>` : `<p class="empty">No cogs yet: invite one with <code>capsul hub invite NAME</code>.</p>`}
<h2>Routes</h2>
${routeRows.length ? `<div class="scroll"><table><thead><tr><th>cog</th><th>route</th><th class="num">now</th><th class="num">total</th><th>rate</th><th class="num">received</th><th class="num">sent</th><th>kind</th><th>name / port</th></tr></thead>
<tbody>${routeRows.join("\n")}</tbody></table></div>` : `<p class="empty">No routes: no cog is connected.</p>`}
<h2>Refused and failed</h2>
<div class="counters">
${counters("visitors", "visitors", [["routed", s.visitors.routed], ...Object.entries(s.visitors.refused), ...Object.entries(s.visitors.cut)])}
${peekTables.join("\n")}
${counters("tunnels", "tunnels", [["up", s.tunnels.up], ["connects", s.tunnels.connects], ["disconnects", s.tunnels.disconnects], ["reconnects", s.tunnels.reconnects]])}
</div>
<footer><a href="/metrics">/metrics</a> · <a href="/v1/status">/v1/status</a> (JSON)</footer>
</body>
</html>
`;
}
