"""A shadow's answers are logged under the shadow's own version (request id `shadow·ID`), so the
shadow gets drift windows and a monitor state; a label sent for the request is stored once,
scores the answer the client got for the primary's version and the shadow's answer for the
shadow's version, and counts once model-wide. Real server, real database, real evaluator."""

from __future__ import annotations

from pathlib import Path

import httpx
import numpy as np

from harness.bundles import make_bundle, traffic_data
from shipyard.monitor.api import Monitor
from shipyard.monitor.evaluator import Evaluator, MonitorConfig
from shipyard.monitor.feedback import SHADOW_PREFIX, accuracy, primary_id, shadow_id, window_accuracy
from shipyard.monitor.predlog import read
from shipyard.monitor.windows import status, windows
from shipyard.registry import Registry
from shipyard.settings import Settings

from ..serving import serve
from ..waiting import wait_for

CONFIG = MonitorConfig(window=100, min_window=30, max_age_s=60, draws=500, accuracy_every_s=0)


def test_the_shadow_version_is_logged_labelled_and_monitored(tmp_path: Path) -> None:
    home = tmp_path / "home"
    reg = Registry(settings=Settings(home=home))
    reg.register(make_bundle(tmp_path / "a", seed=0, reference=True), "digits", alias="production")
    reg.register(make_bundle(tmp_path / "b", seed=5, reference=True), "digits", alias="candidate")
    reg.set_traffic("digits", {"production": 100}, shadow="candidate")
    images, labels = traffic_data()
    with serve(home, "digits", "--no-evaluate", "--poll-s", "0") as srv, httpx.Client() as c:
        answers = {}
        for i in range(100):
            row = (images[i].reshape(1, 784) / 255.0).astype(np.float32)
            r = c.post(f"{srv.base}/v2/models/digits/infer", json={"id": f"q-{i}", "inputs": [
                {"name": "input", "datatype": "FP32", "shape": [1, 784], "data": row.ravel().tolist()}]})
            assert r.status_code == 200 and r.json()["model_version"] == "1", r.text
            answers[f"q-{i}"] = int(np.argmax(r.json()["outputs"][0]["data"]))

        def shadowed() -> int:
            return int(c.get(f"{srv.base}/v2/health/ready").json()["shadow"]["compared"])

        wait_for(lambda: shadowed() == 100, "the shadow's answers to every request")
        truth = {rid: int(labels[i]) for i, rid in enumerate(answers)}
        r = c.post(f"{srv.base}/v2/models/digits/feedback",
                   json={"feedback": [{"id": rid, "label": str(y)} for rid, y in truth.items()]})
        assert r.status_code == 200 and r.json()["accepted"] == 100, r.text
        # the copy's id takes no label of its own: a label belongs to the request
        r = c.post(f"{srv.base}/v2/models/digits/feedback",
                   json={"feedback": [{"id": shadow_id("q-0"), "label": "3"}]})
        assert r.status_code == 404 and "q-0" in r.json()["error"], r.text
        wait_for(lambda: len(read(reg.engine, "digits", version=2)) == 100, "the shadow's answers in the log")

    primary, shadow = read(reg.engine, "digits", version=1), read(reg.engine, "digits", version=2)
    assert sorted(primary.request_ids) == sorted(answers)
    assert all(r.startswith(SHADOW_PREFIX) for r in shadow.request_ids)
    assert sorted(map(primary_id, shadow.request_ids)) == sorted(answers)
    assert {r: int(p) for r, p in zip(primary.request_ids, primary.predicted, strict=True)} == answers
    shadow_pred = {primary_id(r): int(p) for r, p in zip(shadow.request_ids, shadow.predicted, strict=True)}
    assert shadow_pred != answers  # another model: its own answers are what is logged for it

    # each label once per version that answered the request, once model-wide
    acc1, acc2 = accuracy(reg.engine, "digits", version=1), accuracy(reg.engine, "digits", version=2)
    assert acc1["n_labels"] == acc2["n_labels"] == 100
    assert acc1["realised"] == np.mean([answers[r] == y for r, y in truth.items()])
    assert acc2["realised"] == np.mean([shadow_pred[r] == y for r, y in truth.items()])
    assert accuracy(reg.engine, "digits")["n_labels"] == 100
    assert Monitor(reg).trace("q-7")["version"] == 1  # the request is the one the client got

    Evaluator(reg, lambda: ["digits"], CONFIG, alerts=None).tick()
    states = status(reg.engine, "digits")
    assert states[2]["windows"] == 1 and states[2]["predictions_seen"] == 100 and states[2]["drift"]
    assert states[2]["accuracy"]["realised"] == acc2["realised"] and states[2]["accuracy"]["n_labels"] == 100
    assert states[1]["windows"] == 1 and states[1]["predictions_seen"] == 100  # the copies are not retries
    shadow_window = windows(reg.engine, "digits", version=2)
    assert window_accuracy(reg.engine, "digits", shadow_window) == [(acc2["realised"], 100)]
