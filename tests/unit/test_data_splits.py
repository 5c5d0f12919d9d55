"""Dataset: seeded stratified splits, the fingerprint, and validation of the arrays."""

from __future__ import annotations

import numpy as np
import pytest

from shipyard.data import Dataset, PreprocessSpec, stratified_split
from shipyard.data.dataset import VAL_FRACTION_DEFAULT, VAL_FRACTION_WITH_TEST
from shipyard.errors import DataError, UsageError

SPEC = PreprocessSpec(raw_shape=(4, 4))


def make(
    counts: tuple[int, ...] = (100, 60, 40),
    *,
    test: bool = False,
    seed: int = 1,
) -> Dataset:
    """A dataset whose sample i has every pixel of row 0 equal to i (so rows are traceable)."""
    y = np.concatenate([np.full(n, c, dtype=np.int64) for c, n in enumerate(counts)])
    y = np.random.default_rng(seed).permutation(y)
    x = np.zeros((len(y), 4, 4), dtype=np.uint8)
    ids = np.arange(len(y))
    x[:, 0, 0], x[:, 0, 1] = ids % 256, ids // 256  # unique id per sample
    classes = [f"c{i}" for i in range(len(counts))]
    if test:
        xt = np.ones((6, 4, 4), dtype=np.uint8)
        yt = np.arange(6, dtype=np.int64) % len(counts)
        return Dataset("test", x, y, classes, SPEC, xt, yt)
    return Dataset("test", x, y, classes, SPEC)


def ids_of(x: np.ndarray) -> np.ndarray:
    return x[:, 0, 0].astype(np.int64) + 256 * x[:, 0, 1].astype(np.int64)


# --- stratification ----------------------------------------------------------------------------


def test_stratified_per_class_proportions_preserved() -> None:
    ds = make((100, 60, 40))
    s = ds.split(0.25, seed=3)
    assert np.bincount(s.y_val, minlength=3).tolist() == [25, 15, 10]
    assert np.bincount(s.y_train, minlength=3).tolist() == [75, 45, 30]


def test_stratified_split_function_holds_out_fraction_of_each_class() -> None:
    y = np.array([0] * 50 + [1] * 30 + [2] * 20)
    train, held = stratified_split(y, 0.1, seed=0)
    assert np.bincount(y[held], minlength=3).tolist() == [5, 3, 2]
    assert np.bincount(y[train], minlength=3).tolist() == [45, 27, 18]
    # indices come back sorted
    assert np.all(np.diff(train) > 0) and np.all(np.diff(held) > 0)


def test_labels_follow_their_inputs() -> None:
    ds = make((30, 30))
    s = ds.split(0.2, seed=5)
    np.testing.assert_array_equal(s.y_train, ds.y[ids_of(s.x_train)])
    np.testing.assert_array_equal(s.y_val, ds.y[ids_of(s.x_val)])


# --- seeding -----------------------------------------------------------------------------------


def test_same_seed_same_indices() -> None:
    y = make().y
    a_train, a_val = stratified_split(y, 0.2, seed=42)
    b_train, b_val = stratified_split(y, 0.2, seed=42)
    np.testing.assert_array_equal(a_train, b_train)
    np.testing.assert_array_equal(a_val, b_val)

    ds = make()
    s1, s2 = ds.split(0.2, seed=42), ds.split(0.2, seed=42)
    np.testing.assert_array_equal(ids_of(s1.x_val), ids_of(s2.x_val))
    np.testing.assert_array_equal(s1.y_val, s2.y_val)
    assert s1.seed == s2.seed == 42


def test_different_seed_different_indices() -> None:
    ds = make()
    s1, s2 = ds.split(0.2, seed=0), ds.split(0.2, seed=1)
    assert not np.array_equal(ids_of(s1.x_val), ids_of(s2.x_val))
    # but the per-class sizes stay the same
    assert np.bincount(s1.y_val).tolist() == np.bincount(s2.y_val).tolist()


def test_split_does_not_mutate_labels() -> None:
    ds = make()
    before = ds.y.copy()
    ds.split(0.3, seed=9)
    np.testing.assert_array_equal(ds.y, before)


# --- default fractions -------------------------------------------------------------------------


def test_default_val_fraction_with_test_split() -> None:
    ds = make((100, 60, 40), test=True)
    s = ds.split()
    assert VAL_FRACTION_WITH_TEST == 0.1
    assert s.val_fraction == 0.1
    assert len(s.y_val) == 20 and len(s.y_train) == 180
    # the test part is passed through untouched
    assert s.x_test is ds.x_test and s.y_test is ds.y_test


def test_default_val_fraction_without_test_split() -> None:
    ds = make((100, 60, 40))
    s = ds.split()
    assert VAL_FRACTION_DEFAULT == 0.2
    assert s.val_fraction == 0.2
    assert len(s.y_val) == 40 and len(s.y_train) == 160
    assert s.x_test is None and s.y_test is None


def test_explicit_fraction_beats_default() -> None:
    s = make((100, 60, 40), test=True).split(0.5)
    assert s.val_fraction == 0.5
    assert len(s.y_val) == 100


# --- disjoint and covering ---------------------------------------------------------------------


@pytest.mark.parametrize("fraction", [0.1, 0.2, 0.37, 0.9])
def test_train_and_val_disjoint_and_cover_everything(fraction: float) -> None:
    ds = make((101, 57, 13))
    s = ds.split(fraction, seed=7)
    train, val = ids_of(s.x_train), ids_of(s.x_val)
    assert set(train).isdisjoint(val)
    assert sorted(np.concatenate([train, val]).tolist()) == list(range(len(ds.y)))
    assert len(s.x_train) == len(s.y_train) and len(s.x_val) == len(s.y_val)


def test_stratified_split_indices_disjoint_and_covering() -> None:
    y = np.random.default_rng(0).integers(0, 5, size=333)
    train, held = stratified_split(y, 0.3, seed=11)
    assert np.intersect1d(train, held).size == 0
    np.testing.assert_array_equal(np.sort(np.concatenate([train, held])), np.arange(333))


@pytest.mark.parametrize("fraction", [0.0, 1.0, -0.1, 1.5])
def test_val_fraction_out_of_range(fraction: float) -> None:
    with pytest.raises(UsageError, match="val_fraction"):
        make().split(fraction)


def test_too_few_samples_for_fraction() -> None:
    ds = make((2, 2))
    with pytest.raises(UsageError, match="too few"):
        ds.split(0.1)


# --- fingerprint -------------------------------------------------------------------------------


def test_fingerprint_identical_for_equal_arrays() -> None:
    a, b = make(), make()
    assert a.x is not b.x
    assert a.fingerprint == b.fingerprint
    assert len(a.fingerprint) == 64 and int(a.fingerprint, 16) >= 0


def test_fingerprint_ignores_memory_layout() -> None:
    a = make()
    x_f = np.asfortranarray(a.x)
    b = Dataset(a.source, x_f, a.y.copy(), list(a.classes), SPEC)
    assert not b.x.flags.c_contiguous
    assert a.fingerprint == b.fingerprint


def test_fingerprint_changes_when_one_pixel_changes() -> None:
    a = make()
    x = a.x.copy()
    x[17, 3, 2] += 1
    b = Dataset(a.source, x, a.y, a.classes, SPEC)
    assert a.fingerprint != b.fingerprint


def test_fingerprint_changes_with_one_label_or_test_pixel() -> None:
    a = make(test=True)
    y = a.y.copy()
    y[0] = (y[0] + 1) % 3
    xt = a.x_test.copy()
    xt[0, 0, 0] = 7
    assert Dataset(a.source, a.x, y, a.classes, SPEC, a.x_test, a.y_test).fingerprint \
        != a.fingerprint
    assert Dataset(a.source, a.x, a.y, a.classes, SPEC, xt, a.y_test).fingerprint \
        != a.fingerprint
    assert make(test=False).fingerprint != a.fingerprint


def test_fingerprint_depends_on_dtype_shape_and_classes() -> None:
    a = make()
    as_i16 = Dataset(a.source, a.x.astype(np.int16), a.y, a.classes, SPEC)
    reshaped = Dataset(a.source, a.x.reshape(len(a.x), 2, 8), a.y, a.classes, SPEC)
    renamed = Dataset(a.source, a.x, a.y, ["x", "y", "z"], SPEC)
    prints = {a.fingerprint, as_i16.fingerprint, reshaped.fingerprint, renamed.fingerprint}
    assert len(prints) == 4


def test_fingerprint_ignores_source_name_and_origin() -> None:
    a = make()
    b = Dataset("elsewhere", a.x, a.y, a.classes, SPEC, origin="/some/where")
    assert a.fingerprint == b.fingerprint


# --- validation of arrays ----------------------------------------------------------------------


def _x(n: int = 4) -> np.ndarray:
    return np.zeros((n, 4, 4), dtype=np.uint8)


@pytest.mark.parametrize(
    ("labels", "found"),
    [([0, 1, 2, 3], "0..3"), ([-1, 0, 1, 2], "-1..2")],
    ids=["too-high", "negative"],
)
def test_labels_out_of_range(labels: list[int], found: str) -> None:
    with pytest.raises(DataError) as ei:
        Dataset("src", _x(), np.array(labels, dtype=np.int64), ["a", "b", "c"], SPEC,
                origin="/data/here")
    msg = str(ei.value)
    assert "/data/here" in msg
    assert "0..2" in msg and found in msg


def test_test_labels_out_of_range() -> None:
    y = np.array([0, 1, 0, 1], dtype=np.int64)
    with pytest.raises(DataError, match="test: labels must lie in 0..1"):
        Dataset("src", _x(), y, ["a", "b"], SPEC, _x(2), np.array([0, 5], dtype=np.int64))


@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
def test_nan_or_inf_inputs(bad: float) -> None:
    x = np.zeros((5, 3), dtype=np.float32)
    x[3, 1] = bad
    with pytest.raises(DataError, match="sample 3 contains NaN or infinity") as ei:
        Dataset("src", x, np.zeros(5, dtype=np.int64), ["a"], PreprocessSpec(raw_shape=(3,)))
    assert "src" in str(ei.value)


def test_nan_in_test_inputs() -> None:
    xt = np.zeros((2, 3), dtype=np.float64)
    xt[1, 0] = np.nan
    y = np.zeros(2, dtype=np.int64)
    with pytest.raises(DataError, match="test: sample 1"):
        Dataset("src", np.zeros((2, 3)), y, ["a"], PreprocessSpec(raw_shape=(3,)), xt, y)


def test_length_mismatch() -> None:
    with pytest.raises(DataError, match="4 inputs but 3 labels"):
        Dataset("src", _x(4), np.zeros(3, dtype=np.int64), ["a"], SPEC)


def test_test_length_mismatch() -> None:
    y = np.zeros(4, dtype=np.int64)
    with pytest.raises(DataError, match="test: 2 inputs but 3 labels"):
        Dataset("src", _x(4), y, ["a"], SPEC, _x(2), np.zeros(3, dtype=np.int64))


def test_float_labels_rejected() -> None:
    with pytest.raises(DataError, match="labels must be integers"):
        Dataset("src", _x(2), np.array([0.0, 1.0]), ["a", "b"], SPEC)


def test_empty_dataset_rejected() -> None:
    with pytest.raises(DataError, match="no samples"):
        Dataset("src", _x(0), np.zeros(0, dtype=np.int64), ["a"], SPEC)


def test_test_images_without_labels_rejected() -> None:
    with pytest.raises(DataError, match="must come together"):
        Dataset("src", _x(2), np.zeros(2, dtype=np.int64), ["a"], SPEC, x_test=_x(2))


def test_test_shape_must_match_train() -> None:
    y = np.zeros(2, dtype=np.int64)
    with pytest.raises(DataError, match=r"test inputs have shape \[5, 5\], train inputs \[4, 4\]"):
        Dataset("src", _x(2), y, ["a"], SPEC, np.zeros((2, 5, 5), np.uint8), y)


def test_describe_reports_counts_and_fingerprint() -> None:
    ds = make((10, 6, 4), test=True)
    d = ds.describe()
    assert d["samples"] == 20 and d["test_samples"] == 6
    assert d["class_counts"] == [10, 6, 4]
    assert d["input_shape"] == [4, 4] and d["input_dtype"] == "uint8"
    assert d["fingerprint"] == ds.fingerprint
    assert d["preprocess"] == SPEC.to_dict()
