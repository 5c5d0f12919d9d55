"""PreprocessSpec: the one numpy transform shared by training, evaluation and the server."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest

from shipyard.data import PreprocessSpec
from shipyard.errors import ConfigError, UsageError


def raw_images(n: int = 8, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, size=(n, 28, 28), dtype=np.uint8)


# --- apply: scale and flatten ------------------------------------------------------------------


def test_default_spec_scales_to_unit_range_and_flattens() -> None:
    spec = PreprocessSpec(raw_shape=(28, 28))
    raw = raw_images()
    raw[0, 0, 0], raw[0, 0, 1] = 0, 255
    out = spec.apply(raw)
    assert out.shape == (8, 784)
    assert out.dtype == np.float32
    assert out.flags.c_contiguous
    assert out[0, 0] == 0.0 and out[0, 1] == pytest.approx(1.0)
    np.testing.assert_allclose(out, raw.reshape(8, -1) / 255.0, rtol=1e-6)
    assert spec.num_features == 784


def test_scale_one_leaves_values() -> None:
    spec = PreprocessSpec(raw_shape=(3,), raw_dtype="float32", scale=1.0)
    raw = np.array([[1.5, -2.0, 3.25]], dtype=np.float32)
    np.testing.assert_array_equal(spec.apply(raw), raw)


def test_custom_scale() -> None:
    spec = PreprocessSpec(raw_shape=(2, 2), scale=0.5)
    out = spec.apply(np.full((1, 2, 2), 6, dtype=np.uint8))
    np.testing.assert_array_equal(out, np.full((1, 4), 3.0, dtype=np.float32))


def test_no_flatten_keeps_shape() -> None:
    spec = PreprocessSpec(raw_shape=(28, 28), flatten=False)
    out = spec.apply(raw_images(3))
    assert out.shape == (3, 28, 28)
    assert out.dtype == np.float32


def test_apply_does_not_modify_input() -> None:
    spec = PreprocessSpec(raw_shape=(28, 28), standardize="global").fitted(raw_images())
    raw = raw_images().astype(np.float32)
    before = raw.copy()
    spec.apply(raw)
    np.testing.assert_array_equal(raw, before)


def test_raw_and_flat_inputs_give_identical_output() -> None:
    raw = raw_images(5)
    flat = raw.reshape(5, 784)
    for spec in (
        PreprocessSpec(raw_shape=(28, 28)),
        PreprocessSpec(raw_shape=(28, 28), standardize="global").fitted(raw_images(20, seed=1)),
        PreprocessSpec(raw_shape=(28, 28), standardize="feature").fitted(raw_images(20, seed=2)),
    ):
        a, b = spec.apply(raw), spec.apply(flat)
        assert a.shape == b.shape == (5, 784)
        np.testing.assert_array_equal(a, b)


@pytest.mark.parametrize(
    "shape",
    [(2, 28, 27), (2, 27, 28), (2, 783), (2, 785), (2, 28, 28, 1), (784,), (2, 14, 56)],
)
def test_shape_mismatch_raises_usage_error(shape: tuple[int, ...]) -> None:
    spec = PreprocessSpec(raw_shape=(28, 28))
    with pytest.raises(UsageError) as ei:
        spec.apply(np.zeros(shape, dtype=np.uint8))
    msg = str(ei.value)
    assert str(list(shape)) in msg
    assert "[N, 28, 28]" in msg


def test_empty_batch_is_fine() -> None:
    out = PreprocessSpec(raw_shape=(28, 28)).apply(np.zeros((0, 28, 28), np.uint8))
    assert out.shape == (0, 784)


# --- standardization fitted on train -----------------------------------------------------------


def test_fitted_is_noop_without_standardization() -> None:
    spec = PreprocessSpec(raw_shape=(28, 28))
    assert spec.fitted(raw_images()) is spec


def test_global_standardization_fitted_on_train() -> None:
    train = raw_images(50)
    spec = PreprocessSpec(raw_shape=(28, 28), standardize="global").fitted(train)
    scaled = train.astype(np.float64) / 255.0
    assert isinstance(spec.mean, float) and isinstance(spec.std, float)
    assert spec.mean == pytest.approx(scaled.mean())
    assert spec.std == pytest.approx(scaled.std())
    out = spec.apply(train)
    assert out.mean() == pytest.approx(0.0, abs=1e-5)
    assert out.std() == pytest.approx(1.0, abs=1e-4)


def test_statistics_come_from_train_not_from_the_batch() -> None:
    train = raw_images(50)
    spec = PreprocessSpec(raw_shape=(28, 28), standardize="global").fitted(train)
    other = np.full((3, 28, 28), 200, dtype=np.uint8)
    out = spec.apply(other)
    expected = (200 / 255.0 - spec.mean) / spec.std
    np.testing.assert_allclose(out, np.full((3, 784), expected), rtol=1e-5)
    # a batch of one is transformed the same way as inside a larger batch
    np.testing.assert_array_equal(spec.apply(other[:1]), out[:1])


def test_feature_standardization_fitted_on_train() -> None:
    rng = np.random.default_rng(3)
    train = (rng.normal(size=(200, 3)) * [1.0, 10.0, 0.1] + [5.0, -3.0, 100.0]).astype(np.float32)
    spec = PreprocessSpec(raw_shape=(3,), raw_dtype="float32", scale=1.0, standardize="feature")
    fitted = spec.fitted(train)
    assert isinstance(fitted.mean, list) and len(fitted.mean) == 3
    assert isinstance(fitted.std, list) and len(fitted.std) == 3
    np.testing.assert_allclose(fitted.mean, train.astype(np.float64).mean(axis=0), rtol=1e-6)
    np.testing.assert_allclose(fitted.std, train.astype(np.float64).std(axis=0), rtol=1e-6)
    out = fitted.apply(train)
    np.testing.assert_allclose(out.mean(axis=0), 0.0, atol=1e-4)
    np.testing.assert_allclose(out.std(axis=0), 1.0, atol=1e-4)
    # the unfitted spec is unchanged (frozen, fitted returns a new one)
    assert spec.mean is None and spec.std is None


def test_feature_standardization_constant_feature_does_not_divide_by_zero() -> None:
    train = np.zeros((10, 28, 28), dtype=np.uint8)
    train[:, 5, 5] = np.arange(10)
    spec = PreprocessSpec(raw_shape=(28, 28), standardize="feature").fitted(train)
    assert min(spec.std) > 0
    out = spec.apply(train)
    assert np.isfinite(out).all()
    assert np.all(out[:, 0] == 0.0)  # a constant pixel maps to 0


def test_global_standardization_constant_data_does_not_divide_by_zero() -> None:
    spec = PreprocessSpec(raw_shape=(2,), standardize="global").fitted(np.full((4, 2), 9, np.uint8))
    assert spec.std > 0
    assert np.isfinite(spec.apply(np.full((1, 2), 9, np.uint8))).all()


def test_feature_standardization_without_flatten() -> None:
    train = raw_images(30)
    spec = PreprocessSpec(raw_shape=(28, 28), flatten=False, standardize="feature").fitted(train)
    out = spec.apply(train)
    assert out.shape == (30, 28, 28)
    np.testing.assert_allclose(out.reshape(30, -1).mean(axis=0), 0.0, atol=1e-4)


# --- to_dict / from_dict -----------------------------------------------------------------------


@pytest.mark.parametrize(
    "spec",
    [
        PreprocessSpec(raw_shape=(28, 28)),
        PreprocessSpec(raw_shape=(28, 28), standardize="global").fitted(raw_images()),
        PreprocessSpec(raw_shape=(4,), raw_dtype="float32", scale=1.0, flatten=False,
                       standardize="feature").fitted(np.arange(12, dtype=np.float32).reshape(3, 4)),
    ],
    ids=["plain", "global", "feature"],
)
def test_to_dict_from_dict_round_trip_through_json(spec: PreprocessSpec) -> None:
    d = spec.to_dict()
    text = json.dumps(d)  # must be JSON-serialisable as it is
    back = PreprocessSpec.from_dict(json.loads(text))
    assert back == spec
    assert isinstance(back.raw_shape, tuple)
    assert back.to_dict() == d
    x = raw_images(2) if spec.raw_shape == (28, 28) else np.ones((2, 4), np.float32)
    np.testing.assert_array_equal(back.apply(x), spec.apply(x))


def test_to_dict_fields() -> None:
    d = PreprocessSpec(raw_shape=(28, 28)).to_dict()
    assert d == {
        "raw_shape": [28, 28], "raw_dtype": "uint8", "scale": 1.0 / 255.0, "flatten": True,
        "standardize": "none", "mean": None, "std": None,
    }


def test_from_dict_does_not_mutate_its_argument() -> None:
    d = PreprocessSpec(raw_shape=(28, 28)).to_dict()
    PreprocessSpec.from_dict(d)
    assert d["raw_shape"] == [28, 28]


def test_from_dict_rejects_unknown_standardize() -> None:
    d = {**PreprocessSpec(raw_shape=(2,)).to_dict(), "standardize": "minmax"}
    with pytest.raises(ConfigError) as ei:
        PreprocessSpec.from_dict(d)
    assert ei.value.key == "standardize" and ei.value.value == "minmax"
    assert "'minmax'" in str(ei.value)
    assert isinstance(ei.value, UsageError)


# --- no torch ----------------------------------------------------------------------------------


def test_preprocess_module_does_not_import_torch() -> None:
    code = "import shipyard.data.preprocess, sys; assert 'torch' not in sys.modules, 'torch'"
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          timeout=120)
    assert proc.returncode == 0, proc.stderr
