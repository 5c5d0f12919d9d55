"""`GET /dashboard`: live charts of a served model, refreshing by themselves. The page is one
HTML document with a few lines of script that fetch `/dashboard/fragment` (the charts' specs and
tables, the same code as `shipyard monitor report`, drawn by the vendored uPlot served from
`/dashboard/assets/`) every few seconds: an accuracy
estimate that cannot be believed is greyed and says why, rules show ok, firing or unknown.
Everything it loads comes from this server: no CDN, works air-gapped."""

from __future__ import annotations

import json
import time
from html import escape
from typing import TYPE_CHECKING

from shipyard import charts

if TYPE_CHECKING:
    from shipyard.registry import Registry

REFRESH_S = 5


def page(models: list[str]) -> str:
    options = "".join(f"<option>{escape(m)}</option>" for m in models)
    return f"""<!doctype html><html lang="en"><head><meta charset="utf-8"><title>shipyard dashboard</title>
<link rel="icon" href="data:,">
<style>{charts.PAGE_STYLE} header{{display:flex;gap:16px;align-items:center}} select{{font-size:14px}}</style>
{charts.asset_links("/dashboard/assets")}</head>
<body><header><h1>shipyard</h1>
<label>model <select id="model">{options}</select></label>
<label>range <select id="minutes"><option value="15">15 min</option><option value="60" selected>1 h</option>
<option value="360">6 h</option><option value="1440">24 h</option></select></label>
<span class="sub" id="updated">loading…</span></header>
<div id="content">{'' if models else '<p class=sub>this server serves no model yet</p>'}</div>
<script>
const models = {json.dumps(models)};
async function refresh() {{
  const model = document.getElementById("model").value;
  if (!model) return;
  const minutes = document.getElementById("minutes").value;
  try {{
    const r = await fetch("/dashboard/fragment?model=" + encodeURIComponent(model) + "&minutes=" + minutes);
    if (!r.ok) throw new Error(r.status + " " + (await r.text()));
    document.getElementById("content").innerHTML = await r.text();
    window.ShipyardCharts.renderAll(document.getElementById("content"));
    document.getElementById("updated").textContent = "updated " + new Date().toLocaleTimeString();
  }} catch (e) {{
    document.getElementById("updated").textContent = "cannot refresh: " + e.message;
  }}
}}
document.getElementById("model").onchange = refresh;
document.getElementById("minutes").onchange = refresh;
refresh();
setInterval(refresh, {REFRESH_S * 1000});
</script></body></html>
"""


def fragment(registry: Registry, name: str, minutes: float) -> str:
    """The state tables and charts of `name` over the last `minutes` (runs off the event loop:
    it reads the database)."""
    from shipyard.monitor import report
    from shipyard.monitor.api import Monitor

    mon = Monitor(registry)
    data = report.collect(mon, name, since=time.time() - minutes * 60)
    # the report's marks (an estimate greyed as unreliable, a rule that cannot decide) travel with the
    # fragment: the page itself stays free of the monitor's imports
    from shipyard.attribution.html import maps_html

    return (f"<style>{report.STYLE}</style>" + report.state_html(data) + "<h2>Over time</h2>"
            + report.charts_html(data) + "<h2>What each class looks at</h2>" + maps_html(data.get("maps", [])))
