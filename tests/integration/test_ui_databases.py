"""The UI's own SQL on both databases it supports, SQLite and a real PostgreSQL: the JSON filters and
sorts of /runs (a recipe's model, a tag's value), the per-minute serving rollup's upsert (two
workers writing the same minute), and every page over them."""

from __future__ import annotations

import time
import warnings
from pathlib import Path

import pytest

from harness.bundles import make_bundle
from shipyard.monitor import stats
from shipyard.registry import Registry
from shipyard.settings import Settings
from shipyard.store.schema import serving_minutes
from shipyard.training.tracking import RunStore
from shipyard.ui.app import create_app

with warnings.catch_warnings():  # Starlette 1.x prefers `httpx2` for its TestClient; `httpx` works the same
    warnings.simplefilter("ignore")
    from starlette.testclient import TestClient

pytestmark = pytest.mark.usefixtures("close_pools")


def _row(version: int, worker: str, t: float, n: int) -> dict:  # type: ignore[type-arg]
    lat = [0] * len(stats.LATENCY_BUCKETS_MS)
    lat[2] = n
    return {"model": "digits", "version": version, "worker": worker, "ts_start": t - 5, "ts_end": t,
            "requests": n, "errors": 0, "rejected": 1, "latency": lat}


def test_the_ui_queries_and_the_rollup_on_each_database(reg_settings: Settings, tmp_path: Path) -> None:
    reg = Registry(settings=reg_settings)
    reg.register(make_bundle(tmp_path / "a"), "digits", alias="production")
    reg.register(make_bundle(tmp_path / "b", seed=1), "digits", alias="candidate")
    store = RunStore(settings=reg_settings)
    ids = {}
    for name, model, tags in (("alpha", "mlp", {"team": "vision"}), ("beta", "cnn", {"team": "audio"}),
                              ("gamma", "mlp", None)):
        ids[name] = store.create({"model": model, "epochs": 1}, "mnist-sample", name=name, tags=tags)
    now = time.time()
    minute = (int(now) // 60) * 60 + 30  # mid-minute: both workers' rows land in the same minute
    stats.write(reg.engine, [_row(1, "w1", minute, 40), _row(2, "w1", minute, 10)])
    stats.write(reg.engine, [_row(1, "w2", minute + 1, 60)])  # the same (version, minute): added, not replaced
    with reg.engine.connect() as conn:
        got = {r.version: (r.requests, r.rejected, r.l2) for r in conn.execute(serving_minutes.select())}
    assert got == {1: (100, 2, 100), 2: (10, 1, 10)}
    assert sum(p["rps"] for p in stats.series(reg.engine, "digits", since=now - 7200, step_s=60)) * 60 == 110

    app = create_app(reg, token="t", hosts={"127.0.0.1"})
    app.state.ready.wait(30)
    with TestClient(app, base_url="http://127.0.0.1") as c:
        def run_rows(query: str) -> set[str]:
            r = c.get(f"/runs?{query}")
            assert r.status_code == 200, r.text
            return {n for n in ids if f'data-run="{ids[n]}"' in r.text}

        assert run_rows("q=team=vision") == {"alpha"}  # a tag's value, through the database's JSON operators
        assert run_rows("model=mlp") == {"alpha", "gamma"}
        assert run_rows("q=audio") == {"beta"}  # text anywhere in the tags
        page = c.get("/runs?sort=model&dir=asc").text
        assert page.index(f'data-run="{ids["beta"]}"') < page.index(f'data-run="{ids["alpha"]}"')  # cnn < mlp
        for path in ("/", "/models", "/models/digits", "/deployments/digits?range=24h", f"/runs/{ids['alpha']}"):
            r = c.get(path)
            assert r.status_code == 200, (path, r.text[:500])
        assert ids["alpha"][:12] in c.get("/").text
