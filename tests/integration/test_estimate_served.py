"""Issue 16 end to end, through a real server: the accuracy estimate says when it cannot be
believed. Inputs the model never trained on (the trained run's validation split), sent as a
client would, labels sent back through the feedback route."""

from __future__ import annotations

import json
import time
from typing import TYPE_CHECKING

import httpx
import numpy as np

from shipyard.data import load
from shipyard.monitor.windows import windows

from ..conftest import run_cli
from ..serving import serve, server_env

if TYPE_CHECKING:
    from ..conftest import Champion


def _infer(client: httpx.Client, base: str, images: np.ndarray, prefix: str) -> list[str]:
    ids = []
    for i in range(0, len(images), 10):
        chunk = images[i:i + 10].astype(np.uint8).reshape(-1, 28, 28)
        doc = {"id": f"{prefix}-{i}", "inputs": [{"name": "image", "datatype": "UINT8", "shape": list(chunk.shape),
                                                  "data": chunk.ravel().tolist()}]}
        r = client.post(f"{base}/v2/models/digits/infer", json=doc)
        assert r.status_code == 200, r.text
        ids += [f"{prefix}-{i}/{j}" for j in range(len(chunk))] if len(chunk) > 1 else [f"{prefix}-{i}"]
    return ids


def test_the_estimate_is_believed_on_unseen_digits_and_not_on_inverted_ones(champion: Champion) -> None:
    settings, reg = champion
    ds = load("mnist-sample")
    sp = ds.split()  # the run's own split: the validation rows were never trained on
    x, y = sp.x_val[:500], sp.y_val[:500]
    env = server_env(settings.home)
    with serve(settings.home, "digits", "--window", "250", env=env) as srv, httpx.Client() as c:
        inputs = {i["name"] for i in c.get(f"{srv.base}/v2/models/digits").json()["inputs"]}
        assert "image" in inputs, inputs
        ids = _infer(c, srv.base, x, "calm")
        labels = [{"id": rid, "label": str(int(lab))} for rid, lab in zip(ids, y, strict=True)]
        r = c.post(f"{srv.base}/v2/models/digits/feedback", json={"feedback": labels})
        assert r.status_code == 200, r.text

        def state() -> dict:  # type: ignore[type-arg]
            out = run_cli(["monitor", "status", "digits", "--json"], env)
            return json.loads(out.stdout.strip().splitlines()[-1])  # type: ignore[no-any-return]

        deadline = time.monotonic() + 90
        while not (s := state())["versions"] or s["versions"]["1"]["windows"] < 2 or \
                s["versions"]["1"]["accuracy"]["n_labels"] < 500:
            assert time.monotonic() < deadline, s
            time.sleep(0.3)
        acc = s["versions"]["1"]["accuracy"]
        # the log against its size budget, in the same status (part 6)
        assert s["log"]["used_bytes"] > 0 and s["log"]["budget_bytes"] >= 64 << 20, s["log"]
        assert s["log"]["tables"]["prediction_chunks"]["rows"] >= 1
        assert acc["estimated_reliable"] is True and acc["estimated_reason"] is None, acc
        ests = [w["results"]["estimated_accuracy"] for w in windows(reg.engine, "digits")]
        assert len(ests) == 2
        assert abs(float(np.mean(ests)) - acc["realised"]) <= 0.03, (ests, acc)
        text = httpx.get(f"{srv.base}/metrics").text
        assert 'shipyard_accuracy_estimate_reliable{model="digits",version="1"} 1.0' in text

        _infer(c, srv.base, 255 - x[:250], "inverted")
        while (s := state())["versions"]["1"]["windows"] < 3:
            assert time.monotonic() < deadline, s
            time.sleep(0.3)
        v1 = s["versions"]["1"]
        assert v1["alarm"] and v1["accuracy"]["estimated_reliable"] is False, v1["accuracy"]
        assert "inputs moved" in v1["accuracy"]["estimated_reason"]
        while True:
            s = state()
            if any(a["rule"] == "drift" for a in s["alerts"]):
                break
            assert time.monotonic() < deadline, s
            time.sleep(0.3)
        rules = s["versions"]["1"].get("rules", {})
        assert rules.get("accuracy-drop", {}).get("state") == "unknown", rules
        # 500 labels are in: the realised accuracy can decide, so no labels are asked for
        assert rules.get("labels-needed", {}).get("state") == "ok", rules
        text = httpx.get(f"{srv.base}/metrics").text
        assert 'shipyard_accuracy_estimate_reliable{model="digits",version="1"} 0.0' in text
        human = run_cli(["monitor", "status", "digits"], env).stdout
        assert "cannot be believed" in human or "unreliable" in human, human
