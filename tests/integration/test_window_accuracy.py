"""Late labels count: a window's realised accuracy is read from the labels in the database when it
is shown (`feedback.window_accuracy`, the report and the dashboard), not frozen at evaluation time.
Real evaluator, real prediction log, real database."""

from __future__ import annotations

from pathlib import Path

import pytest

from harness.bundles import traffic_data
from shipyard.monitor import report
from shipyard.monitor.api import Monitor
from shipyard.monitor.evaluator import Evaluator, MonitorConfig
from shipyard.monitor.feedback import record_feedback, window_accuracy
from shipyard.monitor.windows import windows

from ..monitoring import deploy, log_images

CONFIG = MonitorConfig(window=100, min_window=30, max_age_s=60, draws=500, accuracy_every_s=0)
CLASSES = [str(i) for i in range(10)]


def test_a_window_evaluated_before_its_labels_shows_them_once_they_arrive(tmp_path: Path) -> None:
    reg, rt, log = deploy(tmp_path)
    images, _ = traffic_data()
    first, pred_first = log_images(log, rt, images[:100], "w1")
    second, pred_second = log_images(log, rt, images[100:200], "w2")
    Evaluator(reg, lambda: ["digits"], CONFIG, alerts=None).tick()
    wins = windows(reg.engine, "digits")
    assert [w["n"] for w in wins] == [100, 100]
    assert all(w["results"]["realised_accuracy"] is None for w in wins)  # no label had come yet
    assert window_accuracy(reg.engine, "digits", wins) == [(None, 0), (None, 0)]

    # labels arrive after the evaluation: 30 for the first window (20 right), 50 for the second (all wrong)
    truth = [(rid, str(p if i < 20 else (p + 1) % 10)) for i, (rid, p) in enumerate(zip(first[:30], pred_first,
                                                                                         strict=False))]
    truth += [(rid, str((p + 1) % 10)) for rid, p in zip(second[:50], pred_second, strict=False)]
    assert record_feedback(reg.engine, "digits", CLASSES, truth, horizon_s=3600).counts["accepted"] == 80
    got = window_accuracy(reg.engine, "digits", wins)
    assert got[0] == (pytest.approx(20 / 30), 30) and got[1] == (0.0, 50)
    assert windows(reg.engine, "digits")[0]["results"]["realised_accuracy"] is None  # the stored figure stays

    # the report and the dashboard (both `collect`) show the labels known now
    data = report.collect(Monitor(reg), "digits", since=0)
    assert [(w["results"]["realised_accuracy"], w["results"]["n_labels"]) for w in data["windows"]] == \
        [(pytest.approx(20 / 30), 30), (0.0, 50)]
    # so does the Python API (`Monitor.windows`), unless told not to join the labels
    assert [w["results"]["realised_accuracy"] for w in Monitor(reg).windows("digits")] == \
        [pytest.approx(20 / 30), 0.0]
    assert Monitor(reg).windows("digits", late_labels=False)[0]["results"]["realised_accuracy"] is None
    html = report.render(data)
    assert "<h2>Windows</h2>" in html and "66.7% (30)" in html and "0.0% (50)" in html

    # a relabelling replaces the label it corrects: the first window's 10 wrong ones become right
    fixed = [(rid, str(p)) for rid, p in zip(first[20:30], pred_first[20:30], strict=True)]
    record_feedback(reg.engine, "digits", CLASSES, fixed, horizon_s=3600)
    assert window_accuracy(reg.engine, "digits", wins)[0] == (1.0, 30)
