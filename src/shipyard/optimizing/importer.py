"""Import what was trained elsewhere: an ONNX model from any framework, or a Keras model
(`.keras`, `.h5`, run by Keras 3 on the PyTorch backend, no TensorFlow), becomes a bundle.

The graph keeps its own input; its single output becomes `probabilities`, with a softmax
appended when the graph ends in logits. No torch import for plain ONNX."""

from __future__ import annotations

import json
import math
import os
import shutil
import sys
import tempfile
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import onnx
from onnx import TensorProto, helper

from shipyard import bundle as bundle_mod
from shipyard.bundle import Bundle, reference, sha256_file
from shipyard.data import PreprocessSpec, load
from shipyard.errors import DataError, UsageError
from shipyard.optimizing._common import OUTPUT, check_parity, quiet
from shipyard.optimizing.evaluate import measure, predict, session
from shipyard.registry.refs import check_name

_FLOAT_TYPES = {TensorProto.FLOAT: "float32"}
#: ops between a softmax and the graph output that leave probabilities probabilities
_PASS_THROUGH = {"Identity", "Reshape", "Flatten", "Squeeze", "Unsqueeze", "Cast", "Transpose"}
_NP = {"float32": np.float32}
KERAS_SUFFIXES = (".keras", ".h5", ".hdf5")


def import_model(path: Path, *, name: str, labels: list[str] | None = None, preprocess: str = "none",
                 data: str | None = None, output: Path, threads: int = 1, bench_seconds: float = 0.3) -> Bundle:
    """Build a bundle at `output` from an ONNX or Keras file."""
    path = Path(path)
    if not path.is_file():
        raise UsageError(f"{path}: no such file")
    check_name(name)
    work = Path(tempfile.mkdtemp(prefix="shipyard-import-"))
    try:
        lineage: dict[str, Any] = {"run_id": None, "parent_version": None, "imported_from": path.name,
                                   "source_sha256": sha256_file(path)}
        if path.suffix.lower() in KERAS_SUFFIXES:
            onnx_path, keras_parity = _keras_to_onnx(path, work)
            lineage.update(exporter="keras", keras_parity_max_abs_diff=keras_parity)
        elif path.suffix.lower() == ".onnx":
            onnx_path = path
        else:
            raise UsageError(f"{path}: unsupported format; import .onnx, .keras or .h5 files")
        model, in_name, in_shape, classes_n, added_softmax = _normalise(onnx_path)
        lineage.update(producer=f"{model.producer_name} {model.producer_version}".strip(),
                       softmax_added=added_softmax)
        fixed = work / "model.onnx"
        onnx.save(model, fixed)
        classes = _classes(labels, classes_n)
        spec = _spec(preprocess, in_shape)
        if spec.num_features != math.prod(in_shape) or (not spec.flatten and tuple(spec.raw_shape) != in_shape):
            raise UsageError(f"the preprocessing turns raw {list(spec.raw_shape)} inputs into "
                             f"{spec.num_features} features, but the model takes {list(in_shape)}")
        _trial(fixed, in_shape, len(classes))

        metrics: dict[str, Any] = {}
        ref_path = None
        ref_summary = None
        if data:
            ds = load(data)
            if ds.x.shape[1:] != spec.raw_shape:
                raise UsageError(f"data {data} has inputs of shape {list(ds.x.shape[1:])}; the model's "
                                 f"preprocessing expects raw {list(spec.raw_shape)} (see --preprocess)")
            if len(ds.classes) != len(classes):
                raise UsageError(f"data {data} has {len(ds.classes)} classes, the model {len(classes)}")
            splits = ds.split()
            x_val = spec.apply(splits.x_val)
            m, probs = measure("imported", fixed, x_val, splits.y_val, threads=threads, seconds=bench_seconds)
            if splits.x_test is not None and splits.y_test is not None:
                test_probs = predict(session(fixed, threads), spec.apply(splits.x_test))
                metrics["test_accuracy"] = float((test_probs.argmax(1) == splits.y_test).mean())
            metrics["val_accuracy"] = m.accuracy
            x_train = spec.apply(splits.x_train)
            ref = reference.build(x_train.reshape(len(x_train), -1), probs, splits.y_val, x_val=x_val)
            ref_path = work / "reference.npz"
            np.savez_compressed(ref_path, allow_pickle=False, **ref)  # numeric arrays only: never pickle
            ref_summary = reference.summary(ref)
            lineage.update(data_source=ds.source, data_fingerprint=ds.fingerprint)
        else:
            probe = np.random.default_rng(0).random((256, *in_shape), dtype=np.float32)
            m, _ = measure("imported", fixed, probe, np.zeros(256, np.int64), threads=threads, seconds=bench_seconds)
        m.chosen = True
        variant = m.to_dict()
        if not data:
            variant["accuracy"] = None  # no labelled data given
        inputs = bundle_mod.signature_inputs(in_name, in_shape, spec)
        import onnxruntime

        lineage["library_versions"] = {"onnx": onnx.__version__, "onnxruntime": onnxruntime.__version__}
        meta = {
            "name": name, "created_at": datetime.now(UTC).isoformat(),
            "signature": {"inputs": inputs, "outputs": [{"name": OUTPUT, "dtype": "float32",
                                                         "shape": [-1, len(classes)]}], "onnx_input": in_name},
            "classes": classes, "preprocess": spec.to_dict(), "variant": "imported", "variants": [variant],
            "choice": {"objective": None, "reason": "imported as is", "threads": threads},
            "metrics": metrics, "lineage": lineage, "retrainable": False, "reference": ref_summary,
        }
        files: dict[str, bytes | Path] = {bundle_mod.MODEL: fixed}
        if ref_path is not None:
            files[bundle_mod.REFERENCE] = ref_path
        staging = work / "bundle"
        bundle_mod.write(staging, meta, files)
        return bundle_mod.place(staging, output)
    finally:
        shutil.rmtree(work, ignore_errors=True)


def _normalise(path: Path) -> tuple[onnx.ModelProto, str, tuple[int, ...], int | None, bool]:
    """Check the graph; make the batch axis dynamic; name the output `probabilities`, adding a
    softmax when the graph ends in logits."""
    try:
        model = onnx.load(str(path))
        onnx.checker.check_model(model)
    except Exception as e:  # noqa: BLE001 - onnx raises several unrelated types
        raise DataError(path, f"not a valid ONNX model ({type(e).__name__}: {str(e)[:200]})") from None
    graph = model.graph
    inits = {i.name for i in graph.initializer}
    inputs = [i for i in graph.input if i.name not in inits]
    if len(inputs) != 1 or len(graph.output) != 1:
        raise DataError(path, f"expected one input and one output, found {len(inputs)} and {len(graph.output)}")
    inp, out = inputs[0], graph.output[0]
    if inp.type.tensor_type.elem_type not in _FLOAT_TYPES:
        raise DataError(path, f"input {inp.name!r} has element type "
                              f"{TensorProto.DataType.Name(inp.type.tensor_type.elem_type)}; float32 is supported")
    dims = inp.type.tensor_type.shape.dim
    if len(dims) < 2 or any(not d.HasField("dim_value") for d in dims[1:]):
        raise DataError(path, f"input {inp.name!r} needs a batch axis and fixed feature dimensions")
    dims[0].Clear()
    dims[0].dim_param = "batch"
    in_shape = tuple(int(d.dim_value) for d in dims[1:])
    if out.type.tensor_type.elem_type != TensorProto.FLOAT:
        raise DataError(path, f"output {out.name!r} has element type "
                              f"{TensorProto.DataType.Name(out.type.tensor_type.elem_type)}; float32 is supported")
    out_dims = out.type.tensor_type.shape.dim
    if len(out_dims) != 2:
        raise DataError(path, f"output {out.name!r} must be [batch, classes], it has {len(out_dims)} dimensions")
    classes = int(out_dims[-1].dim_value) if out_dims[-1].HasField("dim_value") else None
    if classes is not None and classes < 2:
        raise DataError(path, f"output {out.name!r} has {classes} column; a classifier with a single sigmoid "
                              "output is not supported: export two class scores")
    producers = {o: n for n in graph.node for o in n.output}
    node = producers.get(out.name)
    while node is not None and node.op_type in _PASS_THROUGH and node.input:
        node = producers.get(node.input[0])
    if node is not None and node.op_type == "Sigmoid":
        raise DataError(path, "the graph ends in a sigmoid; export class scores (logits or softmax) instead")
    added = node is None or node.op_type != "Softmax"
    last = out.name
    if out.name == OUTPUT:  # free the name for our softmax (or keep it when already probabilities)
        last = f"{OUTPUT}_in"
        for n in graph.node:
            n.output[:] = [last if o == OUTPUT else o for o in n.output]
            n.input[:] = [last if i == OUTPUT else i for i in n.input]
    if added:
        graph.node.append(helper.make_node("Softmax", [last], [OUTPUT], axis=-1, name="shipyard_softmax"))
    else:
        graph.node.append(helper.make_node("Identity", [last], [OUTPUT], name="shipyard_output"))
    del graph.output[:]
    graph.output.append(helper.make_tensor_value_info(OUTPUT, TensorProto.FLOAT, ["batch", classes]))
    try:
        onnx.checker.check_model(model)
    except Exception as e:  # noqa: BLE001
        raise DataError(path, f"could not attach the softmax output ({e})") from None
    return model, inp.name, in_shape, classes, added


def _trial(path: Path, in_shape: tuple[int, ...], classes: int) -> None:
    """Run a batch of 2 through the normalised graph: a graph whose batch axis is really fixed
    fails here, with a clear message, rather than in production."""
    try:
        out = predict(session(path), np.zeros((2, *in_shape), np.float32))
    except Exception as e:  # noqa: BLE001 - ORT raises its own types
        first = (str(e).strip().splitlines() or [type(e).__name__])[0]
        raise DataError(path, "the model does not run on a batch of 2 (is its batch size fixed?): "
                              f"{first[:200]}") from None
    if out.shape != (2, classes):
        raise DataError(path, f"the model answers shape {list(out.shape)} for 2 inputs, expected [2, {classes}]")


def _classes(labels: list[str] | None, n: int | None) -> list[str]:
    if labels:
        if n is not None and len(labels) != n:
            raise UsageError(f"--labels gives {len(labels)} names, the model has {n} outputs")
        return labels
    if n is None:
        raise UsageError("the model's output size is not fixed in the graph; name the classes with --labels")
    return [str(i) for i in range(n)]


def _spec(preprocess: str, in_shape: tuple[int, ...]) -> PreprocessSpec:
    """`none`: clients send ready features; `image`: raw uint8 pixels scaled by 1/255 (a [H, W]
    input, or [H*W] for a square image); or a JSON file holding a preprocessing spec."""
    if preprocess == "none":
        return PreprocessSpec(raw_shape=in_shape, raw_dtype="float32", scale=1.0, flatten=len(in_shape) == 1)
    if preprocess == "image":
        if len(in_shape) == 2:
            return PreprocessSpec(raw_shape=in_shape, raw_dtype="uint8", flatten=False)
        side = math.isqrt(in_shape[0]) if len(in_shape) == 1 else 0
        if side * side == in_shape[0]:
            return PreprocessSpec(raw_shape=(side, side), raw_dtype="uint8", flatten=True)
        raise UsageError(f"--preprocess image needs an input of [N, H, W] or [N, H*W], "
                         f"the model takes {list(in_shape)}")
    p = Path(preprocess)
    if not p.is_file():
        raise UsageError(f"--preprocess {preprocess!r}: use none, image, or a JSON file with a spec")
    try:
        spec = PreprocessSpec.from_dict(json.loads(p.read_text()))
    except (json.JSONDecodeError, TypeError, KeyError) as e:
        raise UsageError(f"{p}: not a preprocessing spec ({e})") from None
    return spec


def _keras_to_onnx(path: Path, work: Path) -> tuple[Path, float]:
    """Load with Keras 3 on the PyTorch backend, export to ONNX, and prove parity."""
    if "keras" not in sys.modules:
        os.environ.setdefault("KERAS_BACKEND", "torch")
    try:
        import keras
    except ImportError as e:
        if "keras" in str(e).lower() and "backend" not in str(e).lower():
            raise UsageError("importing Keras models needs the keras extra: pip install 'shipyard[keras]'") from None
        raise UsageError(f"Keras could not start its backend ({e}); set KERAS_BACKEND=torch") from None
    if keras.backend.backend() != "torch":
        raise UsageError(f"Keras runs on the {keras.backend.backend()!r} backend here; set KERAS_BACKEND=torch")
    with quiet("absl"):
        try:
            model = keras.saving.load_model(str(path), compile=False)
        except Exception as e:  # noqa: BLE001 - keras raises many types for a bad file
            raise DataError(path, f"Keras could not load it ({type(e).__name__}: {str(e)[:200]})") from None
        dims = model.inputs[0].shape[1:]
        if any(d is None for d in dims):
            raise DataError(path, f"the model's input shape {list(model.inputs[0].shape)} has open dimensions "
                                  "besides the batch; give the Input layer a fixed shape")
        shape = tuple(int(d) for d in dims)
        sample = np.random.default_rng(0).random((64, *shape), dtype=np.float32)
        expected = np.asarray(model.predict(sample, verbose=0))
        dest = work / "keras.onnx"
        model.export(str(dest), format="onnx", verbose=False)
    return dest, check_parity(expected, predict(session(dest), sample), str(path), against="Keras")
