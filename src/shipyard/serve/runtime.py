"""One served model version: its bundle's ONNX graph in an ONNX Runtime session, the inputs it
accepts (ready features, or the raw form its preprocessing spec turns into features with the
same numpy code training used), and the answer: probabilities and the predicted label.
Protocol-agnostic: the V2 and v1 routes both end here. No torch."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np
import onnxruntime as ort

from shipyard.bundle import Bundle
from shipyard.bundle.meta import dump
from shipyard.bundle.reference import Projection
from shipyard.errors import BadRequest, UsageError
from shipyard.serve.codec import DATATYPES, MAX_FLOAT, NUMPY_TO_V2, float_limit

if TYPE_CHECKING:
    from shipyard.monitor.metrics import BatchMetrics
    from shipyard.serve.batching import Batcher

LABEL = "label"


@dataclass(frozen=True)
class InputSpec:
    name: str
    dtype: np.dtype[Any]
    shape: tuple[int, ...]  # without the batch axis
    kind: str  # "features" (goes to the graph), "raw" (preprocessed first) or "column" (of a table)

    @property
    def v2_datatype(self) -> str:
        return "BYTES" if self.dtype.kind == "O" else NUMPY_TO_V2[self.dtype]

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
        #: a regression answers `prediction` values [N, targets]; a classification probabilities and labels
        self.regression = bundle.regression
        self.output_names: tuple[str, ...] = ("prediction",) if self.regression else ("probabilities", LABEL)
        sig = bundle.meta.signature
        self.onnx_input = sig.onnx_input
        self.inputs = {i.name: InputSpec(i.name, np.dtype(i.dtype).newbyteorder("="), i.shape[1:], i.kind)
                       for i in sig.inputs}
        #: a raw form shaped like the features (a standardized table): unnamed v1 rows are raw
        self.raw_like_features = any(i.kind == "raw" and i.shape == self.inputs[self.onnx_input].shape
                                     for i in self.inputs.values())
        #: a table's columns by name (empty for an array model): a request sends all of them
        self.columns = {c.name: c for c in (self.preprocess.columns or ())} if self.preprocess is not None else {}
        opts = ort.SessionOptions()
        opts.intra_op_num_threads = threads
        opts.inter_op_num_threads = 1
        opts.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
        opts.log_severity_level = 3
        self.session = ort.InferenceSession(str(bundle.model_path), opts, providers=["CPUExecutionProvider"])
        self.output = self.session.get_outputs()[0].name
        self.batcher: Batcher | None = None  # set by the server; None runs inline
        self.serving_metrics: BatchMetrics | None = None  # set by the server: flushed once a second
        self.serving: dict[str, Any] = {}  # how the server runs it (batching), shown in metadata
        self._projection: Projection | None = None
        self._projection_loaded = False
        self.warm()

    def warm(self) -> None:
        """Run a few batches so the first real request does not pay for allocation."""
        spec = self.inputs[self.onnx_input]
        for n in (1, 8, 64):
            self.predict(np.zeros((n, *spec.shape), dtype=np.float32))

    def warm_batch(self, n: int) -> None:
        """Run one batch of `n` (the server times this to decide where batches run)."""
        self.predict(np.zeros((n, *self.inputs[self.onnx_input].shape), dtype=np.float32))

    def features(self, name: str, array: np.ndarray, *, checked: bool = False) -> np.ndarray:
        """Validate one request input and turn it into the graph's float32 features. `checked`:
        its values already passed `codec.check_values` (JSON), so the float range is not looked
        at again."""
        spec = self.inputs.get(name)
        if spec is None:
            takes = " or ".join(f"{s.name!r} ({s.v2_datatype} {[-1, *s.shape]})" for s in self.inputs.values())
            raise BadRequest(f"model {self.name!r} has no input {name!r}; it takes {takes}")
        if spec.kind == "column":  # a one-column request: the table's own checks (and number types)
            return self.table_features([(name, array)])
        if array.dtype.newbyteorder("=") != spec.dtype:
            got = NUMPY_TO_V2.get(array.dtype.newbyteorder("="), str(array.dtype))
            raise BadRequest(f"input {name!r} must be {spec.v2_datatype}, got {got}")
        if array.ndim != len(spec.shape) + 1 or tuple(array.shape[1:]) != spec.shape:
            raise BadRequest(f"input {name!r} must have shape {[-1, *spec.shape]}, got {list(array.shape)}")
        if array.shape[0] == 0:
            raise BadRequest(f"input {name!r} holds no instances")
        if array.dtype.kind == "f" and not self.allow_nonfinite and not checked:
            _check_floats(name, array, nan_ok=bool(self.columns) and self.preprocess is not None
                          and self.preprocess.impute != "none" and spec.kind == "raw")
        if spec.kind == "raw":
            assert self.preprocess is not None
            try:
                return self.preprocess.apply(array)
            except UsageError as e:  # a table's missing value or category index, by row and column
                raise BadRequest(f"input {name!r}: {e}") from None
        return np.ascontiguousarray(array, dtype=np.float32)

    def table_features(self, tensors: Sequence[tuple[str, np.ndarray]]) -> np.ndarray:
        """A table's named columns (one V2 input each: FP32 or another number type for numeric
        columns, BYTES for categorical ones; shape [N] or [N, 1]) → features, by the spec's own
        `encode` and `apply`. A 400 names the column that is unknown, missing or of the wrong type."""
        if not self.columns:
            names = [n for n, _ in tensors]
            raise BadRequest(f"send exactly one input (features or the raw form), got {len(names)}: {names}")
        assert self.preprocess is not None
        data: dict[str, np.ndarray] = {}
        for name, array in tensors:
            column = self.columns.get(name)
            if column is None:
                other = self.inputs.get(name)
                if other is not None:
                    raise BadRequest(f"input {name!r} is the whole {other.kind} form; send it alone, or send "
                                     f"every column ({', '.join(self.columns)}) without it")
                raise BadRequest(f"unknown column {name!r}; model {self.name!r} takes the columns "
                                 f"{', '.join(repr(c) for c in self.columns)}")
            if array.ndim not in (1, 2) or (array.ndim == 2 and array.shape[1] != 1):
                raise BadRequest(f"column {name!r} must have shape [-1] or [-1, 1], got {list(array.shape)}")
            if array.shape[0] == 0:
                raise BadRequest(f"column {name!r} holds no instances")
            if column.kind == "numeric":
                if array.dtype.kind not in "fiu":
                    got = "BYTES" if array.dtype.kind == "O" else NUMPY_TO_V2.get(array.dtype.newbyteorder("="),
                                                                                  str(array.dtype))
                    raise BadRequest(f"column {name!r} is numeric: send FP32 (or another number type), got {got}")
                if array.dtype.kind == "f" and not self.allow_nonfinite:
                    _check_floats(name, array.reshape(-1, 1), nan_ok=column.fill is not None, what="column")
            elif array.dtype.kind not in "Ob":  # text, or booleans (`encode` reads them as 'False', 'True')
                raise BadRequest(f"column {name!r} is categorical: send BYTES (strings such as "
                                 f"{column.categories[0]!r}), got {NUMPY_TO_V2.get(array.dtype.newbyteorder('='))}")
            data[name] = array.reshape(-1)
        try:
            return self.preprocess.apply(self.preprocess.encode(data))
        except UsageError as e:
            raise BadRequest(str(e)) from None

    def predict(self, features: np.ndarray) -> np.ndarray:
        return self.session.run([self.output], {self.onnx_input: features})[0]

    def project(self, features: np.ndarray | Sequence[np.ndarray]) -> np.ndarray | None:
        """What the prediction log keeps of each input (`Projection.project`: its coordinates on
        the bundle's reference PCA basis and its distance from that subspace, float16 n×(k+1));
        None when the bundle has no reference profile. Loaded on first use."""
        if not self._projection_loaded:
            self._projection = Projection.load(self.bundle)
            self._projection_loaded = True
        return self._projection.project(features) if self._projection is not None else None

    def labels(self, probabilities: np.ndarray) -> np.ndarray:
        return self.classes[probabilities.argmax(axis=1)]

    def output_value(self, name: str, answer: np.ndarray) -> np.ndarray:
        """One named output of the model's answer (probabilities or values, as the graph gave them)."""
        return self.labels(answer) if name == LABEL else answer

    def metadata(self) -> dict[str, Any]:
        """V2 model metadata: every accepted input, and the outputs."""
        n = len(self.classes)
        return {
            "name": self.name,
            "versions": [str(self.version)] if self.version is not None else [],
            "platform": "onnxruntime_onnx",
            "inputs": [s.to_v2() for s in self.inputs.values()],
            "outputs": [{"name": "prediction", "datatype": "FP32", "shape": [-1, n]}] if self.regression else
                       [{"name": "probabilities", "datatype": "FP32", "shape": [-1, n]},
                        {"name": LABEL, "datatype": "BYTES", "shape": [-1]}],
            "parameters": {"task": self.bundle.meta.task,
                           "targets" if self.regression else "classes": list(self.classes),
                           "variant": self.bundle.meta.variant,
                           "preprocess": dump(self.preprocess), **self.serving},
        }


def _check_floats(name: str, array: np.ndarray, *, nan_ok: bool = False, what: str = "input") -> None:
    """Float features must be finite and within ±MAX_FLOAT (FP16: its range), as JSON ones are
    (`codec.check_values`): beyond that a model answers NaN probabilities and the prediction log's
    projection and samples overflow, so such an input is refused, not served. `nan_ok`: a table
    column whose missing values (NaN) training imputes."""
    datatype = NUMPY_TO_V2[array.dtype.newbyteorder("=")]
    limit = MAX_FLOAT if datatype != "FP16" else float(np.finfo(np.float16).max)
    if nan_ok:
        array = np.where(np.isnan(array), 0, array)
    if not array.size or np.abs(array).max() <= limit:  # NaN fails it too
        return
    rows = array.reshape(len(array), -1)
    bad = int(np.flatnonzero(~(np.abs(rows) <= limit).all(axis=1))[0])
    value = rows[bad][np.flatnonzero(~(np.abs(rows[bad]) <= limit))[0]].item()
    if not np.isfinite(value):
        raise BadRequest(f"{what} {name!r}: instance {bad} contains {'NaN or ' if not nan_ok else ''}infinity")
    raise BadRequest(f"{what} {name!r}: instance {bad} holds {value:.4g}, {float_limit(datatype)}")


__all__ = ["DATATYPES", "LABEL", "InputSpec", "ModelRuntime"]
