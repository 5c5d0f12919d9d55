"""Closing the loop for a table model: rows served through its column inputs are logged and
labelled, and `retrain` turns them back into rows of the same table (its original file read with
the run's imputation, the production rows by inverting the logged features), so the candidate
takes the very same named columns its clients send, imputation included."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

import shipyard
from shipyard.monitor.feedback import record_feedback
from shipyard.monitor.predlog import LogConfig, PredictionLog
from shipyard.optimizing import optimize
from shipyard.registry import Registry
from shipyard.serve.runtime import ModelRuntime
from shipyard.settings import Settings
from shipyard.training import train

from ..waiting import clock_moves_on
from .test_tabular import wine_table


def columns(rows: pd.DataFrame) -> list[tuple[str, np.ndarray]]:
    """The rows as a client sends them: numbers as float32, text and booleans as they are."""
    return [(c, rows[c].to_numpy(dtype=np.float32) if rows[c].dtype.kind == "f" else
             rows[c].to_numpy(dtype=bool) if rows[c].dtype == bool else rows[c].to_numpy(dtype=object))
            for c in rows.columns]


def test_a_table_model_retrains_into_the_same_columns(tmp_path: Path) -> None:
    settings = Settings(home=tmp_path / "home")
    df = wine_table()
    df.to_csv(tmp_path / "wine.csv", index=False)
    run = train(data=f"csv:{tmp_path / 'wine.csv'}", label_column="cultivar", impute="median", epochs=10,
                settings=settings, progress=False)
    champion = optimize(run, name="wine", output=tmp_path / "wine.tar.gz", variants=("fp32",), bench_seconds=0.05,
                        settings=settings)
    reg = Registry(settings=settings)
    reg.register(champion.path, "wine", alias="production")

    rt = ModelRuntime(reg.load("wine@production"), 1, name="wine")
    log = PredictionLog(reg.engine, LogConfig(ring_rate=1e9))
    served = df.drop(columns="cultivar").fillna({"region": "north"}).iloc[:150]  # NaN magnesium: imputed
    feats = rt.table_features(columns(served))
    ids = [f"t-{i}" for i in range(len(served))]
    for s in range(0, len(ids), 50):
        log.record_batch(rt, ids[s:s + 50], [1] * len(ids[s:s + 50]), feats[s:s + 50], rt.predict(feats[s:s + 50]))
        log.flush()
        clock_moves_on()
    labels = df["cultivar"].iloc[:150].tolist()
    assert record_feedback(reg.engine, "wine", rt.bundle.classes, list(zip(ids, labels, strict=True)),
                           horizon_s=3600).counts["accepted"] == 150

    result = shipyard.retrain("wine", registry=reg, settings=settings, epochs=3, progress=False)
    assert result.samples["production_train"] == 120 and result.samples["recent_holdout"] == 30
    candidate = reg.load("wine@candidate")

    def signature(b: shipyard.Bundle) -> list[tuple[str, str, str]]:
        return [(i.name, i.kind, i.dtype) for i in b.meta.signature.inputs]

    assert signature(candidate) == signature(champion)  # the clients' columns, unchanged
    spec, before = candidate.preprocess, champion.preprocess
    assert spec is not None and before is not None and spec.impute == "median"
    assert [(c.name, c.kind, c.categories) for c in spec.columns or ()] == \
        [(c.name, c.kind, c.categories) for c in before.columns or ()]
    retrained = ModelRuntime(candidate, result.version, name="wine")
    rows = df.drop(columns="cultivar").iloc[:40].fillna({"region": "south"})
    probs = retrained.predict(retrained.table_features(columns(rows)))  # missing magnesium: imputed
    assert probs.shape == (40, 3) and np.isfinite(probs).all()
    truth = [rt.bundle.classes.index(c) for c in df["cultivar"].iloc[:40]]
    assert (probs.argmax(1) == truth).mean() > 0.8
