"""One served model version: its bundle's ONNX graph in an ONNX Runtime session, the inputs it
accepts (ready features, or the raw form its preprocessing spec turns into features with the
same numpy code training used), and the answer: probabilities and the predicted label.
Protocol-agnostic: the V2 and v1 routes both end here. No torch."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import onnxruntime as ort

from shipyard.bundle import Bundle
from shipyard.errors import BadRequest
from shipyard.serve.codec import DATATYPES, NUMPY_TO_V2

LABEL = "label"


@dataclass(frozen=True)
class InputSpec:
    name: str
    dtype: np.dtype[Any]
    shape: tuple[int, ...]  # without the batch axis
    kind: str  # "features" (goes to the graph) or "raw" (preprocessed first)

    @property
    def v2_datatype(self) -> str:
        return NUMPY_TO_V2[self.dtype]

    def to_v2(self) -> dict[str, Any]:
        return {"name": self.name, "datatype": self.v2_datatype, "shape": [-1, *self.shape],
                "parameters": {"kind": self.kind}}


class ModelRuntime:
    """Loads and warms a verified bundle; `predict` is safe to call from several threads."""

    def __init__(self, bundle: Bundle, version: int | None = None, *, name: str | None = None, threads: int = 1,
                 allow_nonfinite: bool = False) -> None:
        self.bundle = bundle
        self.name = name or bundle.name  # the registry's name, which may differ from the bundle's
        self.version = version
        self.classes = np.array(bundle.classes, dtype=object)
        self.preprocess = bundle.preprocess
        self.allow_nonfinite = allow_nonfinite
        sig = bundle.meta["signature"]
        self.onnx_input = sig.get("onnx_input") or sig["inputs"][0]["name"]
        self.inputs = {i["name"]: InputSpec(i["name"], np.dtype(i["dtype"]).newbyteorder("="),
                                            tuple(int(d) for d in i["shape"][1:]), i.get("kind", "features"))
                       for i in sig["inputs"]}
        opts = ort.SessionOptions()
        opts.intra_op_num_threads = threads
        opts.inter_op_num_threads = 1
        opts.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
        opts.log_severity_level = 3
        self.session = ort.InferenceSession(str(bundle.model_path), opts, providers=["CPUExecutionProvider"])
        self.output = self.session.get_outputs()[0].name
        self.batcher: Any = None  # set by the server: a shipyard.serve.batching.Batcher, or None to run inline
        self.serving_metrics: Any = None  # set by the server: its batch metrics, flushed once a second
        self.serving: dict[str, Any] = {}  # how the server runs it (batching), shown in metadata
        self._pca: tuple[np.ndarray, np.ndarray, float] | tuple[()] | None = None
        self.warm()

    def warm(self) -> None:
        """Run a few batches so the first real request does not pay for allocation."""
        spec = self.inputs[self.onnx_input]
        for n in (1, 8, 64):
            self.predict(np.zeros((n, *spec.shape), dtype=np.float32))

    def warm_batch(self, n: int) -> None:
        """Run one batch of `n` (the server times this to decide where batches run)."""
        self.predict(np.zeros((n, *self.inputs[self.onnx_input].shape), dtype=np.float32))

    def features(self, name: str, array: np.ndarray) -> np.ndarray:
        """Validate one request input and turn it into the graph's float32 features."""
        spec = self.inputs.get(name)
        if spec is None:
            takes = " or ".join(f"{s.name!r} ({s.v2_datatype} {[-1, *s.shape]})" for s in self.inputs.values())
            raise BadRequest(f"model {self.name!r} has no input {name!r}; it takes {takes}")
        if array.dtype.newbyteorder("=") != spec.dtype:
            got = NUMPY_TO_V2.get(array.dtype.newbyteorder("="), str(array.dtype))
            raise BadRequest(f"input {name!r} must be {spec.v2_datatype}, got {got}")
        if array.ndim != len(spec.shape) + 1 or tuple(array.shape[1:]) != spec.shape:
            raise BadRequest(f"input {name!r} must have shape {[-1, *spec.shape]}, got {list(array.shape)}")
        if array.shape[0] == 0:
            raise BadRequest(f"input {name!r} holds no instances")
        if array.dtype.kind == "f" and not self.allow_nonfinite and not np.isfinite(array).all():
            bad = int(np.flatnonzero(~np.isfinite(array.reshape(len(array), -1)).all(axis=1))[0])
            raise BadRequest(f"input {name!r}: instance {bad} contains NaN or infinity")
        if spec.kind == "raw":
            assert self.preprocess is not None
            return self.preprocess.apply(array)
        return np.ascontiguousarray(array, dtype=np.float32)

    def predict(self, features: np.ndarray) -> np.ndarray:
        return self.session.run([self.output], {self.onnx_input: features})[0]

    def project(self, features: np.ndarray | Sequence[np.ndarray]) -> np.ndarray | None:
        """What the prediction log keeps of each input: its coordinates on the bundle's reference
        PCA basis and, as one more column, its distance from that subspace (the reconstruction
        error: noise and new domains live mostly outside the top components; drift_bench
        measured σ 0.1 noise caught in 20% of windows without it, 100% with it). float16, n×(k+1);
        None when the bundle has no reference profile. `features` may be a list of arrays (the
        model calls of one log flush): each is multiplied in place, without joining them first."""
        if self._pca is None:
            self._pca = self._load_pca()
        if not self._pca:
            return None
        both, offset, mean_sq = self._pca
        parts = [features] if isinstance(features, np.ndarray) else list(features)
        n = sum(len(f) for f in parts)
        xb = np.empty((n, both.shape[1]), np.float32)
        sq = np.empty(n, np.float32)
        start = 0
        for f in parts:  # two numpy calls per part: x·[B | mean] and |x|²
            x = f.reshape(len(f), -1).astype(np.float32, copy=False)
            end = start + len(x)
            np.matmul(x, both, out=xb[start:end])
            np.einsum("ij,ij->i", x, x, out=sq[start:end])
            start = end
        proj = xb[:, :-1]
        proj -= offset  # (x - mean) @ B without a centred copy of x
        centred_sq = sq - 2 * xb[:, -1] + mean_sq
        residual = np.sqrt(np.maximum(centred_sq - np.einsum("ij,ij->i", proj, proj), 0))
        out = np.empty((n, both.shape[1]), np.float16)
        out[:, :-1] = proj
        out[:, -1] = residual
        return out

    def _load_pca(self) -> tuple[np.ndarray, np.ndarray, float] | tuple[()]:
        try:
            with np.load(self.bundle.path / "reference.npz") as ref:
                mean = ref["pca_mean"].astype(np.float32)
                basis = ref["pca_components"].astype(np.float32).T
        except (OSError, KeyError, ValueError):
            return ()
        # one matmul gives the coordinates and x·mean (for |x - mean|²). Subnormal weights (pixels
        # that never vary) are zeroed: 72 of them made the matmul 2.5× slower (1.6 µs per
        # instance instead of 0.65)
        both = np.column_stack([basis, mean])
        both[np.abs(both) < np.finfo(np.float32).tiny] = 0
        mean = both[:, -1]
        return np.ascontiguousarray(both), mean @ both[:, :-1], float(mean @ mean)

    def labels(self, probabilities: np.ndarray) -> np.ndarray:
        return self.classes[probabilities.argmax(axis=1)]

    def metadata(self) -> dict[str, Any]:
        """V2 model metadata: every accepted input, and the outputs."""
        n = len(self.classes)
        return {
            "name": self.name,
            "versions": [str(self.version)] if self.version is not None else [],
            "platform": "onnxruntime_onnx",
            "inputs": [s.to_v2() for s in self.inputs.values()],
            "outputs": [{"name": "probabilities", "datatype": "FP32", "shape": [-1, n]},
                        {"name": LABEL, "datatype": "BYTES", "shape": [-1]}],
            "parameters": {"classes": list(self.classes), "variant": self.bundle.meta.get("variant"),
                           "preprocess": self.bundle.meta.get("preprocess"), **self.serving},
        }


__all__ = ["DATATYPES", "LABEL", "InputSpec", "ModelRuntime"]
