"""The prediction log's size budget on a real SQLite file and a real PostgreSQL database: what goes
first (unlabelled inputs past the feedback horizon, then waiting inputs, then predictions past the
horizon, predictions labels could still reach only last), the sample share it lowers and raises,
the bytes and removals it reports."""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import sqlalchemy as sa
from prometheus_client import REGISTRY

from shipyard.monitor import logbudget
from shipyard.monitor.config import LogConfig
from shipyard.monitor.predlog import PredictionLog, inputs_for, read
from shipyard.registry import Registry
from shipyard.settings import Settings
from shipyard.store.schema import feedback, prediction_chunks, prediction_inputs

pytestmark = pytest.mark.usefixtures("close_pools")

HOUR = 3600.0
ROWS, FEATURES = 50, 784


class Runtime:
    """What the log reads of a served model: name, version, and no reference projection."""

    name, version, project = "digits", 1, None


def removed(table: str, reason: str) -> float:
    return REGISTRY.get_sample_value("shipyard_prediction_log_removed_total",
                                     {"table": table, "reason": reason}) or 0.0


def fill(log: PredictionLog, engine: sa.Engine, t0: float, flushes: int = 10) -> None:
    """`flushes` chunks of ROWS predictions, an hour apart from `t0`, every input sampled; the
    first 5 request ids of each chunk labelled a minute after."""
    rng = np.random.default_rng(0)
    rt = Runtime()
    for k in range(flushes):
        x = rng.random((ROWS, FEATURES)).astype(np.float32)
        probs = rng.dirichlet(np.ones(10), ROWS).astype(np.float32)
        log.record_batch(rt, [f"c{k}-{i}" for i in range(ROWS)], [1] * ROWS, x, probs)  # type: ignore[arg-type]
        log.pending[-1] = (*log.pending[-1][:5], t0 + k * HOUR)  # as if logged k hours after t0
        assert log.flush() == ROWS
    with engine.begin() as conn:
        conn.execute(feedback.insert(), [{"model": "digits", "request_id": f"c{k}-{i}", "label": 1,
                                          "ts": t0 + k * HOUR + 60} for k in range(flushes) for i in range(5)])


def kinds(engine: sa.Engine) -> dict[str, int]:
    c = prediction_inputs
    with engine.connect() as conn:
        return {k: int(n) for k, n in conn.execute(sa.select(c.c.kind, sa.func.sum(c.c.n)).group_by(c.c.kind))}


def used(engine: sa.Engine) -> int:
    with engine.connect() as conn:
        return sum(logbudget.measure(conn).values())


def test_the_budget_removes_the_cheapest_loss_first(reg_settings: Settings) -> None:
    reg = Registry(settings=reg_settings)
    engine = reg.engine
    now = time.time()
    log = PredictionLog(engine, LogConfig(sample=1.0, ring=0, horizon_s=3.5 * HOUR, max_bytes=1 << 30))
    fill(log, engine, now - 9.25 * HOUR)  # chunks 0..5 past the horizon (older than 3.5 h), 6..9 within
    budget = log.budget
    start = used(engine)
    assert start > ROWS * 10 * FEATURES  # the inputs dominate: 784 bytes each against ~40 for the outputs
    assert budget.retain() == {} and used(engine) == start  # under the budget nothing goes

    # 1. past the horizon, sampled inputs are cut to the labelled rows; nothing else is touched
    before = removed("prediction_inputs", "unlabelled")
    budget.max_bytes = int(start * 0.7)
    got = budget.retain()
    assert got == {("prediction_inputs", "unlabelled"): 6 * 45}
    assert removed("prediction_inputs", "unlabelled") - before == 6 * 45
    assert kinds(engine) == {"labelled": 6 * 5, "sample": 4 * ROWS}
    assert used(engine) <= budget.max_bytes and budget.share == 1.0
    logged = read(engine, "digits")
    assert len(logged) == 10 * ROWS  # every prediction is still there
    kept = inputs_for(engine, "digits", [int(i) for i in logged.ids])
    labelled = {f"c{k}-{i}" for k in range(10) for i in range(5)}
    have = {rid for rid, pid in zip(logged.request_ids, logged.ids, strict=True) if int(pid) in kept}
    assert labelled <= have and len(have) == 6 * 5 + 4 * ROWS  # the retraining sample survives

    # 2. then the oldest inputs still waiting for labels, and the sample share halves
    budget.max_bytes = int(used(engine) * 0.6)
    got = budget.retain()
    assert set(got) == {("prediction_inputs", "inputs")} and got[("prediction_inputs", "inputs")] % ROWS == 0
    assert kinds(engine)["labelled"] == 30 and kinds(engine).get("sample", 0) < 4 * ROWS
    assert budget.share == 0.5 and len(read(engine, "digits")) == 10 * ROWS
    assert used(engine) <= budget.max_bytes

    # 3. then the oldest predictions past the horizon, with the labelled inputs only they joined
    with engine.begin() as conn:  # no waiting inputs left: the next rung is the predictions
        conn.execute(prediction_inputs.delete().where(prediction_inputs.c.kind == "sample"))
    budget.max_bytes = int(used(engine) * 0.7)
    got = budget.retain()
    assert set(got) == {("prediction_chunks", "past_horizon"), ("prediction_inputs", "with_predictions")}
    gone = got[("prediction_chunks", "past_horizon")] // ROWS
    assert 1 <= gone <= 5 and got[("prediction_inputs", "with_predictions")] == 5 * gone
    logged = read(engine, "digits")
    assert len(logged) == (10 - gone) * ROWS and f"c{gone}-0" in logged.request_ids
    assert f"c{gone - 1}-0" not in logged.request_ids and used(engine) <= budget.max_bytes

    # 4. predictions labels could still reach go only when nothing else is left
    budget.max_bytes = 4000
    got = budget.retain()
    assert got.get(("prediction_chunks", "in_horizon"), 0) > 0 and used(engine) <= budget.max_bytes
    with engine.connect() as conn:
        newest = conn.execute(sa.select(sa.func.max(prediction_chunks.c.ts_last))).scalar_one()
    assert newest == pytest.approx(now - 0.25 * HOUR)  # the newest predictions are the last kept

    # the share climbs back once the log is well under its budget
    budget.max_bytes = 1 << 30
    budget.retain()
    assert budget.share == 1.0


def test_the_limits_that_always_held_still_hold_and_are_counted(reg_settings: Settings) -> None:
    reg = Registry(settings=reg_settings)
    now = time.time()
    log = PredictionLog(reg.engine, LogConfig(sample=1.0, ring=0, max_rows=3 * ROWS, retention_days=0.25,
                                              max_bytes=1 << 30))
    before = {r: removed("prediction_chunks", r) for r in ("age", "rows")}
    fill(log, reg.engine, now - 9.25 * HOUR)  # chunks 0..3 are older than 6 h
    got = log.budget.retain()
    assert got[("prediction_chunks", "age")] == 4 * ROWS and got[("prediction_inputs", "age")] == 4 * ROWS
    assert got[("prediction_chunks", "rows")] == 3 * ROWS and got[("prediction_inputs", "rows")] == 3 * ROWS
    assert removed("prediction_chunks", "age") - before["age"] == 4 * ROWS
    assert removed("prediction_chunks", "rows") - before["rows"] == 3 * ROWS
    assert len(read(reg.engine, "digits")) == 3 * ROWS and kinds(reg.engine) == {"sample": 3 * ROWS}


def test_usage_reports_bytes_rows_and_reach(reg_settings: Settings) -> None:
    reg = Registry(settings=reg_settings)
    now = time.time()
    log = PredictionLog(reg.engine, LogConfig(sample=1.0, ring=0, max_bytes=1 << 30))
    fill(log, reg.engine, now - 9.25 * HOUR, flushes=3)
    u = logbudget.usage(reg.engine, max_bytes=1 << 20, horizon_s=7 * 24 * HOUR)
    assert u["budget_bytes"] == 1 << 20 and u["used_bytes"] == used(reg.engine)
    assert u["used_share"] == pytest.approx(u["used_bytes"] / (1 << 20), abs=1e-4)
    chunks, inputs = u["tables"]["prediction_chunks"], u["tables"]["prediction_inputs"]
    assert chunks["rows"] == 3 * ROWS and inputs["by_kind"] == {"sample": 3 * ROWS}
    assert inputs["bytes"] >= 3 * ROWS * (FEATURES + 8) and chunks["bytes"] < inputs["bytes"] / 5
    assert u["reach_s"] == pytest.approx(9.25 * HOUR, abs=60) and u["disk_bytes"] > 0
    derived = logbudget.usage(reg.engine)["budget_bytes"]
    assert logbudget.MIN_BYTES <= derived <= logbudget.MAX_BYTES


def test_removed_counts_are_read_from_a_servers_metrics_folder(tmp_path: Path) -> None:
    folder = tmp_path / "metrics-1"
    folder.mkdir()
    code = ("from shipyard.monitor import metrics; "
            "metrics.LOG_REMOVED.labels('prediction_inputs', 'inputs').inc(7); "
            "metrics.LOG_REMOVED.labels('prediction_chunks', 'past_horizon').inc(3)")
    env: dict[str, Any] = {"PROMETHEUS_MULTIPROC_DIR": str(folder), "PATH": "/usr/bin:/bin"}
    subprocess.run([sys.executable, "-c", code], check=True, env=env)
    subprocess.run([sys.executable, "-c", code], check=True, env=env)  # a second worker
    assert logbudget.removed_counts([folder, tmp_path / "gone"]) == {
        "prediction_inputs/inputs": 14, "prediction_chunks/past_horizon": 6}
