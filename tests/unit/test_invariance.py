"""Batch invariance, measured on plain numpy models: a row-wise model answers an input the same
whatever its batch-mates; one that scales by the whole batch (as dynamic int8 quantization picks
its activation scale per call) does not."""

from __future__ import annotations

import numpy as np

from shipyard.optimizing import invariance

W = np.random.default_rng(1).normal(size=(8, 3)).astype(np.float32)


def softmax(z: np.ndarray) -> np.ndarray:
    e = np.exp(z - z.max(axis=1, keepdims=True))
    return (e / e.sum(axis=1, keepdims=True)).astype(np.float32)


def rowwise(x: np.ndarray) -> np.ndarray:
    return softmax(x @ W)


def per_batch_scale(x: np.ndarray) -> np.ndarray:
    """Quantize the inputs to int8 steps of the whole batch's range, as dynamic quantization does."""
    scale = np.abs(x).max() / 127
    return softmax((np.round(x / scale) * scale) @ W)


X = np.random.default_rng(2).normal(size=(200, 8)).astype(np.float32)


def test_a_rowwise_model_is_invariant() -> None:
    diff = invariance.max_diff(rowwise, X)
    assert diff <= invariance.TOLERANCE and invariance.is_invariant(diff)


def test_a_model_scaled_by_its_batch_is_not() -> None:
    diff = invariance.max_diff(per_batch_scale, X)
    assert diff > 1e-3 and not invariance.is_invariant(diff)


def test_batches_from_2_to_the_largest_are_tried_with_the_input_anywhere() -> None:
    seen: list[int] = []

    def spy(x: np.ndarray) -> np.ndarray:
        seen.append(len(x))
        return rowwise(x)

    invariance.max_diff(spy, X, probes=4, draws=5, max_batch=64)
    batches = [n for n in seen if n > 1]
    assert len(batches) == 20 and min(batches) == 2 and max(batches) == 64
    assert seen.count(1) == 4  # each probe alone once


def test_the_probe_needs_no_data_and_tells_them_apart() -> None:
    assert invariance.is_invariant(invariance.probe(rowwise, (8,)))
    assert not invariance.is_invariant(invariance.probe(per_batch_scale, (8,)))


def test_nan_answers_compare_equal_only_to_nan() -> None:
    def nan_model(x: np.ndarray) -> np.ndarray:
        return np.full((len(x), 3), np.nan, np.float32)

    def nan_when_alone(x: np.ndarray) -> np.ndarray:
        return np.full((len(x), 3), np.nan if len(x) == 1 else 0.5, np.float32)

    assert invariance.max_diff(nan_model, X) == 0.0
    assert invariance.max_diff(nan_when_alone, X) == float("inf")
