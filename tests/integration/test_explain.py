"""Explanations, tested from the outside: Integrated Gradients over the bundle's gradient graph
equal captum's on the same weights (both rules), completeness holds, a real server answers
`/explain` to JSON, to the binary extension as tritonclient encodes it, to `shipyard.Client` and
on the v1 route, a model without a gradient graph falls back to forward-pass methods, hostile
parameters get 400s naming them, explanations stay out of the prediction log but `trace` finds
them, and `shipyard explain` writes a heatmap."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING

import httpx
import numpy as np
import pytest
import torch

from harness.bundles import make_bundle
from shipyard.attribution import methods
from shipyard.attribution.explainer import Explainer, Params
from shipyard.bundle import Bundle
from shipyard.client import BadRequestError, Client
from shipyard.data import load
from shipyard.monitor import predlog
from shipyard.registry import Registry
from shipyard.settings import Settings

from ..conftest import run_cli
from ..serving import Server, serve, server_env
from ..waiting import wait_for

if TYPE_CHECKING:
    from ..conftest import Optimized

pytestmark = pytest.mark.timeout(600)
TOKEN = "explain-test-token-0123456789"
AUTH = {"Authorization": f"Bearer {TOKEN}"}


@pytest.fixture(scope="module")
def images() -> np.ndarray:
    return load("mnist-sample").split().x_val[:200]


@pytest.fixture(scope="module")
def server(optimized: Optimized, tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Server, Path]]:
    tmp = tmp_path_factory.mktemp("explain")
    home = tmp / "home"
    reg = Registry(settings=Settings(home=home))
    reg.register(optimized[2].path, "digits", alias="production")
    reg.register(make_bundle(tmp / "tiny", reference=True), "tiny", alias="production")  # no gradient graph
    with serve(home, "digits", "tiny", "--auth-inference", env=server_env(home, SHIPYARD_TOKEN=TOKEN)) as srv:
        yield srv, home


def torch_model(bundle: Bundle) -> torch.nn.Module:
    from shipyard.training.zoo import build_model

    spec = bundle.preprocess
    assert spec is not None
    m = build_model("mlp", input_shape=spec.raw_shape, num_features=spec.num_features, num_classes=len(bundle.classes))
    m.load_state_dict(torch.load(bundle.path / "weights.pt", weights_only=True))
    return m.eval()


def test_integrated_gradients_equal_captums_and_are_complete(optimized: Optimized, images: np.ndarray) -> None:
    from captum.attr import IntegratedGradients

    bundle = optimized[2]
    assert bundle.meta.explain is not None and bundle.explain_path is not None
    assert bundle.meta.explain.gradient_max_abs_diff < 1e-4
    spec = bundle.preprocess
    assert spec is not None
    x = spec.apply(images)
    model = torch_model(bundle)
    ig = IntegratedGradients(lambda t: torch.softmax(model(t), 1))
    ex = Explainer(bundle)
    for baseline in ("zeros", "mean"):
        ours = ex.explain(x, Params(steps=64, baseline=baseline), kind="features")
        base = torch.zeros(x.shape) if baseline == "zeros" else torch.from_numpy(np.tile(ex.mean, (len(x), 1)))
        target = torch.tensor(ours.target)
        alphas, weights = methods.path(64)  # the exact trapezoid rule, through captum's own integrator
        (theirs,) = ig._attribute((torch.from_numpy(x),), baselines=(base,), target=target, n_steps=64,
                                  step_sizes_and_alphas=(list(weights), list(alphas)))
        got = ours.attributions["attributions"]
        assert got.shape == (200, 784) and np.abs(got - theirs.detach().numpy()).max() < 1e-4
        delta = ours.output - ours.baseline_output
        assert np.all(np.abs(got.sum(1) - delta) <= 0.01 * np.abs(delta) + 1e-5), baseline  # completeness
        gl = ex.explain(x, Params(steps=64, baseline=baseline, integration="gausslegendre"), kind="features")
        public = ig.attribute(torch.from_numpy(x), baselines=base, target=target, n_steps=64)  # captum's default
        assert np.abs(gl.attributions["attributions"] - public.detach().numpy()).max() < 1e-4
    raw = ex.explain(x[:5], Params(), kind="raw", shape=(28, 28))
    assert raw.attributions["attributions"].shape == (5, 28, 28)  # pixels, from the black image


def v2(images: np.ndarray, **parameters: object) -> dict[str, object]:
    return {"inputs": [{"name": "image", "datatype": "UINT8", "shape": [len(images), 28, 28],
                        "data": images.reshape(-1).tolist()}], "parameters": parameters}


def test_a_served_explanation_matches_the_in_process_one(server: tuple[Server, Path], optimized: Optimized,
                                                         images: np.ndarray) -> None:
    srv, home = server
    r = httpx.post(f"{srv.base}/v2/models/digits/explain", json=v2(images[:3]), headers=AUTH, timeout=30)
    assert r.status_code == 200, r.text
    doc = r.json()
    [out] = doc["outputs"]
    assert out["name"] == "attributions" and out["shape"] == [3, 28, 28] and out["datatype"] == "FP32"
    p = doc["parameters"]
    spec = optimized[2].preprocess
    assert spec is not None
    local = Explainer(optimized[2]).explain(spec.apply(images[:3]), Params(), kind="raw", shape=(28, 28))
    assert p["method"] == "integrated_gradients" and p["steps"] == 64 and p["target"] == local.target
    assert np.abs(np.array(out["data"]).reshape(3, 28, 28) - local.attributions["attributions"]).max() < 1e-5
    infer = httpx.post(f"{srv.base}/v2/models/digits/infer", json=v2(images[:3]), headers=AUTH, timeout=30).json()
    probs = np.array(next(o for o in infer["outputs"] if o["name"] == "probabilities")["data"]).reshape(3, 10)
    assert p["target"] == probs.argmax(1).tolist()  # default target: the class the server predicts
    assert np.allclose(p["output"], probs[np.arange(3), p["target"]], atol=0.05)  # fp32 graph vs served variant
    assert ("note" in p) == (optimized[2].meta.variant != "fp32")

    # explanations are not predictions: not in the log, but `trace` finds them by request id
    rid = r.headers["x-request-id"]
    reg = Registry(settings=Settings(home=home))
    assert rid not in predlog.find(reg.engine, "digits", [rid])
    traced = json.loads(run_cli(["trace", rid, "--json"], server_env(home)).stdout)
    assert traced["predicted"] is None and traced["explanations"][0]["method"] == "integrated_gradients"
    assert traced["explanations"][0]["summary"]["target"] == p["target"]


def test_binary_tensors_from_tritonclient_and_the_shipyard_client(server: tuple[Server, Path],
                                                                  images: np.ndarray) -> None:
    from tritonclient.http import InferInput, InferRequestedOutput, InferResult
    from tritonclient.http._utils import _get_inference_request

    srv, _ = server
    inp = InferInput("image", [4, 28, 28], "UINT8")
    inp.set_data_from_numpy(images[:4], binary_data=True)
    body, json_size = _get_inference_request([inp], "tc-1", [InferRequestedOutput("attributions", binary_data=True)],
                                             0, False, False, 0, None, {"target": 3, "steps": 32})
    r = httpx.post(f"{srv.base}/v2/models/digits/explain", content=body, timeout=30,
                   headers={**AUTH, "Inference-Header-Content-Length": str(json_size),
                            "Content-Type": "application/octet-stream"})
    assert r.status_code == 200, r.text
    res = InferResult.from_response_body(r.content, header_length=int(r.headers["inference-header-content-length"]))
    attr = res.as_numpy("attributions")
    assert attr.shape == (4, 28, 28) and res.get_response()["parameters"]["target"] == [3] * 4
    with Client(srv.base, token=TOKEN) as c:
        got = c.explain("digits", images[:4], target=3, steps=32)
        assert got.method == "integrated_gradients" and got.target == [3] * 4
        assert np.abs(got.attributions["attributions"] - attr).max() < 1e-6
        shap = c.explain("digits", images[:2], method="kernel_shap", samples=256)
        total = shap.attributions["attributions"].reshape(2, -1).sum(1)
        assert np.allclose(total, shap.output - shap.baseline_output, atol=1e-4)  # SHAP's efficiency
        with pytest.raises(BadRequestError, match="'steps'"):
            c.explain("digits", images[:1], steps=5000)


def test_the_v1_route_and_a_model_without_a_gradient_graph(server: tuple[Server, Path], images: np.ndarray) -> None:
    srv, _ = server
    r = httpx.post(f"{srv.base}/v1/models/digits:explain", headers=AUTH, timeout=30,
                   json={"instances": images[:2].tolist(), "parameters": {"method": "occlusion", "patch": 7}})
    assert r.status_code == 200, r.text
    doc = r.json()
    assert doc["method"] == "occlusion" and doc["groups"] == 16 and len(doc["explanations"]) == 2
    assert np.array(doc["explanations"][0]["attributions"]).shape == (28, 28)
    feats = {"inputs": [{"name": "input", "datatype": "FP32", "shape": [2, 784],
                         "data": (images[:2].reshape(2, -1) / 255).reshape(-1).tolist()}]}
    tiny = httpx.post(f"{srv.base}/v2/models/tiny/explain", json=feats, headers=AUTH, timeout=30)
    assert tiny.status_code == 200, tiny.text
    assert tiny.json()["parameters"]["method"] == "occlusion"  # no gradient graph: forward passes
    ig = httpx.post(f"{srv.base}/v2/models/tiny/explain", headers=AUTH, timeout=30,
                    json={**feats, "parameters": {"method": "integrated_gradients"}})
    assert ig.status_code == 400 and "no gradient graph" in ig.json()["error"] and "occlusion" in ig.json()["error"]


@pytest.mark.parametrize(("params", "status", "says"), [
    ({"colour": "red"}, 400, "unknown parameter 'colour'"),
    ({"target": 12}, 400, "'target' must be a class index in 0..9"),
    ({"target": "cat"}, 400, "'cat' is not one of the model's classes"),
    ({"target": [1, 2]}, 400, "'target' must be a class index or label"),
    ({"steps": 1}, 400, "'steps' must be an integer in 2..1024"),
    ({"steps": "64"}, 400, "'steps' must be an integer"),
    ({"baseline": "noise"}, 400, "'baseline' must be one of zeros, mean"),
    ({"method": "lime"}, 400, "'method' must be one of"),
])
def test_bad_parameters_are_refused_by_name(server: tuple[Server, Path], images: np.ndarray,
                                            params: dict[str, object], status: int, says: str) -> None:
    srv, _ = server
    r = httpx.post(f"{srv.base}/v2/models/digits/explain", json=v2(images[:1], **params), headers=AUTH, timeout=30)
    assert r.status_code == status and says in r.json()["error"], r.text


def test_hostile_requests(server: tuple[Server, Path], images: np.ndarray) -> None:
    srv, _ = server
    url = f"{srv.base}/v2/models/digits/explain"
    assert httpx.post(url, json=v2(images[:1]), timeout=30).status_code == 401  # the inference token guards it
    assert httpx.post(f"{srv.base}/v2/models/nope/explain", json=v2(images[:1]), headers=AUTH).status_code == 404
    assert httpx.post(url, content=b"{not json", headers=AUTH).status_code == 400
    big = httpx.post(url, json=v2(images[:200], steps=1024), headers=AUTH, timeout=30)  # 200 × 1026 evaluations
    assert big.status_code == 400 and "more than 65,536 per request" in big.json()["error"]
    nan = {"inputs": [{"name": "input", "datatype": "FP32", "shape": [1, 784], "data": [float("nan")] * 784}]}
    r = httpx.post(url, content=json.dumps(nan).encode(), headers={**AUTH, "Content-Type": "application/json"})
    assert r.status_code == 400
    assert httpx.get(f"{srv.base}/v2/health/ready").status_code == 200  # and the server serves on


def test_the_cli_writes_a_heatmap(server: tuple[Server, Path], images: np.ndarray, tmp_path: Path) -> None:
    from PIL import Image

    _, home = server
    Image.fromarray(images[0]).save(tmp_path / "digit.png")
    got = run_cli(["explain", "digits", str(tmp_path / "digit.png"), "-o", str(tmp_path / "heat.png"), "--json"],
                  server_env(home))
    doc = json.loads(got.stdout)
    assert doc["method"] == "integrated_gradients"
    assert np.array(doc["attributions"]["attributions"]).shape == (1, 28, 28)
    assert doc["ids"] == ["digit.png"] and (tmp_path / "heat.png").read_bytes()[:4] == b"\x89PNG"
    np.save(tmp_path / "x.npy", images[:3])
    doc = json.loads(run_cli(["explain", "digits@production", str(tmp_path / "x.npy"), "--method", "occlusion",
                              "--json"], server_env(home)).stdout)
    assert doc["method"] == "occlusion" and len(doc["target"]) == 3
    bad = run_cli(["explain", "digits", str(tmp_path / "x.npy"), "--baseline", "noise"], server_env(home), check=False)
    assert bad.returncode == 2 and "'baseline' must be one of zeros, mean" in bad.stderr


def test_class_maps_show_a_shift_in_what_the_model_looks_at(server: tuple[Server, Path], images: np.ndarray,
                                                            tmp_path: Path) -> None:
    """The bundle's maps (validation rows) against maps from recent traffic: normal digits look
    at the same pixels; inverted digits (a shift) make the maps move. In the CLI, the report and
    the dashboard's fragment."""
    srv, home = server
    engine = Registry(settings=Settings(home=home)).engine

    def send(x: np.ndarray) -> None:
        before = len(predlog.read(engine, "digits"))
        for i in range(0, len(x), 50):
            r = httpx.post(f"{srv.base}/v2/models/digits/infer", json=v2(x[i:i + 50]), headers=AUTH, timeout=30)
            assert r.status_code == 200
        wait_for(lambda: len(predlog.read(engine, "digits")) >= before + len(x), "the answers in the prediction log")

    def maps(name: str) -> dict:  # type: ignore[type-arg]
        return json.loads(run_cli(["explain", "digits", "--maps", "-o", str(tmp_path / name), "--json"],
                                  server_env(home)).stdout)

    send(images[:200])
    calm = maps("calm.png")
    assert np.array(calm["bundle"]).shape == (10, 784) and calm["recent_rows"] >= 150
    assert sum(calm["bundle_counts"]) == 500 and (tmp_path / "calm.png").read_bytes()[:4] == b"\x89PNG"
    send(255 - images[:200])  # the newest rows now: inverted digits
    moved = maps("moved.png")
    calm_shift = np.nanmedian([s for s in calm["shift"] if s is not None])
    moved_shift = np.nanmedian([s for s in moved["shift"] if s is not None])
    assert moved_shift > calm_shift + 0.1, (calm_shift, moved_shift)
    page = tmp_path / "report.html"
    run_cli(["monitor", "report", "digits", "--html", str(page)], server_env(home))
    html = page.read_text()
    assert "What each class looks at" in html and html.count("data:image/png;base64,") >= 20
    frag = httpx.get(f"{srv.base}/dashboard/fragment", params={"model": "digits", "minutes": 5}, headers=AUTH,
                     timeout=30)
    assert frag.status_code == 200 and "What each class looks at" in frag.text
