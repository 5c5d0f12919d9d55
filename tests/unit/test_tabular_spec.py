"""A table's preprocessing: named columns encoded, imputed, standardized and one-hot encoded by one
numpy function, inverted for retraining, and carried through the npz a retrain writes."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from shipyard.data import Column, PreprocessSpec, load
from shipyard.data.sources import table_description
from shipyard.errors import UsageError


def spec(impute: str = "median") -> PreprocessSpec:
    return PreprocessSpec(raw_shape=(3,), raw_dtype="float32", scale=1.0, standardize="feature",
                          columns=(Column("a"), Column("colour", "categorical", ("blue", "red")), Column("b")),
                          impute=impute)  # type: ignore[arg-type]


RAW = np.array([[1, 0, 2], [3, 1, np.nan], [5, 1, 4], [np.nan, 1, 6]], np.float32)


def test_fitted_table_imputes_standardizes_and_one_hot_encodes() -> None:
    f = spec().fitted(RAW)
    cols = f.columns or ()
    assert [c.fill for c in cols] == [3.0, 1.0, 4.0]  # medians; the most frequent category
    assert f.num_features == 4
    out = f.apply(RAW)
    assert out.shape == (4, 4)
    np.testing.assert_array_equal(out[:, 1:3], [[1, 0], [0, 1], [0, 1], [0, 1]])  # one-hot colour
    assert out[3, 0] == pytest.approx(0.0)  # a imputed with its median 3 = its mean: standardized 0
    np.testing.assert_allclose(f.invert(out)[:3, :2], RAW[:3, :2], atol=1e-5)


def test_a_missing_value_without_imputation_names_row_and_column() -> None:
    f = spec("none").fitted(RAW)
    with pytest.raises(UsageError, match="row 1: column 'b' has no value and no imputation was recorded"):
        f.apply(RAW)


def test_encode_takes_named_columns_and_names_what_is_wrong() -> None:
    f = spec().fitted(RAW)
    raw = f.encode({"a": [1.0, None], "colour": np.array(["red", "blue"], object), "b": [2, 3]})
    np.testing.assert_array_equal(raw[:, 1], [1, 0])
    assert np.isnan(raw[1, 0])
    with pytest.raises(UsageError, match="unknown column 'c'"):
        f.encode({"a": [1.0], "colour": ["red"], "b": [2.0], "c": [1.0]})
    with pytest.raises(UsageError, match="missing column 'b'"):
        f.encode({"a": [1.0], "colour": ["red"]})
    with pytest.raises(UsageError, match="column 'colour': row 0 holds 'green', not one of the categories"):
        f.encode({"a": [1.0], "colour": ["green"], "b": [2.0]})
    with pytest.raises(UsageError, match="column 'a' is numeric; got 'x'"):
        f.encode({"a": ["x"], "colour": ["red"], "b": [2.0]})


def test_the_spec_round_trips_through_its_dict() -> None:
    f = spec().fitted(RAW)
    assert PreprocessSpec.from_dict(f.to_dict()) == f
    plain = PreprocessSpec(raw_shape=(28, 28))
    assert "columns" not in plain.to_dict()  # an array spec keeps the layout bundles always had


def test_a_retrain_npz_stays_a_table(tmp_path: Path) -> None:
    f = spec().fitted(RAW)
    np.savez(tmp_path / "d.npz", x_train=RAW, y_train=np.array([0, 1, 0, 1]), classes=np.array(["n", "y"]),
             table=table_description(f))
    ds = load(f"npz:{tmp_path / 'd.npz'}")
    assert ds.preprocess.columns is not None
    assert [(c.name, c.kind, c.categories) for c in ds.preprocess.columns] == \
        [(c.name, c.kind, c.categories) for c in f.columns or ()]
    assert ds.preprocess.impute == "median" and ds.missing_ok
    refit = ds.preprocess.fitted(ds.x)
    np.testing.assert_allclose(refit.apply(RAW), f.apply(RAW))
