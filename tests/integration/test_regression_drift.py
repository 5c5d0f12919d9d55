"""A regression watched like a classifier: its bundle's reference profile describes its inputs and
the distribution of its answers (no accuracy to estimate), thresholds are calibrated when it is
built, and a window of shifted inputs alarms while an unshifted one does not."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from shipyard.monitor.evaluator import Evaluator, MonitorConfig
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
    ev = Evaluator(reg, lambda: ["friedman"], CONFIG)

    def serve(rows: pd.DataFrame, prefix: str) -> dict:  # type: ignore[type-arg]
        feats = rt.features("raw", rows.drop(columns="y").to_numpy(np.float32))
        log.record_batch(rt, [f"{prefix}-{i}" for i in range(len(rows))], [1] * len(rows), feats, rt.predict(feats))
        log.flush()
        clock_moves_on()
        return ev.tick()["friedman"][1]  # type: ignore[no-any-return]

    calm = serve(friedman(100, 1), "calm")
    assert set(calm["drift"]) >= {"input", "mean", "confidence"} and not calm["alarm"], calm["drift"]
    assert calm["accuracy"]["estimated"] is None and not calm["accuracy"]["estimated_reliable"]
    assert "a regression has no estimated accuracy" in (calm["accuracy"]["estimated_reason"] or "")
    shifted = friedman(100, 2)
    shifted[["x0", "x1"]] += 0.6  # the inputs that matter most moved: so do the answers
    moved = serve(shifted, "moved")
    assert moved["alarm"], moved["drift"]
    assert moved["drift"]["input"]["alarm"] and moved["drift"]["confidence"]["alarm"]  # inputs and answers
    ev.stop()
