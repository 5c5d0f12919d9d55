"""Tiny but real bundles for tests: an ONNX graph built with onnx.helper (input `[batch, 784]` →
MatMul → Add → Softmax → `probabilities` `[batch, C]`), written with `shipyard.bundle.write`. No
torch, no training: a registry or server test gets a valid bundle in milliseconds."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from shipyard import bundle
from shipyard.data.preprocess import PreprocessSpec

FEATURES = 784
OPSET = 17


def tiny_onnx(classes: int = 10, seed: int = 0, *, batch: str | int = "batch", open_classes: bool = False) -> bytes:
    """A linear softmax classifier with a symbolic batch axis, as serialized ONNX. `batch=1`
    fixes the batch size; `open_classes` leaves the output's width symbolic even to ONNX Runtime
    (the weights are overridable initializers of any width), so only running it tells."""
    rng = np.random.default_rng(seed)
    w = rng.normal(0, 0.05, size=(FEATURES, classes)).astype(np.float32)
    b = rng.normal(0, 0.05, size=(classes,)).astype(np.float32)
    width: str | int = "classes" if open_classes else classes
    inputs = [helper.make_tensor_value_info("input", TensorProto.FLOAT, [batch, FEATURES])]
    if open_classes:
        inputs += [helper.make_tensor_value_info("W", TensorProto.FLOAT, [FEATURES, width]),
                   helper.make_tensor_value_info("B", TensorProto.FLOAT, [width])]
    graph = helper.make_graph(
        [helper.make_node("MatMul", ["input", "W"], ["logits_mm"]),
         helper.make_node("Add", ["logits_mm", "B"], ["logits"]),
         helper.make_node("Softmax", ["logits"], ["probabilities"], axis=-1)],
        "tiny",
        inputs,
        [helper.make_tensor_value_info("probabilities", TensorProto.FLOAT, [batch, width])],
        initializer=[numpy_helper.from_array(w, "W"), numpy_helper.from_array(b, "B")],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)],
                              producer_name="shipyard-tests")
    model.ir_version = 8
    onnx.checker.check_model(model)
    return model.SerializeToString()


def tiny_meta(name: str, classes: int, size_bytes: int, /, **extra: Any) -> dict[str, Any]:
    """A bundle.json for the tiny graph, in the layout `BundleMeta` reads (`bundle.write` checks
    it). `extra` replaces keys; a `signature` given may leave out each input's `kind` (features)
    and `onnx_input` (the first input)."""
    if "signature" in extra:
        extra["signature"] = full_signature(extra["signature"])
    return {
        "name": name,
        "signature": full_signature({
            "inputs": [{"name": "input", "dtype": "float32", "shape": [-1, FEATURES]}],
            "outputs": [{"name": "probabilities", "dtype": "float32", "shape": [-1, classes]}],
        }),
        "classes": [str(i) for i in range(classes)],
        "preprocess": PreprocessSpec(raw_shape=(28, 28)).to_dict(),
        "variant": "fp32",
        "variants": [{"name": "fp32", "accuracy": 0.9, "size_bytes": size_bytes, "latency_p50_ms": 0.1,
                      "throughput_per_s": 1000.0}],
        "lineage": {"run_id": None, "parent_version": None, "data_fingerprint": None,
                    "library_versions": {"onnx": onnx.__version__}},
        **extra,
    }


def full_signature(signature: dict[str, Any]) -> dict[str, Any]:
    """`signature` with what a test may leave out filled in: kind `features`, `onnx_input`."""
    inputs = [{"kind": "features", **i} for i in signature.get("inputs", [])]
    first = inputs[0]["name"] if inputs and "name" in inputs[0] else None
    return {"onnx_input": first, **signature, "inputs": inputs}


def make_bundle(folder: Path, name: str = "tiny", classes: int = 10, seed: int = 0, *, reference: bool = False,
                held_out: int | None = None, **meta: Any) -> Path:
    """Write a valid bundle folder at `folder` (new or empty) and return its path. Different
    seeds give different weights, hence different bytes and sha256. `reference` adds a real
    reference profile built from the bundled MNIST sample (`reference_data`), so monitoring has
    something to compare with."""
    model = tiny_onnx(classes, seed)
    files: dict[str, Any] = {bundle.MODEL: model}
    if reference:
        import onnxruntime as ort

        from shipyard.bundle import reference as reference_mod

        x_train, x_val, y_val = reference_data()
        x_val, y_val = x_val[:held_out], y_val[:held_out]  # `held_out`: fewer held-out rows (a small holdout)
        probs = ort.InferenceSession(model, providers=["CPUExecutionProvider"]).run(None, {"input": x_val})[0]
        ref = reference_mod.build(x_train, probs, y_val % classes, x_val=x_val)
        path = Path(folder).parent / f".{Path(folder).name}-reference.npz"
        np.savez_compressed(path, **ref)  # type: ignore[arg-type]
        files[bundle.REFERENCE] = path
        meta.setdefault("reference", reference_mod.summary(ref))
    bundle.write(Path(folder), tiny_meta(name, classes, len(model), **meta), files)
    return Path(folder)


def reference_data() -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """MNIST-sample features: 2,000 training rows for the PCA, 1,500 held-out validation rows
    (their profile is what drift is tested against); the other 1,500 rows are live traffic
    (`traffic_data`)."""
    from shipyard.data.sources import mnist_sample

    ds = mnist_sample()
    order = np.random.default_rng(5).permutation(len(ds.x))
    x = (ds.x[order].reshape(len(order), -1) / 255.0).astype(np.float32)
    return x[:2000], x[2000:3500], ds.y[order][2000:3500]


def traffic_data() -> tuple[np.ndarray, np.ndarray]:
    """The MNIST-sample rows that `reference_data` leaves out, as raw uint8 images and labels."""
    from shipyard.data.sources import mnist_sample

    ds = mnist_sample()
    order = np.random.default_rng(5).permutation(len(ds.x))
    return ds.x[order][3500:], ds.y[order][3500:]


def make_mismatched_bundle(folder: Path, *, graph: dict[str, Any] | None = None, **meta: Any) -> Path:
    """A bundle whose manifest verifies and whose model runs, but whose `bundle.json` (`meta`
    replaces its keys, e.g. signature or classes) or graph (`graph`: `tiny_onnx` options)
    departs from the other: the trial load must refuse it."""
    model = tiny_onnx(**(graph or {}))
    bundle.write(Path(folder), tiny_meta("tiny", 10, len(model), **meta), {bundle.MODEL: model})
    return Path(folder)


def make_unloadable_bundle(folder: Path, name: str = "tiny") -> Path:
    """A bundle whose manifest verifies but whose `model.onnx` is not a model ONNX Runtime loads."""
    junk = b"this is not an ONNX model"
    bundle.write(Path(folder), tiny_meta(name, 10, len(junk)), {bundle.MODEL: junk})
    return Path(folder)
