"""The chart layer every page shares: the vendored uPlot is the file its version says (nothing
fetched at run time), gaps are gaps, a spec survives the trip through the page, hostile labels stay
text; and the per-minute serving rollup adds up to what the raw rows say, whichever worker wrote."""

from __future__ import annotations

import hashlib
import math
from html import escape
from pathlib import Path

import numpy as np

from shipyard import charts
from shipyard.monitor import stats
from shipyard.store.engine import engine_for
from shipyard.store.schema import serving_minutes


def test_the_vendored_library_is_the_released_file_with_its_licence() -> None:
    for name, sha in charts.VENDOR["files"].items():  # type: ignore[union-attr]
        body = charts.asset(name)[0]
        assert hashlib.sha256(body).hexdigest() == sha, name
    js = charts.asset("uPlot.iife.min.js")[0].decode()
    assert js.startswith(f"/*! https://github.com/leeoniya/uPlot (v{charts.VENDOR['version']}) */")
    licence = Path(charts.__file__).parent / "vendor" / "uPlot.LICENSE"
    assert "MIT" in licence.read_text() or "Permission is hereby granted" in licence.read_text()
    inline = charts.inline_assets()
    assert "http://" not in inline.replace("http://www.w3.org", "") and "https://cdn" not in inline
    assert inline.count("<script>") == 1 and "</script" not in inline[8:-9]  # one script, never closed early


def test_gaps_break_lines_where_nothing_was_measured() -> None:
    pts = [(0.0, 1.0), (10.0, 2.0), (20.0, 3.0), (500.0, 4.0), (510.0, 5.0)]
    gap = charts.typical_gap([t for t, _ in pts])
    assert gap == 30.0
    out = charts.with_gaps(pts, gap)
    assert [y for _, y in out] == [1.0, 2.0, 3.0, None, 4.0, 5.0]
    assert charts.with_gaps(pts[:3], gap) == pts[:3]
    assert charts.typical_gap([5.0]) == math.inf


def test_log_scale_only_where_values_span_decades() -> None:
    assert charts.scale_for([0.5, 80.0, 3.0]) == "log"
    assert charts.scale_for([0.5, 20.0]) == "linear"
    assert charts.scale_for([0.0, 100.0]) == "linear"  # a zero cannot sit on a log axis
    assert charts.scale_for([None, float("nan")]) == "linear"


def test_a_spec_round_trips_through_the_page_and_labels_stay_text() -> None:
    hostile = '<img src=x onerror="alert(1)">'
    html = charts.chart("chart-x", hostile, [charts.series(hostile, [(1.0, 2.0), (2.0, float("nan")), (3.0, None)])],
                        markers=[(1.5, hostile)], hlines=[(1.0, "limit"), (float("inf"), "dropped")], integer=True)
    assert "<img" not in html and escape(hostile) in html
    spec = charts.specs(html)["chart-x"]
    assert spec["series"][0]["points"] == [[1.0, 2.0], [2.0, None], [3.0, None]]  # NaN is a gap, not invalid JSON
    assert spec["markers"] == [{"x": 1.5, "label": hostile}] and spec["hlines"] == [{"y": 1.0, "label": "limit"}]
    assert spec["y"]["integer"] is True


def _row(model: str, version: int, t0: float, t1: float, requests: int, errors: int = 0, rejected: int = 0) -> dict:  # type: ignore[type-arg]
    lat = [0] * len(stats.LATENCY_BUCKETS_MS)
    lat[3] = requests
    return {"model": model, "version": version, "worker": f"w{int(t0) % 3}", "ts_start": t0, "ts_end": t1,
            "requests": requests, "errors": errors, "rejected": rejected, "latency": lat}


def test_the_minute_rollup_adds_up_to_the_raw_rows(tmp_path: Path) -> None:
    engine = engine_for(f"sqlite:///{tmp_path / 'db.sqlite'}")
    base = (1_800_000_000 // 3600) * 3600 - 2 * 3600
    rows = []
    rng = np.random.default_rng(0)
    for i in range(0, 7200, 5):  # two hours, two workers (the same minutes twice: the upsert must add)
        for w in range(2):
            n = int(rng.integers(0, 50)) + (600 * 5 if 3000 <= i < 3010 and w == 0 else 0)  # one burst
            rows.append(_row("m", 1 + (i > 3600), base + i, base + i + 5, n, errors=n // 40, rejected=n // 30)
                        | {"worker": f"w{w}"})
    rows.append(_row("m", 0, base + 100, base + 105, 7))  # unrouted (401s)
    for k in range(0, len(rows), 50):
        stats.write(engine, rows[k:k + 50])
    with engine.connect() as conn:
        n_minutes = conn.execute(serving_minutes.select()).all()
    assert len({(r.version, r.minute) for r in n_minutes}) == len(n_minutes) <= 2 * 121
    raw = stats.series(engine, "m", since=base, step_s=30)  # under a minute: the raw rows
    rolled = stats.series(engine, "m", since=base, step_s=600)  # the minutes
    assert sum(p["rps"] * 30 for p in raw) == sum(p["rps"] * 600 for p in rolled) == sum(r["requests"] for r in rows)
    assert max(p["peak_rps"] for p in rolled) >= 600  # the burst shows at 10-minute steps
    assert max(p["rps"] for p in rolled) < 100  # (the mean alone would hide it)
    assert all("0" not in p["versions"] or p["refused_rate"] > 0 for p in rolled)
    total = stats.summary(engine, "m", since=base)  # > 1 h: from the minutes
    assert total.requests == sum(r["requests"] for r in rows)
    assert total.errors == sum(r["errors"] for r in rows) and int(total.latency.sum()) == total.requests
