"""Import what was trained elsewhere: an ONNX model from any framework, or a Keras model
(`.keras`, `.h5`, run by Keras 3 on the PyTorch backend, no TensorFlow), becomes a bundle.

The graph keeps its own input; its single output becomes `probabilities`, with a softmax
appended when the graph ends in logits. With `--preprocess image`, a graph whose input has a
channel axis ([N, H, W, 1], [N, 1, H, W], [N, C, H, W]) gets a node in front so the bundle takes
images as pixels come ([N, H, W], or [N, H, W, C]). No torch import for plain ONNX."""

from __future__ import annotations

import json
import math
import os
import shutil
import sys
import tempfile
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper
from rich.console import Console

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
#: the most channels an image input may have (gray 1, RGB 3, RGBA 4)
MAX_CHANNELS = 4


def import_model(path: Path, *, name: str, labels: list[str] | None = None, preprocess: str = "none",
                 data: str | None = None, output: Path, threads: int = 1, bench_seconds: float = 0.3,
                 console: Console | None = None) -> Bundle:
    """Build a bundle at `output` from an ONNX or Keras file."""
    path = Path(path)
    if not path.is_file():
        raise UsageError(f"{path}: no such file")
    check_name(name)
    console = console or Console(stderr=True, highlight=False, soft_wrap=True)
    work = Path(tempfile.mkdtemp(prefix="shipyard-import-"))
    try:
        lineage: dict[str, Any] = {"run_id": None, "parent_version": None, "imported_from": path.name,
                                   "source_sha256": sha256_file(path)}
        keras_probe = None
        if path.suffix.lower() in KERAS_SUFFIXES:
            onnx_path, keras_probe = _keras_to_onnx(path, work)
            lineage["exporter"] = "keras"
        elif path.suffix.lower() == ".onnx":
            onnx_path = path
        else:
            raise UsageError(f"{path}: unsupported format; import .onnx, .keras or .h5 files")
        model, in_name, in_shape, classes_n, added_softmax = _normalise(onnx_path)
        lineage.update(producer=f"{model.producer_name} {model.producer_version}".strip(),
                       softmax_added=added_softmax)
        adapter = _Adapter.find(in_shape) if preprocess == "image" else None
        reason = "imported as is"
        if adapter is not None:
            _adapt(model, in_name, adapter, path)
            in_shape = adapter.shape
            reason = f"imported; input adapted {adapter}"
            console.print(f"input adapted {adapter}: the bundle takes images as pixels come, and a "
                          f"{'Transpose' if adapter.transpose else 'Reshape'} in front of the graph feeds the model")
        fixed = work / "model.onnx"
        onnx.save(model, fixed)
        classes = _classes(labels, classes_n)
        spec = _spec(preprocess, in_shape)
        if spec.num_features != math.prod(in_shape) or (not spec.flatten and tuple(spec.raw_shape) != in_shape):
            raise UsageError(f"the preprocessing turns raw {list(spec.raw_shape)} inputs into "
                             f"{spec.num_features} features, but the model takes {list(in_shape)}")
        _trial(fixed, in_shape, len(classes))
        if keras_probe is not None:  # Keras against the graph as bundled: adapter and softmax included
            sample, expected = keras_probe
            got = predict(session(fixed), adapter.feed(sample) if adapter is not None else sample)
            lineage["keras_parity_max_abs_diff"] = check_parity(_softmax(expected) if added_softmax else expected,
                                                                got, str(path), against="Keras")

        metrics: dict[str, Any] = {}
        ref_path = None
        ref_summary = None
        if data:
            ds = load(data)
            if ds.x.shape[1:] != spec.raw_shape:
                hint = (" (the model takes colour images: give npz:FILE with x_train uint8 "
                        f"{['N', *spec.raw_shape]}; the image sources are grayscale)"
                        if len(spec.raw_shape) == 3 and len(ds.x.shape) == 3 else " (see --preprocess)")
                raise UsageError(f"data {data} has inputs of shape {list(ds.x.shape[1:])}; the model's "
                                 f"preprocessing expects raw {list(spec.raw_shape)}{hint}")
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
            "choice": {"objective": None, "reason": reason, "threads": threads},
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


@dataclass(frozen=True)
class _Adapter:
    """An image model's own input (`model_shape`: a channel axis last or first) and what the
    bundled graph takes instead (`shape`): [H, W] pixels for one channel, [H, W, C] for more,
    so the ordinary image preprocessing and the grayscale data sources fit."""

    model_shape: tuple[int, ...]
    shape: tuple[int, ...]
    transpose: bool  # [N, H, W, C] → [N, C, H, W]; otherwise a Reshape that adds the channel axis

    @classmethod
    def find(cls, in_shape: tuple[int, ...]) -> _Adapter | None:
        """None when the input needs no adapting: not 3-D, or [H, W, C] colour pixels already."""
        if len(in_shape) != 3:
            return None
        if in_shape[-1] == 1:
            return cls(in_shape, in_shape[:2], transpose=False)
        if in_shape[-1] <= MAX_CHANNELS:
            return None
        if in_shape[0] == 1:
            return cls(in_shape, in_shape[1:], transpose=False)
        if in_shape[0] <= MAX_CHANNELS:
            return cls(in_shape, (*in_shape[1:], in_shape[0]), transpose=True)
        return None

    def feed(self, x: np.ndarray) -> np.ndarray:
        """A batch in the model's layout → the same batch as the bundled graph takes it."""
        x = x.transpose(0, 2, 3, 1) if self.transpose else x
        return np.ascontiguousarray(x.reshape(len(x), *self.shape), dtype=np.float32)

    def __str__(self) -> str:
        return f"{_dims(self.shape)}→{_dims(self.model_shape)}"


def _dims(shape: tuple[int, ...]) -> str:
    return f"[N,{','.join(map(str, shape))}]"


def _adapt(model: onnx.ModelProto, in_name: str, adapter: _Adapter, path: Path) -> None:
    """Make the graph's input (same name) take `adapter.shape`, with a Reshape or Transpose in
    front that gives the model its own layout; the change is noted in the model's metadata."""
    graph = model.graph
    taken = {t for n in graph.node for t in (*n.input, *n.output)} | {i.name for i in graph.initializer}
    inner = _fresh(f"{in_name}_model_layout", taken)
    _rename_uses(graph, in_name, inner)
    if adapter.transpose:
        nodes = [helper.make_node("Transpose", [in_name], [inner], perm=[0, 3, 1, 2], name="shipyard_input_layout")]
    else:
        shape = _fresh("shipyard_model_shape", taken | {inner})
        value = numpy_helper.from_array(np.array([0, *adapter.model_shape], np.int64))  # 0: keep the batch
        nodes = [helper.make_node("Constant", [], [shape], value=value, name="shipyard_model_shape"),
                 helper.make_node("Reshape", [in_name, shape], [inner], name="shipyard_input_layout")]
    rest = list(graph.node)
    del graph.node[:]
    graph.node.extend([*nodes, *rest])
    dims = next(i for i in graph.input if i.name == in_name).type.tensor_type.shape.dim
    del dims[:]
    dims.add().dim_param = "batch"
    for d in adapter.shape:
        dims.add().dim_value = d
    note = model.metadata_props.add()
    note.key, note.value = "shipyard.input_adapted", str(adapter)
    try:
        onnx.checker.check_model(model)
    except Exception as e:  # noqa: BLE001
        raise DataError(path, f"could not adapt the input {adapter} ({e})") from None


def _fresh(name: str, taken: set[str]) -> str:
    out, i = name, 1
    while out in taken:
        out, i = f"{name}_{i}", i + 1
    return out


def _rename_uses(graph: onnx.GraphProto, old: str, new: str) -> None:
    """Every node that reads `old` reads `new`, inside subgraphs (If, Loop, Scan) too."""
    for node in graph.node:
        node.input[:] = [new if i == old else i for i in node.input]
        for attr in node.attribute:
            for sub in ([attr.g] if attr.HasField("g") else []) + list(attr.graphs):
                _rename_uses(sub, old, new)


def _softmax(z: np.ndarray) -> np.ndarray:
    e = np.exp(z - z.max(axis=-1, keepdims=True))
    return e / e.sum(axis=-1, keepdims=True)


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
    input, [H*W] for a square image, or [H, W, C] colour pixels; a one-channel or channels-first
    input was adapted before this, see `_Adapter`); or a JSON file holding a preprocessing spec."""
    if preprocess == "none":
        return PreprocessSpec(raw_shape=in_shape, raw_dtype="float32", scale=1.0, flatten=len(in_shape) == 1)
    if preprocess == "image":
        if len(in_shape) == 2 or (len(in_shape) == 3 and 1 < in_shape[-1] <= MAX_CHANNELS):  # [H, W], [H, W, C]
            return PreprocessSpec(raw_shape=in_shape, raw_dtype="uint8", flatten=False)
        side = math.isqrt(in_shape[0]) if len(in_shape) == 1 else 0
        if side * side == in_shape[0]:
            return PreprocessSpec(raw_shape=(side, side), raw_dtype="uint8", flatten=True)
        raise UsageError(f"--preprocess image needs an input of [N, H, W], [N, H*W], or [N, H, W, C] or "
                         f"[N, C, H, W] with C ≤ {MAX_CHANNELS} channels; the model takes {_dims(in_shape)}")
    p = Path(preprocess)
    if not p.is_file():
        raise UsageError(f"--preprocess {preprocess!r}: use none, image, or a JSON file with a spec")
    try:
        spec = PreprocessSpec.from_dict(json.loads(p.read_text()))
    except (json.JSONDecodeError, TypeError, KeyError) as e:
        raise UsageError(f"{p}: not a preprocessing spec ({e})") from None
    return spec


def _keras_to_onnx(path: Path, work: Path) -> tuple[Path, tuple[np.ndarray, np.ndarray]]:
    """Load with Keras 3 on the PyTorch backend and export to ONNX; also returns 64 random inputs
    and Keras's answers, to prove parity with the graph as it is bundled."""
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
    return dest, (sample, expected)
