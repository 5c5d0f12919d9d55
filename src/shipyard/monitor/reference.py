"""The reference profile: what the training inputs and the model's predictions looked like, so
that monitoring a freshly deployed model needs no extra setup. Computed with the chosen ONNX
variant (so quantization does not shift it). Arrays travel in the bundle's `reference.npz`;
`summary()` goes into `bundle.json`."""

from __future__ import annotations

from typing import Any

import numpy as np

SCHEMA_VERSION = 1
SAMPLE_SIZE = 2000
COMPONENTS = 32
CALIBRATION_BINS = 10


def build(x_train: np.ndarray, val_probabilities: np.ndarray, y_val: np.ndarray, *, seed: int = 0,
          sample_size: int = SAMPLE_SIZE, components: int = COMPONENTS,
          x_val: np.ndarray | None = None) -> dict[str, np.ndarray]:
    """x_train: preprocessed training features (flattened here); val_probabilities: the
    chosen variant's probabilities on the validation split; x_val: its preprocessed features,
    whose profile (PCA coordinates and reconstruction error) is the held-out reference that
    drift tests compare live windows with and calibrate their thresholds on (the training
    sample is in-sample to the PCA, so its reconstruction errors are too small)."""
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
    edges = np.linspace(0.0, 1.0, CALIBRATION_BINS + 1)
    which = np.clip(np.digitize(conf, edges[1:-1]), 0, CALIBRATION_BINS - 1)
    correct = pred == y_val
    counts = np.bincount(which, minlength=CALIBRATION_BINS)
    hits = np.bincount(which, weights=correct, minlength=CALIBRATION_BINS)
    accuracy = np.divide(hits, counts, out=np.full(CALIBRATION_BINS, np.nan), where=counts > 0)
    classes = val_probabilities.shape[1]
    extra: dict[str, np.ndarray] = {}
    if x_val is not None:
        extra["val_profile"] = profile(mean, basis, x_val).astype(np.float16)
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
        "drift_thresholds": [{"window": int(w), "alpha": float(a), "draws": int(d), "input": float(i),
                              "prediction": float(p), "confidence": float(c)}
                             for w, a, d, i, p, c in ref.get("drift_thresholds", [])],
        "pca_explained_variance_ratio": float(ref["pca_explained_variance"].sum() / ref["pca_total_variance"]),
        "class_frequencies": [round(float(f), 6) for f in ref["class_frequencies"]],
        "val_accuracy": float((ref["val_predictions"] == ref["val_labels"]).mean()),
        "mean_confidence": float(ref["val_confidence"].mean()),
        "calibration": [
            {"confidence": [round(float(edges[i]), 2), round(float(edges[i + 1]), 2)],
             "accuracy": None if count[i] == 0 else round(float(acc[i]), 6), "count": int(count[i])}
            for i in range(len(count))
        ],
    }


def profile(mean: np.ndarray, components: np.ndarray, x: np.ndarray) -> np.ndarray:
    """Each input's PCA coordinates and, as the last column, its distance from the PCA subspace
    (float64 here; the server computes the same in float32 per request, `ModelRuntime.project`)."""
    centred = x.reshape(len(x), -1).astype(np.float64) - mean
    coords = centred @ components.T.astype(np.float64)
    residual = np.sqrt(np.maximum((centred**2).sum(1) - (coords**2).sum(1), 0))
    return np.column_stack([coords, residual])
