"""The `Dataset` that flows from `data` to `train`: raw arrays, labels, class names, a
fingerprint, and the seeded stratified splits every stage agrees on."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from functools import cached_property
from typing import Literal

import numpy as np

from shipyard.data.preprocess import PreprocessSpec
from shipyard.errors import DataError, UsageError

#: validation share of the training part when the source ships its own test split (DESIGN.md)
VAL_FRACTION_WITH_TEST = 0.1
#: validation share for sources with a single set, unless --val-fraction says otherwise
VAL_FRACTION_DEFAULT = 0.2
Task = Literal["classification", "regression"]
TASKS: tuple[str, ...] = ("classification", "regression")


@dataclass(frozen=True)
class Splits:
    x_train: np.ndarray
    y_train: np.ndarray
    x_val: np.ndarray
    y_val: np.ndarray
    x_test: np.ndarray | None
    y_test: np.ndarray | None
    val_fraction: float
    seed: int


@dataclass(frozen=True)
class Dataset:
    """Raw inputs `x` `[N, ...]` with int64 labels `y` (a regression: float32 targets, and
    `classes` names the target); `x_test`/`y_test` when the source ships a test split (never
    trained or selected on). `preprocess` is the default transform."""

    source: str
    x: np.ndarray
    y: np.ndarray
    classes: list[str]
    preprocess: PreprocessSpec
    x_test: np.ndarray | None = None
    y_test: np.ndarray | None = None
    origin: str = field(default="", compare=False)
    task: Task = "classification"

    def __post_init__(self) -> None:
        where = self.origin or self.source
        if self.task not in TASKS:
            raise UsageError(f"task must be one of {', '.join(TASKS)}, got {self.task!r}")
        _check_pair(where, "train", self.x, self.y, self.num_classes, self.regression, self.missing_ok)
        if (self.x_test is None) != (self.y_test is None):
            raise DataError(where, "test images and test labels must come together")
        if self.x_test is not None and self.y_test is not None:
            _check_pair(where, "test", self.x_test, self.y_test, self.num_classes, self.regression, self.missing_ok)
            if self.x_test.shape[1:] != self.x.shape[1:]:
                raise DataError(
                    where,
                    f"test inputs have shape {list(self.x_test.shape[1:])}, "
                    f"train inputs {list(self.x.shape[1:])}",
                )

    @property
    def has_test(self) -> bool:
        return self.x_test is not None

    @property
    def regression(self) -> bool:
        return self.task == "regression"

    @property
    def num_classes(self) -> int:
        """Classes, or a regression's targets: the model's outputs."""
        return len(self.classes)

    @property
    def missing_ok(self) -> bool:
        """A table with an imputation policy may hold missing values (NaN)."""
        return self.preprocess.columns is not None and self.preprocess.impute != "none"

    @cached_property
    def fingerprint(self) -> str:
        """sha256 over every array's dtype, shape and bytes (train then test)."""
        h = hashlib.sha256()
        for a in (self.x, self.y, self.x_test, self.y_test):
            if a is None:
                continue
            a = np.ascontiguousarray(a)
            h.update(f"{a.dtype.str}{a.shape}".encode())
            h.update(a.data.cast("B"))
        h.update("\x00".join(self.classes).encode())
        if self.regression:
            h.update(b"\x00regression")
        return h.hexdigest()

    def split(self, val_fraction: float | None = None, seed: int = 0) -> Splits:
        """Seeded stratified split of the training part into train and validation."""
        if val_fraction is None:
            val_fraction = VAL_FRACTION_WITH_TEST if self.has_test else VAL_FRACTION_DEFAULT
        if not 0.0 < val_fraction < 1.0:
            raise UsageError(f"val_fraction must be between 0 and 1 (exclusive), got {val_fraction}")
        strata = self.y if not self.regression else quantile_bins(self.y)
        train_idx, val_idx = stratified_split(strata, val_fraction, seed)
        if len(val_idx) == 0 or len(train_idx) == 0:
            raise UsageError(
                f"{self.source}: {len(self.y)} samples are too few for a validation "
                f"fraction of {val_fraction}"
            )
        return Splits(
            self.x[train_idx], self.y[train_idx], self.x[val_idx], self.y[val_idx],
            self.x_test, self.y_test, val_fraction, seed,
        )

    def describe(self) -> dict[str, object]:
        info: dict[str, object] = {
            "source": self.source,
            "task": self.task,
            "samples": int(len(self.y)),
            "test_samples": int(len(self.y_test)) if self.y_test is not None else None,
            "input_shape": list(self.x.shape[1:]),
            "input_dtype": str(self.x.dtype),
        }
        if self.regression:
            y = self.y.astype(np.float64)
            info["target"] = self.classes[0]
            info["target_stats"] = {"mean": float(y.mean()), "std": float(y.std()), "min": float(y.min()),
                                    "max": float(y.max())}
        else:
            info["classes"] = self.classes
            info["class_counts"] = np.bincount(self.y, minlength=len(self.classes)).tolist()
        if self.preprocess.columns is not None:
            x = self.x.astype(np.float64)
            info["columns"] = [{"name": c.name, "type": c.kind, "missing": int(np.isnan(x[:, j]).sum()),
                                **({"categories": list(c.categories)} if c.kind == "categorical" else
                                   {"min": float(np.nanmin(x[:, j])), "max": float(np.nanmax(x[:, j]))})}
                               for j, c in enumerate(self.preprocess.columns)]
        info["fingerprint"] = self.fingerprint
        info["preprocess"] = {k: v for k, v in self.preprocess.to_dict().items() if k != "columns"}
        return info


def stratified_split(y: np.ndarray, fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Indices (train, held-out): `fraction` of every class held out, chosen by `seed`."""
    rng = np.random.default_rng(seed)
    held: list[np.ndarray] = []
    for c in np.unique(y):
        idx = np.flatnonzero(y == c)
        rng.shuffle(idx)
        held.append(idx[: int(round(fraction * len(idx)))])
    held_idx = np.sort(np.concatenate(held)) if held else np.array([], dtype=np.int64)
    mask = np.ones(len(y), dtype=bool)
    mask[held_idx] = False
    return np.flatnonzero(mask), held_idx


def quantile_bins(y: np.ndarray, bins: int = 10) -> np.ndarray:
    """A regression's targets as quantile bins, so every split spans their whole range."""
    v = np.asarray(y, dtype=np.float64).reshape(len(y), -1)[:, 0]
    edges = np.quantile(v, np.linspace(0, 1, bins + 1)[1:-1])
    return np.searchsorted(edges, v, side="right")


def _check_pair(where: str, part: str, x: np.ndarray, y: np.ndarray, num_classes: int, regression: bool = False,
                missing_ok: bool = False) -> None:
    if len(x) != len(y):
        raise DataError(where, f"{part}: {len(x)} inputs but {len(y)} labels")
    if len(y) == 0:
        raise DataError(where, f"{part}: no samples")
    if regression:
        if y.dtype.kind != "f" or not np.isfinite(y).all():
            raise DataError(where, f"{part}: regression targets must be finite floats")
        if x.dtype.kind == "f" and not missing_ok and not np.isfinite(x).all():
            bad = int(np.flatnonzero(~np.isfinite(x.reshape(len(x), -1)).all(axis=1))[0])
            raise DataError(where, f"{part}: sample {bad} contains NaN or infinity")
        return
    if y.dtype.kind not in "iu":
        raise DataError(where, f"{part}: labels must be integers, got {y.dtype}")
    if y.min() < 0 or y.max() >= num_classes:
        raise DataError(
            where, f"{part}: labels must lie in 0..{num_classes - 1}, found {y.min()}..{y.max()}"
        )
    if x.dtype.kind == "f" and not missing_ok and not np.isfinite(x).all():
        bad = int(np.flatnonzero(~np.isfinite(x.reshape(len(x), -1)).all(axis=1))[0])
        raise DataError(where, f"{part}: sample {bad} contains NaN or infinity")
