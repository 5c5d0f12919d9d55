"""The reference profile: what the training inputs and the model's predictions looked like, so
that monitoring a freshly deployed model needs no extra setup. Computed with the chosen ONNX
variant (so quantization does not shift it). Arrays travel in the bundle's `reference.npz`;
`summary()` goes into `bundle.json`. `Projection` puts live inputs on the profile's PCA basis:
the prediction log keeps that of every request (serving hot path: numpy only)."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from shipyard.bundle.files import REFERENCE

if TYPE_CHECKING:
    from shipyard.bundle.files import Bundle

SCHEMA_VERSION = 1
SAMPLE_SIZE = 2000
COMPONENTS = 32
CALIBRATION_BINS = 10
SOFTMAX_CLASSES = 32  # held-out probabilities are kept (and logged per prediction) up to this many classes


def build(x_train: np.ndarray, val_probabilities: np.ndarray, y_val: np.ndarray, *, seed: int = 0,
          sample_size: int = SAMPLE_SIZE, components: int = COMPONENTS,
          x_val: np.ndarray | None = None, regression: bool = False) -> dict[str, np.ndarray]:
    """x_train: preprocessed training features (flattened here); val_probabilities: the
    chosen variant's probabilities on the validation split; x_val: its preprocessed features,
    whose profile (PCA coordinates and reconstruction error) is the held-out reference that
    drift tests compare live windows with and calibrate their thresholds on (the training
    sample is in-sample to the PCA, so its reconstruction errors are too small).

    A `regression` passes its values [N, targets] and true values: the first target's value
    stands where a class's confidence goes (the confidence test then compares the distribution
    of answers), one "class", no calibration (no accuracy to estimate); `val_targets` keeps the
    true values."""
    if regression:
        y_true = np.asarray(y_val, dtype=np.float64).reshape(len(y_val), -1)[:, 0]
        val_probabilities = np.asarray(val_probabilities, dtype=np.float32).reshape(len(y_val), -1)[:, :1]
        y_val = np.zeros(len(y_val), dtype=np.int64)
    x_train = x_train.reshape(len(x_train), -1)
    rng = np.random.default_rng(seed)
    n = min(sample_size, len(x_train))
    sample = np.ascontiguousarray(x_train[np.sort(rng.choice(len(x_train), n, replace=False))],
                                  dtype=np.float32)
    mean = sample.mean(axis=0)
    centered = sample - mean
    _, s, vt = np.linalg.svd(centered, full_matrices=False)
    k = min(components, vt.shape[0])
    basis = vt[:k].astype(np.float32)
    variance = (s**2) / max(n - 1, 1)
    pred = val_probabilities.argmax(axis=1)
    conf = val_probabilities.max(axis=1).astype(np.float32)
    if regression:  # no confidence bins: nothing is estimated from a regression's values
        conf = val_probabilities[:, 0].astype(np.float32)
    edges = np.linspace(0.0, 1.0, CALIBRATION_BINS + 1)
    which = np.clip(np.digitize(conf, edges[1:-1]), 0, CALIBRATION_BINS - 1)
    correct = pred == y_val
    counts = np.bincount(which, minlength=CALIBRATION_BINS) * (0 if regression else 1)
    hits = np.bincount(which, weights=correct, minlength=CALIBRATION_BINS)
    accuracy = np.divide(hits, counts, out=np.full(CALIBRATION_BINS, np.nan), where=counts > 0)
    classes = val_probabilities.shape[1]
    extra: dict[str, np.ndarray] = {}
    if x_val is not None:
        extra["val_profile"] = profile(mean, basis, x_val).astype(np.float16)
    if classes <= SOFTMAX_CLASSES and not regression:  # the softmax test's held-out sample (as the log keeps)
        extra["val_probabilities"] = val_probabilities.astype(np.float16)
    if regression:
        extra["val_targets"] = y_true
    return {
        **extra,
        "schema_version": np.array(SCHEMA_VERSION),
        "sample": sample,
        "pca_mean": mean.astype(np.float32),
        "pca_components": basis,
        "pca_explained_variance": variance[:k].astype(np.float32),
        "pca_total_variance": np.array(variance.sum(), dtype=np.float64),
        "projected": (centered @ basis.T).astype(np.float32),
        "val_predictions": pred.astype(np.int64),
        "val_confidence": conf,
        "val_labels": y_val.astype(np.int64),
        "class_frequencies": (np.bincount(pred, minlength=classes) / len(pred)).astype(np.float64),
        "calibration_edges": edges,
        "calibration_accuracy": accuracy,
        "calibration_count": counts.astype(np.int64),
    }


def summary(ref: dict[str, np.ndarray]) -> dict[str, Any]:
    """The human-readable part for bundle.json."""
    edges, acc, count = ref["calibration_edges"], ref["calibration_accuracy"], ref["calibration_count"]
    return {
        "schema_version": int(ref["schema_version"]),
        "file": "reference.npz",
        "sample_size": int(len(ref["sample"])),
        "pca_components": int(len(ref["pca_components"])),
        "val_profile_size": int(len(ref["val_profile"])) if "val_profile" in ref else 0,
        "drift_thresholds": [{"window": int(r[0]), "alpha": float(r[1]), "draws": int(r[2]), "input": float(r[3]),
                              "prediction": float(r[4]), "confidence": float(r[5]),
                              **({"mean": float(r[6]), "cusum": float(r[7])} if len(r) > 6 else {}),
                              **({"softmax": float(r[8])} if len(r) > 8 else {})}
                             for r in ref.get("drift_thresholds", [])],
        "pca_explained_variance_ratio": float(ref["pca_explained_variance"].sum() / ref["pca_total_variance"]),
        "class_frequencies": [round(float(f), 6) for f in ref["class_frequencies"]],
        "val_accuracy": float((ref["val_predictions"] == ref["val_labels"]).mean())
        if "val_targets" not in ref else None,  # a regression's: its val MAE is in the metrics
        "mean_confidence": float(ref["val_confidence"].mean()),
        "calibration": [
            {"confidence": [round(float(edges[i]), 2), round(float(edges[i + 1]), 2)],
             "accuracy": None if count[i] == 0 else round(float(acc[i]), 6), "count": int(count[i])}
            for i in range(len(count))
        ],
    }


def profile(mean: np.ndarray, components: np.ndarray, x: np.ndarray) -> np.ndarray:
    """Each input's PCA coordinates and, as the last column, its distance from the PCA subspace
    (float64 here; the server computes the same in float32 per request, `Projection.project`)."""
    centred = x.reshape(len(x), -1).astype(np.float64) - mean
    coords = centred @ components.T.astype(np.float64)
    residual = np.sqrt(np.maximum((centred**2).sum(1) - (coords**2).sum(1), 0))
    if len(components) >= centred.shape[1]:  # the basis spans every feature (a small table): no distance
        residual *= 0  # (rounding noise otherwise, computed differently here and in `Projection`)
    return np.column_stack([coords, residual])


_F16_MAX = float(np.finfo(np.float16).max)


class Projection:
    """What the prediction log keeps of each input: its coordinates on the bundle's reference
    PCA basis and, as one more column, its distance from that subspace (the reconstruction
    error: noise and new domains live mostly outside the top components; drift_bench measured
    σ 0.1 noise caught in 20% of windows without it, 100% with it)."""

    def __init__(self, mean: np.ndarray, components: np.ndarray) -> None:
        # one matmul gives the coordinates and x·mean (for |x - mean|²). Subnormal weights (pixels
        # that never vary) are zeroed: 72 of them made the matmul 2.5× slower (1.6 µs per
        # instance instead of 0.65)
        both = np.column_stack([components.astype(np.float32).T, mean.astype(np.float32)])
        both[np.abs(both) < np.finfo(np.float32).tiny] = 0
        mean = both[:, -1]
        self.both = np.ascontiguousarray(both)
        self.offset = mean @ both[:, :-1]
        self.mean_sq = float(mean @ mean)
        #: the basis spans every feature (a table of up to COMPONENTS features): the distance from
        #: it is 0, and what float32 would compute is rounding noise that the drift tests would see
        self.full_rank = both.shape[1] - 1 >= both.shape[0]

    @classmethod
    def load(cls, bundle: Bundle | Path) -> Projection | None:
        """From a bundle's (or a folder's) `reference.npz`; None when it has none (or no PCA)."""
        folder = bundle if isinstance(bundle, Path) else bundle.path
        try:
            with np.load(folder / REFERENCE) as ref:
                return cls(ref["pca_mean"], ref["pca_components"])
        except (OSError, KeyError, ValueError):
            return None

    def project(self, features: np.ndarray | Sequence[np.ndarray]) -> np.ndarray:
        """float16, n×(k+1). `features` may be a list of arrays (the model calls of one log
        flush): each is multiplied in place, without joining them first.

        Never ±inf: the server takes any finite float32 input (3e38 included), whose projection
        can overflow float32 math (rows that do are computed again in float64) and float16 (every
        value is clipped to ±65504, float16's largest). Such an input is far out of distribution
        either way, and the drift tests see it as the extreme it is, not as inf or NaN that would
        poison a window's statistics. NaN in (only with `--allow-nonfinite`) stays NaN."""
        both = self.both
        parts = [features] if isinstance(features, np.ndarray) else list(features)
        n = sum(len(f) for f in parts)
        if len(parts) > 1 and n < 16 * len(parts):  # one-row parts (unbatched calls): a matmul per
            # row costs ~4 µs per instance, one over them all 0.4 (the copy is cheaper than the calls)
            parts = [np.concatenate([f.reshape(len(f), -1) for f in parts])]
        xb = np.empty((n, both.shape[1]), np.float32)
        sq = np.empty(n, np.float32)
        start = 0
        with np.errstate(over="ignore", invalid="ignore"):  # overflow is found and redone below
            for f in parts:  # two numpy calls per part: x·[B | mean] and |x|²
                x = f.reshape(len(f), -1).astype(np.float32, copy=False)
                end = start + len(x)
                np.matmul(x, both, out=xb[start:end])
                np.einsum("ij,ij->i", x, x, out=sq[start:end])
                start = end
            proj = xb[:, :-1]
            proj -= self.offset  # (x - mean) @ B without a centred copy of x
            centred_sq = sq - 2 * xb[:, -1] + self.mean_sq
            residual = np.sqrt(np.maximum(centred_sq - np.einsum("ij,ij->i", proj, proj), 0))
        out = np.empty((n, both.shape[1]), np.float32)
        out[:, :-1] = proj
        out[:, -1] = residual if not self.full_rank else residual * 0  # (NaN stays NaN)
        if not np.isfinite(out).all():
            self._redo_in_float64(parts, out)
        np.clip(out, -_F16_MAX, _F16_MAX, out=out)
        return out.astype(np.float16)

    def _redo_in_float64(self, parts: Sequence[np.ndarray], out: np.ndarray) -> None:
        """Rows whose float32 projection overflowed, in float64 (finite for any finite float32 input)."""
        rows = np.flatnonzero(~np.isfinite(out).all(axis=1))
        x = np.concatenate([f.reshape(len(f), -1) for f in parts])[rows].astype(np.float64)
        mean = self.both[:, -1].astype(np.float64)
        out[rows] = np.clip(profile(mean, self.both[:, :-1].T.astype(np.float64), x), -_F16_MAX, _F16_MAX)
