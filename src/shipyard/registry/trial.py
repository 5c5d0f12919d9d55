"""The trial load: a bundle's `model.onnx` must load and run in ONNX Runtime with the inputs,
outputs and classes its signature declares before a version is registered or an alias points
at it (see the invariants in `registry.registry`). ONNX Runtime is imported only here, and only
when a trial runs."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

from shipyard.bundle import META, MODEL, Bundle, BundleError, SignatureInput, SignatureOutput

__all__ = ["trial_load"]

_ORT_DTYPES: dict[str, Any] = {
    "tensor(float)": np.float32, "tensor(double)": np.float64, "tensor(float16)": np.float16,
    "tensor(int64)": np.int64, "tensor(int32)": np.int32, "tensor(int16)": np.int16,
    "tensor(int8)": np.int8, "tensor(uint8)": np.uint8, "tensor(bool)": np.bool_,
}


def trial_load(bundle: Bundle) -> None:
    """Load the bundle's `model.onnx` in ONNX Runtime and run one batch of zeros (batch size 1)
    through it. Raises BundleError naming the file when it does not load or does not run, when
    the graph's inputs and outputs are not the ones its signature declares (name, dtype, shape;
    the batch axis, -1 in the signature, may be symbolic or any size in the graph), or when its
    output is not `[batch, C]` with one column per class in `classes`. The signature is read as
    `BundleMeta` reads it (valid names, dtypes and shapes); this compares it with the graph."""
    import onnxruntime as ort

    path = bundle.path / MODEL
    try:
        opts = ort.SessionOptions()
        opts.intra_op_num_threads = 1
        opts.inter_op_num_threads = 1
        opts.log_severity_level = 4  # our error message says it; ORT's log would say it twice
        sess = ort.InferenceSession(str(path), sess_options=opts, providers=["CPUExecutionProvider"])
        inputs, outputs = sess.get_inputs(), sess.get_outputs()
    except Exception as e:  # ORT raises its own exception types for every kind of bad model
        raise _not_runnable(path, e) from None
    signature = bundle.meta.signature
    declared_in = {i.name: i for i in signature.graph_inputs}  # raw inputs are preprocessed first
    declared_out = {o.name: o for o in signature.outputs}
    _check_args(path, "input", declared_in, inputs)
    _check_args(path, "output", declared_out, outputs)
    classes = bundle.meta.classes
    feeds = {}
    for i in inputs:
        dtype = _ORT_DTYPES.get(i.type)
        if dtype is None:
            raise BundleError(f"{path}: input {i.name!r} has type {i.type}, which a trial run cannot feed")
        want = list(declared_in[i.name].shape) if i.name in declared_in else []
        # batch size 1; other open sizes as the signature fixes them (else 1)
        shape = [_dim(d) or (_dim(want[k]) if 0 < k < len(want) else None) or 1
                 for k, d in enumerate(i.shape or [])]
        feeds[i.name] = np.zeros(shape, dtype=dtype)
    try:
        results = sess.run(None, feeds)
    except Exception as e:
        raise _not_runnable(path, e) from None
    if not results:
        raise BundleError(f"{path}: produced no outputs on a trial batch")
    by_name = dict(zip([o.name for o in outputs], results, strict=True))
    for name, spec in declared_out.items():
        got = np.asarray(by_name[name])
        if not _shape_fits(list(spec.shape), list(got.shape), result=True):
            raise BundleError(f"{path}: output {name!r} is declared in {META} with shape {list(spec.shape)}, "
                              f"but a trial batch of 1 gives shape {list(got.shape)}")
    out_name = next(iter(declared_out), outputs[0].name)
    got = np.asarray(by_name[out_name])
    if got.ndim != 2 or got.shape[-1] != len(classes):
        raise BundleError(f"{path}: output {out_name!r} must be probabilities [-1, C] with C = {len(classes)}, "
                          f"one column per class in {META}, but a trial batch of 1 gives shape "
                          f"{list(got.shape)}")


def _not_runnable(path: Path, e: Exception) -> BundleError:
    first = (str(e).strip().splitlines() or [type(e).__name__])[0]
    return BundleError(f"{path}: does not load and run in ONNX Runtime: {first[:300]}")


def _dim(d: Any) -> int | None:
    """A fixed size, or None for a dimension of any size (-1 in a signature, a name or None in a graph)."""
    return d if isinstance(d, int) and not isinstance(d, bool) and d > 0 else None


def _shape_fits(declared: list[Any], actual: list[Any], *, result: bool = False) -> bool:
    """Whether a graph's shape (or, with `result`, an array's) is the declared one. A size the
    signature fixes must be that size in the graph, or open there; a size it leaves open (-1,
    e.g. the batch axis) must be open in the graph too, and may be anything in a result."""
    if len(declared) != len(actual):
        return False
    for d, a in zip(declared, actual, strict=True):
        want, have = _dim(d), _dim(a)
        if want is None and have is not None and not result:
            return False
        if want is not None and have not in (None, want):
            return False
    return True


def _shape_str(shape: list[Any]) -> str:
    return "[" + ", ".join(str(d) if d is not None else "?" for d in shape) + "]"


def _check_args(path: Path, kind: str, declared: Mapping[str, SignatureInput | SignatureOutput],
                have: list[Any]) -> None:
    """Each declared input (output) is one of the graph's, with the declared dtype and shape."""
    graph = {a.name: a for a in have}
    for name, spec in declared.items():
        arg = graph.get(name)
        if arg is None:
            raise BundleError(f"{path}: the signature in {META} names {kind} {name!r}, "
                              f"but the model's {kind}s are {list(graph)}")
        actual_dtype = _ORT_DTYPES.get(arg.type)
        actual_dtype_str = np.dtype(actual_dtype).name if actual_dtype is not None else arg.type
        declared_dtype = np.dtype(spec.dtype).name
        shape = list(spec.shape)
        actual_shape = list(arg.shape or [])
        if declared_dtype != actual_dtype_str or not _shape_fits(shape, actual_shape):
            raise BundleError(f"{path}: {kind} {name!r} is declared in {META} as {declared_dtype} {shape}, "
                              f"but the model's is {actual_dtype_str} {_shape_str(actual_shape)}")
