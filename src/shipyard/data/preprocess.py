"""Preprocessing as data: a small spec recorded with the run and carried in the bundle, applied
by this one numpy function everywhere (training, evaluation, the server, `predict`), so raw inputs
are transformed exactly the same way in every stage. No torch here: the server imports it.

Two kinds of raw input: arrays (images: scale, flatten, standardize) and tables of named
`columns` (numeric ones imputed and standardized, categorical ones one-hot encoded over the
vocabulary training saw). A table's raw form is float32 `[N, columns]`: numbers, category
indices, NaN where a value is missing; `encode` builds it from the columns a client sends."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import asdict, dataclass, replace
from functools import cached_property
from typing import Any, Literal

import numpy as np

from shipyard.errors import ConfigError, UsageError

Standardize = Literal["none", "global", "feature"]
STANDARDIZE_CHOICES: tuple[str, ...] = ("none", "global", "feature")
Impute = Literal["none", "mean", "median", "constant"]
IMPUTE_CHOICES: tuple[str, ...] = ("none", "mean", "median", "constant")


@dataclass(frozen=True)
class Column:
    """One named input column: `numeric`, or `categorical` with its `categories` (one-hot in this
    order). `fill` replaces a missing value (numeric: the value; categorical: the category's
    index); None: a missing value is refused, naming its row and column."""

    name: str
    kind: Literal["numeric", "categorical"] = "numeric"
    categories: tuple[str, ...] = ()
    fill: float | None = None

    @property
    def width(self) -> int:
        """How many features it becomes."""
        return len(self.categories) if self.kind == "categorical" else 1


@dataclass(frozen=True)
class PreprocessSpec:
    """raw `[N, *raw_shape]` of `raw_dtype` → float32 `[N, num_features]`:
    multiply by `scale`, flatten, then subtract `mean` and divide by `std` (scalars for
    `global` standardization, per-feature lists for `feature`)."""

    raw_shape: tuple[int, ...]
    raw_dtype: str = "uint8"
    scale: float = 1.0 / 255.0
    flatten: bool = True
    standardize: Standardize = "none"
    mean: float | list[float] | None = None
    std: float | list[float] | None = None
    columns: tuple[Column, ...] | None = None  # a table of named columns; None: an array input
    impute: Impute = "none"  # how `fitted` fills missing values (recorded with the run)
    impute_value: float = 0.0  # the value `constant` puts in numeric columns

    @property
    def num_features(self) -> int:
        if self.columns is not None:
            return sum(c.width for c in self.columns)
        return int(np.prod(self.raw_shape))

    @property
    def is_table(self) -> bool:
        return self.columns is not None

    @cached_property
    def _layout(self) -> tuple[np.ndarray, np.ndarray, list[tuple[int, int, int]]]:
        """(numeric column indices, their feature positions, [(column, first feature, width)] of
        the categorical ones)."""
        assert self.columns is not None
        num_cols, num_pos, cats = [], [], []
        at = 0
        for j, c in enumerate(self.columns):
            if c.kind == "numeric":
                num_cols.append(j)
                num_pos.append(at)
            else:
                cats.append((j, at, c.width))
            at += c.width
        return np.array(num_cols, dtype=np.intp), np.array(num_pos, dtype=np.intp), cats

    def apply(self, raw: np.ndarray) -> np.ndarray:
        """Transform a raw batch; raises UsageError when its shape does not match the spec."""
        if self.columns is not None:
            return self._apply_table(raw)
        if tuple(raw.shape[1:]) != self.raw_shape and raw.shape[1:] != (self.num_features,):
            raise UsageError(
                f"input shape {list(raw.shape)} does not match the expected "
                f"[N, {', '.join(map(str, self.raw_shape))}]"
            )
        if self.standardize != "none" and (self.mean is None or self.std is None):
            raise UsageError("the preprocessing spec standardizes but was never fitted: "
                             "call .fitted(raw_train) first")
        x = np.asarray(raw, dtype=np.float32)
        if self.scale != 1.0:
            x = x * np.float32(self.scale)
        x = x.reshape(len(x), self.num_features) if self.flatten else x.reshape(len(x), *self.raw_shape)
        if self.standardize != "none":
            mean = np.asarray(self.mean, dtype=np.float32)
            std = np.asarray(self.std, dtype=np.float32)
            if self.standardize == "feature" and not self.flatten:
                mean, std = mean.reshape(self.raw_shape), std.reshape(self.raw_shape)
            x = (x - mean) / std
        return np.ascontiguousarray(x, dtype=np.float32)

    def _apply_table(self, raw: np.ndarray) -> np.ndarray:
        assert self.columns is not None
        cols = self.columns
        if raw.ndim != 2 or raw.shape[1] != len(cols):
            raise UsageError(f"input shape {list(raw.shape)} does not match the expected [N, {len(cols)}] "
                             f"(columns {_names(cols)})")
        if self.standardize != "none" and (self.mean is None or self.std is None):
            raise UsageError("the preprocessing spec standardizes but was never fitted: call .fitted(raw_train) first")
        x = np.array(raw, dtype=np.float32)
        missing = np.isnan(x)
        if missing.any():
            fills = np.array([np.nan if c.fill is None else c.fill for c in cols], dtype=np.float32)
            refused = missing & np.isnan(fills)
            if refused.any():
                row, j = (int(v[0]) for v in np.nonzero(refused))
                raise UsageError(f"row {row}: column {cols[j].name!r} has no value and no imputation was "
                                 "recorded for it (train with --impute mean|median|constant)")
            x = np.where(missing, fills, x)
        num_cols, num_pos, cats = self._layout
        out = np.zeros((len(x), self.num_features), dtype=np.float32)
        if len(num_cols):
            v = x[:, num_cols]
            if self.standardize != "none":
                v = (v - np.asarray(self.mean, np.float32)[num_cols]) / np.asarray(self.std, np.float32)[num_cols]
            out[:, num_pos] = v
        rows = np.arange(len(x))
        for j, first, width in cats:
            codes = x[:, j]
            bad = ~((codes >= 0) & (codes < width) & (codes == np.floor(codes)))
            if bad.any():
                row = int(np.flatnonzero(bad)[0])
                raise UsageError(f"row {row}: column {cols[j].name!r} holds {codes[row]:g}, not the index of "
                                 f"one of its {width} categories")
            out[rows, first + codes.astype(np.intp)] = 1.0
        return out

    def encode(self, data: Mapping[str, Any]) -> np.ndarray:
        """Named columns as a client sends them (numbers; strings for categorical columns; NaN or
        None where a value is missing) → the raw table. Every column must be there, and no other:
        a UsageError names the one that is not."""
        if self.columns is None:
            raise UsageError("this model takes an array input, not named columns")
        names = {c.name for c in self.columns}
        if unknown := [k for k in data if k not in names]:
            raise UsageError(f"unknown column {unknown[0]!r}; the model takes {_names(self.columns)}")
        if missing := [c.name for c in self.columns if c.name not in data]:
            raise UsageError(f"missing column {missing[0]!r}; the model takes {_names(self.columns)}")
        lengths = {len(np.asarray(data[c.name]).reshape(-1)) for c in self.columns}
        if len(lengths) != 1:
            raise UsageError(f"columns have different lengths: {sorted(lengths)}")
        n = lengths.pop()
        x = np.empty((n, len(self.columns)), dtype=np.float32)
        for j, c in enumerate(self.columns):
            x[:, j] = _encode_column(c, np.asarray(data[c.name]).reshape(-1))
        return x

    def invert(self, features: np.ndarray) -> np.ndarray:
        """Features back to raw inputs (`raw_shape`, `raw_dtype`): what retraining needs from the
        prediction log, which keeps features. Exact for 8-bit sources up to rounding."""
        if self.columns is not None:
            return self._invert_table(np.asarray(features, dtype=np.float64).reshape(len(features), -1))
        x = np.asarray(features, dtype=np.float64).reshape(len(features), -1)
        if self.standardize != "none":
            if self.mean is None or self.std is None:
                raise UsageError("the preprocessing spec standardizes but was never fitted")
            x = x * np.asarray(self.std, dtype=np.float64).reshape(-1) + np.asarray(self.mean, dtype=np.float64
                                                                                   ).reshape(-1)
        if self.scale != 1.0:
            x = x / self.scale
        dtype = np.dtype(self.raw_dtype)
        if dtype.kind in "ui":
            info = np.iinfo(dtype)
            x = np.clip(np.rint(x), info.min, info.max)
        return x.astype(dtype).reshape(len(x), *self.raw_shape)

    def _invert_table(self, f: np.ndarray) -> np.ndarray:
        assert self.columns is not None
        num_cols, num_pos, cats = self._layout
        x = np.zeros((len(f), len(self.columns)), dtype=np.float64)
        if len(num_cols):
            v = f[:, num_pos]
            if self.standardize != "none":
                v = v * np.asarray(self.std, np.float64)[num_cols] + np.asarray(self.mean, np.float64)[num_cols]
            x[:, num_cols] = v
        for j, first, width in cats:
            x[:, j] = f[:, first : first + width].argmax(axis=1)
        return x.astype(np.float32)

    def fitted(self, raw_train: np.ndarray) -> PreprocessSpec:
        """Return the spec with standardization statistics computed on the training split (and,
        for a table, the imputed values per its `impute` policy)."""
        if self.columns is not None:
            return self._fitted_table(np.asarray(raw_train, dtype=np.float64))
        if self.standardize == "none":
            return self
        scaled = np.asarray(raw_train, dtype=np.float64).reshape(len(raw_train), -1) * self.scale
        if self.standardize == "global":
            mean, std = float(scaled.mean()), float(scaled.std())
            return _replace(self, mean=mean, std=max(std, 1e-6))
        mean_v = scaled.mean(axis=0)
        std_v = np.maximum(scaled.std(axis=0), 1e-6)
        return _replace(self, mean=mean_v.tolist(), std=std_v.tolist())

    def _fitted_table(self, x: np.ndarray) -> PreprocessSpec:
        assert self.columns is not None
        cols: list[Column] = []
        means, stds = [], []
        for j, c in enumerate(self.columns):
            v = x[:, j][~np.isnan(x[:, j])]
            if not len(v):
                raise UsageError(f"column {c.name!r} has no values in the training split")
            fill: float | None = None
            if c.kind == "numeric":
                means.append(float(v.mean()))
                stds.append(max(float(v.std()), 1e-6))
                if self.impute != "none":
                    fill = {"mean": float(v.mean()), "median": float(np.median(v)),
                            "constant": float(self.impute_value)}[self.impute]
            else:
                means.append(0.0)
                stds.append(1.0)
                if self.impute != "none":  # the most frequent category, whatever the policy
                    fill = float(np.bincount(v.astype(np.intp), minlength=c.width).argmax())
            cols.append(Column(c.name, c.kind, c.categories, fill))
        if self.standardize == "global":
            raise ConfigError("standardize", "global", "a table standardizes each numeric column: use feature or none")
        return _replace(self, columns=tuple(cols), mean=means if self.standardize != "none" else None,
                        std=stds if self.standardize != "none" else None)

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["raw_shape"] = list(self.raw_shape)
        if self.columns is None:  # an array spec keeps the layout it always had
            for k in ("columns", "impute", "impute_value"):
                d.pop(k)
        else:
            d["columns"] = [{**asdict(c), "categories": list(c.categories)} for c in self.columns]
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> PreprocessSpec:
        d = dict(d)
        d["raw_shape"] = tuple(d["raw_shape"])
        if d.get("standardize", "none") not in STANDARDIZE_CHOICES:
            raise ConfigError("standardize", d["standardize"], f"choose {STANDARDIZE_CHOICES}")
        if d.get("impute", "none") not in IMPUTE_CHOICES:
            raise ConfigError("impute", d["impute"], f"choose {IMPUTE_CHOICES}")
        if d.get("columns") is not None:
            d["columns"] = tuple(Column(**{**c, "categories": tuple(c.get("categories", ()))}) for c in d["columns"])
        return cls(**d)


def _names(cols: tuple[Column, ...]) -> str:
    shown = ", ".join(repr(c.name) for c in cols[:12])
    return shown + (f", … ({len(cols)} in all)" if len(cols) > 12 else "")


def _encode_column(c: Column, v: np.ndarray) -> np.ndarray:
    """One column's values → floats (categories → their index; missing → NaN)."""
    if c.kind == "numeric":
        if v.dtype.kind in "fiu":
            return v.astype(np.float32)
        if v.dtype.kind == "b":
            raise UsageError(f"column {c.name!r} is numeric; got booleans")
        try:
            return np.array([np.nan if e is None else float(e) for e in v], dtype=np.float32)
        except (TypeError, ValueError):
            bad = next(e for e in v if e is not None and not is_number(e))
            shown = str(bad) if isinstance(bad, str) else bad
            raise UsageError(f"column {c.name!r} is numeric; got {shown!r}") from None
    if v.dtype.kind == "b":  # booleans are the categories 'False' and 'True' (as a table file reads them)
        v = np.where(v, "True", "False")
    if v.dtype.kind in "fiu":
        if v.dtype.kind == "f" and np.isnan(v).all():
            return v.astype(np.float32)
        raise UsageError(f"column {c.name!r} is categorical (strings such as {c.categories[0]!r}); got numbers")
    index = {k: i for i, k in enumerate(c.categories)}
    out = np.empty(len(v), dtype=np.float32)
    for i, e in enumerate(v):
        if e is None or (isinstance(e, float) and np.isnan(e)):
            out[i] = np.nan
            continue
        key = e.decode() if isinstance(e, bytes) else str(bool(e)) if isinstance(e, bool | np.bool_) else e
        code = index.get(key) if isinstance(key, str) else None
        if code is None:
            known = ", ".join(repr(k) for k in c.categories[:8]) + (", …" if len(c.categories) > 8 else "")
            raise UsageError(f"column {c.name!r}: row {i} holds {key if not isinstance(key, str) else str(key)!r}, "
                             "not one of the categories training saw "
                             f"({known})")
        out[i] = code
    return out


def is_number(e: Any) -> bool:
    """Whether `float(e)` takes it (a number, or text spelling one)."""
    try:
        float(e)
    except (TypeError, ValueError):
        return False
    return True


def _replace(spec: PreprocessSpec, **changes: Any) -> PreprocessSpec:
    return replace(spec, **changes)
