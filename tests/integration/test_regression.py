"""Regression end to end with real processes, on scikit-learn's diabetes data (real, shipped in
the package): the task is guessed and printed, MAE and RMSE are tracked per epoch, optimize keeps
its contract in MAE terms (a variant within 2% of fp32's MAE), the bundle answers `prediction`
values in the target's units, and the served answers equal the bundle's offline ones."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import httpx
import numpy as np
import onnxruntime as ort
import pytest

from shipyard.bundle import Bundle
from shipyard.settings import Settings
from shipyard.training import RunStore

from ..conftest import run_cli
from ..serving import Server, serve, server_env

pytestmark = pytest.mark.timeout(600)


@pytest.fixture(scope="module")
def diabetes(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Server, Bundle, dict, Path]]:  # type: ignore[type-arg]
    tmp = tmp_path_factory.mktemp("regression")
    home = tmp / "home"
    env = server_env(home)
    trained = run_cli(["train", "--data", "sklearn:diabetes", "--epochs", "40", "--loss", "huber", "--json"], env)
    assert "task: regression of 'target'" in trained.stderr and "guessed from the labels" in trained.stderr
    run = json.loads(trained.stdout.strip().splitlines()[-1])
    bundle_path = tmp / "diabetes.tar.gz"
    run_cli(["optimize", run["run_id"], "--name", "diabetes", "-o", str(bundle_path), "--bench-seconds", "0.05"], env)
    run_cli(["models", "register", str(bundle_path), "--alias", "production"], env)
    bundle = Bundle.load(bundle_path)
    with serve(home, "diabetes") as server:
        yield server, bundle, run, home


def test_a_run_tracks_mae_and_rmse(diabetes: tuple[Server, Bundle, dict, Path]) -> None:  # type: ignore[type-arg]
    _, _, run, home = diabetes
    assert run["best_val_accuracy"] is None and run["test_accuracy"] is None
    stored = RunStore(Settings(home=home)).get(run["run_id"])
    maes, rmses = stored.metrics["val_mae"], stored.metrics["val_rmse"]
    assert len(maes) == len(rmses) == 40 and "train_mae" in stored.metrics
    assert run["best_val_mae"] == pytest.approx(min(maes)) and stored.best_epoch == maes.index(min(maes)) + 1
    assert all(r >= m for r, m in zip(rmses, maes, strict=True))  # RMSE ≥ MAE, always
    y = __import__("sklearn.datasets", fromlist=["load_diabetes"]).load_diabetes().target
    assert run["best_val_mae"] < 0.75 * float(np.abs(y - y.mean()).mean())  # it learned: beats the mean's MAE


def test_optimize_keeps_its_contract_in_mae(diabetes: tuple[Server, Bundle, dict, Path]) -> None:  # type: ignore[type-arg]
    _, bundle, run, _ = diabetes
    meta = bundle.meta
    assert meta.task == "regression" and bundle.classes == ["target"]
    assert [o.name for o in meta.signature.outputs] == ["prediction"]
    fp32 = next(v for v in meta.variants if v.name == "fp32")
    assert fp32.mae is not None and fp32.accuracy is None
    chosen = next(v for v in meta.variants if v.name == meta.variant)
    assert chosen.mae is not None and chosen.mae <= fp32.mae * 1.02
    assert meta.metrics.val_mae == chosen.mae and meta.metrics.train_best_val_mae == pytest.approx(run["best_val_mae"])
    assert "within 2% of fp32's MAE" in (meta.choice.reason if meta.choice else "")


def test_served_values_equal_offline_ones(diabetes: tuple[Server, Bundle, dict, Path]) -> None:  # type: ignore[type-arg]
    from sklearn.datasets import load_diabetes

    server, bundle, _, _ = diabetes
    data = load_diabetes(as_frame=True)
    x = data.data.to_numpy(np.float32)[:100]
    spec = bundle.preprocess
    assert spec is not None
    sess = ort.InferenceSession(str(bundle.model_path), providers=["CPUExecutionProvider"])
    offline = sess.run(None, {bundle.meta.signature.onnx_input: spec.apply(x)})[0]
    meta = httpx.get(f"{server.base}/v2/models/diabetes", timeout=10).json()
    assert meta["outputs"] == [{"name": "prediction", "datatype": "FP32", "shape": [-1, 1]}]
    assert meta["parameters"]["task"] == "regression" and meta["parameters"]["targets"] == ["target"]
    columns = [{"name": c, "datatype": "FP32", "shape": [len(x)], "data": x[:, j].tolist()}
               for j, c in enumerate(data.data.columns)]
    v2 = httpx.post(f"{server.base}/v2/models/diabetes/infer", json={"inputs": columns}, timeout=30)
    assert v2.status_code == 200, v2.text
    (out,) = v2.json()["outputs"]
    assert out["name"] == "prediction" and out["shape"] == [100, 1]
    np.testing.assert_allclose(np.array(out["data"], np.float32).reshape(100, 1), offline, rtol=1e-6, atol=1e-4)
    v1 = httpx.post(f"{server.base}/v1/models/diabetes:predict", json={"instances": x.tolist()}, timeout=30)
    assert v1.status_code == 200, v1.text
    np.testing.assert_allclose(np.array(v1.json()["predictions"], np.float32), offline[:, 0], rtol=1e-6, atol=1e-4)
    asked = httpx.post(f"{server.base}/v2/models/diabetes/infer", json={
        "inputs": columns, "outputs": [{"name": "label"}]}, timeout=30)
    assert asked.status_code == 400 and "has no output 'label'; outputs: prediction" in asked.json()["error"]


def test_task_can_be_forced_and_is_checked(tmp_path: Path) -> None:
    env = server_env(tmp_path / "home")
    csv = tmp_path / "d.csv"
    csv.write_text("a,b,label\n" + "".join(f"{i % 7},{(i * 3) % 5},{'yes' if i % 2 else 'no'}\n" for i in range(60)))
    refused = run_cli(["train", "--data", f"csv:{csv}", "--task", "regression", "--epochs", "1", "-q"], env,
                      check=False)
    assert refused.returncode == 1 and "a regression target must be a number, got 'no'" in refused.stderr
    wrong = run_cli(["train", "--data", "mnist-sample", "--task", "regression", "--epochs", "1", "-q"], env,
                    check=False)
    assert wrong.returncode == 2 and "a regression needs a table" in wrong.stderr
    assert "Traceback" not in refused.stderr + wrong.stderr


def test_predict_writes_values_for_a_file(diabetes: tuple[Server, Bundle, dict, Path], tmp_path: Path) -> None:  # type: ignore[type-arg]
    """`shipyard predict` on a CSV with a regression: one `prediction` column, the target ignored."""
    import pandas as pd
    from sklearn.datasets import load_diabetes

    _, bundle, _, home = diabetes
    frame = load_diabetes(as_frame=True).frame
    frame.to_csv(tmp_path / "rows.csv", index=False)
    done = run_cli(["predict", "diabetes@production", str(tmp_path / "rows.csv"), "-o", str(tmp_path / "out.csv"),
                    "--json"], server_env(home))
    info = json.loads(done.stdout.strip().splitlines()[-1])
    assert info["rows"] == len(frame) and info["version"] == 1 and info["ignored_columns"] == ["target"]
    out = pd.read_csv(tmp_path / "out.csv")
    assert list(out.columns) == ["row_id", "prediction", "version"]
    spec = bundle.preprocess
    assert spec is not None
    sess = ort.InferenceSession(str(bundle.model_path), providers=["CPUExecutionProvider"])
    offline = sess.run(None, {bundle.meta.signature.onnx_input: spec.apply(
        frame.drop(columns="target").to_numpy(np.float32))})[0][:, 0]
    np.testing.assert_allclose(out["prediction"].to_numpy(np.float32), offline, rtol=1e-6, atol=1e-4)


def test_true_values_come_back_as_realised_mae(diabetes: tuple[Server, Bundle, dict, Path]) -> None:  # type: ignore[type-arg]
    """A regression's answers are logged (the value where a class's confidence goes); feedback
    takes true values (numbers only); the evaluator's state shows the realised MAE and RMSE."""
    from sklearn.datasets import load_diabetes

    from ..waiting import wait_for

    server, _, _, home = diabetes
    data = load_diabetes()
    x, y = data.data[:60].astype(np.float32), data.target[:60]
    answer = httpx.post(f"{server.base}/v2/models/diabetes/infer", json={"inputs": [
        {"name": "raw", "datatype": "FP32", "shape": list(x.shape), "data": x.ravel().tolist()}]}, timeout=30)
    assert answer.status_code == 200, answer.text
    rid = answer.json()["id"]
    predicted = np.array(answer.json()["outputs"][0]["data"], np.float64)
    items = [{"id": f"{rid}/{j}", "label": float(y[j])} for j in range(len(y))]
    fed = httpx.post(f"{server.base}/v2/models/diabetes/feedback", json={"feedback": items}, timeout=30)
    assert fed.status_code == 200 and fed.json()["accepted"] == 60, fed.text
    bad = httpx.post(f"{server.base}/v2/models/diabetes/feedback",
                     json={"feedback": [{"id": f"{rid}/0", "label": "high"}]}, timeout=30)
    assert bad.status_code == 400 and "a regression's label is its true value, a finite number" in bad.json()["error"]

    def realised() -> dict | None:  # type: ignore[type-arg]
        shown = run_cli(["monitor", "status", "diabetes", "--json"], server_env(home), check=False)
        if shown.returncode != 0:
            return None
        doc = json.loads(shown.stdout.strip().splitlines()[-1])
        versions = doc.get("versions") or {}
        state = next(iter(versions.values()), None) if isinstance(versions, dict) else (versions or [None])[0]
        acc = (state or {}).get("accuracy") or {}
        return acc if acc.get("realised_mae") is not None else None

    acc = wait_for(realised, "the evaluator's realised MAE", timeout=60, interval=1)
    assert acc["n_labels"] == 60 and acc["realised"] is None  # no accuracy for a regression
    assert acc["realised_mae"] == pytest.approx(float(np.abs(y - predicted).mean()), rel=1e-4)
    assert acc["realised_rmse"] == pytest.approx(float(np.sqrt(((y - predicted) ** 2).mean())), rel=1e-4)


def test_the_cli_shows_mae_and_targets(diabetes: tuple[Server, Bundle, dict, Path]) -> None:  # type: ignore[type-arg]
    _, bundle, _, home = diabetes
    env = server_env(home)
    listed = run_cli(["models", "list"], env).stdout
    assert "MAE " in listed and "diabetes" in listed
    shown = run_cli(["bundle", "show", str(bundle.path)], env).stdout
    assert "targets" in shown and "prediction float32 [-1, 1]" in shown
