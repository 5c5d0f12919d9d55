"""Batch invariance: does an input get the same probabilities alone as inside a batch of others?

A server that batches requests (serve/batching.py) runs each request with whatever else was
waiting, so a model whose answer depends on its batch-mates gives a client an answer that
depends on other clients' traffic. Dynamic int8 quantization does: it computes the activation
scale from the whole batch at each call (measured on the MNIST MLP: up to 0.009 between alone and
in a batch). fp32 and static int8 (fixed, calibrated scales) do not. The optimizer measures every
variant with `max_diff` and ships only invariant ones by default; the server measures a version
whose bundle does not say (bundles written before this was measured) with `probe` at load.

numpy only (no torch, no ONNX Runtime): the server imports it."""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

#: at most this max |p alone − p in a batch|: invariant (float32 rounding is ~1e-7 on probabilities)
TOLERANCE = 1e-6


def max_diff(predict: Callable[[np.ndarray], np.ndarray], x: np.ndarray, *, probes: int = 16, draws: int = 4,
             max_batch: int = 64, seed: int = 0) -> float:
    """The largest |difference| between the probabilities of an input run alone and the same input
    inside a batch of 2 to `max_batch` rows of `x` (at a random position), over `probes` inputs of
    `x`, each in `draws` batches; the smallest and largest batch sizes are always among them. A NaN
    answered both ways counts as equal; one answered one way only, as different (inf)."""
    x = np.ascontiguousarray(x)
    rng = np.random.default_rng(seed)
    top = max(2, max_batch)
    picks = rng.choice(len(x), min(probes, len(x)), replace=False)
    worst = 0.0
    for k, i in enumerate(picks):
        alone = predict(x[i : i + 1])[0]
        for d in range(draws):
            n = 2 if (k, d) == (0, 0) else top if (k, d) == (0, 1) else int(rng.integers(2, top + 1))
            mates = x[rng.integers(0, len(x), n - 1)]
            at = int(rng.integers(0, n))
            inside = predict(np.ascontiguousarray(np.insert(mates, at, x[i], axis=0)))[at]
            worst = max(worst, _diff(alone, inside))
    return worst


def is_invariant(diff: float) -> bool:
    return diff <= TOLERANCE


def probe(predict: Callable[[np.ndarray], np.ndarray], feature_shape: tuple[int, ...], *, max_batch: int = 64,
          rows: int = 256, seed: int = 0) -> float:
    """`max_diff` on synthetic features (no data at hand: a server loading an older bundle):
    standard normal rows, each at its own scale (0.05 to 5) so that batches differ in range, which
    is what a per-call activation scale reacts to."""
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((rows, *feature_shape), dtype=np.float32)
    x *= rng.uniform(0.05, 5.0, (rows, *([1] * len(feature_shape)))).astype(np.float32)
    return max_diff(predict, x, probes=8, draws=3, max_batch=max_batch, seed=seed)


def _diff(a: np.ndarray, b: np.ndarray) -> float:
    both = np.isnan(a) & np.isnan(b)
    d = np.where(both, 0.0, np.abs(a.astype(np.float64) - b.astype(np.float64)))
    return float(np.inf) if np.isnan(d).any() else float(d.max(initial=0.0))
