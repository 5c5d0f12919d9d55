"""Ratios are exposed as 0-1, as Prometheus advises (base units): the traffic split a real
in-process server exposes on /metrics, and the Grafana panels that show ratios say so
(`percentunit`, which renders 0-1 as percent)."""

from __future__ import annotations

import asyncio
import re

from shipyard.monitor.exports import grafana
from shipyard.registry import Registry
from shipyard.serve.app import create_app
from shipyard.serve.config import ServeConfig

from ..asgi import running


def test_traffic_weight_is_a_ratio(registry: Registry) -> None:
    registry.set_traffic("tiny", {"production": 90, "candidate": 10})
    app = create_app(ServeConfig(poll_s=0.0, models=("tiny",)), registry=registry)

    async def main() -> str:
        async with running(app) as c:
            return (await c.get("/metrics")).text

    text = asyncio.run(main())
    weights = {}
    for m in re.finditer(r"^shipyard_traffic_weight\{([^}]*)\} (\S+)$", text, re.M):
        labels = dict(re.findall(r'(\w+)="([^"]*)"', m[1]))
        if labels["model"] == "tiny":
            weights[labels["alias"]] = float(m[2])
    assert weights == {"production": 0.9, "candidate": 0.1}, text
    assert "# HELP shipyard_traffic_weight Share of a model's traffic routed to each alias, 0-1" in text


def test_ratio_panels_use_the_ratio_unit() -> None:
    units = {p["targets"][0]["expr"].split("{")[0]: p["fieldConfig"]["defaults"]["unit"]
             for p in grafana()["panels"]}
    assert units["shipyard_traffic_weight"] == units["shipyard_accuracy"] == "percentunit"
    assert "percent" not in units.values()  # 0-100 nowhere
