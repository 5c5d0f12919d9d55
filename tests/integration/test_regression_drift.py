"""A regression watched like a classifier: its bundle's reference profile describes its inputs and
the distribution of its answers (no accuracy to estimate), thresholds are calibrated when it is
built, and a window of shifted inputs alarms while an unshifted one does not. Its true values
come back as feedback: the realised MAE per version and per window, the `mae` alert rule against
the validation MAE, the Prometheus gauge and the report's MAE chart (lower is better)."""

from __future__ import annotations

import tomllib
from pathlib import Path

import numpy as np
import pandas as pd
from prometheus_client import generate_latest

from shipyard.monitor import alert_rules, report
from shipyard.monitor.api import Monitor
from shipyard.monitor.evaluator import Evaluator, MonitorConfig
from shipyard.monitor.feedback import record_feedback
from shipyard.monitor.predlog import PredictionLog
from shipyard.optimizing import optimize
from shipyard.registry import Registry
from shipyard.serve.runtime import ModelRuntime
from shipyard.settings import Settings
from shipyard.training import train

from ..waiting import clock_moves_on

CONFIG = MonitorConfig(window=100, min_window=30, max_age_s=60, draws=500, accuracy_every_s=0)


def friedman(n: int, seed: int) -> pd.DataFrame:
    """Friedman #1 (scikit-learn's generator): 10 inputs, 5 of them matter, noise 1."""
    from sklearn.datasets import make_friedman1

    x, y = make_friedman1(n_samples=n, n_features=10, noise=1.0, random_state=seed)
    return pd.DataFrame({**{f"x{j}": x[:, j] for j in range(10)}, "y": y})


def test_a_regression_drifts_on_its_inputs_and_answers(tmp_path: Path) -> None:
    settings = Settings(home=tmp_path / "home")
    friedman(2000, 0).to_csv(tmp_path / "f.csv", index=False)
    run = train(data=f"csv:{tmp_path / 'f.csv'}", label_column="y", epochs=8, settings=settings, progress=False)
    bundle = optimize(run, name="friedman", output=tmp_path / "f.tar.gz", variants=("fp32",), bench_seconds=0.05,
                      settings=settings)
    ref = bundle.meta.reference
    assert bundle.meta.task == "regression" and ref is not None
    assert ref.val_accuracy is None and {t.window for t in ref.drift_thresholds} == {50, 100}
    assert bundle.reference is not None and "val_probabilities" not in bundle.reference
    reg = Registry(settings=settings)
    reg.register(bundle.path, "friedman", alias="production")
    rt = ModelRuntime(reg.load("friedman@1"), 1, name="friedman")
    log = PredictionLog(reg.engine)
    rules = alert_rules.parse(tomllib.loads(
        '[[rule]]\nname = "mae-rise"\nkind = "mae"\nabove_validation_by = 0.25\nmin_labels = 50\n'))
    ev = Evaluator(reg, lambda: ["friedman"], CONFIG, alerts=rules)

    def serve(rows: pd.DataFrame, prefix: str) -> dict:  # type: ignore[type-arg]
        feats = rt.features("raw", rows.drop(columns="y").to_numpy(np.float32))
        ids = [f"{prefix}-{i}" for i in range(len(rows))]
        log.record_batch(rt, ids, [1] * len(rows), feats, rt.predict(feats))
        log.flush()
        got = record_feedback(reg.engine, "friedman", ["y"], list(zip(ids, rows["y"].tolist(), strict=True)),
                              horizon_s=3600, regression=True)
        assert got.counts["accepted"] == len(rows)
        clock_moves_on()
        return ev.tick()["friedman"][1]  # type: ignore[no-any-return]

    calm = serve(friedman(100, 1), "calm")
    assert set(calm["drift"]) >= {"input", "mean", "confidence"} and not calm["alarm"], calm["drift"]
    assert calm["accuracy"]["estimated"] is None and not calm["accuracy"]["estimated_reliable"]
    assert "a regression has no estimated accuracy" in (calm["accuracy"]["estimated_reason"] or "")
    val_mae = bundle.meta.metrics.val_mae
    assert calm["task"] == "regression" and calm["accuracy"]["validation_mae"] == val_mae
    assert calm["accuracy"]["n_labels"] == 100 and calm["accuracy"]["realised_mae"] < 1.25 * val_mae
    assert calm["rules"]["mae-rise"]["state"] == "ok", calm["rules"]
    shifted = friedman(100, 2)
    shifted[["x0", "x1"]] += 0.6  # the inputs that matter most moved: so do the answers
    moved = serve(shifted, "moved")
    assert moved["alarm"], moved["drift"]
    assert moved["drift"]["input"]["alarm"] and moved["drift"]["confidence"]["alarm"]  # inputs and answers
    # the true values were made before the shift: the answers to the moved inputs miss them
    assert moved["accuracy"]["n_labels"] == 200 and moved["accuracy"]["realised_mae"] > 1.25 * val_mae
    assert moved["rules"]["mae-rise"]["state"] == "firing" and "realised MAE" in moved["rules"]["mae-rise"]["message"]
    exposition = generate_latest().decode()
    assert 'shipyard_mae{kind="validation",model="friedman",version="1"}' in exposition
    data = report.collect(Monitor(reg), "friedman", since=0)
    maes = [w["results"]["realised_mae"] for w in data["windows"]]
    assert len(maes) == 2 and maes[0] < 1.25 * val_mae < maes[1]  # per window, from the labels known now
    html = report.render(data)
    assert 'id="chart-mae"' in html and "realised MAE (labels)" in html and "chart-accuracy" not in html
    ev.stop()
