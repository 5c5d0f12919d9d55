"""Closing the loop for a regression: answers logged, true values sent back as feedback,
`retrain` trains on them (float targets, not classes), and every gate judges MAE, lower being
better: the offline gate on the recent holdout and the validation split, the rollout's `mae`
gate (one-sided on the absolute errors) and its agreement gate (answers within half the
champion's validation MAE). A candidate whose answers are off by a bias fails; an honest retrain passes."""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import pytest
from sklearn.datasets import load_diabetes

import shipyard
from shipyard.data import load
from shipyard.errors import DataError
from shipyard.monitor.feedback import record_feedback
from shipyard.monitor.predlog import LogConfig, PredictionLog
from shipyard.optimizing import optimize
from shipyard.registry import Registry
from shipyard.serve.runtime import ModelRuntime
from shipyard.settings import Settings
from shipyard.training import train
from shipyard.update import rollout as ro

from ..waiting import clock_moves_on

pytestmark = pytest.mark.timeout(600)


def serve_and_label(reg: Registry, rt: ModelRuntime, x: np.ndarray, y: np.ndarray, prefix: str, *,
                    bias: float = 0.0) -> None:
    """Log `rt`'s answers to raw rows `x` (plus `bias`, a worse model's) and send back `y`."""
    spec = rt.bundle.preprocess
    assert spec is not None
    log = PredictionLog(reg.engine, LogConfig(ring_rate=1e9))
    ids = [f"{prefix}-{i}" for i in range(len(x))]
    for s in range(0, len(x), 100):
        feats = spec.apply(x[s:s + 100])
        log.record_batch(rt, ids[s:s + 100], [1] * len(feats), feats, rt.predict(feats) + bias)
        log.flush()
        clock_moves_on()
    got = record_feedback(reg.engine, "diabetes", rt.bundle.classes, list(zip(ids, y.tolist(), strict=True)),
                          horizon_s=3600, regression=True)
    assert got.counts["accepted"] == len(x)


def test_a_regression_retrains_on_true_values_and_its_gates_judge_mae(tmp_path: Path) -> None:
    settings = Settings(home=tmp_path / "home")
    run = train(data="sklearn:diabetes", epochs=15, settings=settings, progress=False)
    champion = optimize(run, name="diabetes", output=tmp_path / "d.tar.gz", variants=("fp32",), bench_seconds=0.05,
                        settings=settings)
    reg = Registry(settings=settings)
    reg.register(champion.path, "diabetes", alias="production")
    rt = ModelRuntime(reg.load("diabetes@production"), 1, name="diabetes")
    x, y = load_diabetes(return_X_y=True)
    x, y = x.astype(np.float32), y.astype(np.float32)
    rng = np.random.default_rng(3)  # production: the same patients measured again, a little noisier
    prod_x = np.concatenate([x, x]) + rng.normal(0, 0.002, (2 * len(x), x.shape[1])).astype(np.float32)
    prod_y = np.concatenate([y, y])
    serve_and_label(reg, rt, prod_x, prod_y, "p")

    result = shipyard.retrain("diabetes", registry=reg, settings=settings, epochs=3, progress=False)
    gate = result.gate
    assert gate["metric"] == "mae" and gate["tolerance"] == 0.02
    holdout = gate["sets"]["recent_holdout"]
    assert holdout["n"] == round(len(prod_y) * 0.2) and 20 < holdout["champion"] < 100  # MAE, target units
    assert holdout["delta"] == pytest.approx(holdout["challenger"] - holdout["champion"])
    assert gate["passed"] == (holdout["challenger"] <= holdout["champion"] * 1.02 and
                              gate["sets"]["validation"]["challenger"] <= gate["sets"]["validation"]["champion"] * 1.02)
    assert "MAE" in gate["reason"]
    candidate = reg.load(f"diabetes@{result.version}")
    assert candidate.regression and candidate.classes == ["target"]
    assert candidate.meta.metrics.to_dict().get("holdout_mae") == pytest.approx(holdout["challenger"], rel=1e-4)
    assert candidate.meta.reference is not None and candidate.meta.reference.held_out_rows is not None
    assert candidate.meta.reference.held_out_rows["recent_holdout"] == holdout["n"]  # its reference: held-out rows

    # the rollout's gates on the same log: the candidate answers new requests, then a biased one does
    since = time.time()
    clock_moves_on()
    new_x, new_y = x[:300] + rng.normal(0, 0.002, (300, x.shape[1])).astype(np.float32), y[:300]
    serve_and_label(reg, rt, new_x, new_y, "champ")
    serve_and_label(reg, ModelRuntime(candidate, result.version, name="diabetes"), new_x, new_y, "cand")
    config = ro.RolloutConfig(gates=("accuracy", "agreement"))
    ev = ro.evidence(reg.engine, "diabetes", result.version, 1, since, champion_rt=rt, regression=True)
    assert ev["candidate"]["labels"] == ev["champion"]["labels"] == 300 and ev["candidate"]["accuracy"] is None
    verdicts = {v["gate"]: v for v in ro.judge(ev, config)}
    assert set(verdicts) == {"mae", "agreement"}
    assert verdicts["mae"]["value"] == pytest.approx(ev["candidate"]["mae"])
    assert verdicts["mae"]["limit"] == pytest.approx(ev["champion"]["mae"] * 1.02)
    assert 0 <= verdicts["agreement"]["value"] <= 1 and ev["agreement_n"] == 300

    worse = ModelRuntime(reg.load("diabetes@1"), 9, name="diabetes")  # v9: the champion's answers + 60
    serve_and_label(reg, worse, new_x, new_y, "worse", bias=60.0)
    ev = ro.evidence(reg.engine, "diabetes", 9, 1, since, champion_rt=rt, regression=True)
    verdicts = {v["gate"]: v for v in ro.judge(ev, config)}
    assert not verdicts["mae"]["passed"] and verdicts["mae"]["p_value"] < 0.05
    assert "candidate MAE" in verdicts["mae"]["detail"] and ev["candidate"]["mae"] > ev["champion"]["mae"] + 10
    assert not verdicts["agreement"]["passed"]  # 60 away on every row: beyond the champion's validation MAE


def test_mae_is_a_gate_name_with_a_relative_tolerance() -> None:
    config = ro.parse_gates(["mae<=0.05", "error_rate<=0.02"], ro.RolloutConfig())
    assert config.gates == ("accuracy", "error_rate") and config.mae_tolerance == 0.05
    with pytest.raises(shipyard.errors.UsageError, match="unknown gate 'rmse'"):
        ro.parse_gates(["rmse<=1"], ro.RolloutConfig())


def test_an_npz_of_float_targets_is_a_regression(tmp_path: Path) -> None:
    x = np.random.default_rng(0).normal(size=(50, 4)).astype(np.float32)
    np.savez(tmp_path / "r.npz", x_train=x, y_train=x.sum(1) * 1.5, task=np.array("regression"))
    ds = load(f"npz:{tmp_path / 'r.npz'}")
    assert ds.regression and ds.classes == ["target"] and ds.y.dtype == np.float32
    assert load(f"npz:{tmp_path / 'r.npz'}", task="regression").y[3] == pytest.approx(x[3].sum() * 1.5)
    np.savez(tmp_path / "bad.npz", x_train=x, y_train=np.array(["a"] * 50), task=np.array("regression"))
    with pytest.raises(DataError, match="must be numbers"):
        load(f"npz:{tmp_path / 'bad.npz'}")
    with pytest.raises(DataError, match="labels must be integers"):  # without the task: classes, as before
        np.savez(tmp_path / "c.npz", x_train=x, y_train=x.sum(1) * 1.5)
        load(f"npz:{tmp_path / 'c.npz'}")
