"""Update, step 1: retraining from production data. Labelled production samples (inputs the log kept,
joined with feedback) plus the original data, warm-started from the champion, registered behind
`candidate` with its lineage, and the offline gate on the recent holdout and the validation split."""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import pytest

import shipyard
from harness.bundles import make_bundle
from shipyard.data.sources import mnist_sample
from shipyard.errors import UsageError
from shipyard.monitor.feedback import record_feedback
from shipyard.monitor.predlog import LogConfig, PredictionLog
from shipyard.registry import Registry
from shipyard.serve.runtime import ModelRuntime
from shipyard.update.data import labelled

from ..conftest import run_cli
from ..serving import server_env
from ..waiting import clock_moves_on

if TYPE_CHECKING:
    from ..conftest import Champion


def _log_labelled(reg: Registry, images: np.ndarray, labels: np.ndarray, prefix: str) -> None:
    """Serve `images` (raw) through the champion as a server would, log them, and label them."""
    rt = ModelRuntime(reg.load("digits@production"), reg.get("digits@production").version, name="digits")
    log = PredictionLog(reg.engine, LogConfig(ring_rate=1e9))
    feats = rt.features("image", images)
    ids = [f"{prefix}-{i}" for i in range(len(images))]
    for s in range(0, len(images), 50):  # several flushes: distinct times, as live traffic has
        log.record_batch(rt, ids[s:s + 50], [1] * len(ids[s:s + 50]), feats[s:s + 50], rt.predict(feats[s:s + 50]))
        log.flush()
        clock_moves_on()
    res = record_feedback(reg.engine, "digits", rt.bundle.classes, list(zip(ids, labels.astype(str).tolist(),
                                                                               strict=True)), horizon_s=3600)
    assert res.counts["accepted"] == len(ids)


def test_labelled_production_inputs_come_back_as_the_raw_images_that_were_served(champion: Champion) -> None:
    settings, reg = champion
    ds = mnist_sample()
    _log_labelled(reg, ds.x[:120], ds.y[:120], "p")
    got = labelled(reg.engine, "digits", reg.load("digits@1").preprocess)
    assert len(got) == 120 and got.labels_total == 120
    np.testing.assert_array_equal(got.x, ds.x[:120])  # lossless: 8-bit inputs survive the log
    np.testing.assert_array_equal(got.y, ds.y[:120])
    train, recent = got.split(0.2)
    assert (len(train), len(recent)) == (96, 24) and train.ts.max() <= recent.ts.min()


def test_retrain_on_shifted_labels_beats_the_champion_on_the_recent_holdout(champion: Champion) -> None:
    settings, reg = champion
    ds = mnist_sample()
    rng = np.random.default_rng(3)
    idx = rng.choice(len(ds.x), 600, replace=False)
    _log_labelled(reg, 255 - ds.x[idx], ds.y[idx], "inv")  # the world turned negative
    result = shipyard.retrain("digits", registry=reg, settings=settings, epochs=3, progress=False)
    assert (result.champion, result.version, result.alias) == (1, 2, "candidate")
    assert result.samples["production_train"] == 480 and result.samples["recent_holdout"] == 120
    assert reg.get("digits@candidate").version == 2 and reg.get("digits@production").version == 1
    lineage = reg.get("digits@2").meta.lineage.to_dict()
    assert lineage["parent_version"] == 1 and lineage["production_window"]["trained_on"] == 480
    assert lineage["production_window"]["since"] <= lineage["production_window"]["holdout_since"]
    # the reference: the recent holdout plus the production rows the run validated on (none trained
    # on); not topped up with original rows, which differ from this world (every window would alarm)
    meta = reg.get("digits@2").meta
    assert meta.reference is not None and meta.reference.held_out_rows is not None
    rows = meta.reference.held_out_rows
    assert rows["recent_holdout"] == 120 and 80 <= rows["production_validation"] <= 110, rows
    assert "original_validation" not in rows and result.samples["reference"] == rows
    assert meta.reference.held_out == f"{sum(rows.values())} labelled production samples"
    # "validation accuracy" is the validation split's; the holdout's is recorded apart
    assert meta.reference.val_accuracy == meta.metrics.val_accuracy
    gate = result.gate["sets"]
    assert meta.metrics.holdout_accuracy == pytest.approx(gate["recent_holdout"]["challenger"], abs=0.01)
    assert gate["recent_holdout"]["challenger"] >= gate["recent_holdout"]["champion"] + 0.05, gate
    assert result.gate["passed"], result.gate
    kinds = [(e.kind, e.version) for e in reg.history("digits")]
    assert ("gate", 2) in kinds and ("alias", 2) in kinds
    gate_event = next(e for e in reg.history("digits") if e.kind == "gate")
    assert gate_event.details["gate"] == "offline" and gate_event.details["passed"]


def test_retrain_refuses_with_a_reason(champion: Champion, tmp_path: Path) -> None:
    settings, reg = champion
    with pytest.raises(UsageError, match="only 0 labelled production samples"):
        shipyard.retrain("digits", registry=reg, settings=settings, progress=False)
    with pytest.raises(UsageError, match="cannot be read here.*--data"):
        shipyard.retrain("digits", registry=reg, settings=settings, data="npz:/nonexistent.npz", progress=False)
    reg.register(make_bundle(tmp_path / "ext"), "external", alias="production")
    with pytest.raises(UsageError, match="no weights"):
        shipyard.retrain("external", registry=reg, settings=settings, progress=False)


def test_the_retrain_command_explains_a_refusal(champion: Champion) -> None:
    settings, _ = champion
    env = server_env(settings.home)
    r = run_cli(["retrain", "digits", "--json"], env, check=False)
    assert r.returncode == 2 and "only 0 labelled production samples" in json.loads(r.stdout)["error"]
    r = run_cli(["retrain", "digits", "--holdout", "1.5"], env, check=False)
    assert r.returncode == 2 and "--holdout" in r.stderr
