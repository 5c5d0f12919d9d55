"""One bundle's explainer: the parameters of an explanation, checked; the baseline; the method
run in feature space; the attributions mapped back to what the client sent (pixels for a raw
image — exact for Integrated Gradients, whose attributions are invariant under the elementwise
affine preprocessing —, features for features, one value per column of a table, the sum of its
one-hot features for a categorical one). No torch.

Baselines: `zeros` is black pixels for a raw image and zero features otherwise (for a
standardized table: every numeric column at its mean and no category); `mean` is the mean of the
training features the bundle's reference profile records."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np
import onnxruntime as ort

from shipyard.attribution import methods
from shipyard.errors import BadRequest

if TYPE_CHECKING:
    from shipyard.bundle import Bundle

METHODS = ("integrated_gradients", "occlusion", "kernel_shap")
BASELINES = ("zeros", "mean")
PARAMETERS = ("target", "method", "steps", "baseline", "integration", "patch", "samples")
#: instances × (steps, groups or samples) one explanation may evaluate: a bound on memory and time
MAX_ROWS = 1 << 16


@dataclass(frozen=True)
class Params:
    """An explanation's parameters (request-level `parameters` of `/explain`)."""

    target: int | str | None = None  # class index or label (a regression: the target's); None: predicted
    method: str | None = None  # None: integrated_gradients where the bundle has a gradient graph, else occlusion
    steps: int = 64
    baseline: str = "zeros"
    integration: str = "riemann_trapezoid"
    patch: int = 4  # occlusion and kernel_shap on images: patch side in pixels
    samples: int = 1024  # kernel_shap: coalitions per instance

    @classmethod
    def parse(cls, doc: dict[str, Any] | None) -> Params:
        """From a request's parameters; a 400 names the parameter that is wrong (unknown ones too,
        except the protocol's own, e.g. binary_data_output)."""
        doc = {k: v for k, v in (doc or {}).items() if k in PARAMETERS or not _protocol(k)}
        if unknown := [k for k in doc if k not in PARAMETERS]:
            raise BadRequest(f"unknown parameter {unknown[0]!r}; explain takes {', '.join(PARAMETERS)}")
        target = doc.get("target")
        if target is not None and (isinstance(target, bool) or not isinstance(target, (int, str))):
            raise BadRequest(f"parameter 'target' must be a class index or label, got {target!r}")
        method = doc.get("method")
        if method is not None and method not in METHODS:
            raise BadRequest(f"parameter 'method' must be one of {', '.join(METHODS)}, got {method!r}")
        baseline = doc.get("baseline", "zeros")
        if baseline not in BASELINES:
            raise BadRequest(f"parameter 'baseline' must be one of {', '.join(BASELINES)}, got {baseline!r}")
        integration = doc.get("integration", "riemann_trapezoid")
        if integration not in methods.INTEGRATIONS:
            raise BadRequest(f"parameter 'integration' must be one of {', '.join(methods.INTEGRATIONS)}, "
                             f"got {integration!r}")
        return cls(target, method, _int(doc, "steps", 64, 2, 1024), baseline, integration,
                   _int(doc, "patch", 4, 1, 64), _int(doc, "samples", 1024, 16, 20_000))


def _protocol(key: str) -> bool:
    return key in ("binary_data_output", "binary_data", "content_type", "headers")


def _int(doc: dict[str, Any], key: str, default: int, lo: int, hi: int) -> int:
    v = doc.get(key, default)
    if isinstance(v, bool) or not isinstance(v, int) or not lo <= v <= hi:
        raise BadRequest(f"parameter {key!r} must be an integer in {lo}..{hi}, got {v!r}")
    return v


@dataclass
class Explanation:
    """Attributions per input the client sent (name → array shaped like it) and how they came."""

    attributions: dict[str, np.ndarray]
    target: list[int]
    target_label: list[str]
    method: str
    output: np.ndarray  # the target's output at each input (the method's own model: see `note`)
    baseline_output: np.ndarray
    params: Params
    note: str | None = None
    details: dict[str, Any] = field(default_factory=dict)

    def summary(self) -> dict[str, Any]:
        """What the response's parameters and the explanation record carry besides the arrays."""
        out: dict[str, Any] = {"method": self.method, "target": self.target, "target_label": self.target_label,
                               "output": [float(v) for v in self.output],
                               "baseline_output": [float(v) for v in self.baseline_output],
                               "baseline": self.params.baseline, **self.details}
        if self.method == "integrated_gradients":
            out.update(steps=self.params.steps, integration=self.params.integration)
        if self.note:
            out["note"] = self.note
        return out


class Explainer:
    """Explains one bundle's answers; thread-safe (ONNX Runtime sessions are)."""

    def __init__(self, bundle: Bundle, *, threads: int = 1) -> None:
        self.bundle = bundle
        self.spec = bundle.preprocess
        self.classes = list(bundle.classes)
        self.regression = bundle.regression
        opts = ort.SessionOptions()
        opts.intra_op_num_threads = threads
        opts.inter_op_num_threads = 1
        opts.log_severity_level = 3
        self.model = ort.InferenceSession(str(bundle.model_path), opts, providers=["CPUExecutionProvider"])
        self._model_in = bundle.meta.signature.onnx_input
        dims = self.model.get_inputs()[0].shape[1:]
        self._model_shape = tuple(int(d) for d in dims) if len(dims) > 1 and all(isinstance(d, int) for d in dims) \
            else None  # a graph that takes unflattened features: reshaped for it
        grad = bundle.explain_path
        self.gradient = ort.InferenceSession(str(grad), opts, providers=["CPUExecutionProvider"]) \
            if grad is not None else None
        graph = bundle.meta.explain
        self._ig = methods.graph_ig(self.gradient, graph.kind) if self.gradient is not None and graph else None
        self._baselines: dict[tuple[str, bool, int], np.ndarray] = {}
        ref = bundle.reference
        self.mean = np.asarray(ref["pca_mean"], np.float32) if ref is not None and "pca_mean" in ref else None

    # -- the two model calls ------------------------------------------------------------------
    def _forward(self, x: np.ndarray) -> np.ndarray:
        if self._model_shape is not None:
            x = x.reshape(len(x), *self._model_shape)
        return np.asarray(self.model.run(None, {self._model_in: x})[0], np.float32)


    # -- one explanation -------------------------------------------------------------------------
    def explain(self, features: np.ndarray, params: Params, *, kind: str = "features",
                input_name: str = "input", shape: tuple[int, ...] | None = None) -> Explanation:
        """Attributions of `features` [N, F] (what the graph takes) for the instances a client
        sent as `kind` (`features`, `raw` of `shape` per instance, or `columns`)."""
        features = features.reshape(len(features), -1)
        n, f = features.shape
        method = params.method or ("integrated_gradients" if self.gradient is not None else "occlusion")
        if method == "integrated_gradients" and self.gradient is None:
            raise BadRequest(f"model {self.bundle.name!r} has no gradient graph (imported, or bundled before "
                             "explanations): use method occlusion or kernel_shap")
        target = self._targets(features, params.target)
        onehot = np.zeros((n, len(self.classes)), np.float32)
        onehot[np.arange(n), target] = 1.0
        base = np.broadcast_to(self._baseline(params.baseline, kind, f), (n, f))
        image = kind == "raw" and shape is not None and len(shape) >= 2 and self.spec is not None \
            and not self.spec.is_table
        groups = self._groups(kind, f, shape if image else None, params.patch) if method != "integrated_gradients" \
            else []
        per = {"integrated_gradients": params.steps + 2, "occlusion": len(groups) + 2,
               "kernel_shap": params.samples + 2}[method]
        if n * per > MAX_ROWS:
            raise BadRequest(f"explaining {n} instances with {method} takes {n * per:,} model evaluations, more "
                             f"than {MAX_ROWS:,} per request: send fewer instances (or fewer steps/samples)")
        x = np.ascontiguousarray(features, np.float32)
        if method == "integrated_gradients":
            assert self._ig is not None
            attr, out, base_out = self._ig(x, base, onehot, params.steps, params.integration)
        elif method == "occlusion":
            attr, out, base_out = methods.occlusion(self._forward, x, base, onehot, groups)
        else:
            attr, out, base_out = methods.kernel_shap(self._forward, x, base, onehot, groups, samples=params.samples)
        details: dict[str, Any] = {}
        if method != "integrated_gradients":
            details["groups"] = len(groups)
        if method == "kernel_shap":
            details["samples"] = params.samples
        note = None
        variant = self.bundle.meta.variant
        if method == "integrated_gradients" and variant not in (None, "fp32"):
            note = (f"output and baseline_output come from the fp32 gradient graph; the served {variant} "
                    "variant's answers may differ slightly")
        labels = [self.classes[t] for t in target]
        return Explanation(self._map_back(attr, kind, input_name, shape), [int(t) for t in target], labels, method,
                           out, base_out, params, note, details)

    def _targets(self, features: np.ndarray, target: int | str | None) -> np.ndarray:
        n = len(features)
        if target is None:  # the predicted class (a regression: its first target)
            if self.regression:
                return np.zeros(n, np.intp)
            return self._forward(np.ascontiguousarray(features, np.float32)).argmax(axis=1)
        if isinstance(target, str):
            if target not in self.classes:
                raise BadRequest(f"parameter 'target': {target!r} is not one of the model's "
                                 f"{'targets' if self.regression else 'classes'} ({', '.join(self.classes[:10])}"
                                 f"{'…' if len(self.classes) > 10 else ''})")
            return np.full(n, self.classes.index(target), np.intp)
        if not 0 <= target < len(self.classes):
            raise BadRequest(f"parameter 'target' must be a class index in 0..{len(self.classes) - 1}, got {target}")
        return np.full(n, target, np.intp)

    def _baseline(self, baseline: str, kind: str, f: int) -> np.ndarray:
        key = (baseline, kind == "raw", f)
        got = self._baselines.get(key)
        if got is None:
            got = self._baselines[key] = self._make_baseline(baseline, kind, f)
        return got

    def _make_baseline(self, baseline: str, kind: str, f: int) -> np.ndarray:
        if baseline == "mean":
            if self.mean is None or len(self.mean) != f:
                raise BadRequest("parameter 'baseline': this bundle records no training mean (no reference "
                                 "profile); use baseline zeros")
            return self.mean
        if kind == "raw" and self.spec is not None and not self.spec.is_table:  # black pixels
            return self.spec.apply(np.zeros((1, *self.spec.raw_shape), np.dtype(self.spec.raw_dtype)))[0]
        return np.zeros(f, np.float32)

    def _groups(self, kind: str, f: int, image: tuple[int, ...] | None, patch: int) -> list[np.ndarray]:
        """What occlusion and KernelSHAP switch on and off together."""
        if kind == "columns" and self.spec is not None and self.spec.columns is not None:
            starts = np.cumsum([0, *(c.width for c in self.spec.columns)])
            return [np.arange(starts[j], starts[j + 1]) for j in range(len(self.spec.columns))]
        if image is not None:
            return methods.patches(image, patch)
        return [np.array([j]) for j in range(f)]

    def _map_back(self, attr: np.ndarray, kind: str, input_name: str, shape: tuple[int, ...] | None
                  ) -> dict[str, np.ndarray]:
        n = len(attr)
        if kind == "columns" and self.spec is not None and self.spec.columns is not None:
            out, at = {}, 0
            for c in self.spec.columns:
                out[f"attributions/{c.name}"] = attr[:, at:at + c.width].sum(axis=1).astype(np.float32)
                at += c.width
            return out
        return {"attributions": attr.reshape(n, *shape) if shape is not None else attr}
