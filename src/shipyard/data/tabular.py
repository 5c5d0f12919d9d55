"""Tables of named columns as a `Dataset`: CSV and Parquet files (read by pandas) and the small
real datasets that ship inside scikit-learn (`sklearn:NAME`). Each column keeps its name and
type: numeric, or categorical with the vocabulary seen in the file. A missing value is refused
with its line and column unless an imputation policy is given. A table is an image only when
the caller says so (`image=(H, W)`): values are never guessed into pixels."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from shipyard.data.dataset import Dataset
from shipyard.data.preprocess import Column, Impute, PreprocessSpec, is_number
from shipyard.errors import DataError, UsageError

if TYPE_CHECKING:
    import pandas as pd

#: scikit-learn's bundled datasets (no download): name → (loader, task)
SKLEARN = {"iris": "classification", "wine": "classification", "breast_cancer": "classification",
           "digits": "classification", "diabetes": "regression"}
#: a categorical column with more distinct values than this is an identifier or free text, not a category
MAX_CATEGORIES = 1000
#: names the signature uses itself (the graph's features and the whole raw row)
RESERVED = ("features", "raw")
#: integer labels with at most this many distinct values make a classification task by default
MAX_CLASSES_GUESSED = 20


def read_table(path: Path, kind: str) -> pd.DataFrame:
    """A CSV (header row) or Parquet file as a DataFrame; a DataError names the file."""
    import pandas as pd

    path = Path(path)
    if not path.is_file():
        raise DataError(path, "no such file")
    try:
        if kind == "parquet":
            return pd.read_parquet(path)
        # blank lines kept (then dropped) so that a row's index still names its line in the file
        frame = pd.read_csv(path, skipinitialspace=True, skip_blank_lines=False)
    except pd.errors.EmptyDataError:
        raise DataError(path, "empty file: expected a header row") from None
    except ImportError as e:
        raise UsageError(f"reading {kind} files needs {e.name}: pip install 'shipyard[parquet]'") from None
    except (OSError, ValueError, UnicodeDecodeError, pd.errors.ParserError) as e:
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise DataError(path, f"not a readable {kind} file ({first})") from None
    frame = frame.dropna(how="all")
    if frame.isna().any().any():
        _check_row_lengths(path, len(frame.columns))
    return frame


def _check_row_lengths(path: Path, width: int) -> None:
    """A short row reads as missing values; say what it is (only looked for when values are missing)."""
    import csv

    with open(path, newline="") as f:
        for n, row in enumerate(csv.reader(f), start=1):
            if row and len(row) != width:
                raise DataError(path, f"line {n}: {len(row)} values, header has {width}")


def table(path: Path, kind: str, *, label_column: str = "label", impute: Impute = "none",
          image: tuple[int, int] | None = None, task: str | None = None) -> Dataset:
    """A CSV or Parquet file with a header: the label column and named feature columns."""
    frame = read_table(path, kind)
    if frame.empty or not len(frame.columns):
        raise DataError(path, "no data rows after the header")
    return from_frame(frame, f"{kind}:{Path(path)}", str(path), label_column=label_column, impute=impute,
                      image=image, task=task, line_offset=2 if kind == "csv" else 0)


def sklearn_dataset(name: str, *, impute: Impute = "none", task: str | None = None) -> Dataset:
    """One of scikit-learn's bundled real datasets, as a table with its own column names."""
    if name not in SKLEARN:
        raise UsageError(f"unknown scikit-learn dataset {name!r}; choose {', '.join(SKLEARN)}")
    try:
        import sklearn.datasets as skd
    except ImportError:
        raise DataError(f"sklearn:{name}", "needs scikit-learn: pip install scikit-learn") from None
    bunch: Any = getattr(skd, f"load_{name}")(as_frame=True)
    frame = bunch.frame.copy()
    target = "target"
    names = getattr(bunch, "target_names", None)
    if SKLEARN[name] == "classification" and names is not None:
        frame[target] = np.asarray(names)[frame[target].to_numpy()]  # class names, not codes
        frame[target] = frame[target].astype(str)
    return from_frame(frame, f"sklearn:{name}", f"scikit-learn {name}", label_column=target, impute=impute,
                      task=task or SKLEARN[name], line_offset=0)


def from_frame(frame: pd.DataFrame, source: str, origin: str, *, label_column: str, impute: Impute = "none",
               image: tuple[int, int] | None = None, task: str | None = None, line_offset: int = 0) -> Dataset:
    """The Dataset of a DataFrame. `line_offset`: added to a row's index to name its line in the
    file (2 for a CSV: the header and 1-based lines); 0 names rows."""
    import pandas as pd

    frame.columns = [str(c).strip() for c in frame.columns]
    where = origin

    def at(i: int) -> str:
        return f"line {int(frame.index[i]) + line_offset}" if line_offset else f"row {i}"

    if label_column not in frame.columns:
        cols = list(frame.columns)
        raise DataError(where, f"missing label column {label_column!r} (columns: {', '.join(cols[:8])}"
                               f"{', …' if len(cols) > 8 else ''}); name it with --label-column")
    if len(frame.columns) < 2:
        raise DataError(where, f"no feature columns besides the label column {label_column!r}")
    if len(set(frame.columns)) != len(frame.columns):
        dup = next(c for c in frame.columns if list(frame.columns).count(c) > 1)
        raise DataError(where, f"column {dup!r} appears more than once")
    labels = frame.pop(label_column)
    if labels.isna().any():
        raise DataError(where, f"{at(int(np.flatnonzero(labels.isna().to_numpy())[0]))}: no label "
                               f"in column {label_column!r}")
    y, classes, task = _labels(labels, where, task, at)
    if image is not None:
        return _image_table(frame, y, classes, source, where, image, at)
    columns: list[Column] = []
    values = np.empty((len(frame), len(frame.columns)), dtype=np.float32)
    for j, name in enumerate(frame.columns):
        if name in RESERVED:
            raise DataError(where, f"column {name!r}: the name is reserved for the model's own inputs; rename it")
        col = frame[name]
        if impute == "none" and col.isna().any():
            row = int(np.flatnonzero(col.isna().to_numpy())[0])
            raise DataError(where, f"{at(row)}: column {name!r} has no value; fill it in or choose "
                                   "--impute mean|median|constant")
        if pd.api.types.is_bool_dtype(col):
            col = col.astype(str)
        if pd.api.types.is_numeric_dtype(col):
            v = col.to_numpy(dtype=np.float64, na_value=np.nan)
            if not np.isfinite(v[~np.isnan(v)]).all():
                row = int(np.flatnonzero(np.isinf(v))[0])
                raise DataError(where, f"{at(row)}: column {name!r} holds an infinite value")
            values[:, j] = v
            columns.append(Column(name, "numeric"))
            continue
        text = col.astype("string")
        present = text.dropna()
        numeric = pd.to_numeric(present, errors="coerce")
        if len(present) and numeric.notna().mean() > 0.5:  # a number column with a typo, not categories
            row = int(frame.index.get_loc(numeric[numeric.isna()].index[0]))
            raise DataError(where, f"{at(row)}: value {present.loc[numeric.isna()].iloc[0]!r} is not a number "
                                   f"(column {name!r} holds numbers)")
        cats = tuple(sorted(set(present.str.strip())))
        if len(cats) > MAX_CATEGORIES:
            raise DataError(where, f"column {name!r} has {len(cats):,} distinct values: an identifier or free "
                                   f"text, not a category (at most {MAX_CATEGORIES}); drop it from the file")
        index = {c: i for i, c in enumerate(cats)}
        values[:, j] = [np.nan if v is pd.NA else index[v.strip()] for v in text]
        columns.append(Column(name, "categorical", cats))
    spec = PreprocessSpec(raw_shape=(len(columns),), raw_dtype="float32", scale=1.0, flatten=True,
                          standardize="feature", columns=tuple(columns), impute=impute)
    return Dataset(source, values, y, classes, spec, origin=origin,
                   task="regression" if task == "regression" else "classification")


def _labels(labels: pd.Series, where: str, task: str | None, at: Any) -> tuple[np.ndarray, list[str], str]:
    """Labels → (y, class names or the target's name, task). Strings or at most 20 distinct
    integers make a classification, other numbers a regression, unless `task` says which."""
    import pandas as pd

    numeric = pd.api.types.is_numeric_dtype(labels) and not pd.api.types.is_bool_dtype(labels)
    if task is None:
        whole = numeric and bool(np.all(labels.to_numpy(np.float64) == np.round(labels.to_numpy(np.float64))))
        task = "classification" if not numeric or (whole and labels.nunique() <= MAX_CLASSES_GUESSED) \
            else "regression"
    if task == "regression":
        if not numeric:
            bad = next(v for v in labels if not is_number(v))
            raise DataError(where, f"{at(int(np.flatnonzero((labels == bad).to_numpy())[0]))}: a regression "
                                   f"target must be a number, got {bad!r}")
        return labels.to_numpy(np.float32), [str(labels.name)], task
    if numeric:
        v = labels.to_numpy(np.float64)
        if not np.all(v == np.round(v)):
            row = int(np.flatnonzero(v != np.round(v))[0])
            raise DataError(where, f"{at(row)}: class label {v[row]:g} is not a whole number "
                                   "(for a numeric target use --task regression)")
        found = sorted({int(x) for x in v})
        codes = {x: i for i, x in enumerate(found)}
        return np.array([codes[int(x)] for x in v], dtype=np.int64), [str(x) for x in found], task
    text = labels.astype(str).str.strip()
    classes = sorted(set(text))
    names = {c: i for i, c in enumerate(classes)}
    return np.array([names[c] for c in text], dtype=np.int64), classes, task


def _image_table(frame: pd.DataFrame, y: np.ndarray, classes: list[str], source: str, where: str,
                 image: tuple[int, int], at: Any) -> Dataset:
    """Pixel columns of an H×W grayscale image (values 0–255), as the caller said they are."""
    h, w = image
    if len(frame.columns) != h * w:
        raise DataError(where, f"--image {h},{w} needs {h * w} pixel columns, the file has {len(frame.columns)}")
    x = frame.to_numpy(dtype=np.float64, na_value=np.nan)
    bad = ~((x >= 0) & (x <= 255) & (x == np.round(x)))
    if bad.any():
        row, col = (int(v[0]) for v in np.nonzero(bad))
        raise DataError(where, f"{at(row)}: column {frame.columns[col]!r} holds {x[row, col]:g}; pixels are "
                               "whole numbers 0–255")
    spec = PreprocessSpec(raw_shape=(h, w), raw_dtype="uint8", scale=1.0 / 255.0, flatten=True)
    return Dataset(source, x.astype(np.uint8).reshape(-1, h, w), y, classes, spec, origin=where)


__all__ = ["MAX_CATEGORIES", "SKLEARN", "from_frame", "read_table", "sklearn_dataset", "table"]
