"""The serving core on a real optimized bundle in ONNX Runtime, called through the data plane
in-process: V2 and v1 requests, raw pixels and features, and bad input."""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
from typing import TYPE_CHECKING, Any

import numpy as np
import pytest

from shipyard.data import load
from shipyard.errors import BadRequest
from shipyard.registry import Registry
from shipyard.serve.app import create_app
from shipyard.serve.codec import InferRequest, decode_v2
from shipyard.serve.codec_v1 import decode_v1
from shipyard.serve.config import ServeConfig
from shipyard.serve.dataplane import DataPlane
from shipyard.serve.runtime import ModelRuntime
from shipyard.settings import Settings

if TYPE_CHECKING:
    from ..conftest import Optimized


@pytest.fixture(scope="module")
def plane(optimized: Optimized, tmp_path_factory: pytest.TempPathFactory) -> DataPlane:
    _, _, bundle, _, _ = optimized
    reg = Registry(settings=Settings(home=tmp_path_factory.mktemp("core") / "home"))
    for _ in range(7):  # version 7, as a long-lived model would have
        mv = reg.register(bundle.path, "digits")
    reg.set_alias("digits", "production", mv.version)
    plane = create_app(ServeConfig(metrics=False, log=False, max_batch_size=1), registry=reg).plane
    plane.fleet.refresh()
    return plane


@pytest.fixture(scope="module")
def runtime(plane: DataPlane) -> ModelRuntime:
    return plane.pick("digits")


def infer_v2(plane: DataPlane, req: InferRequest) -> tuple[bytes, int | None, str]:
    ans = asyncio.run(plane.infer_v2("digits", None, req))
    return ans.body, ans.binary_header, ans.rid


def predict_v1(plane: DataPlane, instances: Any) -> tuple[bytes, str]:
    ans = asyncio.run(plane.predict_v1("digits", instances))
    return ans.body, ans.rid


@pytest.fixture(scope="module")
def images() -> tuple[np.ndarray, np.ndarray]:
    splits = load("mnist-sample").split()
    return splits.x_val[:100], splits.y_val[:100]


def v2(inputs: list[dict], **extra: object) -> bytes:
    return json.dumps({"inputs": inputs, **extra}).encode()


def test_raw_pixels_and_features_get_identical_probabilities(plane: DataPlane, runtime: ModelRuntime,
                                                             images: tuple[np.ndarray, np.ndarray]) -> None:
    x, y = images
    features = runtime.preprocess.apply(x)  # type: ignore[union-attr]
    raw_req = decode_v2(v2([{"name": "image", "datatype": "UINT8", "shape": [100, 28, 28],
                             "data": x.ravel().tolist()}]))
    feat_req = decode_v2(v2([{"name": "input", "datatype": "FP32", "shape": [100, 784],
                              "data": features.ravel().tolist()}], id="abc"))
    raw_out = json.loads(infer_v2(plane, raw_req)[0])
    feat_body, header, rid = infer_v2(plane, feat_req)
    feat_out = json.loads(feat_body)
    assert header is None and rid == "abc" and feat_out["id"] == "abc" and feat_out["model_version"] == "7"
    assert raw_out["outputs"][0]["data"] == feat_out["outputs"][0]["data"]
    probs = np.array(feat_out["outputs"][0]["data"]).reshape(100, 10)
    labels = feat_out["outputs"][1]["data"]
    assert labels == [str(i) for i in probs.argmax(1)]
    assert (probs.argmax(1) == y).mean() > 0.8
    assert raw_out["id"] and raw_out["id"] != "abc"  # generated when absent


def test_binary_request_and_response(
        plane: DataPlane, runtime: ModelRuntime, images: tuple[np.ndarray, np.ndarray]) -> None:
    x, _ = images
    header = v2([{"name": "image", "datatype": "UINT8", "shape": [3, 28, 28],
                  "parameters": {"binary_data_size": 3 * 784}}],
                outputs=[{"name": "probabilities", "parameters": {"binary_data": True}}])
    body, hlen, _ = infer_v2(plane, decode_v2(header + x[:3].tobytes(), len(header)))
    assert hlen is not None
    doc = json.loads(body[:hlen])
    assert [o["name"] for o in doc["outputs"]] == ["probabilities"]
    probs = np.frombuffer(body[hlen:], "<f4").reshape(3, 10)
    np.testing.assert_allclose(probs.sum(1), 1.0, rtol=1e-5)


def test_v1_instances_raw_or_features(
        plane: DataPlane, runtime: ModelRuntime, images: tuple[np.ndarray, np.ndarray]) -> None:
    x, _ = images
    raw, _ = predict_v1(plane, decode_v1(json.dumps({"instances": x[:2].tolist()}).encode()))
    feats = runtime.preprocess.apply(x[:2])  # type: ignore[union-attr]
    ready, _ = predict_v1(plane, decode_v1(json.dumps({"instances": feats.tolist()}).encode()))
    a, b = json.loads(raw)["predictions"], json.loads(ready)["predictions"]
    assert [p["label"] for p in a] == [p["label"] for p in b]
    np.testing.assert_allclose([p["probabilities"] for p in a], [p["probabilities"] for p in b], atol=1e-6)


@pytest.mark.parametrize(("inputs", "message"), [
    ([{"name": "pixels", "datatype": "FP32", "shape": [1, 784], "data": [0.0] * 784}], "no input 'pixels'"),
    ([{"name": "input", "datatype": "FP64", "shape": [1, 784], "data": [0.0] * 784}], "must be FP32, got FP64"),
    ([{"name": "input", "datatype": "FP32", "shape": [1, 783], "data": [0.0] * 783}], r"shape \[-1, 784\]"),
    ([{"name": "image", "datatype": "FP32", "shape": [1, 28, 28], "data": [0.0] * 784}], "must be UINT8"),
    ([{"name": "input", "datatype": "FP32", "shape": [1, 784], "data": [float("nan")] + [0.0] * 783}],
     "not valid JSON"),  # NaN is no JSON literal; strict parsing refuses it
    ([{"name": "input", "datatype": "FP32", "shape": [0, 784], "data": []}], "no instances"),
])
def test_bad_inputs_are_named(plane: DataPlane, runtime: ModelRuntime, inputs: list[dict], message: str) -> None:
    with pytest.raises(BadRequest, match=message):
        infer_v2(plane, decode_v2(v2(inputs)))


def test_nan_and_infinity_are_refused(plane: DataPlane, runtime: ModelRuntime) -> None:
    x = np.zeros((2, 784), "<f4")
    x[1, 5] = np.inf
    header = v2([{"name": "input", "datatype": "FP32", "shape": [2, 784],
                  "parameters": {"binary_data_size": x.nbytes}}])
    with pytest.raises(BadRequest, match="instance 1 contains NaN or infinity"):
        infer_v2(plane, decode_v2(header + x.tobytes(), len(header)))


def test_v1_bad_instances(plane: DataPlane, runtime: ModelRuntime) -> None:
    with pytest.raises(BadRequest, match="each instance must have shape"):
        predict_v1(plane, np.zeros((1, 5)))
    with pytest.raises(BadRequest, match="UINT8 takes whole numbers in 0..255, got 300"):
        predict_v1(plane, np.full((1, 28, 28), 300.0))


def test_metadata_declares_both_inputs(runtime: ModelRuntime) -> None:
    meta = runtime.metadata()
    assert {(i["name"], i["datatype"]) for i in meta["inputs"]} == {("input", "FP32"), ("image", "UINT8")}
    assert meta["versions"] == ["7"] and meta["parameters"]["classes"][0] == "0"


def test_the_serving_core_never_imports_torch() -> None:
    code = ("import sys, shipyard.serve.app, shipyard.registry; "
            "assert 'torch' not in sys.modules, 'torch imported'; print('ok')")
    p = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert p.returncode == 0 and p.stdout.strip() == "ok", p.stderr
