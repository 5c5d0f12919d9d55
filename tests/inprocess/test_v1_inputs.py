"""The v1 `:predict` route's columnar form (TF Serving's `{"inputs": …}`, which KServe v1 takes too)
through the whole in-process server: the same answers as the row form (`instances`), in the
form TF Serving gives (`outputs`), and the same rule for every value (one `check_values` for
V2, `instances` and `inputs`)."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest

from harness.bundles import make_bundle
from shipyard.registry import Registry
from shipyard.serve.app import create_app
from shipyard.serve.config import ServeConfig
from shipyard.settings import Settings

from ..asgi import running

V1 = "/v1/models/tiny:predict"
SIGNATURE = {"inputs": [{"name": "input", "dtype": "float32", "shape": [-1, 784]},
                        {"name": "image", "dtype": "uint8", "shape": [-1, 28, 28], "kind": "raw"}],
             "outputs": [{"name": "probabilities", "dtype": "float32", "shape": [-1, 10]}]}


@pytest.fixture
def registry(tmp_path: Path) -> Registry:
    """One model taking ready features (FP32 784) or raw pixels (UINT8 28×28)."""
    reg = Registry(settings=Settings(home=tmp_path / "home"))
    reg.register(make_bundle(tmp_path / "b1", seed=1, signature=SIGNATURE), "tiny", alias="production")
    return reg


def post_all(registry: Registry, bodies: list[Any]) -> list[httpx.Response]:
    app = create_app(ServeConfig(metrics=False, poll_s=0.0), registry=registry)

    async def main() -> list[httpx.Response]:
        async with running(app) as c:
            return [await c.post(V1, content=b if isinstance(b, bytes) else json.dumps(b).encode())
                    for b in bodies]

    return asyncio.run(main())


def test_inputs_answer_as_instances_do_in_columns(registry: Registry) -> None:
    x = np.random.default_rng(3).random((3, 784), dtype=np.float32)
    img = np.random.default_rng(4).integers(0, 256, (2, 28, 28)).astype(np.uint8)
    rows, cols, named, img_rows, img_named = post_all(registry, [
        {"instances": x.tolist()}, {"inputs": x.tolist()}, {"inputs": {"input": x.tolist()}},
        {"instances": img.tolist()}, {"inputs": {"image": img.tolist()}, "signature_name": "serving_default"}])
    for r in (rows, cols, named, img_rows, img_named):
        assert r.status_code == 200, r.text
    p = rows.json()["predictions"]
    assert "outputs" not in rows.json() and "predictions" not in cols.json()
    for answer in (cols.json(), named.json()):
        out = answer["outputs"]
        np.testing.assert_allclose(out["probabilities"], [row["probabilities"] for row in p], rtol=1e-6)
        assert out["label"] == [row["label"] for row in p]
        assert answer["model_name"] == "tiny" and answer["model_version"] == "1" and answer["id"]
    assert img_named.json()["outputs"]["label"] == [row["label"] for row in img_rows.json()["predictions"]]


def _pixels(value: Any) -> list[Any]:
    return np.reshape(np.array([value] + [0] * 783, dtype=object), (1, 28, 28)).tolist()


@pytest.mark.parametrize(("body", "status", "message"), [
    ({"instances": [[0.5] * 784], "inputs": [[0.5] * 784]}, 400, "not both"),
    ({"inputs": {"input": [[0.5] * 784], "image": _pixels(0)}}, 400, "exactly one input"),
    ({"inputs": {"nosuch": [[0.5] * 784]}}, 400, "has no input 'nosuch'; it takes 'input' or 'image'"),
    ({"inputs": {"image": [[0.5] * 784]}}, 400, "each instance must have shape [28, 28], got [784]"),
    ({"inputs": {}}, 400, "exactly one input"),
    ({"inputs": []}, 400, "non-empty list"),
    # the value rule, word for word as for `instances` and V2
    ({"inputs": [[3e38] + [0] * 783]}, 400, "input 'input': 3e+38 is not a finite number within ±1e+15"),
    ({"inputs": {"image": _pixels(1.7)}}, 400, "input 'image': UINT8 takes whole numbers in 0..255, got 1.7"),
    ({"inputs": {"image": _pixels(256)}}, 400, "input 'image': UINT8 takes whole numbers in 0..255, got 256"),
    ({"inputs": [[True] + [0.5] * 783]}, 400, "takes numbers, not booleans"),
    ({"inputs": {"input": [["1"] + [0.5] * 783]}}, 400, "takes numbers, not strings"),
    ({"inputs": [[1, 2], [3]]}, 400, "equally shaped arrays of numbers"),
    (b'{"inputs": {"input": [[0.5]], "input": [[0.5]]}}', 400, "key 'input' appears more than once"),
    (b'{"inputs": [[1e999]]}', 400, "out of range"),
])
def test_inputs_follow_the_one_rule(registry: Registry, body: Any, status: int, message: str) -> None:
    [r] = post_all(registry, [body])
    assert r.status_code == status, r.text
    assert message in r.json()["error"], r.json()["error"]
