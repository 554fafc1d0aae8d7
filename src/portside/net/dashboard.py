"""The proxy's dashboard: one small page and the JSON status it reads. No I/O here.

Served at ``http://portside.localhost:PORT/`` and at ``/_portside/`` on any host the proxy
accepts::

    /                 (or /_portside/)             the HTML page
    /status.json      (or /_portside/status.json)  the status document below
    /dashboard.js     (or /_portside/dashboard.js) the script that fills the page

The page has no inline script and loads nothing from elsewhere (a strict
Content-Security-Policy says so); it polls ``status.json`` every second and writes the
values with ``textContent`` only. The status document (``"kind": "proxy-status"``)::

    {"schema": 1, "kind": "proxy-status", "listen": "127.0.0.1:8080", "uptime_s": 12.5,
     "routes_version": 3, "totals": {counters},
     "routes": [{"name", "host", "path", "source", "balance", "preserve_host",
                 "health_check": {"path", "interval_s", ...} | null,
                 "backends": ["127.0.0.1:3000", ...], "counters": {counters}}],
     "backends": [{"address", "health": "up|down|ejected", "last_error", "last_check_at",
                   "last_check_status", "idle_connections", "connect_failures",
                   "counters": {counters}}]}

``counters`` are those of :class:`portside.net.backends.Counters` (requests, in_flight,
responses_1xx … responses_5xx, errors, retries, bytes_in, bytes_out).
"""

from __future__ import annotations

import dataclasses
import json

from portside.models import JSON_SCHEMA_VERSION
from portside.net.backends import Backends, Counters
from portside.net.routes import RouteSnapshot, normalise_host

DASHBOARD_HOST = "portside.localhost"
PREFIX = "/_portside"
STATUS_KIND = "proxy-status"

_CSP = (
    "default-src 'none'; script-src 'self'; style-src 'self' 'unsafe-inline'; "
    "connect-src 'self'; img-src 'self' data:; base-uri 'none'; form-action 'none'; "
    "frame-ancestors 'none'"
)
SECURITY_HEADERS: tuple[tuple[str, str], ...] = (
    ("Content-Security-Policy", _CSP),
    ("X-Content-Type-Options", "nosniff"),
    ("Referrer-Policy", "no-referrer"),
    ("Cache-Control", "no-store"),
)


def dashboard_path(host: str, target: str) -> str | None:
    """The dashboard resource a request names (``""`` for the page, ``"status.json"``,
    ``"dashboard.js"``, ``"redirect"`` for ``/_portside`` without the slash, ``"missing"``
    for anything else under the dashboard), or None when it is not for the dashboard."""
    path = target.split("?", 1)[0]
    if normalise_host(host) == DASHBOARD_HOST:
        rest = path[1:] if path.startswith("/") else path
        if rest.startswith("_portside/"):
            rest = rest[len("_portside/") :]
    elif path == PREFIX:
        return "redirect"
    elif path.startswith(PREFIX + "/"):
        rest = path[len(PREFIX) + 1 :]
    else:
        return None
    if rest in ("", "index.html"):
        return ""
    if rest in ("status.json", "dashboard.js"):
        return rest
    return "missing"


def status_document(
    snapshot: RouteSnapshot,
    backends: Backends,
    *,
    listen: str,
    uptime_s: float,
    now: float,
) -> dict[str, object]:
    """The JSON status (see the module docstring); ``now`` is ``time.monotonic()``."""
    routes: list[dict[str, object]] = []
    totals = Counters()
    for route in snapshot.routes:
        pool = backends.pools.get(route.key)
        counters = pool.counters if pool is not None else Counters()
        _add(totals, counters)
        routes.append(
            {
                "name": route.name,
                "host": route.host,
                "path": route.path,
                "source": route.source,
                "balance": route.balance.value,
                "preserve_host": route.preserve_host,
                "health_check": dataclasses.asdict(route.health) if route.health else None,
                "backends": [str(a) for a in route.backends],
                "counters": counters.as_dict(),
            }
        )
    listed: list[dict[str, object]] = []
    for address in sorted(backends.by_address, key=str):
        backend = backends.by_address[address]
        listed.append(
            {
                "address": str(address),
                "health": backend.health(now).value,
                "last_error": backend.last_error,
                "last_check_at": backend.last_check_at,
                "last_check_status": backend.last_check_status,
                "idle_connections": len(backend.idle),
                "connect_failures": backend.connect_failures,
                "counters": backend.counters.as_dict(),
            }
        )
    return {
        "schema": JSON_SCHEMA_VERSION,
        "kind": STATUS_KIND,
        "listen": listen,
        "uptime_s": round(uptime_s, 3),
        "routes_version": snapshot.version,
        "totals": totals.as_dict(),
        "routes": routes,
        "backends": listed,
    }


def _add(total: Counters, part: Counters) -> None:
    for field in dataclasses.fields(Counters):
        setattr(total, field.name, getattr(total, field.name) + getattr(part, field.name))


def render(resource: str, status: dict[str, object] | None) -> tuple[int, str, bytes]:
    """(status code, content type, body) for a resource from :func:`dashboard_path`."""
    if resource == "":
        return 200, "text/html; charset=utf-8", PAGE.encode()
    if resource == "dashboard.js":
        return 200, "text/javascript; charset=utf-8", SCRIPT.encode()
    if resource == "status.json":
        return 200, "application/json", json.dumps(status, indent=1).encode()
    return 404, "text/plain; charset=utf-8", b"no such dashboard resource\n"


PAGE = """<!doctype html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>portside proxy</title>
<link rel="icon" href="data:,">
<style>
body { font: 14px/1.4 system-ui, sans-serif; margin: 1.5rem; color: #222; }
h1 { font-size: 1.3rem; margin: 0 0 .3rem; }
h2 { font-size: 1.05rem; margin: 1.4rem 0 .4rem; }
table { border-collapse: collapse; min-width: 40rem; }
th, td { text-align: left; padding: .25rem .7rem; border-bottom: 1px solid #ddd; }
th { background: #f4f4f4; }
td.num { text-align: right; font-variant-numeric: tabular-nums; }
.up { color: #086b08; font-weight: 600; }
.down, .ejected { color: #b00020; font-weight: 600; }
#meta { color: #666; }
#error { color: #b00020; }
</style>
<script src="dashboard.js" defer></script>
</head>
<body>
<h1>portside proxy</h1>
<p id="meta">loading…</p>
<p id="error"></p>
<h2>Routes</h2>
<table id="routes">
<thead><tr><th>route</th><th>source</th><th>balance</th><th>backends</th>
<th>requests</th><th>in flight</th><th>2xx</th><th>4xx</th><th>5xx</th><th>errors</th></tr></thead>
<tbody></tbody>
</table>
<h2>Backends</h2>
<table id="backends">
<thead><tr><th>backend</th><th>health</th><th>requests</th><th>in flight</th><th>idle conns</th>
<th>errors</th><th>bytes out</th><th>last error</th></tr></thead>
<tbody></tbody>
</table>
</body>
</html>
"""

SCRIPT = """"use strict";
function cell(row, text, cls) {
  const td = document.createElement("td");
  td.textContent = text === null || text === undefined ? "" : String(text);
  if (cls) td.className = cls;
  row.appendChild(td);
}
function fill(id, items, columns) {
  const body = document.querySelector("#" + id + " tbody");
  const rows = items.map(function (item) {
    const tr = document.createElement("tr");
    columns.forEach(function (c) { cell(tr, c[0](item), c[1] ? c[1](item) : c.length > 2 ? c[2] : ""); });
    return tr;
  });
  body.replaceChildren.apply(body, rows);
}
function num(f) { return [f, null, "num"]; }
async function refresh() {
  try {
    const answer = await fetch("status.json", {cache: "no-store"});
    if (!answer.ok) throw new Error("status " + answer.status);
    const s = await answer.json();
    document.getElementById("meta").textContent =
      "listening on " + s.listen + " · up " + Math.round(s.uptime_s) + " s · " +
      s.totals.requests + " requests · routes v" + s.routes_version;
    document.getElementById("error").textContent = "";
    fill("routes", s.routes, [
      [function (r) { return r.name; }], [function (r) { return r.source; }],
      [function (r) { return r.balance; }], [function (r) { return r.backends.join(", "); }],
      num(function (r) { return r.counters.requests; }), num(function (r) { return r.counters.in_flight; }),
      num(function (r) { return r.counters.responses_2xx; }), num(function (r) { return r.counters.responses_4xx; }),
      num(function (r) { return r.counters.responses_5xx; }), num(function (r) { return r.counters.errors; })
    ]);
    fill("backends", s.backends, [
      [function (b) { return b.address; }],
      [function (b) { return b.health; }, function (b) { return b.health; }],
      num(function (b) { return b.counters.requests; }), num(function (b) { return b.counters.in_flight; }),
      num(function (b) { return b.idle_connections; }), num(function (b) { return b.counters.errors; }),
      num(function (b) { return b.counters.bytes_out; }), [function (b) { return b.last_error || ""; }]
    ]);
    document.body.dataset.loaded = "yes";
  } catch (e) {
    document.getElementById("error").textContent = "cannot read status: " + e.message;
  }
}
refresh();
setInterval(refresh, 1000);
"""
