"""What a retrained version's reference profile is built from: held-out rows only (the recent
holdout, then the production rows the retrain run validated on), topped up with original rows both
runs held out only when the production rows look like them."""

from __future__ import annotations

import numpy as np

from shipyard.data.dataset import stratified_split
from shipyard.data.sources import mnist_sample
from shipyard.optimizing.build import _same_world
from shipyard.update.data import Labelled
from shipyard.update.retrain import held_out


def _labelled(x: np.ndarray, y: np.ndarray, t0: float) -> Labelled:
    n = len(y)
    return Labelled(x, y, t0 + np.arange(n, dtype=np.float64), [f"r{t0}-{i}" for i in range(n)],
                    np.ones(n, np.int32), n)


def test_the_reference_rows_are_never_training_rows_and_production_comes_first() -> None:
    original = mnist_sample()
    rng = np.random.default_rng(1)
    prod = rng.choice(len(original.y), 450, replace=False)
    train_part = _labelled(255 - original.x[prod[:400]], original.y[prod[:400]], 0.0)
    recent = _labelled(255 - original.x[prod[400:]], original.y[prod[400:]], 1000.0)
    y_train = np.concatenate([original.y, train_part.y])
    held = held_out(recent, train_part, original, {"split_seed": 0}, y_train, {"split_seed": 0})

    n = len(original.y)
    run_train, run_val = stratified_split(y_train, 0.2, 0)  # what the retrain run trained and validated on
    in_val = set((run_val[run_val >= n] - n).tolist())
    assert held.holdout == 50 and np.array_equal(held.x[:50], recent.x) and np.array_equal(held.y[:50], recent.y)
    assert len(held.y) - 50 == len(in_val) and 60 <= len(in_val) <= 100
    # every production row after the holdout is one of the run's validation rows, never a training row
    train_rows = {train_part.x[i].tobytes() for i in (run_train[run_train >= n] - n).tolist()}
    assert not any(row.tobytes() in train_rows for row in held.x[50:])
    # the top-up: original rows the run validated on, those the champion held out too first
    assert held.top_up_x is not None and held.top_up_y is not None
    assert len(held.top_up_y) == int((run_val < n).sum())
    _, champion_val = stratified_split(original.y, 0.2, 0)
    both = np.intersect1d(run_val[run_val < n], champion_val)
    firsts = {original.x[i].tobytes() for i in both.tolist()}
    assert all(row.tobytes() in firsts for row in held.top_up_x[:len(both)])
    assert not any(row.tobytes() in firsts for row in held.top_up_x[len(both):])


def test_original_rows_top_up_a_reference_only_from_the_same_world() -> None:
    ds = mnist_sample()
    order = np.random.default_rng(2).permutation(len(ds.y))  # the sample is sorted by class
    x, y = (ds.x[order].reshape(len(ds.x), -1) / 255.0).astype(np.float32), ds.y[order]
    w = np.random.default_rng(0).normal(size=(784, 10)).astype(np.float32)

    def probs(a: np.ndarray) -> np.ndarray:
        z = a @ w
        e = np.exp(z - z.max(1, keepdims=True))
        return e / e.sum(1, keepdims=True)

    prod, more = x[2000:2300], x[3000:3700]
    assert _same_world(x[:2000], 0, prod, probs(prod), y[2000:2300], more, probs(more))
    shifted = 1 - prod  # the world turned negative: original rows would make every window drift
    assert not _same_world(x[:2000], 0, shifted, probs(shifted), y[2000:2300], more, probs(more))
