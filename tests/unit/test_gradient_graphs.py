"""The explain graphs against torch and captum on models of every shape the zoo makes: the CNN's
gradient graph (our convolution and max-pool gradient decompositions), the MLP's factored
Integrated Gradients graph, and a regression's (its target scaling inside)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest
import torch

from shipyard.attribution import methods
from shipyard.attribution.gradient import export_gradient
from shipyard.attribution.integrated import export_integrated, split_linear
from shipyard.training.zoo import build_model


def captum_ig(forward, x: np.ndarray, target: np.ndarray, steps: int = 32) -> np.ndarray:  # type: ignore[no-untyped-def]
    from captum.attr import IntegratedGradients

    alphas, weights = methods.path(steps)
    (a,) = IntegratedGradients(forward)._attribute(
        (torch.from_numpy(x),), baselines=(torch.zeros(x.shape),), target=torch.from_numpy(target), n_steps=steps,
        step_sizes_and_alphas=(list(weights), list(alphas)))
    return a.detach().numpy()  # type: ignore[no-any-return]


@pytest.mark.parametrize("kind", ["cnn", "mlp"])
def test_integrated_gradients_over_each_graph_equal_captums(kind: str, tmp_path: Path) -> None:
    torch.manual_seed(0)
    model = build_model(kind, input_shape=(28, 28), num_features=784, num_classes=10).eval()
    x = np.random.default_rng(0).random((8, 784), dtype=np.float32)
    export = export_integrated if kind == "mlp" else export_gradient
    assert (split_linear(model) is not None) == (kind == "mlp")
    assert export(model, 784, 10, tmp_path / "g.onnx", check=x) < 1e-5  # parity measured at export
    ig = methods.graph_ig(ort.InferenceSession(str(tmp_path / "g.onnx"), providers=["CPUExecutionProvider"]),
                          "integrated" if kind == "mlp" else "gradient")
    target = np.arange(8) % 10
    attr, out, base = ig(x, np.zeros_like(x), np.eye(10, dtype=np.float32)[target], 32, "riemann_trapezoid")
    want = captum_ig(lambda t: torch.softmax(model(t), 1), x, target)
    assert np.abs(attr - want).max() < 1e-4
    with torch.no_grad():
        probs = torch.softmax(model(torch.from_numpy(x)), 1).numpy()
    assert np.allclose(out, probs[np.arange(8), target], atol=1e-6)


def test_a_regressions_graph_answers_in_target_units(tmp_path: Path) -> None:
    torch.manual_seed(1)
    model = build_model("mlp", input_shape=(10,), num_features=10, num_classes=1, regression=True).eval()
    model.fit(np.random.default_rng(0).normal(150, 70, (100, 1)))  # type: ignore[operator]
    x = np.random.default_rng(1).normal(size=(6, 10)).astype(np.float32)
    assert export_integrated(model, 10, 1, tmp_path / "r.onnx", softmax=False, check=x) < 1e-5
    ig = methods.graph_ig(ort.InferenceSession(str(tmp_path / "r.onnx"), providers=["CPUExecutionProvider"]),
                          "integrated")
    attr, out, base = ig(x, np.zeros_like(x), np.ones((6, 1), np.float32), 64, "riemann_trapezoid")
    with torch.no_grad():
        values = model(torch.from_numpy(x)).numpy()[:, 0]
    assert np.allclose(out, values, rtol=1e-5) and abs(float(values.mean())) > 20  # target units, not standardized
    assert np.allclose(attr.sum(1), out - base, rtol=0.01, atol=0.05)  # completeness
